"""The async face of a node's database: :class:`Database`.

Layer: node.ledger. Thread-confined SQLite access (see
:mod:`node.storage.database`) bound to :class:`~node.ledger.service.Ledger`:
the writer thread holds the writable ledger (with the signing key), each
reader thread a read-only one. The server and the sync engine reach the
database only through here, so no SQLite call ever runs on the event loop.
"""

from __future__ import annotations

from pathlib import Path

from node.ledger.service import Ledger
from node.storage.database import ThreadedDatabase

__all__ = ["Database"]


def _close(ledger: Ledger) -> None:
    ledger.close()


def _data_version(ledger: Ledger) -> int:
    return ledger.data_version()


class Database(ThreadedDatabase[Ledger]):
    """One writer :class:`Ledger` and N read-only ones, each in its own thread.

    Use ``await db.read(fn)`` / ``await db.write(fn)`` with a function of the
    ledger; it runs in a worker thread and its result is returned.
    """

    @classmethod
    async def open(cls, node_dir: Path, *, readers: int = 3) -> Database:
        """Open the node in ``node_dir``: the writer first (it migrates), then readers.

        Raises:
            ConfigError: if the node directory, config or key is bad.
            StorageError: if the database cannot be opened.
        """

        def opener(read_only: bool) -> Ledger:
            return Ledger.open(node_dir, read_only=read_only)

        db = cls(_close, _data_version)
        await db._start(opener, readers)
        return db
