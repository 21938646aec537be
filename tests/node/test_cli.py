"""The hashmesh and python -m protocol command lines, end to end on real files."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from node.cli import build_parser
from node.cli import main as hashmesh
from protocol.__main__ import main as audit

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = "cli.example/hashmesh"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = hashmesh(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    path = str(tmp_path / "n")
    status, out, _ = run(capsys, "init", "--dir", path, "--origin", ORIGIN)
    assert status == 0 and "verifier key: cli.example/hashmesh+" in out
    return path


def test_init_twice_fails_clearly(node: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "init", "--dir", node, "--origin", ORIGIN)
    assert status == 1 and "already holds a hashmesh node" in err


def test_missing_node_names_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "--dir", str(tmp_path / "none"), "status")
    assert status == 1 and "hashmesh init" in err


def test_hashmesh_dir_env(
    node: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HASHMESH_DIR", node)
    status, out, _ = run(capsys, "vkey")
    assert status == 0 and out.startswith(ORIGIN + "+")


def test_add_prints_index_and_normalises(node: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(
        capsys,
        "--dir",
        node,
        "add",
        "--type",
        "md5",
        "--value",
        "AB" * 16,
        "--label",
        "IWF:category-a",
    )
    assert (status, out.strip()) == (0, "0")
    assert "lower" in err
    status, out, err = run(capsys, "--dir", node, "add", "--type", "md5", "--value", "ab" * 16)
    assert (status, out.strip()) == (0, "0") and "already listed as entry 0" in err
    status, out, _ = run(capsys, "--dir", node, "log")
    assert "md5 " + "ab" * 16 in out and "iwf:category-a" in out


def test_add_rejects_type_confusion(node: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "--dir", node, "add", "--type", "pdq", "--value", "ab" * 32)
    assert status == 1 and "quality" in err
    status, _, err = run(capsys, "--dir", node, "add", "--type", "sha1", "--value", "ab" * 32)
    assert status == 1 and "value" in err


def test_import_reports_lines_and_writes_nothing(
    node: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("ab" * 32 + "\nnot-a-hash\n" + "cd" * 32 + "\n")
    status, _, err = run(capsys, "--dir", node, "import", str(listing), "--type", "sha256")
    assert status == 1
    assert "line 2" in err and "nothing was imported" in err
    status, out, _ = run(capsys, "--dir", node, "status", "--json")
    assert json.loads(out)["size"] == 0
    status, out, err = run(
        capsys,
        "--dir",
        node,
        "import",
        str(listing),
        "--type",
        "sha256",
        "--skip-invalid",
    )
    assert status == 0 and "imported 2 entries" in out and "skipped: line 2" in err


def test_retract_errors_and_status(node: str, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "--dir", node, "add", "--type", "sha1", "--value", "ab" * 20)
    status, _, err = run(capsys, "--dir", node, "retract", "7", "--reason", "x")
    assert status == 1 and "entry 7 does not exist" in err
    status, out, _ = run(capsys, "--dir", node, "retract", "0", "--reason", "reviewed")
    assert (status, out.strip()) == (0, "1")
    status, _, err = run(capsys, "--dir", node, "retract", "0", "--reason", "again")
    assert status == 1 and "already retracted" in err
    status, out, _ = run(capsys, "--dir", node, "status", "--json")
    doc = json.loads(out)
    assert (doc["size"], doc["retracted"], doc["active_by_signal_type"]) == (2, 1, {})


def test_proofs_verify_with_protocol_cli(
    node: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(5):
        run(capsys, "--dir", node, "add", "--type", "sha256", "--value", f"{i:064x}")
    vkey = tmp_path / "vkey"
    vkey.write_text(run(capsys, "--dir", node, "vkey")[1])
    old = tmp_path / "old"
    old.write_text(run(capsys, "--dir", node, "checkpoint")[1])
    run(capsys, "--dir", node, "add", "--type", "sha256", "--value", f"{9:064x}")
    new = tmp_path / "new"
    new.write_text(run(capsys, "--dir", node, "checkpoint")[1])
    incl = tmp_path / "incl.json"
    incl.write_text(run(capsys, "--dir", node, "prove", "inclusion", "3", "--json")[1])
    doc = json.loads(incl.read_text())
    assert set(doc) == {"index", "size", "leaf_hash", "hashes"} and doc["size"] == 6
    cons = tmp_path / "cons.json"
    cons.write_text(run(capsys, "--dir", node, "prove", "consistency", "5", "6", "--json")[1])

    assert audit(["verify-checkpoint", str(new), "--vkey", str(vkey)]) == 0
    assert (
        audit(
            [
                "verify-inclusion",
                str(incl),
                "--checkpoint",
                str(new),
                "--vkey",
                str(vkey),
            ]
        )
        == 0
    )
    assert (
        audit(
            [
                "verify-consistency",
                str(cons),
                "--old",
                str(old),
                "--new",
                str(new),
                "--vkey",
                str(vkey),
            ]
        )
        == 0
    )
    capsys.readouterr()
    # the inclusion proof is for size 6: against the size-5 checkpoint it must fail
    assert (
        audit(
            [
                "verify-inclusion",
                str(incl),
                "--checkpoint",
                str(old),
                "--vkey",
                str(vkey),
            ]
        )
        == 1
    )
    assert "size" in capsys.readouterr().err
    # swapped checkpoints
    assert (
        audit(
            [
                "verify-consistency",
                str(cons),
                "--old",
                str(new),
                "--new",
                str(old),
                "--vkey",
                str(vkey),
            ]
        )
        == 1
    )
    # a checkpoint of this log never verifies under another key
    other = tmp_path / "other"
    run(capsys, "init", "--dir", str(other), "--origin", "other.example/hashmesh")
    other_vkey = tmp_path / "other.vkey"
    other_vkey.write_text(run(capsys, "--dir", str(other), "vkey")[1])
    assert audit(["verify-checkpoint", str(new), "--vkey", str(other_vkey)]) == 1
    assert audit(["verify-checkpoint", str(tmp_path / "missing"), "--vkey", str(vkey)]) == 2


def test_bundle_roundtrip_via_cli(
    node: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(3):
        run(capsys, "--dir", node, "add", "--type", "md5", "--value", f"{i:032x}")
    run(capsys, "--dir", node, "retract", "1", "--reason", "reviewed")
    bundle = tmp_path / "b.bundle"
    status, _, err = run(
        capsys, "--dir", node, "export", "--format", "bundle", "--out", str(bundle)
    )
    assert status == 0 and "wrote bundle" in err
    assert audit(["verify-bundle", str(bundle)]) == 0
    assert "4 entries" in capsys.readouterr().out
    lines = bundle.read_text().splitlines(keepends=True)
    cp_line = lines.index("checkpoints 5\n")
    del lines[cp_line + 2]  # drop one checkpoint: the count no longer matches
    broken = tmp_path / "broken.bundle"
    broken.write_text("".join(lines))
    assert audit(["verify-bundle", str(broken)]) == 1
    status, out, _ = run(capsys, "--dir", node, "fsck")
    assert status == 0 and out.startswith("ok")


def test_console_script_help_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "node", "import", "--help"],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    assert "--skip-invalid" in out and "normalised" in out
    out = subprocess.run(
        [sys.executable, "-m", "protocol", "--help"],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    assert "verify-bundle" in out


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command path of ``parser`` (``("peer", "add")``...)."""
    found: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*path, name))
                found.extend(_commands(sub, (*path, name)))
    return found


def test_every_command_says_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    commands = _commands(parser)
    assert ("serve",) in commands and ("peer", "add") in commands
    overview = parser.format_help()
    for command in commands:
        if len(command) == 1:
            # A line of its own in `hashmesh --help`, not a bare name.
            assert re.search(rf"^    {command[0]}\s+\S", overview, re.M) or re.search(
                rf"^    {command[0]}\n\s+\S", overview, re.M
            ), f"`hashmesh --help` gives {command[0]} no summary"
        with pytest.raises(SystemExit) as done:
            hashmesh([*command, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        described = text.split("\n\n")[1]
        assert not described.startswith(("positional", "options")), f"{command} has no text"


def test_serve_help_names_the_ops_listener_and_the_console(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        hashmesh(["serve", "--help"])
    text = capsys.readouterr().out
    assert "[ops]" in text and "/console/" in text and "docs/configuration.md" in text
