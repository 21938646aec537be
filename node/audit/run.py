"""One audit run: gather what nodes and bundles show, replay their leaves, decide.

Layer: node.audit. The run only sequences the three stages and records what
they find, in order: :mod:`node.audit.gather` does every request and file
read (through the capped :class:`~node.audit.client.AuditClient`, over
mutual TLS as an ``auditor``), :mod:`node.audit.replay` hashes leaves into
trees, :mod:`node.audit.decide` and :mod:`protocol.audit` give the verdicts.

One run audits every origin that any target (live node or bundle) holds and
for which a key is trusted. Per origin:

1. **Gather.** Each node's checkpoints from the saved head on
   (``/v1/checkpoints``, paged) and its latest (``/v1/logs``); each bundle's
   header; each published log's checkpoint. Only sizes are read at this
   point, to plan the replays.
2. **Replay bundles** from zero (:func:`protocol.audit.audit_bundle`),
   verifying each checkpoint with the key chain as the bundle's rotations
   extend it.
3. **Replay nodes.** A node whose checkpoints need a key the chain lacks (the
   origin rotated its key) is asked for the rotations it holds
   (``/v1/rotations``), each proven by the old key's checkpoint and an
   inclusion proof (:func:`protocol.rotation.apply_rotation_proof`); the
   chain is extended before any node's checkpoint is verified. Every
   checkpoint's signature is verified with that chain. A node whose latest
   tree is larger than the saved head must prove it extends the head
   (``/v1/proof/consistency``); then its leaf hashes after the head
   (``/v1/leaf-hashes``, never entries) are replayed from the saved frontier,
   recording the root at every size any source signed.
   A log published as tlog-tiles (no certificate needed) has its one
   checkpoint verified with the same chain, extended first by the rotations
   the log publishes (``rotations``, proven like ``/v1/rotations``) when
   the checkpoint needs a later key; each rotation's checkpoint of size
   ``r + 1`` joins the published view, so the published tree must extend
   it. Its tiles are checked against the checkpoint
   (:func:`protocol.audit.audit_tiles`, which names a wrong tile; only
   tiles new since the saved head, unless ``full``), and its
   tree's root read at every size any source signed, each proven a prefix
   of the signed tree.
4. **Decide.** Each source's checkpoints against its own leaves
   (:func:`~protocol.audit.judge_source`), every source against every other
   and against the saved head (:func:`~protocol.audit.cross_check`);
   checkpoints nothing covered are checked with consistency proofs. Every
   conflict becomes fork evidence when the larger tree's source proves its
   prefix.
5. **Remember.** An origin with no failure gets its new head (the largest
   verified tree and its frontier) and key chain saved; an origin with a
   failure keeps its old head, so the next run fails again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from node.audit.client import AuditClient
from node.audit.decide import (
    apply_rotations,
    bundle_key_problem,
    bundle_start_chain,
    choose_key_chain,
    conflict_failure,
    failure,
    first_divergences,
    held_evidence,
    history_failures,
    needs_other_key,
    next_head,
    origins_to_audit,
    plan_proof_checks,
    proof_conflict,
    source_reports,
    verify_checkpoints,
)
from node.audit.gather import (
    BundleFile,
    LiveNode,
    checkpoint_notes,
    open_bundle,
    open_node,
    prove_prefix,
)
from node.audit.replay import node_view, replay_bundle, replay_marks, replay_node
from node.audit.report import AuditReport, OriginReport
from node.audit.state import AuditState, OriginState, now_utc
from node.errors import PeerError
from node.sync.published import PublishedLog, PublishedTarget, open_published
from protocol.audit import (
    AuditHead,
    Conflict,
    Failure,
    SourceView,
    TreeReplay,
    audit_tiles,
    conflict_evidence,
    cross_check,
    judge_source,
)
from protocol.checkpoint import VerifiedCheckpoint, checkpoint_size
from protocol.errors import MalformedError, ProtocolError
from protocol.evidence import ForkEvidence
from protocol.rotation import KeyChain
from protocol.tiles import TILE_WIDTH, TileMismatchError
from protocol.tree import CompactRange

__all__ = ["AuditOptions", "AuditProgress", "NodeTarget", "PublishedTarget", "run_audit"]

AuditProgress = Callable[[str, int, int], None]
"""``progress(part, hashes done, hashes in all)``, one part per origin and source."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeTarget:
    """A node to audit live.

    Attributes:
        url: ``https://HOST:PORT``.
        server_cert_pem: the node's TLS certificate (from its card), pinned.
        vkey: the node's own verifier key from its card, if known.
    """

    url: str
    server_cert_pem: str
    vkey: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditOptions:
    """How to audit.

    Attributes:
        cert_path: the auditor's TLS certificate (needed for live nodes).
        key_path: its private key.
        trusted_keys: origin -> verifier key text the auditor pins.
        full: re-fetch every leaf hash from zero instead of from the saved head.
        check_entries: apply the entry rules to bundle leaves too (slower).
        origins: audit only these origins (None: every origin with a key).
        card: the auditor's own signed card (after ``hashmesh tls renew``),
            presented to every node audited so that each trusts its renewed
            certificate; None to present nothing.
    """

    cert_path: Path | None = None
    key_path: Path | None = None
    trusted_keys: Mapping[str, str] = field(default_factory=dict)
    full: bool = False
    check_entries: bool = False
    origins: frozenset[str] | None = None
    card: str | None = None


