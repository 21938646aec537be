"""Audit benchmark: a 1,000,000-entry log audited from a bundle and live, beside raw hashing.

    .venv/bin/python benchmarks/bench_audit.py [--entries 1000000] [--skip-live]
    .venv/bin/python benchmarks/bench_audit.py --quick          # 100,000 entries

Setup (not measured): node A imports N random sha256 entries in four
imports (so its log has checkpoints of sizes 0, N/4, N/2, 3N/4 and N) and
exports its audit bundle. Then, in this run:

* baselines: the raw SHA-256 leaf hashing rate (``sha256(0x00 || entry)``
  over the bundle's exact entry bytes, in memory), and the raw Merkle rate
  (leaf hashes plus every interior node, ``CompactRange.extend``);
* ``hashmesh audit BUNDLE`` as the engine runs it (``run_audit``: read and
  check every base64 line, hash, replay, verify every checkpoint), with and
  without ``--check-entries``, and ``verify_bundle`` (the protocol CLI's
  ``verify-bundle``) for comparison; best of ``--repeat`` runs each;
* live: A serves its API in this process; ``hashmesh audit --card`` runs as a
  child process (its wall time includes interpreter start-up) fetching every
  leaf hash over mutual TLS as an auditor; then 10,000 more entries and an
  incremental audit from the saved head.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ORIGIN = "hotline-a.example/hashmesh"


def import_entries(node_dir: Path, n: int, parts: int = 4, seed: int = 1) -> None:
    from node.ledger.hashlist import HashListReader
    from node.ledger.service import Ledger

    rng = random.Random(seed)
    with Ledger.open(node_dir) as ledger:
        done = 0
        for part in range(parts):
            count = n // parts if part < parts - 1 else n - done
            lines = [f"{rng.getrandbits(256):064x}" for _ in range(count)]
            reader = HashListReader(fmt="lines", default_type="sha256")
            ledger.import_lines(reader.read(lines))
            done += count


def bundle_leaves(path: Path) -> list[bytes]:
    from protocol.bundle import BundleReader

    with path.open("rb") as f:
        reader = BundleReader(f)
        header = reader.header()
        out: list[bytes] = []
        for batch in reader.leaf_batches(header.leaf_count):
            out.extend(batch)
    return out


def best(fn: object, repeat: int) -> float:
    assert callable(fn)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def run_engine(bundle: Path, *, check_entries: bool) -> None:
    from node.audit.run import AuditOptions, run_audit
    from node.audit.state import AuditState

    report = asyncio.run(
        run_audit([], [bundle], AuditState(), AuditOptions(check_entries=check_entries))
    )
    assert report.ok, [f.line() for f in report.failures]


def run_verify_bundle(bundle: Path) -> None:
    from protocol.bundle import verify_bundle

    with bundle.open("rb") as f:
        verify_bundle(f)


# The child reports its own peak RSS from VmHWM, which starts afresh at exec:
# ru_maxrss (self or children) would still count this large process's pages.
_CHILD = (
    "import re, sys\n"
    "from node.cli import main\n"
    "status = main(sys.argv[1:])\n"
    "status_text = open('/proc/self/status').read()\n"
    "print(re.search(r'VmHWM:\\s*(\\d+)', status_text).group(1), file=sys.stderr)\n"
    "sys.exit(status)\n"
)


def child_audit(args: list[str]) -> tuple[float, dict[str, object], float]:
    """``hashmesh audit ARGS --json`` in a child process: wall time, report, peak RSS (MiB)."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, "audit", *args, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"audit failed:\n{proc.stdout}\n{proc.stderr}")
    rss = int(proc.stderr.strip().splitlines()[-1]) / 1024
    return elapsed, json.loads(proc.stdout), rss


async def live(node_dir: Path, base: Path, n: int) -> dict[str, float]:
    from node.api.server import RunningServer, run_server
    from node.cli.cards import make_card
    from node.config import load_config
    from node.ledger.service import Ledger
    from tests.api.conftest import add_peer, make_identity

    auditor = make_identity(base, "auditor")
    add_peer(node_dir, auditor, "auditor")
    started: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_server(node_dir, "127.0.0.1:0", sync=False, on_started=started.set_result, stop=stop)
    )
    server = await started
    try:
        config = load_config(node_dir)
        with Ledger.open(node_dir, read_only=True) as ledger:
            vkey = ledger.own_log.verifier_key
        card = base / "a.card.json"
        card.write_text(
            make_card(
                name=ORIGIN,
                url=server.url,
                tls_cert=config.tls_cert_path.read_text(encoding="ascii"),
                vkey=vkey,
            ).to_json()
        )
        state = base / "live-state.json"
        args = [
            "--card",
            str(card),
            "--cert",
            str(auditor.cert_path),
            "--key",
            str(auditor.key_path),
            "--state",
            str(state),
        ]
        first, doc, rss = await asyncio.to_thread(child_audit, args)
        hashed = doc["origins"][0]["sources"][0]["leaves_hashed"]  # type: ignore[index]
        assert hashed == n, doc
        await asyncio.to_thread(import_entries, node_dir, 10_000, 1, 2)
        second, doc, _ = await asyncio.to_thread(child_audit, args)
        source = doc["origins"][0]["sources"][0]  # type: ignore[index]
        assert (source["replay_from"], source["leaves_hashed"]) == (n, 10_000), doc
        startup, _, _ = await asyncio.to_thread(child_audit_startup)
        return {
            "live_first_s": first,
            "live_first_rate": n / first,
            "live_first_rate_net": n / max(first - startup, 1e-9),
            "live_incremental_s": second,
            "startup_s": startup,
            "live_child_rss_mib": rss,
        }
    finally:
        stop.set()
        await task


