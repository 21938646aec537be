"""The console's guards: who may open it, which POSTs are genuine, what a page may load.

Layer: node.api. No storage.

* **Token.** Bound to loopback the console needs none (whoever can reach
  127.0.0.1 can read the database file anyway); bound to anything else the
  node refuses to start without ``[ops] token`` (:func:`node.config.load_config`
  holds that rule for the whole operations listener). With a token,
  a request is let in by ``Authorization: Bearer TOKEN`` (scripts) or by the
  session cookie the login form sets (browsers cannot add a header without
  scripts). The cookie holds a digest of the token, never the token.
* **CSRF.** Every POST form carries the value of a random, ``HttpOnly``,
  ``SameSite=Strict`` cookie in a hidden field; a POST is refused when the
  two differ, when the browser says the request is cross-site
  (``Sec-Fetch-Site``), or when its ``Origin`` is not this listener. A
  request with a valid bearer token is not a browser's ambient credential
  and needs no CSRF field.
* **Content-Security-Policy.** Nothing but the page itself: no script at all,
  the one inline style sheet by its hash, images only from the console,
  forms only to the console, no framing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from aiohttp import web

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "SESSION_COOKIE",
    "content_security_policy",
    "csrf_token",
    "has_bearer",
    "refuse_forged_post",
    "session_value",
    "token_matches",
]

CSRF_COOKIE = "hashmesh-csrf"
CSRF_FIELD = "csrf"
SESSION_COOKIE = "hashmesh-console"


def content_security_policy(style: str) -> str:
    """The policy of every console response, allowing exactly the inline ``style`` sheet."""
    digest = base64.b64encode(hashlib.sha256(style.encode("utf-8")).digest()).decode("ascii")
    return "; ".join(
        [
            "default-src 'none'",
            f"style-src 'sha256-{digest}'",
            "img-src 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ]
    )


def session_value(token: str) -> str:
    """What the session cookie holds for ``token`` (a digest: the cookie never carries it)."""
    return hashlib.sha256(b"hashmesh-console-session\x00" + token.encode("utf-8")).hexdigest()


def token_matches(request: web.Request, token: str) -> bool:
    """Whether the request carries ``token`` as a bearer token or a session cookie."""
    if has_bearer(request, token):
        return True
    cookie = request.cookies.get(SESSION_COOKIE, "")
    return hmac.compare_digest(cookie.encode("ascii", "replace"), session_value(token).encode())


def has_bearer(request: web.Request, token: str | None) -> bool:
    """Whether the request authenticates with the bearer header (not a cookie)."""
    header = request.headers.get("Authorization", "")
    return (
        token is not None
        and header.startswith("Bearer ")
        and hmac.compare_digest(
            header[len("Bearer ") :].strip().encode("utf-8"), token.encode("utf-8")
        )
    )


def csrf_token(request: web.Request) -> tuple[str, bool]:
    """The CSRF value for this browser, and whether it is new (the cookie must be set)."""
    current = request.cookies.get(CSRF_COOKIE, "")
    if len(current) == 43 and current.replace("-", "").replace("_", "").isalnum():
        return current, False
    return secrets.token_urlsafe(32), True


def refuse_forged_post(request: web.Request, submitted: str | None) -> str | None:
    """Why this POST is not the console's own form, or None if it is.

    Args:
        request: the POST.
        submitted: the CSRF field of its form (None if absent).
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"the browser says this form was sent from another site ({site})"
    origin = request.headers.get("Origin")
    if origin is not None:
        expected = f"{request.scheme}://{request.host}"
        if origin != expected:
            return f"the form was sent from {origin}, not from this console ({expected})"
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie or not submitted:
        return "the form carries no CSRF token (reload the page and send it again)"
    if not hmac.compare_digest(
        cookie.encode("ascii", "replace"), submitted.encode("ascii", "replace")
    ):
        return "the form's CSRF token does not match this browser's (reload the page)"
    return None
