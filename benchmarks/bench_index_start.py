"""Start-to-ready with persisted, memory-mapped indexes against a rebuild (issue 18 item 1).

    .venv/bin/python benchmarks/bench_index_start.py --build 1000000 --dir /var/tmp/idx-1m
    .venv/bin/python benchmarks/bench_index_start.py --node /var/tmp/idx-10m/node

A node of N entries (0.8 N random sha256, 0.2 N random PDQ at quality 100,
imported through ``Ledger.import_lines`` as ``hashmesh import`` does) is built
once with ``--build N --dir DIR`` (into ``DIR/node``) or given with ``--node``.
Then, each in a fresh child process, so every figure includes the
interpreter's start and imports, and each reported as CPU time of that
process (user + system: the machine is shared and loaded, and wall time
measures the queue for a core) beside its wall time:

* ``rebuild``: the PDQ index built from the ``pdq`` table, as every start did
  before (``LivePdqIndex.load`` with no file), then one PDQ match: the
  same-run baseline;
* ``hashmesh index build``: writing every index file;
* ``mapped``: ``open_pdq_index`` (maps ``index/pdq.seg``, reads rows beyond
  it) and one PDQ match: what the CLI and worker processes do;
* ``serve``: ``hashmesh serve --no-sync`` until it logs ``PDQ index ready``,
  with its RSS then split into anonymous memory (a copy) and file pages
  (the shared mapping), and its peak RSS;
* ``leaf``: the first proof-by-leaf-hash lookup, without and with the
  log's leaf-hash index file;
* the index files' bytes per row.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PDQ_SHARE = 0.2
ORIGIN = "index-start.example/hashmesh"

_CHILD_COMMON = """
import json, sys, time
from pathlib import Path
from node.ledger import Ledger
node = Path(sys.argv[1])
"""

_REBUILD = (
    _CHILD_COMMON
    + """
from node.ledger.live_pdq import LivePdqIndex
from node.ledger.matching import MatchQuery, match
with Ledger.open(node, read_only=True) as ledger:
    pdq = LivePdqIndex(ledger.config.match.min_quality)   # no file: every row read and indexed
    pdq.load(ledger.matching)
    results = match(ledger, [(0, MatchQuery("pdq", sys.argv[2]))], pdq=pdq)
    print(json.dumps({"rows": len(pdq), "read": pdq.tail_rows, "hits": sum(len(r.hits) for r in results)}))
"""
)

_MAPPED = (
    _CHILD_COMMON
    + """
from node.ledger.live_pdq import open_pdq_index
from node.ledger.matching import MatchQuery, match
with Ledger.open(node, read_only=True) as ledger:
    pdq = open_pdq_index(ledger)
    results = match(ledger, [(0, MatchQuery("pdq", sys.argv[2]))], pdq=pdq)
    print(json.dumps({"rows": len(pdq), "read": pdq.tail_rows, "hits": sum(len(r.hits) for r in results)}))
"""
)

_LEAF = (
    _CHILD_COMMON
    + """