async def run_audit(
    nodes: Sequence[NodeTarget],
    bundles: Sequence[Path],
    state: AuditState,
    options: AuditOptions,
    published: Sequence[PublishedTarget] = (),
    progress: AuditProgress | None = None,
) -> AuditReport:
    """Audit live nodes, bundles and published logs against each other and the saved state.

    Args:
        nodes: nodes to audit live (as an ``auditor``).
        bundles: bundle files to audit.
        state: what earlier audits remembered.
        options: keys, TLS identity, modes.
        published: logs published as tlog-tiles (HTTPS or directories).
        progress: told, for each origin and source (the part ``ORIGIN from
            SOURCE``), the hashes replayed (leaf hashes of a node or a
            bundle) or checked (in tiles of a published log) and their total.

    Returns:
        The failures, per-origin outcomes, notes and the state to save
        (unchanged for any origin that failed).
    """
    opened = _Found("")
    live_nodes: list[LiveNode] = []
    files: list[BundleFile] = []
    logs: list[PublishedLog] = []
    reports: list[OriginReport] = []
    try:
        for target in nodes:
            node = await _open_node(opened, target, options)
            if node is not None:
                live_nodes.append(node)
        for path in bundles:
            bundle = _open_bundle(opened, path)
            if bundle is not None:
                files.append(bundle)
        for where in published:
            log = await _open_published(opened, where)
            if log is not None:
                logs.append(log)
        held = (
            {o for n in live_nodes for o in n.logs}
            | {b.header.origin for b in files}
            | {p.origin for p in logs}
        )
        origins, notes = origins_to_audit(held, options.origins)
        failures, notes = opened.failures, opened.notes + notes
        for origin in origins:
            found, report, remember = await _audit_origin(
                origin,
                [n for n in live_nodes if origin in n.logs],
                [b for b in files if b.header.origin == origin],
                state.origins.get(origin),
                options,
                [p for p in logs if p.origin == origin],
                progress,
            )
            failures += found.failures
            notes += found.notes
            reports.append(report)
            if remember is not None:
                state = state.with_origin(origin, remember)
    finally:
        for node in live_nodes:
            await node.client.close()
        for bundle in files:
            bundle.file.close()
        for log in logs:
            await log.close()
    return AuditReport(
        failures=tuple(failures), origins=tuple(reports), notes=tuple(notes), state=state
    )


