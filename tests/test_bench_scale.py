"""benchmarks/bench_scale.py end to end at a tiny size: every figure is measured and reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_scale.py"


def run(script: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The benchmark script with ``args`` in a child process, its output captured."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
def test_bench_scale_reports_every_column(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_scale
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    report = tmp_path / "scale.json"
    out = run(
        SCRIPT,
        *("--sizes", "3k", "--proofs", "50", "--requests", "2", "--single", "5"),
        *("--json", str(report)),
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

    redrawn = run(SCRIPT, "--from-json", str(report), timeout=120)
    assert redrawn.returncode == 0, redrawn.stderr
    assert [line for line in redrawn.stdout.splitlines() if line.startswith("|")] == lines


def test_sizes_are_checked() -> None:
    out = run(SCRIPT, "--sizes", "1M,lots", timeout=120)
    assert out.returncode == 2
    assert "--sizes: not a size: 'lots'" in out.stderr


def test_build_imports_in_chunks_and_keeps_only_samples(tmp_path: Path) -> None:
    out = run(SCRIPT, "--sizes", "3k", "--chunk", "1k", "--build-only", "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    where = tmp_path / "3000"
    built = json.loads((where / "build.json").read_text(encoding="utf-8"))
    assert (built["n_sha256"], built["n_pdq"], built["import_chunk"]) == (2400, 600, 1000)
    steps = [
        json.loads(line)
        for line in (where / "build-progress.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    # The kinds alternate by blocks of --chunk entries: each block ends at the final mix.
    assert [(s["kind"], s["count"], s["held"]) for s in steps] == [
        ("sha256", 800, 800),
        ("pdq", 200, 1000),
        ("sha256", 800, 1800),
        ("pdq", 200, 2000),
        ("sha256", 800, 2800),
        ("pdq", 200, 3000),
    ]
    # The chunk lists are gone; every sampled value is listed on the node.
    assert not list(where.glob("*-chunk.txt"))
    from node.ledger import Ledger
    from node.ledger.matching import MatchQuery, match

    samples = {
        kind: (where / f"sample-{kind}.txt").read_text(encoding="ascii").split()
        for kind in ("sha256", "pdq")
    }
    # Below SAMPLE lines of a kind, every line is kept.
    assert len(samples["sha256"]) == 2400 and len(samples["pdq"]) == 600
    with Ledger.open(where / "a", read_only=True) as ledger:
        assert ledger.latest_checkpoint().size == 3000
        # Exact lookups of the last sampled value of each kind (no PDQ index needed).
        queries = [(0, MatchQuery("sha256", samples["sha256"][-1]))]
        (found,) = match(ledger, queries, pdq=None)
        assert found.hits


@pytest.mark.slow
def test_bench_replicas_measures_catch_up_and_load(tmp_path: Path) -> None:
    report = tmp_path / "replicas.json"
    out = run(
        ROOT / "benchmarks" / "bench_replicas.py",
        *("--size", "3k", "--before", "2", "--requests", "2"),
        *("--dir", str(tmp_path), "--json", str(report)),
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(report.read_text(encoding="utf-8"))
    for replica in ("r1", "r2"):
        assert r[replica]["catch_up_per_s"] > 0
        assert len(r[replica]["per_tenth_per_s"]) == 10
    assert r["r1"]["ready_to_match_s"] >= r["r1"]["catch_up_s"]
    before = r["r1_load"]["before"]
    assert before["one sha256"]["n"] > 0 and before["one pdq"]["n"] > 0, before
    assert before["sha256 batch"]["per_s"] > 0 and before["pdq batch"]["per_s"] > 0, before
    # R2's catch-up of 3,000 entries may be over before R1 answers anything more.
    assert r["r1_load"]["during_r2_catch_up"]["seconds"] > 0
    assert set(r["peak_rss_mib"]) == {"P", "R1", "R2"}
    assert not (tmp_path / "3000" / "replicas").exists()
    assert "| R1's matching | before R2 | during R2's catch-up |" in out.stdout
