"""The witness on real SQLite files: check-and-save, refusals, restarts, policy."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from node.config import WitnessRequirement
from node.errors import UnknownLogError, WitnessConflictError, WitnessProofError
from node.ledger import Ledger
from node.ledger.rotation import load_key_chain
from node.ledger.witness import (
    Witness,
    load_witness_signer,
    open_with_quorum,
    save_cosignatures,
    served_note,
    witness_name,
)
from node.storage.ledger_store import LedgerStore
from node.storage.witness_store import WitnessStore
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.encoding import decode_b64
from protocol.errors import InvalidSignatureError, MalformedError, QuorumError, UnknownKeyError
from protocol.keys import NoteSigner
from protocol.note import parse_note
from protocol.witness import parse_cosignature_lines
from tests.waiting import PATIENCE
from tests.witness.conftest import ORIGIN, WITNESS, append, fork, request


@pytest.fixture
def witness(witness_dir: Path) -> Iterator[Witness]:
    with Ledger.open(witness_dir) as ledger:
        yield ledger.witness()


def state(witness_dir: Path) -> tuple[int, bytes] | None:
    with Ledger.open(witness_dir, read_only=True) as ledger:
        record = WitnessStore(ledger.store.conn).get_state(ORIGIN)
    return None if record is None else (record.size, record.root_hash)


def test_cosignature_verifies_with_pyca_cryptography(
    origin_dir: Path, witness_dir: Path, witness: Witness
) -> None:
    append(origin_dir, 5)
    req = request(origin_dir, 0)
    before = int(time.time())
    cosigned = witness.add_checkpoint(req.old_size, req.proof, req.note)
    assert (cosigned.origin, cosigned.size) == (ORIGIN, 5)
    assert cosigned.signature.name == witness_name(WITNESS)

    # Check the C2SP tlog-cosignature/v1 bytes independently of protocol/:
    # key ID, timestamp prefix, and Ed25519 over the spec's message.
    line = cosigned.line
    assert line.startswith("\u2014 hotline-w.example/hashmesh/witness ") and line.endswith("\n")
    payload = decode_b64(line.rsplit(" ", 1)[1][:-1], field="sig")
    vkey = load_witness_signer(Ledger.open(witness_dir, read_only=True).config).verifier()
    raw_key = decode_b64(vkey.to_text().split("+", 2)[2], field="vkey")
    assert raw_key[0] == 0x04
    import hashlib

    key_id = hashlib.sha256(vkey.name.encode() + b"\n" + raw_key).digest()[:4]
    assert payload[:4] == key_id
    timestamp = int.from_bytes(payload[4:12], "big")
    assert before <= timestamp <= int(time.time()) + 1
    body = parse_note(req.note).text.encode()
    message = b"cosignature/v1\ntime %d\n" % timestamp + body
    public = Ed25519PublicKey.from_public_bytes(raw_key[1:])
    public.verify(payload[12:], message)
    with pytest.raises(InvalidSignature):
        public.verify(payload[12:], message.replace(b"time", b"tine"))

    assert state(witness_dir) == (5, parse_checkpoint(req.note).root_hash)


def parse_checkpoint(note: str) -> Checkpoint:
    return Checkpoint.from_text(parse_note(note).text)


def test_extends_only_with_a_valid_consistency_proof(
    origin_dir: Path, witness_dir: Path, witness: Witness
) -> None:
    append(origin_dir, 3)
    first = request(origin_dir, 0)
    witness.add_checkpoint(first.old_size, first.proof, first.note)
    append(origin_dir, 4)
    nxt = request(origin_dir, 3)
    assert nxt.proof
    bad = (nxt.proof[0][:-1] + bytes([nxt.proof[0][-1] ^ 1]), *nxt.proof[1:])
    with pytest.raises(WitnessProofError, match="from size 3 to 7"):
        witness.add_checkpoint(3, bad, nxt.note)
    with pytest.raises(WitnessProofError):
        witness.add_checkpoint(3, nxt.proof[:-1], nxt.note)
    assert state(witness_dir) == (3, parse_checkpoint(first.note).root_hash)
    assert witness.add_checkpoint(3, nxt.proof, nxt.note).size == 7
    assert state(witness_dir) == (7, parse_checkpoint(nxt.note).root_hash)


def test_conflict_carries_the_stored_size(
    origin_dir: Path, witness_dir: Path, witness: Witness
) -> None:
    append(origin_dir, 3)
    r3 = request(origin_dir, 0)
    witness.add_checkpoint(0, r3.proof, r3.note)
    append(origin_dir, 2)
    for old in (0, 1, 4):
        r = request(origin_dir, old)
        with pytest.raises(WitnessConflictError) as info:
            witness.add_checkpoint(old, r.proof, r.note)
        assert (info.value.size, info.value.origin) == (3, ORIGIN)
    # Retrying from the size the conflict named succeeds.
    r = request(origin_dir, 3)
    assert witness.add_checkpoint(3, r.proof, r.note).size == 5


def test_refuses_a_checkpoint_of_another_history(
    tmp_path: Path, origin_dir: Path, witness_dir: Path, witness: Witness
) -> None:
    """The origin's operator copies the node (same key) and grows two histories."""
    append(origin_dir, 3)
    other = fork(origin_dir, tmp_path / "a2")
    append(origin_dir, 3, tag="history-1")
    append(other, 3, tag="history-2")
    witness.add_checkpoint(0, request(origin_dir, 0, 3).proof, request(origin_dir, 0, 3).note)
    r1 = request(origin_dir, 3)
    witness.add_checkpoint(3, r1.proof, r1.note)
    # Same size as the cosigned one, another root: a conflict (409), never cosigned.
    same_size = request(other, 6)
    assert parse_checkpoint(same_size.note).root_hash != parse_checkpoint(r1.note).root_hash
    with pytest.raises(WitnessConflictError, match="another root") as info:
        witness.add_checkpoint(6, same_size.proof, same_size.note)
    assert info.value.size == 6
    # Larger, from the other history: its proof from 6 cannot reach from our root (422).
    append(other, 2, tag="history-2b")
    larger = request(other, 6)
    with pytest.raises(WitnessProofError):
        witness.add_checkpoint(6, larger.proof, larger.note)
    # The cosigned checkpoint again is fine (a fresh cosignature, same state).
    assert witness.add_checkpoint(6, (), r1.note).size == 6
    assert state(witness_dir) == (6, parse_checkpoint(r1.note).root_hash)


