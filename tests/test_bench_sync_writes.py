"""benchmarks/bench_sync_writes.py end to end on a small log: both runs sync every entry, verified."""

from __future__ import annotations

import json
from pathlib import Path

from node.ledger import Ledger
from node.ledger.provision import init_node
from protocol.entry import AddEntry
from tests.test_bench_scale import run

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_sync_writes.py"


def test_bench_sync_writes_reports_both_runs(tmp_path: Path) -> None:
    source = tmp_path / "source"
    init_node(source, "bench-sync-writes-source.example/hashmesh")
    with Ledger.open(source) as ledger:
        ledger.append(
            [
                AddEntry.create(signal_type="sha256", value=f"{i:064x}", labels=[])
                for i in range(900)
            ]
        )
        root = ledger.latest_checkpoint().root_hash
    report = tmp_path / "writes.json"
    into = tmp_path / "into"
    out = run(
        SCRIPT,
        "--source",
        str(source),
        "--chunk",
        "200",
        "--into",
        str(into),
        "--json",
        str(report),
    )
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(report.read_text(encoding="utf-8"))
    assert (row["entries"], row["chunk"], row["deferred"]) == (900, 200, True)
    assert row["bytes_written_per_entry"] > 0 and row["db_bytes_per_entry"] > 0
    with Ledger.open(into, read_only=True) as ledger:
        state = ledger.replica("bench-sync-writes-source.example/hashmesh").state()
        assert (state.size, state.root_hash) == (900, root)
    # Synced already: a second run refuses instead of measuring nothing.
    again = run(SCRIPT, "--source", str(source), "--into", str(into))
    assert again.returncode != 0 and "already holds 900 entries" in again.stderr
