"""What every console page shares: settings, the Page it answers, rendering as HTML or JSON.

Layer: node.api. Every page is one handler returning a :class:`Page`: its
template and a JSON-ready ``data`` dict. :func:`render` turns it into HTML
(Jinja2, autoescaped) or, when the path ends in ``.json`` or the client
accepts ``application/json`` and not HTML, into that dict as JSON, so both
forms come from the same code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from node.api.console.security import (
    CSRF_COOKIE,
    csrf_token,
    has_bearer,
    refuse_forged_post,
)
from node.api.workers import WorkerPool
from node.errors import NodeError
from node.ledger.database import Database
from node.ledger.scrub import IntegrityState
from node.metrics import ReaderTally

__all__ = [
    "CONSOLE_DB_KEY",
    "CONSOLE_SETTINGS_KEY",
    "STYLE",
    "ConsoleInputError",
    "ConsoleSettings",
    "Page",
    "check_csrf",
    "render",
    "url_for",
    "wants_json",
]

TEMPLATES = Path(__file__).parent / "templates"

STYLE = """
:root{--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--bg:#fff;--soft:#f6f8fa;--bad:#b42318;
--ok:#1a7f37;--warn:#9a6700;--link:#0550ae}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg)}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:.4rem 1.2rem;padding:.6rem 1rem;
border-bottom:1px solid var(--line);background:var(--soft)}
header strong{font-size:1.05rem}
nav a{margin-right:.9rem}
main{padding:1rem;max-width:1200px}
a{color:var(--link)}
h1{font-size:1.3rem;margin:.2rem 0 .8rem}
h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
table{border-collapse:collapse;width:100%;margin:.3rem 0 1rem}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid var(--line);vertical-align:top}
th{background:var(--soft);font-weight:600}
.scroll{overflow-x:auto}
.num{text-align:right;font-variant-numeric:tabular-nums}
code,.hash{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.85rem;
overflow-wrap:anywhere}
.ok{color:var(--ok)}.bad{color:var(--bad);font-weight:600}.warn{color:var(--warn)}
.muted{color:var(--muted)}
.card{border:1px solid var(--line);border-radius:6px;padding:.6rem .9rem;margin:.5rem 0}
.facts{display:grid;grid-template-columns:repeat(auto-fit,minmax(180px,1fr));gap:.5rem}
.facts div{border:1px solid var(--line);border-radius:6px;padding:.5rem .7rem}
.facts b{display:block;font-size:1.2rem}
.facts b.hash{font-size:.95rem}
.error{border:1px solid var(--bad);background:#fff5f5;border-radius:6px;padding:.6rem .9rem}
textarea{width:100%;min-height:10rem;font-family:ui-monospace,monospace;font-size:.85rem}
label{display:block;margin:.5rem 0 .2rem;font-weight:600}
button{margin-top:.7rem;padding:.4rem 1rem;font-size:1rem}
svg{max-width:100%;height:auto}
svg text{font-size:11px;fill:#57606a;font-family:system-ui,sans-serif}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:var(--soft);padding:.5rem;
border-radius:6px;font-size:.8rem}
@media (max-width:600px){main{padding:.6rem}th,td{padding:.25rem .3rem}body{font-size:14px}
table.stack thead{display:none}table.stack tr{display:block;border-bottom:2px solid var(--line);
padding:.3rem 0}table.stack td{display:block;border:0;padding:.1rem .3rem}
table.stack td[data-label]::before{content:attr(data-label) ": ";font-weight:600;color:var(--muted)}
table.stack td.num{text-align:left}}
""".strip()
"""The one style sheet, inline in every page and allowed by its hash in the CSP."""


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """How the console is served.

    Attributes:
        origin: the node's own origin (page headers).
        token: the bearer token; None on loopback without one.
        node_dir: the node directory (the own TLS certificate is read from it).
        readers: who read what through the peer API since ``serve`` started
            (the access log's counts); None when not served by ``serve``.
        integrity: the serving node's damaged logs (fsck, the scrub); None
            when not served by ``serve``.
        pool: the match worker processes the look-up runs in (``serve``'s,
            shared with ``/v1/match``); None: the database's reader threads.
    """

    origin: str
    token: str | None = None
    node_dir: Path | None = None
    readers: ReaderTally | None = None
    integrity: IntegrityState | None = None
    pool: WorkerPool | None = None


CONSOLE_DB_KEY = web.AppKey("console_db", Database)
CONSOLE_SETTINGS_KEY = web.AppKey("console_settings", ConsoleSettings)


class ConsoleInputError(NodeError):
    """Input the console cannot use; the message is shown on the page (4xx)."""

    def __init__(self, message: str, *, status: int = 400, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


@dataclass(frozen=True, slots=True)
class Page:
    """What a handler answers: a template and the data it shows (also the JSON form).

    Attributes:
        template: the template's file name.
        title: the page title.
        data: JSON-ready; everything the page shows comes from here.
        view: extra template-only values (precomputed geometry and the like).
        status: the HTTP status.
    """

    template: str
    title: str
    data: dict[str, Any]
    view: dict[str, Any] = field(default_factory=dict)
    status: int = 200


def wants_json(request: web.Request) -> bool:
    """Whether the client asked for JSON (``.json`` path, or Accept without HTML)."""
    if request.path.endswith(".json"):
        return True
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


def render(request: web.Request, page: Page) -> web.StreamResponse:
    """The page as JSON or HTML, whichever the client asked for."""
    if wants_json(request):
        return web.Response(
            # Compact: a look-up's answer may hold thousands of hits.
            text=json.dumps(page.data, sort_keys=True, separators=(",", ":")) + "\n",
            content_type="application/json",
            status=page.status,
        )
    token, new = csrf_token(request)
    settings = request.app[CONSOLE_SETTINGS_KEY]
    context = {
        **page.data,
        **page.view,
        "title": page.title,
        "style": STYLE,
        "csrf": token,
        "own_origin": settings.origin,
        "url": lambda name, **query: url_for(request, name, **query),
        "locked": settings.token is not None,
    }
    response = aiohttp_jinja2.render_template(page.template, request, context, status=page.status)
    if new:
        response.set_cookie(
            CSRF_COOKIE, token, httponly=True, samesite="Strict", path="/", secure=request.secure
        )
    return response


def url_for(request: web.Request, name: str, **query: object) -> str:
    """The path of a named console route (mount prefix included), with a query."""
    url = request.app.router[name].url_for()
    if query:
        url = url.with_query({k: str(v) for k, v in query.items() if v is not None})
    return str(url)


def check_csrf(request: web.Request, submitted: str | None) -> None:
    """Refuse a multipart POST whose CSRF field is wrong (urlencoded ones are checked earlier).

    Raises:
        ConsoleInputError: 403, naming why.
    """
    if has_bearer(request, request.app[CONSOLE_SETTINGS_KEY].token):
        return
    reason = refuse_forged_post(request, submitted)
    if reason is not None:
        raise ConsoleInputError(f"refused: {reason}", status=403)
