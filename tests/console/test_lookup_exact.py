"""The console's look-up finds exact hashes through the mapped key file, as ``/v1/match`` does.

The node's ``index/active.seg`` is written, then the log moves on: a row the
file holds is retracted, a value retracted before the file is listed again,
and new values are added beyond it. The console's answers (in a match worker
process, and in the server's reader threads) must be those of SQLite's seeks
(:func:`~node.ledger.matching.match` without the key file), and the worker's
job must really have mapped the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from node.api.console.lookup import lookup_job
from node.api.match import worker_exact_index
from node.api.workers import WorkerContext
from node.ledger import Ledger
from node.ledger.active_index import active_index_path
from node.ledger.matching import MatchQuery, match
from protocol.entry import AddEntry
from tests.console.conftest import LABELS, ORIGIN, PLANTED, planted, serve_console, unlisted

CSRF = 'name="csrf" value="'
BEYOND = [planted(100 + i) for i in range(4)]
"""Values added after the key file was written (the tail of each process)."""


@pytest.fixture
def moved_on(console_node: Path) -> Path:
    """The console node with its key file written, then retractions and adds beyond it."""
    with Ledger.open(console_node) as ledger:
        ledger.build_index_files()
        ledger.retract(3, "withdrawn after the key file was written")
        ledger.append(
            [
                AddEntry.create(signal_type="sha256", value=PLANTED[1], labels=LABELS),
                *(AddEntry.create(signal_type="sha256", value=v, labels=LABELS) for v in BEYOND),
            ]
        )
    return console_node


QUERIES = [*PLANTED, *BEYOND, unlisted(1), unlisted(2)]


def _by_sqlite(node_dir: Path) -> dict[str, list[tuple[str, int]]]:
    """Value -> (origin, index) of each hit, by SQLite's seeks (no key file)."""
    with Ledger.open(node_dir, read_only=True) as ledger:
        results = match(
            ledger, [(i, MatchQuery("sha256", v)) for i, v in enumerate(QUERIES)], pdq=None
        )
    return {QUERIES[r.position]: [(h.origin, h.index) for h in r.hits] for r in results if r.hits}


def test_the_lookup_job_answers_from_the_key_file_as_sqlite_does(moved_on: Path) -> None:
    expected = _by_sqlite(moved_on)
    # Entry 3 was retracted after the file was written; entry 1's value is
    # listed again as entry 8; the values beyond the file are entries 9-12.
    assert PLANTED[3] not in expected and expected[PLANTED[1]] == [(ORIGIN, 8)]
    assert expected[BEYOND[2]] == [(ORIGIN, 11)] and len(expected) == len(PLANTED) - 1 + 4
    body = json.dumps(
        {"start": 0, "queries": [["sha256", v] for v in QUERIES], "max_distance": 31}
    ).encode()
    with Ledger.open(moved_on, read_only=True) as ledger:
        context = WorkerContext(moved_on, ledger)
        document, _facts = lookup_job(context, body, {})
        exact = worker_exact_index(context)
        # The file's five rows were mapped (entries 0, 2-5 were listed then);
        # the four adds and the re-listing beyond it were read into the tail.
        assert exact.base_rows == 5 and exact.tail_rows == 5
        assert exact.covered() == {1: 7}
    rows = json.loads(document)
    got = {
        QUERIES[row["position"]]: [(h["origin"], h["index"]) for h in row["hits"]] for row in rows
    }
    assert got == expected


async def _lookup(base: str, paste: str) -> dict[str, object]:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        async with session.get(base + "lookup") as r:
            csrf = (await r.text()).split(CSRF, 1)[1].split('"', 1)[0]
        form = aiohttp.FormData()
        form.add_field("csrf", csrf)
        form.add_field("hashes", paste)
        async with session.post(base + "lookup.json", data=form) as r:
            assert r.status == 200, await r.text()
            results: dict[str, object] = (await r.json())["results"]
            return results


@pytest.mark.parametrize("workers", [1, 0])
async def test_the_console_lookup_gives_sqlites_answers(moved_on: Path, workers: int) -> None:
    expected = _by_sqlite(moved_on)
    with (moved_on / "config.toml").open("a", encoding="utf-8") as f:
        f.write(f"\n[api]\nworkers = {workers}\n")
    assert active_index_path(moved_on).exists()
    paste = "\n".join(f"sha256:{v}" for v in QUERIES)
    async for console in serve_console(moved_on):
        doc = await _lookup(console.url(""), paste)
    matches = doc["matches"]
    assert isinstance(matches, list)
    got = {m["value"]: [(h["origin"], h["index"]) for h in m["hits"]] for m in matches}
    assert got == expected
    assert doc["checked"] == len(QUERIES)
