"""First start of a large node without index files: time to the first PDQ answer, CPU spent.

    cp -a /var/tmp/hashmesh-scale/10000000/a /var/tmp/workers/a      # a copy: it is written
    .venv/bin/python benchmarks/bench_first_start.py --node /var/tmp/workers/a \\
        --samples /var/tmp/hashmesh-scale/10000000 [--code OTHER_CHECKOUT] [--json out.json]

Each run removes ``NODE/index`` (the files derived from the log) and starts
``hashmesh serve --no-sync`` of the node in a child process, as
``bench_scale.py`` measures a first start: from the spawn, a ``POST
/v1/match`` with one listed PDQ hash is sent over mutual TLS until it is
answered with its hit (``bench_scale._until_ready``: a retry every 50 ms
after a refusal); the same for one listed sha256 hash, sent beside it. Then
it waits until serve logs that it wrote ``pdq.seg``. Reported per run:
seconds to the first answered exact look-up, to the first answered PDQ
match, and to the written file; the CPU seconds (user + system) spent by
serve and every process under it (its match workers, the child that writes
``active.seg``) up to the first PDQ answer and up to the file, read from
``/proc``; the refusals seen (503s) and the load average.

``--code DIR``: run serve from another checkout (``PYTHONPATH=DIR``, started
in ``DIR``: ``python -m`` looks in the working directory first), e.g. an
export of ``main`` before a change, for a before/after pair on the same copy.
The node's config is used as it is (``[api] workers``: one per core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_load  # noqa: E402
import bench_scale  # noqa: E402

from node.ledger.provision import init_node  # noqa: E402
from tests.adversary.served_process import ServeProcess, serve_process  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    return text.rsplit(")", 1)[1].split()


def tree_cpu(pid: int, into: dict[str, float] | None = None) -> dict[str, float]:
    """CPU seconds (user + system) of ``pid`` and its live descendants, per process.

    Keys: ``"PID what"`` (the module run, or ``serve``); a process's reaped
    children count in its own figure (``cutime``, ``cstime``).
    """
    into = {} if into is None else into
    try:
        fields = _stat(pid)
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return into
    what = next((a.decode() for a in argv if a.startswith(b"node.")), "serve")
    # utime, stime, cutime, cstime (fields 14-17 of stat; 0-based 11-14 after the name)
    into[f"{pid} {what}"] = sum(int(f) for f in fields[11:15]) / TICK
    # Children are listed by the thread that started them (serve starts the
    # active.seg writer from a background thread, the workers from the loop's).
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids = [int(k) for k in children.read_text(encoding="ascii").split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for kid in kids:
            tree_cpu(kid, into)
    return into


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid``, its reaped children and its live descendants."""
    return sum(tree_cpu(pid).values())


async def _first_answer(
    session: aiohttp.ClientSession, served: ServeProcess, kind: str, value: str, started: float
) -> tuple[float, float, int]:
    """Seconds until a one-hash request of ``kind`` is answered with its hit; CPU then; 503s."""
    refused = 0
    body = json.dumps({"hashes": [{"type": kind, "value": value}]})
    while True:
        if not served.alive or time.perf_counter() - started > bench_scale.FIRST_START_S:
            raise SystemExit("hashmesh serve did not answer:\n" + "".join(served.log))
        try:
            status, _, doc = await bench_scale._post(session, served.url, body)
        except aiohttp.ClientError:
            await asyncio.sleep(0.05)
            continue
        if status == 200:
            assert doc is not None, doc
            assert doc["matches"][0]["hits"], doc
            cpu = tree_cpu(served.proc.pid)
            if kind == "pdq":
                print(f"  at the first PDQ answer: {cpu}", file=sys.stderr)
            return time.perf_counter() - started, sum(cpu.values()), refused
        refused += 1
        await asyncio.sleep(0.05)


async def first_start(node: Path, pdq: str, sha: str, work: Path) -> dict[str, Any]:
    shutil.rmtree(node / "index", ignore_errors=True)
    client = work / "client"
    if not client.exists():
        init_node(client, f"client-{time.time_ns()}.example/hashmesh")
        bench_load.add_peer(node, client, work)
    ctx = bench_load.client_ctx(client, node)
    started = time.perf_counter()
    served = await serve_process(node, within=bench_scale.FIRST_START_S)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            (
                (exact_s, exact_cpu, exact_refused),
                (pdq_s, pdq_cpu, pdq_refused),
            ) = await asyncio.gather(
                _first_answer(session, served, "sha256", sha, started),
                _first_answer(session, served, "pdq", pdq, started),
            )
        persisted_s = await bench_scale._until_persisted(served, started)
        settled = tree_cpu(served.proc.pid)
        settled_cpu = sum(settled.values())
    finally:
        await served.stop()
    return {
        "first_exact_s": round(exact_s, 1),
        "first_exact_refused": exact_refused,
        "first_pdq_s": round(pdq_s, 1),
        "first_pdq_refused": pdq_refused,
        "cpu_s_to_first_pdq": round(pdq_cpu, 1),
        "cpu_s_to_exact": round(exact_cpu, 1),
        "pdq_file_written_s": None if persisted_s is None else round(persisted_s, 1),
        "cpu_s_to_file_written": round(settled_cpu, 1),
        "cpu_s_by_process_at_file_written": {k: round(v, 1) for k, v in settled.items()},
        "log": [line.strip() for line in served.log if "index" in line],
        "load": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--node", type=Path, required=True, help="a COPY of a node (written)")
    parser.add_argument("--samples", type=Path, required=True, help="bench_scale's DIR/<N>")
    parser.add_argument("--code", type=Path, help="serve from this checkout (PYTHONPATH)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.code is not None:
        # ``python -m`` puts the working directory first on sys.path, before
        # PYTHONPATH: serve and its workers must start in the other checkout.
        os.environ["PYTHONPATH"] = str(args.code.resolve())
        os.chdir(args.code)
    pdq = bench_scale.listed_values(args.samples, "pdq")[0]
    sha = bench_scale.listed_values(args.samples, "sha256")[0]
    with tempfile.TemporaryDirectory(prefix="hashmesh-first-start-") as tmp:
        result = asyncio.run(first_start(args.node, pdq, sha, Path(tmp)))
    result["code"] = str(args.code or ROOT)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