@dataclass(slots=True)
class _Found:
    """What the audit of one origin (``""``: of the targets themselves) found, in order."""

    origin: str
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fail(
        self,
        check: str,
        source: str,
        message: str,
        old: int | None = None,
        new: int | None = None,
        evidence: ForkEvidence | None = None,
    ) -> None:
        self.failures.append(failure(check, self.origin, source, message, old, new, evidence))

    def add(self, failures: Sequence[Failure], notes: Sequence[str] = ()) -> None:
        self.failures += failures
        self.notes += notes


@dataclass(slots=True)
class _Live:
    """A node holding the origin: the notes it signed (unverified), and its view once replayed."""

    node: LiveNode
    notes: list[str]
    view: SourceView | None = None


# Proofs fetched while replaying, by (older size, source, newer size), for evidence.
_Proofs = dict[tuple[int, str, int], Sequence[bytes]]


async def _open_node(found: _Found, target: NodeTarget, options: AuditOptions) -> LiveNode | None:
    if options.cert_path is None or options.key_path is None:
        found.fail("fetch", target.url, "a live audit needs --cert and --key")
        return None
    try:
        node = await open_node(
            target.url, target.server_cert_pem, options.cert_path, options.key_path
        )
    except PeerError as e:
        found.fail("fetch", target.url, e.reason)
        return None
    if options.card is not None:
        # Not a check of the audited log: a refusal is a note, the audit goes on.
        try:
            answer = await node.client.present_card(options.card)
        except PeerError as e:
            found.notes.append(f"{target.url} did not take the auditor's signed card: {e.reason}")
        else:
            if answer.accepted:
                found.notes.append(
                    f"{target.url} now trusts the auditor's renewed certificate (card serial "
                    f"{answer.serial})"
                )
    return node


async def _open_published(found: _Found, target: PublishedTarget) -> PublishedLog | None:
    try:
        return await open_published(target)
    except PeerError as e:
        found.fail("fetch", target.location, e.reason)
    except OSError as e:
        found.fail("fetch", target.location, f"cannot read the checkpoint: {e.strerror or e}")
    except MalformedError as e:
        found.fail("format", target.location, f"the checkpoint: {e}")
    return None


def _open_bundle(found: _Found, path: Path) -> BundleFile | None:
    try:
        return open_bundle(path)
    except OSError as e:
        found.fail("fetch", str(path), f"cannot read the bundle: {e.strerror or e}")
    except MalformedError as e:
        found.fail("format", str(path), str(e))
    return None


