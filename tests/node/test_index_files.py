"""Index files on disk: leaf-hash index files, ``fsck`` over index files, ``hashmesh index``."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest

from node.cli import main as hashmesh
from node.ledger import Ledger, leaf_index
from node.ledger.leaf_index import LeafHashIndex, check_leaves_file, leaves_file
from node.ledger.live_pdq import open_pdq_index, pdq_index_path
from node.ledger.provision import init_node
from node.storage.segment_file import open_segment, write_segment
from protocol.entry import AddEntry

ORIGIN = "index.example/hashmesh"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = hashmesh(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _stored_leaves(ledger: Ledger) -> list[bytes]:
    return [bytes(h) for _i, _d, h in ledger.store.iter_entries(ledger.own_log.log_id)]


@pytest.fixture
def node(tmp_path: Path) -> Path:
    path = tmp_path / "n"
    init_node(path, ORIGIN)
    rng = random.Random(4)
    with Ledger.open(path) as ledger:
        ledger.append(
            [
                AddEntry.create(signal_type="sha256", value=f"{rng.getrandbits(256):064x}")
                for _ in range(120)
            ]
            + [
                AddEntry.create(signal_type="pdq", value=f"{rng.getrandbits(256):064x}", quality=q)
                for q in [90] * 40 + [20] * 5
            ]
        )
    return path


def test_leaf_hash_index_is_persisted_and_mapped_at_the_next_start(node: Path) -> None:
    with Ledger.open(node) as ledger:
        log_id = ledger.own_log.log_id
        leaves = _stored_leaves(ledger)
        index = LeafHashIndex(persist_min=50)
        directory = ledger.index_directory
        assert index.find(ledger.store, log_id, leaves[7], 165, directory=directory) == 7
        index.wait_for_writers()
        assert leaves_file(directory, log_id).exists()
        assert index.entries_mapped(log_id) == 165 and index.verify() == []
        ledger.append([AddEntry.create(signal_type="md5", value=f"{i:032x}") for i in range(30)])
        leaves = _stored_leaves(ledger)
        # A new process: the file is mapped, only the 30 new entries are read.
        fresh = LeafHashIndex(persist_min=10_000)
        assert fresh.find(ledger.store, log_id, leaves[190], 195, directory=directory) == 190
        assert fresh.entries_mapped(log_id) == 165 and fresh.entries_indexed(log_id) == 195
        for i in (0, 64, 164, 165, 194):
            assert fresh.find(ledger.store, log_id, leaves[i], 195, directory=directory) == i
        assert fresh.find(ledger.store, log_id, leaves[190], 180, directory=directory) is None


def test_a_damaged_or_stale_leaf_file_is_not_used(
    node: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Ledger.open(node) as ledger:
        log_id = ledger.own_log.log_id
        directory = ledger.index_directory
        leaves = _stored_leaves(ledger)
        ledger.build_index_files()
        path = leaves_file(directory, log_id)
        os.truncate(path, path.stat().st_size - 100)
        with caplog.at_level(logging.WARNING, logger="hashmesh.index"):
            index = LeafHashIndex()
            assert index.find(ledger.store, log_id, leaves[3], 165, directory=directory) == 3
        assert index.entries_mapped(log_id) == 0 and not path.exists()
        assert any("leaf-hash index file not used" in r.getMessage() for r in caplog.records)


def test_fsck_checks_the_index_files_and_repair_rebuilds_them(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "--dir", str(node), "index", "build")
    assert status == 0, err
    assert "45 PDQ hashes of every held log" in out and f"165 leaf hashes of {ORIGIN}" in out
    status, out, _ = run(capsys, "--dir", str(node), "fsck")
    assert status == 0 and out.startswith("ok:"), out
    pdq = pdq_index_path(node)
    # A byte flipped in the middle of the hashes: only the block checksums see it.
    with Ledger.open(node, read_only=True) as ledger:
        segment = open_pdq_index(ledger).segment
        assert segment is not None
        words = segment.array("near.words")
        assert len(words) == 40
    data = bytearray(pdq.read_bytes())
    needle = words[5].tobytes()
    at = bytes(data).index(needle)
    data[at + 2] ^= 0x10
    pdq.write_bytes(bytes(data))
    status, out, _ = run(capsys, "--dir", str(node), "fsck")
    assert status == 1
    (problem,) = [line for line in out.splitlines() if line.startswith("PROBLEM:")]
    assert "index/pdq.seg" in problem and "fails its checksum" in problem
    assert "fsck --repair` rebuilds" in out
    status, out, err = run(capsys, "--dir", str(node), "fsck", "--repair")
    assert status == 0, out + err
    status, out, _ = run(capsys, "--dir", str(node), "fsck")
    assert status == 0 and out.startswith("ok:")
    status, out, _ = run(capsys, "--dir", str(node), "index", "status")
    assert status == 0 and "pdq-index, 45 rows" in out and "leaf-index, 165 rows" in out


def test_fsck_finds_an_index_file_that_disagrees_with_the_log(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Whole and checksummed, but one stored hash is not the log's (what a
    # writer's bug would leave): only the comparison with the table sees it.
    with Ledger.open(node) as ledger:
        ledger.build_index_files()
    pdq = pdq_index_path(node)
    segment = open_segment(pdq, "pdq-index")
    arrays = {name: np.array(segment.array(name)) for name in segment.names()}
    arrays["near.words"][7, 1] ^= np.uint64(1)
    write_segment(pdq, "pdq-index", segment.meta, arrays)
    segment.close()
    status, out, _ = run(capsys, "--dir", str(node), "fsck")
    assert status == 1 and "index/pdq.seg" in out, out
    assert "differs from the pdq table" in out
    status, out, err = run(capsys, "--dir", str(node), "fsck", "--repair")
    assert status == 0, out + err


def _unsorted(prefixes: np.ndarray, indexes: np.ndarray) -> None:
    prefixes[[10, 11]] = prefixes[[11, 10]]
    indexes[[10, 11]] = indexes[[11, 10]]


def _twice(prefixes: np.ndarray, indexes: np.ndarray) -> None:
    indexes[20] = indexes[21]


def _swapped(prefixes: np.ndarray, indexes: np.ndarray) -> None:
    indexes[[30, 90]] = indexes[[90, 30]]


def _outside(prefixes: np.ndarray, indexes: np.ndarray) -> None:
    indexes[40] = len(indexes)


@pytest.mark.parametrize("damage", [_unsorted, _twice, _swapped, _outside])
def test_fsck_finds_a_leaf_index_file_that_disagrees_with_the_leaf_hashes(
    node: Path, damage: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checked a few entries at a time, as a 100M-entry log is (by chunks).
    monkeypatch.setattr(leaf_index, "_CHECK_CHUNK", 7)
    with Ledger.open(node) as ledger:
        ledger.build_index_files()
        log_id = ledger.own_log.log_id
        directory = ledger.index_directory
        assert check_leaves_file(ledger.store, log_id, directory) is None
    path = leaves_file(directory, log_id)
    segment = open_segment(path, "leaf-index")
    arrays = {name: np.array(segment.array(name)) for name in segment.names()}
    assert callable(damage)
    damage(arrays["prefixes"], arrays["indexes"])
    write_segment(path, "leaf-index", segment.meta, arrays)
    segment.close()
    with Ledger.open(node, read_only=True) as ledger:
        problem = check_leaves_file(ledger.store, log_id, directory)
    assert problem == f"{path}: does not match the stored leaf hashes"
