"""Flood benchmark: how long a real peer's sync round takes while connections flood the server.

    .venv/bin/python benchmarks/bench_flood.py [--flood 2000] [--open-files 1024] [--rounds 3]
        [--round-limit 30]

``hashmesh serve`` runs in a child process limited to ``--open-files``
descriptors (soft and hard, so raising to the hard limit cannot help). For
each scenario a flooder child (``tests/adversary/flooder.py``) opens and
renews ``--flood`` connections that never finish (idle) or trickle (slow) a
TLS handshake, from one source address (127.0.0.2) or from 20
(127.0.0.2-21). While the flood is held, a follower runs ``--rounds`` sync
rounds (what ``hashmesh sync --once`` runs; each a new TLS connection and a
catch-up of the author's 50 entries from zero on the first). Printed per
scenario: seconds per round (each, and the worst; a round with no answer
within ``--round-limit`` counts as an error), the server's open descriptors
while flooded, and what the flooder saw (connections opened over
the run, closed by the server, held at the end).

``tests/adversary/test_connection_flood.py`` asserts the outcome (the round
succeeds within 10 s, the server stays under its file limit); this script
gives the figures quoted in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.config import load_config  # noqa: E402
from node.ledger.database import Database  # noqa: E402
from node.ledger.provision import init_node  # noqa: E402
from node.sync.runner import sync_once  # noqa: E402
from tests.adversary.flooder import Mode, flood_process, loopback_sources  # noqa: E402
from tests.adversary.served_process import serve_process  # noqa: E402
from tests.sync.conftest import AUTHOR, FOLLOWER, add_card, add_entries  # noqa: E402

SCENARIOS: list[tuple[str, int, Mode]] = [
    ("no flood", 0, "idle"),
    ("1 address, idle", 1, "idle"),
    ("20 addresses, idle", 20, "idle"),
    ("20 addresses, slow", 20, "slow"),
]


async def one_round(follower: Path, limit: float) -> tuple[float, list[str | None]]:
    config = load_config(follower)
    started = time.perf_counter()
    db = await Database.open(follower)
    try:
        reports = await asyncio.wait_for(
            sync_once(db, cert_path=config.tls_cert_path, key_path=config.tls_key_path), limit
        )
        errors = [r.error for r in reports]
    except TimeoutError:
        errors = [f"no answer within {limit:g} s"]
    finally:
        await db.close()
    return time.perf_counter() - started, errors


async def scenario(
    base: Path, name: str, sources: int, mode: Mode, args: argparse.Namespace
) -> dict[str, Any]:
    author = base / f"a-{sources}-{mode}"
    follower = base / f"b-{sources}-{mode}"
    init_node(author, AUTHOR)
    init_node(follower, FOLLOWER)
    add_entries(author, 0, 50)
    add_card(author, follower, "https://127.0.0.1:1", follow=False)
    served = await serve_process(author, open_files=args.open_files)
    try:
        add_card(follower, author, served.url)
        times: list[float] = []
        errors: list[str | None] = []
        counts: dict[str, int] = {}
        open_files = 0
        if sources == 0:
            for _ in range(args.rounds):
                took, errs = await one_round(follower, args.round_limit)
                times.append(took)
                errors += errs
        else:
            async with flood_process(
                "127.0.0.1",
                served.port,
                count=args.flood,
                sources=loopback_sources(sources),
                mode=mode,
                max_attempts=args.flood * 20,
            ) as flood:
                for _ in range(args.rounds):
                    took, errs = await one_round(follower, args.round_limit)
                    times.append(took)
                    errors += errs
                open_files = served.open_files()
                counts = vars(await flood.poll())
        return {
            "scenario": name,
            "round_s": [round(t, 2) for t in times],
            "worst_s": round(max(times), 2),
            "errors": [e for e in errors if e],
            "server_open_files": open_files or served.open_files(),
            "flooder": counts,
        }
    finally:
        await served.stop()


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        return [
            await scenario(Path(tmp), name, sources, mode, args)
            for name, sources, mode in SCENARIOS
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", type=int, default=2000)
    parser.add_argument("--open-files", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--round-limit", type=float, default=30.0, help="seconds before a round counts as failed"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    for r in results:
        flood = r["flooder"]
        seen = (
            f"flooder: {flood['opened']:,} opened, {flood['closed_by_server']:,} closed by "
            f"the server, {flood['held']:,} held at the end"
            if flood
            else "no flood"
        )
        print(
            f"{r['scenario']:<20} rounds {r['round_s']} s (worst {r['worst_s']} s), "
            f"errors {len(r['errors'])}, server fds {r['server_open_files']}; {seen}"
        )
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
