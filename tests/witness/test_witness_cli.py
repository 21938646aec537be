"""`hashmesh witness ...` and `hashmesh follow --witness`: keys and settings in config.toml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.cli import main as cli
from node.config import load_config
from node.ledger import Ledger
from protocol.keys import SIG_COSIGNATURE_V1, NoteVerifier
from tests.witness.conftest import ORIGIN, WITNESS, add_card, append, request


def run(capsys: pytest.CaptureFixture[str], node: Path, *argv: str) -> tuple[int, str, str]:
    status = cli(["--dir", str(node), *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_vkey_is_made_once_and_kept_private(
    witness_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, witness_dir, "witness", "vkey")
    assert status == 0
    key = NoteVerifier.from_text(out.strip())
    assert key.name == f"{WITNESS}/witness" and key.sig_type == SIG_COSIGNATURE_V1
    assert (witness_dir / "witness.key").stat().st_mode & 0o777 == 0o600
    assert run(capsys, witness_dir, "witness", "vkey")[1] == out
    (witness_dir / "witness.key").chmod(0o644)
    status, _, err = run(capsys, witness_dir, "witness", "vkey")
    assert status == 1 and "chmod 600" in err


def test_add_and_require_write_config_toml(
    origin_dir: Path, witness_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wkey = run(capsys, witness_dir, "witness", "vkey")[1].strip()
    status, _, err = run(capsys, origin_dir, "witness", "add", WITNESS, wkey)
    assert status == 1 and "no peer named" in err
    add_card(origin_dir, witness_dir, "https://127.0.0.1:1")
    assert run(capsys, origin_dir, "witness", "add", WITNESS, wkey)[0] == 0
    before = (origin_dir / "config.toml").read_text()
    status, _, err = run(capsys, origin_dir, "witness", "add", WITNESS, wkey)
    assert status == 1 and "listed twice" in err
    assert (origin_dir / "config.toml").read_text() == before  # refused: nothing written
    assert load_config(origin_dir).witness.ask[0].key == wkey

    # A log key (0x01) is not a witness key.
    with Ledger.open(origin_dir, read_only=True) as ledger:
        log_key = ledger.own_log.verifier_key
    status, _, err = run(
        capsys, witness_dir, "witness", "require", ORIGIN, "--key", log_key, "--threshold", "1"
    )
    assert status == 1 and "cosignature/v1" in err
    status, _, err = run(
        capsys, witness_dir, "witness", "require", ORIGIN, "--key", wkey, "--threshold", "2"
    )
    assert status == 1 and "threshold 2" in err
    status, _, _ = run(
        capsys, witness_dir, "witness", "require", ORIGIN, "--key", wkey, "--threshold", "1"
    )
    assert status == 0
    requirement = load_config(witness_dir).witness.requirement_for(ORIGIN)
    assert requirement is not None and requirement.threshold == 1
    assert "# hashmesh node configuration" in (witness_dir / "config.toml").read_text()


def test_follow_with_witness_keys(
    tmp_path: Path, origin_dir: Path, witness_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wkey = run(capsys, witness_dir, "witness", "vkey")[1].strip()
    other = tmp_path / "other"
    assert cli(["init", "--dir", str(other), "--origin", "hotline-o.example/hashmesh"]) == 0
    with Ledger.open(origin_dir, read_only=True) as ledger:
        log_key = ledger.own_log.verifier_key
    status, out, _ = run(capsys, other, "follow", ORIGIN, log_key, "--witness", wkey)
    assert status == 0 and "cosigned by 1 of 1" in out
    requirement = load_config(other).witness.requirement_for(ORIGIN)
    assert requirement is not None and requirement.keys == (wkey,)


def test_status_reports_what_was_witnessed(
    origin_dir: Path, witness_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    append(origin_dir, 3)
    r = request(origin_dir, 0)
    with Ledger.open(witness_dir) as ledger:
        ledger.witness().add_checkpoint(0, r.proof, r.note)
    status, out, _ = run(capsys, witness_dir, "witness", "status", "--json")
    assert status == 0
    doc = json.loads(out)
    assert [(s["origin"], s["size"]) for s in doc["witnessed"]] == [(ORIGIN, 3)]
    status, out, _ = run(capsys, witness_dir, "witness", "status")
    assert f"witnessed {ORIGIN}: size 3" in out
