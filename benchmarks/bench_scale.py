"""Scale benchmark: the cost curve of one node from small to 100M entries (issue 18 item 4).

    .venv/bin/python benchmarks/bench_scale.py                          # 20,000 entries (smoke)
    .venv/bin/python benchmarks/bench_scale.py --sizes 1M,10M --dir /var/tmp/hashmesh-scale \\
        --json scale.json --plot docs/img/bench-scale.png
    .venv/bin/python benchmarks/bench_scale.py --sizes 100M --dir /big/disk/hashmesh-scale --skip-sync

Per size N, node A holds 0.8 N random sha256 entries and 0.2 N random PDQ
hashes (quality 100), imported with ``hashmesh import``'s code path in a child
process (``bench_ledger.child_import``; the PDQ list second). With ``--dir``
each size's node A is built once into ``DIR/<N>/a`` and reused by later runs
(its import figures are kept in ``DIR/<N>/build.json``): the 100M node takes
hours to build and ~30 GB, so it is never built in CI. Measured per size:

* import: entries/s of the sha256 list and of the PDQ list, end to end;
* verified sync: a fresh node B follows A and runs one ``sync_once`` round in
  a child process (``bench_sync``'s child; A serves in this process): every
  page over mutual TLS, every chunk proven against A's signed checkpoint;
* bytes on disk per entry of A (``ledger.db`` with its WAL);
* inclusion and consistency proof latency at size N (``bench_ledger.proof_latency``),
  and again over the same indexes (warm: the pages read once already);
* ``fsck``'s whole-log check of A (``node.ledger.fsck.check_log``): entries/s;
* the scrub of ``serve`` at full speed (no pacing): entries/s of its slices
  of ``[scrub] slice`` entries, each in its own read snapshot, from A's
  first entry for at most 60 s (``scrub_rate``);
* ``hashmesh serve --no-sync`` of A in a child process, started twice
  (before the sync, so A serving it maps the index files as a running node
  would): start-to-ready, from the spawn until a ``POST /v1/match`` with one
  PDQ query is answered (the PDQ index loaded), of a first start without
  index files (``DIR/<N>/a/index`` is removed: serve reads the ``pdq`` table
  and writes ``pdq.seg`` in the background, waited for) and of a restart
  (which maps it); then, on the restart, exact and PDQ lookups over mutual
  TLS: the latency of a one-hash request (p50 of ``--single`` requests) and
  the throughput of batches (10,000 sha256 hashes, 10 % listed; 1,000 PDQ
  queries at distance <= 31, 10 % planted near a listed hash), and finally
  the server's peak RSS (``VmHWM``, the larger of the two starts);
* a baseline in the same run, before the figures above and again before
  each part (serve, sync, proofs and fsck): raw SHA-256 leaf hashing
  (``bench_ledger.raw_leaf_rate``), so a loaded machine shows as such
  (the import figures of a reused node are from its build; they are kept
  with the baseline measured then, ``build_baseline_leaf_per_s``).

Output: a markdown table on stdout, ``--json FILE`` with every figure, and
``--plot FILE.png`` (matplotlib, from the ``bench`` extra) with one panel per
figure against size. ``--from-json A.json B.json --plot P.png`` redraws the
table and plot of separate runs (each size run on its own). The machine is
shared: compare sizes within one run, or against each row's baselines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_ledger  # noqa: E402
import bench_load  # noqa: E402
import bench_sync  # noqa: E402

PDQ_SHARE = 0.2  # 100M = 80M cryptographic + 20M PDQ (issue 18)
EXACT_BATCH = 10_000
PDQ_BATCH = 1_000
HIT_RATE = 0.1
SAMPLE = 100_000  # listed hashes of each kind kept for the lookups
SCRUB_SECONDS = 60.0  # the scrub rate is measured over at most this long

# (key, column heading, unit) in table order; every size's row has each key.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("entries", "entries", ""),
    ("import_sha256_per_s", "import sha256", "entries/s"),
    ("import_pdq_per_s", "import PDQ", "entries/s"),
    ("sync_per_s", "verified sync", "entries/s"),
    ("bytes_per_entry", "bytes on disk", "per entry"),
    ("serve_peak_rss_mib", "serve peak RSS", "MiB"),
    ("first_ready_s", "first start to ready", "s"),
    ("ready_s", "restart to ready", "s"),
    ("inclusion_ms", "inclusion proof", "ms"),
    ("consistency_ms", "consistency proof", "ms"),
    ("inclusion_warm_ms", "inclusion proof, warm", "ms"),
    ("consistency_warm_ms", "consistency proof, warm", "ms"),
    ("exact_p50_ms", "exact lookup, 1 hash", "ms p50"),
    ("exact_per_s", "exact lookups", "hashes/s"),
    ("pdq_p50_ms", "PDQ lookup, 1 query", "ms p50"),
    ("pdq_per_s", "PDQ lookups", "queries/s"),
    ("fsck_per_s", "fsck", "entries/s"),
    ("scrub_per_s", "scrub, full speed", "entries/s"),
    ("baseline_leaf_per_s", "baseline: raw leaf hashing", "leaves/s"),
)


# Seconds a start may take to answer its first match: a first start of the
# 100M node reads 20M PDQ rows (6.4 min for the server alone at load 14).
FIRST_START_S = 2400


def parse_size(text: str) -> int:
    """``20k``, ``1M``, ``100M`` or a plain number."""
    text = text.strip()
    scale = {"k": 1_000, "K": 1_000, "M": 1_000_000, "G": 1_000_000_000}.get(text[-1:], 1)
    digits = text[:-1] if scale != 1 else text
    try:
        value = int(float(digits) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes: not a size: {text!r}") from None
    if value < 1000:
        raise argparse.ArgumentTypeError(f"--sizes: {text!r} is below 1000 entries")
    return value


def sha256_value(i: int) -> str:
    return f"{random.Random(i).getrandbits(256):064x}"


def split(n: int) -> tuple[int, int]:
    """The sha256 and PDQ counts of a size-``n`` node."""
    n_pdq = int(n * PDQ_SHARE)
    return n - n_pdq, n_pdq


def write_chunk(path: Path, rng: random.Random, count: int, stride: int, offset: int) -> list[str]:
    """``count`` random 256-bit hex lines into ``path``; returns every ``stride``-th of the kind.

    ``offset`` is how many lines of the kind earlier chunks had.
    """
    sample = []
    with path.open("w", encoding="ascii") as f:
        for i in range(offset, offset + count):
            line = f"{rng.getrandbits(256):064x}\n"
            f.write(line)
            if i % stride == 0:
                sample.append(line)
    return sample


def import_list(node_dir: Path, list_path: Path, signal_type: str) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            bench_ledger.__file__,
            "--child",
            str(node_dir),
            str(list_path),
            signal_type,
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def commit_id() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    )
    return out.stdout.strip() or "unknown"


def _steps(progress: Path) -> list[dict[str, Any]]:
    if not progress.exists():
        return []
    return [json.loads(line) for line in progress.read_text(encoding="utf-8").splitlines()]


def _summary(node: bench_sync.Node, steps: list[dict[str, Any]], chunk: int) -> dict[str, Any]:
    """Import figures over the chunks done: entries/s of each kind, RSS, the chunks' baselines."""
    built: dict[str, Any] = {"port": node.port, "import_chunk": chunk, "build_commit": commit_id()}
    for kind in ("sha256", "pdq"):
        mine = [s for s in steps if s["kind"] == kind]
        built[f"n_{kind}"] = sum(s["count"] for s in mine)
        # The build's rate: its own chunks, not a later --import-into.
        timed = [s for s in mine if not s.get("import_into")]
        built[f"import_{kind}_per_s"] = (
            sum(s["count"] for s in timed) / sum(s["seconds"] for s in timed) if timed else None
        )
    built_steps = [s for s in steps if not s.get("import_into")]
    built["import_rss_mib"] = max(s["rss_mib"] for s in built_steps)
    # Each chunk's baseline is measured right after it: their mean is the build's.
    built["build_baseline_leaf_per_s"] = statistics.mean(
        s["baseline_leaf_per_s"] for s in built_steps
    )
    built["build_commits"] = sorted({s.get("commit", "unknown") for s in steps})
    return built


