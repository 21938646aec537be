"""What the CLI says it did (issue 14 item 6): every normalisation, imports that
add nothing, undecodable input by line, and private files whatever the umask."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.cli import main as hashmesh
from node.ledger import Ledger
from node.ledger.provision import init_node

ORIGIN = "cli.example/hashmesh"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = hashmesh(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def node(tmp_path: Path) -> str:
    path = tmp_path / "n"
    init_node(path, ORIGIN)
    return str(path)


def _checkpoints(node: str) -> list[tuple[int, str]]:
    with Ledger.open(Path(node), read_only=True) as ledger:
        return [(r.size, r.note) for r in ledger.stored_checkpoints(ledger.own_log)]


def test_add_reports_each_label_it_lower_cases(
    node: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(
        capsys,
        "--dir",
        node,
        "add",
        "--type",
        "sha256",
        "--value",
        "ab" * 32,
        "--label",
        "SRC:A",
        "--label",
        "iwf:category-a",
        "--label",
        " Mixed:Case ",
    )
    assert status == 0, err
    assert "label 'SRC:A' stored as 'src:a'" in err
    assert "label ' Mixed:Case ' stored as 'mixed:case'" in err
    assert "iwf:category-a" not in err  # already canonical: nothing to report
    _, out, _ = run(capsys, "--dir", node, "log")
    assert "src:a" in out and "mixed:case" in out


def test_an_import_that_adds_nothing_says_so_and_signs_nothing(
    node: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("ab" * 32 + "\n" + "cd" * 32 + "\n", encoding="utf-8")
    status, out, err = run(capsys, "--dir", node, "import", str(listing), "--type", "sha256")
    assert status == 0 and "checkpoint signed" in out, err
    before = _checkpoints(node)
    status, out, err = run(capsys, "--dir", node, "import", str(listing), "--type", "sha256")
    assert status == 0, err
    assert "imported 0 entries" in out
    assert "nothing new to import" in out and "no checkpoint signed" in out
    assert "skipped 2 hashes already listed" in out
    assert _checkpoints(node) == before  # no new checkpoint, the latest one untouched
    # A duplicate add signs nothing either.
    status, _, err = run(capsys, "--dir", node, "add", "--type", "sha256", "--value", "ab" * 32)
    assert status == 0 and "already listed" in err
    assert _checkpoints(node) == before


@pytest.mark.parametrize("bad_line", [1, 2, 150, 3000])
def test_non_utf8_input_names_the_line(
    node: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], bad_line: int
) -> None:
    lines = [b"%064x" % i for i in range(3000)]
    lines[bad_line - 1] = lines[bad_line - 1][:10] + b"\xff" + lines[bad_line - 1][11:]
    listing = tmp_path / "latin.txt"
    listing.write_bytes(b"\n".join(lines) + b"\n")
    status, _, err = run(capsys, "--dir", node, "import", str(listing), "--type", "sha256")
    assert status == 1
    assert f"line {bad_line} has bytes that are not UTF-8" in err
    assert "nothing was imported" in err and "Traceback" not in err
    status, out, _ = run(capsys, "--dir", node, "status", "--json")
    assert json.loads(out)["size"] == 0


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
def test_node_files_are_private_whatever_the_umask(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = tmp_path / "n"
    status, _, err = run(capsys, "init", "--dir", str(node), "--origin", ORIGIN)
    assert status == 0, err
    with Ledger.open(node):
        # The -wal and -shm files exist while the database is open.
        files = [p for p in node.rglob("*") if p.is_file()]
        names = {p.name for p in files}
        assert {"config.toml", "signing.key", "ledger.db", "node.key", "node.crt"} <= names
        assert "ledger.db-wal" in names
        wrong = {str(p.relative_to(node)): oct(_mode(p)) for p in files if _mode(p) != 0o600}
    assert wrong == {}
    dirs = [node, *(p for p in node.rglob("*") if p.is_dir())]
    assert {str(d): oct(_mode(d)) for d in dirs if _mode(d) != 0o700} == {}