def test_refusals_before_the_state(origin_dir: Path, witness_dir: Path, witness: Witness) -> None:
    append(origin_dir, 2)
    r = request(origin_dir, 0)
    stranger = NoteSigner.generate(ORIGIN)
    forged = sign_checkpoint(parse_checkpoint(r.note), stranger)
    with pytest.raises(UnknownKeyError):
        witness.add_checkpoint(0, (), forged)
    tampered = r.note.replace("\n2\n", "\n3\n", 1)
    with pytest.raises(InvalidSignatureError):
        witness.add_checkpoint(0, (), tampered)
    other = NoteSigner.generate("hotline-x.example/hashmesh")
    unknown = sign_checkpoint(Checkpoint(origin=other.name, size=1, root_hash=b"\x01" * 32), other)
    with pytest.raises(UnknownLogError, match="hotline-x"):
        witness.add_checkpoint(0, (), unknown)
    with pytest.raises(MalformedError, match="larger than"):
        witness.add_checkpoint(3, (), r.note)
    assert state(witness_dir) is None


def test_state_survives_a_restart(origin_dir: Path, witness_dir: Path) -> None:
    append(origin_dir, 4)
    r = request(origin_dir, 0)
    with Ledger.open(witness_dir) as ledger:
        ledger.witness().add_checkpoint(0, r.proof, r.note)
    with Ledger.open(witness_dir) as ledger:  # a new process, in effect
        again = request(origin_dir, 0)
        with pytest.raises(WitnessConflictError) as info:
            ledger.witness().add_checkpoint(0, again.proof, again.note)
        assert info.value.size == 4
        # Same key too: the file made on first use is reused.
        assert load_witness_signer(ledger.config, create=False).verifier().name.endswith("/witness")


