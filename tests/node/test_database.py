"""The async Database facade and the checkpoint hub, on real files."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from node.errors import StorageError
from node.ledger import Ledger
from node.ledger.database import Database
from node.ledger.events import CheckpointHub
from protocol.entry import AddEntry
from tests.waiting import PATIENCE


def add(i: int) -> AddEntry:
    return AddEntry.create(signal_type="md5", value=f"{i:032x}", labels=["h:x"])


async def test_reads_run_while_a_write_runs(node_dir: Path) -> None:
    db = await Database.open(node_dir, readers=2)
    started, release = threading.Event(), threading.Event()
    loop_thread = threading.get_ident()

    def slow_write(ledger: Ledger) -> int:
        assert threading.get_ident() != loop_thread
        started.set()
        release.wait(PATIENCE)
        return ledger.append([add(1)]).checkpoint.size

    try:
        write = asyncio.create_task(db.write(slow_write))
        assert await asyncio.to_thread(started.wait, PATIENCE)
        # The writer is blocked mid-write; readers still answer, from the last commit.
        sizes = await asyncio.gather(
            *(db.read(lambda lg: lg.latest_checkpoint().size) for _ in range(6))
        )
        assert sizes == [0] * 6
        assert not write.done()
        release.set()
        assert await write == 1
        assert await db.read(lambda lg: lg.latest_checkpoint().size) == 1
    finally:
        release.set()
        await db.close()


async def test_writes_are_serialised_in_order(node_dir: Path) -> None:
    db = await Database.open(node_dir)
    active = 0
    overlap = False

    def write(i: int):  # type: ignore[no-untyped-def]
        def run(ledger: Ledger) -> int:
            nonlocal active, overlap
            active += 1
            overlap |= active > 1
            time.sleep(0.002)
            size = ledger.append([add(i)]).checkpoint.size
            active -= 1
            return size

        return run

    try:
        sizes = await asyncio.gather(*(db.write(write(i)) for i in range(10)))
        assert sizes == list(range(1, 11))
        assert not overlap
    finally:
        await db.close()


async def test_readers_cannot_write(node_dir: Path) -> None:
    db = await Database.open(node_dir, readers=1)
    try:
        with pytest.raises(Exception, match=r"read-only|readonly"):
            await db.read(lambda lg: lg.append([add(1)]))
    finally:
        await db.close()


async def test_commit_by_another_process_is_noticed(node_dir: Path) -> None:
    db = await Database.open(node_dir)
    try:
        before = await db.data_version()
        assert await db.data_version() == before  # stable while nothing commits
        with Ledger.open(node_dir) as cli:  # what `hashmesh add` does, in another connection
            cli.append([add(7)])
        assert await db.data_version() != before
        assert await db.read(lambda lg: lg.latest_checkpoint().size) == 1
        after_cli = await db.data_version()
        await db.write(lambda lg: lg.append([add(8)]))
        assert await db.data_version() != after_cli
    finally:
        await db.close()


async def test_closed_database_refuses(node_dir: Path) -> None:
    db = await Database.open(node_dir)
    await db.close()
    await db.close()
    with pytest.raises(StorageError, match="closed"):
        await db.read(lambda lg: lg.own_log)
    with pytest.raises(StorageError, match="closed"):
        await db.write(lambda lg: lg.own_log)


async def test_open_fails_cleanly_on_a_missing_node(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"config|missing|node"):
        await Database.open(tmp_path / "nothing")


async def test_hub_fans_out_and_drops_oldest_for_slow_subscribers() -> None:
    hub = CheckpointHub(queue_size=3)
    fast, slow = hub.subscribe(), hub.subscribe()
    first_fast = asyncio.create_task(anext(fast))
    first_slow = asyncio.create_task(anext(slow))
    await asyncio.sleep(0)
    assert hub.subscriber_count == 2
    hub.publish("o", 1)
    assert await first_fast == ("o", 1)
    assert await first_slow == ("o", 1)
    for size in range(2, 10):  # never blocks, however far behind slow is
        hub.publish("o", size)
    assert [await anext(slow) for _ in range(3)] == [("o", 7), ("o", 8), ("o", 9)]
    assert hub.dropped >= 5
    await fast.aclose()
    assert hub.subscriber_count == 1
    hub.close()
    assert [e async for e in slow] == []
    assert hub.subscriber_count == 0
    hub.publish("o", 10)  # ignored after close
    # Publishes are counted per origin (the server's watcher skips a second
    # announcement of cosignatures its witness loop already announced).
    assert (hub.published("o"), hub.published("other")) == (9, 0)
