"""Decide: what the gathered and replayed sources mean, as failures, conflicts and notes.

Layer: node.audit. Pure functions of plain values (key chains, notes,
checkpoints, views, proofs): no I/O, no event loop. They hold the auditor's
own decisions (which key to trust, whether a node's rotation or history
holds, which checkpoints still need a proof, what to remember) and build on
the verdicts of :mod:`protocol.audit` (``judge_source``, ``cross_check``,
``conflict_evidence``), which the run calls directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import replace

from node.audit.report import SourceReport
from node.audit.state import OriginState
from protocol.api_documents import ServedRotation
from protocol.audit import (
    STATE_SOURCE,
    AuditHead,
    Conflict,
    Failure,
    SourceView,
)
from protocol.checkpoint import Checkpoint, CheckpointNote, VerifiedCheckpoint, checkpoint_size
from protocol.errors import MalformedError, ProtocolError, UnknownKeyError
from protocol.evidence import ForkEvidence, verify_fork_evidence
from protocol.judgement import HeldTree, judge_checkpoint
from protocol.keys import NoteVerifier
from protocol.note import parse_note
from protocol.rotation import KeyChain, apply_rotation_proof

__all__ = [
    "MAX_PROOF_CHECKS",
    "apply_rotations",
    "bundle_key_problem",
    "bundle_start_chain",
    "choose_key_chain",
    "conflict_failure",
    "failure",
    "first_divergences",
    "held_evidence",
    "history_failures",
    "needs_other_key",
    "next_head",
    "origins_to_audit",
    "plan_proof_checks",
    "proof_conflict",
    "source_reports",
    "verify_checkpoints",
]

MAX_PROOF_CHECKS = 200
"""Most extra consistency proofs fetched per origin for checkpoints nothing else covered."""


def failure(
    check: str,
    origin: str,
    source: str,
    message: str,
    old: int | None = None,
    new: int | None = None,
    evidence: ForkEvidence | None = None,
) -> Failure:
    """A :class:`~protocol.audit.Failure`, positionally."""
    return Failure(
        check=check,
        origin=origin,
        source=source,
        message=message,
        old_size=old,
        new_size=new,
        evidence=evidence,
    )


def origins_to_audit(held: set[str], wanted: frozenset[str] | None) -> tuple[list[str], list[str]]:
    """The origins to audit, sorted: those some target holds, narrowed to ``wanted``.

    Returns:
        The origins, and a note for each wanted origin no target holds.
    """
    if wanted is None:
        return sorted(held), []
    notes = [f"origin={origin}: no target holds it" for origin in sorted(wanted - held)]
    return sorted(held & wanted), notes


# -- the one place where the key of an origin is chosen -------------------------


def choose_key_chain(
    origin: str,
    remembered: OriginState | None,
    pinned: str | None,
    carried: Sequence[tuple[str, str]],
) -> tuple[KeyChain | None, list[str], str | None]:
    """The key chain to verify ``origin``'s checkpoints with.

    In order: the chain the state remembers (it may have followed rotations
    seen in bundles), else the key pinned on the command line or a card,
    else, trusted on first use with a warning, the key a bundle carries.
    The chain grows later in the run: bundles follow the rotations among
    their leaves, and live nodes prove theirs through ``/v1/rotations``
    (entries are not served to the auditor role; rotate entries are).

    Args:
        origin: the origin.
        remembered: its saved state, if any.
        pinned: the key given with ``--vkey`` or on a card.
        carried: ``(bundle path, key)`` for each bundle of the origin.

    Returns:
        The chain (None: skip the origin), notes, and a key failure message.
    """
    notes: list[str] = []
    if remembered is not None:
        chain = remembered.chain
        if pinned is not None and pinned not in _key_texts(chain):
            return (
                None,
                notes,
                f"the pinned key {pinned} is not in the key chain the audit state remembers "
                f"({', '.join(_key_texts(chain))})",
            )
        return chain, notes, None
    if pinned is not None:
        first, problem = _first_key(origin, pinned, "the pinned key")
        return first, notes, problem
    if carried:
        path, vkey = carried[0]
        first, problem = _first_key(origin, vkey, f"the key in bundle {path}")
        if first is not None:
            notes.append(
                f"origin={origin}: trusting the key carried by {path} on first use ({vkey}); "
                "pin it with --vkey"
            )
        return first, notes, problem
    return None, [f"origin={origin}: skipped, no trusted key (pass --vkey or --card)"], None


def _first_key(origin: str, vkey: str, what: str) -> tuple[KeyChain | None, str | None]:
    """A chain of the one key ``vkey``, or why ``what`` (that key) cannot be ``origin``'s."""
    try:
        verifier = NoteVerifier.from_text(vkey)
    except MalformedError as e:
        return None, f"{what} is malformed: {e}"
    if verifier.name != origin:
        return None, f"{what} is for {verifier.name!r}, not {origin!r}"
    return KeyChain.pinned(verifier), None