def test_check_and_save_is_one_transaction(
    tmp_path: Path, origin_dir: Path, witness_dir: Path
) -> None:
    """Two witnesses on two connections, conflicting checkpoints: exactly one is cosigned.

    The first request is held inside its transaction after every check (by
    its clock); the second must wait for the write lock and then see the new
    state. Were check and save separate, both would pass against size 3.
    """
    append(origin_dir, 3)
    base = request(origin_dir, 0)
    with Ledger.open(witness_dir) as ledger:
        ledger.witness().add_checkpoint(0, base.proof, base.note)
    other = fork(origin_dir, tmp_path / "a2")
    append(origin_dir, 2, tag="one")
    append(other, 4, tag="two")
    r1, r2 = request(origin_dir, 3), request(other, 3)

    inside = threading.Event()
    release = threading.Event()

    def held_clock() -> float:
        inside.set()
        assert release.wait(PATIENCE)
        return time.time()

    results: dict[str, object] = {}
    began = threading.Event()

    def run(name: str, req: object, clock: object) -> None:
        store = LedgerStore.open(witness_dir / "ledger.db")
        if name == "two":
            # SQLite reports a statement as it starts running, so this fires as
            # t2 asks for the write lock t1 holds (and before it can get it).
            store.conn.set_trace_callback(
                lambda sql: began.set() if sql.startswith("BEGIN IMMEDIATE") else None
            )
        try:
            with Ledger.open(witness_dir) as ledger:
                signer = load_witness_signer(ledger.config)
            w = Witness(store, signer, clock=clock)  # type: ignore[arg-type]
            results[name] = w.add_checkpoint(req.old_size, req.proof, req.note)  # type: ignore[attr-defined]
        except Exception as e:  # noqa: BLE001 - the test inspects it
            results[name] = e
        finally:
            store.close()

    t1 = threading.Thread(target=run, args=("one", r1, held_clock))
    t1.start()
    assert inside.wait(PATIENCE)
    t2 = threading.Thread(target=run, args=("two", r2, time.time))
    t2.start()
    assert began.wait(PATIENCE)  # t2 is now blocked on BEGIN IMMEDIATE
    assert "two" not in results
    release.set()
    t1.join(PATIENCE)
    t2.join(PATIENCE)
    assert not isinstance(results["one"], Exception), results["one"]
    assert isinstance(results["two"], WitnessConflictError)
    assert results["two"].size == 5
    assert state(witness_dir) == (5, parse_checkpoint(r1.note).root_hash)


def test_state_never_moves_back_even_outside_the_witness(witness_dir: Path) -> None:
    from node.errors import StorageError

    with Ledger.open(witness_dir) as ledger:
        store = WitnessStore(ledger.store.conn)
        with ledger.store.transaction():
            store.save_state(ORIGIN, 5, b"\x01" * 32, "n")
        with pytest.raises(StorageError), ledger.store.transaction():
            store.save_state(ORIGIN, 4, b"\x01" * 32, "n")
        with pytest.raises(StorageError), ledger.store.transaction():
            store.save_state(ORIGIN, 5, b"\x02" * 32, "n")
        assert store.get_state(ORIGIN).size == 5  # type: ignore[union-attr]


def test_cosignatures_table_is_append_only(origin_dir: Path) -> None:
    with Ledger.open(origin_dir) as ledger:
        own = ledger.own_log
        WitnessStore(ledger.store.conn).add_cosignatures(own.log_id, 0, [("w", 1, "— w AAAA")])
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            ledger.store.conn.execute("DELETE FROM cosignatures")


def test_quorum_policy_names_origin_signers_and_threshold(
    origin_dir: Path, witness_dir: Path, witness: Witness, tmp_path: Path
) -> None:
    append(origin_dir, 2)
    r = request(origin_dir, 0)
    line = witness.add_checkpoint(0, r.proof, r.note).line
    w_key = witness.signer.verifier()
    absent = NoteSigner.generate("witness-z.example/w", 0x04).verifier()
    with Ledger.open(witness_dir, read_only=True) as ledger:
        chain = load_key_chain(ledger.store, ORIGIN)
    one_of_two = WitnessRequirement(
        origin=ORIGIN, keys=(w_key.to_text(), absent.to_text()), threshold=1
    )
    both = WitnessRequirement(origin=ORIGIN, keys=one_of_two.keys, threshold=2)

    with pytest.raises(QuorumError) as info:
        open_with_quorum(chain, r.note, one_of_two)
    message = str(info.value)
    assert ORIGIN in message and "0 of the 1 required" in message and "signed: none" in message
    assert w_key.name in message and absent.name in message

    cosigned = r.note + line
    verified = open_with_quorum(chain, cosigned, one_of_two)
    assert w_key.name in verified.cosignatures
    with pytest.raises(QuorumError, match=f"1 of the 2 required.*signed: {w_key.name}"):
        open_with_quorum(chain, cosigned, both)
    # A line under the witness's name and key ID that does not verify counts for nothing.
    bad = line[:-6] + ("A" if line[-6] != "A" else "B") + line[-5:]
    with pytest.raises(QuorumError):
        open_with_quorum(chain, r.note + bad, one_of_two)
    assert open_with_quorum(chain, r.note, None).checkpoint.size == 2


