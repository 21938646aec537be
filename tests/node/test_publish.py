"""``hashmesh publish`` and the ledger's hash tiles, on real SQLite and real files.

What is published must be byte for byte what ``protocol.tiles`` computes
from the log's leaf hashes (itself checked against an independent
implementation's vectors in tests/protocol/test_tiles.py), must verify
against the signed checkpoint, and must never include entry bundles.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
from pathlib import Path

import pytest

from node.cli import main as hashmesh
from node.errors import EntryNotFoundError, PublishError
from node.ledger import Ledger
from node.ledger.hashlist import HashListReader
from node.ledger.provision import init_node
from node.ledger.publish import CHECKPOINT_FILE, MARKER_FILE, publish
from node.storage.schema import TILE_LEVEL
from protocol.checkpoint import open_checkpoint
from protocol.keys import NoteVerifier
from protocol.tiles import (
    TILE_HEIGHT,
    TileId,
    compute_tiles_from_leaf_hashes,
    new_tiles,
    tiles_for_size,
    verify_tiles,
)

ORIGIN = "hotline-test.example/hashmesh"
OTHER = "other.example/hashmesh"


def add_random(ledger: Ledger, n: int, seed: int) -> None:
    rng = random.Random(seed)
    reader = HashListReader(fmt="lines", default_type="sha256", extra_labels=["src:test"])
    ledger.import_lines(reader.read(iter([f"{rng.getrandbits(256):064x}\n" for _ in range(n)])))


def leaf_hashes(ledger: Ledger) -> list[bytes]:
    return [bytes(h) for _i, _d, h in ledger.entries(ledger.own_log)]


def published_files(out: Path) -> dict[str, bytes]:
    """Every tile file under ``out``, by path relative to it."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in (out / "tile").rglob("*")
        if p.is_file()
    }


def verify_published(out: Path, vkey: str) -> int:
    checkpoint = open_checkpoint((out / CHECKPOINT_FILE).read_bytes(), NoteVerifier.from_text(vkey))
    verify_tiles(
        checkpoint.checkpoint.size,
        checkpoint.checkpoint.root_hash,
        lambda tile: (out / tile.to_path()).read_bytes(),
    )
    return checkpoint.checkpoint.size


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    path = tmp_path / "node"
    init_node(path, ORIGIN)
    return path


def test_stored_tiles_cover_every_tile_level() -> None:
    # hash_tile reads level-L tiles from stored nodes of level 8L.
    assert TILE_LEVEL <= TILE_HEIGHT


@pytest.mark.parametrize("size", [1, 255, 256, 257, 700])
def test_ledger_tiles_equal_protocol_tiles(node_dir: Path, size: int) -> None:
    with Ledger.open(node_dir) as ledger:
        add_random(ledger, size, seed=size)
        log = ledger.own_log
        expected = compute_tiles_from_leaf_hashes(leaf_hashes(ledger))
        assert [t for t, _ in expected] == tiles_for_size(size)
        for tile, data in expected:
            assert ledger.hash_tile(log, tile, size) == data
        # Partial tiles of earlier sizes are prefixes of the current ones.
        assert ledger.hash_tile(log, TileId(0, 0, 1), size) == expected[0][1][:32]


def test_ledger_tiles_of_level_one_and_two(node_dir: Path) -> None:
    size = 256 * 256 + 300
    with Ledger.open(node_dir) as ledger:
        add_random(ledger, size, seed=7)
        expected = dict(compute_tiles_from_leaf_hashes(leaf_hashes(ledger)))
        for tile in (
            TileId(1, 0),
            TileId(1, 1, 1),
            TileId(2, 0, 1),
            TileId(0, 257, 44),
            TileId(0, 256),
        ):
            assert ledger.hash_tile(ledger.own_log, tile, size) == expected[tile]