def build(
    where: Path, n: int, chunk: int, *, as_far_as_built: bool = False
) -> tuple[bench_sync.Node, dict[str, Any]]:
    """Node A of size ``n`` in ``where/a`` (reused when ``where/build.json`` says it is whole).

    The lists are imported in chunks, each a ``hashmesh import`` of its own
    (one transaction): a single 80M-line transaction would hold the whole
    write in the WAL (the database's size again on disk) until it commits,
    and a build stopped half-way would keep nothing. The kinds alternate by
    blocks of ``chunk`` entries (0.8 of a block sha256, then 0.2 PDQ), so at
    every block's end the node has the final mix: a build stopped there is
    a smaller node of the same kind, and can be measured as such
    (``as_far_as_built``). Each chunk's list is written just before its
    import and deleted after it; ``sample-sha256.txt`` and ``sample-pdq.txt``
    keep about ``SAMPLE`` lines of each (every k-th) for the lookups. Each
    chunk's figures go to ``where/build-progress.jsonl`` as it commits: a
    build that stopped resumes from there (when the node holds exactly what
    the file says) and still tells its rate over the part done. A file
    ``where/STOP`` stops the build before its next chunk.
    """
    record = where / "build.json"
    if record.exists():
        built: dict[str, Any] = json.loads(record.read_text(encoding="utf-8"))
        node = bench_sync.Node(where / "a", bench_sync.ORIGIN_A, built["port"])
        print(f"  reusing node A of {n:,} entries in {node.dir}")
        return node, built
    progress = where / "build-progress.jsonl"
    steps = _steps(progress)
    node = bench_sync.Node(where / "a", bench_sync.ORIGIN_A, 0)
    if steps and (where / "a").exists():
        from node.config import load_config

        node.port = int(load_config(node.dir).listen.rsplit(":", 1)[1])
        if held_entries(node, own_only=True) != steps[-1]["held"]:
            steps = []
    if as_far_as_built:
        if not steps:
            raise SystemExit(f"no node A (whole or in part) in {where}")
        print(f"  node A as far as built: {steps[-1]['held']:,} of {n:,} entries")
        return node, {**_summary(node, steps, chunk), "partial": True}
    if not steps:
        if where.exists():
            shutil.rmtree(where)  # a build that did not get to its first chunk
        where.mkdir(parents=True)
        node = bench_sync.make_node(where, "a", bench_sync.ORIGIN_A)
    n_sha, n_pdq = split(n)
    totals = {"sha256": n_sha, "pdq": n_pdq}
    done = {kind: sum(s["count"] for s in steps if s["kind"] == kind) for kind in totals}
    # One seeded stream per kind, moved past what earlier runs imported.
    rngs = {"sha256": random.Random(18), "pdq": random.Random(19)}
    for kind, rng in rngs.items():
        for _ in range(done[kind]):
            rng.getrandbits(256)
    held = sum(done.values())
    while held < n:
        block_end = min(n, (held // chunk + 1) * chunk)
        for kind, total in totals.items():
            target = total if block_end == n else round(block_end * total / n)
            count = target - done[kind]
            if count <= 0:
                continue
            if (where / "STOP").exists():
                # Asked to stop between chunks (touch DIR/<N>/STOP): nothing is lost.
                raise SystemExit(f"stopped by {where / 'STOP'}: node A holds {held:,} entries")
            stride = max(1, total // SAMPLE)
            list_path = where / f"{kind}-chunk.txt"
            sample = write_chunk(list_path, rngs[kind], count, stride, done[kind])
            result = import_list(node.dir, list_path, kind)
            list_path.unlink()
            assert result["count"] == count, result
            # Only values the node holds: a build stopped here is measured as it is.
            with (where / f"sample-{kind}.txt").open("a", encoding="ascii") as f:
                f.writelines(sample)
            done[kind] += count
            held += count
            step = {
                "kind": kind,
                "count": count,
                "seconds": result["seconds"],
                "held": held,
                "rss_mib": result["rss_mib"],
                "at": time.strftime("%H:%M:%S", time.gmtime()),
                "baseline_leaf_per_s": bench_ledger.raw_leaf_rate(200_000),
                "commit": commit_id(),
                "loadavg": os.getloadavg()[0],
            }
            steps.append(step)
            with progress.open("a", encoding="utf-8") as f:
                f.write(json.dumps(step) + "\n")
            print(
                f"  {kind} {done[kind]:,}/{total:,}: {count / result['seconds']:,.0f} entries/s"
                f" (node holds {held:,})",
                flush=True,
            )
    built = _summary(node, steps, chunk)
    record.write_text(json.dumps(built), encoding="utf-8")
    return node, built


async def verified_sync(a: bench_sync.Node, work: Path, n: int) -> dict[str, Any]:
    """A fresh follower B's first verified sync of A (B in a child process).

    Returns the entries/s and the sync child's clock: seconds spent waiting
    for pages (``PeerClient.entries``) and in ``db.write`` (verify + store).
    """
    # A fresh origin per run: A keeps the peers of earlier runs when reused.
    b = bench_sync.make_node(work, "b", f"replica-{time.time_ns()}.example/hashmesh")
    bench_sync.introduce(a, b)
    bench_sync.introduce(b, a, follow=a)
    serving = await bench_sync.serve(a, sync=False)
    try:
        result = await bench_sync.spawn("sync", {"node": str(b.dir), "origin": a.origin})
    finally:
        await bench_sync.shutdown(serving)
    assert result["held"] == n, result
    shutil.rmtree(b.dir)
    return {
        "sync_per_s": n / result["seconds"],
        "sync_s": result["seconds"],
        "sync_clock": result["clock"],
        "sync_rss_mib": result["rss_mib"],
    }


def held_entries(a: bench_sync.Node, *, own_only: bool = False) -> int:
    """Entries of every log node A holds (its own, and any it follows), or of its own log."""
    from node.ledger import Ledger

    with Ledger.open(a.dir, read_only=True) as ledger:
        logs = [ledger.own_log] if own_only else ledger.logs()
        return sum(ledger.store.entry_count(log.log_id) for log in logs)


def disk_bytes(a: bench_sync.Node) -> dict[str, int]:
    """Bytes of node A's database (with its WAL) and of everything else in its directory."""
    files = [p for p in a.dir.rglob("*") if p.is_file()]
    db = sum(p.stat().st_size for p in files if p.name.startswith("ledger.db"))
    return {"db": db, "other": sum(p.stat().st_size for p in files) - db}


def proofs_and_fsck(a: bench_sync.Node, proofs: int, fsck: bool = True) -> dict[str, float]:
    """Proof latency (mean, verified), twice over the same indexes, and ``fsck``'s log check.

    The first pass reads tree pages from disk or the OS cache as they come;
    the second reads the same pages again, warm: the difference is what
    reading the database costs (it grows with the file, not with log2 N).
    """
    from node.ledger import Ledger
    from node.ledger.fsck import check_log

    out: dict[str, float] = {}
    with Ledger.open(a.dir, read_only=True) as ledger:
        _, incl_ms, cons_ms = bench_ledger.proof_latency(ledger, random.Random(5), proofs)
        _, warm_incl_ms, warm_cons_ms = bench_ledger.proof_latency(ledger, random.Random(5), proofs)
        out.update(
            inclusion_ms=incl_ms,
            consistency_ms=cons_ms,
            inclusion_warm_ms=warm_incl_ms,
            consistency_warm_ms=warm_cons_ms,
        )
        if fsck:
            size = ledger.latest_checkpoint().size
            started = time.perf_counter()
            scan = check_log(ledger.store, ledger.own_log)
            out["fsck_per_s"] = size / (time.perf_counter() - started)
            assert not scan.findings, scan.findings
            del scan
            out["scrub_per_s"] = scrub_rate(ledger)
    return out


def scrub_rate(ledger: Any, seconds: float = SCRUB_SECONDS) -> float:
    """Entries/s of the scrub of ``serve`` unpaced: its slices, each in its own read snapshot.

    ``[scrub] slice`` entries (1,000 by default) a slice, as
    :mod:`node.ledger.scrub` reads them, from the first entry of A's own log
    for at most ``seconds`` (a pass over 100M entries would take as long as
    fsck); the derived comparison at the end of a pass is fsck's. At the
    default pace (``[scrub] entries_per_second``, 200) the scrub takes this
    rate's share of one core.
    """
    from node.config import DEFAULT_SCRUB_SLICE
    from node.ledger.fsck import LogScan

    store = ledger.store
    scan = LogScan(store, ledger.own_log)
    started = time.perf_counter()
    while not scan.done and time.perf_counter() - started < seconds:
        with store.read_snapshot():
            scan.scan(store, DEFAULT_SCRUB_SLICE)
    return scan.position / (time.perf_counter() - started)


def flip(value: str, rng: random.Random, bits: int) -> str:
    x = int(value, 16)
    for b in rng.sample(range(256), bits):
        x ^= 1 << b
    return f"{x:064x}"


def listed_values(where: Path, kind: str) -> list[str]:
    """Listed values of node A: its sample (or the whole list of an older build)."""
    path = where / f"sample-{kind}.txt"
    if not path.exists():
        path = where / f"{kind}.txt"
    if not path.exists():
        return []  # a build stopped before its first chunk of this kind
    return path.read_text(encoding="ascii").split()


def lookup_bodies(where: Path, requests: int) -> tuple[list[bytes], list[bytes]]:
    """Batches of exact and PDQ queries, 10 % of them listed (or planted within distance 31)."""
    rng = random.Random(7)
    sha = listed_values(where, "sha256")
    pdq = listed_values(where, "pdq")
    exact, near = [], []
    for _ in range(requests):
        exact.append(
            json.dumps(
                {
                    "hashes": [
                        {
                            "type": "sha256",
                            "value": rng.choice(sha)
                            if rng.random() < HIT_RATE
                            else f"{rng.getrandbits(256):064x}",
                        }
                        for _ in range(EXACT_BATCH)
                    ]
                }
            ).encode()
        )
        if not pdq:
            continue  # no PDQ listed: no PDQ batches
        near.append(
            json.dumps(
                {
                    "hashes": [
                        {
                            "type": "pdq",
                            "value": flip(rng.choice(pdq), rng, rng.randrange(32))
                            if rng.random() < HIT_RATE
                            else f"{rng.getrandbits(256):064x}",
                        }
                        for _ in range(PDQ_BATCH)
                    ],
                    "max_distance": 31,
                }
            ).encode()
        )
    return exact, near


def vm_hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


async def serve_and_match(
    a: bench_sync.Node,
    where: Path,
    work: Path,
    requests: int,
    single: int,
    *,
    reuse_index: bool = False,
) -> dict[str, Any]:
    """Start ``hashmesh serve`` of A; ready time, lookup latency and throughput, peak RSS."""
    from node.ledger.provision import init_node
    from tests.adversary.served_process import serve_process

    # A fresh client name per node and run: a reused A keeps earlier runs' peers.
    client = work / f"client-{a.dir.parent.name}"
    init_node(client, f"client-{time.time_ns()}.example/hashmesh")
    bench_load.add_peer(a.dir, client, work)
    ctx = bench_load.client_ctx(client, a.dir)
    exact, near = lookup_bodies(where, requests)
    rng = random.Random(3)
    # Ready = a listed PDQ hash found (the PDQ index loaded); a node with no
    # PDQ hash (a build stopped early) is ready when a listed sha256 is found.
    pdq_listed = listed_values(where, "pdq")
    probe_value = pdq_listed[0] if pdq_listed else listed_values(where, "sha256")[0]
    probe = json.dumps(
        {"hashes": [{"type": "pdq" if pdq_listed else "sha256", "value": probe_value}]}
    )

    # The first start finds no index files (they are derived from the log and
    # removed here) and writes them; a restart maps them. Both are timed, and
    # every other figure is of the restart. With ``reuse_index`` the files
    # of an earlier run are kept and only the restart is measured.
    if not reuse_index:
        shutil.rmtree(a.dir / "index", ignore_errors=True)
    first_ready_s: float | None = 0.0
    first_peak, persisted_s = 0.0, None
    first_log: list[str] = []
    for first in (False,) if reuse_index else (True, False):
        started = time.perf_counter()
        # A first start at 100M reads 20M PDQ rows: minutes on a loaded machine.
        served = await serve_process(a.dir, within=FIRST_START_S)
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
                ready_s = await _until_ready(session, served, probe, started)
                if first:
                    first_ready_s = ready_s
                    first_log = served.log
                    # A first start that read many rows writes the index file
                    # in the background: the restart is to find it.
                    persisted_s = await _until_persisted(served, started)
                    first_peak = vm_hwm_mib(served.proc.pid)
                    continue
                figures: dict[str, Any] = await _lookups(
                    session, served.url, exact, near, single, rng
                )
            figures["serve_peak_rss_mib"] = max(first_peak, vm_hwm_mib(served.proc.pid))
            figures["serve_peak_rss_first_start_mib"] = first_peak
        finally:
            await served.stop()
    figures["ready_s"] = ready_s
    figures["first_ready_s"] = None if reuse_index else first_ready_s
    figures["first_start_persisted_s"] = persisted_s
    figures["serve_log_ready"] = [line.strip() for line in served.log if "PDQ index" in line]
    figures["serve_log_first_start"] = [line.strip() for line in first_log if "PDQ index" in line]
    return figures


_READ_ROWS = re.compile(r"PDQ index ready: \d+ hashes \(\d+ mapped from \S+, (\d+) read\)")


async def _until_persisted(served: Any, started: float) -> float | None:
    """Seconds from ``started`` until serve logs that it persisted the PDQ index.

    None when it read too few rows to persist them (``PERSIST_MIN_ROWS``), or
    its code keeps no index file.
    """
    from node.ledger import live_pdq

    minimum = getattr(live_pdq, "PERSIST_MIN_ROWS", None)
    deadline = time.perf_counter() + 1800
    while time.perf_counter() < deadline and served.alive:
        log = "".join(served.log)
        if "PDQ index persisted" in log:
            return time.perf_counter() - started
        read = _READ_ROWS.search(log)
        if minimum is None or (read is not None and int(read.group(1)) < minimum):
            return None
        await asyncio.sleep(0.2)
    raise SystemExit("hashmesh serve did not persist its PDQ index:\n" + "".join(served.log))


async def _post(
    session: aiohttp.ClientSession, url: str, body: bytes | str
) -> tuple[int, float, dict[str, Any] | None]:
    t0 = time.perf_counter()
    async with session.post(
        url + "/v1/match", data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        raw = await resp.read()
    took = time.perf_counter() - t0
    return resp.status, took, json.loads(raw) if resp.status == 200 else None


async def _until_ready(
    session: aiohttp.ClientSession, served: Any, probe: str, started: float
) -> float:
    """Seconds from ``started`` until ``served`` answers the PDQ probe with its hit."""
    deadline = time.perf_counter() + FIRST_START_S
    while True:
        if not served.alive or time.perf_counter() > deadline:
            raise SystemExit("hashmesh serve did not answer a match:\n" + "".join(served.log))
        try:
            status, _, doc = await _post(session, served.url, probe)
        except aiohttp.ClientError:
            # A start under load may drop the first connections; keep asking.
            await asyncio.sleep(0.05)
            continue
        if status == 200:
            assert doc is not None, doc
            assert doc["matches"][0]["hits"], doc
            return time.perf_counter() - started
        await asyncio.sleep(0.05)


async def _lookups(
    session: aiohttp.ClientSession,
    url: str,
    exact: list[bytes],
    near: list[bytes],
    single: int,
    rng: random.Random,
) -> dict[str, float]:
    """One-hash latency (p50) and batch throughput of each kind."""

    async def post(body: bytes | str) -> tuple[int, float, dict[str, Any] | None]:
        return await _post(session, url, body)

    async def rate(bodies: list[bytes], per: int) -> float:
        t0 = time.perf_counter()
        for body in bodies:
            status, _, doc = await post(body)
            assert status == 200, status
            assert doc is not None, doc
            assert doc["checked"] == per, doc["checked"]
        return len(bodies) * per / (time.perf_counter() - t0)

    async def one_hash(kind: str) -> float:
        times = []
        for _ in range(single):
            value = f"{rng.getrandbits(256):064x}"
            body = {"hashes": [{"type": kind, "value": value}]}
            status, took, _ = await post(json.dumps(body))
            assert status == 200, status
            times.append(took * 1000)
        return statistics.median(times)

    await post(exact[0])  # warm both paths once
    if near:
        await post(near[0])
    return {
        "exact_p50_ms": await one_hash("sha256"),
        "exact_per_s": await rate(exact, EXACT_BATCH),
        "pdq_p50_ms": await one_hash("pdq") if near else None,
        "pdq_per_s": await rate(near, PDQ_BATCH) if near else None,
    }


async def measure(size: int, args: argparse.Namespace, base: Path, work: Path) -> dict[str, Any]:
    where = base / str(size)
    print(f"size {size:,}:")
    t0 = time.perf_counter()
    a, built = build(where, size, args.chunk, as_far_as_built=args.as_far_as_built)
    print(f"  node A ready in {time.perf_counter() - t0:.0f} s")
    # A build measured as far as it got is a smaller node of the same mix.
    own = built["n_sha256"] + built["n_pdq"]
    row: dict[str, Any] = {"entries": own, "nominal": size, **built}
    row["import_steps"] = _steps(where / "build-progress.jsonl")
    if args.build_only:
        return row
    # The same-run baseline: the machine is shared, so a loaded run shows as one.
    row["baseline_leaf_per_s"] = bench_ledger.raw_leaf_rate(200_000)
    row["commit"] = commit_id()
    row["loadavg_start"] = os.getloadavg()
    # Every file of the node (its database and any index files beside it) over
    # every entry it holds (a node A may follow other logs: --sync-into).
    held = held_entries(a)
    on_disk = disk_bytes(a)
    row["held_entries"] = held
    row["bytes_per_entry"] = (on_disk["db"] + on_disk["other"]) / held
    row["index_bytes_per_entry"] = on_disk["other"] / held
    # The load changes during a long run: a baseline before each part too.
    baselines = row["baselines"] = {}
    # serve first: its first start writes the index files, so A serving the
    # sync below maps them as a running node would (rather than building its
    # PDQ index beside the sync).
    baselines["serve"] = bench_ledger.raw_leaf_rate(200_000)
    row.update(
        await serve_and_match(
            a, where, work, args.requests, args.single, reuse_index=args.reuse_index
        )
    )
    print("  serve done", flush=True)
    if args.skip_sync:
        row["sync_per_s"] = None
    else:
        baselines["sync"] = bench_ledger.raw_leaf_rate(200_000)
        row.update(await verified_sync(a, work, own))
    print("  sync done", flush=True)
    baselines["proofs and fsck"] = bench_ledger.raw_leaf_rate(200_000)
    row.update(proofs_and_fsck(a, args.proofs, fsck=not args.skip_fsck))
    print("  proofs and fsck done", flush=True)
    row["loadavg_end"] = os.getloadavg()
    if not args.keep and args.dir is None:
        shutil.rmtree(where)
    return row


async def sync_into(args: argparse.Namespace, base: Path, work: Path) -> list[dict[str, Any]]:
    """Does verified sync slow down as the syncing node grows? (``--sync-into``)

    A second 100M-entry node to sync into does not fit beside node A, so
    the size-dependent part is measured apart: one log C of ``--c-entries``
    sha256 entries (built once into ``DIR/sync-into-NAME``, ``--c-log``) is synced, verified,
    into a fresh node and into node A of each size, whose tables then hold
    that many rows already (the ``entries`` and ``active`` B-trees every
    chunk inserts into). A keeps C's entries and follows C afterwards, so
    each A's figure is measured once and kept in ``DIR/<N>/sync-into[-NAME].json``.
    Then the serving half: the fetch-only rate (``PeerClient.entries``, no
    verification or storage) of the last ``--c-entries`` entries of each A.
    """
    n_c = args.c_entries
    # A node A keeps every log C it was measured with, so measuring it again
    # needs a log it does not hold yet: another --c-log name, another origin.
    name = args.c_log
    origin = bench_sync.ORIGIN_C if name == "c" else f"agency-{name}.example/hashmesh"
    c_where = base / f"sync-into-{name}"
    c_record = c_where / "c.json"
    if c_record.exists():
        c = bench_sync.Node(c_where / "c", origin, json.loads(c_record.read_text())["port"])
    else:
        shutil.rmtree(c_where, ignore_errors=True)
        c_where.mkdir(parents=True)
        c = bench_sync.make_node(c_where, "c", origin)
        print(f"  building log C of {n_c:,} entries")
        bench_sync.import_entries(c, n_c)
        c_record.write_text(json.dumps({"port": c.port, "entries": n_c}))
    fresh = bench_sync.make_node(work, "fresh", f"fresh-{time.time_ns()}.example/hashmesh")
    targets: list[tuple[int, bench_sync.Node, Path | None]] = [(0, fresh, None)]
    for size in args.sizes:
        a, built = build(base / str(size), size, args.chunk, as_far_as_built=args.as_far_as_built)
        # A's own log: the tail fetched below is of the entries it holds.
        own = built["n_sha256"] + built["n_pdq"]
        record_name = "sync-into.json" if name == "c" else f"sync-into-{name}.json"
        targets.append((own, a, base / str(size) / record_name))
    rows: list[dict[str, Any]] = []
    for size, target, record in targets:
        if record is not None and record.exists():
            print(f"  into A of {size:,}: measured before, reusing {record}")
            rows.append(json.loads(record.read_text(encoding="utf-8")))
            continue
        row: dict[str, Any] = {
            "a_entries": size,
            "held_before": held_entries(target),
            "commit": commit_id(),
            "loadavg_start": os.getloadavg(),
            "baseline_leaf_per_s": bench_ledger.raw_leaf_rate(200_000),
        }
        _introduce_once(target, c, follow=c)
        # Every node A has the same origin (its peer name on C) but its own
        # certificate: C trusts the one being measured.
        _reintroduce(c, target)
        serving = await bench_sync.serve(c, sync=False)
        # Up to three rounds, as a node's sync runner would go on after a
        # failed round (seen under load: the peer closed a kept-alive
        # connection); the rate is over the entries appended in the rounds.
        appended, seconds, clock, errors = 0, 0.0, {}, []
        try:
            for _ in range(3):
                result = await bench_sync.spawn(
                    "sync",
                    {
                        "node": str(target.dir),
                        "origin": c.origin,
                        "only_peer": c.origin,
                        "tolerate_errors": True,
                    },
                )
                appended += result["appended"]
                seconds += result["seconds"]
                for key, value in result["clock"].items():
                    clock[key] = clock.get(key, 0.0) + value
                errors += result["errors"]
                if result["held"] == n_c:
                    break
        finally:
            await bench_sync.shutdown(serving)
        assert result["held"] == n_c, result
        row.update(
            {
                "c_entries": n_c,
                "appended": appended,
                "sync_per_s": appended / seconds,
                "sync_s": seconds,
                "sync_clock": clock,
                "sync_errors": errors,
            }
        )
        if size:
            row["fetch_tail_per_s"] = await fetch_tail(target, fresh, size, n_c)
        row["loadavg_end"] = os.getloadavg()
        if record is not None:
            record.write_text(json.dumps(row), encoding="utf-8")
        rows.append(row)
        print(f"  into a node of {row['held_before']:,}: {row['sync_per_s']:,.0f} entries/s")
    return rows


def import_into(args: argparse.Namespace, base: Path, work: Path) -> list[dict[str, Any]]:
    """Does import slow down as the node grows? (``--import-into``)

    The same-sized list (``--c-entries`` new random sha256 lines) is imported
    into a fresh node, then into node A as far as built, then into a second
    fresh node (the load moves: the two fresh figures bracket A's). A keeps
    the entries; its progress file records them (``import_into``), so it
    stays a node the other modes can measure, and the build's own rates
    leave them out. A whole node takes them too (it then holds that many
    more than its size: measure its row first), and the row says so
    (``a_whole``).
    """
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        where = base / str(size)
        a, built = build(where, size, args.chunk, as_far_as_built=True)
        held = held_entries(a, own_only=True)
        row: dict[str, Any] = {
            "a_whole": not built.get("partial"),
            "a_entries": held,
            "commit": commit_id(),
            "loadavg_start": os.getloadavg(),
            "baseline_leaf_per_s": bench_ledger.raw_leaf_rate(200_000),
        }
        rng = random.Random(1000 + held)
        list_path = work / "import-into.txt"
        write_chunk(list_path, rng, args.c_entries, args.c_entries, 0)
        for label, target in (
            ("fresh_before", bench_sync.make_node(work, "fresh1", "fresh-1.example/hashmesh")),
            ("a", a),
            ("fresh_after", bench_sync.make_node(work, "fresh2", "fresh-2.example/hashmesh")),
        ):
            # The same list for each: the work differs only by the node's size.
            result = import_list(target.dir, list_path, "sha256")
            assert result["count"] == args.c_entries, result
            row[f"{label}_per_s"] = args.c_entries / result["seconds"]
            if label == "a":
                step = {
                    "kind": "sha256",
                    "count": args.c_entries,
                    "seconds": result["seconds"],
                    "held": held + args.c_entries,
                    "rss_mib": result["rss_mib"],
                    "at": time.strftime("%H:%M:%S", time.gmtime()),
                    "baseline_leaf_per_s": bench_ledger.raw_leaf_rate(200_000),
                    "commit": commit_id(),
                    "loadavg": os.getloadavg()[0],
                    "import_into": True,
                }
                with (where / "build-progress.jsonl").open("a", encoding="utf-8") as f:
                    f.write(json.dumps(step) + "\n")
            else:
                shutil.rmtree(target.dir)
            print(f"  import into {label}: {row[f'{label}_per_s']:,.0f} entries/s", flush=True)
        list_path.unlink()
        row["loadavg_end"] = os.getloadavg()
        rows.append(row)
    return rows


def _introduce_once(
    node: bench_sync.Node, peer: bench_sync.Node, *, follow: bench_sync.Node | None = None
) -> None:
    """``bench_sync.introduce`` unless ``node`` knows ``peer`` already (a run that stopped)."""
    from node.ledger import Ledger

    with Ledger.open(node.dir, read_only=True) as ledger:
        if peer.origin in {p.name for p in ledger.peers.list_peers()}:
            return
    bench_sync.introduce(node, peer, follow=follow)


def _reintroduce(node: bench_sync.Node, peer: bench_sync.Node) -> None:
    """``node`` forgets any peer named as ``peer`` is, then adds ``peer``'s card."""
    from node.ledger import Ledger

    with Ledger.open(node.dir) as ledger:
        ledger.peers.remove_peer(peer.origin)
    bench_sync.introduce(node, peer)


async def fetch_tail(a: bench_sync.Node, reader: bench_sync.Node, size: int, count: int) -> float:
    """Entries/s of fetching (and decoding) A's last ``count`` entries, nothing verified or kept."""
    _introduce_once(a, reader)
    cert, key = reader.paths()
    serving = await bench_sync.serve(a, sync=False)
    try:
        result = await bench_sync.spawn(
            "fetch",
            {
                "origin": a.origin,
                "url": a.url,
                "server_pem": a.cert_pem(),
                "cert": cert,
                "key": key,
                "first": size - count,
                "entries": size,
            },
        )
    finally:
        await bench_sync.shutdown(serving)
    assert result["entries"] == count, result
    return float(count / result["seconds"])


def sync_into_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| entries held by the syncing node | verified sync of C (entries/s) | waiting for pages (s)"
        " | db.write: verify + store (s) | fetch-only of A's last entries (entries/s)"
        " | baseline: raw leaf hashing (leaves/s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        clock = row["sync_clock"]
        fetch = row.get("fetch_tail_per_s")
        lines.append(
            f"| {row['held_before']:,} | {row['sync_per_s']:,.0f}"
            f" | {clock.get('PeerClient.entries', 0.0):.1f}"
            f" | {clock.get('db.write (verify + store)', 0.0):.1f}"
            f" | {'-' if fetch is None else f'{fetch:,.0f}'}"
            f" | {row['baseline_leaf_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(f"{h} ({u})" if u else h for _, h, u in COLUMNS) + " |"
    rule = "| " + " | ".join("---:" for _ in COLUMNS) + " |"
    lines = [head, rule]
    for row in rows:
        cells = []
        for key, _, _ in COLUMNS:
            v = row.get(key)
            if v is None:
                cells.append("not run")
            elif key == "entries" and row.get("partial"):
                cells.append(f"{v:,} (of {row['nominal']:,}: build stopped)")
            elif isinstance(v, float) and v < 100:
                cells.append(f"{v:.3f}" if v < 10 else f"{v:.1f}")
            else:
                cells.append(f"{v:,.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """One panel per figure against size; then, for builds imported in several
    chunks, each chunk's import rate (and its ratio to the baseline measured
    right after it) against the entries the node held after it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = COLUMNS[1:]
    chunked = [row for row in rows if len(row.get("import_steps", [])) > 1]
    panels = len(figures) + (2 if chunked else 0)
    cols = 4
    fig, axes = plt.subplots(
        (panels + cols - 1) // cols,
        cols,
        figsize=(16, 2.6 * ((panels + cols - 1) // cols)),
        squeeze=False,
    )
    flat = list(axes.flat)
    for ax, (key, heading, unit) in zip(flat, figures, strict=False):
        points = [(row["entries"], row[key]) for row in rows if row.get(key) is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        ax.set_xscale("log")
        _label(ax, heading, unit, "entries")
    if chunked:
        rate_ax, ratio_ax = flat[len(figures)], flat[len(figures) + 1]
        for row in chunked:
            for kind in ("sha256", "pdq"):
                steps = [s for s in row["import_steps"] if s["kind"] == kind]
                held = [s["held"] for s in steps]
                rate = [s["count"] / s["seconds"] for s in steps]
                label = f"{kind}, {row['nominal']:,} build"
                rate_ax.plot(held, rate, marker=".", label=label)
                # Probes recorded by hand carry no baseline (0): no ratio for them.
                based = [
                    (h, r / s["baseline_leaf_per_s"])
                    for h, r, s in zip(held, rate, steps, strict=True)
                    if s.get("baseline_leaf_per_s")
                ]
                ratio_ax.plot([h for h, _ in based], [q for _, q in based], marker=".", label=label)
        _label(rate_ax, "import per chunk", "entries/s", "entries held after the chunk")
        _label(ratio_ax, "import per chunk / baseline", "ratio", "entries held after the chunk")
        rate_ax.legend(fontsize=7)
    for ax in flat[panels:]:
        ax.axis("off")
    fig.suptitle("hashmesh: one node's costs against its size (bench_scale.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def _label(ax: Any, heading: str, unit: str, xlabel: str) -> None:
    ax.set_title(heading, fontsize=10)
    ax.set_ylabel(unit, fontsize=8)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        type=lambda t: [parse_size(s) for s in t.split(",")],
        default=[20_000],
        help="comma-separated sizes, e.g. 1M,10M,100M (default 20k, a smoke run)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        help="build each size's node A once into DIR/<size> and reuse it (default: a temporary directory)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary nodes")
    parser.add_argument(
        "--build-only",
        action="store_true",
        help="build (or find) each size's node A and record its import figures; measure nothing else",
    )
    parser.add_argument(
        "--as-far-as-built",
        action="store_true",
        help="measure each size's node A as far as its build got (a stopped build), importing nothing",
    )
    parser.add_argument(
        "--chunk",
        type=parse_size,
        default=10_000_000,
        help="import the lists in chunks of this many lines, one transaction each (default 10M)",
    )
    parser.add_argument(
        "--sync-into",
        action="store_true",
        help="measure only whether verified sync slows as the syncing node grows:"
        " a log C synced into a fresh node and into each size's node A (A keeps C)",
    )
    parser.add_argument(
        "--c-log",
        default="c",
        metavar="NAME",
        help="--sync-into's log C: built once into DIR/sync-into-NAME, origin"
        " agency-NAME.example/hashmesh; a node A keeps each C it took, so measuring"
        " A again needs a new NAME (default c)",
    )
    parser.add_argument(
        "--import-into",
        action="store_true",
        help="measure only whether import slows as the node grows: a list of --c-entries lines"
        " imported into a fresh node, into each size's node A (whole or stopped), into a fresh"
        " node again",
    )
    parser.add_argument(
        "--c-entries",
        type=parse_size,
        default=1_000_000,
        help="entries of log C for --sync-into, lines for --import-into (default 1M)",
    )
    parser.add_argument(
        "--skip-fsck", action="store_true", help="no fsck figure (it reads the whole log)"
    )
    parser.add_argument("--skip-sync", action="store_true", help="no verified-sync figure")
    parser.add_argument(
        "--reuse-index",
        action="store_true",
        help="keep node A's index files from an earlier run: measure the restart only"
        " (no first-start figure)",
    )
    parser.add_argument("--proofs", type=int, default=2000, help="proofs of each kind (2000)")
    parser.add_argument("--requests", type=int, default=10, help="batch requests of each kind (10)")
    parser.add_argument(
        "--single", type=int, default=200, help="one-hash requests of each kind (200)"
    )
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--plot", type=Path, help="write a PNG plot of each figure against size")
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="measure nothing: print the table (and --plot) of earlier --json files, sizes in order",
    )
    args = parser.parse_args()
    if args.from_json:
        rows = [row for f in args.from_json for row in json.loads(f.read_text(encoding="utf-8"))]
        rows.sort(key=lambda row: row["entries"])
        print(table(rows))
        if args.plot is not None:
            plot(rows, args.plot)
        return
    bench_sync.logging.getLogger("hashmesh").setLevel(bench_sync.logging.ERROR)

    work = Path(tempfile.mkdtemp(prefix="hashmesh-scale-"))
    base = args.dir if args.dir is not None else work / "nodes"
    rows: list[dict[str, Any]] = []
    if args.import_into:
        try:
            rows = import_into(args, base, work)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        if args.json is not None:
            args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
        for row in rows:
            print(json.dumps(row))
        return
    if args.sync_into:
        try:
            rows = asyncio.run(sync_into(args, base, work))
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        if args.json is not None:
            args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
        print(sync_into_table(rows))
        return
    try:
        for size in args.sizes:
            rows.append(asyncio.run(measure(size, args, base, work)))
            if args.json is not None:  # after each size: a later size may take hours
                args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"hashmesh scale benchmark, python {sys.version.split()[0]}")
    print(table(rows))
    if args.plot is not None:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