def test_served_note_appends_held_cosignatures_once(origin_dir: Path, witness: Witness) -> None:
    append(origin_dir, 2)
    r = request(origin_dir, 0)
    cosigned = witness.add_checkpoint(0, r.proof, r.note)
    with Ledger.open(origin_dir) as ledger:
        own = ledger.own_log
        record = ledger.latest_checkpoint()
        assert served_note(ledger.store, own.log_id, record) == record.note
        cp = parse_checkpoint(record.note)
        keys = [witness.signer.verifier()]
        with ledger.store.transaction():
            assert (
                save_cosignatures(ledger.store, own.log_id, cp, record.note + cosigned.line, keys)
                == 1
            )
            assert (
                save_cosignatures(ledger.store, own.log_id, cp, record.note + cosigned.line, keys)
                == 0
            )
            # Unknown keys are not kept.
            assert (
                save_cosignatures(ledger.store, own.log_id, cp, record.note + cosigned.line, [])
                == 0
            )
        served = served_note(ledger.store, own.log_id, record)
    assert served == record.note + cosigned.line
    assert parse_cosignature_lines(served.split("\n\n", 1)[1].split("\n", 1)[1]) == (
        cosigned.signature,
    )


def test_replica_keeps_cosignatures_that_arrive_later(
    tmp_path: Path, origin_dir: Path, witness: Witness
) -> None:
    from node.config import append_witness_setting
    from node.ledger.provision import init_node

    append(origin_dir, 3)
    r = request(origin_dir, 0)
    line = witness.add_checkpoint(0, r.proof, r.note).line
    follower = tmp_path / "f"
    init_node(follower, "hotline-f.example/hashmesh")
    with Ledger.open(origin_dir, read_only=True) as origin:
        vkey = origin.own_log.verifier_key
        entries = [bytes(d) for _i, d, _h in origin.store.iter_entries(origin.own_log.log_id)]
    with Ledger.open(follower) as ledger:
        ledger.follow(ORIGIN, vkey)
    key = witness.signer.verifier().to_text()
    # Known as a witness of this node's own log, not required for ORIGIN: relayed, not enforced.
    from node.config import WitnessAsk

    append_witness_setting(follower, WitnessAsk(peer="hotline-w.example/hashmesh", key=key))
    with Ledger.open(follower) as ledger:
        replica = ledger.replica(ORIGIN)
        replica.append_verified(r.note, 0, entries, None)
        log = ledger.store.get_log(ORIGIN)
        record = ledger.latest_checkpoint(ORIGIN)
        assert served_note(ledger.store, log.log_id, record) == r.note
        assert replica.record_checkpoint(r.note + line).kind == "same"
        assert served_note(ledger.store, log.log_id, record) == r.note + line
        # A line by a key the follower does not know is not kept.
        stranger = NoteSigner.generate("stranger.example/w", 0x04)
        from protocol.checkpoint import cosign_checkpoint

        other = cosign_checkpoint(r.note, stranger, 1)
        assert replica.record_checkpoint(other).kind == "same"
        assert served_note(ledger.store, log.log_id, record) == r.note + line


def test_witness_serves_its_own_cosignature_on_the_relayed_log(
    origin_dir: Path, witness_dir: Path
) -> None:
    """Followers downstream of a witness get its cosignature with the origin's note."""

    append(origin_dir, 3)
    early = request(origin_dir, 0)
    with Ledger.open(witness_dir) as ledger:
        # Cosigned before any entry of the origin is held here: nothing to attach yet.
        ledger.witness().add_checkpoint(early.old_size, early.proof, early.note)
    append(origin_dir, 2)
    later = request(origin_dir, 3)
    with Ledger.open(origin_dir, read_only=True) as origin:
        datas = [bytes(d) for _i, d, _h in origin.store.iter_entries(origin.own_log.log_id)]
    with Ledger.open(witness_dir) as ledger:
        ledger.replica(ORIGIN).append_verified(later.note, 0, datas, None)
        cosigned = ledger.witness().add_checkpoint(later.old_size, later.proof, later.note)
        log_id = ledger.store.get_log(ORIGIN).log_id
        record = ledger.store.get_checkpoint(log_id, 5)
        assert record is not None
        served = served_note(ledger.store, log_id, record)
    assert served.startswith(later.note)
    assert cosigned.line in served
    lines = parse_cosignature_lines(served[len(later.note) :])
    assert [sig.name for sig in lines] == [witness_name(WITNESS)]


