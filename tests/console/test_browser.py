"""The console in a real browser: headless Chromium (Debian's), driven by Selenium, scripts off.

Two real nodes: A serves its log over mutual TLS (``run_server``, as
``hashmesh serve``); B follows A, has synced from it once, and has a second
peer that cannot be reached. B's console is opened in Chromium: the overview
must show both logs' sizes and both peers' states, a pasted list must find
the planted hits, a receipt downloaded by clicking its link must verify with
``python -m protocol verify-receipt``, and a form posted from another site
must be refused. Screenshots of every page are saved (at 1280x800 and at
phone width); with ``HASHMESH_CONSOLE_SCREENSHOTS=docs/console`` they replace
the ones docs/console.md shows.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import (
    presence_of_element_located,
    staleness_of,
)
from selenium.webdriver.support.wait import WebDriverWait

from node.ledger import Ledger
from node.ledger.matching import make_opinion
from node.storage.peer_store import PeerRecord
from protocol.entry import AddEntry
from tests.api.conftest import make_identity
from tests.console.browser import DESKTOP, PHONE, chromium, screenshot
from tests.console.conftest import ORIGIN, PLANTED, Console, init_console_node, serve_console
from tests.sync.conftest import (
    A,
    Serving,
    add_card,
    add_entries,
    make_node,
    once,
    serve,
    sha,
    trusted,
)
from tests.waiting import PATIENCE, eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AUTHOR_ENTRIES = 25
B_NAME = ORIGIN  # B's peer name at A is its origin, from its card
PDQ_LISTED = "f" * 16 + "0" * 16 + "a5" * 16
PDQ_NEAR = "e" + "f" * 15 + "0" * 15 + "1" + "a5" * 15 + "a4"  # 3 bits away
DEAD = "unreachable.example/hashmesh"


@dataclass
class Seen:
    """What the browser showed, collected in its thread and checked afterwards."""

    log_sizes: dict[str, str] = field(default_factory=dict)
    log_lags: dict[str, str] = field(default_factory=dict)
    peer_states: dict[str, str] = field(default_factory=dict)
    hits: list[tuple[str, str, str, str]] = field(default_factory=list)
    distances: list[str] = field(default_factory=list)
    readers: list[str] = field(default_factory=list)
    summary: str = ""
    receipt: Path | None = None
    verification: str = ""
    cross_site: str = ""
    screenshots: list[Path] = field(default_factory=list)


@dataclass
class Network:
    author: Serving
    console: Console
    vkey_a: str


@pytest.fixture
async def network(tmp_path: Path) -> AsyncIterator[Network]:
    a = await serve(make_node(tmp_path, "a", A), sync=False)
    try:
        add_entries(a.node_dir, 0, AUTHOR_ENTRIES)
        b_dir = init_console_node(tmp_path / "b")
        with Ledger.open(b_dir) as ledger:
            ledger.append(
                [
                    AddEntry.create(
                        signal_type="pdq", value=PDQ_LISTED, quality=90, labels=("series:pdq-c3",)
                    )
                ]
            )
        add_card(b_dir, a.node_dir, a.url)
        add_card(a.node_dir, b_dir, "https://127.0.0.1:1", follow=False)
        dead = make_identity(tmp_path, "dead")
        with Ledger.open(b_dir) as ledger:
            ledger.peers.add_peer(
                PeerRecord(
                    name=DEAD,
                    url="https://127.0.0.1:1",
                    tls_cert=dead.pem,
                    spki=dead.spki,
                    vkey=f"{DEAD}+00000000+AAAA",
                    role="peer",
                    added_at="2026-01-01T00:00:00Z",
                )
            )
        with Ledger.open(a.node_dir, read_only=True) as ledger:
            vkey_a = ledger.own_log.verifier_key
        await trusted(a, b_dir)  # A's watcher trusts B once it sees the peer row
        # B serves and syncs live: its runner proves A's head, which gives the
        # overview its lag column, and records the unreachable peer's failure.
        async for console in serve_console(b_dir, sync=True):
            await eventually(
                functools.partial(_overview, console),
                until=_settled,
                what="B synced from A and failed to reach the other peer",
            )
            with Ledger.open(b_dir) as ledger:  # B's analyst disputes one of A's entries
                ledger.append([make_opinion(ledger, A, 7, "dispute", "not the reported material")])
            # A reads from B once (as `hashmesh sync --once` would), so B's
            # Activity page has a reader to show.
            with Ledger.open(a.node_dir) as ledger:
                ledger.peers.remove_peer(B_NAME)
            add_card(a.node_dir, b_dir, console.api, follow=False)
            assert (await once(a.node_dir)) == [None]
            yield Network(a, console, vkey_a)
    finally:
        await a.close()


async def _overview(console: Console) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(console.url("overview.json")) as r:
        return dict(await r.json())


def _settled(doc: dict[str, Any]) -> bool:
    lags = {log["origin"]: log["lag"] for log in doc["logs"]}
    states = {peer["name"]: peer["state"] for peer in doc["peers"]}
    return lags.get(A) == 0 and states == {A: "ok", DEAD: "failing"}


async def _attacker_page(target: str) -> AsyncIterator[str]:
    """Another site (``localhost``, not 127.0.0.1) with a form aimed at the console."""

    async def page(_request: web.Request) -> web.Response:
        return web.Response(
            content_type="text/html",
            text=(
                f'<form method="post" action="{target}" enctype="multipart/form-data">'
                '<input name="csrf" value="guessed-token-guessed-token-guessed-token00">'
                f'<textarea name="hashes">sha256:{PLANTED[0]}</textarea>'
                '<button id="go" type="submit">go</button></form>'
            ),
        )

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://localhost:{runner.addresses[0][1]}/"
    finally:
        await runner.cleanup()


def _wait_for_file(directory: Path, suffix: str) -> Path:
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        done = [p for p in directory.iterdir() if p.name.endswith(suffix)]
        if done:
            return done[0]
        time.sleep(0.05)
    raise AssertionError(f"no *{suffix} downloaded into {directory} within {PATIENCE} s")


def _navigate(driver: Any, element: Any, shows: tuple[str, str]) -> None:
    """Click what loads a new page; wait until the browser has left the old one
    and the new one ``shows`` an element (``(By.ID, "summary")``).

    A click returns before the next page arrives (a look-up takes a while on
    a busy machine): reading the page at once would read the old one.
    """
    old = driver.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(driver, PATIENCE).until(staleness_of(old))
    WebDriverWait(driver, PATIENCE).until(presence_of_element_located(shows))


def _browse(console: Console, attacker: str, tmp: Path) -> Seen:
    """The analyst's walk through the console (runs in a thread: Selenium blocks)."""
    seen = Seen()
    shots = tmp / "screenshots"
    shots.mkdir()
    downloads = tmp / "downloads"
    downloads.mkdir()
    with chromium(tmp / "profile", downloads) as driver:

        def snap(name: str) -> None:
            seen.screenshots.append(screenshot(driver, shots, f"{name}-desktop", DESKTOP))
            seen.screenshots.append(screenshot(driver, shots, f"{name}-phone", PHONE))

        try:
            _walk(driver, console, attacker, seen, snap, downloads)
        except Exception as e:
            # Say what the page showed, not only which element was missing.
            raise AssertionError(
                f"{e.__class__.__name__} ({str(e).splitlines()[0]}) on {driver.current_url}: "
                f"{driver.find_element(By.TAG_NAME, 'body').text[:2000]}"
            ) from e
    return seen


