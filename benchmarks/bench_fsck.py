"""fsck at size: entries/s and peak memory of the whole-log check, against an older version.

    .venv/bin/python benchmarks/bench_fsck.py --dir /var/tmp/hashmesh-scale/10000000/a
    .venv/bin/python benchmarks/bench_fsck.py --dir NODE --against 9bca15a --rounds 2 --cli

Opens the node read-only (nothing is written; the node may belong to
someone else) and runs :func:`node.ledger.fsck.check_log` over every held
log, in this process. With ``--against REV`` the ``node/ledger/fsck.py`` of
that git revision is loaded beside the current one and the two take turns
(``--rounds`` each), so a loaded machine weighs on both alike: entries/s
over all logs (``check_log`` timed whole: scan and derived comparison), and
entries per CPU second of this process (steadier than the wall clock on a
loaded machine).
Then each version runs once more in a fresh child process, for its peak
RSS (``VmHWM``: a process that ran another version first keeps that one's
freed memory and page cache). ``--cli`` also times the other parts of
``hashmesh fsck`` in this process: SQLite's integrity check and the index
files' check, with the peak RSS each added (``VmHWM`` reset through
``/proc/self/clear_refs``). Figures per entry are printed so they can be
scaled to 100M.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.ledger import Ledger  # noqa: E402
from node.ledger import fsck as current  # noqa: E402


def memory_mib() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MiB."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Vm"):
                name, value = line.split(":", 1)
                fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def reset_peak() -> None:
    """Make ``VmHWM`` the current RSS (Linux: write 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def load_revision(rev: str) -> ModuleType:
    """``node/ledger/fsck.py`` of git revision ``rev``, as a module of its own."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:node/ledger/fsck.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    name = f"node.ledger._fsck_at_{rev.replace('-', '_')}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:node/ledger/fsck.py", "exec"), module.__dict__)
    return module


def measure(what: Callable[[], Any]) -> tuple[float, float, float, Any]:
    """(seconds, CPU seconds, MiB of peak RSS above the start, result) of one call."""
    reset_peak()
    rss, _ = memory_mib()
    started, cpu = time.perf_counter(), time.process_time()
    result = what()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return seconds, cpu, memory_mib()[1] - rss, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, required=True, help="the node (opened read-only)")
    parser.add_argument("--against", metavar="REV", help="also run fsck.py of this git revision")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each version (default 1)")
    parser.add_argument("--cli", action="store_true", help="also the integrity and index checks")
    parser.add_argument("--peak-of", metavar="VERSION", help=argparse.SUPPRESS)  # the child
    args = parser.parse_args()
    if args.peak_of:
        module = current if args.peak_of == "current" else load_revision(args.peak_of)
        with Ledger.open(args.dir, read_only=True) as ledger:
            for log in ledger.store.list_logs():
                module.check_log(ledger.store, log)
        print(memory_mib()[1])
        return
    versions: list[tuple[str, ModuleType]] = [("current", current)]
    if args.against:
        versions.append((args.against, load_revision(args.against)))
    with Ledger.open(args.dir, read_only=True) as ledger:
        store = ledger.store
        logs = store.list_logs()
        entries = sum(store.entry_count(log.log_id) for log in logs)
        print(f"{args.dir}: {len(logs)} logs, {entries:,} entries; RSS {memory_mib()[0]:.0f} MiB")
        for round_ in range(args.rounds):
            for name, module in versions:

                def check(module: ModuleType = module) -> list[Any]:
                    return [module.check_log(store, log) for log in logs]

                seconds, cpu, _peak, scans = measure(check)
                findings = [f for scan in scans for f in scan.findings]
                assert not findings, findings[:5]
                del scans
                print(
                    f"round {round_ + 1} {name:>10}: {entries / seconds:,.0f} entries/s "
                    f"({seconds:.1f} s); {entries / cpu:,.0f} entries per CPU second",
                    flush=True,
                )
        for name, _module in versions:
            child = subprocess.run(
                [sys.executable, __file__, "--dir", str(args.dir), "--peak-of", name],
                check=True,
                capture_output=True,
                text=True,
            )
            peak = float(child.stdout.split()[-1])
            print(
                f"{name:>10} alone: peak RSS {peak:,.0f} MiB "
                f"({peak * 2**20 / entries:.1f} bytes/entry with the interpreter)",
                flush=True,
            )
        if args.cli:
            for part, call in (
                ("sqlite integrity_check", ledger.integrity_check),
                ("index files", ledger.check_index_files),
            ):
                seconds, _cpu, peak, result = measure(call)
                print(
                    f"{part}: {seconds:.1f} s, peak +{peak:,.0f} MiB "
                    f"({peak * 2**20 / entries:.1f} bytes/entry): {result}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
