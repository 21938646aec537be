"""Offline audits of bundles: tampering, rewrites between audits, rotations, entry rules."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from node.cli import main as cli
from protocol.entry import AddEntry, RetractEntry, RotateEntry
from protocol.evidence import ForkEvidence, verify_fork_evidence
from protocol.keys import NoteSigner, NoteVerifier
from tests.audit.conftest import (
    ORIGIN,
    add_hashes,
    build_bundle,
    export_bundle,
    fork_node,
    new_node,
    vkey_of,
)
from tests.sync.conftest import sha


def audit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = cli(["audit", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def audit_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    status, out, _err = audit(capsys, *args, "--json")
    return status, json.loads(out)


def checks(doc: dict[str, object]) -> list[str]:
    failures = doc["failures"]
    assert isinstance(failures, list)
    return [f["check"] for f in failures]


@pytest.fixture
def node(tmp_path: Path) -> Path:
    path = new_node(tmp_path, "a", entries=6)
    add_hashes(path, 6, 4, batch=2)  # checkpoints 0..6, 8, 10
    return path


@pytest.fixture
def bundle(tmp_path: Path, node: Path) -> Path:
    return export_bundle(node, tmp_path / "a.bundle")


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_an_honest_bundle_passes_and_the_state_remembers_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, node: Path, bundle: Path
) -> None:
    state = tmp_path / "state.json"
    status, out, _ = audit(capsys, str(bundle), "--vkey", vkey_of(node), "--state", str(state))
    assert status == 0, out
    assert f"ok   origin={ORIGIN} (first audit, head now 10)" in out
    assert "9 checkpoint(s) verified, 10 leaf hashes from 0" in out
    saved = json.loads(state.read_text())
    assert saved["origins"][ORIGIN]["head"]["size"] == 10
    assert saved["origins"][ORIGIN]["keys"][0]["vkey"] == vkey_of(node)


def test_one_altered_leaf_fails_leaves(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, node: Path, bundle: Path
) -> None:
    lines = lines_of(bundle)
    at = lines.index("leaves 10\n") + 1 + 7  # leaf 7
    other = AddEntry.create(signal_type="sha256", value=sha(999)).to_bytes()
    lines[at] = base64.b64encode(other).decode() + "\n"
    bundle.write_text("".join(lines), encoding="utf-8")
    status, doc = audit_json(
        capsys, str(bundle), "--vkey", vkey_of(node), "--state", str(tmp_path / "s")
    )
    assert status == 1
    assert checks(doc) == ["leaves"]
    failure = doc["failures"][0]  # type: ignore[index]
    assert (failure["old_size"], failure["new_size"]) == (0, 10)
    assert "do not produce the signed root of size 10" in failure["message"]


def test_a_removed_checkpoint_line_is_a_format_failure(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, node: Path, bundle: Path
) -> None:
    lines = lines_of(bundle)
    del lines[lines.index("checkpoints 9\n") + 4]  # the count still says 9
    bundle.write_text("".join(lines), encoding="utf-8")
    status, out, _ = audit(
        capsys, str(bundle), "--vkey", vkey_of(node), "--state", str(tmp_path / "s")
    )
    assert status == 1
    assert f"FAIL format source={bundle}: line 13: expected" in out


def test_a_removed_latest_checkpoint_leaves_unsigned_leaves(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, node: Path, bundle: Path
) -> None:
    lines = lines_of(bundle)
    at = lines.index("checkpoints 9\n")
    lines[at] = "checkpoints 8\n"
    del lines[at + 9]  # the checkpoint of size 10
    bundle.write_text("".join(lines), encoding="utf-8")
    status, out, _ = audit(
        capsys, str(bundle), "--vkey", vkey_of(node), "--state", str(tmp_path / "s")
    )
    assert status == 1
    assert (
        f"FAIL leaves origin={ORIGIN} source={bundle} size 10: 2 leaves after the latest "
        "checkpoint (size 8) are not covered by any signed checkpoint"
    ) in out


def test_a_forged_signature_fails_signature(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, node: Path
) -> None:
    honest = NoteSigner.generate(ORIGIN)
    forger = NoteSigner.generate(ORIGIN)  # same name, another key
    entries = [AddEntry.create(signal_type="sha256", value=sha(i)).to_bytes() for i in range(4)]
    path = build_bundle(
        tmp_path / "f.bundle",
        entries,
        [2, 4],
        {2: honest, 4: forger},
        vkey=honest.verifier().to_text(),
    )
    status, out, _ = audit(
        capsys, str(path), "--vkey", honest.verifier().to_text(), "--state", str(tmp_path / "s")
    )
    assert status == 1
    assert f"FAIL signature origin={ORIGIN} source={path} size 4: checkpoint on line 6:" in out
    assert "not signed by the key for that size" in out


def test_a_bundle_carrying_another_key_than_the_pinned_one_fails_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bundle: Path
) -> None:
    other = NoteSigner.generate(ORIGIN).verifier().to_text()
    status, out, _ = audit(capsys, str(bundle), "--vkey", other, "--state", str(tmp_path / "s"))
    assert status == 1
    assert f"FAIL key origin={ORIGIN} source={bundle}: the bundle carries key" in out


def test_history_rewritten_between_two_bundle_audits_is_caught_with_evidence(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    honest = new_node(tmp_path, "a", entries=5)
    rewritten = fork_node(honest, tmp_path / "a2")
    add_hashes(honest, 5, 2)  # audited at 7
    add_hashes(rewritten, 50, 6, batch=6)  # later: a tree of 11 with no checkpoint of size 7
    state = tmp_path / "state.json"
    first = export_bundle(honest, tmp_path / "first.bundle")
    assert audit(capsys, str(first), "--vkey", vkey_of(honest), "--state", str(state))[0] == 0
    second = export_bundle(rewritten, tmp_path / "second.bundle")
    status, doc = audit_json(capsys, str(second), "--state", str(state))
    assert status == 1
    assert checks(doc) == ["consistency"]
    failure = doc["failures"][0]  # type: ignore[index]
    assert (failure["old_size"], failure["new_size"]) == (7, 11)
    assert "rewritten since the last audit" in failure["message"]
    evidence = ForkEvidence.from_json(failure["evidence"])
    a, b = verify_fork_evidence(evidence, NoteVerifier.from_text(vkey_of(honest)))
    assert (a.size, b.size) == (7, 11)


def test_two_bundles_of_one_origin_that_disagree_are_a_split_view(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a = new_node(tmp_path, "a", entries=3)
    twin = fork_node(a, tmp_path / "twin")
    add_hashes(a, 3, 1)
    add_hashes(twin, 30, 3, batch=3)
    one, two = export_bundle(a, tmp_path / "1.bundle"), export_bundle(twin, tmp_path / "2.bundle")
    status, doc = audit_json(
        capsys, str(one), str(two), "--vkey", vkey_of(a), "--state", str(tmp_path / "s"),
        "--evidence-dir", str(tmp_path / "ev"),
    )  # fmt: skip
    assert status == 1
    assert checks(doc) == ["split-view"]
    failure = doc["failures"][0]  # type: ignore[index]
    assert (failure["old_size"], failure["new_size"]) == (4, 6)
    assert failure["source"] == f"{one} vs {two}"
    written = Path(failure["evidence_file"])
    verify_fork_evidence(
        ForkEvidence.from_json(written.read_bytes()), NoteVerifier.from_text(vkey_of(a))
    )


def test_rotation_chain_is_followed_and_remembered(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old, new = NoteSigner.generate(ORIGIN), NoteSigner.generate(ORIGIN)
    entries = [AddEntry.create(signal_type="sha256", value=sha(i)).to_bytes() for i in range(3)]
    entries.append(RotateEntry(key=new.verifier().to_text(), reason="yearly").to_bytes())
    entries += [AddEntry.create(signal_type="md5", value=f"{i:032x}").to_bytes() for i in range(2)]
    # the rotate entry is leaf 3: the old key signs up to size 4, the new key from 5
    signers = {2: old, 4: old, 5: new, 6: new}
    path = build_bundle(tmp_path / "r.bundle", entries, sorted(signers), signers)
    state = tmp_path / "state.json"
    status, out, _ = audit(
        capsys, str(path), "--vkey", old.verifier().to_text(), "--state", str(state)
    )
    assert status == 0, out
    keys = json.loads(state.read_text())["origins"][ORIGIN]["keys"]
    assert [(k["from_size"], k["vkey"], k["rotated_by"]) for k in keys] == [
        (0, old.verifier().to_text(), None),
        (5, new.verifier().to_text(), 3),
    ]
    # An auditor who knows only the current key accepts the bundle too: its
    # rotations lead from the key it carries to the pinned one.
    status, out, _ = audit(
        capsys, str(path), "--vkey", new.verifier().to_text(), "--state", str(tmp_path / "s3")
    )
    assert status == 0, out
    # The stolen old key signing beyond the rotation is refused.
    signers[6] = old
    stolen = build_bundle(tmp_path / "s.bundle", entries, sorted(signers), signers)
    status, out, _ = audit(
        capsys, str(stolen), "--state", str(tmp_path / "s2"), "--vkey", old.verifier().to_text()
    )
    assert status == 1
    assert f"FAIL signature origin={ORIGIN} source={stolen} size 6" in out


def test_rotation_not_committed_by_the_old_key_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old, new = NoteSigner.generate(ORIGIN), NoteSigner.generate(ORIGIN)
    entries = [AddEntry.create(signal_type="sha256", value=sha(0)).to_bytes()]
    entries.append(RotateEntry(key=new.verifier().to_text(), reason="stolen?").to_bytes())
    entries.append(AddEntry.create(signal_type="sha256", value=sha(1)).to_bytes())
    # no checkpoint of size 2 by the old key: only the new key vouches for itself
    path = build_bundle(tmp_path / "r.bundle", entries, [1, 3], {1: old, 3: new})
    status, out, _ = audit(
        capsys, str(path), "--vkey", old.verifier().to_text(), "--state", str(tmp_path / "s")
    )
    assert status == 1
    assert "FAIL key" in out and "rotate entry 1 is not committed by a checkpoint of size 2" in out
    assert "FAIL signature" in out  # so the checkpoint of size 3 does not verify


def test_check_entries_applies_the_entry_rules(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    signer = NoteSigner.generate(ORIGIN)
    entries = [
        AddEntry.create(signal_type="sha256", value=sha(0)).to_bytes(),
        RetractEntry(index=0, reason="mistake").to_bytes(),
        RetractEntry(index=0, reason="again").to_bytes(),
    ]
    path = build_bundle(tmp_path / "e.bundle", entries, [3], signer)
    vkey = signer.verifier().to_text()
    # The tree is fine, so the default audit passes ...
    assert (
        audit(capsys, str(path), "--vkey", vkey, "--no-save", "--state", str(tmp_path / "s"))[0]
        == 0
    )
    # ... and --check-entries finds the double retraction.
    status, out, _ = audit(
        capsys, str(path), "--vkey", vkey, "--check-entries", "--state", str(tmp_path / "s")
    )
    assert status == 1
    assert "FAIL entries" in out and "leaf 2: retracts entry 0, which is already retracted" in out


def test_without_a_pinned_key_the_bundle_key_is_trusted_on_first_use_with_a_note(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, node: Path, bundle: Path
) -> None:
    status, _out, err = audit(capsys, str(bundle), "--state", str(tmp_path / "s"))
    assert status == 0
    assert "trusting the key carried by" in err and "pin it with --vkey" in err
