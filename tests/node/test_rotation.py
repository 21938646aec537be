"""Key rotation on real node directories: the own log, replicas, crash recovery."""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.cli import main
from node.errors import ConfigError, LedgerError
from node.ledger import Ledger
from node.ledger.provision import init_node
from node.ledger.rotation import load_key_chain, next_key_path
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.entry import AddEntry, RotateEntry
from protocol.errors import RotationError, UnknownKeyError
from protocol.hashing import hash_leaves
from protocol.keys import NoteSigner
from protocol.merkle import root_from_leaf_hashes, verify_inclusion
from tests.node.test_replica import full_snapshot

SRC = "hotline-src.example/hashmesh"
DST = "hotline-dst.example/hashmesh"


def add(i: int) -> AddEntry:
    return AddEntry.create(signal_type="sha1", value=f"{i:040x}", labels=["hotline:cat-a"])


def chain_rows(db: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT * FROM origin_keys ORDER BY 1, 2").fetchall()
    finally:
        conn.close()


@pytest.fixture
def src(tmp_path: Path) -> Iterator[Ledger]:
    init_node(tmp_path / "src", SRC)
    with Ledger.open(tmp_path / "src") as ledger:
        yield ledger


@pytest.fixture
def dst(tmp_path: Path, src: Ledger) -> Iterator[Ledger]:
    init_node(tmp_path / "dst", DST)
    with Ledger.open(tmp_path / "dst") as ledger:
        ledger.follow(SRC, src.own_log.verifier_key)
        yield ledger


def entries(ledger: Ledger, start: int, end: int) -> list[bytes]:
    log_id = ledger.own_log.log_id
    return [bytes(d) for _i, d, _h in ledger.store.iter_entries(log_id, start, end)]


def test_own_log_rotation_switches_signing_key(src: Ledger) -> None:
    old_vkey = src.own_log.verifier_key
    src.append([add(i) for i in range(5)])
    new = NoteSigner.generate(SRC)
    result = src.rotate_key("yearly rotation", new_signer=new)
    assert result.index == 5
    assert result.checkpoint.size == 6
    assert (result.old_vkey, result.new_vkey) == (old_vkey, new.verifier().to_text())
    after = src.append([add(9)])
    chain = load_key_chain(src.store, SRC)
    assert [p.from_size for p in chain.periods] == [0, 7]
    # The commit checkpoint is the old key's; the next one the new key's only.
    assert chain.open(result.checkpoint.note).checkpoint.size == 6
    assert chain.verifier_for(7) == new.verifier()
    assert chain.open(after.checkpoint.note).checkpoint.size == 7
    with pytest.raises(UnknownKeyError):
        KeyOnly(old_vkey).open(after.checkpoint.note)
    # The key file now holds the new key and the log reports it as current.
    key_text = src.config.signing_key_path.read_text().strip()
    assert NoteSigner.from_text(key_text).verifier() == new.verifier()
    assert src.own_log.verifier_key == new.verifier().to_text()
    assert not next_key_path(src.config.signing_key_path).exists()
    assert src.config.signing_key_path.stat().st_mode & 0o077 == 0


class KeyOnly:
    """Open a checkpoint with a single key, as a verifier who ignores rotations would."""

    def __init__(self, vkey: str) -> None:
        from protocol.keys import NoteVerifier

        self.verifier = NoteVerifier.from_text(vkey)

    def open(self, note: str) -> Checkpoint:
        from protocol.checkpoint import open_checkpoint

        return open_checkpoint(note, self.verifier).checkpoint


def test_plain_append_refuses_rotate_entries(src: Ledger) -> None:
    entry = RotateEntry(key=NoteSigner.generate(SRC).verifier().to_text(), reason="sneaky")
    with pytest.raises(LedgerError, match="hashmesh key rotate"):
        src.append([add(1), entry])
    assert src.status().size == 0


def test_rotation_to_the_same_key_refused(src: Ledger) -> None:
    same = NoteSigner.from_text(src.config.signing_key_path.read_text().strip())
    with pytest.raises(LedgerError, match="current one"):
        src.rotate_key("noop", new_signer=same)
    assert src.status().size == 0


def test_interrupted_rotation_is_finished_on_open(tmp_path: Path, src: Ledger) -> None:
    """A crash after the commit but before the key file switch: the next open finishes it."""
    old_text = src.config.signing_key_path.read_text()
    new = NoteSigner.generate(SRC)
    src.rotate_key("crash test", new_signer=new)
    node_dir = src.config.node_dir
    src.close()
    # Put the files back as they were between the commit and the rename.
    key_path = node_dir / "signing.key"
    next_key_path(key_path).write_text(key_path.read_text())
    next_key_path(key_path).chmod(0o600)
    key_path.write_text(old_text)
    with Ledger.open(node_dir) as reopened:
        result = reopened.append([add(1)])
        chain = load_key_chain(reopened.store, SRC)
        assert chain.open(result.checkpoint.note).checkpoint.size == 2
    assert NoteSigner.from_text(key_path.read_text().strip()).verifier() == new.verifier()


def test_missing_new_key_is_a_clear_error(src: Ledger) -> None:
    old_text = src.config.signing_key_path.read_text()
    src.rotate_key("lost key test")
    node_dir = src.config.node_dir
    src.close()
    (node_dir / "signing.key").write_text(old_text)
    with pytest.raises(ConfigError, match="restore that key from backup"):
        Ledger.open(node_dir)
    # Read-only access (status, export, audits) still works without the key.
    with Ledger.open(node_dir, read_only=True) as ledger:
        assert ledger.status().size == 1


def test_replica_follows_the_rotation(src: Ledger, dst: Ledger) -> None:
    src.append([add(i) for i in range(4)])
    rotation = src.rotate_key("planned")
    later = src.append([add(i) for i in range(10, 13)])
    replica = dst.replica(SRC)
    # Up to the rotation's checkpoint (old key), then past it (new key).
    replica.append_verified(rotation.checkpoint.note, 0, entries(src, 0, 5), None)
    assert load_key_chain(dst.store, SRC).current.to_text() == rotation.new_vkey
    replica.append_verified(later.checkpoint.note, 5, entries(src, 5, 8), None)
    assert replica.state().size == 8
    assert chain_rows(dst.config.database_path)[-1][:4] == (SRC, 6, rotation.new_vkey, 4)
    # Entries from before the rotation still prove against the new checkpoint.
    proof = src.prove_inclusion(1, 8)
    leaf = hash_leaves(entries(src, 1, 2))[0]
    verify_inclusion(1, 8, leaf, list(proof.hashes), later.checkpoint.root_hash)


def test_replica_refuses_old_key_after_rotation(src: Ledger, dst: Ledger, tmp_path: Path) -> None:
    """A stolen old key cannot extend the log once the rotation is known."""
    old = NoteSigner.from_text(src.config.signing_key_path.read_text().strip())
    src.append([add(i) for i in range(3)])
    rotation = src.rotate_key("compromise")
    dst.replica(SRC).append_verified(rotation.checkpoint.note, 0, entries(src, 0, 4), None)
    forged_datas = [*entries(src, 0, 4), add(99).to_bytes()]
    root = root_from_leaf_hashes(hash_leaves(forged_datas))
    forged = sign_checkpoint(Checkpoint(origin=SRC, size=5, root_hash=root), old)
    db = dst.config.database_path
    before = full_snapshot(db), chain_rows(db)
    with pytest.raises(UnknownKeyError, match="rotated out"):
        dst.replica(SRC).append_verified(forged, 4, forged_datas[4:], None)
    with pytest.raises(UnknownKeyError):
        dst.replica(SRC).record_checkpoint(forged)
    assert (full_snapshot(db), chain_rows(db)) == before


def _forge(datas: list[bytes], signer: NoteSigner) -> str:
    root = root_from_leaf_hashes(hash_leaves(datas))
    return sign_checkpoint(Checkpoint(origin=SRC, size=len(datas), root_hash=root), signer)


def test_rotation_not_signed_by_old_key_refused(src: Ledger, dst: Ledger) -> None:
    old = NoteSigner.from_text(src.config.signing_key_path.read_text().strip())
    thief = NoteSigner.generate(SRC)
    src.append([add(i) for i in range(3)])
    rotate = RotateEntry(key=thief.verifier().to_text(), reason="taken over").to_bytes()
    datas = [*entries(src, 0, 3), rotate, add(50).to_bytes()]
    db = dst.config.database_path
    before = full_snapshot(db), chain_rows(db)
    # Signed only by the key the rotation names: the pinned key never vouched for it.
    with pytest.raises(UnknownKeyError):
        dst.replica(SRC).append_verified(_forge(datas, thief), 0, datas, None)
    # Signed by the old key, but not at the rotation's own size.
    with pytest.raises(RotationError, match="size 4, not one of size 5"):
        dst.replica(SRC).append_verified(_forge(datas, old), 0, datas, None)
    assert (full_snapshot(db), chain_rows(db)) == before


def test_follower_pinning_the_new_key_reads_the_whole_log(src: Ledger, tmp_path: Path) -> None:
    src.append([add(i) for i in range(3)])
    rotation = src.rotate_key("planned")
    head = src.append([add(7)])
    init_node(tmp_path / "late", "late.example/hashmesh")
    with Ledger.open(tmp_path / "late") as late:
        late.follow(SRC, rotation.new_vkey)
        late.replica(SRC).append_verified(head.checkpoint.note, 0, entries(src, 0, 5), None)
        assert late.replica(SRC).state().size == 5
        chain = load_key_chain(late.store, SRC)
        assert [p.verifier.to_text() for p in chain.periods] == [rotation.new_vkey]


def test_cli_rotate_chain_and_fsck(src: Ledger) -> None:
    node_dir = str(src.config.node_dir)
    src.append([add(1)])
    src.close()
    out, err = io.StringIO(), io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["key", "rotate", "--dir", node_dir, "--reason", "yearly", "--json"]) == 0
    rotated = json.loads(out.getvalue())
    assert rotated["index"] == 1
    with Ledger.open(Path(node_dir)) as ledger:
        ledger.append([add(2)])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["key", "chain", "--dir", node_dir, "--json"]) == 0
    chain = json.loads(out.getvalue())
    assert [p["from_size"] for p in chain["periods"]] == [0, 3]
    assert chain["periods"][1]["vkey"] == rotated["new_vkey"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["fsck", "--dir", node_dir]) == 0
    assert "every checkpoint verifies" in out.getvalue()
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert main(["key", "rotate", "--dir", node_dir, "--reason", ""]) == 1
    assert "reason" in err.getvalue()


