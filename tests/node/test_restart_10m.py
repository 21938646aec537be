"""Restarts of a 10M-entry node are ready to match within 5 s (issue 18, "Done when").

The node is built once per test run (8M sha256 and 2M PDQ hashes through
``Ledger.import_lines``, the code path of ``hashmesh import``, then ``hashmesh
index build``): minutes of one core, so it is built in a child process beside
the rest of the suite and these tests, marked slow, run last and share it
(``tests/node/ten_million.py``). Neither test writes to the node.

How "ready within 5 s" is asserted on a shared, loaded machine: wall-clock time
measures the queue for a core as much as the work, so each test asserts
(1) structurally that the restart mapped the index files and read no PDQ row
from SQLite (no rebuild, no full-table read: ``2,000,000 mapped, 0 read``), and
(2) the restarted process's own CPU time (user + system, from the kernel) up
to the moment it is ready, below 5 s, interpreter start and imports included.
A generous wall-clock bound (60 s) only catches a hang.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import ANY

import pytest

from tests.adversary.served_process import serve_process
from tests.node.ten_million import BUILD, N_PDQ, N_SHA256, Build, pdq_values
from tests.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

READY_CPU_S = 5.0
WALL_S = 60.0
# Minutes of one core on an idle machine; far more only bounds a hang.
BUILD_WITHIN = 3000.0


@pytest.fixture(scope="session")
def ten_million(request: pytest.FixtureRequest) -> Iterator[Path]:
    """The node, built once per run (the root conftest starts the build at collection)."""
    started = request.config.stash.get(BUILD, None)
    build = Build.start() if started is None else started
    try:
        report = build.wait(BUILD_WITHIN)
        assert report["sha256"] == {"imported": N_SHA256, "duplicates": 0, "cpu_s": ANY}, report
        assert report["pdq"] == {"imported": N_PDQ, "duplicates": 0, "cpu_s": ANY}, report
        assert report["index_build"]["status"] == 0, report
        yield build.node
    finally:
        if started is None:  # a build of its own (not started at collection): deleted here
            build.discard()


def _flip(value: str, bits: int) -> str:
    x = int(value, 16)
    for b in range(0, 8 * bits, 8):
        x ^= 1 << b
    return f"{x:064x}"


_CLI_MATCH = """
import json, sys, time
from pathlib import Path
from node.ledger import Ledger
from node.ledger.live_pdq import open_pdq_index
from node.ledger.matching import MatchQuery, match

with Ledger.open(Path(sys.argv[1]), read_only=True) as ledger:
    pdq = open_pdq_index(ledger)
    results = match(ledger, [(0, MatchQuery("pdq", sys.argv[2]))], pdq=pdq)
    cpu = time.process_time()
    print(json.dumps({
        "base_rows": pdq.base_rows,
        "tail_rows": pdq.tail_rows,
        "hits": [[h.index, h.distance] for r in results for h in r.hits],
        "cpu_s": cpu,
    }))
"""


def test_a_cli_process_matches_a_10m_node_within_5_s_of_cpu(ten_million: Path) -> None:
    """A fresh process opens the node and answers a PDQ query: the index is mapped, not built."""
    listed = pdq_values(3)
    query = _flip(listed[2], 9)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _CLI_MATCH, str(ten_million), query],
        capture_output=True,
        text=True,
        timeout=WALL_S * 5,
        check=True,
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report = json.loads(done.stdout)
    assert report["base_rows"] == N_PDQ and report["tail_rows"] == 0
    assert report["hits"] == [[N_SHA256 + 2, 9]]
    assert cpu < READY_CPU_S, f"{cpu:.2f} s of CPU (whole process) to answer"
    assert wall < WALL_S


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


_READY = re.compile(r"PDQ index ready: (\d+) hashes \((\d+) mapped from \S+, (\d+) read\)")


async def test_serve_restarts_on_a_10m_node_ready_within_5_s_of_cpu(ten_million: Path) -> None:
    """``hashmesh serve`` of the node says its PDQ index is ready: mapped, nothing read."""
    started = time.monotonic()
    served = await serve_process(ten_million)
    try:
        found = await eventually(
            lambda: next((m for m in map(_READY.search, served.log) if m), None),
            until=lambda m: m is not None,
            what="the PDQ index ready line",
            within=WALL_S * 5,
        )
        cpu = _cpu_seconds(served.proc.pid)
        wall = time.monotonic() - started
        assert found is not None
        assert (int(found.group(1)), int(found.group(2)), int(found.group(3))) == (N_PDQ, N_PDQ, 0)
        assert cpu < READY_CPU_S, f"{cpu:.2f} s of CPU to ready"
        assert wall < WALL_S
    finally:
        await served.stop()
