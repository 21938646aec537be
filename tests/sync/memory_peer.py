"""An in-memory peer: the :class:`~node.sync.client.PeerClient` interface over a real ledger.

python-tuf's RepositorySimulator idea: the sync engine talks to an object
that answers from a real node's SQLite ledger, with no server, socket or
TLS, and a test switches faults on through :class:`Faults`: a rewritten
checkpoint, a truncated or altered page, a bad proof, an error (429, 503, a
broken connection) on any call. What the engine does with the answers is
the production code (Database, Replica, sync_peer); only the transport is
replaced. The real-mTLS tests (``tests/sync/test_sync_engine.py``,
``test_transport.py``) cover the transport itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from node.errors import PeerError
from node.ledger import Ledger
from node.sync.client import PAGE_SIZE, RemoteLog
from protocol.evidence import ForkEvidence
from protocol.wire import ConsistencyProof


@dataclass
class Faults:
    """What the in-memory peer does wrong; all off by default."""

    note: Callable[[str], str] | None = None
    """Rewrites every checkpoint note served (by /v1/logs, /v1/checkpoint, /v1/checkpoints)."""
    page: Callable[[int, list[bytes]], list[bytes]] | None = None
    """Rewrites every page of entries served: (start, entries) -> entries."""
    proof: Callable[[tuple[bytes, ...]], tuple[bytes, ...]] | None = None
    """Rewrites every consistency proof served."""
    errors: dict[str, PeerError] = field(default_factory=dict)
    """Calls (``logs``, ``entries``, ...) that raise this error instead of answering."""


class InMemoryPeerClient:
    """A peer serving the logs of the node in ``node_dir``, from its own ledger."""

    def __init__(self, name: str, node_dir: Path) -> None:
        self._name = name
        self.ledger = Ledger.open(node_dir, read_only=True)
        self.faults = Faults()
        self.calls: list[str] = []

    @property
    def name(self) -> str:
        return self._name

    async def __aenter__(self) -> InMemoryPeerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.ledger.close()

    def _call(self, what: str) -> None:
        self.calls.append(what)
        error = self.faults.errors.get(what)
        if error is not None:
            raise error

    def _note(self, note: str) -> str:
        return note if self.faults.note is None else self.faults.note(note)

    async def logs(self) -> list[RemoteLog]:
        self._call("logs")
        out = []
        for log in self.ledger.logs():
            record = self.ledger.stored_checkpoint(log)
            if record is None:
                continue
            note = self._note(self.ledger.served_note(log, record))
            out.append(
                RemoteLog(
                    origin=log.origin,
                    vkey=log.verifier_key,
                    size=record.size,
                    checkpoint=note,
                    frozen=False,
                )
            )
        return out

    async def checkpoint(self, origin: str) -> str:
        self._call("checkpoint")
        return self._note(self.ledger.latest_checkpoint(origin).note)

    async def entries(self, origin: str, start: int, end: int) -> list[bytes]:
        self._call("entries")
        log = self.ledger.log_for(origin)
        out: list[bytes] = []
        for at in range(start, end, PAGE_SIZE):
            rows = self.ledger.entries(log, at, min(end, at + PAGE_SIZE))
            page = [bytes(data) for _index, data, _leaf in rows]
            out.extend(page if self.faults.page is None else self.faults.page(at, page))
        return out

    async def consistency(self, origin: str, old: int, new: int) -> ConsistencyProof:
        self._call("consistency")
        hashes = self.ledger.prove_consistency(old, new, origin=origin).hashes
        if self.faults.proof is not None:
            hashes = self.faults.proof(hashes)
        return ConsistencyProof(old_size=old, new_size=new, hashes=hashes)

    async def checkpoints(self, origin: str, start: int = 0) -> list[tuple[int, str]]:
        self._call("checkpoints")
        log = self.ledger.log_for(origin)
        return [
            (r.size, self._note(self.ledger.served_note(log, r)))
            for r in self.ledger.stored_checkpoints(log, start)
        ]

    async def evidence(self) -> list[ForkEvidence]:
        self._call("evidence")
        return [ForkEvidence.from_json(r.evidence_json) for r in self.ledger.peers.list_evidence()]

    async def events(self) -> AsyncIterator[tuple[str, int]]:
        self._call("events")
        for log in await self.logs():
            yield log.origin, log.size
