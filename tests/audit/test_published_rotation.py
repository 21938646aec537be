"""A published log across a key rotation: `DIR/rotations`, `hashmesh audit DIR|URL`, `verify-tiles`.

Real ledgers rotate their signing key (`Ledger.rotate_key`), `hashmesh
publish` writes the public tree and the proven rotations, the node's public
listener serves them over real HTTPS; the auditor pins only the first key.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from node.cli import main as hashmesh
from node.ledger import Ledger
from protocol.__main__ import main as protocol_main
from protocol.entry import AddEntry, RotateEntry, parse_entry
from protocol.keys import NoteSigner
from tests.audit.conftest import (
    ORIGIN,
    add_hashes,
    fork_node,
    new_node,
    public_listener,
    run_cli,
    vkey_of,
)

pytestmark = pytest.mark.integration

BEFORE, AFTER = 300, 100  # entries before the rotate entry, and after it


def rotate(node: Path, new: NoteSigner) -> int:
    with Ledger.open(node) as ledger:
        return ledger.rotate_key("scheduled rotation", new_signer=new).index


def publish(node: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    status = hashmesh(["--dir", str(node), "publish", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return captured.out


def verify_tiles(out: Path, vkey: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = protocol_main(["verify-tiles", str(out), "--vkey", vkey])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def audit(
    out: Path, vkey: str, state: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, object], str]:
    status = hashmesh(["audit", str(out), "--vkey", vkey, "--state", str(state), "--json"])
    captured = capsys.readouterr()
    return status, json.loads(captured.out), captured.err


@pytest.fixture
def rotated(tmp_path: Path) -> tuple[Path, str, NoteSigner, int]:
    """A node that rotated its key after BEFORE entries and added AFTER more; its first key."""
    node = new_node(tmp_path, "a", entries=0)
    add_hashes(node, 0, BEFORE, batch=BEFORE)
    first = vkey_of(node)
    new = NoteSigner.generate(ORIGIN)
    index = rotate(node, new)
    add_hashes(node, BEFORE, AFTER, batch=AFTER)
    return node, first, new, index


def test_published_log_is_followed_across_a_rotation(
    tmp_path: Path,
    rotated: tuple[Path, str, NoteSigner, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    node, first, new, index = rotated
    out = tmp_path / "published"
    publish(node, out, capsys)

    listed = json.loads((out / "rotations").read_bytes())
    assert listed["origin"] == ORIGIN and [r["index"] for r in listed["rotations"]] == [index]
    # What is public: the rotate entry (its key, reason and own salt), no add entry.
    with Ledger.open(node, read_only=True) as ledger:
        written = [parse_entry(bytes(d)) for _i, d, _h in ledger.entries(ledger.own_log)]
    adds = [e for e in written if isinstance(e, AddEntry)]
    assert len(adds) == BEFORE + AFTER
    public = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert not any(e.value.encode() in public or (e.salt or "").encode() in public for e in adds)
    [rotation] = [e for e in written if isinstance(e, RotateEntry)]
    assert rotation.key == new.verifier().to_text()

    status, stdout, stderr = verify_tiles(out, first, capsys)
    assert status == 0, stderr
    assert f"size {BEFORE + 1 + AFTER}" in stdout
    assert f"1 key rotation(s) followed (rotate entries {index})" in stdout

    state = tmp_path / "state.json"
    status, report, stderr = audit(out, first, state, capsys)
    assert status == 0, stderr
    [origin] = report["origins"]  # type: ignore[misc]
    assert origin["status"] == "ok"
    assert origin["keys"] == [first, new.verifier().to_text()]
    assert origin["head_after"]["size"] == BEFORE + 1 + AFTER

    # The saved state holds both keys: the next audit, after growth, needs no rotations file.
    add_hashes(node, BEFORE + AFTER, 50, batch=50)
    publish(node, out, capsys)
    (out / "rotations").unlink()
    status, report, stderr = audit(out, first, state, capsys)
    assert status == 0, stderr


def test_without_or_with_a_damaged_rotations_file_the_audit_fails(
    tmp_path: Path,
    rotated: tuple[Path, str, NoteSigner, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    node, first, _new, _index = rotated
    out = tmp_path / "published"
    publish(node, out, capsys)
    good = (out / "rotations").read_bytes()

    (out / "rotations").unlink()
    status, _out, stderr = verify_tiles(out, first, capsys)
    assert status == 1 and "not signed by the key for that size" in stderr, stderr
    status, report, _err = audit(out, first, tmp_path / "s1.json", capsys)
    assert status == 1
    [origin] = report["origins"]  # type: ignore[misc]
    assert origin["status"] == "failed"

    # Another rotate entry's bytes under the same proof: the inclusion proof fails.
    doc = json.loads(good)
    entry = parse_entry(base64.b64decode(doc["rotations"][0]["entry_b64"]))
    assert isinstance(entry, RotateEntry)
    forged = entry.salted("ab" * 16).to_bytes()
    doc["rotations"][0]["entry_b64"] = base64.b64encode(forged).decode()
    (out / "rotations").write_bytes(json.dumps(doc).encode())
    status, _out, stderr = verify_tiles(out, first, capsys)
    assert status == 1 and "inclusion proof for index 300 at size 301" in stderr, stderr
    status, report, _err = audit(out, first, tmp_path / "s2.json", capsys)
    assert status == 1
    failures = report["failures"]
    assert isinstance(failures, list) and any(f["check"] == "rotation" for f in failures), failures


def test_a_rotation_from_another_history_is_caught(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The old key signed two trees at r + 1: the published one must extend the attesting one."""
    node = new_node(tmp_path, "a")
    add_hashes(node, 0, BEFORE, batch=BEFORE)
    first = vkey_of(node)
    twin = fork_node(node, tmp_path / "twin")  # same old key, same first BEFORE entries
    new = NoteSigner.generate(ORIGIN)
    rotate(node, new)
    add_hashes(node, BEFORE, AFTER, batch=AFTER)
    rotate(twin, new)  # the same new key, but another rotate entry (another salt): another tree
    out, twin_out = tmp_path / "published", tmp_path / "twin-published"
    publish(node, out, capsys)
    publish(twin, twin_out, capsys)
    (out / "rotations").write_bytes((twin_out / "rotations").read_bytes())

    status, _out, stderr = verify_tiles(out, first, capsys)
    assert status == 1 and "forked before the rotation" in stderr, stderr
    status, report, _err = audit(out, first, tmp_path / "state.json", capsys)
    assert status == 1, report
    failures = report["failures"]
    assert isinstance(failures, list) and [f["check"] for f in failures] == ["consistency"]
    assert failures[0]["evidence"] is not None  # the two trees the old key signed


async def test_public_listener_serves_the_rotations(
    tmp_path: Path, rotated: tuple[Path, str, NoteSigner, int]
) -> None:
    node, first, new, index = rotated
    async with public_listener(node) as (url, cert):
        args = [
            "audit", url, "--published", "--ca", str(cert),
            "--vkey", first, "--state", str(tmp_path / "state.json"), "--json",
        ]  # fmt: skip
        audited = await run_cli(*args)
    assert audited.status == 0, audited.stdout + audited.stderr
    [origin] = audited.json()["origins"]  # type: ignore[misc]
    assert origin["keys"] == [first, new.verifier().to_text()]
    assert index == BEFORE