def test_tile_past_the_tree_is_not_found(node_dir: Path) -> None:
    with Ledger.open(node_dir) as ledger:
        add_random(ledger, 300, seed=1)
        log = ledger.own_log
        for tile in (TileId(0, 1, 45), TileId(0, 2), TileId(1, 0), TileId(0, 1)):
            with pytest.raises(EntryNotFoundError) as caught:
                ledger.hash_tile(log, tile, 300)
            assert caught.value.field == "tile"
            assert tile.to_path() in str(caught.value)
        # A size below what is stored serves only that tree's tiles.
        with pytest.raises(EntryNotFoundError):
            ledger.hash_tile(log, TileId(0, 1, 44), 299)


def test_publish_writes_exactly_the_public_tree(node_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "public"
    with Ledger.open(node_dir) as ledger:
        add_random(ledger, 600, seed=2)
        log = ledger.own_log
        result = publish(ledger, out)
        expected = compute_tiles_from_leaf_hashes(leaf_hashes(ledger))
        note = ledger.served_note(log, ledger.latest_checkpoint())
    assert (result.origin, result.old_size, result.size) == (ORIGIN, 0, 600)
    assert (result.full_tiles, result.partial_tiles) == (2, 2)
    assert result.checkpoint_written
    assert published_files(out) == {t.to_path(): data for t, data in expected}
    assert (out / CHECKPOINT_FILE).read_text(encoding="utf-8") == note
    assert not (out / "tile" / "entries").exists()
    assert verify_published(out, log.verifier_key) == 600
    marker = json.loads((out / MARKER_FILE).read_text(encoding="utf-8"))
    assert (marker["origin"], marker["size"]) == (ORIGIN, 600)
    assert not [p for p in out.rglob("*.tmp")]


def test_republish_adds_only_what_changed(node_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "public"
    with Ledger.open(node_dir) as ledger:
        add_random(ledger, 600, seed=3)
        publish(ledger, out)
        before = {p: (out / p).stat().st_ino for p in published_files(out)}
        add_random(ledger, 1000, seed=4)
        result = publish(ledger, out)
        vkey = ledger.own_log.verifier_key
        expected = dict(compute_tiles_from_leaf_hashes(leaf_hashes(ledger)))
    wanted = new_tiles(600, 1600)
    assert result.old_size == 600 and result.size == 1600
    assert result.tiles == len(wanted)
    assert result.full_tiles == sum(t.is_full for t in wanted)
    after = published_files(out)
    for tile in tiles_for_size(1600):
        assert after[tile.to_path()] == expected[tile]
    # Tiles published before are left alone (same inode: not rewritten) ...
    for path, inode in before.items():
        assert (out / path).stat().st_ino == inode
    # ... and the old partial tiles stay readable (C2SP lets a log keep them).
    assert "tile/0/002.p/88" in after
    assert verify_published(out, vkey) == 1600

    with Ledger.open(node_dir) as ledger:
        again = publish(ledger, out)
    assert again.tiles == 0 and not again.checkpoint_written
    assert again.old_size == again.size == 1600


def test_publish_refuses_another_origins_directory(node_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "public"
    other_dir = tmp_path / "other"
    init_node(other_dir, OTHER)
    with Ledger.open(other_dir) as other:
        add_random(other, 10, seed=5)
        publish(other, out)
    files = published_files(out)
    checkpoint = (out / CHECKPOINT_FILE).read_bytes()
    with Ledger.open(node_dir) as ledger:
        add_random(ledger, 20, seed=6)
        with pytest.raises(PublishError, match=r"holds the published log of 'other\.example"):
            publish(ledger, out)
        # Without our marker, a checkpoint of another origin is refused just the same.
        (out / MARKER_FILE).unlink()
        with pytest.raises(PublishError, match=r"holds a checkpoint of 'other\.example"):
            publish(ledger, out)
    assert published_files(out) == files
    assert (out / CHECKPOINT_FILE).read_bytes() == checkpoint


def test_publish_refuses_another_history_of_the_same_origin(node_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "public"
    twin_dir = tmp_path / "twin"
    init_node(twin_dir, ORIGIN)
    with Ledger.open(twin_dir) as twin:
        add_random(twin, 50, seed=8)
        publish(twin, out)
    with Ledger.open(node_dir) as ledger:
        add_random(ledger, 20, seed=9)
        with pytest.raises(PublishError, match="beyond this node's latest checkpoint"):
            publish(ledger, out)
        add_random(ledger, 40, seed=10)
        with pytest.raises(PublishError, match="not this log's history"):
            publish(ledger, out)


def test_publish_refuses_a_damaged_marker(node_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "public"
    out.mkdir()
    (out / MARKER_FILE).write_text('{"format": 1, "origin": 3}', encoding="utf-8")
    with Ledger.open(node_dir) as ledger, pytest.raises(PublishError, match="not a hashmesh"):
        publish(ledger, out)


def test_cli_publish_reports_what_it_wrote(
    node_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "public"
    with Ledger.open(node_dir) as ledger:
        add_random(ledger, 300, seed=11)
    assert hashmesh(["--dir", str(node_dir), "publish", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"published {ORIGIN} at size 300 (was 0)" in text
    assert "1 full and 2 partial tile(s)" in text
    assert hashmesh(["--dir", str(node_dir), "publish", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["old_size"] == summary["size"] == 300 and summary["full_tiles"] == 0
    assert hashmesh(["--dir", str(node_dir), "publish", "--out", str(out)]) == 0
    assert "is up to date" in capsys.readouterr().out


def test_cli_publish_into_another_log_fails_clearly(
    node_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "public"
    other_dir = tmp_path / "other"
    init_node(other_dir, OTHER)
    assert hashmesh(["--dir", str(other_dir), "publish", "--out", str(out)]) == 0
    capsys.readouterr()
    assert hashmesh(["--dir", str(node_dir), "publish", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "publish each log into its own directory" in err


def test_cli_publish_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        hashmesh(["publish", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("--out DIR", "C2SP tlog-tiles", "never written", "checkpoint last"):
        assert words in text


def test_a_failed_publish_leaves_the_published_tree_as_it_was(
    node_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "public"
    with Ledger.open(node_dir) as ledger:
        add_random(ledger, 300, seed=12)
        publish(ledger, out)
        files = published_files(out)
        checkpoint = (out / CHECKPOINT_FILE).read_bytes()
        marker = (out / MARKER_FILE).read_bytes()
        add_random(ledger, 800, seed=13)
        written: list[Path] = []

        def failing_write(path: Path, data: bytes) -> None:
            if len(written) == 2:
                raise OSError(28, "No space left on device")
            written.append(path)
            path.write_bytes(data)

        monkeypatch.setattr("node.ledger.publish._write_file", failing_write)
        with pytest.raises(PublishError, match="No space left on device"):
            publish(ledger, out)
        # Nothing new is visible, no staged file is left behind ...
        assert published_files(out) == files
        assert (out / CHECKPOINT_FILE).read_bytes() == checkpoint
        assert (out / MARKER_FILE).read_bytes() == marker
        assert not list(out.rglob("*.tmp"))
        # ... and the next run publishes everything since the last good one.
        monkeypatch.undo()
        result = publish(ledger, out)
        vkey = ledger.own_log.verifier_key
    assert (result.old_size, result.size) == (300, 1100)
    assert verify_published(out, vkey) == 1100


def test_two_publishes_into_one_directory_do_not_interleave(node_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "public"
    out.mkdir()
    fd = os.open(out / ".hashmesh-publish.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with Ledger.open(node_dir) as ledger, pytest.raises(PublishError, match="another"):
            publish(ledger, out)
    finally:
        os.close(fd)
    assert not (out / CHECKPOINT_FILE).exists()