def _key_texts(chain: KeyChain) -> list[str]:
    return [p.verifier.to_text() for p in chain.periods]


# -- bundles --------------------------------------------------------------------


def bundle_start_chain(chain: KeyChain, carried: str) -> KeyChain:
    """The chain a bundle's replay starts from.

    A bundle starts from the log's first key. An auditor who trusts only a
    later key accepts it when the bundle's own rotations lead to that key
    (:func:`bundle_key_problem`, after the replay).

    Raises:
        MalformedError: the key the bundle carries is malformed.
    """
    if carried in _key_texts(chain):
        return chain
    return KeyChain.pinned(NoteVerifier.from_text(carried))


def bundle_key_problem(trusted: KeyChain, carried: str, reached: KeyChain) -> str | None:
    """Why a bundle that starts from another key than the trusted ones is refused, if it is.

    Args:
        trusted: the chain the auditor trusts.
        carried: the key the bundle carries (its log's first key).
        reached: the chain after the bundle's rotations.
    """
    keys = _key_texts(trusted)
    if carried in keys or set(keys) <= set(_key_texts(reached)):
        return None
    return (
        f"the bundle carries key {carried}, and its rotations do not lead to the trusted "
        f"key(s) {', '.join(keys)}"
    )


# -- live nodes -----------------------------------------------------------------


def needs_other_key(chain: KeyChain, note: str) -> bool:
    """The note has no signature line by the key ``chain`` gives for its size.

    That is when :meth:`KeyChain.open` raises ``UnknownKeyError`` (a rotation
    the chain lacks, or a foreign key), told from the key names and ids
    alone, without verifying a signature. A malformed note is left to the
    signature check, which reports it.
    """
    try:
        parsed = parse_note(note)
        want = chain.verifier_for(Checkpoint.from_text(parsed.text).size)
    except UnknownKeyError:
        return True
    except MalformedError:
        return False
    return not any(s.name == want.name and s.key_id == want.key_id for s in parsed.signatures)


def apply_rotations(
    origin: str,
    source: str,
    chain: KeyChain,
    head: AuditHead | None,
    served: Sequence[ServedRotation],
) -> tuple[KeyChain, list[Failure], list[str]]:
    """Extend ``chain`` by a node's rotations beyond its last period, in order.

    Each rotation is proven by the old key's checkpoint of size ``index + 1``
    and the rotate entry's inclusion proof. The first that cannot be
    followed stops the walk.

    Returns:
        The chain as extended, failures and notes.
    """
    failures: list[Failure] = []
    notes: list[str] = []
    for rotation in served:
        r = rotation.index
        if r + 2 <= chain.periods[-1].from_size:
            continue  # the chain already holds this rotation (or a later key)
        if rotation.checkpoint is None:
            notes.append(
                f"origin={origin}: {source} does not hold the checkpoint of size {r + 1} that "
                f"attests rotate entry {r}; the rotation cannot be followed from it"
            )
            break
        try:
            extended = apply_rotation_proof(
                chain, r, rotation.entry, rotation.proof, rotation.checkpoint
            )
        except ProtocolError as e:
            failures.append(
                failure(
                    "rotation", origin, source, f"index={r}: the rotate entry does not verify: {e}"
                )
            )
            break
        if extended is not chain and head is not None and head.size >= r + 2:
            # The old key signed the audited head past the rotation: one of
            # the two histories is false, and the state must keep verifying.
            try:
                extended.open(head.note)
            except ProtocolError as e:
                failures.append(
                    failure(
                        "rotation",
                        origin,
                        source,
                        f"index={r}: the tree of size {head.size} audited before is signed by "
                        f"a key this rotation retires at size {r + 2}: {e}",
                    )
                )
                break
        chain = extended
    return chain, failures, notes


