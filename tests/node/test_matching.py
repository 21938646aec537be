"""Matching over real SQLite ledgers: own log and replicas, exact and PDQ, opinions, receipts."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from node.config import MatchSettings
from node.errors import LedgerError, UnknownLogError
from node.ledger import Ledger
from node.ledger.matching import (
    DEFAULT_MAX_DISTANCE,
    ItemResult,
    LivePdqIndex,
    MatchQuery,
    make_opinion,
    match,
)
from node.ledger.provision import init_node
from node.storage.schema import active_key, migrate
from protocol.checkpoint import cosign_checkpoint
from protocol.entry import AddEntry, RetractEntry
from protocol.errors import MalformedError
from protocol.keys import SIG_COSIGNATURE_V1, NoteSigner
from protocol.receipt import verify_receipt

A = "hotline-a.example/hashmesh"
B = "hotline-b.example/hashmesh"
C = "agency-c.example/hashmesh"


def sha(i: int) -> str:
    return f"{i:064x}"


def pdq_value(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def flip(value: str, bits: list[int]) -> str:
    n = int(value, 16)
    for b in bits:
        n ^= 1 << b
    return f"{n:064x}"


def pdq_add(value: str, labels: tuple[str, ...] = ("iwf:category-a",)) -> AddEntry:
    return AddEntry.create(signal_type="pdq", value=value, labels=labels, quality=90)


def replicate(src: Path, dst: Ledger) -> None:
    """Copy src's own log into dst as a verified replica (what sync does)."""
    with Ledger.open(src, read_only=True) as ledger:
        log = ledger.own_log
        note = ledger.latest_checkpoint().note
        datas = [bytes(d) for _i, d, _h in ledger.store.iter_entries(log.log_id)]
    if dst.peers.get_follow(log.origin) is None:
        dst.follow(log.origin, log.verifier_key)
    replica = dst.replica(log.origin)
    held = replica.state().size
    if held < len(datas):
        replica.append_verified(note, held, datas[held:], None)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Path, Path, Ledger]]:
    """A and B author logs; C follows both and is where matching runs."""
    dirs = {}
    for name, origin in (("a", A), ("b", B), ("c", C)):
        dirs[name] = tmp_path / name
        init_node(dirs[name], origin)
    with Ledger.open(dirs["c"]) as c:
        yield dirs["a"], dirs["b"], c


def q(signal_type: str, value: str) -> MatchQuery:
    return MatchQuery(signal_type, value)


def run(
    ledger: Ledger,
    *queries: MatchQuery,
    pdq: LivePdqIndex | None = None,
    **kwargs: object,
) -> list[ItemResult]:
    """One result per query, by position (an empty one where nothing was found)."""
    found = match(ledger, list(enumerate(queries)), pdq=pdq, **kwargs)  # type: ignore[arg-type]
    assert [r.position for r in found] == sorted({r.position for r in found})
    assert all(r.hits or r.hidden for r in found)
    by_position = {r.position: r for r in found}
    return [by_position.get(i, ItemResult(i, query, ())) for i, query in enumerate(queries)]


def test_exact_match_across_own_log_and_replicas(nodes: tuple[Path, Path, Ledger]) -> None:
    a, b, c = nodes
    with Ledger.open(a) as ledger:
        ledger.append([AddEntry.create(signal_type="sha256", value=sha(i)) for i in range(5)])
        ledger.append(
            [AddEntry.create(signal_type="md5", value="ab" * 16, labels=["iwf:category-b"])]
        )
    with Ledger.open(b) as ledger:
        ledger.append([AddEntry.create(signal_type="sha256", value=sha(3), labels=["b:x"])])
    c.append([AddEntry.create(signal_type="sha256", value=sha(3), note="seen here too")])
    replicate(a, c)
    replicate(b, c)
    results = run(c, q("sha256", sha(3)), q("md5", "ab" * 16), q("sha256", sha(99)))
    assert [r.position for r in results] == [0, 1, 2]
    hits = results[0].hits
    assert [(h.origin, h.index) for h in hits] == [(C, 0), (A, 3), (B, 0)]
    assert all(h.distance == 0 and h.value == sha(3) for h in hits)
    assert hits[0].note == "seen here too" and hits[2].labels == ("b:x",)
    (md5,) = results[1].hits
    assert (md5.origin, md5.index, md5.signal_type, md5.labels) == (
        A,
        5,
        "md5",
        ("iwf:category-b",),
    )
    assert results[2].hits == ()
    # A type mismatch is no match: the same 64 hex digits as PDQ are not sha256.
    pdq = LivePdqIndex()
    pdq.load(c.matching)
    assert run(c, q("pdq", sha(3)), pdq=pdq, max_distance=0)[0].hits == ()


