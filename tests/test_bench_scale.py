"""benchmarks/bench_scale.py end to end at a tiny size: every figure is measured and reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_scale.py"


@pytest.mark.slow
def test_bench_scale_reports_every_column(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_scale
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    report = tmp_path / "scale.json"
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--sizes",
            "3k",
            "--proofs",
            "50",
            "--requests",
            "2",
            "--single",
            "5",
            "--json",
            str(report),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(report.read_text(encoding="utf-8"))
    assert row["entries"] == 3000
    assert row["n_sha256"] + row["n_pdq"] == 3000
    for key, _, _ in bench_scale.COLUMNS:
        assert isinstance(row[key], int | float) and row[key] > 0, (key, row.get(key))
    # The markdown table: a heading per figure and one row of as many cells.
    lines = [line for line in out.stdout.splitlines() if line.startswith("|")]
    assert len(lines) == 3
    assert all(line.count("|") == len(bench_scale.COLUMNS) + 1 for line in lines)
    assert "not run" not in lines[2]

    redrawn = subprocess.run(
        [sys.executable, str(SCRIPT), "--from-json", str(report)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    assert [line for line in redrawn.stdout.splitlines() if line.startswith("|")] == lines


def test_sizes_are_checked() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--sizes", "1M,lots"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2
    assert "--sizes: not a size: 'lots'" in out.stderr
