"""The auditor's state file: round trip, atomic replace, corruption refused with a clear error."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from node.audit.state import (
    STATE_ENV,
    AuditState,
    OriginState,
    default_state_path,
    load_state,
    locked_state,
    save_state,
)
from node.cli import main as cli
from node.errors import AuditStateError
from protocol.audit import AuditHead
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.keys import NoteSigner
from protocol.rotation import KeyChain
from protocol.tree import CompactRange
from tests.audit.conftest import ORIGIN, export_bundle, new_node, vkey_of


def _state(size: int = 5) -> AuditState:
    signer = NoteSigner.generate(ORIGIN)
    tree = CompactRange.empty()
    tree.extend([bytes([i]) * 32 for i in range(size)])
    note = sign_checkpoint(Checkpoint(origin=ORIGIN, size=size, root_hash=tree.root()), signer)
    head = AuditHead.from_tree(tree, note)
    return AuditState({ORIGIN: OriginState(KeyChain.pinned(signer.verifier()), head, "t")})


def test_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state.json"
    assert load_state(path) == AuditState()  # no file yet: a first audit
    state = _state()
    save_state(path, state)
    assert load_state(path) == state
    save_state(path, _state(7))
    assert load_state(path).origins[ORIGIN].head.size == 7  # type: ignore[union-attr]
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]  # no temp left


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda d: d[: len(d) // 2], "state: invalid JSON"),
        (lambda d: d.replace('"size":5', '"size":4'), "head.frontier: size 4 needs 1"),
        (lambda d: d.replace('"root":"', '"root":"zz', 1), "head.root"),
        (lambda d: d.replace('"hashmesh_audit_state":1', '"hashmesh_audit_state":2'), "version"),
        (lambda d: d.replace('"audited_at"', '"audited"'), "audited: unknown field"),
        (lambda d: d.replace('"keys":[', '"keys":[1,', 1), "keys[0]: expected a JSON object"),
    ],
)
def test_corruption_is_refused_naming_the_field(
    tmp_path: Path, damage: Callable[[str], str], named: str
) -> None:
    path = tmp_path / "state.json"
    save_state(path, _state())
    changed = damage(path.read_text())
    assert changed != path.read_text()
    path.write_text(changed)
    with pytest.raises(AuditStateError) as e:
        load_state(path)
    assert named in str(e.value), str(e.value)
    assert str(path) in str(e.value) and "is corrupt" in str(e.value)


def test_a_flipped_frontier_hash_or_root_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_state(path, _state())
    doc = json.loads(path.read_text())
    head = doc["origins"][ORIGIN]["head"]
    original = head["frontier"][0]
    head["frontier"][0] = ("0" if original[0] != "0" else "1") + original[1:]
    path.write_text(json.dumps(doc))
    with pytest.raises(AuditStateError, match=r"head\.frontier: frontier of size 5 does not"):
        load_state(path)
    head["frontier"][0] = original
    head["root"] = "00" * 32
    path.write_text(json.dumps(doc))
    with pytest.raises(
        AuditStateError, match=r"head\.frontier: frontier of size 5 does not produce"
    ):
        load_state(path)


def test_a_head_note_not_signed_by_the_saved_key_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_state(path, _state())
    doc = json.loads(path.read_text())
    doc["origins"][ORIGIN]["keys"][0]["vkey"] = NoteSigner.generate(ORIGIN).verifier().to_text()
    path.write_text(json.dumps(doc))
    with pytest.raises(AuditStateError, match=r"head\.note: does not verify under the saved key"):
        load_state(path)


def test_cli_reports_a_corrupt_state_and_audits_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    node = new_node(tmp_path, "a", entries=3)
    bundle = export_bundle(node, tmp_path / "a.bundle")
    state = tmp_path / "state.json"
    assert cli(["audit", str(bundle), "--vkey", vkey_of(node), "--state", str(state)]) == 0
    capsys.readouterr()
    state.write_bytes(state.read_bytes()[:-40])
    before = state.read_bytes()
    assert cli(["audit", str(bundle), "--state", str(state)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: the audit state {state} is corrupt (state: invalid JSON")
    assert "nothing was audited" in err and "move it away to start over" in err
    assert state.read_bytes() == before  # untouched


def test_default_path_and_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STATE_ENV, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_path() == tmp_path / "xdg" / "hashmesh" / "audit-state.json"
    monkeypatch.setenv(STATE_ENV, str(tmp_path / "mine.json"))
    assert default_state_path() == tmp_path / "mine.json"
    path = tmp_path / "s.json"
    with (
        locked_state(path),
        pytest.raises(AuditStateError, match="another audit is using"),
        locked_state(path),
    ):
        pass
    with locked_state(path):  # released
        assert os.path.exists(str(path) + ".lock")