def _walk(
    driver: Any,
    console: Console,
    attacker: str,
    seen: Seen,
    snap: Callable[[str], None],
    downloads: Path,
) -> None:
    driver.get(console.url("overview"))
    for row in driver.find_elements(By.CSS_SELECTOR, "#logs tbody tr"):
        size = row.find_element(By.CLASS_NAME, "size").text
        seen.log_sizes[row.get_attribute("data-origin") or ""] = size
        seen.log_lags[row.get_attribute("data-origin") or ""] = row.find_element(
            By.CLASS_NAME, "lag"
        ).text
    for row in driver.find_elements(By.CSS_SELECTOR, "#peers tbody tr"):
        state = row.find_element(By.CLASS_NAME, "state").text
        seen.peer_states[row.get_attribute("data-peer") or ""] = state
    snap("overview")

    _navigate(driver, driver.find_element(By.LINK_TEXT, "Look up"), (By.ID, "hashes"))
    pasted = [
        f"sha256:{PLANTED[2]}",
        f"sha256:{sha(7)}",
        f"sha256:{sha(1000)}",
        "md5:xyz",
        f"PDQ {PDQ_NEAR.upper()}",
    ]
    driver.find_element(By.ID, "hashes").send_keys("\n".join(pasted))
    _navigate(driver, driver.find_element(By.ID, "lookup-submit"), (By.ID, "summary"))
    seen.summary = driver.find_element(By.ID, "summary").text
    for row in driver.find_elements(By.CSS_SELECTOR, "#hits tr.hit"):
        origin = row.find_element(By.CLASS_NAME, "origin").text
        index = row.find_element(By.CLASS_NAME, "index").text
        verdicts = row.find_element(By.CLASS_NAME, "opinions").find_elements(By.TAG_NAME, "b")
        opinion = ",".join(v.text for v in verdicts)
        seen.hits.append((row.get_attribute("data-value") or "", origin, index, opinion))
        if row.get_attribute("data-type") == "pdq":
            seen.distances.append(row.find_element(By.CLASS_NAME, "distance").text)
    snap("lookup")

    row = next(
        r
        for r in driver.find_elements(By.CSS_SELECTOR, "#hits tr.hit")
        if r.find_element(By.CLASS_NAME, "origin").text == A
    )
    row.find_element(By.CLASS_NAME, "receipt-json").click()
    seen.receipt = _wait_for_file(downloads, ".receipt.json")

    _navigate(driver, row.find_element(By.CSS_SELECTOR, ".index a"), (By.ID, "verify"))
    _navigate(driver, driver.find_element(By.ID, "verify"), (By.ID, "verification"))
    seen.verification = driver.find_element(By.ID, "verification").text
    snap("entry")

    _navigate(driver, driver.find_element(By.LINK_TEXT, "Evidence"), (By.ID, "no-forks"))
    snap("evidence")
    _navigate(driver, driver.find_element(By.LINK_TEXT, "Activity"), (By.ID, "readers"))
    for row in driver.find_elements(By.CSS_SELECTOR, "#access tbody tr"):
        seen.readers.append(row.text)
    snap("activity")

    driver.get(attacker)
    _navigate(driver, driver.find_element(By.ID, "go"), (By.CLASS_NAME, "error"))
    seen.cross_site = driver.find_element(By.TAG_NAME, "body").text


