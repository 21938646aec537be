"""The ledger service on real SQLite files, checked with protocol/ alone."""

from __future__ import annotations

import base64
import hashlib
import io
import sqlite3
import stat
from pathlib import Path

import pytest

from node.errors import (
    ConfigError,
    ImportRejectedError,
    NodeExistsError,
    RetractionError,
    StorageError,
)
from node.ledger import Ledger
from node.ledger.export import export_lines
from node.ledger.hashlist import HashListReader
from node.ledger.provision import init_node
from node.storage.schema import TILE_LEVEL
from protocol.bundle import verify_bundle
from protocol.checkpoint import open_checkpoint
from protocol.entry import AddEntry, RetractEntry, parse_entry
from protocol.errors import MalformedError, RootMismatchError
from protocol.hashing import EMPTY_ROOT, hash_leaf
from protocol.keys import NoteVerifier
from protocol.merkle import root_from_leaf_hashes, verify_consistency, verify_inclusion
from tests.node.conftest import ORIGIN, snapshot


def sha(i: int) -> str:
    # Distinct for every i, with letters, so upper-casing one changes it.
    return hashlib.sha256(b"%d" % i).hexdigest()


def add(i: int, *labels: str) -> AddEntry:
    return AddEntry.create(signal_type="sha256", value=sha(i), labels=list(labels))


def verifier(ledger: Ledger) -> NoteVerifier:
    return NoteVerifier.from_text(ledger.own_log.verifier_key)


