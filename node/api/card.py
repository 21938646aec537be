"""Signed cards over the API: this node's (``GET /v1/card``), its callers' (``POST /v1/peer-card``).

Layer: node.api. The card is :mod:`protocol.card`'s format and its check
:mod:`node.ledger.cards`'. ``GET /v1/card`` exists once ``hashmesh tls
renew`` has run (404 before); peers that poll this node fetch it to trust
its renewed certificate without a card exchanged by hand.

``POST /v1/peer-card`` is the other direction: a caller this node does not
poll (a subscriber, an auditor, a peer that only connects to us) presents
its own renewed card over mutual TLS, with a certificate this node already
trusts for it. The card must be signed by the key this node pinned for
that caller: its log's current key when the log is followed here, else the
``vkey`` of the card it was added with. Then its certificates are trusted
for the caller, exactly as a polled peer's card is.
"""

from __future__ import annotations

import logging

from aiohttp import web

from node.api.access import request_facts
from node.api.handlers import JSON, error_response
from node.api.state import DB_KEY
from node.errors import ConfigError
from node.ledger.cards import load_certificates
from node.ledger.service import Ledger
from protocol.api_documents import PeerCardAnswer
from protocol.card import MAX_CARD_BYTES
from protocol.errors import VerificationError

__all__ = ["MAX_BODY", "peer_card", "signed_card"]

log = logging.getLogger("hashmesh.api")

MAX_BODY = MAX_CARD_BYTES
"""Largest card presented (413 above)."""


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


async def peer_card(request: web.Request) -> web.Response:
    """``POST /v1/peer-card``: trust the certificates of the caller's own newer signed card.

    200 with :class:`~protocol.api_documents.PeerCardAnswer` (``accepted``
    false when the card held is as new); 400 for a malformed card; 403 when
    the card is not signed by the key pinned for the caller (or is another
    node's card); 409 when a certificate it lists belongs to another peer.
    """
    if request.query:
        raise web.HTTPBadRequest(text="/v1/peer-card takes no query parameters")
    name = request_facts(request).peer
    try:
        note = (await request.read()).decode("utf-8")
    except UnicodeDecodeError:
        return error_response(400, "the card is not UTF-8 text", "card")

    def accept(ledger: Ledger) -> PeerCardAnswer:
        card = ledger.accept_peer_card(name, note)
        if card is not None:
            return PeerCardAnswer(
                accepted=True, serial=card.serial, certificates=len(card.certificates)
            )
        (peer,) = [p for p in ledger.peers.list_peers() if p.name == name]
        return PeerCardAnswer(
            accepted=False,
            serial=ledger.peers.card_serial(name) or 0,
            certificates=len(load_certificates(peer.tls_cert)),
        )

    try:
        # A malformed card raises MalformedError: the middleware answers 400.
        answer = await request.app[DB_KEY].write(accept)
    except VerificationError as e:
        log.warning("refused the signed card %s presented: %s", name, e)
        return error_response(
            403, f"card refused: not signed by the key pinned for {name} here: {e}", "card"
        )
    except ConfigError as e:
        log.warning("refused the signed card %s presented: %s", name, e)
        return error_response(409, f"card refused: {e}", "card")
    if answer.accepted:
        log.info(
            "trusting %d TLS certificate(s) of %s from the signed card it presented (serial %d)",
            answer.certificates,
            name,
            answer.serial,
        )
    return web.Response(body=answer.to_json(), content_type=JSON)
