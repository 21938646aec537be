"""Replication of a real node's log into a second node, on real SQLite files.

Every rejected batch must leave the replica's database exactly as it was;
every fork must leave evidence that protocol/ alone verifies.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.errors import FrozenLogError, ReplicationError, UnknownLogError
from node.ledger import Ledger
from node.ledger.provision import init_node
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.entry import AddEntry, RetractEntry, parse_entry, parse_entry_fast
from protocol.errors import (
    MalformedError,
    OriginMismatchError,
    ProofError,
    RootMismatchError,
    UnknownKeyError,
    VerificationError,
)
from protocol.evidence import ForkEvidence, verify_fork_evidence
from protocol.hashing import EMPTY_ROOT, hash_leaves
from protocol.keys import NoteSigner, NoteVerifier
from protocol.merkle import root_from_leaf_hashes
from protocol.note import sign_note
from tests.node.conftest import snapshot

SRC = "hotline-src.example/hashmesh"
DST = "hotline-dst.example/hashmesh"
FEDERATION_TABLES = ("follows", "evidence", "peers", "peer_status")


def add(i: int, label: str = "hotline:cat-a") -> AddEntry:
    return AddEntry.create(signal_type="md5", value=f"{i:032x}", labels=[label])


def full_snapshot(db: Path) -> dict[str, object]:
    import sqlite3

    state = snapshot(db)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for table in FEDERATION_TABLES:
            state[table] = conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
    finally:
        conn.close()
    return state


class Source:
    """A real origin node: its ledger, entry bytes and notes by size."""

    def __init__(self, node_dir: Path) -> None:
        self.dir = node_dir
        self.ledger = Ledger.open(node_dir)
        self.notes: dict[int, str] = {0: self.ledger.latest_checkpoint().note}

    @property
    def vkey(self) -> str:
        return self.ledger.own_log.verifier_key

    def append(self, entries: list[AddEntry] | list[RetractEntry]) -> str:
        result = self.ledger.append(entries)
        self.notes[result.checkpoint.size] = result.checkpoint.note
        return result.checkpoint.note

    def entries(self, start: int, end: int) -> list[bytes]:
        log_id = self.ledger.own_log.log_id
        return [bytes(d) for _i, d, _h in self.ledger.store.iter_entries(log_id, start, end)]

    def proof(self, old: int, new: int) -> tuple[bytes, ...]:
        return self.ledger.prove_consistency(old, new).hashes


@pytest.fixture
def src(tmp_path: Path) -> Iterator[Source]:
    init_node(tmp_path / "src", SRC)
    source = Source(tmp_path / "src")
    yield source
    source.ledger.close()


@pytest.fixture
def dst_dir(tmp_path: Path) -> Path:
    init_node(tmp_path / "dst", DST)
    return tmp_path / "dst"


@pytest.fixture
def dst(dst_dir: Path, src: Source) -> Iterator[Ledger]:
    with Ledger.open(dst_dir) as ledger:
        ledger.follow(SRC, src.vkey)
        yield ledger


def db_of(node_dir: Path) -> Path:
    return node_dir / "ledger.db"


# -- the happy paths --------------------------------------------------------


def test_replicates_whole_log_in_one_batch(src: Source, dst: Ledger) -> None:
    note = src.append([add(i) for i in range(37)])
    replica = dst.replica(SRC)
    assert replica.record_checkpoint(note).kind == "ahead"
    state = replica.append_verified(note, 0, src.entries(0, 37), None)
    assert state.size == 37
    assert state.root_hash == src.ledger.latest_checkpoint().root_hash
    assert state.checkpoint is not None and state.checkpoint.note == note
    assert not state.frozen
    # Stored verbatim, and the replica serves proofs identical to the origin's.
    assert dst.prove_consistency(5, 37, origin=SRC).hashes == src.proof(5, 37)
    assert dst.root_at(SRC, 20) == src.ledger.root_at(None, 20)
    assert dst.status(SRC).by_signal_type == {"md5": 37}
    assert replica.record_checkpoint(note).kind == "same"


@pytest.mark.parametrize("chunk", [1, 7, 16, 25])
def test_replicates_in_chunks_with_consistency_proofs(src: Source, dst: Ledger, chunk: int) -> None:
    src.append([add(i) for i in range(50)])
    note = src.append([RetractEntry(index=3, reason="false positive"), add(1000)])
    n = 52
    replica = dst.replica(SRC)
    have = 0
    while have < n:
        end = min(have + chunk, n)
        proof = None if end == n else src.proof(end, n)
        state = replica.append_verified(note, have, src.entries(have, end), proof)
        assert state.size == end
        # The note is stored only with the last chunk.
        assert (state.checkpoint is not None and state.checkpoint.size == n) == (end == n)
        have = end
    assert dst.root_at(SRC, n) == src.ledger.latest_checkpoint().root_hash
    status = dst.status(SRC)
    assert status.retracted == 1
    assert status.by_signal_type == {"md5": 50}


def test_resumes_after_partial_sync_in_a_new_process(src: Source, dst_dir: Path) -> None:
    note = src.append([add(i) for i in range(40)])
    with Ledger.open(dst_dir) as ledger:
        ledger.follow(SRC, src.vkey)
        ledger.replica(SRC).append_verified(note, 0, src.entries(0, 16), src.proof(16, 40))
    with Ledger.open(dst_dir) as ledger:
        replica = ledger.replica(SRC)
        state = replica.state()
        assert state.size == 16 and state.checkpoint is None
        # A newer checkpoint arrived meanwhile: resume against it.
        note2 = src.append([add(i) for i in range(40, 45)])
        assert replica.record_checkpoint(note2).kind == "ahead"
        state = replica.append_verified(note2, 16, src.entries(16, 45), None)
        assert state.size == 45 and state.checkpoint is not None
        assert state.checkpoint.note == note2
        assert replica.record_checkpoint(note).kind == "behind"


def test_peer_behind_and_same(src: Source, dst: Ledger) -> None:
    old = src.append([add(i) for i in range(10)])
    new = src.append([add(i) for i in range(10, 13)])
    replica = dst.replica(SRC)
    replica.append_verified(new, 0, src.entries(0, 13), None)
    before = full_snapshot(db_of(dst.config.node_dir))
    assert replica.record_checkpoint(old).kind == "behind"
    assert replica.record_checkpoint(src.notes[0]).kind == "behind"
    assert replica.record_checkpoint(new).kind == "same"
    assert full_snapshot(db_of(dst.config.node_dir)) == before


def test_same_stores_note_missing_after_catch_up(src: Source, dst: Ledger) -> None:
    src.append([add(i) for i in range(8)])
    note = src.append([add(8)])
    replica = dst.replica(SRC)
    # Commit all entries against a larger checkpoint, then learn size 9's note.
    big = src.append([add(i) for i in range(9, 12)])
    replica.append_verified(big, 0, src.entries(0, 9), src.proof(9, 12))
    assert replica.state().checkpoint is None
    assert replica.record_checkpoint(note).kind == "same"
    state = replica.state()
    assert state.checkpoint is not None and state.checkpoint.note == note


def test_replicas_listing_and_unknown_origin(src: Source, dst: Ledger) -> None:
    assert [r.origin for r in dst.replicas()] == [SRC]
    with pytest.raises(UnknownLogError, match="not followed"):
        dst.replica("nobody.example/log")
    state = dst.replica(SRC).state()
    assert (state.size, state.root_hash, state.checkpoint) == (0, EMPTY_ROOT, None)


def test_empty_origin_log_is_replicated(src: Source, dst: Ledger) -> None:
    replica = dst.replica(SRC)
    state = replica.append_verified(src.notes[0], 0, [], None)
    assert state.checkpoint is not None and state.checkpoint.size == 0
    assert replica.record_checkpoint(src.notes[0]).kind == "same"


def test_replica_keeps_duplicates_verbatim(tmp_path: Path, dst_dir: Path) -> None:
    # An origin that (unlike ours) lists one hash twice: we store both, the
    # first index wins in the active index, and retracting the second keeps it.
    signer_text, verifier_text = _keypair(tmp_path, SRC)
    signer = NoteSigner.from_text(signer_text)
    datas = [add(1).to_bytes(), add(1).to_bytes(), RetractEntry(index=1, reason="dup").to_bytes()]
    note = _sign(signer, datas)
    with Ledger.open(dst_dir) as ledger:
        ledger.follow(SRC, verifier_text)
        state = ledger.replica(SRC).append_verified(note, 0, datas, None)
        assert state.size == 3
        assert ledger.store.find_active(ledger.store.get_log(SRC).log_id, "md5", [f"{1:032x}"]) == {
            f"{1:032x}": 0
        }


def test_a_chunk_of_adds_is_checked_in_bulk_and_indexed_as_entry_by_entry(
    tmp_path: Path, dst_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks of one family of adds take the bulk check (no entry parsed one
    # by one), duplicates included: within a chunk and across chunks the
    # first index stays listed, as for a chunk parsed entry by entry.
    import node.ledger.replica as replica_module

    def one_by_one(*_args: object) -> None:
        raise AssertionError("a chunk of one family of adds was parsed entry by entry")

    monkeypatch.setattr(replica_module, "parse_entries", one_by_one)
    signer = NoteSigner.from_text(_keypair(tmp_path, SRC)[0])
    values = [1, 2, 1, 3, 2, 4, 1, 5]
    datas = [add(v).salted(f"{i:032x}").to_bytes() for i, v in enumerate(values)]
    note = _sign(signer, datas)
    with Ledger.open(dst_dir) as ledger:
        ledger.follow(SRC, signer.verifier().to_text())
        replica = ledger.replica(SRC)
        replica.append_verified(_sign(signer, datas[:4]), 0, datas[:4], None)
        state = replica.append_verified(note, 4, datas[4:], None)
        assert state.size == len(datas) and state.checkpoint is not None
        log_id = ledger.store.get_log(SRC).log_id
        wanted = [f"{v:032x}" for v in (1, 2, 3, 4, 5)]
        assert ledger.store.find_active(log_id, "md5", wanted) == dict(
            zip(wanted, [0, 1, 3, 5, 7], strict=True)
        )
        assert ledger.status(SRC).by_signal_type == {"md5": 5}


# -- rejected batches: nothing written ---------------------------------------


def _keypair(_tmp_path: Path, origin: str) -> tuple[str, str]:
    signer = NoteSigner.generate(origin)
    return signer.to_text(), signer.verifier().to_text()


def _sign(signer: NoteSigner, datas: list[bytes]) -> str:
    root = root_from_leaf_hashes(hash_leaves(datas))
    return sign_checkpoint(Checkpoint(origin=signer.name, size=len(datas), root_hash=root), signer)


def _rejects(dst: Ledger, exc: type[Exception], match: str | None, fn: object) -> None:
    db = db_of(dst.config.node_dir)
    before = full_snapshot(db)
    with pytest.raises(exc, match=match):
        fn()  # type: ignore[operator]
    assert full_snapshot(db) == before


@pytest.fixture(params=["mixed", "adds"])
def synced(request: pytest.FixtureRequest, src: Source, dst: Ledger) -> tuple[Source, Ledger, str]:
    """A replica holding the first 10 entries; the origin is at 20.

    Entries 10-19 end with a retraction (``mixed``: parsed entry by entry) or
    are adds of one family (``adds``: the replica checks them in bulk,
    ``protocol.entry.parse_add_run``): every refusal below holds for both.
    """
    first = src.append([add(i) for i in range(10)])
    dst.replica(SRC).append_verified(first, 0, src.entries(0, 10), None)
    last = RetractEntry(index=2, reason="x") if request.param == "mixed" else add(19)
    note = src.append([add(i) for i in range(10, 19)] + [last])
    return src, dst, note


def test_rejects_wrong_start(synced: tuple[Source, Ledger, str]) -> None:
    src, dst, note = synced
    r = dst.replica(SRC)
    _rejects(
        dst,
        ReplicationError,
        "starts at 9",
        lambda: r.append_verified(note, 9, src.entries(9, 20), None),
    )
    _rejects(
        dst,
        ReplicationError,
        "starts at 11",
        lambda: r.append_verified(note, 11, src.entries(11, 20), None),
    )


def test_rejects_entries_that_do_not_hash_to_the_root(synced: tuple[Source, Ledger, str]) -> None:
    src, dst, note = synced
    r = dst.replica(SRC)
    entries = src.entries(10, 20)
    swapped = [entries[1], entries[0], *entries[2:]]
    _rejects(dst, RootMismatchError, None, lambda: r.append_verified(note, 10, swapped, None))
    # Short of the checkpoint without a proof, and past it.
    _rejects(
        dst,
        ReplicationError,
        "needs a consistency proof",
        lambda: r.append_verified(note, 10, entries[:5], None),
    )
    _rejects(
        dst,
        ReplicationError,
        "past the checkpoint",
        lambda: r.append_verified(note, 10, [*entries, add(99).to_bytes()], None),
    )


def test_rejects_one_flipped_byte(synced: tuple[Source, Ledger, str]) -> None:
    src, dst, note = synced
    r = dst.replica(SRC)
    entries = src.entries(10, 20)
    data = bytearray(entries[4])
    pos = data.index(b'"value":"') + 12
    data[pos] = ord("f") if data[pos] != ord("f") else ord("e")
    bad = [*entries[:4], bytes(data), *entries[5:]]
    parse_entry(bytes(data))  # still a valid entry: only the root can catch it
    _rejects(dst, RootMismatchError, None, lambda: r.append_verified(note, 10, bad, None))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d.replace(b'"kind":"add",', b'"kind": "add",'),  # whitespace
        lambda d: d.replace(b'"labels"', b'"zlabels"'),  # unknown field
        lambda d: d[:-1] + b",}",  # not JSON
        lambda d: d.replace(b'"v":2', b'"v":02'),  # non-canonical number
        lambda d: re.sub(rb'"salt":"[0-9a-f]{32}",', b"", d),  # version 2 without its salt
        lambda d: d.replace(b'"salt":"', b'"salt":"A', 1),  # not 32 lowercase hex
    ],
)
def test_rejects_non_canonical_entry(synced: tuple[Source, Ledger, str], mangle: object) -> None:
    src, dst, note = synced
    r = dst.replica(SRC)
    entries = src.entries(10, 20)
    assert b'"v":2' in entries[3] and b'"salt":"' in entries[3]  # the origin writes version 2
    bad = [*entries[:3], mangle(entries[3]), *entries[4:]]  # type: ignore[operator]
    assert bad[3] != entries[3]
    _rejects(dst, MalformedError, r"entries\[13\]", lambda: r.append_verified(note, 10, bad, None))


def test_rejects_retraction_of_missing_or_retracted_entry(tmp_path: Path, dst_dir: Path) -> None:
    signer_text, verifier_text = _keypair(tmp_path, SRC)
    signer = NoteSigner.from_text(signer_text)
    with Ledger.open(dst_dir) as dst:
        dst.follow(SRC, verifier_text)
        r = dst.replica(SRC)
        base = [add(1).to_bytes(), add(2).to_bytes()]
        r.append_verified(_sign(signer, base), 0, base, None)
        cases = [
            ([RetractEntry(index=7, reason="gone").to_bytes()], "does not exist"),
            ([RetractEntry(index=2, reason="self").to_bytes()], "does not exist"),
            ([RetractEntry(index=0, reason="a").to_bytes()] * 2, "already retracted"),
        ]
        for tail, match in cases:
            datas = base + tail
            _rejects(
                dst,
                ReplicationError,
                match,
                lambda d=datas, t=tail: r.append_verified(_sign(signer, d), 2, t, None),
            )
        retract = [RetractEntry(index=0, reason="a").to_bytes()]
        r.append_verified(_sign(signer, base + retract), 2, retract, None)
        again = base + retract + retract
        _rejects(
            dst,
            ReplicationError,
            "already retracted",
            lambda: r.append_verified(_sign(signer, again), 3, retract, None),
        )
        not_add = base + retract + [RetractEntry(index=2, reason="b").to_bytes()]
        _rejects(
            dst,
            ReplicationError,
            "not an add",
            lambda: r.append_verified(_sign(signer, not_add), 3, not_add[3:], None),
        )


def test_rejects_bad_proof(synced: tuple[Source, Ledger, str]) -> None:
    src, dst, note = synced
    r = dst.replica(SRC)
    entries = src.entries(10, 15)
    proof = list(src.proof(15, 20))
    tampered = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
    _rejects(dst, RootMismatchError, None, lambda: r.append_verified(note, 10, entries, tampered))
    _rejects(
        dst,
        ProofError,
        "wrong proof size",
        lambda: r.append_verified(note, 10, entries, proof[:-1]),
    )
    _rejects(
        dst,
        VerificationError,
        None,
        lambda: r.append_verified(note, 10, entries, src.proof(14, 20)),
    )


def test_rejects_checkpoint_of_wrong_key_or_origin(
    synced: tuple[Source, Ledger, str], tmp_path: Path
) -> None:
    src, dst, _note = synced
    r = dst.replica(SRC)
    entries = src.entries(10, 20)
    root = src.ledger.latest_checkpoint().root_hash
    impostor = NoteSigner.from_text(_keypair(tmp_path, SRC)[0])
    forged = sign_checkpoint(Checkpoint(origin=SRC, size=20, root_hash=root), impostor)
    _rejects(dst, UnknownKeyError, None, lambda: r.append_verified(forged, 10, entries, None))
    _rejects(dst, UnknownKeyError, None, lambda: r.record_checkpoint(forged))
    other = NoteSigner.from_text(_keypair(tmp_path, "other.example/log")[0])
    foreign = sign_checkpoint(
        Checkpoint(origin="other.example/log", size=20, root_hash=root), other
    )
    _rejects(dst, VerificationError, None, lambda: r.append_verified(foreign, 10, entries, None))
    # A note whose body names another origin under the right key name is refused too.
    own_key = NoteSigner.from_text((src.dir / "signing.key").read_text().strip())
    body = Checkpoint(origin=SRC, size=20, root_hash=root).to_text().replace(SRC, "x.example/y")
    _rejects(
        dst,
        OriginMismatchError,
        None,
        lambda: r.append_verified(sign_note(body, [own_key]), 10, entries, None),
    )


def test_first_batch_failure_creates_no_log_row(src: Source, dst: Ledger) -> None:
    note = src.append([add(i) for i in range(4)])
    r = dst.replica(SRC)
    bad = src.entries(0, 4)[::-1]
    _rejects(dst, RootMismatchError, None, lambda: r.append_verified(note, 0, bad, None))
    assert [log.origin for log in dst.store.list_logs()] == [DST]


# -- forks ---------------------------------------------------------------------


def fork_of(src: Source, tmp_path: Path, name: str) -> Source:
    """A copy of the origin (same key) that will diverge from here on."""
    src.ledger.close()
    shutil.copytree(src.dir, tmp_path / name)
    src.ledger = Ledger.open(src.dir)
    twin = Source(tmp_path / name)
    twin.notes = dict(src.notes)
    return twin


def _check_frozen(dst: Ledger, src: Source, kind_note: str) -> ForkEvidence:
    replica = dst.replica(SRC)
    assert replica.state().frozen
    assert dst.peers.frozen_origins() == {SRC}
    (record,) = dst.peers.list_evidence()
    evidence = ForkEvidence.from_json(record.evidence_json)
    verify_fork_evidence(evidence, NoteVerifier.from_text(src.vkey))
    assert replica.record_checkpoint(kind_note).kind == "frozen"
    with pytest.raises(FrozenLogError):
        replica.append_verified(kind_note, replica.state().size, [], None)
    return evidence


def test_fork_at_equal_size(src: Source, dst: Ledger, tmp_path: Path) -> None:
    src.append([add(i) for i in range(6)])
    twin = fork_of(src, tmp_path, "twin")
    ours = src.append([add(100), add(101)])
    theirs = twin.append([add(200), add(201)])
    replica = dst.replica(SRC)
    replica.append_verified(ours, 0, src.entries(0, 8), None)
    verdict = replica.record_checkpoint(theirs, source="peer-x")
    assert verdict.kind == "fork" and verdict.evidence is not None
    assert verdict.evidence.proof == ()
    evidence = _check_frozen(dst, src, ours)
    assert evidence == verdict.evidence
    assert dst.peers.list_evidence()[0].source == "peer-x"
    twin.ledger.close()


@pytest.mark.parametrize(("ours_size", "theirs_size"), [(16, 8), (20, 11), (13, 1)])
def test_fork_at_smaller_size(
    src: Source, dst: Ledger, tmp_path: Path, ours_size: int, theirs_size: int
) -> None:
    src.append([add(i) for i in range(theirs_size - 1)])
    twin = fork_of(src, tmp_path, "twin")
    theirs = twin.append([add(5000)])
    ours = src.append([add(i) for i in range(1000, 1000 + ours_size - theirs_size + 1)])
    replica = dst.replica(SRC)
    replica.append_verified(ours, 0, src.entries(0, ours_size), None)
    verdict = replica.record_checkpoint(theirs)
    assert verdict.kind == "fork" and verdict.evidence is not None
    assert len(verdict.evidence.proof) > 0
    _check_frozen(dst, src, ours)
    twin.ledger.close()


def test_conflict_beyond_signed_checkpoint_is_refused_not_frozen(
    src: Source, dst: Ledger, tmp_path: Path
) -> None:
    src.append([add(i) for i in range(4)])
    twin = fork_of(src, tmp_path, "twin")
    big = src.append([add(i) for i in range(10, 20)])
    theirs = twin.append([add(99)])
    replica = dst.replica(SRC)
    replica.append_verified(big, 0, src.entries(0, 8), src.proof(8, 14))
    _rejects(
        dst,
        ReplicationError,
        "beyond our latest signed checkpoint",
        lambda: replica.record_checkpoint(theirs),
    )
    assert not replica.state().frozen
    twin.ledger.close()


# -- the fast entry parser ----------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        add(1).to_bytes(),
        AddEntry.create(signal_type="md5", value="a" * 32, labels=["a:b", "c:d/e"]).to_bytes(),
        AddEntry.create(signal_type="md5", value="a" * 32, labels=[]).to_bytes(),
        AddEntry.create(signal_type="md5", value="a" * 32, labels=["x:y"], note="n").to_bytes(),
        RetractEntry(index=4, reason="r").to_bytes(),
        b'{"kind":"add","labels":["b:b","a:a"],"signal":{"type":"md5","value":"'
        + b"a" * 32
        + b'"},"v":1}',
        b'{"kind":"add","labels":[],"signal":{"type":"md5","value":"' + b"A" * 32 + b'"},"v":1}',
        b'{"kind":"add","labels":[],"signal":{"type":"nope","value":"aa"},"v":1}',
        b'{"kind":"add","labels":[""],"signal":{"type":"md5","value":"' + b"a" * 32 + b'"},"v":1}',
        b'{"kind":"add","labels":["a:a","a:a"],"signal":{"type":"md5","value":"'
        + b"a" * 32
        + b'"},"v":1}',
        AddEntry.create(signal_type="pdq", value="b" * 64, quality=90).to_bytes(),
        b'{"kind":"add","labels":[],"signal":{"quality":101,"type":"pdq","value":"'
        + b"b" * 64
        + b'"},"v":1}',
        b'{"kind":"add","labels":[],"signal":{"quality":5,"type":"md5","value":"'
        + b"a" * 32
        + b'"},"v":1}',
        b'{"kind":"add","labels":[],"signal":{"type":"pdq","value":"' + b"b" * 64 + b'"},"v":1}',
        # A comma inside a label must not split it; a quality with a leading zero.
        b'{"kind":"add","labels":["a,b:c"],"signal":{"type":"md5","value":"'
        + b"a" * 32
        + b'"},"v":1}',
        b'{"kind":"add","labels":["a:b","c:d"],"signal":{"type":"md5","value":"'
        + b"a" * 32
        + b'"},"v":1}',
        b'{"kind":"add","labels":[],"signal":{"quality":090,"type":"pdq","value":"'
        + b"b" * 64
        + b'"},"v":1}',
        # Version 2: salted, a salt missing, misspelt, or on a version 1 entry.
        add(1).salted("c" * 32).to_bytes(),
        AddEntry.create(signal_type="pdq", value="b" * 64, quality=90, salt="d" * 32).to_bytes(),
        b'{"kind":"add","labels":[],"signal":{"type":"md5","value":"' + b"a" * 32 + b'"},"v":2}',
        b'{"kind":"add","labels":[],"salt":"'
        + b"C" * 32
        + b'","signal":{"type":"md5","value":"'
        + b"a" * 32
        + b'"},"v":2}',
        b'{"kind":"add","labels":[],"salt":"'
        + b"c" * 31
        + b'","signal":{"type":"md5","value":"'
        + b"a" * 32
        + b'"},"v":2}',
        b'{"kind":"add","labels":[],"salt":"'
        + b"c" * 32
        + b'","signal":{"type":"md5","value":"'
        + b"a" * 32
        + b'"},"v":1}',
    ],
)
def test_fast_parser_agrees_with_parse_entry(data: bytes) -> None:
    def outcome(parse: object) -> object:
        try:
            return parse(data)  # type: ignore[operator]
        except MalformedError as e:
            return ("error", str(e))

    assert outcome(parse_entry_fast) == outcome(parse_entry)


def test_judging_a_fork_writes_nothing_recording_it_freezes(
    src: Source, dst: Ledger, tmp_path: Path
) -> None:
    src.append([add(i) for i in range(6)])
    twin = fork_of(src, tmp_path, "twin")
    ours = src.append([add(100), add(101)])
    theirs = twin.append([add(200), add(201)])
    replica = dst.replica(SRC)
    replica.append_verified(ours, 0, src.entries(0, 8), None)
    db = db_of(dst.config.node_dir)
    before = full_snapshot(db)
    judged = replica.judge_checkpoint(theirs)
    assert judged.relation == "fork" and not judged and judged.evidence is not None
    assert replica.judge_checkpoint(ours).relation == "same"
    assert full_snapshot(db) == before  # the judgement only reads
    verdict = replica.record_checkpoint(theirs)
    assert verdict.kind == "fork" and verdict.evidence == judged.evidence
    assert full_snapshot(db) != before and replica.state().frozen
    twin.ledger.close()
