"""Backup files: private, checksummed, refused when damaged; restore never overwrites."""

from __future__ import annotations

import io
import json
import stat
import tarfile
from pathlib import Path

import pytest

from node.cli import main as hashmesh
from node.errors import ConfigError, NodeExistsError, RecoveringError
from node.ledger import Ledger
from node.ledger.backup import make_backup, restore_backup
from node.ledger.provision import init_node
from node.storage import ledger_store
from protocol.entry import AddEntry

ORIGIN = "hotline-bk.example/hashmesh"


@pytest.fixture
def node(tmp_path: Path) -> Path:
    path = tmp_path / "node"
    init_node(path, ORIGIN)
    with Ledger.open(path) as ledger:
        ledger.append([AddEntry.create(signal_type="md5", value=f"{i:032x}") for i in range(5)])
    return path


@pytest.fixture
def backup(tmp_path: Path, node: Path) -> Path:
    out = tmp_path / "b.tar"
    make_backup(node, out)
    return out


def test_backup_is_private_and_restores_recovering(tmp_path: Path, backup: Path) -> None:
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    with tarfile.open(backup) as tar:
        names = tar.getnames()
        assert all(stat.S_IMODE(m.mode) == 0o600 for m in tar.getmembers())
    assert names[0] == "hashmesh-backup.json"
    assert {"config.toml", "signing.key", "ledger.db", "tls/node.key", "tls/node.crt"} <= set(names)
    result = restore_backup(backup, tmp_path / "restored")
    assert (result.origin, result.log_size) == (ORIGIN, 5)
    assert stat.S_IMODE((tmp_path / "restored").stat().st_mode) == 0o700
    with Ledger.open(tmp_path / "restored") as ledger:
        assert ledger.latest_checkpoint().size == 5
        assert ledger.recovering is not None and ledger.recovering.log_size == 5
        with pytest.raises(RecoveringError):
            ledger.retract(0, "while recovering")
        with pytest.raises(RecoveringError, match="cosign"):
            ledger.witness()


def test_backup_never_overwrites(node: Path, backup: Path) -> None:
    before = backup.read_bytes()
    with pytest.raises(ConfigError, match="never overwrites"):
        make_backup(node, backup)
    assert backup.read_bytes() == before


def test_damaged_archive_is_refused_by_its_checksum_file(tmp_path: Path, backup: Path) -> None:
    data = bytearray(backup.read_bytes())
    data[len(data) // 2] ^= 0x01
    backup.write_bytes(bytes(data))
    target = tmp_path / "restored"
    with pytest.raises(ConfigError, match=r"SHA-256 .* is not the .* nothing was restored"):
        restore_backup(backup, target)
    assert not target.exists()


def test_damaged_member_is_refused_by_the_manifest(tmp_path: Path, backup: Path) -> None:
    backup.with_name(backup.name + ".sha256").unlink()
    # Rewrite the archive with one byte of the certificate changed.
    rebuilt = io.BytesIO()
    with tarfile.open(backup) as src, tarfile.open(fileobj=rebuilt, mode="w") as dst:
        for member in src.getmembers():
            f = src.extractfile(member)
            assert f is not None
            body = f.read()
            if member.name == "tls/node.crt":
                body = body.replace(b"BEGIN", b"BEGIn", 1)
            member.size = len(body)
            dst.addfile(member, io.BytesIO(body))
    backup.write_bytes(rebuilt.getvalue())
    with pytest.raises(ConfigError, match=r"tls/node.crt does not match its SHA-256"):
        restore_backup(backup, tmp_path / "restored")
    assert not (tmp_path / "restored").exists()


def test_unexpected_member_is_refused(tmp_path: Path, backup: Path) -> None:
    backup.with_name(backup.name + ".sha256").unlink()
    with tarfile.open(backup, mode="a") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ConfigError, match=r"unexpected member '\.\./escape'"):
        restore_backup(backup, tmp_path / "restored")
    assert not (tmp_path / "escape").exists()


