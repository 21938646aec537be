"""``hashmesh repair --from-peers``: a damaged log fetched again from a follower, over real mTLS.

A (the author) and B (its follower) are real node directories; B is served
by ``run_server``; A's database is damaged on disk and repaired by the real
command line. B's scrub is off, so B serves whatever its file holds: the
check that matters is A's own (the root of A's own signed checkpoint).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from node.cli import main as hashmesh
from node.ledger import Ledger
from node.ledger.damage import DamageRegister
from tests.adversary.corrupter import tamper
from tests.sync.conftest import (
    AUTHOR,
    FOLLOWER,
    Serving,
    add_entries,
    author_and_follower,
    make_node,
    once,
    shutdown,
)

DAMAGE = (
    'UPDATE entries SET data = CAST(replace(CAST(data AS TEXT), \'"value":"\', '
    '\'"value":"f\') AS BLOB) WHERE idx = 25 AND log_id = (SELECT log_id FROM logs '
    f"WHERE origin = '{AUTHOR}')"
)


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    # The command runs its own event loop: give it a thread.
    status = await asyncio.to_thread(hashmesh, list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


async def follower_of(tmp_path: Path) -> tuple[Path, Path, Serving]:
    """A with 40 entries (checkpoints at 20 and 40), B holding A's log, B served."""
    a = make_node(tmp_path, "a", AUTHOR)
    b = make_node(tmp_path, "b", FOLLOWER)
    with (b / "config.toml").open("a", encoding="utf-8") as f:
        f.write("\n[scrub]\nentries_per_second = 0\n")
    add_entries(a, 0, 20)
    add_entries(a, 20, 20)
    served_a, served_b = await author_and_follower(a, b)
    await shutdown(served_a)
    return a, b, served_b


async def test_a_damaged_entry_is_fetched_again_from_a_follower(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _b, served_b = await follower_of(tmp_path)
    try:
        tamper(a / "ledger.db", DAMAGE)
        status, out, _ = await run(capsys, "--dir", str(a), "fsck")
        assert status == 1 and f"DAMAGED: log {AUTHOR} from entry 25" in out
        status, out, err = await run(capsys, "--dir", str(a), "repair", "--from-peers")
        assert status == 0, out + err
        assert f"{AUTHOR}: entries 20..39 from {FOLLOWER} give our signed root of size 40" in out
        assert "1 damaged entries replaced" in out
        assert DamageRegister(a).load() == {}
        status, out, err = await run(capsys, "--dir", str(a), "fsck")
        assert status == 0 and out.startswith("ok:"), out + err
        # Signed and served again: a new entry is accepted.
        add_entries(a, 40, 1)
        with Ledger.open(a, read_only=True) as ledger:
            assert ledger.latest_checkpoint().size == 41
    finally:
        await shutdown(served_b)


async def test_a_copy_that_does_not_give_our_root_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, served_b = await follower_of(tmp_path)
    try:
        tamper(a / "ledger.db", DAMAGE)
        # B's copy is damaged too (differently): its bytes cannot give A's root.
        tamper(b / "ledger.db", DAMAGE.replace('\'"value":"f\'', '\'"value":"e\''))
        assert (await run(capsys, "--dir", str(a), "fsck"))[0] == 1
        status, out, err = await run(capsys, "--dir", str(a), "repair", "--from-peers")
        assert status == 1 and err.count("\n") == 1, err
        assert "no peer gave entries 20..39 that give our signed root of size 40" in err
        assert "do not give the root of our own signed checkpoint" in err
        assert "nothing was written" in err
        assert DamageRegister(a).get(AUTHOR) is not None
        status, out, _ = await run(capsys, "--dir", str(a), "fsck")
        assert status == 1 and f"DAMAGED: log {AUTHOR} from entry 25" in out
    finally:
        await shutdown(served_b)


async def test_a_replica_recorded_damaged_is_not_synced_until_repaired(tmp_path: Path) -> None:
    a = make_node(tmp_path, "a", AUTHOR)
    b = make_node(tmp_path, "b", FOLLOWER)
    add_entries(a, 0, 5)
    served_a, served_b = await author_and_follower(a, b)
    try:

        def held() -> int:
            with Ledger.open(b, read_only=True) as ledger:
                return ledger.replica(AUTHOR).state().size

        assert held() == 5
        DamageRegister(b).mark(AUTHOR, 2, "entries do not hash to the root", "fsck")
        add_entries(a, 5, 3)
        assert await once(b) == [None]  # not the peer's fault: no error recorded
        assert held() == 5
        DamageRegister(b).clear(AUTHOR)
        assert await once(b) == [None]
        assert held() == 8
    finally:
        await shutdown(served_a, served_b)


async def test_a_log_that_verifies_needs_no_peer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = make_node(tmp_path, "a", AUTHOR)
    add_entries(a, 0, 5)
    status, out, err = await run(capsys, "--dir", str(a), "repair", "--from-peers")
    assert status == 0, err
    assert f"{AUTHOR}: verifies; nothing to fetch" in out
    # Damaged, with no peer: the damaged range is named, the damage stays recorded.
    tamper(a / "ledger.db", DAMAGE.replace("idx = 25", "idx = 3"))
    status, out, _ = await run(capsys, "--dir", str(a), "fsck")
    assert status == 1 and f"DAMAGED: log {AUTHOR} from entry 3" in out
    status, out, err = await run(capsys, "--dir", str(a), "repair", "--from-peers")
    assert status == 1
    assert "entries 0..4 are damaged and there is no peer to fetch them from" in err, err
    assert AUTHOR in DamageRegister(a).load()
