"""python-threatexchange fetching from a live node over mutual TLS (node.cli.signal_exchange).

The real ``threatexchange`` package drives the fetch, merges the deltas and
builds its own PDQ index; the node is a real server in a thread of its own
(the SignalExchangeAPI is synchronous and runs its own event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from threatexchange.exchanges.fetch_state import AggregateSignalOpinionCategory
from threatexchange.signal_type.md5 import VideoMD5Signal
from threatexchange.signal_type.pdq.signal import PdqSignal
from threatexchange.signal_type.sha256 import VideoSHA256Signal

from node.api.server import RunningServer, run_server
from node.cli.cards import make_card
from node.cli.signal_exchange import (
    HashmeshCheckpoint,
    HashmeshCollabConfig,
    HashmeshFetchError,
    HashmeshRecord,
    HashmeshSignalExchange,
)
from node.config import load_config
from node.ledger import Ledger
from node.ledger.provision import init_node
from protocol.entry import AddEntry
from tests.api.conftest import Identity, add_peer, make_identity

ORIGIN = "hotline-tx.example/hashmesh"
PDQ = "f" * 16 + "0" * 48
TYPES = [VideoMD5Signal, PdqSignal, VideoSHA256Signal]


@contextlib.asynccontextmanager
async def served(node_dir: Path) -> AsyncIterator[str]:
    """``hashmesh serve`` (no sync) on 127.0.0.1 in this event loop; yields its URL.

    The SignalExchangeAPI is synchronous with an event loop of its own, so the
    tests call it in a worker thread (``asyncio.to_thread``).
    """
    stop = asyncio.Event()
    started: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_server(node_dir, "127.0.0.1:0", sync=False, on_started=started.set_result, stop=stop)
    )
    try:
        server = await asyncio.wait_for(asyncio.shield(started), 60)
        yield server.url
    finally:
        stop.set()
        await task


def entries() -> list[AddEntry]:
    return [
        AddEntry.create(signal_type="md5", value="aa" * 16, labels=["iwf:category-a"]),
        AddEntry.create(signal_type="sha1", value="bb" * 20),
        AddEntry.create(signal_type="pdq", value=PDQ, quality=90, labels=["src:x"]),
        AddEntry.create(signal_type="sha256", value="cc" * 32),
        AddEntry.create(signal_type="md5", value="dd" * 16),
    ]


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, Identity]:
    node_dir = tmp_path / "node"
    init_node(node_dir, ORIGIN, listen="127.0.0.1:0")
    with Ledger.open(node_dir) as ledger:
        ledger.append(entries())
    subscriber = make_identity(tmp_path, "hma")
    add_peer(node_dir, subscriber, "subscriber")
    return node_dir, subscriber


def collab(
    tmp_path: Path, node_dir: Path, url: str, who: Identity, **kw: object
) -> HashmeshCollabConfig:
    config = load_config(node_dir)
    with Ledger.open(node_dir, read_only=True) as ledger:
        vkey = ledger.own_log.verifier_key
    card = make_card(
        name=ORIGIN, url=url, tls_cert=config.tls_cert_path.read_text(encoding="ascii"), vkey=vkey
    )
    path = tmp_path / "node.card.json"
    path.write_text(card.to_json(), encoding="utf-8")
    return HashmeshCollabConfig(
        name="hotline-tx",
        api="hashmesh",
        card=str(path),
        client_cert=str(who.cert_path),
        client_key=str(who.key_path),
        page_size=2,
        **kw,  # type: ignore[arg-type]
    )


Page = tuple[dict[int, HashmeshRecord | None], HashmeshCheckpoint]


def pages_of(api: HashmeshSignalExchange, checkpoint: HashmeshCheckpoint | None) -> Iterator[Page]:
    for delta in api.fetch_iter(TYPES, checkpoint):
        yield delta.updates, delta.checkpoint


async def fetch(api: HashmeshSignalExchange, checkpoint: HashmeshCheckpoint | None) -> list[Page]:
    return await asyncio.to_thread(lambda: list(pages_of(api, checkpoint)))


async def fetch_until_refused(
    api: HashmeshSignalExchange, checkpoint: HashmeshCheckpoint | None
) -> tuple[list[Page], HashmeshFetchError]:
    """The pages yielded before the fetch was refused, and the refusal."""

    def run() -> tuple[list[Page], HashmeshFetchError]:
        got: list[Page] = []
        try:
            for page in pages_of(api, checkpoint):
                got.append(page)
        except HashmeshFetchError as e:
            return got, e
        raise AssertionError(f"the fetch was not refused ({len(got)} pages)")

    return await asyncio.to_thread(run)


async def test_fetch_incremental_retraction_opinion_and_pdq_match(
    tmp_path: Path, node: tuple[Path, Identity]
) -> None:
    node_dir, subscriber = node
    async with served(node_dir) as url:
        config = collab(tmp_path, node_dir, url, subscriber)
        api = HashmeshSignalExchange.for_collab(config)
        held: dict[int, HashmeshRecord] = {}
        pages = await fetch(api, None)
        assert [cp.size for _u, cp in pages] == [2, 4, 5]  # pages of 2, the last short
        for updates, _cp in pages:
            HashmeshSignalExchange.naive_fetch_merge(held, updates)
        assert [(r.index, r.signal_type, r.value) for r in held.values()] == [
            (i, e.signal_type, e.value) for i, e in enumerate(entries())
        ]
        checkpoint = pages[-1][1]
        assert await fetch(api, checkpoint) == []  # up to date: nothing new

        with Ledger.open(node_dir) as ledger:
            ledger.retract(0, "false positive")
            ledger.append([AddEntry.create(signal_type="md5", value="ee" * 16)])
            leaf = bytes(next(iter(ledger.entries(ledger.own_log, 2, 3)))[2])
            from protocol.entry import OpinionEntry

            ledger.append([OpinionEntry(origin=ORIGIN, index=2, leaf_hash=leaf, verdict="dispute")])
        later = await fetch(api, checkpoint)
        assert math.ceil(3 / 2) == len(later) and later[-1][1].size == 8
        merged: dict[int, HashmeshRecord | None] = {}
        for updates, _cp in later:
            merged.update(updates)
            HashmeshSignalExchange.naive_fetch_merge(held, updates)
        assert merged[0] is None  # the retraction arrives as a deletion
        assert 0 not in held and held[6].value == "ee" * 16
        assert held[2].verdict == "dispute"
        aggregate = held[2].get_as_aggregate_opinion()
        assert aggregate.category == AggregateSignalOpinionCategory.DISPUTED
        assert aggregate.tags == {"src:x"}
        assert held[3].get_as_aggregate_opinion().category == (
            AggregateSignalOpinionCategory.POSITIVE_CLASS
        )

    by_type = HashmeshSignalExchange.naive_convert_to_signal_type(TYPES, config, held)
    assert set(by_type[VideoMD5Signal]) == {"dd" * 16, "ee" * 16}  # not the retracted one
    assert set(by_type[VideoSHA256Signal]) == {"cc" * 32}
    assert all(r.signal_type != "sha1" for m in by_type.values() for r in m.values())
    # threatexchange's own PDQ index, queried with a hash 3 bits away.
    index = PdqSignal.get_index_cls().build(by_type[PdqSignal].items())
    near = "e" + "f" * 15 + "0" * 47 + "1"
    (match,) = index.query(near)
    assert match.metadata.index == 2 and match.similarity_info.distance == 2
    assert index.query("0" * 64) == []


async def test_tampered_page_is_refused_and_nothing_of_it_yielded(
    tmp_path: Path, node: tuple[Path, Identity]
) -> None:
    node_dir, subscriber = node
    # Someone with access to the node's disk changes entry 3 (page [2, 4)).
    with Ledger.open(node_dir) as ledger:
        data = bytes(next(iter(ledger.entries(ledger.own_log, 3, 4)))[1])
    conn = sqlite3.connect(node_dir / "ledger.db")
    with conn:
        conn.execute("DROP TRIGGER entries_no_update")
        conn.execute(
            "UPDATE entries SET data = ? WHERE idx = 3", (data.replace(b"cc" * 32, b"cd" * 32),)
        )
    conn.close()
    # Whoever changed the disk also turned the node's own scrub off: it would
    # otherwise refuse to serve the damaged log (503) before the client sees it.
    with (node_dir / "config.toml").open("a", encoding="utf-8") as f:
        f.write("\n[scrub]\nentries_per_second = 0\n")
    async with served(node_dir) as url:
        api = HashmeshSignalExchange.for_collab(collab(tmp_path, node_dir, url, subscriber))
        got, refusal = await fetch_until_refused(api, None)
        assert "page [2, 4) refused, it does not verify" in str(refusal)
        # The good page before it, and nothing of it or after it.
        assert [(sorted(u), cp.size) for u, cp in got] == [([0, 1], 2)]


async def test_checkpoint_that_does_not_verify_stops_before_anything(
    tmp_path: Path, node: tuple[Path, Identity]
) -> None:
    node_dir, subscriber = node
    other = tmp_path / "other"
    init_node(other, ORIGIN)  # same origin, another key: an impostor's view
    with Ledger.open(other, read_only=True) as ledger:
        wrong = ledger.own_log.verifier_key
    async with served(node_dir) as url:
        config = collab(tmp_path, node_dir, url, subscriber, verifier_key=wrong)
        api = HashmeshSignalExchange.for_collab(config)
        got, refusal = await fetch_until_refused(api, None)
        assert got == [] and "does not verify with the origin's key" in str(refusal)
        # A stored checkpoint the node's log does not extend (a rewritten history).
        forged = HashmeshCheckpoint(ORIGIN, 2, ["00" * 32])
        good = HashmeshSignalExchange.for_collab(collab(tmp_path, node_dir, url, subscriber))
        got, refusal = await fetch_until_refused(good, forged)
        assert got == [] and "refused" in str(refusal)
        # An unknown client certificate is refused by the node, named as such.
        stranger = make_identity(tmp_path, "stranger")
        api = HashmeshSignalExchange.for_collab(collab(tmp_path, node_dir, url, stranger))
        got, refusal = await fetch_until_refused(api, None)
        assert got == [] and str(refusal).startswith(ORIGIN)


def test_config_checkpoint_and_record_survive_threatexchange_json(tmp_path: Path) -> None:
    """HMA stores collaborations, checkpoints and records with threatexchange's dataclass_json."""
    from threatexchange.utils import dataclass_json

    config = dataclass_json.dataclass_load_dict(
        {"name": "HOTLINE_A", "api": "hashmesh", "enabled": True, "card": "a.card.json"},
        HashmeshCollabConfig,
    )
    assert config.card == "a.card.json" and config.page_size == 10_000
    checkpoint = HashmeshCheckpoint(ORIGIN, 3, ["ab" * 32, "cd" * 32])
    again = dataclass_json.dataclass_load_dict(
        dataclass_json.dataclass_dump_dict(checkpoint), HashmeshCheckpoint
    )
    assert again == checkpoint and again.compact_range().size == 3
    record = HashmeshRecord(ORIGIN, 2, "pdq", PDQ, ["src:x"], 90, "confirm")
    assert (
        dataclass_json.dataclass_load_dict(
            dataclass_json.dataclass_dump_dict(record), HashmeshRecord
        )
        == record
    )
    with pytest.raises(HashmeshFetchError, match="damaged"):
        HashmeshCheckpoint(ORIGIN, 3, ["ab" * 32]).compact_range()


async def test_key_rotation_stops_the_fetch_until_the_new_key_is_configured(
    tmp_path: Path, node: tuple[Path, Identity]
) -> None:
    node_dir, subscriber = node
    async with served(node_dir) as url:
        config = collab(tmp_path, node_dir, url, subscriber)
        pages = await fetch(HashmeshSignalExchange.for_collab(config), None)
        checkpoint = pages[-1][1]
        with Ledger.open(node_dir) as ledger:
            rotation = ledger.rotate_key("yearly rotation")
            ledger.append([AddEntry.create(signal_type="md5", value="ff" * 16)])
        got, refusal = await fetch_until_refused(
            HashmeshSignalExchange.for_collab(config), checkpoint
        )
        assert got == [] and "rotated its key" in str(refusal)
        # After checking the rotation, the operator configures the new key: the
        # fetch resumes from the same checkpoint, the rotate entry yields no record.
        config.verifier_key = str(rotation.new_vkey)
        later = await fetch(HashmeshSignalExchange.for_collab(config), checkpoint)
        updates: dict[int, HashmeshRecord | None] = {}
        for page, _cp in later:
            updates.update(page)
        assert later[-1][1].size == 7
        assert set(updates) == {6} and updates[6] is not None and updates[6].value == "ff" * 16
