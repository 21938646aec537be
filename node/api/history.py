"""``GET /v1/checkpoints``: the stored checkpoint history of a log, for auditors.

Layer: node.api. Reads through :class:`~node.ledger.database.Database`; the
role check is the middleware's (every role may read this).

An auditor checks that every pair of successive checkpoints a node published
is consistent; ``/v1/checkpoint`` gives only the latest. This endpoint pages
through every signed note the node stored for an origin, by increasing size,
from a given size on, so an incremental audit asks only for what it has not
seen. Checkpoints carry no hash values or labels.
"""

from __future__ import annotations

import itertools

from aiohttp import web

from node.api.handlers import JSON, _latest, _optional_decimal, _origin, _params
from node.api.state import DB_KEY
from node.ledger.service import Ledger
from protocol.api_documents import CheckpointList, ServedCheckpoint

__all__ = ["MAX_CHECKPOINTS_PAGE", "checkpoints"]

MAX_CHECKPOINTS_PAGE = 1000
"""Most checkpoints one page returns; ask again from the last size + 1."""


async def checkpoints(request: web.Request) -> web.Response:
    """``GET /v1/checkpoints?origin=O[&start=S]``: stored notes of size >= S, by size."""
    params = _params(request, ("origin",), ("start",))
    origin = _origin(params)
    start = _optional_decimal(params, "start") or 0

    def read(ledger: Ledger) -> bytes:
        log, _record = _latest(ledger, origin)  # 404 for an unknown or unsigned log
        records = itertools.islice(ledger.stored_checkpoints(log, start), MAX_CHECKPOINTS_PAGE)
        # Each note with its held witness cosignatures, as /v1/checkpoint serves it.
        items = tuple(
            ServedCheckpoint(size=r.size, note=ledger.served_note(log, r)) for r in records
        )
        return CheckpointList(origin=origin, checkpoints=items).to_json()

    body = await request.app[DB_KEY].read(read)
    return web.Response(body=body, content_type=JSON)