async def test_analyst_walks_through_the_console(network: Network, tmp_path: Path) -> None:
    console = network.console
    async for attacker in _attacker_page(console.url("lookup")):
        seen = await asyncio.to_thread(_browse, console, attacker, tmp_path)

    own = next(iter(seen.log_sizes))
    # six adds, a retraction, a PDQ add and an opinion
    assert seen.log_sizes == {own: str(len(PLANTED) + 3), A: str(AUTHOR_ENTRIES)}
    assert seen.log_lags == {own: "author", A: "0"}
    assert seen.peer_states[A] == "ok"
    assert seen.peer_states[DEAD].startswith("failing (")
    assert set(seen.peer_states) == {A, DEAD}

    assert seen.summary.startswith("Checked 4 hash(es): 3 matched (3 hit(s)), 1 invalid")
    assert sorted(seen.hits) == sorted(
        [(PLANTED[2], own, "2", ""), (sha(7), A, "7", "dispute"), (PDQ_NEAR, own, "7", "")]
    )
    assert seen.distances == ["3"]

    assert seen.receipt is not None
    check = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "protocol",
            "verify-receipt",
            str(seen.receipt),
            "--vkey",
            network.vkey_a,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "verified: leaf hash" in seen.verification

    assert "refused" in seen.cross_site
    assert "not from this console" in seen.cross_site or "another site" in seen.cross_site
    assert any(r.startswith(f"{A} peer /v1/logs") for r in seen.readers), seen.readers
    assert len(seen.screenshots) == 10
    assert all(p.stat().st_size > 5000 for p in seen.screenshots)