def test_init_creates_node_with_private_key_and_empty_signed_log(
    node_dir: Path,
) -> None:
    assert stat.S_IMODE((node_dir / "signing.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((node_dir / "tls" / "node.key").stat().st_mode) == 0o600
    assert "origin = " in (node_dir / "config.toml").read_text()
    with Ledger.open(node_dir) as ledger:
        record = ledger.latest_checkpoint()
        cp = open_checkpoint(record.note, verifier(ledger), origin=ORIGIN).checkpoint
    assert (cp.size, cp.root_hash) == (0, EMPTY_ROOT)
    mode = sqlite3.connect(node_dir / "ledger.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_init_refuses_to_overwrite(node_dir: Path) -> None:
    before = (node_dir / "signing.key").read_bytes()
    with pytest.raises(NodeExistsError):
        init_node(node_dir, ORIGIN)
    assert (node_dir / "signing.key").read_bytes() == before


def test_init_rejects_bad_origin(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="origin"):
        init_node(tmp_path / "x", "Not An Origin")
    assert not (tmp_path / "x").exists()


def test_signing_key_readable_by_others_is_refused(node_dir: Path) -> None:
    (node_dir / "signing.key").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Ledger.open(node_dir)


def test_add_signs_checkpoint_and_proves_inclusion(ledger: Ledger) -> None:
    entries = [add(i, "iwf:category-a") for i in range(7)]
    result = ledger.append(entries)
    assert list(result.indexes) == list(range(7))
    cp = open_checkpoint(result.checkpoint.note, verifier(ledger), origin=ORIGIN).checkpoint
    stored = list(ledger.entries(ledger.own_log))
    leaves = [bytes(h) for _i, _d, h in stored]
    # Written as version 2: the drafts' entries with a fresh salt each.
    for entry, (_i, data, leaf) in zip(entries, stored, strict=True):
        written = parse_entry(bytes(data))
        assert written.version == 2 and written == entry.salted(written.salt or "")
        assert leaf == hash_leaf(bytes(data)) != hash_leaf(entry.to_bytes())
    assert cp.size == 7
    assert cp.root_hash == root_from_leaf_hashes(leaves)
    for index in range(7):
        proof = ledger.prove_inclusion(index)
        assert proof.leaf_hash == leaves[index]
        verify_inclusion(index, 7, leaves[index], proof.hashes, cp.root_hash)
    old = ledger.prove_inclusion(2, size=3)
    verify_inclusion(2, 3, leaves[2], old.hashes, root_from_leaf_hashes(leaves[:3]))


def test_consistency_proofs_between_all_checkpoints(ledger: Ledger) -> None:
    roots = {0: EMPTY_ROOT}
    for i in range(9):
        result = ledger.append([add(i)])
        roots[result.checkpoint.size] = result.checkpoint.root_hash
    for old in range(10):
        for new in range(old, 10):
            proof = ledger.prove_consistency(old, new)
            verify_consistency(old, new, roots[old], roots[new], proof.hashes)
    bad = ledger.prove_consistency(3, 9)
    with pytest.raises(RootMismatchError):
        verify_consistency(3, 9, roots[4], roots[9], bad.hashes)


def test_proof_arguments_out_of_range(ledger: Ledger) -> None:
    ledger.append([add(1), add(2)])
    with pytest.raises(MalformedError, match="index"):
        ledger.prove_inclusion(2)
    with pytest.raises(MalformedError, match="size"):
        ledger.prove_inclusion(0, size=3)
    with pytest.raises(MalformedError, match="old_size"):
        ledger.prove_consistency(2, 1)


def test_duplicate_hash_is_reported_not_appended(ledger: Ledger) -> None:
    ledger.append([add(1), add(2)])
    result = ledger.append([add(2), add(3), add(3)])
    assert [d.existing_index for d in result.duplicates] == [1, 2]
    assert result.count == 1
    assert ledger.latest_checkpoint().size == 3


def test_same_value_different_signal_type_is_not_a_duplicate(ledger: Ledger) -> None:
    pdq = AddEntry.create(signal_type="pdq", value=sha(1), quality=90)
    result = ledger.append([add(1), pdq])
    assert result.count == 2 and not result.duplicates


def test_retract_and_readd(ledger: Ledger) -> None:
    ledger.append([add(1)])
    result = ledger.retract(0, "false positive")
    assert result.start == 1
    assert ledger.status().retracted == 1
    assert ledger.status().by_signal_type == {}
    # once retracted, the same hash may be listed again
    again = ledger.append([add(1)])
    assert again.count == 1 and again.start == 2


def test_retract_and_readd_in_one_batch(ledger: Ledger) -> None:
    ledger.append([add(1)])
    result = ledger.append([RetractEntry(index=0, reason="relabel"), add(1)])
    assert result.count == 2 and not result.duplicates
    assert ledger.status().by_signal_type == {"sha256": 1}
    # Within one batch too: add, retract, add again lists it once more.
    fresh = ledger.append([add(2), RetractEntry(index=3, reason="typo"), add(2), add(2)])
    assert fresh.count == 3 and [d.existing_index for d in fresh.duplicates] == [5]


@pytest.mark.parametrize(
    ("target", "message"),
    [(5, "does not exist"), (1, "is a retract"), (0, "already retracted")],
)
def test_bad_retractions_write_nothing(
    ledger: Ledger, node_dir: Path, target: int, message: str
) -> None:
    ledger.append([add(1)])
    ledger.retract(0, "reviewed")
    before = snapshot(node_dir / "ledger.db")
    with pytest.raises(RetractionError, match=message):
        ledger.retract(target, "again")
    assert snapshot(node_dir / "ledger.db") == before


def test_retraction_twice_in_one_batch_is_refused(ledger: Ledger) -> None:
    ledger.append([add(1)])
    with pytest.raises(RetractionError, match="already retracted"):
        ledger.append([RetractEntry(index=0, reason="a"), RetractEntry(index=0, reason="b")])
    assert ledger.latest_checkpoint().size == 1


def test_status_counts(ledger: Ledger) -> None:
    ledger.append([add(1, "iwf:category-a"), add(2, "iwf:category-a", "src:x")])
    ledger.append([AddEntry.create(signal_type="md5", value="0" * 32)])
    status = ledger.status()
    assert status.by_signal_type == {"md5": 1, "sha256": 2}
    assert status.by_label == {"iwf:category-a": 2, "src:x": 1}
    assert status.size == 3


def read(text: str, **kwargs: object) -> HashListReader:
    return HashListReader(**kwargs)  # type: ignore[arg-type]


def test_import_normalises_and_reports(ledger: Ledger) -> None:
    text = (
        "\ufeff" + "\r\n".join([f"  {sha(1).upper()} ", "", "# comment", sha(2), sha(1)]) + "\r\n"
    )
    reader = HashListReader(fmt="lines", default_type="sha256", extra_labels=["Src:Legacy"])
    result = ledger.import_lines(reader.read(io.StringIO(text, newline="")))
    assert result.append.count == 2
    assert [d.line for d in result.append.duplicates] == [5]
    assert reader.notes["removed byte order mark"] == 1
    assert reader.notes["converted CRLF line ends"] == 5
    assert reader.skipped_blank == 2
    assert any("lower" in note for note in reader.notes)
    first = parse_entry(ledger.store.get_entry(ledger.own_log.log_id, 0) or b"")
    assert isinstance(first, AddEntry)
    assert first.value == sha(1) and first.labels == ("src:legacy",)


def test_import_rejects_whole_file_and_names_lines(ledger: Ledger, node_dir: Path) -> None:
    ledger.append([add(1)])
    before = snapshot(node_dir / "ledger.db")
    text = "\n".join([sha(5), "abc", sha(6), "zz" * 32, sha(7)]) + "\n"
    reader = HashListReader(fmt="lines", default_type="sha256")
    with pytest.raises(ImportRejectedError) as info:
        ledger.import_lines(reader.read(io.StringIO(text)))
    assert [e.line for e in info.value.errors] == [2, 4]
    assert all(e.field and "value" in e.field for e in info.value.errors)
    assert snapshot(node_dir / "ledger.db") == before


def test_import_skip_invalid_lists_skipped(ledger: Ledger) -> None:
    text = "\n".join([sha(5), "abc", sha(6)]) + "\n"
    reader = HashListReader(fmt="lines", default_type="sha256")
    result = ledger.import_lines(reader.read(io.StringIO(text)), skip_invalid=True)
    assert result.append.count == 2
    assert [e.line for e in result.skipped] == [2]


def test_import_csv_and_ndjson(ledger: Ledger) -> None:
    csv_text = (
        "type,value,labels,quality,extra\n"
        f"sha256,{sha(1)},iwf:category-a;src:x,,1\n"
        f"pdq,{sha(2)},,85,2\n"
    )
    reader = HashListReader(fmt="csv")
    result = ledger.import_lines(reader.read(io.StringIO(csv_text)))
    assert result.append.count == 2
    assert reader.ignored_columns == ("extra",)
    nd = (
        f'{{"type":"md5","value":"{"A" * 32}","labels":["gifct:tvec"]}}\n'
        '{"type":"md5","value":"x","value":"y"}\n'
    )
    reader = HashListReader(fmt="ndjson")
    with pytest.raises(ImportRejectedError) as info:
        ledger.import_lines(reader.read(io.StringIO(nd)))
    assert info.value.errors[0].line == 2
    assert "duplicate" in info.value.errors[0].reason


def test_import_batches_span_many_executemany_calls(ledger: Ledger) -> None:
    from node.ledger import service

    n = service.IMPORT_BATCH * 2 + 17
    text = "".join(f"{i:032x}\n" for i in range(n))
    reader = HashListReader(fmt="lines", default_type="md5")
    result = ledger.import_lines(reader.read(io.StringIO(text)))
    assert result.append.count == n
    size, root = ledger.recompute_root()
    assert (size, root) == (n, ledger.latest_checkpoint().root_hash)
    proof = ledger.prove_inclusion(n - 1)
    verify_inclusion(n - 1, n, proof.leaf_hash or b"", proof.hashes, root)
    # A prefix (fsck of a replica mid catch-up) spans batches too.
    prefix = service.IMPORT_BATCH + 3
    assert ledger.recompute_root(None, prefix) == (prefix, ledger.root_at(None, prefix))


def test_append_only_triggers(ledger: Ledger, node_dir: Path) -> None:
    # One full tile, so the nodes table holds a row (row triggers need a row).
    ledger.append([add(i) for i in range(2**TILE_LEVEL)])
    conn = sqlite3.connect(node_dir / "ledger.db")
    assert conn.execute("SELECT count(*) FROM nodes").fetchone()[0] == 1
    for sql in (
        "UPDATE entries SET data = x'00'",
        "DELETE FROM entries",
        "DELETE FROM checkpoints",
        "UPDATE checkpoints SET note = 'x'",
        "DELETE FROM nodes",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)
    conn.close()


def test_damaged_tree_is_reported_not_signed_over(ledger: Ledger, node_dir: Path) -> None:
    ledger.append([add(i) for i in range(2**TILE_LEVEL)])
    conn = sqlite3.connect(node_dir / "ledger.db")
    conn.execute("DROP TRIGGER nodes_no_delete")
    conn.execute("DELETE FROM nodes")
    conn.commit()
    conn.close()
    with pytest.raises(StorageError, match="missing"):
        ledger.append([add(2**TILE_LEVEL)])


def test_bundle_export_verifies_and_tampering_is_caught(ledger: Ledger) -> None:
    ledger.append([add(i) for i in range(5)])
    ledger.retract(3, "reviewed")
    ledger.append([add(9)])
    lines = list(export_lines(ledger, "bundle"))
    report = verify_bundle(lines, verifier_key=ledger.own_log.verifier_key)
    assert (report.size, report.checkpoints, report.retractions) == (7, 4, 1)
    assert report.root_hash == ledger.latest_checkpoint().root_hash
    tampered = list(lines)
    leaf_line = lines.index("leaves 7\n") + 1
    tampered[leaf_line] = lines[leaf_line + 1]
    with pytest.raises(RootMismatchError):
        verify_bundle(tampered)


def test_ndjson_and_leaves_exports(ledger: Ledger) -> None:
    ledger.append([add(1, "iwf:category-a"), add(2)])
    ledger.retract(0, "reviewed")
    rows = [line for line in export_lines(ledger, "ndjson")]
    assert '"retracted_by":2' in rows[0]
    assert '"target":0' in rows[2]
    leaves = list(export_lines(ledger, "leaves"))
    assert len(leaves) == 3
    csv_lines = list(export_lines(ledger, "csv"))
    assert csv_lines[0].startswith("index,kind,")
    # Salts travel with exact entry bytes (leaves) only, not in decoded rows.
    salts = [parse_entry(base64.b64decode(line)).salt for line in leaves]
    assert all(salt is not None and len(salt) == 32 for salt in salts)
    decoded = "".join(rows) + "".join(csv_lines)
    assert "salt" not in decoded
    assert not any(salt and salt in decoded for salt in salts)


def test_duplicates_are_found_when_every_index_key_collides(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The index is keyed by a 64-bit digest; candidates sharing a key must be
    # told apart by the stored entry, never taken as duplicates.
    from node.ledger import integration
    from node.storage import ledger_store

    monkeypatch.setattr(ledger_store, "active_key", lambda signal_type, value: 7)
    monkeypatch.setattr(integration, "active_keys", lambda identities: [7 for _ in identities])
    first = ledger.append([add(i) for i in range(20)])
    assert (first.count, first.duplicates) == (20, ())
    again = ledger.append([add(3), add(99), add(3)])
    assert again.count == 1
    assert [d.existing_index for d in again.duplicates] == [3, 3]
    ledger.retract(5, "reviewed")
    readd = ledger.append([add(5), add(6)])
    assert readd.count == 1 and readd.duplicates[0].existing_index == 6
    assert ledger.status().by_signal_type == {"sha256": 21}
