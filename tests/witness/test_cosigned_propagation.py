"""Cosigned checkpoints travel as fast as plain ones (issue 19), live over mutual TLS.

Every node runs what ``hashmesh serve`` runs, in this process, on its own
SQLite file, with the fallback poll set long (:data:`LONG_POLL`): an entry
that reaches a follower within :data:`DEADLINE` was announced, not polled
for. A single entry is written alone, as the CLI writes it (its own
connection), and nothing else happens after it: the case where a
cosignature used to wait for the origin's next checkpoint or a poll.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.api.ops import OpsContext, make_ops_app
from node.api.server import start_ops_server
from node.api.state import HUB_KEY
from node.cli import main as cli
from node.config import WitnessAsk, WitnessRequirement, append_witness_setting, load_config
from node.ledger import Ledger
from node.ledger.database import Database
from node.ledger.events import CheckpointHub
from node.ledger.provision import init_node
from node.ledger.witness import QuorumWait
from protocol.checkpoint import open_checkpoint
from protocol.keys import NoteVerifier
from tests.sync.conftest import Serving, serve, shutdown, trusted
from tests.waiting import PATIENCE, eventually
from tests.witness.conftest import ORIGIN, add_card, append, ask_witnesses, witness_vkey

pytestmark = pytest.mark.integration

LONG_POLL = 60.0
"""Every runner's fallback poll: far beyond :data:`DEADLINE`."""

DEADLINE = 20.0
"""How long a single entry may take to reach a follower: a third of the poll
interval, so only an announcement can have brought it (it takes well under a
second on an idle machine)."""

B = "witness-b.example/hashmesh"
D = "witness-d.example/hashmesh"
E = "witness-e.example/hashmesh"
C = "agency-c.example/hashmesh"
F = "agency-f.example/hashmesh"
G = "agency-g.example/hashmesh"


def make(tmp_path: Path, name: str, origin: str, *, follows: Path | None = None) -> Path:
    path = tmp_path / name
    init_node(path, origin)
    if follows is not None:
        with Ledger.open(follows, read_only=True) as author:
            vkey = author.own_log.verifier_key
        with Ledger.open(path) as ledger:
            ledger.follow(ORIGIN, vkey)
    return path


def require(node_dir: Path, threshold: int, *witnesses: Path) -> None:
    keys = tuple(witness_vkey(w).to_text() for w in witnesses)
    append_witness_setting(
        node_dir, WitnessRequirement(origin=ORIGIN, keys=keys, threshold=threshold)
    )


def ask(origin_dir: Path, *witnesses: Path) -> None:
    for w in witnesses:
        name = load_config(w).origin
        append_witness_setting(origin_dir, WitnessAsk(peer=name, key=witness_vkey(w).to_text()))


def held(node_dir: Path) -> int:
    with Ledger.open(node_dir, read_only=True) as ledger:
        return ledger.replica(ORIGIN).state().size


def cosigners(node_dir: Path, size: int) -> set[str]:
    """The witnesses whose line node_dir holds for ORIGIN's checkpoint of ``size``."""
    with Ledger.open(node_dir, read_only=True) as ledger:
        log = ledger.log_for(ORIGIN)
        return {c.witness for c in ledger.witnessing.cosignatures(log.log_id, size)}


def waits(node_dir: Path) -> list[QuorumWait]:
    with Ledger.open(node_dir, read_only=True) as ledger:
        return ledger.witness_waits()


async def listening(server: Serving, peers: int, *, syncing: bool = True) -> None:
    """Wait until ``peers`` peers' runners listen to ``server``'s event stream.

    The node's own subscribers (the match index, and the witness loop when
    it syncs and asks witnesses) are counted first.
    """
    own = 1 + (syncing and bool(load_config(server.node_dir).witness.ask))
    hub = server.server.runner.app[HUB_KEY]
    await eventually(
        lambda: hub.subscriber_count,
        until=lambda n: n >= own + peers,
        what=f"{peers} peer(s) listening to {server.node_dir.name}",
    )


def write_one(origin_dir: Path) -> int:
    """Write one entry at the origin, alone, as the CLI does; its checkpoint's size."""
    append(origin_dir, 1, tag="urgent")
    with Ledger.open(origin_dir, read_only=True) as ledger:
        return ledger.latest_checkpoint().size


async def reaches(follower: Path, size: int) -> None:
    """Wait, far less than the poll interval, for the follower to hold ``size`` entries."""
    await eventually(
        lambda: held(follower),
        until=lambda n: n >= size,
        what=f"{follower.name} to hold entry {size} under a checkpoint meeting its policy",
        within=DEADLINE,
    )


async def single_entry_reaches(follower: Path, origin_dir: Path) -> int:
    """Write one entry at the origin, alone; wait for the follower to hold it."""
    size = write_one(origin_dir)
    await reaches(follower, size)
    return size


