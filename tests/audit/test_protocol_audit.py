"""The pure audit checks (protocol.audit): replay, prefix roots, proofs from leaves, bundle reading."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.audit import (
    STATE_SOURCE,
    AuditHead,
    SourceView,
    TreeReplay,
    consistency_proof_from_leaves,
    cross_check,
    implied_prefix_root,
    judge_source,
)
from protocol.bundle import BundleReader, encode_bundle
from protocol.checkpoint import Checkpoint, VerifiedCheckpoint, sign_checkpoint
from protocol.errors import MalformedError
from protocol.keys import NoteSigner
from protocol.merkle import root_from_leaf_hashes, verify_consistency
from protocol.note import parse_note
from protocol.tree import CompactRange


def leaves(n: int, salt: bytes = b"") -> list[bytes]:
    return [hashlib.sha256(salt + i.to_bytes(4, "big")).digest() for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 300),
    start=st.integers(0, 300),
    batches=st.lists(st.integers(1, 70), min_size=1, max_size=8),
    marks=st.sets(st.integers(0, 300), max_size=12),
)
def test_replay_records_the_root_of_every_prefix_it_passes(
    n: int, start: int, batches: list[int], marks: set[int]
) -> None:
    start = min(start, n)
    hs = leaves(n)
    tree = CompactRange.empty()
    tree.extend(hs[:start])
    replay = TreeReplay(tree, marks)
    at, i = start, 0
    while at < n:
        step = batches[i % len(batches)]
        replay.feed(hs[at : at + step])
        at = min(n, at + step)
        i += 1
    assert replay.size == n
    assert replay.tree.root() == root_from_leaf_hashes(hs)
    for mark in marks:
        if start <= mark <= n:
            assert replay.roots[mark] == root_from_leaf_hashes(hs[:mark])
        else:
            assert mark not in replay.roots or mark == start


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 200), data=st.data())
def test_prefix_root_implied_by_a_proof_and_proofs_from_leaves(n: int, data: st.DataObject) -> None:
    m = data.draw(st.integers(1, n))
    hs = leaves(n)
    proof = consistency_proof_from_leaves(hs, m, n)
    verify_consistency(m, n, root_from_leaf_hashes(hs[:m]), root_from_leaf_hashes(hs), proof)
    implied = implied_prefix_root(m, n, proof)
    if m == n or m & (m - 1) == 0:
        assert implied is None
    else:
        assert implied == root_from_leaf_hashes(hs[:m])


SIGNER = NoteSigner.from_seed("o.example/log", b"\x05" * 32)


def _note(size: int, root_hash: bytes) -> str:
    return sign_checkpoint(Checkpoint(origin=SIGNER.name, size=size, root_hash=root_hash), SIGNER)


def _signed(size: int, root_hash: bytes, source: str) -> VerifiedCheckpoint:
    note = parse_note(_note(size, root_hash))
    body = Checkpoint.from_text(note.text)
    return VerifiedCheckpoint(checkpoint=body, note=note, cosignatures={}, source=source)


def _head(tree: CompactRange) -> AuditHead:
    return AuditHead.from_tree(tree, _note(tree.size, tree.root()))


def _cp(size: int, hs: list[bytes], source: str) -> VerifiedCheckpoint:
    return _signed(size, root_from_leaf_hashes(hs[:size]), source)


def _view(source: str, hs: list[bytes], sizes: list[int], marks: set[int]) -> SourceView:
    replay = TreeReplay(CompactRange.empty(), marks | set(sizes))
    replay.feed(hs[: max(sizes)])
    return SourceView(
        source=source,
        authoritative=True,
        checkpoints=tuple(_cp(s, hs, source) for s in sizes),
        replay_from=0,
        computed=replay.roots,
        tree=replay.tree,
        leaves_hashed=max(sizes),
    )


def test_cross_check_finds_the_split_and_the_rewrite() -> None:
    honest = leaves(10)
    other = honest[:4] + leaves(6, b"x")
    marks = {3, 5, 8, 10}
    x = _view("x", honest, [3, 5, 10], marks)
    y = _view("y", other, [3, 8], marks)
    conflicts, unchecked = cross_check([x, y], None)
    pairs = {(c.older.source, c.older.size, c.newer.source, c.newer.size) for c in conflicts}
    # y's tree at 5 differs from x's signed 5; x's tree at 8 differs from y's signed 8.
    assert ("x", 5, "y", 8) in pairs and ("y", 8, "x", 10) in pairs
    assert all(c.check == "split-view" for c in conflicts)
    assert not any(c.older.size == 3 for c in conflicts)  # both agree on the first 4 leaves
    assert unchecked == []
    for c in conflicts:
        assert c.prefix_root != c.older.root_hash

    head = _head(_tree(other[:5]))
    conflicts, _ = cross_check([x], head)
    [c] = conflicts  # x signed 5 itself: two signatures on one size, the plainest evidence
    assert (c.check, c.older.source, c.older.size, c.newer.size) == (
        "consistency",
        STATE_SOURCE,
        5,
        5,
    )
    assert "rewritten since the last audit" in c.message()
    head = _head(_tree(other[:7]))
    x = _view("x", honest, [3, 5, 10], marks | {7})  # the engine marks the head's size
    [c] = cross_check([x], head)[0]  # no checkpoint of 7 at x: its leaves say the root
    assert (c.older.size, c.newer.size) == (7, 10)
    assert c.prefix_root == root_from_leaf_hashes(honest[:7])


def test_judge_source_separates_bad_leaves_from_inconsistent_checkpoints() -> None:
    hs = leaves(8)
    view = _view("x", hs, [4, 8], set())
    assert judge_source("o", view) == ([], [])
    forged = _signed(4, b"\x01" * 32, "x")
    inconsistent = SourceView(
        source="x",
        authoritative=True,
        checkpoints=(forged, view.checkpoints[1]),
        replay_from=0,
        computed=view.computed,
        tree=view.tree,
        leaves_hashed=8,
    )
    failures, conflicts = judge_source("o", inconsistent)
    assert failures == [] and [(c.older.size, c.newer.size) for c in conflicts] == [(4, 8)]
    wrong_leaves = SourceView(
        source="x",
        authoritative=True,
        checkpoints=(
            view.checkpoints[0],
            _signed(8, b"\x02" * 32, "x"),
        ),
        replay_from=0,
        computed=view.computed,
        tree=view.tree,
        leaves_hashed=8,
    )
    failures, conflicts = judge_source("o", wrong_leaves)
    assert [f.check for f in failures] == ["leaves"] and conflicts == []
    assert failures[0].line() == (
        "FAIL leaves origin=o source=x 0 -> 8: the leaf hashes 0..8 do not produce the signed "
        "root of size 8"
    )


def _tree(hs: list[bytes]) -> CompactRange:
    tree = CompactRange.empty()
    tree.extend(hs)
    return tree


def test_audit_head_refuses_a_frontier_that_does_not_produce_its_root() -> None:
    tree = _tree(leaves(6))
    head = AuditHead.from_tree(tree, "note")
    assert head.tree().root() == tree.root()
    bad = AuditHead(size=6, root_hash=tree.root(), note="note", frontier=(b"\x00" * 32,) * 2)
    with pytest.raises(MalformedError, match="does not produce the saved root"):
        bad.tree()


def _bundle_lines() -> list[bytes]:
    text = "".join(
        encode_bundle(
            origin="o.example/log",
            verifier_key="o.example/log+00000000+AAAA",
            checkpoint_notes=[],
            leaf_count=2,
            leaves=[b"first", b"second"],
        )
    )
    return [line.encode() for line in text.splitlines(keepends=True)]


@pytest.mark.parametrize(
    ("line", "replacement", "message"),
    [
        (5, base64.b64encode(b"first").rstrip(b"=") + b"\n", "line 6 (leaf 0)"),
        (5, b"Zmlyc3Q=\r\n", "line 6 (leaf 0)"),
        (6, b"c2Vjb25k!\n", "line 7 (leaf 1)"),
        (7, b"end\nmore\n", "trailing data"),
        (7, b"fin\n", "expected 'end'"),
    ],
)
def test_bundle_reader_is_strict(line: int, replacement: bytes, message: str) -> None:
    lines = _bundle_lines()
    assert lines[4] == b"leaves 2\n" and lines[7] == b"end\n"
    reader = BundleReader(lines)
    header = reader.header()
    assert header.leaf_count == 2 and list(reader.leaf_batches(2)) == [[b"first", b"second"]]
    changed = [*lines[:line], *replacement.splitlines(keepends=True), *lines[line + 1 :]]
    reader = BundleReader(changed)
    reader.header()
    with pytest.raises(MalformedError, match=message.replace("(", r"\(").replace(")", r"\)")):
        list(reader.leaf_batches(2))
