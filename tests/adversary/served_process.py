"""``hashmesh serve`` in a child process, with its own open-file limit.

A flood is meant to exhaust the server's file descriptors, not the test's:
the server runs as the operator runs it (``python -m node serve``), with
``RLIMIT_NOFILE`` set for the child only, and the test process plays the
attackers and the honest peer. The bound URL is read from the server's own
log line, so port 0 works without a race.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.waiting import PATIENCE

__all__ = ["ServeProcess", "serve_process"]

# The server's log line, with the port it bound (not the CLI's note of the
# configured address, which says port 0).
_SERVING = re.compile(r"hashmesh\.api: serving \S+ on (https://127\.0\.0\.1:(\d+))")


@dataclass
class ServeProcess:
    """A running ``hashmesh serve`` child."""

    proc: asyncio.subprocess.Process
    url: str
    port: int
    log: list[str] = field(default_factory=list)
    _drain: asyncio.Task[None] | None = None

    def open_files(self) -> int:
        """File descriptors the server holds right now (Linux /proc)."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), PATIENCE)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._drain is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain


def _limit_files(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


async def serve_process(
    node_dir: Path,
    *,
    open_files: int | None = None,
    listen: str = "127.0.0.1:0",
    sync: bool = False,
    within: float = PATIENCE,
) -> ServeProcess:
    """Start ``hashmesh serve`` (``--no-sync`` unless ``sync``) and wait until it listens.

    Args:
        node_dir: the node to serve.
        open_files: soft and hard ``RLIMIT_NOFILE`` of the child (None: inherited).
        listen: the address to bind (a replica's peers need a known port).
        sync: run the sync runner too (a replica catching up), not ``--no-sync``.
        within: seconds to wait for the listening line (a 100M-entry node may
            open for longer than a test allows).
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node",
        "serve",
        "--dir",
        str(node_dir),
        "--listen",
        listen,
        *([] if sync else ["--no-sync"]),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=None if open_files is None else _limit_files(open_files),
    )
    assert proc.stderr is not None
    lines: list[str] = []

    async def bound() -> re.Match[str]:
        assert proc.stderr is not None
        while True:
            raw = await proc.stderr.readline()
            if not raw:
                raise AssertionError("hashmesh serve exited before listening:\n" + "".join(lines))
            line = raw.decode("utf-8", "replace")
            lines.append(line)
            found = _SERVING.search(line)
            if found is not None:
                return found

    try:
        found = await asyncio.wait_for(bound(), within)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise

    async def drain() -> None:
        # Keep reading so the child never blocks on a full pipe.
        assert proc.stderr is not None
        while raw := await proc.stderr.readline():
            lines.append(raw.decode("utf-8", "replace"))

    served = ServeProcess(proc, found.group(1), int(found.group(2)), lines)
    served._drain = asyncio.create_task(drain())
    return served