def test_retraction_removes_hit_at_once_even_from_a_stale_pdq_index(
    nodes: tuple[Path, Path, Ledger],
) -> None:
    a, _b, c = nodes
    rng = random.Random(5)
    values = [pdq_value(rng) for _ in range(4)]
    with Ledger.open(a) as ledger:
        ledger.append([pdq_add(v) for v in values])
        ledger.append([AddEntry.create(signal_type="sha1", value="cd" * 20)])
    replicate(a, c)
    pdq = LivePdqIndex()
    assert pdq.load(c.matching) == 4
    near = flip(values[2], [0, 77, 200])
    (before,) = run(c, q("pdq", near), pdq=pdq)
    assert [(h.origin, h.index, h.distance, h.value) for h in before.hits] == [(A, 2, 3, values[2])]
    assert before.hits[0].quality == 90
    with Ledger.open(a) as ledger:
        ledger.append(
            [RetractEntry(index=2, reason="false positive"), RetractEntry(index=4, reason="x")]
        )
    replicate(a, c)
    # No reload: the index still holds the row, the active filter drops it.
    assert pdq.read_step(c.matching) == 0
    after = run(c, q("pdq", near), q("sha1", "cd" * 20), pdq=pdq)
    assert after[0].hits == () and after[1].hits == ()
    rows = c.store.conn.execute("SELECT idx FROM pdq ORDER BY idx").fetchall()
    assert rows == [(0,), (1,), (3,)]


def test_pdq_results_are_ordered_by_distance_and_bounded(nodes: tuple[Path, Path, Ledger]) -> None:
    _a, _b, c = nodes
    rng = random.Random(11)
    base = pdq_value(rng)
    far = [pdq_value(rng) for _ in range(50)]
    near = {
        5: flip(base, list(range(5))),
        31: flip(base, list(range(31))),
        32: flip(base, list(range(32))),
        0: base,
    }
    c.append([pdq_add(v) for v in far] + [pdq_add(near[d]) for d in (31, 5, 32, 0)])
    pdq = LivePdqIndex()
    pdq.load(c.matching)
    (res,) = run(c, q("pdq", base), pdq=pdq)
    assert [h.distance for h in res.hits] == [0, 5, 31]  # default threshold 31 is inclusive
    assert DEFAULT_MAX_DISTANCE == 31
    (res,) = run(c, q("pdq", base), pdq=pdq, max_distance=32)
    assert [h.distance for h in res.hits] == [0, 5, 31, 32]
    (res,) = run(c, q("pdq", base), pdq=pdq, max_distance=4)
    assert [h.distance for h in res.hits] == [0]
    for bad in (-1, 65, True):
        with pytest.raises(MalformedError) as info:
            run(c, q("pdq", base), pdq=pdq, max_distance=bad)
        assert info.value.field == "max_distance"
    with pytest.raises(LedgerError, match="PDQ index"):
        run(c, q("pdq", base))


def test_pdq_index_loads_incrementally_from_every_log(nodes: tuple[Path, Path, Ledger]) -> None:
    a, _b, c = nodes
    rng = random.Random(3)
    c.append([pdq_add(pdq_value(rng)) for _ in range(7)])
    pdq = LivePdqIndex()
    assert pdq.load(c.matching, limit=3) == 7
    assert pdq.load(c.matching) == 0
    values = [pdq_value(rng) for _ in range(5)]
    with Ledger.open(a) as ledger:
        ledger.append([pdq_add(v) for v in values])
    replicate(a, c)
    c.append([pdq_add(pdq_value(rng))])
    assert pdq.load(c.matching) == 6 and len(pdq) == 13
    (res,) = run(c, q("pdq", values[4]), pdq=pdq, max_distance=0)
    assert [(h.origin, h.index) for h in res.hits] == [(A, 4)]


