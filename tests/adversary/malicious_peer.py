"""Malicious peers: one index of the scripted faults, plus whole-node attacks.

Per-request faults already have a home, and are reused from there rather
than copied:

* :class:`tests.sync.conftest.ScriptedPeer` (real mTLS on 127.0.0.1) serves a
  real node's logs with switchable faults: ``bad_signature`` (forged
  checkpoint), ``wrong_entries`` / ``flip_byte`` / ``extra_entry`` /
  ``trailing_byte`` (entries that do not match the signed root), ``bad_json``
  (truncated), ``html``, ``oversized`` and ``gzip_bomb`` (endless), ``stall``
  (slow), ``bad_proof``;
* :class:`tests.sync.memory_peer.InMemoryPeerClient` does the same without a
  socket (rewritten notes, pages, proofs, errors on any call).

What a faulty *request* cannot show is a peer whose whole node misbehaves
over time. This module adds those, as real nodes served by the production
server (:func:`node.api.server.run_server`):

* :func:`snapshot`: a byte copy of a node now; served later in place of the
  node (:func:`serve_at` on the same port) it is the author **rolled back**
  (restored from an old backup);
* :func:`split`: a second node holding the same key and the same history so
  far; appending different entries to each makes a **split view** (two
  signed histories of one origin), shown to a follower one after the other
  on the same address, or to two followers at once.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path

from node.api.server import RunningServer, run_server
from tests.sync.conftest import ScriptedPeer
from tests.sync.memory_peer import Faults, InMemoryPeerClient
from tests.waiting import PATIENCE

__all__ = [
    "Faults",
    "InMemoryPeerClient",
    "ScriptedPeer",
    "ServedNode",
    "serve_at",
    "snapshot",
    "split",
]


def snapshot(node_dir: Path, dest: Path) -> Path:
    """A copy of the node as it is now (database, keys, config): its old backup."""
    return Path(shutil.copytree(node_dir, dest))


def split(node_dir: Path, dest: Path) -> Path:
    """A second node with the same signing key and history so far, free to diverge."""
    return Path(shutil.copytree(node_dir, dest))


@dataclass
class ServedNode:
    """A node served by the production server in this process (stop with :meth:`close`)."""

    server: RunningServer
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, PATIENCE)


async def serve_at(node_dir: Path, port: int = 0) -> ServedNode:
    """Serve ``node_dir`` (no sync) on 127.0.0.1:``port``, e.g. where another node was.

    A follower that knows a peer by its URL then meets this node instead:
    an old backup of the author (rollback) or another history (split view).
    """
    started: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_server(
            node_dir, f"127.0.0.1:{port}", sync=False, on_started=started.set_result, stop=stop
        )
    )
    try:
        server = await asyncio.wait_for(asyncio.shield(started), PATIENCE)
    except BaseException:
        stop.set()
        task.cancel()
        raise
    return ServedNode(server, stop, task)
