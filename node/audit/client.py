"""The read API as an auditor uses it, over mutual TLS as an ``auditor`` peer.

Layer: node.audit. The peer client (:class:`~node.sync.client.HttpPeerClient`)
plus what only an auditor asks for: a node's own origin, leaf hashes and the
key rotations it holds. Answers are parsed strictly with
:mod:`protocol.api_documents` and checked against what was asked here;
whether they are true is decided elsewhere.
"""

from __future__ import annotations

from node.errors import PeerProtocolError
from node.sync.client import PAGE_SIZE, HttpPeerClient
from protocol.api_documents import Health, LeafHashesPage, RotationList, ServedRotation

__all__ = ["AuditClient", "ServedRotation"]


class AuditClient(HttpPeerClient):
    """The read API as an auditor uses it: the peer client plus health, leaf hashes, rotations."""

    async def health(self) -> str:
        """The node's own origin (from ``/v1/health``)."""
        return (await self._document("/v1/health", None, Health.from_json)).origin

    async def leaf_hashes(self, origin: str, start: int, end: int) -> list[bytes]:
        """One page of leaf hashes from ``start`` (at most ``end - start``, at least one)."""
        page = await self._document(
            "/v1/leaf-hashes",
            {"origin": origin, "start": start, "end": min(end, start + PAGE_SIZE)},
            LeafHashesPage.from_json,
        )
        if page.origin != origin or page.start != start:
            raise PeerProtocolError(
                self.name, f"/v1/leaf-hashes: answered for another origin or start than {start}"
            )
        count = len(page.leaf_hashes)
        if not count or count > min(PAGE_SIZE, end - start):
            raise PeerProtocolError(
                self.name, f"/v1/leaf-hashes: {count} hashes from {start} (wanted up to {end})"
            )
        return list(page.leaf_hashes)

    async def rotations(self, origin: str) -> list[ServedRotation]:
        """The origin's key rotations the node holds, by increasing index (unverified)."""
        served = await self._document("/v1/rotations", {"origin": origin}, RotationList.from_json)
        if served.origin != origin:
            raise PeerProtocolError(
                self.name, f"/v1/rotations: asked for {origin!r}, got {served.origin!r}"
            )
        return list(served.rotations)