def test_cosignatures_of_one_checkpoint_add_up_across_copies(
    tmp_path: Path, origin_dir: Path
) -> None:
    """2 of 3: each copy carries one witness's line; the replica counts them together."""
    from node.config import append_witness_setting
    from node.ledger.provision import init_node
    from protocol.checkpoint import cosign_checkpoint

    b, d, e = (NoteSigner.generate(f"witness-{n}.example/witness", 0x04) for n in "bde")
    follower = tmp_path / "f"
    init_node(follower, "agency-f.example/hashmesh")
    with Ledger.open(origin_dir, read_only=True) as origin:
        vkey = origin.own_log.verifier_key
    with Ledger.open(follower) as ledger:
        ledger.follow(ORIGIN, vkey)
    keys = tuple(w.verifier().to_text() for w in (b, d, e))
    append_witness_setting(follower, WitnessRequirement(origin=ORIGIN, keys=keys, threshold=2))
    append(origin_dir, 3)
    three = request(origin_dir, 0).note
    append(origin_dir, 1)
    four = request(origin_dir, 0).note
    with Ledger.open(origin_dir, read_only=True) as origin:
        entries = [bytes(x) for _i, x, _h in origin.store.iter_entries(origin.own_log.log_id)]

    with Ledger.open(follower) as ledger:
        replica = ledger.replica(ORIGIN)
        with pytest.raises(QuorumError, match=r"1 of the 2 required.*waiting since .* for"):
            replica.record_checkpoint(cosign_checkpoint(three, b, 1))
        (wait,) = ledger.witness_waits()
        assert (wait.size, wait.signed, wait.missing) == (3, (b.name,), (d.name, e.name))

        # B's line is for size 3: it does not count for size 4, which replaces
        # the checkpoint waited for (the wait keeps its start).
        with pytest.raises(QuorumError, match="1 of the 2 required"):
            replica.record_checkpoint(cosign_checkpoint(four, d, 2))
        (later,) = ledger.witness_waits()
        assert (later.size, later.signed, later.since) == (4, (d.name,), wait.since)

        # A copy with a forged line under D's key and E's good line: the forged
        # line cannot shadow the D line collected before; D + E make 2 of 3.
        good_e = cosign_checkpoint(four, e, 3)
        forged = cosign_checkpoint(four, d, 4)
        forged_line = forged.rsplit("\n", 2)[-2]
        junk = forged_line[:-6] + ("A" if forged_line[-6] != "A" else "B") + forged_line[-5:]
        spoiled = good_e + junk + "\n"
        assert replica.record_checkpoint(spoiled).kind == "ahead"
        replica.append_verified(spoiled, 0, entries, None)
        assert replica.state().size == 4
        assert ledger.witness_waits() == []
        log_id = ledger.log_for(ORIGIN).log_id
        assert {c.witness for c in ledger.witnessing.cosignatures(log_id, 4)} == {d.name, e.name}
        # Served on with both good lines, not the forged one.
        served = parse_note(ledger.served_note(ledger.log_for(ORIGIN), replica.state().checkpoint))
        assert junk not in ledger.served_note(ledger.log_for(ORIGIN), replica.state().checkpoint)
        requirement = WitnessRequirement(origin=ORIGIN, keys=keys, threshold=2)
        reopened = open_with_quorum(replica.key_chain(), served, requirement)
        assert set(reopened.cosignatures) == {d.name, e.name}

        # A copy short of the policy of a checkpoint already held starts no wait.
        with pytest.raises(QuorumError) as info:
            replica.record_checkpoint(cosign_checkpoint(three, e, 5))
        assert "waiting since" not in str(info.value)
        assert ledger.witness_waits() == []
