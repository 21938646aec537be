"""``GET /v1/card``: this node's card, signed with its log's key.

Layer: node.api. The card is :mod:`protocol.card`'s format; it exists once
``hashmesh tls renew`` has run (404 before), and peers fetch it on every
sync round to trust a renewed certificate without a card exchanged by hand.
"""

from __future__ import annotations

from aiohttp import web

from node.api.state import DB_KEY

__all__ = ["signed_card"]


async def signed_card(request: web.Request) -> web.Response:
    """``GET /v1/card``: the signed card, ``text/plain``; 404 before the first renewal."""
    if request.query:
        raise web.HTTPBadRequest(text="/v1/card takes no query parameters")
    note = await request.app[DB_KEY].read(lambda ledger: ledger.signed_card())
    if note is None:
        raise web.HTTPNotFound(
            text="this node has no signed card yet: its TLS certificate was never renewed"
        )
    return web.Response(text=note, content_type="text/plain", charset="utf-8")
