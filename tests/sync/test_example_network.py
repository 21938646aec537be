"""The README's main command: the three-node example runs and says what happened."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# The example starts three servers and runs some forty CLI commands, each a
# new Python process: on a loaded machine that alone takes minutes. The
# deadline only bounds a hang.
HANG = 900


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(HANG + 60)
def test_example_network_runs() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "network.py")],
        capture_output=True,
        text=True,
        timeout=HANG,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "C holds A's three entries" in out
    assert "OK: inclusion verified" in out
    assert "C has A's retraction" in out and "1 retracted" in out
    # Matching at C, with a receipt that verifies with A's key alone.
    assert "MATCH md5 5d41402abc4b2a76b9719d911017c592" in out
    assert "OK: receipt verified: entry 1 of hotline-a.example/hashmesh" in out
    assert ".tlog-proof: OK: receipt verified: entry 1 of hotline-a.example/hashmesh" in out
    # B's cosignature travelled with A's checkpoint to C (which requires it).
    assert "— hotline-b.example/hashmesh/witness " in out
    # The auditor's live audit and its bundle audit across A's key rotation.
    assert out.count("every check passed") == 2
    assert "sizes >= 6: hotline-a.example/hashmesh+" in out
    assert "Done: three nodes" in out
    # Each node's analyst console is served, and C's answered the demo.
    assert out.count("/console/") >= 6
    assert "C's console: hotline-a.example/hashmesh size 6 (ok)" in out
