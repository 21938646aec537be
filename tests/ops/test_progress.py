"""Progress of long commands: a bar with a percentage on a terminal, nothing otherwise.

Every long command runs for real, in this process, with its standard error
once on a pseudo-terminal (``pty``: ``isatty()`` is true, as for an operator
at a shell) and once captured (not a terminal: cron, CI, ``2> log``). On the
terminal each must draw its bar, named after the part of the work, up to
100 %; captured, it must write no bar at all (no carriage return, no
percentage), only its usual notes.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import struct
import sys
import termios
import threading
from pathlib import Path

import pytest

from node.cli import main as hashmesh
from node.config import load_config
from node.ledger import Ledger
from tests.adversary.corrupter import tamper
from tests.api.conftest import add_peer, make_identity
from tests.sync.conftest import (
    AUTHOR,
    FOLLOWER,
    add_entries,
    author_and_follower,
    make_node,
    shutdown,
)
from tests.sync.test_repair import DAMAGE

VICS_US = "http://github.com/VICSDATAMODEL/ProjectVic/DataModels/2.0.xml/US/$metadata#Cases"
ENTRIES = 600  # more than two full tiles, and several pages of leaf hashes


async def run(tty: bool, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run ``hashmesh ARGV`` in a worker thread; its status and what its stderr showed.

    With ``tty`` its standard error is a pseudo-terminal 200 columns wide,
    read to the end by a thread (a full terminal buffer would block it).
    """
    capsys.readouterr()
    if not tty:
        status = await asyncio.to_thread(hashmesh, list(argv))
        return status, capsys.readouterr().err
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer closed it
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    terminal = os.fdopen(slave, "w", encoding="utf-8")
    saved = sys.stderr
    sys.stderr = terminal
    try:
        status = await asyncio.to_thread(hashmesh, list(argv))
    finally:
        sys.stderr = saved
        terminal.close()
        await asyncio.to_thread(reader.join, 30)
        os.close(master)
    return status, b"".join(chunks).decode("utf-8", "replace")