async def _audit_origin(
    origin: str,
    nodes: Sequence[LiveNode],
    bundles: Sequence[BundleFile],
    remembered: OriginState | None,
    options: AuditOptions,
    published: Sequence[PublishedLog] = (),
    progress: AuditProgress | None = None,
) -> tuple[_Found, OriginReport, OriginState | None]:
    """Audit one origin; returns what was found, the report, and the state to remember."""
    found = _Found(origin)
    chain, notes, key_problem = choose_key_chain(
        origin,
        remembered,
        options.trusted_keys.get(origin),
        [(str(b.path), b.header.vkey) for b in bundles],
    )
    found.notes += notes
    head = remembered.head if remembered is not None else None
    head_before = head.size if head else None
    if key_problem is not None:
        found.fail("key", "command line", key_problem)
    if chain is None and key_problem is None:
        # A published log carries no key, and was named as a target: not a silent skip.
        for log in published:
            found.fail(
                "key",
                log.source,
                f"no key is trusted for {origin}, the origin of this published log: pass "
                "its --vkey KEY",
            )
    if chain is None:
        status = "failed" if found.failures else "skipped"
        return found, _report(origin, status, (), head_before, head, ()), None
    start = head.size if head is not None and not options.full else 0

    # Gather: what each node signed since the head.
    live: list[_Live] = []
    for node in nodes:
        try:
            live.append(_Live(node, await checkpoint_notes(node, origin, start)))
        except PeerError as e:
            found.fail("fetch", node.url, e.reason)
    notes_seen = [*(n for lv in live for n in lv.notes), *(p.note for p in published)]
    marks = replay_marks(head, notes_seen, (b.header for b in bundles))

    # Replay: bundles first, as the rotations among their leaves extend the chain.
    views: list[SourceView] = []
    for bundle in bundles:
        replayed = await _replay_bundle(
            found, bundle, chain, marks, options.check_entries, _part(progress, found, bundle.path)
        )
        if replayed is not None:
            view, chain = replayed
            views.append(view)
    if live:
        chain = await _follow_rotations(found, live, chain, head)
    rotation_notes: dict[str, list[str]] = {}
    for log in published:
        chain, rotation_notes[log.source] = await _follow_published_rotations(
            found, log, chain, head
        )
    conflicts: list[Conflict] = []
    proofs: _Proofs = {}
    for lv in live:
        lv.view = await _replay_node(
            found,
            lv,
            chain,
            head,
            start,
            marks,
            conflicts,
            proofs,
            _part(progress, found, lv.node.url),
        )
        if lv.view is not None:
            views.append(lv.view)
    for log in published:
        tiled = await _audit_published(
            found,
            log,
            chain,
            head,
            marks,
            options.full,
            proofs,
            rotation_notes[log.source],
            _part(progress, found, log.source),
        )
        if tiled is not None:
            views.append(tiled)

    # Decide.
    for node in nodes:
        found.add(*held_evidence(origin, node.url, chain, node.evidence))
    for view in views:
        failures, more = judge_source(origin, view)
        found.add(failures)
        conflicts += more
    more, unchecked = cross_check(views, head)
    conflicts += more
    conflicts += await _check_uncovered(found, unchecked, live, proofs)
    await _report_conflicts(
        found, chain, conflicts, bundles, live, proofs, {p.source for p in published}
    )

    keys = tuple(p.verifier.to_text() for p in chain.periods)
    if found.failures:
        return found, _report(origin, "failed", views, head_before, head, keys), None
    new_head = next_head(views, head)
    remember = OriginState(chain, new_head, now_utc() if new_head is not None else None)
    return found, _report(origin, "ok", views, head_before, new_head, keys), remember


def _part(
    progress: AuditProgress | None, found: _Found, source: object
) -> Callable[[int, int], None] | None:
    """``progress`` narrowed to one origin and source: ``(done, total)``."""
    if progress is None:
        return None
    part = f"{found.origin} from {source}"
    return lambda done, total: progress(part, done, total)


def _report(
    origin: str,
    status: str,
    views: Sequence[SourceView],
    head_before: int | None,
    head_after: AuditHead | None,
    keys: tuple[str, ...],
) -> OriginReport:
    return OriginReport(
        origin=origin,
        status=status,
        sources=source_reports(views),
        head_before=head_before,
        head_after=head_after,
        keys=keys,
    )


async def _replay_bundle(
    found: _Found,
    bundle: BundleFile,
    chain: KeyChain,
    marks: set[int],
    check_entries: bool,
    progress: Callable[[int, int], None] | None,
) -> tuple[SourceView, KeyChain] | None:
    """The bundle's view and the chain as its rotations extend it; None if it fails as a whole."""
    source = str(bundle.path)
    carried = bundle.header.vkey
    try:
        start = bundle_start_chain(chain, carried)
    except MalformedError as e:
        found.fail("format", source, f"the bundle's key: {e}")
        return None
    try:
        result = await replay_bundle(
            bundle, start, marks, check_entries=check_entries, progress=progress
        )
    except MalformedError as e:
        found.fail("format", source, str(e))
        return None
    problem = bundle_key_problem(chain, carried, result.chain)
    if problem is not None:
        found.fail("key", source, problem)
        return None
    found.add(result.failures)
    return result.view, result.chain


async def _follow_rotations(
    found: _Found, live: Sequence[_Live], chain: KeyChain, head: AuditHead | None
) -> KeyChain:
    """Extend ``chain`` by the rotations nodes prove, where their checkpoints need it.

    A node is asked (the origin's own node first) when one of its
    checkpoints needs a key the chain, as extended so far, lacks; so
    every node's checkpoints are then verified with the same chain.
    """
    origin = found.origin
    for lv in sorted(live, key=lambda lv: lv.node.own_origin != origin):
        if not any(needs_other_key(chain, note) for note in lv.notes):
            continue
        try:
            served = await lv.node.client.rotations(origin)
        except PeerError as e:
            found.fail("fetch", lv.node.url, e.reason)
            continue
        chain, failures, notes = apply_rotations(origin, lv.node.url, chain, head, served)
        found.add(failures, notes)
    return chain