def child_audit_startup() -> tuple[float, None, None]:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "node", "audit", "--help"], cwd=ROOT, capture_output=True, check=True
    )
    return time.perf_counter() - started, None, None


def baselines(bundle: Path, repeat: int) -> tuple[float, float]:
    """Raw SHA-256 leaf hashing and raw Merkle (leaves + interior nodes) rates, in memory."""
    from protocol.tree import CompactRange

    datas = bundle_leaves(bundle)
    sha = hashlib.sha256

    def leaf_hashing() -> None:
        for d in datas:
            sha(b"\x00" + d).digest()

    hashes = [sha(b"\x00" + d).digest() for d in datas]

    def merkle() -> None:
        tree = CompactRange.empty()
        for i in range(0, len(hashes), 8192):
            tree.extend(hashes[i : i + 8192])
        tree.root()

    leaf_time = best(leaf_hashing, repeat)
    return len(datas) / leaf_time, len(datas) / (leaf_time + best(merkle, repeat))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 entries")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-live", action="store_true")
    args = parser.parse_args()
    n = 100_000 if args.quick else args.entries

    import node.audit.run  # noqa: F401  (imported before any timing)
    from node.ledger.export import export_lines
    from node.ledger.provision import init_node
    from node.ledger.service import Ledger

    base = Path(tempfile.mkdtemp(prefix="hashmesh-bench-audit-"))
    try:
        node_dir = base / "a"
        init_node(node_dir, ORIGIN, listen="127.0.0.1:0")
        t = time.perf_counter()
        import_entries(node_dir, n)
        bundle = base / "a.bundle"
        with Ledger.open(node_dir, read_only=True) as ledger, bundle.open("w") as f:
            f.writelines(export_lines(ledger, "bundle"))
        print(f"setup: {n:,} entries imported and exported in {time.perf_counter() - t:.1f} s")
        size_mb = bundle.stat().st_size / 1e6

        raw, raw_merkle = baselines(bundle, args.repeat)
        results: dict[str, float] = {
            "raw_leaf_hashing": raw,
            "raw_merkle": raw_merkle,
            "audit_bundle": n / best(lambda: run_engine(bundle, check_entries=False), args.repeat),
            "audit_bundle_check_entries": n
            / best(lambda: run_engine(bundle, check_entries=True), 1),
            "verify_bundle": n / best(lambda: run_verify_bundle(bundle), 1),
        }
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"bundle: {size_mb:.1f} MB; peak RSS of this process {rss:.0f} MiB")
        for name, rate in results.items():
            print(f"{name:<28} {rate:>12,.0f} leaves/s   {rate / raw:5.2f} of raw leaf hashing")
        cli_s, _doc, cli_rss = child_audit([str(bundle), "--state", str(base / "b-state.json")])
        print(
            f"hashmesh audit BUNDLE (child process, end to end with start-up): {cli_s:.2f} s = "
            f"{n / cli_s:,.0f} leaves/s; child peak RSS {cli_rss:.0f} MiB"
        )
        target = "met" if results["audit_bundle"] >= 500_000 else "MISSED"
        print(f"target >= 500,000 leaves/s from a bundle: {target}")
        if not args.skip_live:
            figures = asyncio.run(live(node_dir, base, n))
            print(
                f"live first audit (child process, mTLS, all leaf hashes): "
                f"{figures['live_first_s']:.2f} s = {figures['live_first_rate']:,.0f} leaves/s "
                f"({figures['live_first_rate_net']:,.0f} without the "
                f"{figures['startup_s']:.2f} s interpreter start-up); "
                f"child peak RSS {figures['live_child_rss_mib']:.0f} MiB"
            )
            print(
                f"live incremental audit (+10,000 entries from the saved head): "
                f"{figures['live_incremental_s']:.2f} s"
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
