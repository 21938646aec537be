"""The retraction and rotation rules of a log (protocol.rules), without any storage."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from protocol.audit import audit_bundle
from protocol.bundle import BundleReader, encode_bundle, verify_bundle
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.entry import AddEntry, Entry, OpinionEntry, RetractEntry, RotateEntry, parse_entry
from protocol.errors import InvalidRetractionError, RotationError
from protocol.hashing import hash_leaf
from protocol.keys import NoteSigner
from protocol.merkle import root_from_leaf_hashes
from protocol.rotation import KeyChain
from protocol.rules import LogRules, PendingRotations, current_opinions

ORIGIN = "hotline.example/log"
SIGNER = NoteSigner.from_seed(ORIGIN, b"\x01" * 32)
OLD = SIGNER.verifier()
NEW = NoteSigner.from_seed(ORIGIN, b"\x02" * 32).verifier()


def add(i: int) -> AddEntry:
    return AddEntry.create(signal_type="md5", value=f"{i:032x}")


def retract(target: int) -> RetractEntry:
    return RetractEntry(index=target, reason="reviewed")


class History:
    """Entries 0-3 held before the rules start: add, add, retract 0, opinion."""

    def kind_at(self, index: int) -> str | None:
        return {0: "add", 1: "add", 2: "retract", 3: "opinion"}.get(index)

    def retracted_by(self, index: int) -> int | None:
        return 2 if index == 0 else None


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([add(0), retract(1)], "retracts entry 1, but entry 1 does not exist"),
        ([add(0), retract(0), retract(1)], "entry 1, which is a retract, not an add"),
        ([add(0), retract(0), retract(0)], "entry 0, which is already retracted by entry 1"),
    ],
)
def test_a_retraction_names_an_earlier_add_not_yet_retracted(
    entries: list[Entry], message: str
) -> None:
    with pytest.raises(InvalidRetractionError, match=message):
        LogRules().extend(entries)


def test_valid_retractions_and_other_kinds_pass() -> None:
    opinion = OpinionEntry(origin=ORIGIN, index=0, leaf_hash=b"\x00" * 32, verdict="confirm")
    rules = LogRules()
    rules.extend([add(0), add(1), opinion, retract(1), retract(0)])
    rules.extend_adds(3)
    rules.append(retract(6))
    assert rules.size == 9
    assert [rules.kind_at(i) for i in (0, 2, 3, 5, 8, 9)] == [
        "add",
        "opinion",
        "retract",
        "add",
        "retract",
        None,
    ]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (0, "already retracted by entry 2"),
        (2, "which is a retract"),
        (3, "which is an opinion"),
    ],
)
def test_entries_before_the_start_come_from_the_history(target: int, message: str) -> None:
    rules = LogRules(4, History())
    with pytest.raises(InvalidRetractionError, match=message):
        rules.append(retract(target))
    rules.append(retract(1))
    with pytest.raises(InvalidRetractionError, match="already retracted by entry 5"):
        rules.append(retract(1))


def test_a_failed_retraction_is_still_taken() -> None:
    rules = LogRules()
    with pytest.raises(InvalidRetractionError):
        rules.extend([add(0), retract(3)])
    rules.append(None)  # an entry that did not parse
    rules.append(retract(0))
    assert rules.size == 4
    with pytest.raises(InvalidRetractionError, match="invalid entry"):
        rules.append(retract(2))


def test_a_rotation_is_applied_by_the_checkpoint_of_its_size_plus_one() -> None:
    rotate = RotateEntry(key=NEW.to_text(), reason="planned")
    rules = LogRules()
    rules.extend([add(0), rotate])
    chain = KeyChain.pinned(OLD)
    assert rules.rotations.due(2) and not rules.rotations.due(1)
    chain = rules.rotations.settle(chain, 2, verified=True)
    assert chain.verifier_for(2) == OLD and chain.verifier_for(3) == NEW
    assert not rules.rotations


def test_an_unattested_rotation_is_refused_once() -> None:
    rotate = RotateEntry(key=NEW.to_text(), reason="taken over")
    chain = KeyChain.pinned(OLD)
    pending = PendingRotations()
    pending.add(1, rotate)
    with pytest.raises(RotationError, match="not committed by a checkpoint of size 2"):
        pending.settle(chain, 2, verified=False)
    assert not pending  # settled (refused), not pending again
    pending.add(1, rotate)
    with pytest.raises(RotationError, match="size 2, not one of size 3"):
        pending.settle(chain, 3, verified=True)


def test_a_rotation_to_the_trusted_key_needs_no_checkpoint() -> None:
    pending = PendingRotations()
    pending.add(1, RotateEntry(key=OLD.to_text(), reason="same key"))
    chain = KeyChain.pinned(OLD)
    assert pending.settle(chain, 2, verified=False) is chain


@dataclass(frozen=True)
class Row:
    author: str
    index: int
    target_leaf_hash: bytes


def test_current_opinions_are_the_latest_of_each_author_bound_to_the_bytes() -> None:
    mine, other = b"\x01" * 32, b"\x02" * 32
    rows = [Row("b", 3, mine), Row("a", 9, other), Row("a", 2, mine), Row("b", 7, mine)]
    assert current_opinions(rows, mine) == [Row("a", 2, mine), Row("b", 7, mine)]
    assert current_opinions(rows, b"\x03" * 32) == []


def _bundle(entries: list[Entry]) -> list[bytes]:
    leaves = [e.to_bytes() for e in entries]
    root = root_from_leaf_hashes([hash_leaf(x) for x in leaves])
    note = sign_checkpoint(Checkpoint(origin=ORIGIN, size=len(leaves), root_hash=root), SIGNER)
    text = "".join(
        encode_bundle(
            origin=ORIGIN,
            verifier_key=OLD.to_text(),
            checkpoint_notes=[note],
            leaf_count=len(leaves),
            leaves=leaves,
        )
    )
    return [line.encode() for line in text.splitlines(keepends=True)]


def test_verify_bundle_and_the_bundle_audit_apply_the_same_retraction_rule() -> None:
    lines = _bundle([add(0), retract(0), retract(0)])
    with pytest.raises(
        InvalidRetractionError,
        match=r"line 9 \(leaf 2\): retracts entry 0, which is already retracted by entry 1",
    ):
        verify_bundle(lines)
    reader = BundleReader(lines)
    audit = audit_bundle(
        reader, reader.header(), KeyChain.pinned(OLD), source="b", check_entries=parse_entry
    )
    assert [f.message for f in audit.failures] == [
        "leaf 2: retracts entry 0, which is already retracted by entry 1"
    ]
