"""`hashmesh witness attach` / `publish --cosignatures`: a published checkpoint carries witnesses' cosignatures.

Real nodes, real keys, real files: the origin publishes with `hashmesh
publish --out DIR`, witnesses that follow it run `hashmesh witness feed DIR
--out FILE`, and the origin attaches FILE. Each cosignature line is checked
before anything is kept; a refused file leaves nothing behind.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from node.cli import main as cli
from node.config import WitnessAsk, append_witness_setting
from node.ledger import Ledger
from node.ledger.provision import init_node
from protocol.__main__ import main as protocol_cli
from protocol.checkpoint import open_checkpoint
from protocol.keys import NoteVerifier
from protocol.note import parse_note
from tests.witness.conftest import ORIGIN, WITNESS, append, fork, witness_vkey


def run(capsys: pytest.CaptureFixture[str], node: Path, *argv: str) -> tuple[int, str, str]:
    status = cli(["--dir", str(node), *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def follower(tmp_path: Path, name: str, origin_dir: Path) -> Path:
    """Another node that follows ORIGIN, so it may witness it."""
    path = tmp_path / name
    init_node(path, f"{name}.example/hashmesh")
    with Ledger.open(origin_dir, read_only=True) as origin:
        vkey = origin.own_log.verifier_key
    with Ledger.open(path) as ledger:
        ledger.follow(ORIGIN, vkey)
    return path


def held_witnesses(origin_dir: Path) -> set[str]:
    with Ledger.open(origin_dir, read_only=True) as ledger:
        latest = ledger.latest_checkpoint()
        return {
            c.witness for c in ledger.witnessing.cosignatures(ledger.own_log.log_id, latest.size)
        }


@pytest.fixture
def published(tmp_path: Path, origin_dir: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    append(origin_dir, 300)
    out = tmp_path / "published"
    assert run(capsys, origin_dir, "publish", "--out", str(out))[0] == 0
    return out


def feed(capsys: pytest.CaptureFixture[str], witness: Path, published: Path, out: Path) -> Path:
    status, stdout, stderr = run(
        capsys, witness, "witness", "feed", str(published), "--out", str(out)
    )
    assert status == 0, stdout + stderr
    return out


def test_published_checkpoint_carries_two_witnesses(
    tmp_path: Path,
    origin_dir: Path,
    witness_dir: Path,
    published: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    second = follower(tmp_path, "w2", origin_dir)
    files = [
        feed(capsys, witness_dir, published, tmp_path / "w1.cosigned"),
        feed(capsys, second, published, tmp_path / "w2.cosigned"),
    ]
    keys = [witness_vkey(witness_dir), witness_vkey(second)]
    args = ["publish", "--out", str(published)]
    for path in files:
        args += ["--cosignatures", str(path)]
    for key in keys:
        args += ["--witness-key", key.to_text()]
    status, stdout, stderr = run(capsys, origin_dir, *args)
    assert status == 0, stdout + stderr
    assert (
        f"checkpoint 300 of {ORIGIN} cosigned by {WITNESS}/witness (1 new line(s) kept)" in stdout
    )
    assert "wrote the checkpoint" in stdout

    note = (published / "checkpoint").read_text(encoding="utf-8")
    with Ledger.open(origin_dir, read_only=True) as ledger:
        vkey = NoteVerifier.from_text(ledger.own_log.verifier_key)
    verified = open_checkpoint(note, vkey, witnesses=keys, witness_threshold=2)
    assert set(verified.cosignatures) == {k.name for k in keys}
    assert held_witnesses(origin_dir) == {k.name for k in keys}
    # protocol/ alone checks the published directory with both witnesses required.
    witnesses = [arg for key in keys for arg in ("--witness", key.to_text())]
    alone = ["verify-tiles", str(published), "--vkey", vkey.to_text(), *witnesses]
    assert protocol_cli([*alone, "--witness-threshold", "2"]) == 0
    # Attaching the same file again keeps nothing new and changes nothing.
    status, stdout, _ = run(
        capsys, origin_dir, "witness", "attach", str(files[0]), "--witness-key", keys[0].to_text()
    )
    assert status == 0 and "(0 new line(s) kept)" in stdout
    assert (published / "checkpoint").read_text(encoding="utf-8") == note


def test_configured_witness_needs_no_key_and_bare_lines_attach(
    tmp_path: Path,
    origin_dir: Path,
    witness_dir: Path,
    published: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, stdout, stderr = run(capsys, witness_dir, "witness", "feed", str(published))
    assert status == 0, stderr
    line = stdout.splitlines()[-1]
    assert line.startswith(f"— {WITNESS}/witness ")
    lines = tmp_path / "lines.txt"
    lines.write_text(line + "\n", encoding="utf-8")
    # A witness asked ([[witness.ask]], as `witness add` writes it) needs no --witness-key.
    append_witness_setting(
        origin_dir, WitnessAsk(peer="w", key=witness_vkey(witness_dir).to_text())
    )
    status, stdout, stderr = run(capsys, origin_dir, "witness", "attach", str(lines))
    assert status == 0, stdout + stderr
    assert held_witnesses(origin_dir) == {f"{WITNESS}/witness"}


def _flip_signature(text: str) -> str:
    """The cosigned note with one bit of the witness's signature flipped."""
    assert len(parse_note(text).signatures) == 2  # the log's, then the witness's
    *head, last = text.rstrip("\n").split("\n")
    prefix, payload = last.rsplit(" ", 1)
    raw = bytearray(base64.b64decode(payload))
    raw[-1] ^= 1
    return "\n".join([*head, f"{prefix} {base64.b64encode(bytes(raw)).decode()}"]) + "\n"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("bad-signature", f"cosignature by {WITNESS}/witness does not verify"),
        ("unknown-witness", f"cosignature by {WITNESS}/witness (key ID"),
        ("other-origin", "is a checkpoint of 'other.example/hashmesh'"),
        ("not-held", "holds no checkpoint of size 310 with that root"),
        ("no-cosignature", "holds no witness cosignature line"),
        ("garbage", "neither a cosigned checkpoint note nor cosignature lines"),
    ],
)
def test_a_bad_file_is_refused_and_nothing_is_kept(
    tmp_path: Path,
    origin_dir: Path,
    witness_dir: Path,
    published: Path,
    capsys: pytest.CaptureFixture[str],
    damage: str,
    message: str,
) -> None:
    good = feed(capsys, witness_dir, published, tmp_path / "good.cosigned")
    text = good.read_text(encoding="utf-8")
    keys = ["--witness-key", witness_vkey(witness_dir).to_text()]
    if damage == "bad-signature":
        text = _flip_signature(text)
    elif damage == "unknown-witness":
        keys = []
    elif damage == "other-origin":
        other = tmp_path / "other"
        init_node(other, "other.example/hashmesh")
        append(other, 3)
        with Ledger.open(other, read_only=True) as ledger:
            text = ledger.latest_checkpoint().note
    elif damage == "not-held":
        # Signed by the origin's key, cosigned, but not a checkpoint the origin holds:
        # a copy of it (same key) grew on its own and was published and witnessed.
        copy = fork(origin_dir, tmp_path / "copy")
        append(copy, 10, tag="copy")
        assert run(capsys, copy, "publish", "--out", str(tmp_path / "copy-published"))[0] == 0
        text = feed(capsys, witness_dir, tmp_path / "copy-published", tmp_path / "c").read_text()
    elif damage == "no-cosignature":
        with Ledger.open(origin_dir, read_only=True) as ledger:
            text = ledger.latest_checkpoint().note
    else:
        text = "not a note\n"
    bad = tmp_path / "bad.cosigned"
    bad.write_text(text, encoding="utf-8")
    before = (published / "checkpoint").read_bytes()
    args = ["publish", "--out", str(published), "--cosignatures", str(good)]
    args += ["--cosignatures", str(bad), *keys]
    status, stdout, stderr = run(capsys, origin_dir, *args)
    assert status == 1, stdout
    assert message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr  # one clear line, no traceback
    # All or nothing: the good file was not kept either, the checkpoint is unchanged.
    assert held_witnesses(origin_dir) == set()
    assert (published / "checkpoint").read_bytes() == before