def verify_checkpoints(
    origin: str, source: str, chain: KeyChain, notes: Iterable[CheckpointNote]
) -> tuple[tuple[VerifiedCheckpoint, ...], list[Failure]]:
    """The notes whose signatures verify under ``chain``, one per size, by increasing size.

    Returns:
        The verified checkpoints, and a ``signature`` failure for each note
        that does not verify.
    """
    failures: list[Failure] = []
    signed: dict[int, VerifiedCheckpoint] = {}
    for note in notes:
        try:
            opened = chain.open(note)
        except ProtocolError as e:
            size = None
            with contextlib.suppress(MalformedError):
                size = checkpoint_size(note)
            failures.append(failure("signature", origin, source, f"checkpoint: {e}", new=size))
            continue
        signed[opened.size] = replace(opened, source=source)
    return tuple(signed[s] for s in sorted(signed)), failures


def history_failures(
    origin: str,
    source: str,
    head: AuditHead,
    checkpoints: Sequence[VerifiedCheckpoint],
    *,
    published: bool = False,
) -> list[Failure]:
    """The origin's own node must still serve the head audited before, and no smaller tree.

    A published log (``published``) holds only its latest checkpoint: it
    must not be smaller than the head; that it extends the head is checked
    with its tiles.

    Args:
        origin: the origin.
        source: the URL of the origin's own node, or of its published log.
        head: the head saved by the last audit.
        checkpoints: the node's verified checkpoints, by size (at least one).
        published: the source is the origin's published log (tlog-tiles).
    """
    latest = checkpoints[-1]
    if latest.size < head.size:
        what = "the origin's published log" if published else "the origin's own node"
        return [
            failure(
                "history",
                origin,
                source,
                f"{what} serves size {latest.size}, smaller than the size "
                f"{head.size} audited before: its log lost or hides entries",
                head.size,
                latest.size,
            )
        ]
    if not published and head.size > 0 and all(cp.size != head.size for cp in checkpoints):
        return [
            failure(
                "history",
                origin,
                source,
                f"the origin's own node no longer serves the checkpoint of size {head.size} "
                "audited before",
                new=head.size,
            )
        ]
    return []


def held_evidence(
    origin: str, source: str, chain: KeyChain, evidence: Iterable[ForkEvidence]
) -> tuple[list[Failure], list[str]]:
    """Fork evidence a node holds against the origin: verified, it is a ``split-view`` failure.

    Returns:
        Failures, and a note for each piece that does not verify (ignored).
    """
    failures: list[Failure] = []
    notes: list[str] = []
    for item in evidence:
        if item.origin != origin:
            continue
        try:
            size_b = checkpoint_size(item.note_b)
            verify_fork_evidence(item, chain)
        except ProtocolError as e:
            notes.append(
                f"origin={origin}: {source} holds fork evidence that does not "
                f"verify under the trusted key ({e}); ignored"
            )
            continue
        failures.append(
            failure(
                "split-view",
                origin,
                source,
                "the node holds verified fork evidence: the origin signed two trees of "
                f"sizes {checkpoint_size(item.note_a)} and {size_b} that cannot both "
                "be true",
                checkpoint_size(item.note_a),
                size_b,
                item,
            )
        )
    return failures, notes


# -- conflicts ------------------------------------------------------------------


def proof_conflict(
    check: str, older: VerifiedCheckpoint, newer: VerifiedCheckpoint, proof: Sequence[bytes]
) -> Conflict | None:
    """A conflict when ``proof`` does not show ``newer`` extends ``older``; None when it does.

    The decision is the one checkpoint judgement
    (:func:`protocol.judgement.judge_checkpoint`), ``older`` as the tree held.
    """
    held = HeldTree(size=older.size, root_hash=older.root_hash)
    if judge_checkpoint(newer, held, proof_from_held=proof):
        return None
    return Conflict(check=check, older=older, newer=newer, prefix_root=None)


