"""The read API as an auditor uses it, over mutual TLS as an ``auditor`` peer.

Layer: node.audit. The peer client (:class:`~node.sync.client.HttpPeerClient`)
plus what only an auditor asks for: a node's own origin, leaf hashes and the
key rotations it holds. Answers are checked for shape here; whether they are
true is decided elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from node.errors import PeerProtocolError
from node.sync.client import PAGE_SIZE, HttpPeerClient
from protocol.encoding import decode_b64, decode_hex
from protocol.errors import MalformedError
from protocol.hashing import HASH_SIZE

__all__ = ["AuditClient", "ServedRotation"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServedRotation:
    """A key rotation as a node serves it (``/v1/rotations``), not yet verified.

    Attributes:
        index: the rotate entry's index in the log.
        entry: the entry's exact bytes.
        checkpoint: the signed note of size ``index + 1``, or None when the
            node does not hold it.
        proof: the inclusion proof of the entry in the tree of size ``index + 1``.
    """

    index: int
    entry: bytes
    checkpoint: str | None
    proof: tuple[bytes, ...]


class AuditClient(HttpPeerClient):
    """The read API as an auditor uses it: the peer client plus health, leaf hashes, rotations."""

    async def health(self) -> str:
        """The node's own origin (from ``/v1/health``)."""
        doc = await self._get_json("/v1/health")
        origin = doc.get("origin")
        if not isinstance(origin, str) or not origin:
            raise PeerProtocolError(self.name, "/v1/health: 'origin' must be a string")
        return origin

    async def leaf_hashes(self, origin: str, start: int, end: int) -> list[bytes]:
        """One page of leaf hashes from ``start`` (at most ``end - start``, at least one)."""
        doc = await self._get_json(
            "/v1/leaf-hashes",
            {"origin": origin, "start": start, "end": min(end, start + PAGE_SIZE)},
        )
        items = doc.get("leaf_hashes")
        if doc.get("origin") != origin or doc.get("start") != start or not isinstance(items, list):
            raise PeerProtocolError(
                self.name, f"/v1/leaf-hashes: answered for another origin or start than {start}"
            )
        if not items or len(items) > min(PAGE_SIZE, end - start):
            raise PeerProtocolError(
                self.name,
                f"/v1/leaf-hashes: {len(items)} hashes from {start} (wanted up to {end})",
            )
        try:
            out = [bytes.fromhex(h) for h in items]
        except (TypeError, ValueError):
            out = []
        # Canonical: exactly 64 lowercase hex digits each, so re-encoding gives them back.
        if (
            len(out) != len(items)
            or [h.hex() for h in out] != items
            or any(len(h) != 32 for h in out)
        ):
            raise PeerProtocolError(
                self.name, f"/v1/leaf-hashes from {start}: expected 64 lowercase hex digits each"
            )
        return out

    async def rotations(self, origin: str) -> list[ServedRotation]:
        """The origin's key rotations the node holds, by increasing index (unverified)."""
        doc = await self._get_json("/v1/rotations", {"origin": origin})
        items = doc.get("rotations")
        if doc.get("origin") != origin or not isinstance(items, list):
            raise PeerProtocolError(
                self.name, "/v1/rotations: expected this origin and a 'rotations' list"
            )
        out: list[ServedRotation] = []
        for i, item in enumerate(items):
            where = f"rotations[{i}]"
            try:
                if not isinstance(item, Mapping):
                    raise MalformedError("expected an object", field=where)
                index, note, proof = item.get("index"), item.get("checkpoint"), item.get("proof")
                entry_text = item.get("entry_b64")
                if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                    raise MalformedError("expected a non-negative integer", field=f"{where}.index")
                if out and index <= out[-1].index:
                    raise MalformedError("indexes must increase", field=f"{where}.index")
                if note is not None and not isinstance(note, str):
                    raise MalformedError("expected a string or null", field=f"{where}.checkpoint")
                if not isinstance(proof, list):
                    raise MalformedError("expected a list of hashes", field=f"{where}.proof")
                if not isinstance(entry_text, str):
                    raise MalformedError("expected a string", field=f"{where}.entry_b64")
                entry = decode_b64(entry_text, field=f"{where}.entry_b64")
                hashes = tuple(
                    decode_hex(h, field=f"{where}.proof[{j}]", length=HASH_SIZE)
                    for j, h in enumerate(proof)
                )
            except MalformedError as e:
                raise PeerProtocolError(self.name, f"/v1/rotations: {e}") from e
            out.append(ServedRotation(index=index, entry=entry, checkpoint=note, proof=hashes))
        return out
