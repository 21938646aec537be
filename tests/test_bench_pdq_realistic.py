"""benchmarks/bench_pdq_realistic.py end to end at a tiny size: every distribution, exact recall."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_pdq_realistic.py"


def test_every_distribution_is_measured_with_full_recall(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    subprocess.run(
        [
            *(sys.executable, str(SCRIPT), "--size", "20000", "--queries", "100"),
            *("--scan-queries", "40", "--json", str(out)),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    results = {r["distribution"]: r for r in json.loads(out.read_text(encoding="utf-8"))}
    assert sorted(results) == sorted(["uniform", "biased", "clusters", "degenerate", "images"])
    for r in results.values():
        assert r["recall"] == 1.0 and r["checked_queries"] == 40, r
        assert r["p99_ms"] >= r["p50_ms"] > 0
    # The floor keeps the 5 % near-degenerate rows out of near-matching.
    assert results["degenerate"]["near_rows"] == 19_000
    assert results["degenerate"]["queries_below_floor"] == 20
    assert results["clusters"]["mean_hits"] > 1
    assert set(results["images"]["edit_found_share"]) >= {"crop-5%", "jpeg-q30", "overlay-10%"}