def test_a_shared_active_key_never_reports_the_wrong_value(
    nodes: tuple[Path, Path, Ledger],
) -> None:
    _a, _b, c = nodes
    c.append([AddEntry.create(signal_type="sha256", value=sha(1))])
    # Simulate a key collision: the query's key also points at entry 0.
    log_id = c.own_log.log_id
    c.store.conn.execute(
        "INSERT INTO active (log_id, key, idx) VALUES (?, ?, 0)",
        (log_id, active_key("sha256", sha(2))),
    )
    assert run(c, q("sha256", sha(2)))[0].hits == ()
    assert [h.index for h in run(c, q("sha256", sha(1)))[0].hits] == [0]


def test_opinions_are_shown_and_disputed_hits_hidden_by_policy(
    nodes: tuple[Path, Path, Ledger],
) -> None:
    a, b, c = nodes
    with Ledger.open(a) as ledger:
        ledger.append([AddEntry.create(signal_type="sha256", value=sha(i)) for i in range(3)])
    replicate(a, c)
    with Ledger.open(b) as ledger:
        replicate(a, ledger)
        ledger.append([make_opinion(ledger, A, 1, "confirm")])
        ledger.append([make_opinion(ledger, A, 1, "dispute", note="not csam, a meme")])
        ledger.append([make_opinion(ledger, A, 2, "false-positive")])
    replicate(b, c)
    c.append([make_opinion(c, A, 2, "confirm")])
    c.append([make_opinion(c, A, 1, "dispute")])
    res = run(c, q("sha256", sha(1)), q("sha256", sha(2)), q("sha256", sha(0)))
    (hit1,) = res[0].hits
    # By author; B's latest opinion replaces its earlier "confirm".
    assert [(o.origin, o.verdict, o.note, o.trusted) for o in hit1.opinions] == [
        (C, "dispute", None, True),
        (B, "dispute", "not csam, a meme", True),
    ]
    assert {o.origin: o.verdict for o in res[1].hits[0].opinions} == {
        B: "false-positive",
        C: "confirm",
    }
    assert res[2].hits[0].opinions == ()
    # Hide at 2 trusted disputes: entry 1 (B and C dispute) goes, entry 2 (one) stays.
    hide2 = MatchSettings(hide_disputed_by=2)
    res = run(c, q("sha256", sha(1)), q("sha256", sha(2)), settings=hide2)
    assert (res[0].hits, res[0].hidden) == ((), 1)
    assert len(res[1].hits) == 1 and res[1].hidden == 0
    # Only B trusted: one dispute each, so nothing is hidden at 2, both at 1.
    only_b = MatchSettings(hide_disputed_by=1, trusted_origins=(B,))
    res = run(c, q("sha256", sha(1)), q("sha256", sha(2)), settings=only_b)
    assert [r.hidden for r in res] == [1, 1]
    untrusted = run(c, q("sha256", sha(1)), settings=replace(only_b, trusted_origins=(A,)))
    assert len(untrusted[0].hits) == 1
    assert not any(o.trusted for o in untrusted[0].hits[0].opinions)
    # The default (node config) hides nothing.
    assert run(c, q("sha256", sha(1)))[0].hidden == 0


def test_opinion_bound_to_other_bytes_is_ignored(nodes: tuple[Path, Path, Ledger]) -> None:
    a, _b, c = nodes
    with Ledger.open(a) as ledger:
        ledger.append([AddEntry.create(signal_type="sha256", value=sha(0))])
    replicate(a, c)
    real = make_opinion(c, A, 0, "dispute")
    forged = replace(real, leaf_hash=bytes(32))
    c.append([forged])
    assert run(c, q("sha256", sha(0)))[0].hits[0].opinions == ()
    rows = c.store.conn.execute(
        "SELECT target_origin, target_idx, verdict FROM opinions"
    ).fetchall()
    assert rows == [(A, 0, "dispute")]


def test_make_opinion_needs_the_target_held(nodes: tuple[Path, Path, Ledger]) -> None:
    _a, _b, c = nodes
    c.append([AddEntry.create(signal_type="sha256", value=sha(0))])
    with pytest.raises(UnknownLogError):
        make_opinion(c, A, 0, "confirm")
    with pytest.raises(MalformedError) as info:
        make_opinion(c, C, 5, "confirm")
    assert info.value.field == "index" and "holds 1 entries" in str(info.value)
    with pytest.raises(MalformedError) as info:
        make_opinion(c, C, 0, "maybe")
    assert info.value.field == "verdict"


