"""``GET /v1/rotations``: an origin's key rotations, proven, for readers without entries.

Layer: node.api. Reads through :class:`~node.ledger.database.Database`; the
role check is the middleware's (every role may read this, auditors included).

An auditor never receives entries, so it cannot see the ``rotate`` entries
that move an origin's signing role to a new key, and the new key's
checkpoints would not verify under the key it pinned. This endpoint serves,
for each rotation of the origin's log that the node applied, what
:func:`protocol.rotation.apply_rotation_proof` needs: the rotate entry's
exact bytes, the checkpoint of size ``r + 1`` that the old key signed, and
the entry's inclusion proof in that tree. Rotate entries carry a verifier key
and a reason only, never hash values or labels.

Rotations are read from the ``origin_keys`` table (one row per applied
rotation), never by scanning the log. Each served entry is parsed first: a
row that does not name a rotate entry is a corrupted database, and the
request fails rather than hand entry bytes of another kind to an auditor.
"""

from __future__ import annotations

from aiohttp import web

from node.api.handlers import JSON, _latest, _origin, _params
from node.api.state import DB_KEY
from node.errors import LedgerError
from node.ledger.service import Ledger
from node.storage.ledger_store import LogRecord
from protocol.api_documents import RotationList, ServedRotation
from protocol.entry import RotateEntry, parse_entry
from protocol.errors import MalformedError

__all__ = ["rotations"]


def _rotation_item(ledger: Ledger, origin: str, log: LogRecord, index: int) -> ServedRotation:
    """One rotation: the entry, the checkpoint of size ``index + 1`` (or None), the proof."""
    data = ledger.entry(log, index)
    try:
        entry = None if data is None else parse_entry(bytes(data))
    except MalformedError:
        entry = None
    if data is None or not isinstance(entry, RotateEntry):
        # Never serve bytes of another entry kind: they may hold hash values.
        raise LedgerError(
            f"origin_keys of {origin!r} names entry {index} as a rotation, but that entry is "
            "not a stored rotate entry; the database is corrupt"
        )
    record = ledger.stored_checkpoint(log, index + 1)
    proof = ledger.prove_inclusion(index, index + 1, origin=origin)
    return ServedRotation(
        index=index,
        entry=bytes(data),
        # A relay that jumped past this size holds no such checkpoint.
        checkpoint=None if record is None else ledger.served_note(log, record),
        proof=proof.hashes,
    )


async def rotations(request: web.Request) -> web.Response:
    """``GET /v1/rotations?origin=O``: each applied rotation of O, in index order."""
    params = _params(request, ("origin",))
    origin = _origin(params)

    def read(ledger: Ledger) -> bytes:
        log_record, latest = _latest(ledger, origin)  # 404 for an unknown or unsigned log
        indexes = [r for r in ledger.rotation_indexes(origin) if r < latest.size]
        items = tuple(_rotation_item(ledger, origin, log_record, r) for r in indexes)
        return RotationList(origin=origin, rotations=items).to_json()

    body = await request.app[DB_KEY].read(read)
    return web.Response(body=body, content_type=JSON)