async def _follow_published_rotations(
    found: _Found, log: PublishedLog, chain: KeyChain, head: AuditHead | None
) -> tuple[KeyChain, list[str]]:
    """Extend ``chain`` by the rotations a published log proves, if its checkpoint needs it.

    Returns:
        The chain, and the notes of the old keys' checkpoints that attest
        the rotations followed (the published tree must extend them).
    """
    if not needs_other_key(chain, log.note):
        return chain, []
    try:
        served = await log.rotations()
    except PeerError as e:
        found.fail("fetch", log.source, e.reason)
        return chain, []
    except OSError as e:
        found.fail("fetch", log.source, f"cannot read {e.filename}: {e.strerror or e}")
        return chain, []
    except MalformedError as e:
        found.fail("format", log.source, str(e))
        return chain, []
    if not served:
        return chain, []
    extended, failures, notes = apply_rotations(found.origin, log.source, chain, head, served)
    found.add(failures, notes)
    followed = {p.rotated_by for p in extended.periods}
    attests = [r.checkpoint for r in served if r.checkpoint is not None and r.index in followed]
    return extended, attests


async def _replay_node(
    found: _Found,
    lv: _Live,
    chain: KeyChain,
    head: AuditHead | None,
    start: int,
    marks: set[int],
    conflicts: list[Conflict],
    proofs: _Proofs,
    progress: Callable[[int, int], None] | None = None,
) -> SourceView | None:
    """The node's view: its verified checkpoints and the roots its leaf hashes produce.

    Leaves are replayed from the saved head (``start``) once the node proves
    its latest tree extends it; a proof that fails is a conflict.
    """
    origin, url, client = found.origin, lv.node.url, lv.node.client
    checkpoints, failures = verify_checkpoints(origin, url, chain, lv.notes)
    found.add(failures)
    if not checkpoints:
        return None
    latest = checkpoints[-1]
    authoritative = lv.node.own_origin == origin
    if head is not None and authoritative:
        found.add(history_failures(origin, url, head, checkpoints))
    tree = CompactRange.empty()
    if start and head is not None:
        if latest.size < head.size:
            return node_view(url, authoritative, checkpoints, start, None)
        if latest.size > head.size:
            try:
                proof = await client.consistency(origin, head.size, latest.size)
            except PeerError as e:
                found.fail("fetch", url, e.reason, head.size, latest.size)
                return node_view(url, authoritative, checkpoints, start, None)
            conflict = proof_conflict("consistency", head.verified(), latest, proof.hashes)
            if conflict is not None:
                conflicts.append(conflict)
                proofs[(head.size, url, latest.size)] = proof.hashes
                return node_view(url, authoritative, checkpoints, start, None)
        tree = head.tree()
    replay = TreeReplay(tree, {m for m in marks if m <= latest.size} | {latest.size})
    try:
        await replay_node(replay, client, origin, latest.size, progress)
    except PeerError as e:
        found.fail("fetch", url, e.reason, replay.size, latest.size)
        return node_view(url, authoritative, checkpoints, start, None)
    return node_view(url, authoritative, checkpoints, tree.size, replay)