async def scrape(node_dir: Path) -> dict[tuple[str, ...], float]:
    """``GET /metrics`` of an ops listener over the node's database: (name, *labels) -> value."""
    db = await Database.open(node_dir)
    try:
        app = make_ops_app(OpsContext(db=db, hub=CheckpointHub(), config=load_config(node_dir)))
        server = await start_ops_server(app)
        try:
            async with aiohttp.ClientSession() as s, s.get(server.url + "/metrics") as resp:
                assert resp.status == 200
                text = await resp.text()
        finally:
            await server.close()
    finally:
        await db.close()
    return {
        (sample.name, *sample.labels.values()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
async def nodes() -> AsyncIterator[list[Serving]]:
    """The servers a test started; all shut down at the end."""
    running: list[Serving] = []
    yield running
    await shutdown(*(n for n in running if not n.task.done()))


async def test_one_of_one_through_the_witness_relay(tmp_path: Path, nodes: list[Serving]) -> None:
    """The README's demo: C follows A only through B and requires B's cosignature."""
    a = make(tmp_path, "a", ORIGIN)
    b = make(tmp_path, "b", B, follows=a)
    c = make(tmp_path, "c", C, follows=a)
    ask(a, b)
    require(c, 1, b)
    sa, sb, sc = [await serve(d, sync=True, poll=LONG_POLL) for d in (a, b, c)]
    nodes += [sa, sb, sc]
    add_card(a, b, sb.url)  # A asks B; B syncs from A
    add_card(b, a, sa.url)
    add_card(b, c, sc.url, role="subscriber")
    add_card(c, b, sb.url)  # C syncs A's log from B only
    await trusted(sa, b)
    await trusted(sb, a, c)
    await listening(sa, 1)  # B
    await listening(sb, 2)  # A (B is its peer) and C

    for _ in range(2):  # each entry alone, nothing written after it
        size = await single_entry_reaches(c, a)
        # C holds it under a checkpoint B cosigned, and keeps the line.
        assert cosigners(c, size) == {witness_vkey(b).name}
        assert waits(c) == []
    with Ledger.open(c, read_only=True) as ledger:
        log = ledger.log_for(ORIGIN)
        note = ledger.served_note(log, ledger.latest_checkpoint(ORIGIN))
    with Ledger.open(a, read_only=True) as ledger:
        a_key = NoteVerifier.from_text(ledger.own_log.verifier_key)
    opened = open_checkpoint(note, a_key, witnesses=[witness_vkey(b)], witness_threshold=1)
    assert opened.checkpoint.size == size


async def test_two_of_three_cosignatures_met_on_different_paths(
    tmp_path: Path, nodes: list[Serving]
) -> None:
    """C requires 2 of B, D, E; each witness relays only its own line to C."""
    a = make(tmp_path, "a", ORIGIN)
    witnesses = [make(tmp_path, n, o, follows=a) for n, o in (("b", B), ("d", D), ("e", E))]
    c = make(tmp_path, "c", C, follows=a)
    ask(a, *witnesses)
    require(c, 2, *witnesses)
    sa = await serve(a, sync=True, poll=LONG_POLL)
    sws = [await serve(w, sync=True, poll=LONG_POLL) for w in witnesses]
    sc = await serve(c, sync=True, poll=LONG_POLL)
    nodes += [sa, *sws, sc]
    for w, sw in zip(witnesses, sws, strict=True):
        add_card(a, w, sw.url)
        add_card(w, a, sa.url)
        add_card(w, c, sc.url, role="subscriber")
        add_card(c, w, sw.url)
    await trusted(sa, *witnesses)
    for sw in sws:
        await trusted(sw, a, c)
        await listening(sw, 2)  # A and C
    await listening(sa, 3)  # B, D, E

    names = {witness_vkey(w).name for w in witnesses}
    for _ in range(2):
        size = await single_entry_reaches(c, a)
        got = cosigners(c, size)
        assert len(got) >= 2 and got <= names
        assert waits(c) == []
    # No single path carried two lines: each witness holds only its own, so
    # C met the policy by adding up what different peers showed it.
    for w in witnesses:
        assert cosigners(w, size) <= {witness_vkey(w).name}


async def test_a_down_witness_delays_only_who_needs_it(
    tmp_path: Path, nodes: list[Serving], capsys: pytest.CaptureFixture[str]
) -> None:
    """B goes down: C (requires B) waits and says so; F (no policy) and G (requires D)
    do not; A keeps writing. B comes back: one cosignature, of the latest size."""
    a = make(tmp_path, "a", ORIGIN)
    b = make(tmp_path, "b", B, follows=a)
    d = make(tmp_path, "d", D, follows=a)
    c = make(tmp_path, "c", C, follows=a)
    f = make(tmp_path, "f", F, follows=a)
    g = make(tmp_path, "g", G, follows=a)
    ask(a, b, d)
    require(c, 1, b)
    require(g, 1, d)
    sa = await serve(a, sync=True, poll=LONG_POLL)
    sb = await serve(b, sync=False)
    sd = await serve(d, sync=False)
    followers = [await serve(x, sync=True, poll=LONG_POLL) for x in (c, f, g)]
    nodes += [sa, sb, sd, *followers]
    b_listen = f"127.0.0.1:{sb.server.port}"
    for w, sw in ((b, sb), (d, sd)):
        add_card(a, w, sw.url)
        add_card(w, a, sa.url)
    for x in (c, f, g):
        add_card(a, x, "https://127.0.0.1:1", role="subscriber")
        add_card(x, a, sa.url)  # the followers sync from A directly
    await trusted(sb, a)
    await trusted(sd, a)
    await trusted(sa, b, d, c, f, g)
    await listening(sa, 3)  # C, F, G (B and D do not sync)
    first = await single_entry_reaches(c, a)
    await eventually(
        lambda: cosigners(a, first),
        until=lambda got: got == {witness_vkey(b).name, witness_vkey(d).name},
        what="B's and D's cosignatures at A",
    )

    await sb.close()
    down_at = time.time()
    sizes = []
    for _ in range(4):  # A's writes go on, each entry alone
        sizes.append(write_one(a))
        await reaches(f, sizes[-1])  # no policy
        await reaches(g, sizes[-1])  # requires D only
    latest = sizes[-1]
    assert held(c) == first
    await eventually(
        lambda: waits(c),
        until=lambda ws: ws and ws[0].size == latest,
        what="C to wait for B's cosignature of the latest checkpoint",
    )
    (wait,) = waits(c)
    assert wait.origin == ORIGIN and wait.missing == (witness_vkey(b).name,)
    assert wait.signed == () and wait.threshold == 1
    assert down_at <= wait.since_unix <= time.time()  # the gauge metrics would show

    # `hashmesh status` says which cosignature C waits for, and since when.
    assert cli(["--dir", str(c), "status", "--origin", ORIGIN]) == 0
    text = capsys.readouterr().out
    assert f"waiting:          {ORIGIN} size {latest}" in text
    assert witness_vkey(b).name in text and wait.since in text
    assert cli(["--dir", str(c), "status", "--origin", ORIGIN, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["witness_waits"] == [wait.to_json()]
    assert doc["witness_waits"][0]["waiting_for"] == [witness_vkey(b).name]

    # And /metrics on the ops listener, for alerting on a long wait.
    samples = await scrape(c)
    assert samples[("hashmesh_witness_wait_since_timestamp_seconds", ORIGIN)] == (wait.since_unix)
    assert samples[("hashmesh_witness_wait_checkpoint_size", ORIGIN)] == latest
    assert samples[("hashmesh_witness_wait_missing", ORIGIN, witness_vkey(b).name)] == 1
    assert ("hashmesh_witness_wait_missing", ORIGIN, witness_vkey(d).name) not in samples

    # B comes back on its address: A asks it for the latest checkpoint only.
    nodes.append(await serve(b, sync=False, listen=b_listen))
    await eventually(
        lambda: held(c),
        until=lambda n: n >= latest,
        what="C to accept the latest checkpoint once B cosigned it",
        # A asks B again when its backoff ends, which doubles (to 5 min) for
        # as long as B was down: up to about that long on a loaded machine.
        within=3 * PATIENCE,
    )
    assert waits(c) == []
    with_b = {s for s in [first, *sizes] if witness_vkey(b).name in cosigners(a, s)}
    assert with_b == {first, latest}
    assert all(witness_vkey(d).name in cosigners(a, s) for s in sizes)


async def test_a_cosignature_got_by_hand_is_announced(tmp_path: Path, nodes: list[Serving]) -> None:
    """`hashmesh witness ask` in another process: A's server announces the new line."""
    a = make(tmp_path, "a", ORIGIN)
    w = make(tmp_path, "w", B, follows=a)
    c = make(tmp_path, "c", C, follows=a)
    ask(a, w)
    require(c, 1, w)
    sa = await serve(a, sync=False)  # no witness loop: only the CLI asks
    sw = await serve(w, sync=False)
    sc = await serve(c, sync=True, poll=LONG_POLL)
    nodes += [sa, sw, sc]
    add_card(a, w, sw.url)
    add_card(w, a, sa.url)
    add_card(a, c, "https://127.0.0.1:1", role="subscriber")
    add_card(c, a, sa.url)
    await trusted(sw, a)
    await trusted(sa, c)
    await listening(sa, 1, syncing=False)  # C

    size = write_one(a)
    await eventually(
        lambda: waits(c),
        until=lambda ws: ws and ws[0].size == size,
        what="C to hold A's checkpoint back for W's cosignature",
    )
    (outcome,) = await ask_witnesses(a)
    assert outcome.error is None and outcome.added == 1
    await reaches(c, size)
    assert cosigners(c, size) == {witness_vkey(w).name}
