"""HTTP client of one peer's read API, over mutually authenticated TLS.

Layer: node.sync. Performs network I/O through :mod:`node.sync.transport`;
decides nothing about trust.

The client fetches and parses; it never stores and never trusts. Everything it
returns is checked by :mod:`node.ledger.replica` against the origin's key
before a byte is written. What it does enforce is the shape and size of what a
peer may send: the transport caps every body's *decoded* size, requires the
media type asked for and translates every failure into a
:class:`~node.errors.PeerError` naming the peer; this module parses every
document strictly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from node.errors import PeerProtocolError, PeerRefusedError
from node.storage.peer_store import PeerRecord
from node.sync.transport import Transport
from node.tls import client_ssl_context
from protocol.api_documents import (
    CheckpointEvent,
    CheckpointList,
    ErrorBody,
    EvidenceList,
    LogList,
    PeerCardAnswer,
    RemoteLog,
)
from protocol.card import MAX_CARD_BYTES
from protocol.entry import MAX_ENTRY_BYTES
from protocol.errors import MalformedError
from protocol.evidence import ForkEvidence
from protocol.wire import ENTRY_BUNDLE_MEDIA_TYPE, ConsistencyProof, decode_entry_bundle

__all__ = [
    "MAX_BUNDLE_BYTES",
    "MAX_JSON_BYTES",
    "MAX_NOTE_BYTES",
    "PAGE_SIZE",
    "HttpPeerClient",
    "PeerClient",
    "RemoteLog",
]

PAGE_SIZE = 10_000
"""Entries asked for per request (the server's hard cap)."""

MAX_JSON_BYTES = 16 * 1024 * 1024
"""Largest decoded JSON body accepted (logs, proofs, evidence, checkpoints)."""

MAX_BUNDLE_BYTES = PAGE_SIZE * (MAX_ENTRY_BYTES + 2)
"""Largest entries page accepted: a full page of the largest valid entries,
each with its 2-byte length prefix."""

MAX_NOTE_BYTES = 128 * 1024
"""Largest checkpoint note accepted (protocol.note.MAX_NOTE_BYTES)."""

_D = TypeVar("_D")

_MAX_EVENT_LINE = 4096  # bytes
_EVENTS_READ_TIMEOUT = 50.0  # seconds: three missed 15 s pings, with room


class PeerClient(Protocol):
    """The read API of one peer, as the sync engine uses it.

    :class:`HttpPeerClient` is the real one (mutual TLS); tests use an
    in-memory one that serves a real ledger and can be told to misbehave
    (``tests/sync/memory_peer.py``). Nothing returned is trusted: the replica
    verifies it all against the origin's key.
    """

    @property
    def name(self) -> str:
        """The peer's name, as errors and reports carry it."""
        ...

    async def logs(self) -> list[RemoteLog]:
        """The logs the peer holds, with their latest checkpoints (unverified)."""
        ...

    async def checkpoint(self, origin: str) -> str:
        """The peer's latest checkpoint note of ``origin`` (unverified)."""
        ...

    async def entries(self, origin: str, start: int, end: int) -> list[bytes]:
        """Entries [start, end) of ``origin``: exactly that many, or a PeerError."""
        ...

    async def consistency(self, origin: str, old: int, new: int) -> ConsistencyProof:
        """The consistency proof ``old -> new`` of ``origin`` (unverified)."""
        ...

    async def checkpoints(self, origin: str, start: int = 0) -> list[tuple[int, str]]:
        """One page of stored checkpoints of ``origin`` from size ``start``, by size."""
        ...

    async def evidence(self) -> list[ForkEvidence]:
        """Fork evidence the peer holds (each to be verified by the caller)."""
        ...

    def events(self) -> AsyncIterator[tuple[str, int]]:
        """Checkpoint announcements as ``(origin, size)``, until the stream ends."""
        ...

    async def close(self) -> None:
        """Release the client's connections."""
        ...


class HttpPeerClient:
    """:class:`PeerClient` over HTTPS with mutual TLS, through one :class:`Transport`.

    Use as ``async with HttpPeerClient(...) as client``.
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        server_cert_pem: str,
        cert_path: Path,
        key_path: Path,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self._name = name
        self.url = url.rstrip("/")
        self.transport = Transport(
            name,
            url,
            ssl_context=client_ssl_context(cert_path, key_path, server_cert_pem),
            timeout=timeout,
            connect_timeout=connect_timeout,
        )

    @classmethod
    def for_peer(cls, peer: PeerRecord, *, cert_path: Path, key_path: Path) -> HttpPeerClient:
        """A client of the peer in ``peer`` (its URL and pinned certificate)."""
        return cls(
            peer.name,
            peer.url,
            server_cert_pem=peer.tls_cert,
            cert_path=cert_path,
            key_path=key_path,
        )

    @property
    def name(self) -> str:
        """The peer's name, as errors and reports carry it."""
        return self._name

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self.transport.close()

    async def _document(
        self,
        path: str,
        params: Mapping[str, str | int] | None,
        parse: Callable[[Mapping[str, Any]], _D],
    ) -> _D:
        """``GET path`` parsed strictly into its :mod:`protocol.api_documents` type."""
        doc = await self.transport.get_json(path, params, cap=MAX_JSON_BYTES)
        try:
            return parse(doc)
        except MalformedError as e:
            raise PeerProtocolError(self.name, f"{path}: {e}") from e

    # -- endpoints ---------------------------------------------------------------

    async def logs(self) -> list[RemoteLog]:
        """The logs the peer holds, with their latest checkpoints (unverified)."""
        return list((await self._document("/v1/logs", None, LogList.from_json)).logs)

    async def checkpoint(self, origin: str) -> str:
        """The peer's latest checkpoint note of ``origin`` (unverified)."""
        body = await self.transport.get(
            "/v1/checkpoint", {"origin": origin}, media="text/plain", cap=MAX_NOTE_BYTES
        )
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PeerProtocolError(self.name, "/v1/checkpoint: not UTF-8") from e

    async def card(self) -> str | None:
        """The peer's signed card (:mod:`protocol.card`, unverified), or None if it has none."""
        path = "/v1/card"
        reply = await self.transport.request(
            "GET", path, accept="text/plain", cap=MAX_CARD_BYTES, accepted=(200, 404)
        )
        if reply.status == 404:
            return None
        if reply.media_type != "text/plain":
            raise PeerProtocolError(self.name, f"{path}: {reply.media_type}, not text/plain")
        try:
            return reply.body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PeerProtocolError(self.name, f"{path}: not UTF-8") from e

    async def present_card(self, note: str) -> PeerCardAnswer:
        """Present our own signed card to the peer (``POST /v1/peer-card``).

        Over this client's TLS identity, which the peer must still trust: the
        card lists our renewed certificate, signed with our log's key.

        Raises:
            PeerRefusedError: the peer refused the card, with its reason (not
                signed by the key it pinned for us, a certificate of another
                peer, malformed).
            PeerUnavailableError, PeerProtocolError: as any request.
        """
        path = "/v1/peer-card"
        reply = await self.transport.request(
            "POST",
            path,
            body=note.encode("utf-8"),
            content_type="text/plain",
            accept="application/json",
            cap=MAX_JSON_BYTES,
            accepted=(200, 400, 403, 409, 413),
        )
        try:
            if reply.status != 200:
                raise PeerRefusedError(self.name, ErrorBody.from_json(reply.body).error)
            return PeerCardAnswer.from_json(reply.body)
        except MalformedError as e:
            raise PeerProtocolError(self.name, f"{path} ({reply.status}): {e}") from e

    async def entries(self, origin: str, start: int, end: int) -> list[bytes]:
        """Entries [start, end) of ``origin``, fetched page by page, exactly that many.

        Pages are asked for as entry bundles (:mod:`protocol.wire`): the
        exact entry bytes, length-prefixed, with no JSON or base64 to decode.
        """
        out: list[bytes] = []
        while start + len(out) < end:
            at = start + len(out)
            asked = min(PAGE_SIZE, end - at)
            body = await self.transport.get(
                "/v1/entries",
                {"origin": origin, "start": at, "end": at + asked},
                media=ENTRY_BUNDLE_MEDIA_TYPE,
                cap=MAX_BUNDLE_BYTES,
            )
            try:
                out.extend(decode_entry_bundle(body, max_entries=asked))
            except MalformedError as e:
                raise PeerProtocolError(self.name, f"/v1/entries from {at}: {e}") from e
        return out

    async def consistency(self, origin: str, old: int, new: int) -> ConsistencyProof:
        """The peer's consistency proof ``old -> new`` of ``origin`` (unverified)."""
        proof = await self._document(
            "/v1/proof/consistency",
            {"origin": origin, "old": old, "new": new},
            ConsistencyProof.from_json,
        )
        if (proof.old_size, proof.new_size) != (old, new):
            raise PeerProtocolError(
                self.name,
                f"/v1/proof/consistency: asked {old} -> {new}, "
                f"got {proof.old_size} -> {proof.new_size}",
            )
        return proof

    async def checkpoints(self, origin: str, start: int = 0) -> list[tuple[int, str]]:
        """One page of the peer's stored checkpoints of ``origin`` from size ``start``.

        Returns:
            ``(size, note)`` pairs in increasing size (unverified); empty when
            the peer holds none from ``start``.
        """
        page = await self._document(
            "/v1/checkpoints", {"origin": origin, "start": start}, CheckpointList.from_json
        )
        if page.origin != origin:
            raise PeerProtocolError(
                self.name, f"/v1/checkpoints: asked for {origin!r}, got {page.origin!r}"
            )
        if page.checkpoints and page.checkpoints[0].size < start:
            raise PeerProtocolError(
                self.name,
                f"/v1/checkpoints: asked from size {start}, got {page.checkpoints[0].size}",
            )
        return [(c.size, c.note) for c in page.checkpoints]

    async def evidence(self) -> list[ForkEvidence]:
        """Fork evidence the peer holds (each to be verified by the caller)."""
        return list((await self._document("/v1/evidence", None, EvidenceList.from_json)).evidence)

    async def events(self) -> AsyncIterator[tuple[str, int]]:
        """Checkpoint announcements as ``(origin, size)``, until the stream ends.

        The stream is long-lived: only the connect timeout applies, and a
        read timeout of three ping intervals detects a dead peer.
        """
        event = ""
        async for text in self.transport.lines(
            "/v1/events", max_line=_MAX_EVENT_LINE, read_timeout=_EVENTS_READ_TIMEOUT
        ):
            if text.startswith("event:"):
                event = text[6:].strip()
            elif text.startswith("data:") and event == "checkpoint":
                try:
                    announced = CheckpointEvent.from_json(text[5:].strip())
                except MalformedError as e:
                    raise PeerProtocolError(self.name, f"/v1/events: {e}") from e
                yield announced.origin, announced.size
            elif not text:
                event = ""
