"""An origin's key rotations with their proofs, for readers that hold no entries.

Layer: node.ledger. Reads through :class:`~node.ledger.service.Ledger`.

An auditor, and anyone reading a published log, never receives entries, so
it cannot see the ``rotate`` entries that move an origin's signing role to a
new key, and the new key's checkpoints would not verify under the key it
pinned. :func:`proven_rotations` gives, for each rotation the node applied
below a tree size, what :func:`protocol.rotation.apply_rotation_proof`
needs: the rotate entry's exact bytes, the checkpoint of size ``r + 1`` that
the old key signed, and the entry's inclusion proof in that tree. It is
served by ``GET /v1/rotations`` (every role), by the public listener's
``/rotations`` and written by ``hashmesh publish`` as ``DIR/rotations``.

What that reveals (docs/protocol.md, "Key rotations in a published log"): a
rotate entry holds a verifier key, a reason and its own salt, never a hash
value or a label. Its salt is 16 bytes of its own from the OS CSPRNG, so it
says nothing about any other entry's salt or leaf. Rotations are read from
the ``origin_keys`` table (one row per applied rotation), never by scanning
the log, and each entry is parsed before it is handed out: a row that does
not name a rotate entry is a corrupted database, and the read fails rather
than give out the bytes of an entry of another kind.
"""

from __future__ import annotations

from node.errors import LedgerError
from node.ledger.service import Ledger
from protocol.api_documents import RotationList, ServedRotation
from protocol.entry import RotateEntry, parse_entry
from protocol.errors import MalformedError

__all__ = ["proven_rotations"]


def _rotation_item(ledger: Ledger, origin: str, index: int) -> ServedRotation:
    """One rotation: the entry, the checkpoint of size ``index + 1`` (or None), the proof."""
    log = ledger.log_for(origin)
    data = ledger.entry(log, index)
    try:
        entry = None if data is None else parse_entry(bytes(data))
    except MalformedError:
        entry = None
    if data is None or not isinstance(entry, RotateEntry):
        # Never hand out bytes of another entry kind: they may hold hash values.
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


def proven_rotations(ledger: Ledger, origin: str, size: int) -> RotationList:
    """Each rotation of ``origin`` applied in its first ``size`` entries, proven, by index.

    Raises:
        LedgerError: if the database names as a rotation an entry that is not one.
    """
    indexes = [r for r in ledger.rotation_indexes(origin) if r < size]
    return RotationList(
        origin=origin, rotations=tuple(_rotation_item(ledger, origin, r) for r in indexes)
    )