def shows(tty: bool, drawn: str, *parts: str) -> None:
    """On a terminal a bar for each part reached 100 %; elsewhere no bar at all."""
    if tty:
        assert "\r" in drawn and "100%" in drawn, drawn
        for part in parts:
            assert part in drawn, (part, drawn)
    else:
        assert "\r" not in drawn and "%|" not in drawn, drawn
        assert not any(part in drawn for part in parts), drawn


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "captured"])
async def test_local_long_commands(
    tty: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = make_node(tmp_path, "a", AUTHOR)
    add_entries(a, 0, ENTRIES)
    at = ["--dir", str(a)]

    status, drawn = await run(tty, capsys, *at, "fsck")
    assert status == 0
    shows(tty, drawn, f"fsck {AUTHOR}")

    tamper(a / "ledger.db", "DELETE FROM active WHERE idx = 8")
    status, drawn = await run(tty, capsys, *at, "fsck", "--repair")
    assert status == 0, drawn
    shows(
        tty,
        drawn,
        f"fsck --repair check {AUTHOR}",
        f"fsck --repair rebuild {AUTHOR}",
        f"fsck --repair fsck {AUTHOR}",
    )

    published = tmp_path / "published"
    status, drawn = await run(tty, capsys, *at, "publish", "--out", str(published))
    assert status == 0
    shows(tty, drawn, f"publish {published}")

    bundle = tmp_path / "a.bundle"
    status, drawn = await run(
        tty, capsys, *at, "export", "--format", "bundle", "--out", str(bundle)
    )
    assert status == 0
    shows(tty, drawn, "export bundle")

    vkey = (await asyncio.to_thread(_vkey, a)).strip()
    state = ["--state", str(tmp_path / "audit.json"), "--no-save", "--vkey", vkey]
    status, drawn = await run(tty, capsys, "audit", str(published), *state)
    assert status == 0, drawn
    shows(tty, drawn, f"audit {AUTHOR} from {published}")
    status, drawn = await run(tty, capsys, "audit", str(bundle), *state)
    assert status == 0, drawn
    shows(tty, drawn, f"audit {AUTHOR} from {bundle}")

    backup = tmp_path / "a.backup"
    status, drawn = await run(tty, capsys, *at, "backup", "--out", str(backup))
    assert status == 0
    shows(tty, drawn, "backup copy the database", "backup write a.backup")
    assert "keep it encrypted" in drawn  # the note is still there

    status, drawn = await run(tty, capsys, "--dir", str(tmp_path / "r"), "restore", str(backup))
    assert status == 0
    shows(tty, drawn, "restore checksum a.backup", "restore unpack a.backup")

    lines = tmp_path / "more.txt"
    lines.write_text("".join(f"{i:064x}\n" for i in range(1000)), encoding="ascii")
    status, drawn = await run(tty, capsys, *at, "import", str(lines), "--type", "sha256")
    assert status == 0, drawn
    shows(tty, drawn, f"import {lines}")

    # A VICS document is streamed: its bar counts the document's bytes, so it
    # has a percentage too (a count of media items would have no total).
    document = tmp_path / "case.json"
    media = [
        {"MediaID": i, "Category": 1, "MediaSize": 10, "Tags": [], "MD5": f"{i:032x}"}
        for i in range(1, 3000)
    ]
    document.write_text(
        json.dumps({"@odata.context": VICS_US, "value": [{"CaseID": "c", "Media": media}]}),
        encoding="utf-8",
    )
    status, drawn = await run(
        tty, capsys, *at, "import", str(document), "--profile", "projectvic-us"
    )
    assert status == 0, drawn
    shows(tty, drawn, f"import {document}")


def _vkey(node_dir: Path) -> str:
    with Ledger.open(node_dir, read_only=True) as ledger:
        return ledger.own_log.verifier_key


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "captured"])
async def test_long_commands_over_the_network(
    tty: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """sync, audit of a live node, repair --from-peers and recover, against real servers."""
    a = make_node(tmp_path, "a", AUTHOR)
    b = make_node(tmp_path, "b", FOLLOWER)
    with (b / "config.toml").open("a", encoding="utf-8") as f:
        f.write("\n[scrub]\nentries_per_second = 0\n")
    add_entries(a, 0, ENTRIES)
    auditor = make_identity(tmp_path, "auditor")
    add_peer(a, auditor, "auditor")
    served_a, served_b = await author_and_follower(a, b)
    try:
        # A backup of A knowing B; A writes on, B follows (the restored A fetches it back).
        backup = tmp_path / "a.backup"
        backup_a = ["--dir", str(a), "backup", "--out", str(backup)]
        assert await asyncio.to_thread(hashmesh, backup_a) == 0
        add_entries(a, ENTRIES, ENTRIES)

        status, drawn = await run(tty, capsys, "--dir", str(b), "sync")
        assert status == 0, drawn
        shows(tty, drawn, f"sync {AUTHOR}")

        a_cert = load_config(a).tls_cert_path
        status, drawn = await run(
            tty,
            capsys,
            "audit",
            served_a.url,
            "--server-cert",
            str(a_cert),
            "--cert",
            str(auditor.cert_path),
            "--key",
            str(auditor.key_path),
            "--vkey",
            await asyncio.to_thread(_vkey, a),
            "--state",
            str(tmp_path / "audit.json"),
        )
        assert status == 0, drawn
        shows(tty, drawn, f"audit {AUTHOR} from {served_a.url}")
        await shutdown(served_a)

        tamper(a / "ledger.db", DAMAGE)  # entry 25 of A
        status, drawn = await run(tty, capsys, "--dir", str(a), "repair", "--from-peers")
        assert status == 0, drawn
        shows(tty, drawn, f"repair check {AUTHOR}", f"repair rebuild {AUTHOR}")

        restored = tmp_path / "restored"
        assert (
            await asyncio.to_thread(hashmesh, ["--dir", str(restored), "restore", str(backup)]) == 0
        )
        status, drawn = await run(tty, capsys, "--dir", str(restored), "recover")
        assert status == 0, drawn
        assert f"size {2 * ENTRIES:,}" in drawn  # B's answer: what it held of A
        shows(tty, drawn, f"recover {AUTHOR}")
    finally:
        await shutdown(served_b)
        if not served_a.task.done():
            await shutdown(served_a)
