"""What each peer last proved it holds: the size of its verified head per origin.

Layer: node.sync. In memory only, one table per open
:class:`~node.ledger.database.Database` (the serving process's): the sync
engine records a peer's checkpoint of an origin once the replica has verified
it against the origin's key chain (never a size the peer merely claims), and
the console reads how far each held log lags behind the best peer.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass

from node.ledger.database import Database

__all__ = ["PeerHead", "PeerHeads", "peer_heads"]


@dataclass(frozen=True, slots=True)
class PeerHead:
    """A peer's verified checkpoint size of one origin, and when we saw it (``time.time()``)."""

    peer: str
    origin: str
    size: int
    seen_at: float


class PeerHeads:
    """The latest verified head of every (peer, origin) seen by this process."""

    def __init__(self) -> None:
        self._heads: dict[tuple[str, str], PeerHead] = {}
        self._lock = threading.Lock()

    def record(self, peer: str, origin: str, size: int) -> None:
        """Remember that ``peer`` served a verified checkpoint of ``origin`` of ``size``."""
        with self._lock:
            self._heads[(peer, origin)] = PeerHead(peer, origin, size, time.time())

    def best(self, origin: str) -> PeerHead | None:
        """The largest head of ``origin`` any peer has shown, or None."""
        with self._lock:
            heads = [h for (_p, o), h in self._heads.items() if o == origin]
        return max(heads, key=lambda h: h.size, default=None)

    def all(self) -> list[PeerHead]:
        """Every head recorded, by peer then origin."""
        with self._lock:
            return sorted(self._heads.values(), key=lambda h: (h.peer, h.origin))


_HEADS: weakref.WeakKeyDictionary[Database, PeerHeads] = weakref.WeakKeyDictionary()


def peer_heads(db: Database) -> PeerHeads:
    """The peer heads of ``db`` (made on first use; one per open database)."""
    heads = _HEADS.get(db)
    if heads is None:
        heads = _HEADS[db] = PeerHeads()
    return heads