def _bundle(ledger: Ledger) -> list[str]:
    from node.ledger.export import export_lines

    return "".join(export_lines(ledger, "bundle")).splitlines(keepends=True)


def test_bundle_of_a_rotated_log_verifies_offline(src: Ledger) -> None:
    from protocol.bundle import verify_bundle

    first_vkey = src.own_log.verifier_key
    src.append([add(i) for i in range(3)])
    rotation = src.rotate_key("planned")
    src.append([add(7)])
    lines = _bundle(src)
    report = verify_bundle(lines, verifier_key=first_vkey)
    assert (report.size, report.checkpoints) == (5, 4)
    assert verify_bundle(lines, verifier_key=rotation.new_vkey).size == 5
    # Without the old key's checkpoint at the rotation's size, the new key is unproven.
    cut = [line for line in lines if line != _b64_note(rotation.checkpoint.note)]
    cut[cut.index("checkpoints 4\n")] = "checkpoints 3\n"
    with pytest.raises(UnknownKeyError, match="line 7"):
        verify_bundle(cut)


def _b64_note(note: str) -> str:
    from protocol.encoding import encode_b64

    return encode_b64(note.encode()) + "\n"


def test_log_and_export_show_opinions_and_rotations(
    src: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    from protocol.entry import OpinionEntry

    src.append([add(1)])
    leaf = hash_leaves(entries(src, 0, 1))[0]
    src.append([OpinionEntry(origin=SRC, index=0, leaf_hash=leaf, verdict="confirm", note="ok")])
    rotation = src.rotate_key("planned")
    node_dir = str(src.config.node_dir)
    src.close()
    capsys.readouterr()
    assert main(["log", "--dir", node_dir]) == 0
    text = capsys.readouterr().out
    assert f"opinion  confirm {SRC}#0 (leaf {leaf.hex()[:16]}" in text
    assert f"rotate   new key {rotation.new_vkey}: planned" in text
    assert main(["export", "--dir", node_dir, "--format", "ndjson"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[1]["verdict"] == "confirm" and rows[1]["target_leaf_hash"] == leaf.hex()
    assert rows[2] == {
        "index": 2,
        "kind": "rotate",
        "key": rotation.new_vkey,
        "reason": "planned",
        "leaf_hash": hash_leaves(entries_of(node_dir, 2, 3))[0].hex(),
    }
    assert main(["export", "--dir", node_dir, "--format", "csv"]) == 0
    assert "rotate" in capsys.readouterr().out


def entries_of(node_dir: str, start: int, end: int) -> list[bytes]:
    with Ledger.open(Path(node_dir), read_only=True) as ledger:
        return entries(ledger, start, end)
