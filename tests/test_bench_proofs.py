"""benchmarks/bench_proofs.py end to end on a small node: both read paths measured and compared."""

from __future__ import annotations

import json
from pathlib import Path

from node.ledger import Ledger
from node.ledger.provision import init_node
from protocol.entry import AddEntry
from tests.test_bench_scale import run

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_proofs.py"


def test_bench_proofs_reports_both_paths(tmp_path: Path) -> None:
    node = tmp_path / "node"
    init_node(node, "bench-proofs.example/hashmesh")
    with Ledger.open(node) as ledger:
        for part in range(3):  # a few checkpoints, so consistency proofs are verified
            ledger.append(
                [
                    AddEntry.create(signal_type="sha256", value=f"{i:064x}", labels=[])
                    for i in range(part * 250, (part + 1) * 250)
                ]
            )
    report = tmp_path / "proofs.json"
    out = run(SCRIPT, "--node", str(node), "--proofs", "60", "--rounds", "1", "--json", str(report))
    assert out.returncode == 0, out.stderr
    summary = json.loads(report.read_text(encoding="utf-8"))
    assert summary["size"] == 750
    for kind in ("inclusion", "consistency"):
        # The current path: the log, its latest checkpoint and one read of the tree.
        assert summary["after"][kind]["statements_per_proof"] == 3
        assert summary["before"][kind]["statements_per_proof"] > 5
        for path in ("before", "after"):
            for pass_name in ("cold", "warm"):
                figures = summary[path][kind][pass_name]
                assert 0 < figures["p50_ms"] <= figures["p99_ms"]
        assert summary["ratio_after_before"][kind]["warm"]["p50_ms"] > 0
    rows = [line for line in out.stdout.splitlines() if line.startswith("| before")]
    assert len(rows) == 4
