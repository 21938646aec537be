"""Export against import: `hashmesh export --format csv|ndjson` of N entries, and the import of that CSV.

    .venv/bin/python benchmarks/bench_export.py [--entries 500000] [--rounds 2]

Builds a node of N labelled sha256 adds (one import), then, alternating in
one process: export the own log as CSV to a file (what `hashmesh export
--format csv --out FILE` does), import that CSV into a fresh node (what
`hashmesh import FILE` does), export NDJSON. Prints seconds and entries/s of
each and the ratio export rate / import rate (>= 1.0: export at least as
fast as import). Both sides run in this process on the same machine
moment, so the ratio holds on a loaded machine where the rates do not.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.ledger import Ledger  # noqa: E402
from node.ledger.export import export_lines  # noqa: E402
from node.ledger.hashlist import HashListReader  # noqa: E402
from node.ledger.provision import init_node  # noqa: E402


def build(node_dir: Path, n: int) -> None:
    init_node(node_dir, "bench-export.example/hashmesh")
    rng = random.Random(7)
    lines = [f"{rng.getrandbits(256):064x}\n" for _ in range(n)]
    reader = HashListReader(
        fmt="lines", default_type="sha256", extra_labels=["src:bench", "iwf:category-a"]
    )
    with Ledger.open(node_dir) as ledger:
        ledger.import_lines(reader.read(iter(lines)))


def export(node_dir: Path, fmt: str, out: Path) -> float:
    started = time.perf_counter()
    with Ledger.open(node_dir, read_only=True) as ledger, out.open("w", encoding="utf-8") as f:
        f.writelines(export_lines(ledger, fmt))  # type: ignore[arg-type]
    return time.perf_counter() - started


def import_csv(node_dir: Path, csv_path: Path) -> tuple[float, int]:
    init_node(node_dir, "bench-import.example/hashmesh")
    started = time.perf_counter()
    with (
        Ledger.open(node_dir) as ledger,
        csv_path.open(encoding="utf-8", newline="") as f,
    ):
        result = ledger.import_lines(HashListReader(fmt="csv").read(f))
    return time.perf_counter() - started, result.append.count


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    n = args.entries
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        source = base / "source"
        build(source, n)
        results = []
        for r in range(args.rounds):
            csv_path = base / f"export-{r}.csv"
            csv_s = export(source, "csv", csv_path)
            import_s, imported = import_csv(base / f"imported-{r}", csv_path)
            assert imported == n, imported
            ndjson_s = export(source, "ndjson", base / f"export-{r}.ndjson")
            row = {
                "round": r,
                "entries": n,
                "export_csv_s": round(csv_s, 2),
                "export_ndjson_s": round(ndjson_s, 2),
                "import_csv_s": round(import_s, 2),
                "export_csv_per_s": round(n / csv_s),
                "import_csv_per_s": round(n / import_s),
                "export_over_import": round(import_s / csv_s, 2),
            }
            results.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
