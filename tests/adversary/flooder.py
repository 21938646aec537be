"""A connection flooder: many idle or slow TCP connections held against a real server.

Part of the adversary harness (docs/reliability.md). It opens ``count``
connections to ``host:port``, spread round-robin over source addresses
(the whole of 127.0.0.0/8 is the loopback interface, so 127.0.0.2,
127.0.0.3, ... are distinct "attackers"), and holds each open:

* ``idle``: connect and send nothing (an unfinished TLS handshake);
* ``slow``: connect and trickle a TLS record that never completes, one byte
  every ``trickle`` seconds (slowloris at the handshake).

With ``reconnect`` a connection the server closes is opened again after
``reconnect_delay`` seconds (an attacker's pace, not a wait for a condition),
up to ``max_attempts`` in all. Every run
is bounded in count, attempts and time (:meth:`ConnectionFlooder.stop`).
Nothing here knows the server's internals: it only sees what a remote
attacker sees (connects, closes), which is what the tests assert on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["ConnectionFlooder", "FloodCounts", "FloodProcess", "flood_process", "loopback_sources"]

Mode = Literal["idle", "slow"]

_TLS_RECORD_START = b"\x16\x03\x01\x40\x00"
"""A handshake record header announcing 16 KiB that never all arrive."""
_ROOT = Path(__file__).resolve().parents[2]
"""The checkout, where ``python -m tests.adversary.flooder`` runs."""
CONNECT_TIMEOUT = 5.0
"""Seconds one connect may take before it counts as failed (a full accept queue)."""


def loopback_sources(n: int) -> tuple[str, ...]:
    """``n`` distinct loopback source addresses, 127.0.0.2 upwards."""
    return tuple(f"127.0.{(i + 2) // 256}.{(i + 2) % 256}" for i in range(n))


@dataclass
class FloodCounts:
    """What the flooder saw.

    Attributes:
        opened: connections that were established (TCP) at some point.
        held: connections open right now.
        peak_held: the most held at once.
        closed_by_server: connections the server closed or reset.
        connect_failures: connects refused or timed out.
    """

    opened: int = 0
    held: int = 0
    peak_held: int = 0
    closed_by_server: int = 0
    connect_failures: int = 0


@dataclass
class ConnectionFlooder:
    """Hold ``count`` connections to ``host:port`` until :meth:`stop`."""

    host: str
    port: int
    count: int
    sources: Sequence[str] = ("127.0.0.1",)
    mode: Mode = "idle"
    reconnect: bool = False
    max_attempts: int | None = None
    trickle: float = 1.0
    reconnect_delay: float = 1.0
    concurrency: int = 200
    counts: FloodCounts = field(default_factory=FloodCounts)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _attempts: int = 0
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _all_tried: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        # The flooder's own sockets count against this process's open files.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = self.count + 256
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
        if self.max_attempts is None:
            self.max_attempts = self.count * (5 if self.reconnect else 1)

    async def start(self) -> None:
        """Open the connections (at most ``concurrency`` connects in flight) and return
        once every one of the first ``count`` was tried; they are held in the background."""
        gate = asyncio.Semaphore(self.concurrency)
        tried = 0

        def one_tried() -> None:
            nonlocal tried
            tried += 1
            if tried >= self.count:
                self._all_tried.set()

        for i in range(self.count):
            source = self.sources[i % len(self.sources)]
            await gate.acquire()
            self._tasks.append(asyncio.create_task(self._hold(source, gate, one_tried)))
        await self._all_tried.wait()

    async def _hold(self, source: str, gate: asyncio.Semaphore, tried: Callable[[], None]) -> None:
        first = True
        try:
            while not self._stopping.is_set():
                assert self.max_attempts is not None
                if self._attempts >= self.max_attempts:
                    return
                self._attempts += 1
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port, local_addr=(source, 0)),
                        CONNECT_TIMEOUT,
                    )
                except (OSError, TimeoutError):
                    self.counts.connect_failures += 1
                    if not self.reconnect:
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), self.reconnect_delay)
                    continue
                finally:
                    if first:
                        first = False
                        gate.release()
                        tried()
                self.counts.opened += 1
                self.counts.held += 1
                self.counts.peak_held = max(self.counts.peak_held, self.counts.held)
                try:
                    closed = await self._occupy(reader, writer)
                finally:
                    self.counts.held -= 1
                    writer.close()
                if closed:
                    self.counts.closed_by_server += 1
                if not self.reconnect:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.reconnect_delay)
        finally:
            if first:
                gate.release()
                tried()

    async def _occupy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Hold the connection; True when the server closed it, False when stopped."""
        stop = asyncio.create_task(self._stopping.wait())
        eof = asyncio.create_task(_until_eof(reader))
        sent = 0
        try:
            while True:
                done, _ = await asyncio.wait(
                    {eof, stop},
                    timeout=self.trickle if self.mode == "slow" else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if eof in done:
                    return True
                if stop in done:
                    return False
                writer.write(_TLS_RECORD_START[sent : sent + 1] or b"\x00")
                sent += 1
                with contextlib.suppress(OSError):
                    await writer.drain()
        finally:
            eof.cancel()
            stop.cancel()

    async def stop(self) -> None:
        """Close every connection and end the run."""
        self._stopping.set()
        self._all_tried.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> ConnectionFlooder:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _until_eof(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(OSError):
        while await reader.read(4096):
            pass


@dataclass
class FloodProcess:
    """A :class:`ConnectionFlooder` run in a child process (``python -m tests.adversary.flooder``).

    Out of process, its thousands of sockets and reconnects cost the test's
    event loop nothing, so what the honest peer meets is the server's answer
    to the flood, not the flooder's own load (an attacker is another machine).
    """

    proc: asyncio.subprocess.Process
    counts: FloodCounts

    async def poll(self) -> FloodCounts:
        """Ask the child for its counts now."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(b"counts\n")
        await self.proc.stdin.drain()
        self.counts = _read_counts(await self.proc.stdout.readline())
        return self.counts

    async def stop(self) -> FloodCounts:
        """Close every connection, end the child and return its last counts."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        if self.proc.returncode is None:
            self.proc.stdin.close()
            line = await self.proc.stdout.readline()
            if line:
                self.counts = _read_counts(line)
            await self.proc.wait()
        return self.counts


def _read_counts(line: bytes) -> FloodCounts:
    if not line:
        raise AssertionError("the flooder process ended without reporting")
    return FloodCounts(**json.loads(line))


@contextlib.asynccontextmanager
async def flood_process(
    host: str,
    port: int,
    *,
    count: int,
    sources: Sequence[str],
    mode: Mode = "idle",
    max_attempts: int | None = None,
) -> AsyncIterator[FloodProcess]:
    """Start a reconnecting flood in a child process; it yields once every
    connection was tried, and closes them all on exit."""
    args = [
        sys.executable,
        "-m",
        "tests.adversary.flooder",
        host,
        str(port),
        "--count",
        str(count),
        "--sources",
        ",".join(sources),
        "--mode",
        mode,
    ]
    if max_attempts is not None:
        args += ["--max-attempts", str(max_attempts)]
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=_ROOT,
    )
    try:
        assert proc.stdout is not None
        handle = FloodProcess(proc, _read_counts(await proc.stdout.readline()))
        yield handle
        await handle.stop()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.adversary.flooder",
        description="Hold COUNT connections to HOST:PORT, renewing those the server closes. "
        "Prints the counts as JSON once all were tried, on each 'counts' line read from "
        "stdin, and when stdin closes (then it stops).",
    )
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--sources", default="127.0.0.2", help="comma-separated source addresses")
    parser.add_argument("--mode", choices=["idle", "slow"], default="idle")
    parser.add_argument("--max-attempts", type=int, default=None)
    args = parser.parse_args(argv)
    flooder = ConnectionFlooder(
        args.host,
        args.port,
        count=args.count,
        sources=args.sources.split(","),
        mode=args.mode,
        reconnect=True,
        max_attempts=args.max_attempts,
    )

    def report() -> None:
        sys.stdout.write(json.dumps(asdict(flooder.counts)) + "\n")
        sys.stdout.flush()

    loop = asyncio.get_running_loop()
    await flooder.start()
    report()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.readline():
        report()
    await flooder.stop()
    report()


if __name__ == "__main__":
    asyncio.run(_main())