def test_receipts_verify_against_the_origin_key_with_cosignatures(
    nodes: tuple[Path, Path, Ledger],
) -> None:
    a, _b, c = nodes
    rng = random.Random(2)
    value = pdq_value(rng)
    with Ledger.open(a) as ledger:
        ledger.append([AddEntry.create(signal_type="sha256", value=sha(i)) for i in range(6)])
        ledger.append([pdq_add(value)])
        vkey = ledger.own_log.verifier_key
    replicate(a, c)
    witness = NoteSigner.generate("witness.example/w", SIG_COSIGNATURE_V1)
    log_id = c.store.get_log(A).log_id
    record = c.store.latest_checkpoint(log_id)
    assert record is not None
    line = cosign_checkpoint(record.note, witness, 1_700_000_000).splitlines()[-1]
    c.store.conn.execute(
        "INSERT INTO cosignatures (log_id, size, witness, key_id, line, received_at) "
        "VALUES (?, ?, ?, ?, ?, 'now')",
        (log_id, record.size, witness.name, f"{witness.verifier().key_id:08x}", line),
    )
    pdq = LivePdqIndex()
    pdq.load(c.matching)
    res = run(c, q("sha256", sha(4)), q("pdq", flip(value, [9])), pdq=pdq, receipts=True)
    from protocol.keys import NoteVerifier

    for item, index in ((res[0], 4), (res[1], 6)):
        (hit,) = item.hits
        assert hit.receipt is not None
        verified = verify_receipt(
            hit.receipt,
            NoteVerifier.from_text(vkey),
            witnesses=[witness.verifier()],
            witness_threshold=1,
        )
        assert (verified.origin, verified.index, verified.size) == (A, index, 7)
        assert isinstance(verified.entry, AddEntry) and verified.entry.value == hit.value
        doc = hit.to_json_obj(receipts=True)["receipt"]
        assert {"entry_b64", "index", "size", "hashes", "checkpoint"} <= set(doc)
    # Without receipts asked, none are built.
    assert run(c, q("sha256", sha(4)))[0].hits[0].receipt is None


def test_derived_tables_follow_add_retract_readd_in_one_replicated_batch(
    nodes: tuple[Path, Path, Ledger],
) -> None:
    a, _b, c = nodes
    rng = random.Random(8)
    v = pdq_value(rng)
    with Ledger.open(a) as ledger:
        ledger.append([pdq_add(v), RetractEntry(index=0, reason="oops")])
        ledger.append([pdq_add(v)])
        own = ledger.store.conn.execute("SELECT idx, hash FROM pdq").fetchall()
    assert own == [(2, bytes.fromhex(v))]
    replicate(a, c)  # one batch: add, retract, add again
    log_id = c.store.get_log(A).log_id
    rows = c.store.conn.execute("SELECT log_id, idx, hash FROM pdq").fetchall()
    assert rows == [(log_id, 2, bytes.fromhex(v))]
    pdq = LivePdqIndex()
    pdq.load(c.matching)
    (res,) = run(c, q("pdq", v), pdq=pdq, max_distance=0)
    assert [(h.origin, h.index) for h in res.hits] == [(A, 2)]


def test_migration_from_v3_fills_pdq(tmp_path: Path) -> None:
    path = tmp_path / "node"
    init_node(path, A)
    rng = random.Random(4)
    values = [pdq_value(rng) for _ in range(3)]
    with Ledger.open(path) as ledger:
        ledger.append([pdq_add(v) for v in values] + [RetractEntry(index=1, reason="x")])
        expected = ledger.store.conn.execute("SELECT * FROM pdq ORDER BY idx").fetchall()
    assert [r[1] for r in expected] == [0, 2]
    # Roll the v4 (and later) tables back to what v3 had, then migrate again.
    conn = sqlite3.connect(path / "ledger.db", isolation_level=None)
    for table in (
        "pdq",
        "opinions",
        "witness_state",
        "cosignatures",
        "origin_keys",
        "witness_waits",
        "peer_cards",  # v6
        "peer_certs",
    ):
        conn.execute(f"DROP TABLE {table}")
    # v7 split `active` in two levels: one table again, as v3 made it.
    conn.execute("DROP VIEW listed")
    conn.execute("INSERT INTO active_base SELECT * FROM active")
    conn.execute("DROP TABLE active")
    conn.execute("ALTER TABLE active_base RENAME TO active")
    conn.execute("PRAGMA user_version = 3")
    migrate(conn)
    assert conn.execute("SELECT * FROM pdq ORDER BY idx").fetchall() == expected
    conn.close()
