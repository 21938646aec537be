"""Write failures are one clear line, name their cause and lose nothing (issue 14, item 3).

Real faults where they can be caused: a full tmpfs, a read-only remount, file
modes (checked as an unprivileged user when the suite runs as root), a lock
held by another connection, SQLite's own page limit. Only an I/O error,
which cannot be caused on demand here, is a constructed exception.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from node.cli import main as hashmesh
from node.errors import StorageError
from node.ledger import Ledger
from node.ledger.provision import init_node
from node.storage.connection import describe_sqlite_error, write_transaction
from node.storage.ledger_store import LedgerStore
from protocol.entry import AddEntry
from tests.adversary.disk import fill, read_only, small_tmpfs

ORIGIN = "writes.example/hashmesh"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = hashmesh(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def md5s(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.getrandbits(128):032x}" for _ in range(count)]


def hash_list(tmp_path: Path, count: int, seed: int) -> Path:
    path = tmp_path / f"list-{seed}.txt"
    path.write_text("".join(f"{v}\n" for v in md5s(count, seed)), encoding="ascii")
    return path


def state(node: Path) -> tuple[int, bytes, int]:
    """Size, root and entry count: what a failed write must leave as it was."""
    with Ledger.open(node, read_only=True) as ledger:
        cp = ledger.latest_checkpoint()
        return cp.size, cp.root_hash, ledger.recompute_root()[0]


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def test_full_disk_is_one_line_and_loses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with small_tmpfs(3 * 1024 * 1024) as mount:
        node = mount / "node"
        init_node(node, ORIGIN)
        status, _, err = run(
            capsys, "--dir", str(node), "import", "--type", "md5", str(hash_list(tmp_path, 50, 1))
        )
        assert status == 0, err
        before = state(node)
        filler = fill(mount, leave=16 * 1024)
        big = hash_list(tmp_path, 40_000, 2)  # about 9 MB of entries: cannot fit
        status, _, err = run(capsys, "--dir", str(node), "import", "--type", "md5", str(big))
        line = one_line_error(err)
        assert status == 1
        assert "the disk is full" in line and "nothing was written" in line, line
        assert "cannot rollback" not in line
        filler.unlink()
        assert state(node) == before
        # Full before the command opens the database: SQLite cannot even make
        # its shared-memory file, and says "disk I/O error".
        (node / "ledger.db-shm").unlink(missing_ok=True)
        filler = fill(mount, leave=0)
        status, _, err = run(
            capsys, "--dir", str(node), "add", "--type", "md5", "--value", "0" * 32
        )
        line = one_line_error(err)
        assert status == 1
        assert "disk is full" in line and "nothing was written" in line, line
        filler.unlink()
        assert state(node) == before
        status, out, err = run(capsys, "--dir", str(node), "fsck")
        assert status == 0, out + err
        # With room again, the same import goes through.
        small = hash_list(tmp_path, 500, 3)
        assert run(capsys, "--dir", str(node), "import", "--type", "md5", str(small))[0] == 0
        assert state(node)[0] == before[0] + 500


def test_read_only_file_system_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with small_tmpfs(4 * 1024 * 1024) as mount:
        node = mount / "node"
        init_node(node, ORIGIN)
        before = state(node)
        with read_only(mount):
            status, _, err = run(
                capsys, "--dir", str(node), "add", "--type", "md5", "--value", "1" * 32
            )
            line = one_line_error(err)
            assert status == 1
            assert "read-only" in line and "nothing was written" in line, line
            # Reading still works on a read-only file system.
            status, out, err = run(capsys, "--dir", str(node), "status")
            assert status == 0 and "size:             1 entries" not in out, err
        assert state(node) == before


def _without_root_overrides(argv: list[str]) -> list[str]:
    """The command as root would run it without its power to ignore file modes."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("as root, file modes are tested through setpriv, which is missing")
    drop = "-dac_override,-dac_read_search,-fowner"
    return [setpriv, "--inh-caps=-all", f"--bounding-set={drop}", *argv]