def test_not_a_backup_is_named(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tar"
    bogus.write_bytes(b"not a tar file at all" * 100)
    with pytest.raises(ConfigError, match=r"not a readable backup|not a hashmesh backup"):
        restore_backup(bogus, tmp_path / "restored")


def test_restore_never_overwrites_a_node(node: Path, backup: Path, tmp_path: Path) -> None:
    with pytest.raises(NodeExistsError):
        restore_backup(backup, node)
    other = tmp_path / "full"
    other.mkdir()
    (other / "something").write_text("x")
    with pytest.raises(ConfigError, match="not an empty directory"):
        restore_backup(backup, other)


def test_restore_in_place_marks_and_recover_without_peers_ends_it(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hashmesh(["--dir", str(node), "restore", "--in-place"]) == 0
    assert "RECOVERING" in capsys.readouterr().out
    assert hashmesh(["--dir", str(node), "add", "--type", "md5", "--value", "a" * 32]) == 1
    assert "is recovering" in capsys.readouterr().err
    # No peer and no witness could hold more: recovery ends at once.
    assert hashmesh(["--dir", str(node), "recover", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {
        "origin": ORIGIN,
        "backup_size": 5,
        "size": 5,
        "recovered": True,
        "reason": None,
        "answers": [],
    }
    assert hashmesh(["--dir", str(node), "add", "--type", "md5", "--value", "a" * 32]) == 0
    assert hashmesh(["--dir", str(node), "recover"]) == 0
    assert "not recovering" in capsys.readouterr().out


def test_status_says_a_restored_node_is_recovering(
    tmp_path: Path, node: Path, backup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    restored = tmp_path / "restored"
    restore_backup(backup, restored)
    assert hashmesh(["--dir", str(restored), "status"]) == 0
    text = capsys.readouterr().out
    assert "RECOVERING:" in text and "hashmesh recover" in text
    assert hashmesh(["--dir", str(restored), "status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["recovering"]["log_size"] == 5
    # The node the backup was made of is not recovering, and says nothing of it.
    assert hashmesh(["--dir", str(node), "status"]) == 0
    assert "RECOVERING" not in capsys.readouterr().out
    assert hashmesh(["--dir", str(node), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recovering"] is None


def test_a_backup_in_steps_copies_one_snapshot_while_the_node_writes(
    tmp_path: Path, node: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With progress the copy goes in steps; writes between them do not reach the copy.

    Each step runs inside the read transaction opened first, so the copy is
    the state of that moment (a step opening its own would see the writes
    and start over, or mix them in).
    """
    with Ledger.open(node) as ledger:
        ledger.append(
            [AddEntry.create(signal_type="md5", value=f"{i:032x}") for i in range(5, 3000)]
        )
    monkeypatch.setattr(ledger_store, "_BACKUP_STEP_PAGES", 16)  # many steps of a small file
    seen: list[tuple[str, int, int]] = []
    writes = iter(range(3000, 3003))

    def progress(part: str, done: int, total: int) -> None:
        seen.append((part, done, total))
        if part == "copy the database" and done < total:
            i = next(writes, None)
            if i is not None:  # another connection commits between two steps
                with Ledger.open(node) as writer:
                    writer.append([AddEntry.create(signal_type="md5", value=f"{i:032x}")])

    result = make_backup(node, tmp_path / "steps.tar", progress)
    copies = [(done, total) for part, done, total in seen if part == "copy the database"]
    assert len(copies) > 2 and copies[-1][0] == copies[-1][1]  # several steps, to the end
    assert next(writes, None) is None  # the writes did happen during the copy
    assert result.log_size == 3000
    restore_backup(tmp_path / "steps.tar", tmp_path / "restored")
    with Ledger.open(tmp_path / "restored", read_only=True) as ledger:
        assert ledger.latest_checkpoint().size == 3000
        assert ledger.held_entries() == 3000
    parts = [part for part, _done, _total in seen]
    assert parts[-1] == "checksum steps.tar"
    assert {"checksum the files", "write steps.tar"} <= set(parts)
