"""``hashmesh fsck``: derived data checked against the log, the log against its checkpoints.

Every case damages a real database file, either by a targeted write (what a
flipped bit does to one row) or by flipping one byte anywhere in the file
(tests/adversary/corrupter.py), and asks the real command line.
"""

from __future__ import annotations

import json
import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.cli import main as hashmesh
from node.ledger import Ledger, fsck
from node.ledger.damage import DamageRegister
from node.ledger.fsck import LogScan
from node.ledger.matching import LivePdqIndex, MatchQuery, make_opinion, match
from node.ledger.provision import init_node
from node.storage.ledger_store import LedgerStore
from protocol.entry import AddEntry, parse_entry
from protocol.merkle import verify_inclusion
from tests.adversary.corrupter import flip, flip_random, table_offsets, tamper

ORIGIN = "fsck.example/hashmesh"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = hashmesh(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def pdq_value(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def build_node(path: Path, *, adds: int = 60, seed: int = 7) -> list[tuple[str, str]]:
    """A node with md5 and PDQ adds, retractions and an opinion; returns what stays listed."""
    rng = random.Random(seed)
    init_node(path, ORIGIN)
    listed: list[tuple[str, str]] = []
    with Ledger.open(path) as ledger:
        batch = []
        for i in range(adds):
            if i % 6 == 5:
                batch.append(AddEntry.create(signal_type="pdq", value=pdq_value(rng), quality=90))
            else:
                batch.append(
                    AddEntry.create(
                        signal_type="md5", value=f"{rng.getrandbits(128):032x}", labels=["src:a"]
                    )
                )
        # Several checkpoints: a damaged entry is then placed between two of them.
        for start in range(0, adds, 20):
            ledger.append(batch[start : start + 20])
        ledger.retract(3, "listed by mistake")
        ledger.retract(5, "listed by mistake")
        ledger.append([make_opinion(ledger, ORIGIN, 1, "confirm")])
        listed = [(e.signal_type, e.value) for i, e in enumerate(batch) if i not in (3, 5)]
    return listed


def harmless(node: Path, listed: list[tuple[str, str]]) -> str | None:
    """None if every listed hash matches and every proof verifies; else what failed."""
    with Ledger.open(node, read_only=True) as ledger:
        queries = [(i, MatchQuery(t, v)) for i, (t, v) in enumerate(listed)]
        pdq = LivePdqIndex()
        pdq.load(ledger.matching)
        found = {r.position for r in match(ledger, queries, pdq=pdq, max_distance=0) if r.hits}
        missing = [listed[i] for i in range(len(listed)) if i not in found]
        if missing:
            return f"{len(missing)} listed hashes no longer match, first {missing[0]}"
        checkpoint = ledger.latest_checkpoint()
        for index in range(checkpoint.size):
            proof = ledger.prove_inclusion(index)
            assert proof.leaf_hash is not None
            verify_inclusion(index, proof.size, proof.leaf_hash, proof.hashes, checkpoint.root_hash)
    return None


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, list[tuple[str, str]]]:
    path = tmp_path / "node"
    return path, build_node(path)


DERIVED_DAMAGE = {
    # The issue's case: a flipped bit changes the entry number a hash points to.
    "active": "UPDATE active SET idx = idx + 1000 WHERE idx = 7",
    "active-missing": "DELETE FROM active WHERE idx = 8",
    "active-extra": "INSERT INTO active (log_id, key, idx) VALUES (1, 12345, 3)",
    "pdq": "UPDATE pdq SET hash = zeroblob(32) WHERE idx = 11",
    "opinions": "UPDATE opinions SET verdict = 'dispute'",
    "retractions": "DELETE FROM retractions WHERE target = 3",
    "entries": "UPDATE entries SET leaf_hash = zeroblob(32) WHERE idx = 9",
    "nodes": "UPDATE nodes SET hash = zeroblob(32) WHERE level = 4 AND idx = 1",
}


@pytest.mark.parametrize("case", sorted(DERIVED_DAMAGE))
def test_damaged_derived_data_is_named_and_repaired(
    node: tuple[Path, list[tuple[str, str]]], case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path, listed = node
    named_and_repaired(capsys, path, listed, DERIVED_DAMAGE[case], case.split("-")[0])


def named_and_repaired(
    capsys: pytest.CaptureFixture[str],
    path: Path,
    listed: list[tuple[str, str]],
    damage: str,
    table: str,
) -> None:
    """After ``damage`` (SQL), fsck names only ``table``; --repair rebuilds it, nothing lost."""
    tamper(path / "ledger.db", damage)
    status, out, err = run(capsys, "--dir", str(path), "fsck")
    assert status == 1, out + err
    problems = [line for line in out.splitlines() if line.startswith("PROBLEM:")]
    assert problems and all(f": {table}" in p for p in problems), out
    assert "DAMAGED" not in out and "fsck --repair` rebuilds" in out
    assert not DamageRegister(path).load()  # derived damage does not stop signing
    status, out, err = run(capsys, "--dir", str(path), "fsck", "--repair")
    assert status == 0, out + err
    assert "repaired: derived data rebuilt" in out
    assert harmless(path, listed) is None
    status, out, _ = run(capsys, "--dir", str(path), "fsck")
    assert status == 0 and out.startswith("ok:")
    # The append-only triggers came back with the rebuilt tables.
    conn = sqlite3.connect(path / "ledger.db")
    for table in ("entries", "nodes", "retractions"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(f"DELETE FROM {table}")
    conn.close()


def test_the_issue_case_stops_a_hash_matching_until_repaired(
    node: tuple[Path, list[tuple[str, str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, listed = node
    tamper(path / "ledger.db", DERIVED_DAMAGE["active"])
    failure = harmless(path, listed)
    assert failure is not None and "1 listed hashes no longer match" in failure
    status, out, _ = run(capsys, "--dir", str(path), "fsck", "--json")
    doc = json.loads(out)
    assert status == 1 and not doc["ok"]
    assert {(f["table"], f["index"], f["part"]) for f in doc["findings"]} == {
        ("active", 7, "derived"),
        ("active", 1007, "derived"),
    }
    assert run(capsys, "--dir", str(path), "fsck", "--repair", "--json")[0] == 0
    assert harmless(path, listed) is None


def test_a_damaged_entry_is_named_and_the_log_is_not_signed(
    node: tuple[Path, list[tuple[str, str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _listed = node
    # One byte of entry 30's value changed: its leaves no longer hash to the
    # roots of the checkpoints of size 40 and later.
    tamper(
        path / "ledger.db",
        "UPDATE entries SET data = CAST(replace(CAST(data AS TEXT), 'src:a', 'src:b') AS BLOB) "
        "WHERE idx = 30",
    )
    status, out, err = run(capsys, "--dir", str(path), "fsck")
    assert status == 1
    assert f"PROBLEM: {ORIGIN}: entries at entry 30: entries do not hash to the root" in out
    assert f"DAMAGED: log {ORIGIN} from entry 30" in out
    damage = DamageRegister(path).get(ORIGIN)
    assert damage is not None and damage.first_bad_index == 30
    # Nothing is signed for the damaged log, in one line.
    status, _, err = run(capsys, "--dir", str(path), "add", "--type", "md5", "--value", "a" * 32)
    assert status == 1 and err.count("\n") == 1
    assert f"log {ORIGIN} is damaged from entry 30" in err and "nothing was written" in err
    # Nor is it published as a public tree.
    status, _, err = run(capsys, "--dir", str(path), "publish", "--out", str(path.parent / "pub"))
    assert status == 1 and "nothing is published for it" in err and err.count("\n") == 1
    # --repair rebuilds derived data only from a log that verifies.
    status, out, err = run(capsys, "--dir", str(path), "fsck", "--repair")
    assert status == 1 and "repair --from-peers" in err and "nothing was written" in err


def test_a_damaged_checkpoint_is_named(
    node: tuple[Path, list[tuple[str, str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _listed = node
    tamper(path / "ledger.db", "UPDATE checkpoints SET root_hash = zeroblob(32) WHERE size = 40")
    status, out, _ = run(capsys, "--dir", str(path), "fsck")
    assert status == 1
    assert "checkpoints: checkpoint 40: the row disagrees with its signed note" in out


def test_fsck_clears_the_record_once_the_log_verifies(
    node: tuple[Path, list[tuple[str, str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _listed = node
    DamageRegister(path).mark(ORIGIN, 4, "test", "scrub")
    status, _out, err = run(capsys, "--dir", str(path), "fsck")
    assert status == 0 and "damage record is cleared" in err
    assert DamageRegister(path).load() == {}


# -- the issue's "Done when": 200 random single-byte corruptions -------------------
#
# After each flip: fsck, then status, match and add (each a result or one line).
# An add that succeeds writes to the copy; the next attempt starts from the
# pristine bytes again. A "harmless" flip is one fsck passes and after which
# every listed hash still matches and every proof verifies.


@dataclass
class Tally:
    tried: int = 0
    reported: int = 0
    harmless: int = 0
    repaired: int = 0
    silent_losses: int = 0
    tracebacks: int = 0


def _one_line(err: str) -> bool:
    return "Traceback" not in err and "unexpected" not in err


def corruption_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *, count: int, seed: int
) -> Tally:
    path = tmp_path / "node"
    listed = build_node(path, adds=120)
    db = path / "ledger.db"
    pristine = db.read_bytes()  # every connection is closed: the WAL is checkpointed
    rng = random.Random(seed)
    tally = Tally()
    losses: list[str] = []
    for attempt in range(count):
        db.write_bytes(pristine)
        for extra in ("ledger.db-wal", "ledger.db-shm", "damaged.json"):
            (path / extra).unlink(missing_ok=True)
        change = flip_random(db, rng)[0]
        tally.tried += 1
        where = f"attempt {attempt}, {change}"
        status, out, err = run(capsys, "--dir", str(path), "fsck")
        tally.tracebacks += not _one_line(err)
        for argv in (
            ["status"],
            ["match", "--type", "md5", listed[0][1]],
            ["add", "--type", "md5", "--value", f"{attempt:032x}"],
        ):
            _s, _o, e = run(capsys, "--dir", str(path), *argv)
            if not _one_line(e):
                tally.tracebacks += 1
                losses.append(f"{where}: {' '.join(argv)}: {e.strip()[-300:]}")
        if status != 0:
            tally.reported += 1
            if "fsck --repair` rebuilds" in out:
                status, out, err = run(capsys, "--dir", str(path), "fsck", "--repair")
                tally.tracebacks += not _one_line(err)
                if status == 0:
                    failure = harmless(path, listed)
                    if failure is not None:
                        losses.append(f"{where}: repaired but {failure}")
                    tally.repaired += 1
            continue
        try:
            failure = harmless(path, listed)
        except Exception as e:  # noqa: BLE001 - any failure here is a silent loss
            failure = f"{type(e).__name__}: {e}"
        if failure is None:
            tally.harmless += 1
        else:
            tally.silent_losses += 1
            losses.append(f"{where}: fsck said ok but {failure}")
    assert not losses, "\n".join(losses[:10])
    return tally


@pytest.mark.slow
def test_200_random_single_byte_corruptions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tally = corruption_run(tmp_path, capsys, count=200, seed=14)
    assert tally.tried == 200
    assert tally.silent_losses == 0 and tally.tracebacks == 0
    assert tally.reported + tally.harmless == 200
    # Both outcomes occur: a byte in free space is harmless, one in a row is found.
    assert tally.reported > 0 and tally.harmless > 0
    print(f"\ncorruptions: {tally}")


def test_flips_aimed_at_the_active_table_are_reported_or_harmless(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node"
    listed = build_node(path)
    db = path / "ledger.db"
    pristine = db.read_bytes()
    offsets = table_offsets(db, "active")
    rng = random.Random(3)
    reported = 0
    for _ in range(12):
        db.write_bytes(pristine)
        flip(db, rng.choice(offsets), rng.randrange(1, 256))
        status, out, err = run(capsys, "--dir", str(path), "fsck")
        assert "Traceback" not in err
        if status == 0:
            assert harmless(path, listed) is None, out
        else:
            reported += 1
            if "--repair` rebuilds" in out:
                assert run(capsys, "--dir", str(path), "fsck", "--repair")[0] == 0
                assert harmless(path, listed) is None
    assert reported > 0


def test_a_scan_resumed_at_a_signed_size_checks_from_there_only(
    node: tuple[Path, list[tuple[str, str]]],
) -> None:
    path, _listed = node
    tamper(
        path / "ledger.db",
        "UPDATE entries SET data = CAST(replace(CAST(data AS TEXT), 'src:a', 'src:b') AS BLOB) "
        "WHERE idx = 30",
    )
    with Ledger.open(path, read_only=True) as ledger:
        store, log = ledger.store, ledger.own_log
        for resume, found in ((40, None), (20, 30), (0, 30), (35, 30)):
            scan = LogScan(store, log, resume_from=resume)
            # 35 is no signed size: the scan starts from the first entry.
            assert scan.partial == (resume in (20, 40))
            assert scan.position == (resume if scan.partial else 0)
            while not scan.done:
                scan.scan(store, 7)
            assert scan.first_bad_index == found
            # A resumed scan never judges the derived tables (it did not see the whole log).
            if scan.partial:
                assert scan.derived_findings(store) == []


def test_a_resume_is_refused_when_the_stored_frontier_does_not_give_the_signed_root(
    node: tuple[Path, list[tuple[str, str]]],
) -> None:
    path, _listed = node
    tamper(path / "ledger.db", "UPDATE nodes SET hash = zeroblob(32) WHERE level = 5 AND idx = 0")
    with Ledger.open(path, read_only=True) as ledger:
        scan = LogScan(ledger.store, ledger.own_log, resume_from=40)
        assert not scan.partial and scan.position == 0


def test_a_missing_append_only_trigger_is_named_and_made_again(
    node: tuple[Path, list[tuple[str, str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _listed = node
    conn = sqlite3.connect(path / "ledger.db")
    conn.execute("DROP TRIGGER entries_no_update")
    conn.commit()
    conn.close()
    status, out, _ = run(capsys, "--dir", str(path), "fsck")
    assert status == 1
    assert "PROBLEM: *: schema: append-only trigger entries_no_update is missing" in out
    assert run(capsys, "--dir", str(path), "fsck", "--repair")[0] == 0
    conn = sqlite3.connect(path / "ledger.db")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE entries SET idx = idx")
    conn.close()


# -- the chunked comparison (a 100M-entry log is compared a chunk at a time) ----------


@pytest.fixture
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """fsck's chunks and its key-space split as small as a test node, so every edge is crossed."""
    monkeypatch.setattr(fsck, "_CHUNK", 16)
    real = LedgerStore.active_chunks
    monkeypatch.setattr(
        LedgerStore, "active_chunks", lambda self, log_id, rows=5: real(self, log_id, rows)
    )
    monkeypatch.setattr(fsck, "_SORT_ALL", 10)


def build_readds(path: Path) -> list[tuple[str, str]]:
    """:func:`build_node`, then retracted hashes added again (their keys are shared)."""
    listed = build_node(path)
    with Ledger.open(path) as ledger:

        def add(index: int) -> AddEntry:
            data = ledger.entry(ledger.own_log, index)
            assert data is not None
            entry = parse_entry(data)
            assert isinstance(entry, AddEntry)
            return entry

        md5, pdq, pdq_again = add(3), add(5), add(17)
        assert (md5.signal_type, pdq.signal_type) == ("md5", "pdq")
        ledger.retract(17, "listed by mistake")
        again = [
            AddEntry.create(signal_type=e.signal_type, value=e.value, quality=90)
            if e.signal_type == "pdq"
            else AddEntry.create(signal_type=e.signal_type, value=e.value, labels=["src:a"])
            for e in (md5, pdq, pdq_again)
        ]
        ledger.append(again)
    return [*listed, (md5.signal_type, md5.value), (pdq.signal_type, pdq.value)]


READD_DAMAGE = {
    **DERIVED_DAMAGE,
    # The listing row of a hash added again names its first, retracted add.
    "active-readd": "UPDATE active SET idx = 3 WHERE idx = 64",
    "pdq-readd": "INSERT INTO pdq (log_id, idx, hash) SELECT log_id, 5, hash FROM pdq WHERE idx = 65",
}


@pytest.mark.parametrize("case", sorted(READD_DAMAGE))
def test_the_chunked_comparison_finds_what_the_whole_one_does(
    tmp_path: Path, tiny_chunks: None, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node"
    listed = build_readds(path)
    assert run(capsys, "--dir", str(path), "fsck")[0] == 0
    assert harmless(path, listed) is None
    named_and_repaired(capsys, path, listed, READD_DAMAGE[case], case.split("-")[0])


def test_findings_past_the_shown_ones_are_counted_over_every_chunk(
    node: tuple[Path, list[tuple[str, str]]], tiny_chunks: None
) -> None:
    path, _listed = node
    tamper(path / "ledger.db", "DELETE FROM active WHERE idx % 2 = 0")
    with Ledger.open(path, read_only=True) as ledger:
        scan = fsck.check_log(ledger.store, ledger.own_log)
        with ledger.store.read_snapshot():
            held = len(ledger.store.active_arrays(ledger.own_log.log_id)[0])
    shown = [f for f in scan.findings if f.index is not None]
    assert [f.index for f in shown] == [0, 2, 4, 6, 8]
    assert all("missing from the active index" in f.detail for f in shown)
    # Entries 0..59 are adds, 3 and 5 (odd) retracted: the 30 even ones were listed.
    (more,) = [f for f in scan.findings if f.index is None]
    assert more.detail == "25 more rows wrong (first 5 listed)"
    assert held == 58 - 30