from node.ledger.leaf_index import LeafHashIndex
with Ledger.open(node, read_only=True) as ledger:
    log = ledger.own_log
    size = ledger.latest_checkpoint().size
    leaf = ledger.store.leaf_hash_at(log.log_id, size // 2)
    index = LeafHashIndex(writable=False)
    directory = ledger.index_directory if sys.argv[2] == "file" else None
    found = index.find(ledger.store, log.log_id, leaf, size, directory=directory)
    print(json.dumps({"found": found, "mapped": index.entries_mapped(log.log_id)}))
"""
)


def _child(code: str, *args: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; its JSON line plus CPU and wall seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout else {}
    result["cpu_s"] = round(
        (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2
    )
    result["wall_s"] = round(wall, 2)
    return result


def _lines(seed: int, n: int) -> Any:
    import numpy as np

    rng = np.random.default_rng(seed)
    for start in range(0, n, 200_000):
        text = rng.bytes(32 * min(200_000, n - start)).hex()
        for i in range(0, len(text), 64):
            yield text[i : i + 64] + "\n"


def build(where: Path, n: int) -> Path:
    """A node of ``n`` entries in ``where/node`` (kept; reused when ``where/built`` exists)."""
    from node.ledger import Ledger
    from node.ledger.hashlist import HashListReader
    from node.ledger.provision import init_node

    node = where / "node"
    if (where / "built").exists():
        return node
    if node.exists():
        shutil.rmtree(node)
    where.mkdir(parents=True, exist_ok=True)
    init_node(node, ORIGIN)
    n_pdq = int(n * PDQ_SHARE)
    with Ledger.open(node) as ledger:
        for seed, signal_type, count in ((1, "sha256", n - n_pdq), (2, "pdq", n_pdq)):
            started = time.perf_counter()
            reader = HashListReader(
                fmt="lines",
                default_type=signal_type,
                extra_labels=["src:bench"],
                default_quality=100 if signal_type == "pdq" else None,
            )
            ledger.import_lines(reader.read(_lines(seed, count)))
            print(f"  imported {count:,} {signal_type} in {time.perf_counter() - started:.0f} s")
    (where / "built").write_text(str(n), encoding="ascii")
    return node


def _first_pdq(node: Path) -> str:
    from node.ledger import Ledger

    with Ledger.open(node, read_only=True) as ledger:
        row = ledger.store.conn.execute("SELECT hash FROM pdq ORDER BY log_id, idx LIMIT 1")
        return bytes(row.fetchone()[0]).hex()


_READY = re.compile(r"PDQ index ready: (\d+) hashes \((\d+) mapped from \S+, (\d+) read\)")


def serve_to_ready(node: Path) -> dict[str, Any]:
    """``hashmesh serve --no-sync`` until its PDQ index is ready: CPU, wall, memory."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "node", "serve", "--dir", str(node), "--no-sync"]
    proc = subprocess.Popen(
        [*command, "--listen", "127.0.0.1:0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            found = _READY.search(line)
            if found:
                break
        else:
            raise RuntimeError("serve exited before its PDQ index was ready")
        wall = time.perf_counter() - started
        stat = Path(f"/proc/{proc.pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1]
        fields = stat.split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        status = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{proc.pid}/status").read_text(encoding="ascii").splitlines()
        )

        def mib(key: str) -> float:
            return round(int(status[key].split()[0]) / 1024, 1)

        return {
            "rows": int(found.group(1)),
            "mapped": int(found.group(2)),
            "read": int(found.group(3)),
            "cpu_s": round(cpu, 2),
            "wall_s": round(wall, 2),
            "rss_mib": mib("VmRSS"),
            "rss_anon_mib": mib("RssAnon"),
            "rss_file_mib": mib("RssFile"),
            "peak_rss_mib": mib("VmHWM"),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--node", help="an existing node directory")
    parser.add_argument("--build", type=int, help="build a node of this many entries in --dir")
    parser.add_argument("--dir", help="where --build puts (and later finds) its node")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    if args.node:
        node = Path(args.node)
    elif args.build and args.dir:
        node = build(Path(args.dir), args.build)
    else:
        parser.error("give --node DIR, or --build N --dir DIR")
    index_dir = node / "index"
    if index_dir.exists():
        shutil.rmtree(index_dir)  # every run starts without files: the rebuild first
    query = _first_pdq(node)
    figures: dict[str, Any] = {"node": str(node)}
    print("rebuild (no index file, the path of every start before)...", flush=True)
    figures["rebuild"] = _child(_REBUILD, str(node), query)
    figures["serve_rebuild"] = serve_to_ready(node)
    shutil.rmtree(index_dir, ignore_errors=True)  # serve may have persisted one meanwhile
    figures["leaf_no_file"] = _child(_LEAF, str(node), "none")
    print("hashmesh index build...", flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "node", "--dir", str(node), "index", "build"],
        check=True,
        capture_output=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures["index_build"] = {
        "cpu_s": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 2),
        "wall_s": round(time.perf_counter() - started, 2),
    }
    pdq_file = index_dir / "pdq.seg"
    leaf_files = sorted(index_dir.glob("leaves-*.seg"))
    print("mapped...", flush=True)
    figures["mapped"] = _child(_MAPPED, str(node), query)
    figures["serve_mapped"] = serve_to_ready(node)
    figures["leaf_file"] = _child(_LEAF, str(node), "file")
    rows = figures["mapped"]["rows"]
    entries = sum(int(json.loads(_meta(p)).get("covered", 0)) for p in leaf_files)
    figures["pdq_file_bytes"] = pdq_file.stat().st_size
    figures["pdq_bytes_per_row"] = round(pdq_file.stat().st_size / max(rows, 1), 1)
    figures["leaf_file_bytes"] = sum(p.stat().st_size for p in leaf_files)
    figures["leaf_bytes_per_entry"] = round(figures["leaf_file_bytes"] / max(entries, 1), 1)
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


def _meta(path: Path) -> str:
    from node.storage.segment_file import open_segment

    segment = open_segment(path, "leaf-index")
    try:
        return json.dumps(segment.meta)
    finally:
        segment.close()


if __name__ == "__main__":
    main()
