r"""Audit checks: signed checkpoints against the leaf hashes that must produce them.

Layer: protocol (pure). This module performs no I/O: the caller fetches
checkpoints and leaf hashes (from a node) or reads lines (of a bundle) and
hands them in; everything here only decides.

An audit of one origin works from a *head*: the last tree it verified
(size, root, the signed note, and the compact-range frontier). Each source
(a node, a bundle) contributes the checkpoints it serves and the leaf hashes
after the head; :class:`TreeReplay` extends the head's compact range with
them and records the root at every size of interest, so

* a signed checkpoint whose root differs from the root its own source's
  leaves give at that size, while those leaves reach the source's latest
  root, is not consistent with that latest checkpoint;
* a checkpoint that another source signed at a size this source's leaves
  cover, with another root, is a split view;
* the head's root recomputed at the head's size from a source that replays
  from zero must be the head's root: otherwise the history was rewritten
  since the last audit.

Each such disagreement is a :class:`Conflict`; once the caller has the
consistency proof from the larger tree (fetched from the node, or computed
here from a bundle's leaves with :func:`consistency_proof_from_leaves`),
:func:`conflict_evidence` turns it into a
:class:`~protocol.evidence.ForkEvidence` that verifies with the origin's key
alone.

A log published as C2SP tlog-tiles (:mod:`protocol.tiles`) is a source
too: :func:`audit_tiles` checks its tiles against its signed checkpoint and
gives the roots of its tree at the sizes of interest, each proven to be a
prefix of the signed tree, so the published log is judged like any other
source.

Bundles (:mod:`protocol.bundle` format) are read by :class:`BundleReader` and
audited by :func:`audit_bundle`, which follows the origin's key chain
through ``rotate`` entries (:class:`protocol.rotation.KeyChain`). By default
it does not parse entries, only finds rotations: the tree checks need the
exact leaf bytes, not their meaning, and skipping the parse keeps a bundle
audit near the raw hashing rate. ``check_entries`` adds the full entry rules
of ``verify-bundle`` (canonical entries, retractions of earlier adds).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from protocol.bundle import BundleHeader, BundleReader
from protocol.checkpoint import Checkpoint, CheckpointNote, VerifiedCheckpoint
from protocol.entry import Entry, RotateEntry, parse_entry
from protocol.errors import (
    MalformedError,
    OriginMismatchError,
    ProofError,
    ProtocolError,
    VerificationError,
)
from protocol.evidence import ForkEvidence, prove_fork
from protocol.hashing import EMPTY_ROOT, HASH_SIZE, hash_children
from protocol.merkle import verify_consistency
from protocol.note import parse_note
from protocol.rotation import KeyChain
from protocol.rules import LogRules, PendingRotations
from protocol.tiles import TileId, TileNodeReader, verify_tiles
from protocol.tree import (
    CompactRange,
    NodeId,
    compute_consistency_proof,
    consistency_subtrees,
    frontier_ids,
)

__all__ = [
    "CHECKS",
    "STATE_SOURCE",
    "AuditHead",
    "BundleAudit",
    "Conflict",
    "Failure",
    "SourceView",
    "TilesAudit",
    "TreeReplay",
    "audit_bundle",
    "audit_tiles",
    "conflict_evidence",
    "consistency_proof_from_leaves",
    "cross_check",
    "implied_prefix_root",
    "judge_source",
    "root_of_leaves",
]

CHECKS = (
    "format",
    "key",
    "rotation",
    "signature",
    "consistency",
    "leaves",
    "split-view",
    "history",
    "entries",
    "fetch",
)
"""Names of the checks an audit reports failures of (the word after ``FAIL``)."""

STATE_SOURCE = "audit state"
"""The source name of the head saved by an earlier audit."""

_BATCH = 8192
_ROTATE_MARK = b'"kind":"rotate"'  # canonical JSON: quotes inside strings are escaped


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditHead:
    """The last tree of an origin an audit verified: what the next audit must extend.

    Attributes:
        size: tree size.
        root_hash: its root.
        note: the signed checkpoint note of that size.
        frontier: the compact range of the tree (:attr:`CompactRange.frontier`),
            so the next audit hashes only newer leaves.
    """

    size: int
    root_hash: bytes
    note: CheckpointNote
    frontier: tuple[bytes, ...]

    def tree(self) -> CompactRange:
        """The compact range of the head, checked against its root.

        Raises:
            MalformedError: if the frontier does not fit the size or does not
                produce the root (a corrupted state).
        """
        tree = CompactRange.from_frontier(self.size, self.frontier)
        if tree.root() != self.root_hash:
            raise MalformedError(
                f"frontier of size {self.size} does not produce the saved root", field="frontier"
            )
        return tree

    @classmethod
    def from_tree(cls, tree: CompactRange, note: CheckpointNote) -> AuditHead:
        """The head for a verified tree and its signed note."""
        return cls(size=tree.size, root_hash=tree.root(), note=note, frontier=tree.frontier)

    def verified(self) -> VerifiedCheckpoint:
        """The head as a checkpoint seen at :data:`STATE_SOURCE`.

        The saved state's note was verified when the state was loaded
        (``node.audit.state``).
        """
        note = parse_note(self.note)
        return VerifiedCheckpoint(
            checkpoint=Checkpoint.from_text(note.text),
            note=note,
            cosignatures={},
            source=STATE_SOURCE,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """One failed check.

    Attributes:
        check: one of :data:`CHECKS`.
        origin: the origin concerned ("" when the failure is about a source as a whole).
        source: the node URL or bundle path concerned.
        message: what failed, lower case.
        old_size: the smaller tree size involved, if any.
        new_size: the larger tree size involved, if any.
        evidence: fork evidence, when the failure proves a fork.
    """

    check: str
    origin: str
    source: str
    message: str
    old_size: int | None = None
    new_size: int | None = None
    evidence: ForkEvidence | None = None

    def line(self) -> str:
        """``FAIL <check> origin=<o> source=<s> [a -> b]: <message>``."""
        parts = [f"FAIL {self.check}"]
        if self.origin:
            parts.append(f"origin={self.origin}")
        parts.append(f"source={self.source}")
        if self.old_size is not None and self.new_size is not None:
            same = self.old_size == self.new_size
            parts.append(f"size {self.new_size}" if same else f"{self.old_size} -> {self.new_size}")
        elif self.new_size is not None:
            parts.append(f"size {self.new_size}")
        return " ".join(parts) + f": {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Conflict:
    """Two signed checkpoints of one origin that cannot both be true.

    Attributes:
        check: ``consistency`` (one source, or against the saved head) or
            ``split-view`` (two sources).
        older: the checkpoint of the smaller (or equal) size.
        newer: the checkpoint of the larger tree, whose source can prove its
            prefix (by a consistency proof ``older.size -> newer.size``).
        prefix_root: the root of the first ``older.size`` leaves of the newer
            tree, when the audit computed it; None when only a proof can tell.
    """

    check: str
    older: VerifiedCheckpoint
    newer: VerifiedCheckpoint
    prefix_root: bytes | None

    def message(self) -> str:
        """A one-line account of the conflict."""
        a, b = self.older, self.newer
        if a.source == STATE_SOURCE:
            what = f"the history was rewritten since the last audit (size {a.size})"
        elif a.source == b.source:
            what = f"two checkpoints of {b.source} do not extend each other"
        else:
            what = f"{a.source} and {b.source} were shown different histories"
        if a.size == b.size:
            return f"{what}: both signed size {a.size} with different roots"
        return f"{what}: the tree of size {b.size} does not extend the signed tree of size {a.size}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceView:
    """What one source showed of one origin, after replay.

    Attributes:
        source: node URL or bundle path.
        authoritative: the source is the origin's own log (its node, or a
            bundle): it holds every checkpoint the origin published.
        checkpoints: the verified checkpoints, by increasing size.
        replay_from: the size the leaf replay started at.
        computed: roots computed from the source's leaf hashes, by size
            (only sizes of interest, from ``replay_from`` on).
        tree: the compact range after the replay (None if nothing was replayed).
        leaves_hashed: leaf hashes replayed.
    """

    source: str
    authoritative: bool
    checkpoints: tuple[VerifiedCheckpoint, ...]
    replay_from: int
    computed: Mapping[int, bytes]
    tree: CompactRange | None
    leaves_hashed: int

    @property
    def latest(self) -> VerifiedCheckpoint | None:
        """The largest verified checkpoint."""
        return self.checkpoints[-1] if self.checkpoints else None

    @property
    def leaves_ok(self) -> bool:
        """The replayed leaves produce the latest signed root (so computed roots count)."""
        latest = self.latest
        return latest is not None and self.computed.get(latest.size) == latest.root_hash


class TreeReplay:
    """Extends a trusted compact range with leaf hashes, recording roots at marks."""

    __slots__ = ("_marks", "_next", "roots", "tree")

    def __init__(self, tree: CompactRange, marks: Iterable[int]) -> None:
        """Start from ``tree``; record the root whenever the size is one of ``marks``.

        Args:
            tree: the verified starting tree (copied).
            marks: sizes at which to record the root; those below the start
                are ignored, the start itself is recorded at once.
        """
        self.tree = tree.copy()
        self._marks = sorted({m for m in marks if m > tree.size})
        self._next = 0
        self.roots: dict[int, bytes] = {tree.size: tree.root()}

    @property
    def size(self) -> int:
        """Leaves replayed so far, including the starting tree."""
        return self.tree.size

    def add_mark(self, size: int) -> None:
        """Also record the root at ``size`` (ignored if already passed)."""
        if size <= self.tree.size or size in self._marks[self._next :]:
            return
        at = bisect_right(self._marks, size, lo=self._next)
        self._marks.insert(at, size)

    def feed(self, leaf_hashes: Sequence[bytes]) -> list[int]:
        """Append leaf hashes; return the marks reached, in order."""
        reached: list[int] = []
        pos = 0
        while pos < len(leaf_hashes):
            remaining = len(leaf_hashes) - pos
            if self._next < len(self._marks):
                step = min(remaining, self._marks[self._next] - self.tree.size)
            else:
                step = remaining
            whole = pos == 0 and step == remaining
            self.tree.extend(leaf_hashes if whole else leaf_hashes[pos : pos + step])
            pos += step
            if self._next < len(self._marks) and self._marks[self._next] == self.tree.size:
                self.roots[self.tree.size] = self.tree.root()
                reached.append(self.tree.size)
                self._next += 1
        return reached


def judge_source(origin: str, view: SourceView) -> tuple[list[Failure], list[Conflict]]:
    """Check one source's checkpoints against the roots its own leaves produce.

    Returns:
        Failures (leaves that do not reach the latest signed root) and
        conflicts (a checkpoint that the latest one does not extend).
    """
    latest = view.latest
    if latest is None or latest.size not in view.computed:
        return [], []
    if 0 < view.replay_from == latest.size:
        return [], []  # nothing replayed: the saved head is compared in cross_check
    if not view.leaves_ok:
        return [
            Failure(
                check="leaves",
                origin=origin,
                source=view.source,
                message=(
                    f"the leaf hashes {view.replay_from}..{latest.size} do not produce the "
                    f"signed root of size {latest.size}"
                ),
                old_size=view.replay_from,
                new_size=latest.size,
            )
        ], []
    conflicts = [
        Conflict(check="consistency", older=cp, newer=latest, prefix_root=view.computed[cp.size])
        for cp in view.checkpoints[:-1]
        if cp.size in view.computed and view.computed[cp.size] != cp.root_hash
    ]
    return [], conflicts


def cross_check(
    views: Sequence[SourceView], head: AuditHead | None
) -> tuple[list[Conflict], list[VerifiedCheckpoint]]:
    """Compare every source's checkpoints (and the saved head) with every other source.

    A source is *linked* once one of its checkpoints or replayed roots has
    been compared with another source or the saved head. A linked source
    whose leaves reach its latest root needs nothing more: all its
    checkpoints are consistent with that root, which was compared.

    Returns:
        The conflicts found, and the checkpoints of sources that were not
        linked (the caller checks those with consistency proofs): the latest
        of a source whose leaves were replayed, else all of its checkpoints.
    """
    signed: list[VerifiedCheckpoint] = [cp for v in views for cp in v.checkpoints]
    if head is not None:
        signed.append(head.verified())
    by_size: dict[int, list[VerifiedCheckpoint]] = {}
    for cp in signed:
        by_size.setdefault(cp.size, []).append(cp)
    conflicts: list[Conflict] = []
    seen: set[tuple[str, int, str]] = set()
    linked: set[str] = set()

    def kind(a: VerifiedCheckpoint, b: VerifiedCheckpoint) -> str:
        return "consistency" if STATE_SOURCE in (a.source, b.source) else "split-view"

    # Equal sizes: two signatures on one size settle it without any leaves.
    for cps in by_size.values():
        for i, a in enumerate(cps):
            for b in cps[i + 1 :]:
                if a.source == b.source:
                    continue
                linked.update((a.source, b.source))
                if a.root_hash != b.root_hash:
                    older, newer = (a, b) if b.source != STATE_SOURCE else (b, a)
                    key = (older.source, older.size, newer.source)
                    if key not in seen:
                        seen.add(key)
                        conflicts.append(
                            Conflict(
                                check=kind(a, b),
                                older=older,
                                newer=newer,
                                prefix_root=newer.root_hash,
                            )
                        )
    # Other sizes: a source whose leaves reach its latest root knows its prefix roots.
    for view in views:
        latest = view.latest
        if latest is None or not view.leaves_ok:
            continue
        for cp in signed:
            if cp.source == view.source or cp.size not in view.computed:
                continue
            linked.update((cp.source, view.source))
            if view.computed[cp.size] == cp.root_hash or cp.size == latest.size:
                continue
            key = (cp.source, cp.size, view.source)
            if key in seen:
                continue
            seen.add(key)
            conflicts.append(
                Conflict(
                    check=kind(cp, latest),
                    older=cp,
                    newer=latest,
                    prefix_root=view.computed[cp.size],
                )
            )
    unchecked: list[VerifiedCheckpoint] = []
    if len(views) + (head is not None) > 1:
        for view in views:
            if view.source in linked or view.latest is None:
                continue
            unchecked.extend([view.latest] if view.leaves_ok else view.checkpoints)
    return conflicts, unchecked


def implied_prefix_root(old_size: int, new_size: int, proof: Sequence[bytes]) -> bytes | None:
    """The root of the first ``old_size`` leaves that a consistency proof implies.

    Folds the proof as RFC 9162 section 2.1.4.2 does, without an old root to
    compare with. When ``old_size`` is a power of two the old tree is a
    complete subtree whose root the proof leaves out: None.

    Raises:
        MalformedError: if the sizes are impossible.
        ProofError: if the proof has the wrong number of hashes.
    """
    want = len(consistency_subtrees(old_size, new_size))
    if len(proof) != want or any(len(h) != HASH_SIZE for h in proof):
        raise ProofError(f"wrong proof size {len(proof)}, want {want}")
    if old_size == 0:
        return EMPTY_ROOT
    if old_size == new_size or old_size & (old_size - 1) == 0:
        return None
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = proof[0]
    for c in proof[1:]:
        if fn & 1 or fn == sn:
            fr = hash_children(c, fr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        fn >>= 1
        sn >>= 1
    return bytes(fr)


def root_of_leaves(leaf_hashes: Sequence[bytes]) -> bytes:
    """The RFC 6962 root of some leaf hashes."""
    tree = CompactRange.empty()
    for i in range(0, len(leaf_hashes), _BATCH):
        tree.extend(leaf_hashes[i : i + _BATCH])
    return tree.root()


class _LeafNodes:
    """Perfect-subtree hashes folded on demand from an in-memory list of leaf hashes."""

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        self._leaves = leaf_hashes

    def get_node_hashes(self, ids: Sequence[NodeId]) -> Sequence[bytes]:
        out: list[bytes] = []
        for node in ids:
            start = node.index << node.level
            out.append(root_of_leaves(self._leaves[start : start + (1 << node.level)]))
        return out


def consistency_proof_from_leaves(
    leaf_hashes: Sequence[bytes], old_size: int, new_size: int
) -> list[bytes]:
    """The RFC 6962 consistency proof ``old_size -> new_size`` of a tree given by its leaves.

    O(new_size) hashing; used only to make evidence from a bundle.

    Raises:
        MalformedError: if the sizes are impossible or exceed the leaves given.
    """
    if new_size > len(leaf_hashes):
        raise MalformedError(f"size {new_size} exceeds the {len(leaf_hashes)} leaves given")
    return compute_consistency_proof(old_size, new_size, _LeafNodes(leaf_hashes))


def conflict_evidence(
    origin: str,
    conflict: Conflict,
    chain: KeyChain,
    *,
    proof: Sequence[bytes],
    prefix_root: bytes | None = None,
) -> ForkEvidence:
    """Turn a conflict and the newer tree's consistency proof into verified evidence.

    Args:
        origin: the origin.
        conflict: the conflict.
        chain: the origin's key chain (each note is checked with the key its
            size calls for).
        proof: consistency proof ``older.size -> newer.size`` in the newer
            tree (empty for equal sizes).
        prefix_root: the prefix root, when the conflict does not carry one
            (from :func:`implied_prefix_root` or the newer tree's leaves).

    Returns:
        Evidence that :func:`~protocol.evidence.verify_fork_evidence` accepts.

    Raises:
        VerificationError: if the evidence does not prove a fork (the proof
            does not reach the newer root, or the trees are consistent after all).
        MalformedError: if a value is malformed.
    """
    a, b = conflict.older, conflict.newer
    root = conflict.prefix_root if conflict.prefix_root is not None else prefix_root
    if root is None:
        raise VerificationError(f"no prefix root of size {a.size} is known to make evidence")
    if chain.origin != origin:
        raise OriginMismatchError(
            f"evidence is about origin {origin!r}, the key is for {chain.origin!r}"
        )
    return prove_fork(
        chain,
        older_note=a.text,
        newer_note=b.text,
        prefix_root=root,
        proof=proof if a.size != b.size else (),
    )


# -- bundles -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleAudit:
    """The outcome of :func:`audit_bundle`.

    Attributes:
        view: what the bundle showed (for :func:`judge_source`, :func:`cross_check`).
        chain: the key chain after the rotations the bundle proved.
        failures: checks that failed inside the bundle.
        rotations: indexes of the rotate entries applied.
    """

    view: SourceView
    chain: KeyChain
    failures: tuple[Failure, ...]
    rotations: tuple[int, ...]


def audit_bundle(
    reader: BundleReader,
    header: BundleHeader,
    chain: KeyChain,
    *,
    source: str,
    marks: Iterable[int] = (),
    check_entries: Callable[[bytes], Entry] | None = None,
    on_leaves: Callable[[int], None] | None = None,
) -> BundleAudit:
    """Replay a bundle's leaves from zero, verifying each checkpoint as its size is reached.

    Signatures are checked when the replay reaches a checkpoint's size, with
    the chain as rotations so far have made it; a ``rotate`` entry at index
    ``r`` is applied once the checkpoint of size ``r + 1`` (signed by the old
    key) has verified.

    Args:
        reader: positioned after :meth:`BundleReader.header`.
        header: what :meth:`BundleReader.header` returned.
        chain: the origin's key chain as the auditor trusts it.
        source: the bundle's name in reports.
        marks: other sizes at which to record the root (other sources'
            checkpoints, the saved head).
        check_entries: an entry parser (``protocol.entry.parse_entry`` or a
            faster equivalent) to also apply the entry rules; None to skip.
        on_leaves: called with the number of leaves replayed after each batch.

    Returns:
        The bundle's view and failures.

    Raises:
        MalformedError: if a leaf line or the trailer is malformed (the
            bundle cannot be read further).
    """
    origin = header.origin
    failures: list[Failure] = []
    pending = {size: (note, line) for size, note, line in header.checkpoints}
    replay = TreeReplay(CompactRange.empty(), [*marks, *pending])
    verified: list[VerifiedCheckpoint] = []
    applied: list[int] = []
    rules = LogRules() if check_entries is not None else None
    rotations = rules.rotations if rules is not None else PendingRotations()

    def fail(check: str, message: str, size: int | None = None) -> None:
        failures.append(
            Failure(check=check, origin=origin, source=source, message=message, new_size=size)
        )

    def reached(size: int) -> None:
        nonlocal chain
        if size in pending:
            note, line = pending.pop(size)
            try:
                opened = chain.open(note)
            except ProtocolError as e:
                fail("signature", f"checkpoint on line {line}: {e}", size)
            else:
                verified.append(replace(opened, source=source))
        if not rotations.due(size):
            return
        # Each rotation's size r + 1 is a mark, so it is settled right there.
        committed = bool(verified) and verified[-1].size == size
        try:
            chain = rotations.settle(chain, size, verified=committed)
        except ProtocolError as e:
            fail("key", str(e), size)
        else:
            if committed:
                applied.append(size - 1)

    if 0 in pending:
        reached(0)
    index = 0
    for datas in reader.leaf_batches(header.leaf_count):
        # Without entry rules only rotations need a look: find them with one
        # substring search per leaf instead of a parse.
        if rules is not None:
            candidates: Sequence[int] = range(len(datas))
        elif _ROTATE_MARK in b"\n".join(datas):  # one C search per batch; rotations are rare
            candidates = [i for i, d in enumerate(datas) if _ROTATE_MARK in d]
        else:
            candidates = ()
        for i in candidates:
            data = datas[i]
            at = index + i
            entry: Entry | None = None
            if rules is not None:
                assert check_entries is not None
                try:
                    entry = check_entries(data)
                except ProtocolError as e:
                    fail("entries", f"leaf {at}: {e}")
                try:
                    rules.append(entry)
                except ProtocolError as e:
                    fail("entries", f"leaf {at}: {e}")
            if _ROTATE_MARK in data:
                if entry is None:
                    try:
                        entry = parse_entry(data)
                    except ProtocolError as e:
                        fail("entries", f"leaf {at} looks like a rotation but: {e}")
                    else:
                        if rules is None and isinstance(entry, RotateEntry):
                            rotations.add(at, entry)
                if isinstance(entry, RotateEntry):
                    replay.add_mark(at + 1)
        sha = hashlib.sha256
        for size in replay.feed([sha(b"\x00" + d).digest() for d in datas]):
            reached(size)
        index += len(datas)
        if on_leaves is not None:
            on_leaves(index)
    for size, (_note, line) in sorted(pending.items()):
        fail(
            "leaves",
            f"checkpoint on line {line} has size {size} but the bundle has only "
            f"{header.leaf_count} leaves",
            size,
        )
    latest = header.checkpoints[-1][0] if header.checkpoints else None
    if latest is None:
        fail("leaves", "the bundle has no checkpoint; nothing is signed")
    elif latest < header.leaf_count:
        fail(
            "leaves",
            f"{header.leaf_count - latest} leaves after the latest checkpoint (size {latest}) "
            "are not covered by any signed checkpoint",
            header.leaf_count,
        )
    view = SourceView(
        source=source,
        authoritative=True,
        checkpoints=tuple(verified),
        replay_from=0,
        computed=replay.roots,
        tree=replay.tree,
        leaves_hashed=index,
    )
    return BundleAudit(view=view, chain=chain, failures=tuple(failures), rotations=tuple(applied))


# -- published tiles -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TilesAudit:
    """The outcome of :func:`audit_tiles`.

    Attributes:
        view: what the published log showed (for :func:`judge_source`,
            :func:`cross_check`): its checkpoint, and its tree's root at
            each size of interest.
        proofs: for each size of interest ``m`` (``0 < m < size``), the
            consistency proof ``m -> size`` computed from the tiles; fork
            evidence about the published tree needs it.
    """

    view: SourceView
    proofs: Mapping[int, Sequence[bytes]]


def audit_tiles(
    checkpoint: VerifiedCheckpoint,
    read_tile: Callable[[TileId], bytes],
    *,
    since: int = 0,
    marks: Iterable[int] = (),
    on_tiles: Callable[[int, int], None] | None = None,
) -> TilesAudit:
    """Audit a log published as tlog-tiles against its (verified) checkpoint.

    First every tile new since the tree of ``since`` (all of them for 0) is
    checked with :func:`~protocol.tiles.verify_tiles`, which names the first
    tile that does not hash to a trusted value. Then, for every size ``m``
    in ``marks`` up to the checkpoint's, the root of the first ``m`` leaves
    is read from the tiles and proven with a consistency proof (also from
    the tiles) to be the prefix of the signed tree, so the roots this
    returns are as good as the checkpoint's signature even for tiles older
    than ``since``, which were checked by an earlier audit and not re-read.
    If an old tile breaks such a proof, every tile is re-checked from zero,
    which names it.

    Args:
        checkpoint: the published checkpoint, its signature already verified.
        read_tile: returns a tile's bytes (from files or HTTP); whatever it
            raises (a missing tile) propagates.
        since: a tree size whose tiles an earlier audit verified.
        marks: sizes at which to give the root (the saved head's, other
            sources' checkpoints); those above the checkpoint's size are ignored.
        on_tiles: told the full tiles checked and to check (see
            :func:`~protocol.tiles.verify_tiles`).

    Returns:
        The published log's view and the consistency proofs.

    Raises:
        TileMismatchError: naming the wrong tile.
        MalformedError: if a tile has the wrong length (its path is the
            error's ``field``) or ``since`` exceeds the checkpoint's size.
    """
    size, root = checkpoint.size, checkpoint.root_hash
    verify_tiles(size, root, read_tile, since=since, on_tiles=on_tiles)
    reader = TileNodeReader(size, read_tile)
    computed: dict[int, bytes] = {size: root}
    proofs: dict[int, Sequence[bytes]] = {}
    for m in sorted({m for m in marks if 0 <= m < size}):
        if m == 0:
            computed[m] = EMPTY_ROOT
            continue
        prefix = CompactRange.from_frontier(m, reader.get_node_hashes(frontier_ids(m))).root()
        proof = compute_consistency_proof(m, size, reader)
        try:
            verify_consistency(m, size, prefix, root, proof)
        except ProofError:
            if since == 0:  # pragma: no cover - every tile was checked: cannot happen
                raise
            # An old tile is wrong: checking every tile from zero names it.
            return audit_tiles(checkpoint, read_tile, marks=marks, on_tiles=on_tiles)
        computed[m] = prefix
        proofs[m] = proof
    tree = CompactRange.from_frontier(size, reader.get_node_hashes(frontier_ids(size)))
    view = SourceView(
        source=checkpoint.source,
        authoritative=True,
        checkpoints=(checkpoint,),
        replay_from=since,
        computed=computed,
        tree=tree,
        leaves_hashed=size - since,
    )
    return TilesAudit(view=view, proofs=proofs)
