"""The 10M-entry node of ``test_restart_10m.py``: built once per test run, beside the suite.

Issue 18 asks for restarts of a 10M-entry node "in a test that builds the
node once per test run". Building it is minutes of one core; the suite
itself uses one core of the machine's two. So the build runs in a child
process (``python -m tests.node.ten_million DIR``), started by the root
``conftest.py`` as soon as collection shows a test that needs it, while the
rest of the suite runs; those tests are moved to the end of the run, and
their fixture waits for the child (:class:`Build`). A run that selects no
such test builds nothing.

The node is real: ``init_node`` (real keys), then 8M sha256 and 2M PDQ
values through :meth:`Ledger.import_lines` (what ``hashmesh import`` calls)
into a real SQLite file, then ``hashmesh index build``. The values are
generated with numpy, whole blocks at a time, and handed over as
:class:`ParsedValues` (the form the list readers give the importer for
blocks of canonical values), so the build pays for the import, not for
making up its input line by line.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from node.cli import main as hashmesh
from node.ledger import Ledger
from node.ledger.hashlist import ParsedValues
from node.ledger.provision import init_node
from protocol.entry import AddFamily

__all__ = [
    "BUILD",
    "N_PDQ",
    "N_SHA256",
    "ORIGIN",
    "Build",
    "build_node",
    "hex_values",
    "pdq_values",
]

ORIGIN = "ten-million.example/hashmesh"
N_SHA256 = 8_000_000
N_PDQ = 2_000_000
LABEL = "src:restart-test"
SEEDS = {"sha256": 1, "pdq": 2}
PDQ_QUALITY = 100
_CHUNK = 250_000
_ROOT = Path(__file__).resolve().parents[2]
# Below the tests' own processes: the build takes the core they leave idle.
_NICE = 5


def hex_values(seed: int, n: int, chunk: int = _CHUNK) -> Iterator[list[str]]:
    """``n`` random 64-hex-digit values from ``seed``, a list of up to ``chunk`` at a time."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        # One hex string per chunk, sliced: no Python work per hex digit.
        text = rng.bytes(32 * k).hex()
        yield [text[i : i + 64] for i in range(0, 64 * k, 64)]


def pdq_values(count: int) -> list[str]:
    """The first ``count`` PDQ values the node lists (same seed and order as the build)."""
    return next(hex_values(SEEDS["pdq"], N_PDQ))[:count]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _blocks(family: AddFamily, seed: int, n: int) -> Iterator[ParsedValues]:
    """The values as the list readers hand canonical blocks to the importer."""
    line = 1
    for values in hex_values(seed, n):
        k = len(values)
        yield ParsedValues(range(line, line + k), [family] * k, values, k)
        line += k


def build_node(node: Path) -> dict[str, Any]:
    """Make the 10M-entry node at ``node``; returns what was imported and the CPU each step took."""
    report: dict[str, Any] = {}
    init_node(node, ORIGIN)
    with Ledger.open(node) as ledger:
        for signal_type, n in (("sha256", N_SHA256), ("pdq", N_PDQ)):
            family = AddFamily.create(
                signal_type=signal_type,
                labels=[LABEL],
                quality=PDQ_QUALITY if signal_type == "pdq" else None,
            )

            started = _cpu()
            result = ledger.import_lines(_blocks(family, SEEDS[signal_type], n))
            report[signal_type] = {
                "imported": result.append.count,
                "duplicates": len(result.append.duplicates),
                "cpu_s": round(_cpu() - started, 1),
            }
    started = _cpu()
    status = hashmesh(["--dir", str(node), "index", "build"])
    report["index_build"] = {"status": status, "cpu_s": round(_cpu() - started, 1)}
    return report


@dataclass
class Build:
    """The build in its child process: started once, awaited by the tests that need the node."""

    directory: Path
    proc: subprocess.Popen[bytes]
    started: float

    @property
    def node(self) -> Path:
        return self.directory / "node"

    @property
    def _log(self) -> Path:
        return self.directory / "build.log"

    @property
    def _report(self) -> Path:
        return self.directory / "build.json"

    @classmethod
    def start(cls) -> Build:
        directory = Path(tempfile.mkdtemp(prefix="hashmesh-restart-10m-"))
        with (directory / "build.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.node.ten_million", str(directory)],
                cwd=_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return cls(directory, proc, time.monotonic())

    def wait(self, within: float) -> dict[str, Any]:
        """Wait for the build; its report, or an AssertionError with the child's output."""
        try:
            status = self.proc.wait(within)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the 10M-entry node was not built within {within:g} s: "
                + self._log.read_text(encoding="utf-8", errors="replace")[-2000:]
            ) from None
        if status != 0 or not self._report.exists():
            raise AssertionError(
                f"building the 10M-entry node failed (exit {status}):\n"
                + self._log.read_text(encoding="utf-8", errors="replace")[-4000:]
            )
        report: dict[str, Any] = json.loads(self._report.read_text(encoding="utf-8"))
        return report

    def summary(self) -> str:
        """One line for the end of the run: what the build cost, or that it did not finish."""
        if not self._report.exists():
            return "10M-entry node (tests/node/ten_million.py): not built"
        report = json.loads(self._report.read_text(encoding="utf-8"))
        return (
            f"10M-entry node built beside the suite in {report['wall_s']} s "
            f"({report['cpu_s']} s CPU: sha256 import {report['sha256']['cpu_s']} s, "
            f"PDQ import {report['pdq']['cpu_s']} s, index build {report['index_build']['cpu_s']} s)"
        )

    def discard(self) -> None:
        """Stop the child if it still runs and delete the node (gigabytes of disk)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


BUILD = pytest.StashKey["Build"]()
"""The run's build, kept on the pytest config by the root ``conftest.py``."""


def main() -> None:
    os.nice(_NICE)
    # Die with the test run (PR_SET_PDEATHSIG): a killed pytest leaves no build going.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    directory = Path(sys.argv[1])
    started = time.monotonic()
    report = build_node(directory / "node")
    report["wall_s"] = round(time.monotonic() - started, 1)
    report["cpu_s"] = round(_cpu(), 1)
    (directory / "build.json").write_text(json.dumps(report), encoding="utf-8")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