def _prover(cp: VerifiedCheckpoint, views: Sequence[SourceView]) -> VerifiedCheckpoint | None:
    """The latest checkpoint of a live source (the origin's own node first) that covers ``cp``."""
    candidates = [
        v.latest
        for v in sorted(views, key=lambda v: not v.authoritative)
        if v.latest is not None and v.source != cp.source and v.latest.size >= cp.size
    ]
    return candidates[0] if candidates else None


def plan_proof_checks(
    origin: str, unchecked: Sequence[VerifiedCheckpoint], live: Sequence[SourceView]
) -> tuple[list[tuple[VerifiedCheckpoint, VerifiedCheckpoint]], list[str]]:
    """Which consistency proofs to ask for, for the checkpoints nothing covered.

    Each checkpoint is proven against the latest tree of a live source that
    covers it (the origin's own node first); at most :data:`MAX_PROOF_CHECKS`
    per origin.

    Args:
        origin: the origin.
        unchecked: the checkpoints :func:`~protocol.audit.cross_check` left unchecked.
        live: the live nodes' views.

    Returns:
        ``(checkpoint, newer)`` pairs, ``newer.source`` being the node to ask;
        and notes for what is left unchecked.
    """
    plan: list[tuple[VerifiedCheckpoint, VerifiedCheckpoint]] = []
    notes: list[str] = []
    for cp in unchecked:
        newer = _prover(cp, live)
        if newer is None:
            notes.append(
                f"origin={origin}: the checkpoint of size {cp.size} from {cp.source} could "
                "not be compared with any other source"
            )
            continue
        if len(plan) == MAX_PROOF_CHECKS:
            notes.append(
                f"origin={origin}: more than {MAX_PROOF_CHECKS} checkpoints needed a proof; "
                "the rest were not compared"
            )
            break
        plan.append((cp, newer))
    return plan, notes


def first_divergences(conflicts: Iterable[Conflict]) -> list[Conflict]:
    """One conflict per pair of sources (per source, within one): the smallest.

    The first divergence, where the evidence is smallest, says all there is to say.
    """
    seen: set[frozenset[str]] = set()
    out: list[Conflict] = []
    for conflict in sorted(conflicts, key=lambda c: (c.older.size, c.newer.size)):
        key = frozenset((conflict.older.source, conflict.newer.source))
        if key not in seen:
            seen.add(key)
            out.append(conflict)
    return out


def conflict_failure(
    origin: str, conflict: Conflict, evidence: ForkEvidence | None, no_evidence: str | None
) -> Failure:
    """The failure a conflict makes, with its fork evidence or why there is none."""
    a, b = conflict.older, conflict.newer
    why = f" (no fork evidence: {no_evidence})" if no_evidence is not None else ""
    return failure(
        conflict.check,
        origin,
        b.source if a.source in (b.source, STATE_SOURCE) else f"{a.source} vs {b.source}",
        conflict.message() + why,
        a.size,
        b.size,
        evidence,
    )


# -- what to remember -----------------------------------------------------------


def next_head(views: Iterable[SourceView], head: AuditHead | None) -> AuditHead | None:
    """The head to save after a clean audit: the largest tree whose leaves produced its root.

    The old head stays when no source verified a larger tree.
    """
    best = max(
        (v for v in views if v.leaves_ok and v.tree is not None and v.latest is not None),
        key=lambda v: v.tree.size if v.tree is not None else -1,
        default=None,
    )
    if (
        best is not None
        and best.tree is not None
        and best.latest is not None
        and (head is None or best.tree.size > head.size)
    ):
        return AuditHead.from_tree(best.tree, best.latest.text)
    return head


def source_reports(views: Iterable[SourceView]) -> tuple[SourceReport, ...]:
    """What each source showed, for the report."""
    return tuple(
        SourceReport(
            source=v.source,
            size=v.latest.size if v.latest else None,
            checkpoints=len(v.checkpoints),
            replay_from=v.replay_from,
            leaves_hashed=v.leaves_hashed,
        )
        for v in views
    )
