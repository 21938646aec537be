"""``GET /v1/rotations``: an origin's key rotations, proven, for readers without entries.

Layer: node.api. Reads through :class:`~node.ledger.database.Database`; the
role check is the middleware's (every role may read this, auditors included).

An auditor never receives entries, so it cannot see the ``rotate`` entries
that move an origin's signing role to a new key. This endpoint serves, for
each rotation the node applied below its latest checkpoint, the rotate
entry, the old key's checkpoint of size ``r + 1`` and the inclusion proof
(:func:`node.ledger.rotation_proofs.proven_rotations`, which ``hashmesh
publish`` and the public listener use too).
"""

from __future__ import annotations

from aiohttp import web

from node.api.handlers import JSON, _latest, _origin, _params
from node.api.state import DB_KEY
from node.ledger.rotation_proofs import proven_rotations
from node.ledger.service import Ledger

__all__ = ["rotations"]


async def rotations(request: web.Request) -> web.Response:
    """``GET /v1/rotations?origin=O``: each applied rotation of O, in index order."""
    params = _params(request, ("origin",))
    origin = _origin(params)

    def read(ledger: Ledger) -> bytes:
        _log, latest = _latest(ledger, origin)  # 404 for an unknown or unsigned log
        return proven_rotations(ledger, origin, latest.size).to_json()

    body = await request.app[DB_KEY].read(read)
    return web.Response(body=body, content_type=JSON)
