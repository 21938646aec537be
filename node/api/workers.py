"""Worker processes for CPU-heavy requests: :class:`WorkerPool`.

Layer: node.api. A bulk match is Python work from the request's bytes to the
response's (parse, look up, serialise: tens of milliseconds per 10,000
hashes). Run in the server's threads it holds the GIL that the event loop
needs for every light request, so ``/v1/checkpoint`` waited hundreds of
milliseconds behind it (docs/benchmarks.md). Here it runs in other
processes: each worker is ``python -m node.api.workers NODE_DIR NICE``, with
its own interpreter, its own read-only database connection
(:meth:`~node.ledger.service.Ledger.open` ``read_only=True``), and a lower CPU
priority (``nice``) than the server, so the event loop wins a contended core.

The server sends a job's raw request bytes and receives the finished
response document, so parsing and serialising happen in the worker too; the
server only moves bytes. A job is a module-level function named
``"module:function"``, called as ``fn(context, body, args)`` and returning
``(document, facts)`` (:data:`JobFunction`).

Frames on the worker's stdin and stdout, both ways: ``!II`` (length of a
JSON head, length of a body), the head, the body. The worker's own fd 1 is
pointed at stderr, so a stray ``print`` cannot corrupt a frame.

Failure and shutdown:

* The pool is bounded like the heavy lane: ``size`` jobs run at once and at
  most ``queue`` wait; beyond that :meth:`WorkerPool.run` answers 503 with
  ``Retry-After`` at once.
* A worker that dies (killed, out of memory) fails only the job it held,
  with :class:`WorkerLostError` (503); the pool starts a replacement.
* A request cancelled while its job runs (the client went away, the handler
  timed out) lets the worker finish; the answer is dropped and the worker
  returns to the pool, so the byte stream is never left mid-frame.
* :meth:`WorkerPool.close` closes every worker's stdin (a worker exits at
  end of input) and kills any that has not exited within
  :data:`STOP_TIMEOUT`. A server killed outright closes the pipes too: idle
  workers exit at once, a busy one after its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import json
import logging
import os
import signal
import sqlite3
import struct
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from node.api.state import WorkLane
from node.errors import EntryNotFoundError, IndexPendingError, StorageError, UnknownLogError
from protocol.errors import MalformedError

__all__ = [
    "POOL_KEY",
    "STOP_TIMEOUT",
    "JobFunction",
    "WorkerContext",
    "WorkerLostError",
    "WorkerPool",
    "serve_jobs",
]

log = logging.getLogger("hashmesh.api")

STOP_TIMEOUT = 5.0
"""Seconds a worker gets to exit after its input is closed before it is killed."""

START_TIMEOUT = 60.0
"""Seconds a new worker may take to open the database and say it is ready."""

_FRAME = struct.Struct("!II")
_MAX_HEAD = 1 << 20


class WorkerLostError(web.HTTPServiceUnavailable):
    """The worker process answering a request ended before it answered (503, retry)."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            text=f"the worker process answering this request ended ({reason}); retry shortly",
            headers={"Retry-After": "1"},
        )


@dataclass
class WorkerContext:
    """What a worker process keeps between jobs: its read-only ledger and job state.

    Attributes:
        node_dir: the node directory.
        ledger: the worker's read-only :class:`~node.ledger.service.Ledger`.
        state: anything a job keeps for the next job of the same worker
            (keyed by the job's own name), e.g. an opened index.
    """

    node_dir: Path
    ledger: Any
    state: dict[str, Any] = field(default_factory=dict)


JobFunction = Callable[[WorkerContext, bytes, Mapping[str, Any]], tuple[bytes, dict[str, Any]]]
"""A job: ``(context, body, args) -> (document, facts)``; ``facts`` is JSON-ready."""


# -- frames --------------------------------------------------------------------


def _frame(head: Mapping[str, Any], body: bytes) -> bytes:
    encoded = json.dumps(head, separators=(",", ":")).encode("utf-8")
    return _FRAME.pack(len(encoded), len(body)) + encoded + body


