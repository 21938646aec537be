"""Thread-confined SQLite access for asyncio code: one writer, many readers.

Layer: node.storage. Runs every database call in a worker thread, never on
the event loop.

The model is Datasette's: one writer thread owns the only writable
connection, so writes are serialised in submission order without lock
contention; each of N reader threads owns a read-only connection (WAL lets
them read while the writer writes). A further read-only connection answers
:meth:`ThreadedDatabase.data_version`, SQLite's per-connection counter that
changes whenever *another* connection commits: polling it is how a server
notices writes made by the CLI in another process.

This class is generic over the handle each thread owns (a connection, or a
higher-level object wrapping one) so it stays below the ledger layer;
:class:`node.ledger.database.Database` binds it to :class:`node.ledger.Ledger`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from node.errors import StorageError

__all__ = ["ThreadedDatabase"]

H = TypeVar("H")
T = TypeVar("T")


class _Worker(Generic[H]):
    """One thread and the handle only it uses."""

    def __init__(self, name: str) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.handle: H | None = None

    async def run(self, fn: Callable[[H], T]) -> T:
        handle = self.handle
        if handle is None:
            raise StorageError("the database is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, fn, handle)


class ThreadedDatabase(Generic[H]):
    """One writer thread and N reader threads, each with its own handle."""

    def __init__(
        self,
        closer: Callable[[H], None],
        version: Callable[[H], int],
    ) -> None:
        """Use :meth:`start` (or a subclass's ``open``) rather than this."""
        self._closer = closer
        self._version = version
        self._writer: _Worker[H] = _Worker("hashmesh-db-writer")
        self._watcher: _Worker[H] = _Worker("hashmesh-db-watch")
        self._readers: list[_Worker[H]] = []
        self._idle: asyncio.Queue[_Worker[H]] = asyncio.Queue()
        self._closed = False

    async def _start(self, opener: Callable[[bool], H], readers: int) -> None:
        if readers < 1:
            raise ValueError(f"readers must be at least 1, got {readers}")
        loop = asyncio.get_running_loop()
        try:
            # The writer opens first: it migrates the schema the readers expect.
            self._writer.handle = await loop.run_in_executor(self._writer.executor, opener, False)
            self._watcher.handle = await loop.run_in_executor(self._watcher.executor, opener, True)
            for i in range(readers):
                worker: _Worker[H] = _Worker(f"hashmesh-db-reader-{i}")
                self._readers.append(worker)
                worker.handle = await loop.run_in_executor(worker.executor, opener, True)
                self._idle.put_nowait(worker)
        except BaseException:
            await self.close()
            raise

    @classmethod
    async def start(
        cls,
        opener: Callable[[bool], H],
        closer: Callable[[H], None],
        version: Callable[[H], int],
        *,
        readers: int = 3,
    ) -> ThreadedDatabase[H]:
        """Open the writer's and the readers' handles, each in its own thread.

        Args:
            opener: opens a handle; its argument is ``read_only``.
            closer: closes a handle (called in the handle's thread).
            version: the ``PRAGMA data_version`` of a handle.
            readers: how many reader threads (and read-only connections).
        """
        db = cls(closer, version)
        await db._start(opener, readers)
        return db

    async def read(self, fn: Callable[[H], T]) -> T:
        """Run ``fn`` with a read-only handle in an idle reader thread.

        Raises:
            StorageError: if the database is closed.
        """
        if self._closed:
            raise StorageError("the database is closed")
        worker = await self._idle.get()
        try:
            return await worker.run(fn)
        finally:
            # A cancelled caller returns the reader at once: its thread still
            # finishes fn first, and the next job queues behind it.
            self._idle.put_nowait(worker)

    async def write(self, fn: Callable[[H], T]) -> T:
        """Run ``fn`` with the writable handle in the writer thread.

        Writes run one at a time, in the order they were submitted.

        Raises:
            StorageError: if the database is closed.
        """
        if self._closed:
            raise StorageError("the database is closed")
        return await self._writer.run(fn)

    async def data_version(self) -> int:
        """A number that changes whenever another connection commits.

        Commits by :meth:`write` count too (the watcher has its own
        connection); compare with the previous value to notice a change.
        """
        if self._closed:
            raise StorageError("the database is closed")
        return await self._watcher.run(self._version)

    async def close(self) -> None:
        """Close every handle in its thread and stop the threads (idempotent)."""
        self._closed = True
        loop = asyncio.get_running_loop()
        for worker in [self._writer, self._watcher, *self._readers]:
            handle, worker.handle = worker.handle, None
            if handle is not None:
                await loop.run_in_executor(worker.executor, self._closer, handle)
            worker.executor.shutdown(wait=False)
