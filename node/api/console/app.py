"""The console application: routes, guards, error pages.

Layer: node.api. Reads the database through :class:`~node.ledger.database.Database`
(every read in a reader thread); writes nothing to any log.

Every page is one handler returning a :class:`Page`: its template and a
JSON-ready ``data`` dict. :func:`render` turns it into HTML (Jinja2,
autoescaped) or, when the path ends in ``.json`` or the client accepts
``application/json`` and not HTML, into that dict as JSON, so both forms come
from the same code. Each page is registered twice, at ``/NAME`` and
``/NAME.json``.

Middleware (outermost first): **headers** (CSP, no caching, no sniffing,
no framing, no referrer to other sites, on every response), **errors** (bad input and
unknown logs or entries become a 4xx page naming what was wrong; an
unexpected failure a 500 page without a traceback, logged), **guard** (token
or session when one is set; CSRF checks on every POST).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

import aiohttp_jinja2
import jinja2
from aiohttp import web

from node.api.console import lookup, pages
from node.api.console.render import (
    CONSOLE_DB_KEY,
    CONSOLE_SETTINGS_KEY,
    STYLE,
    TEMPLATES,
    ConsoleInputError,
    ConsoleSettings,
    Page,
    render,
    url_for,
    wants_json,
)
from node.api.console.security import (
    SESSION_COOKIE,
    content_security_policy,
    has_bearer,
    refuse_forged_post,
    session_value,
    token_matches,
)
from node.api.ops import OpsContext, OpsMount
from node.errors import EntryNotFoundError, IndexPendingError, StorageError, UnknownLogError
from node.ledger.database import Database
from protocol.errors import MalformedError

__all__ = ["CONSOLE_MOUNT", "CONSOLE_PREFIX", "build_console", "make_console_app"]

log = logging.getLogger("hashmesh.console")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CSP_KEY = web.AppKey("console_csp", str)


def _error_page(
    request: web.Request, status: int, message: str, field: str | None
) -> web.StreamResponse:
    page = Page(
        "error.html",
        "Problem",
        {"error": message, "field": field, "status": status},
        status=status,
    )
    try:
        return render(request, page)
    except Exception:  # a broken template must not hide the message
        log.exception("console error page failed")
        return web.Response(text=f"{status}: {message}\n", status=status)


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    headers = response.headers
    headers["Content-Security-Policy"] = request.app[_CSP_KEY]
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    # same-origin, not no-referrer: with no-referrer a browser sends Origin: null
    # on the console's own POSTs, which could then not be told from forged ones.
    headers["Referrer-Policy"] = "same-origin"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    headers["Cross-Origin-Resource-Policy"] = "same-origin"
    headers.setdefault("Cache-Control", "no-store")
    return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        text = e.text or ""
        message = text if text and not text.startswith(f"{e.status}:") else e.reason
        if e.status == 404 and text.startswith("404:"):
            message = f"no console page at {request.path}"
        return _error_page(request, e.status, message, None)
    except ConsoleInputError as e:
        return _error_page(request, e.status, str(e), e.field)
    except MalformedError as e:
        return _error_page(request, 400, e.reason, e.field)
    except (UnknownLogError, EntryNotFoundError) as e:
        return _error_page(request, 404, str(e), getattr(e, "field", "origin"))
    except IndexPendingError as e:
        return _error_page(request, 503, str(e), None)
    except StorageError as e:
        log.warning("console: database unavailable for %s: %s", request.path, e)
        return _error_page(request, 503, "the database is busy; reload shortly", None)
    except TimeoutError:
        return _error_page(request, 503, "the page took too long; reload shortly", None)
    except Exception:
        log.exception("console: internal error answering %s %s", request.method, request.path)
        return _error_page(request, 500, "internal error; the node's log has the details", None)


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[CONSOLE_SETTINGS_KEY]
    is_login = request.match_info.route.name in ("login", "login-post")
    if settings.token is not None and not is_login and not token_matches(request, settings.token):
        if wants_json(request) or request.method != "GET":
            raise web.HTTPUnauthorized(
                text="this console needs its token: Authorization: Bearer TOKEN, or log in",
                headers={"WWW-Authenticate": 'Bearer realm="hashmesh console"'},
            )
        raise web.HTTPSeeOther(url_for(request, "login"))
    # CSRF: checked here for urlencoded bodies, by the handler (check_csrf)
    # for multipart ones, whose fields are read as a stream.
    if (
        request.method == "POST"
        and not has_bearer(request, settings.token)
        and request.content_type != "multipart/form-data"
    ):
        form = await request.post()
        value = form.get("csrf")
        reason = refuse_forged_post(request, value if isinstance(value, str) else None)
        if reason is not None:
            raise web.HTTPForbidden(text=f"refused: {reason}")
    return await handler(request)


async def _login_form(request: web.Request) -> web.StreamResponse:
    return render(request, Page("login.html", "Log in", {"needs_token": True}))


async def _login(request: web.Request) -> web.StreamResponse:
    settings = request.app[CONSOLE_SETTINGS_KEY]
    form = await request.post()
    given = form.get("token")
    if settings.token is None:
        raise web.HTTPSeeOther(url_for(request, "overview"))
    if not isinstance(given, str) or not hmac.compare_digest(
        given.encode("utf-8"), settings.token.encode("utf-8")
    ):
        raise ConsoleInputError("that is not this console's token", status=403, field="token")
    response = web.HTTPSeeOther(url_for(request, "overview"))
    response.set_cookie(
        SESSION_COOKIE,
        session_value(settings.token),
        httponly=True,
        samesite="Strict",
        path="/",
        secure=request.secure,
    )
    raise response


async def _index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther(url_for(request, "overview"))


def make_console_app(db: Database, settings: ConsoleSettings) -> web.Application:
    """Build the console, to be mounted on the operations listener (``add_subapp``).

    Args:
        db: the node's database facade (the console does not close it).
        settings: origin, token and node directory.

    Returns:
        The application; its routes are relative to where it is mounted.
    """
    app = web.Application(middlewares=[_headers, _errors, _guard])
    app[CONSOLE_DB_KEY] = db
    app[CONSOLE_SETTINGS_KEY] = settings
    app[_CSP_KEY] = content_security_policy(STYLE)
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    router = app.router
    router.add_get("/", _index, name="index", allow_head=False)
    router.add_get("/login", _login_form, name="login", allow_head=False)
    router.add_post("/login", _login, name="login-post")
    page_routes: list[tuple[str, Handler, tuple[str, ...]]] = [
        ("overview", pages.overview, ("GET",)),
        ("lookup", lookup.lookup, ("GET", "POST")),
        ("entry", pages.entry, ("GET",)),
        ("evidence", pages.evidence, ("GET",)),
        ("activity", pages.activity, ("GET",)),
    ]
    for name, handler, methods in page_routes:
        for method in methods:
            suffix = "" if method == "GET" else "-post"
            router.add_route(method, f"/{name}", handler, name=f"{name}{suffix}")
            router.add_route(method, f"/{name}.json", handler, name=f"{name}{suffix}.json")
    router.add_get("/receipt", pages.receipt, name="receipt", allow_head=False)
    router.add_get(
        "/evidence/download", pages.evidence_file, name="evidence-file", allow_head=False
    )
    return app


def build_console(context: OpsContext) -> web.Application:
    """The console of the serving node, for the operations listener (its token, its database)."""
    config = context.config
    return make_console_app(
        context.db,
        ConsoleSettings(
            origin=config.origin,
            token=config.ops.token,
            node_dir=config.node_dir,
            readers=context.metrics.readers,
            integrity=context.integrity,
            pool=context.pool,
        ),
    )


CONSOLE_PREFIX = "/console"
"""Where the operations listener serves the console."""

CONSOLE_MOUNT = OpsMount(CONSOLE_PREFIX, build_console, own_auth=True)
"""The console on the operations listener; it checks the token itself (own_auth):
a browser logs in once instead of sending a header."""