async def _read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    head_len, body_len = _FRAME.unpack(await reader.readexactly(_FRAME.size))
    if head_len > _MAX_HEAD:
        raise ConnectionError(f"a worker sent a frame head of {head_len} bytes")
    head = json.loads(await reader.readexactly(head_len))
    body = await reader.readexactly(body_len) if body_len else b""
    return head, body


def _read_part(stream: IO[bytes], n: int) -> bytes:
    """The rest of a frame: ``n`` bytes (end of input here is an error)."""
    if not n:
        return b""
    part = _read_exactly(stream, n)
    if part is None:
        raise EOFError("the server closed the pipe mid-frame")
    return part


def _read_exactly(stream: IO[bytes], n: int) -> bytes | None:
    """``n`` bytes from a blocking stream; None at end of input before the first byte."""
    chunks = []
    left = n
    while left:
        chunk = stream.read(left)
        if not chunk:
            if left == n:
                return None
            raise EOFError("the server closed the pipe mid-frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# -- errors across the pipe ----------------------------------------------------


def _error_head(e: BaseException) -> dict[str, Any]:
    """What the server needs to answer as it would have answered in-process."""
    if isinstance(e, MalformedError):
        return {"error": "malformed", "message": e.reason, "field": e.field}
    if isinstance(e, UnknownLogError):
        return {"error": "unknown_log", "message": str(e)}
    if isinstance(e, EntryNotFoundError):
        return {"error": "not_found", "message": str(e), "field": e.field}
    if isinstance(e, StorageError):
        return {"error": "storage", "message": str(e)}
    if isinstance(e, IndexPendingError):
        return {"error": "pending", "message": str(e), "retry_after": e.retry_after}
    if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
        return {"error": "storage", "message": str(e)}
    if isinstance(e, sqlite3.DatabaseError):
        return {"error": "database", "message": str(e)}
    return {"error": "internal", "message": f"{type(e).__name__}: {e}"}


def _raise_error(head: Mapping[str, Any]) -> None:
    kind, message = head.get("error"), str(head.get("message", ""))
    field_name = head.get("field")
    if kind == "malformed":
        raise MalformedError(message, field=field_name)
    if kind == "unknown_log":
        raise UnknownLogError(message)
    if kind == "not_found":
        raise EntryNotFoundError(message, field=str(field_name))
    if kind == "storage":
        raise StorageError(message)
    if kind == "pending":
        raise IndexPendingError(message, retry_after=int(head.get("retry_after", 1)))
    if kind == "database":
        raise sqlite3.DatabaseError(message)
    raise RuntimeError(f"worker process: {message}")


# -- the server's side ---------------------------------------------------------


@dataclass(eq=False)
class _Worker:
    proc: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @property
    def pid(self) -> int:
        return self.proc.pid


class WorkerPool:
    """``size`` worker processes answering jobs, started on first use.

    Args:
        size: worker processes (and jobs running at once).
        queue: jobs that may wait for a worker; more get 503 at once.
        node_dir: where the node is, or an async function that finds out
            (the API application asks its database on first use).
        nice: how much lower the workers' CPU priority is (0-19).
        jobs: jobs each worker imports before it says it is ready (others
            are imported on first use).
    """

    def __init__(
        self,
        size: int,
        queue: int,
        node_dir: Path | Callable[[], Awaitable[Path]],
        *,
        nice: int = 0,
        jobs: Sequence[str] = (),
    ) -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.size = size
        self.nice = nice
        self.jobs = tuple(jobs)
        self.lane = WorkLane(size, queue)
        self._node_dir = node_dir
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._workers: dict[int, _Worker] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._starting: set[_Worker] = set()
        self._closed = False
        self.replaced = 0
        """Workers started to replace one that died."""
        self.stop_timeout = STOP_TIMEOUT
        """Seconds :meth:`close` gives a worker to exit before killing it."""

    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def pids(self) -> tuple[int, ...]:
        """Process ids of the live workers (for tests and ``status``)."""
        return tuple(self._workers)

    @property
    def busy(self) -> int:
        """Workers holding a job now."""
        return len(self._workers) - self._idle.qsize()

    def start(self) -> None:
        """Start every worker now, in the background (``hashmesh serve`` does).

        Otherwise workers start on demand: one at the first job, another
        whenever a job finds none idle, up to ``size``.
        """
        if self._closed:
            return
        while len(self._workers) + len(self._tasks) < self.size:
            self._spawn_soon()

    def _grow(self) -> None:
        """Start one more worker if a job would wait and the pool is not full."""
        if (
            not self._closed
            and self._idle.empty()
            and len(self._workers) + len(self._tasks) < self.size
        ):
            self._spawn_soon()

    def _spawn_soon(self, delay: float = 0.0) -> None:
        task = asyncio.create_task(self._spawn(delay), name="hashmesh-worker-start")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spawn(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        if self._closed:
            return
        node_dir = self._node_dir if isinstance(self._node_dir, Path) else await self._node_dir()
        self._node_dir = node_dir
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "node.api.workers",
            str(node_dir),
            str(self.nice),
            *self.jobs,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 20,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        worker = _Worker(proc, proc.stdout, proc.stdin)
        self._starting.add(worker)
        try:
            head, _body = await asyncio.wait_for(_read_frame(worker.reader), START_TIMEOUT)
            if not head.get("ready"):
                raise ConnectionError(str(head.get("message", "the worker did not start")))
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as e:
            reason = e if not isinstance(e, asyncio.IncompleteReadError) else "it exited"
            log.error("a match worker process did not start (%s); retrying in 5 s", reason)
            await self._kill(worker)
            self._spawn_soon(5.0)
            return
        except BaseException:  # cancelled (the pool is closing): holds nothing yet
            await self._kill(worker)
            raise
        finally:
            self._starting.discard(worker)
        if self.closed():  # closed while this one started
            await self._kill(worker)
            return
        self._workers[worker.pid] = worker
        self._idle.put_nowait(worker)
        log.debug("match worker process %d ready (nice %d)", worker.pid, self.nice)

    async def wait_ready(self) -> int:
        """Wait until the workers being started are ready; the number ready."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        return len(self._workers)

    async def run(
        self, job: str, body: bytes, args: Mapping[str, Any] | None = None
    ) -> tuple[bytes, dict[str, Any]]:
        """Run ``job`` (``"module:function"``) on ``body`` in a worker; its document and facts.

        Raises:
            web.HTTPServiceUnavailable: (503) if every worker is busy and the queue is full.
            WorkerLostError: if the worker died while holding this job (503).
            MalformedError, UnknownLogError, EntryNotFoundError, StorageError,
                IndexPendingError, sqlite3.DatabaseError: as the job raised them
                in the worker.
        """
        if self._closed:
            raise StorageError("the server is shutting down")
        frame = _frame({"job": job, "args": dict(args or {})}, body)
        async with self.lane.slot():
            self._grow()
            worker = await self._idle.get()
            # The exchange runs to its end even if this request is cancelled:
            # the worker's answer must be read before it takes another job.
            exchange = asyncio.create_task(self._exchange(worker, frame))
            exchange.add_done_callback(_retrieve)
            head, document = await asyncio.shield(exchange)
        if not head.get("ok"):
            _raise_error(head)
        return document, dict(head.get("facts", {}))

    async def _exchange(self, worker: _Worker, frame: bytes) -> tuple[dict[str, Any], bytes]:
        try:
            worker.writer.write(frame)
            await worker.writer.drain()
            answer = await _read_frame(worker.reader)
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            await self._lost(worker)
            raise WorkerLostError(type(e).__name__) from e
        self._idle.put_nowait(worker)
        return answer

    async def _lost(self, worker: _Worker) -> None:
        self._workers.pop(worker.pid, None)
        await self._stop(worker)
        code = worker.proc.returncode
        log.error(
            "a match worker process (pid %d) ended with %s; starting another", worker.pid, code
        )
        if not self._closed:
            self.replaced += 1
            self._spawn_soon()

    async def close(self) -> None:
        """Stop every worker: close its input, wait, kill it if it lingers."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        workers = list(self._workers.values())
        self._workers.clear()
        starting = list(self._starting)
        await asyncio.gather(*(self._stop(w) for w in workers), *(self._kill(w) for w in starting))

    async def _kill(self, worker: _Worker) -> None:
        """End a worker that holds no job (still starting, or not wanted)."""
        with contextlib.suppress(OSError):
            worker.writer.close()
        with contextlib.suppress(ProcessLookupError):
            worker.proc.kill()
        await worker.proc.wait()

    async def _stop(self, worker: _Worker) -> None:
        with contextlib.suppress(OSError):
            worker.writer.close()
        try:
            await asyncio.wait_for(worker.proc.wait(), self.stop_timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()
            await worker.proc.wait()


POOL_KEY = web.AppKey("workers", WorkerPool)
"""The API application's worker pool (absent with ``[api] workers = 0``)."""


def _retrieve(task: asyncio.Task[Any]) -> None:
    # An exchange whose request was cancelled still ends; its error is logged
    # by _lost, not left "never retrieved".
    if not task.cancelled():
        task.exception()


# -- the worker's side ---------------------------------------------------------


def _load_job(name: str, cache: dict[str, JobFunction]) -> JobFunction:
    fn = cache.get(name)
    if fn is None:
        module, _, function = name.partition(":")
        fn = cache[name] = getattr(importlib.import_module(module), function)
    return fn


def serve_jobs(
    node_dir: Path, nice: int, preload: Sequence[str], stdin: IO[bytes], stdout: IO[bytes]
) -> int:
    """A worker's life: open the ledger read-only, say ready, answer jobs until end of input."""
    # Imported here: the server's side of this module needs no ledger.
    from node.ledger.service import Ledger

    _keep_freed_memory()
    jobs: dict[str, JobFunction] = {}
    try:
        for name in preload:
            _load_job(name, jobs)
        ledger = Ledger.open(node_dir, read_only=True)
    except Exception as e:  # noqa: BLE001 - reported to the server, which logs it and retries
        with contextlib.suppress(BrokenPipeError):
            stdout.write(_frame({"ready": False, "message": str(e)}, b""))
            stdout.flush()
        return 1
    context = WorkerContext(node_dir, ledger)
    if nice:
        # Lowered once started: the start (imports, opening) is not slowed
        # by a busy machine.
        os.nice(nice)
    try:
        stdout.write(_frame({"ready": True, "pid": os.getpid()}, b""))
        stdout.flush()
        while True:
            header = _read_exactly(stdin, _FRAME.size)
            if header is None:
                return 0
            head_len, body_len = _FRAME.unpack(header)
            head = json.loads(_read_part(stdin, head_len))
            body = _read_part(stdin, body_len)
            try:
                fn = _load_job(str(head["job"]), jobs)
                document, facts = fn(context, body, head.get("args", {}))
                answer = _frame({"ok": True, "facts": facts}, document)
            except Exception as e:  # noqa: BLE001 - every failure is answered, never fatal
                error = _error_head(e)
                if error["error"] == "internal":
                    traceback.print_exc()  # a bug: its traceback goes to the server's stderr
                answer = _frame({"ok": False, **error}, b"")
            stdout.write(answer)
            stdout.flush()
    except (BrokenPipeError, EOFError):
        return 0
    finally:
        ledger.close()


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _keep_freed_memory() -> None:
    """Keep memory a job frees for the next job instead of returning it to the kernel.

    A PDQ search allocates and frees numpy arrays of a few MB for every
    block of queries. With glibc's adaptive thresholds such a block was
    handed back to the kernel when freed and faulted in again, page by
    page, when next allocated: 37,000 page faults per 1,000-query request
    at 10M entries, half of the worker's CPU (205 against 104-117 ms a
    request). Fixed thresholds keep a worker's heap at its peak (tens of
    MB). Elsewhere than glibc (no ``mallopt``) nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)


def _main(argv: list[str]) -> int:
    # Ctrl-C in a terminal reaches the whole process group: the server stops
    # its workers itself (by closing their input), so they ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    return serve_jobs(Path(argv[1]), int(argv[2]), argv[3:], sys.stdin.buffer, out)


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