async def _audit_published(
    found: _Found,
    log: PublishedLog,
    chain: KeyChain,
    head: AuditHead | None,
    marks: set[int],
    full: bool,
    proofs: _Proofs,
    attests: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> SourceView | None:
    """A published log's view: its verified checkpoint, its tiles checked, prefix roots proven.

    The tiles new since the saved head are checked (all of them when
    ``full``, or when the log is smaller than the head); the roots at the
    other sources' sizes and the head's come with consistency proofs from the
    tiles, kept in ``proofs`` for fork evidence. ``attests`` are the old
    keys' checkpoints of the rotations followed: they join the view, so a
    published tree that does not extend them is a conflict.
    """
    origin, source = found.origin, log.source
    checkpoints, failures = verify_checkpoints(origin, source, chain, [*attests, log.note])
    found.add(failures)
    size = checkpoint_size(log.note)
    published = [cp for cp in checkpoints if cp.size == size]
    if not published:
        if needs_other_key(chain, log.note):
            found.notes.append(
                f"origin={origin}: {source} is signed by a key the trusted chain lacks, and "
                "the rotations it publishes (`rotations`) do not lead to it"
            )
        return None
    latest = published[0]
    checkpoints = tuple(cp for cp in checkpoints if cp.size <= latest.size)
    if head is not None:
        found.add(history_failures(origin, source, head, checkpoints, published=True))
    since = head.size if head is not None and not full and head.size <= latest.size else 0
    try:
        audited = await asyncio.to_thread(
            audit_tiles,
            latest,
            log.read_tile,
            since=since,
            marks=marks | {cp.size for cp in checkpoints},
            on_tiles=None
            if progress is None
            else lambda done, total: progress(done * TILE_WIDTH, total * TILE_WIDTH),
        )
    except TileMismatchError as e:
        found.fail("leaves", source, str(e), since, latest.size)
        return None
    except MalformedError as e:
        found.fail("format", source, str(e), new=latest.size)
        return None
    except PeerError as e:
        found.fail("fetch", source, e.reason, new=latest.size)
        return None
    except OSError as e:
        found.fail("fetch", source, f"cannot read {e.filename}: {e.strerror or e}", new=latest.size)
        return None
    for size, proof in audited.proofs.items():
        proofs[(size, source, latest.size)] = proof
    return replace(audited.view, checkpoints=checkpoints)


async def _check_uncovered(
    found: _Found, unchecked: Sequence[VerifiedCheckpoint], live: Sequence[_Live], proofs: _Proofs
) -> list[Conflict]:
    """Conflicts among the checkpoints nothing covered, by consistency proofs from live nodes."""
    origin = found.origin
    plan, notes = plan_proof_checks(
        origin, unchecked, [lv.view for lv in live if lv.view is not None]
    )
    found.add((), notes)
    clients: dict[str, AuditClient] = {}
    for lv in live:
        clients.setdefault(lv.node.url, lv.node.client)
    conflicts: list[Conflict] = []
    for cp, newer in plan:
        try:
            proof = await clients[newer.source].consistency(origin, cp.size, newer.size)
        except PeerError as e:
            found.fail("fetch", newer.source, e.reason, cp.size, newer.size)
            continue
        conflict = proof_conflict("split-view", cp, newer, proof.hashes)
        if conflict is not None:
            conflicts.append(conflict)
            proofs[(cp.size, newer.source, newer.size)] = proof.hashes
    return conflicts


async def _report_conflicts(
    found: _Found,
    chain: KeyChain,
    conflicts: Sequence[Conflict],
    bundles: Sequence[BundleFile],
    live: Sequence[_Live],
    proofs: _Proofs,
    published: set[str],
) -> None:
    """A failure for each first divergence, with fork evidence when the newer source proves it.

    A published log proves its prefixes with the proofs its tiles gave
    (``proofs``); the conflict carries the prefix root, proven as well.
    """
    origin = found.origin
    nodes = [lv.node for lv in live]
    for conflict in first_divergences(conflicts):
        a, b = conflict.older, conflict.newer
        evidence = None
        no_evidence = None
        try:
            known = proofs.get((a.size, b.source, b.size))
            if b.source in published:
                proof, prefix = known or (), conflict.prefix_root
            else:
                proof, prefix = await prove_prefix(origin, conflict, bundles, nodes, known)
            evidence = conflict_evidence(origin, conflict, chain, proof=proof, prefix_root=prefix)
        except (ProtocolError, PeerError) as e:
            no_evidence = str(e)
        found.add([conflict_failure(origin, conflict, evidence, no_evidence)])