def test_chmod_read_only_database_is_one_line(tmp_path: Path) -> None:
    node = tmp_path / "node"
    init_node(node, ORIGIN)
    before = state(node)
    db = node / "ledger.db"
    db.chmod(0o400)
    node.chmod(0o500)  # no new -wal/-shm or journal either
    try:
        argv = [sys.executable, "-m", "node", "--dir", str(node), "add", "--type", "md5"]
        done = subprocess.run(
            _without_root_overrides([*argv, "--value", "2" * 32]),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        node.chmod(0o700)
        db.chmod(0o600)
    assert done.returncode == 1, done.stderr
    line = one_line_error(done.stderr)
    assert "nothing was written" in line or "cannot open" in line, line
    assert any(word in line for word in ("read-only", "permission", "cannot be opened")), line
    assert state(node) == before


def test_locked_database_is_one_line(node_dir: Path) -> None:
    holder = sqlite3.connect(node_dir / "ledger.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        store = LedgerStore.open(node_dir / "ledger.db")
        store.conn.execute("PRAGMA busy_timeout = 0")  # do not wait 10 s for the lock
        with pytest.raises(StorageError) as caught, store.transaction():
            pass
        message = str(caught.value)
        assert "locked by another writer" in message and "nothing was written" in message
        store.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_sqlite_full_inside_a_transaction_rolls_back_once(tmp_path: Path) -> None:
    """SQLite may end the transaction itself; no second error may bury the first."""
    conn = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.execute("INSERT INTO t VALUES (zeroblob(100))")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(StorageError) as caught, write_transaction(conn):
        conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
    assert "the disk is full" in str(caught.value)
    assert "nothing was written" in str(caught.value)
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1

    # Ended by hand, as SQLite does after some errors: the block's own error wins.
    def ended_then_failed() -> None:
        with write_transaction(conn):
            conn.execute("ROLLBACK")
            conn.execute("INSERT INTO missing VALUES (1)")

    with pytest.raises(StorageError, match="no such table"):
        ended_then_failed()
    conn.close()


def test_io_error_is_named() -> None:
    # An I/O error cannot be caused on demand here: SQLite's own error, as
    # the sqlite3 module builds it, with the extended code of a failed write.
    error = sqlite3.OperationalError("disk I/O error")
    error.sqlite_errorcode = 10 | (3 << 8)  # type: ignore[attr-defined]  # SQLITE_IOERR_WRITE
    assert describe_sqlite_error(error).startswith("an I/O error")


def test_empty_and_garbage_database_files(
    node_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = node_dir / "ledger.db"
    db.write_bytes(b"")
    for argv in (["status"], ["add", "--type", "md5", "--value", "3" * 32], ["log"]):
        status, _, err = run(capsys, "--dir", str(node_dir), *argv)
        assert status == 1 and "is empty (0 bytes)" in one_line_error(err)
    # fsck reports it as its finding, with what to do.
    status, out, err = run(capsys, "--dir", str(node_dir), "fsck")
    assert status == 1 and not err
    assert "is empty (0 bytes)" in out and "cannot be read at all; restore it" in out
    # Cut short: SQLite finds the file smaller than its header says.
    init_node(node_dir.parent / "other", ORIGIN)
    with Ledger.open(node_dir.parent / "other") as ledger:
        ledger.append([AddEntry.create(signal_type="md5", value=f"{i:032x}") for i in range(500)])
    whole = (node_dir.parent / "other" / "ledger.db").read_bytes()
    db.write_bytes(whole[: len(whole) // 2])
    for argv in (["status"], ["fsck"], ["add", "--type", "md5", "--value", "3" * 32], ["serve"]):
        status, out, err = run(capsys, "--dir", str(node_dir), *argv)
        assert status == 1 and "damaged" in (out + err) and "Traceback" not in err, out + err
    for extra in ("ledger.db-wal", "ledger.db-shm"):
        (node_dir / extra).unlink(missing_ok=True)
    db.write_bytes(random.Random(4).randbytes(8192))
    for argv in (["status"], ["add", "--type", "md5", "--value", "3" * 32]):
        status, _, err = run(capsys, "--dir", str(node_dir), *argv)
        assert status == 1 and "not a database" in one_line_error(err)
    status, out, _ = run(capsys, "--dir", str(node_dir), "fsck")
    assert status == 1 and "not a database" in out
