"""The audit engine: fetch what nodes and bundles show, let ``protocol.audit`` decide.

Layer: node.audit. Performs network I/O (through the capped
:class:`~node.audit.client.AuditClient`, over mutual TLS as an ``auditor``)
and reads bundle files; every verdict comes from :mod:`protocol.audit`.

One run audits every origin that any target (live node or bundle) holds and
for which a key is trusted. Per origin:

1. **Gather.** Each node's checkpoints from the saved head on
   (``/v1/checkpoints``, paged) and its latest (``/v1/logs``); each bundle's
   header. Only sizes are read at this point, to plan the replays.
2. **Bundles** are replayed from zero (:func:`protocol.audit.audit_bundle`),
   verifying each checkpoint with the key chain as the bundle's rotations
   extend it.
3. **Nodes.** Every checkpoint's signature is verified with that chain. A
   node whose checkpoints need a key the chain lacks (the origin rotated its
   key) is asked for the rotations it holds (``/v1/rotations``), each proven
   by the old key's checkpoint and an inclusion proof
   (:func:`protocol.rotation.apply_rotation_proof`); the chain is extended
   before any node's checkpoint is verified. A node whose latest tree is
   larger than the saved head must prove it
   extends the head (``/v1/proof/consistency``); then its leaf hashes after
   the head (``/v1/leaf-hashes``, never entries) are replayed from the saved
   frontier, recording the root at every size any source signed.
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
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from node.audit.client import AuditClient
from node.audit.state import AuditState, OriginState, now_utc
from node.errors import PeerError
from node.ledger.replica import parse_entry_fast
from node.sync.client import RemoteLog
from protocol.audit import (
    STATE_SOURCE,
    AuditHead,
    BundleHeader,
    BundleReader,
    Conflict,
    Failure,
    SignedCheckpoint,
    SourceView,
    TreeReplay,
    audit_bundle,
    checkpoint_size,
    conflict_evidence,
    consistency_proof_from_leaves,
    cross_check,
    implied_prefix_root,
    judge_source,
    root_of_leaves,
)
from protocol.checkpoint import Checkpoint
from protocol.errors import MalformedError, ProtocolError, UnknownKeyError
from protocol.evidence import ForkEvidence, verify_fork_evidence
from protocol.hashing import hash_leaf
from protocol.keys import NoteVerifier
from protocol.merkle import verify_consistency
from protocol.note import parse_note
from protocol.rotation import KeyChain, apply_rotation_proof
from protocol.tree import CompactRange

__all__ = [
    "AuditOptions",
    "AuditReport",
    "NodeTarget",
    "OriginReport",
    "SourceReport",
    "choose_key_chain",
    "run_audit",
]

CHECKPOINTS_PAGE = 1000
"""``/v1/checkpoints`` page size (the server's cap)."""

MAX_PROOF_CHECKS = 200
"""Most extra consistency proofs fetched per origin for checkpoints nothing else covered."""


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
    """

    cert_path: Path | None = None
    key_path: Path | None = None
    trusted_keys: Mapping[str, str] = field(default_factory=dict)
    full: bool = False
    check_entries: bool = False
    origins: frozenset[str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceReport:
    """What one source showed of one origin."""

    source: str
    size: int | None
    checkpoints: int
    replay_from: int
    leaves_hashed: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OriginReport:
    """The outcome for one origin.

    Attributes:
        status: ``ok``, ``failed`` or ``skipped``.
        head_before: the saved head's size before this run (None: first audit).
        head_after: the head saved by this run (the old one if it failed).
    """

    origin: str
    status: str
    sources: tuple[SourceReport, ...]
    head_before: int | None
    head_after: AuditHead | None
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditReport:
    """Everything one run found; ``state`` is what to save."""

    failures: tuple[Failure, ...]
    origins: tuple[OriginReport, ...]
    notes: tuple[str, ...]
    state: AuditState

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return not self.failures


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
        if pinned is not None and all(p.verifier.to_text() != pinned for p in chain.periods):
            return (
                None,
                notes,
                f"the pinned key {pinned} is not in the key chain the audit state remembers "
                f"({', '.join(p.verifier.to_text() for p in chain.periods)})",
            )
        return chain, notes, None
    if pinned is not None:
        try:
            verifier = NoteVerifier.from_text(pinned)
        except MalformedError as e:
            return None, notes, f"the pinned key is malformed: {e}"
        if verifier.name != origin:
            return None, notes, f"the pinned key is for {verifier.name!r}, not {origin!r}"
        return KeyChain.pinned(verifier), notes, None
    if carried:
        path, vkey = carried[0]
        try:
            verifier = NoteVerifier.from_text(vkey)
        except MalformedError as e:
            return None, notes, f"the key in bundle {path} is malformed: {e}"
        if verifier.name != origin:
            return None, notes, f"the key in bundle {path} is for {verifier.name!r}, not {origin!r}"
        notes.append(
            f"origin={origin}: trusting the key carried by {path} on first use ({vkey}); "
            "pin it with --vkey"
        )
        return KeyChain.pinned(verifier), notes, None
    return None, [f"origin={origin}: skipped, no trusted key (pass --vkey or --card)"], None


# -- sources -------------------------------------------------------------------


@dataclass(slots=True)
class _Node:
    target: NodeTarget
    client: AuditClient
    own_origin: str | None = None
    logs: dict[str, RemoteLog] = field(default_factory=dict)
    evidence: list[ForkEvidence] = field(default_factory=list)


@dataclass(slots=True)
class _Bundle:
    path: Path
    file: IO[bytes]
    reader: BundleReader
    header: BundleHeader


@dataclass(slots=True)
class _LiveView:
    node: _Node
    notes: list[str]  # unverified, by size
    view: SourceView | None = None


class _Run:
    """One audit run: the sources, the options and what has been found."""

    def __init__(self, state: AuditState, options: AuditOptions) -> None:
        self.state = state
        self.options = options
        self.failures: list[Failure] = []
        self.notes: list[str] = []
        self.reports: list[OriginReport] = []
        self.nodes: list[_Node] = []
        self.bundles: list[_Bundle] = []
        # Per origin: conflicts found while fetching, and proofs already fetched.
        self.conflicts: list[Conflict] = []
        self.proofs: dict[tuple[int, str, int], Sequence[bytes]] = {}

    def fail(
        self,
        check: str,
        origin: str,
        source: str,
        message: str,
        old: int | None = None,
        new: int | None = None,
        evidence: ForkEvidence | None = None,
    ) -> None:
        self.failures.append(
            Failure(
                check=check,
                origin=origin,
                source=source,
                message=message,
                old_size=old,
                new_size=new,
                evidence=evidence,
            )
        )

    # -- gathering ---------------------------------------------------------------

    async def open_node(self, target: NodeTarget) -> None:
        opts = self.options
        if opts.cert_path is None or opts.key_path is None:
            self.fail("fetch", "", target.url, "a live audit needs --cert and --key")
            return
        client = AuditClient(
            target.url,
            target.url,
            server_cert_pem=target.server_cert_pem,
            cert_path=opts.cert_path,
            key_path=opts.key_path,
        )
        node = _Node(target, client)
        try:
            node.own_origin = await client.health()
            node.logs = {log.origin: log for log in await client.logs()}
            node.evidence = await client.evidence()
        except PeerError as e:
            await client.close()
            self.fail("fetch", "", target.url, e.reason)
            return
        self.nodes.append(node)

    def open_bundle(self, path: Path) -> None:
        try:
            f = path.open("rb")
        except OSError as e:
            self.fail("fetch", "", str(path), f"cannot read the bundle: {e.strerror or e}")
            return
        reader = BundleReader(f)
        try:
            header = reader.header()
        except MalformedError as e:
            f.close()
            self.fail("format", "", str(path), str(e))
            return
        self.bundles.append(_Bundle(path, f, reader, header))

    async def close(self) -> None:
        for node in self.nodes:
            await node.client.close()
        for bundle in self.bundles:
            bundle.file.close()

    def origins(self) -> list[str]:
        found = {o for n in self.nodes for o in n.logs} | {b.header.origin for b in self.bundles}
        wanted = self.options.origins
        if wanted is not None:
            for origin in sorted(wanted - found):
                self.notes.append(f"origin={origin}: no target holds it")
            found &= wanted
        return sorted(found)

    async def checkpoint_notes(self, node: _Node, origin: str, start: int) -> list[str]:
        notes: list[str] = []
        at = start
        while True:
            page = await node.client.checkpoints(origin, at)
            notes.extend(note for _size, note in page)
            if len(page) < CHECKPOINTS_PAGE:
                break
            at = page[-1][0] + 1
        latest = node.logs[origin].checkpoint
        if latest not in notes:
            notes.append(latest)
        return notes

    # -- one origin -------------------------------------------------------------

    async def audit_origin(self, origin: str) -> None:
        self.conflicts, self.proofs = [], {}
        remembered = self.state.origins.get(origin)
        bundles = [b for b in self.bundles if b.header.origin == origin]
        nodes = [n for n in self.nodes if origin in n.logs]
        pinned = self.options.trusted_keys.get(origin)
        chain, notes, key_problem = choose_key_chain(
            origin, remembered, pinned, [(str(b.path), b.header.vkey) for b in bundles]
        )
        self.notes.extend(notes)
        head = remembered.head if remembered is not None else None
        failed_before = len(self.failures)
        if key_problem is not None:
            self.fail("key", origin, "command line", key_problem)
        if chain is None:
            self.reports.append(
                OriginReport(
                    origin=origin,
                    status="failed" if key_problem else "skipped",
                    sources=(),
                    head_before=head.size if head else None,
                    head_after=head,
                    keys=(),
                )
            )
            return
        incremental = head is not None and not self.options.full
        start = head.size if incremental and head is not None else 0

        live: list[_LiveView] = []
        for node in nodes:
            try:
                live.append(_LiveView(node, await self.checkpoint_notes(node, origin, start)))
            except PeerError as e:
                self.fail("fetch", origin, node.target.url, e.reason)
        marks: set[int] = {head.size} if head is not None else set()
        for lv in live:
            for note in lv.notes:
                with contextlib.suppress(MalformedError):
                    marks.add(checkpoint_size(note))
        for bundle in bundles:
            marks.update(size for size, _n, _l in bundle.header.checkpoints)

        views: list[SourceView] = []
        for bundle in bundles:
            result = await self.audit_one_bundle(bundle, origin, chain, marks)
            if result is not None:
                view, chain = result
                views.append(view)
        if live:
            chain = await self.follow_rotations(origin, chain, head, live)
        for lv in live:
            lv.view = await self.audit_one_node(lv, origin, chain, head, start, marks)
            if lv.view is not None:
                views.append(lv.view)

        self.held_evidence(origin, chain, nodes)
        conflicts = list(self.conflicts)
        for view in views:
            failures, found = judge_source(origin, view)
            self.failures.extend(failures)
            conflicts.extend(found)
        found, unchecked = cross_check(views, head)
        conflicts.extend(found)
        conflicts.extend(await self.check_uncovered(origin, unchecked, live))
        await self.report_conflicts(origin, chain, conflicts, live, self.proofs)

        failed = len(self.failures) > failed_before
        new_head = head
        if not failed:
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
                new_head = AuditHead.from_tree(best.tree, best.latest.note)
            self.state = self.state.with_origin(
                origin,
                OriginState(
                    chain,
                    new_head,
                    now_utc() if new_head is not None else None,
                ),
            )
        self.reports.append(
            OriginReport(
                origin=origin,
                status="failed" if failed else "ok",
                sources=tuple(
                    SourceReport(
                        source=v.source,
                        size=v.latest.size if v.latest else None,
                        checkpoints=len(v.checkpoints),
                        replay_from=v.replay_from,
                        leaves_hashed=v.leaves_hashed,
                    )
                    for v in views
                ),
                head_before=head.size if head else None,
                head_after=new_head,
                keys=tuple(p.verifier.to_text() for p in chain.periods),
            )
        )

    async def follow_rotations(
        self, origin: str, chain: KeyChain, head: AuditHead | None, live: Sequence[_LiveView]
    ) -> KeyChain:
        """Extend ``chain`` by the rotations nodes prove, where their checkpoints need it.

        A node is asked (the origin's own node first) when one of its
        checkpoints needs a key the chain, as extended so far, lacks; so
        every node's checkpoints are then verified with the same chain.
        """
        for lv in sorted(live, key=lambda lv: lv.node.own_origin != origin):
            if any(_needs_other_key(chain, note) for note in lv.notes):
                chain = await self.node_rotations(lv.node, origin, chain, head)
        return chain

    async def node_rotations(
        self, node: _Node, origin: str, chain: KeyChain, head: AuditHead | None
    ) -> KeyChain:
        """Apply, in order, the node's rotations beyond the chain's last period."""
        url = node.target.url
        try:
            served = await node.client.rotations(origin)
        except PeerError as e:
            self.fail("fetch", origin, url, e.reason)
            return chain
        for rotation in served:
            r = rotation.index
            if r + 2 <= chain.periods[-1].from_size:
                continue  # the chain already holds this rotation (or a later key)
            if rotation.checkpoint is None:
                self.notes.append(
                    f"origin={origin}: {url} does not hold the checkpoint of size {r + 1} that "
                    f"attests rotate entry {r}; the rotation cannot be followed from it"
                )
                break
            try:
                extended = apply_rotation_proof(
                    chain, r, rotation.entry, rotation.proof, rotation.checkpoint
                )
            except ProtocolError as e:
                self.fail(
                    "rotation", origin, url, f"index={r}: the rotate entry does not verify: {e}"
                )
                break
            if extended is not chain and head is not None and head.size >= r + 2:
                # The old key signed the audited head past the rotation: one of
                # the two histories is false, and the state must keep verifying.
                try:
                    extended.open(head.note)
                except ProtocolError as e:
                    self.fail(
                        "rotation",
                        origin,
                        url,
                        f"index={r}: the tree of size {head.size} audited before is signed by "
                        f"a key this rotation retires at size {r + 2}: {e}",
                    )
                    break
            chain = extended
        return chain

    def held_evidence(self, origin: str, chain: KeyChain, nodes: Sequence[_Node]) -> None:
        """Fork evidence a node already holds against the origin: verified, it is a failure."""
        for node in nodes:
            for evidence in node.evidence:
                if evidence.origin != origin:
                    continue
                try:
                    size_b = checkpoint_size(evidence.note_b)
                    verify_fork_evidence(evidence, chain)
                except ProtocolError as e:
                    self.notes.append(
                        f"origin={origin}: {node.target.url} holds fork evidence that does not "
                        f"verify under the trusted key ({e}); ignored"
                    )
                    continue
                self.fail(
                    "split-view",
                    origin,
                    node.target.url,
                    "the node holds verified fork evidence: the origin signed two trees of "
                    f"sizes {checkpoint_size(evidence.note_a)} and {size_b} that cannot both "
                    "be true",
                    checkpoint_size(evidence.note_a),
                    size_b,
                    evidence,
                )

    async def audit_one_bundle(
        self, bundle: _Bundle, origin: str, chain: KeyChain, marks: set[int]
    ) -> tuple[SourceView, KeyChain] | None:
        source = str(bundle.path)
        carried = bundle.header.vkey
        trusted = [p.verifier.to_text() for p in chain.periods]
        start = chain
        if carried not in trusted:
            # A bundle starts from the log's first key. An auditor who trusts
            # only a later key accepts it when the bundle's own rotations lead
            # to that key (checked after the replay).
            try:
                start = KeyChain.pinned(NoteVerifier.from_text(carried))
            except MalformedError as e:
                self.fail("format", origin, source, f"the bundle's key: {e}")
                return None
        check = parse_entry_fast if self.options.check_entries else None
        try:
            result = await asyncio.to_thread(
                audit_bundle,
                bundle.reader,
                bundle.header,
                start,
                source=source,
                marks=marks,
                check_entries=check,
            )
        except MalformedError as e:
            self.fail("format", origin, source, str(e))
            return None
        reached = [p.verifier.to_text() for p in result.chain.periods]
        if start is not chain and not set(trusted) <= set(reached):
            self.fail(
                "key",
                origin,
                source,
                f"the bundle carries key {carried}, and its rotations do not lead to the trusted "
                f"key(s) {', '.join(trusted)}",
            )
            return None
        self.failures.extend(result.failures)
        return result.view, result.chain

    async def audit_one_node(
        self,
        lv: _LiveView,
        origin: str,
        chain: KeyChain,
        head: AuditHead | None,
        start: int,
        marks: set[int],
    ) -> SourceView | None:
        url = lv.node.target.url
        client = lv.node.client
        signed: dict[int, SignedCheckpoint] = {}
        for note in lv.notes:
            try:
                cp = chain.open(note).checkpoint
            except ProtocolError as e:
                size = None
                with contextlib.suppress(MalformedError):
                    size = checkpoint_size(note)
                self.fail("signature", origin, url, f"checkpoint: {e}", new=size)
                continue
            signed[cp.size] = SignedCheckpoint(
                size=cp.size, root_hash=cp.root_hash, note=note, source=url
            )
        checkpoints = tuple(signed[s] for s in sorted(signed))
        latest = checkpoints[-1] if checkpoints else None
        authoritative = lv.node.own_origin == origin
        if latest is None:
            return None
        if head is not None and authoritative:
            if latest.size < head.size:
                self.fail(
                    "history",
                    origin,
                    url,
                    f"the origin's own node serves size {latest.size}, smaller than the size "
                    f"{head.size} audited before: its log lost or hides entries",
                    head.size,
                    latest.size,
                )
            elif head.size > 0 and head.size not in signed:
                self.fail(
                    "history",
                    origin,
                    url,
                    f"the origin's own node no longer serves the checkpoint of size {head.size} "
                    "audited before",
                    new=head.size,
                )
        tree = CompactRange.empty()
        if start and head is not None:
            if latest.size < head.size:
                return _view(url, authoritative, checkpoints, start, {}, None, 0)
            if latest.size > head.size:
                try:
                    proof = await client.consistency(origin, head.size, latest.size)
                except PeerError as e:
                    self.fail("fetch", origin, url, e.reason, head.size, latest.size)
                    return _view(url, authoritative, checkpoints, start, {}, None, 0)
                try:
                    verify_consistency(
                        head.size, latest.size, head.root_hash, latest.root_hash, proof.hashes
                    )
                except ProtocolError:
                    self.conflicts.append(
                        Conflict(
                            check="consistency", older=head.signed(), newer=latest, prefix_root=None
                        )
                    )
                    self.proofs[(head.size, url, latest.size)] = proof.hashes
                    return _view(url, authoritative, checkpoints, start, {}, None, 0)
            tree = head.tree()
        replay = TreeReplay(tree, {m for m in marks if m <= latest.size} | {latest.size})
        try:
            await self.replay_leaves(client, origin, replay, latest.size)
        except PeerError as e:
            self.fail("fetch", origin, url, e.reason, replay.size, latest.size)
            return _view(url, authoritative, checkpoints, start, {}, None, 0)
        return _view(
            url,
            authoritative,
            checkpoints,
            tree.size,
            replay.roots,
            replay.tree,
            replay.size - tree.size,
        )

    async def replay_leaves(
        self, client: AuditClient, origin: str, replay: TreeReplay, end: int
    ) -> None:
        # Fetch the next page while the current one is hashed in.
        pending: asyncio.Task[list[bytes]] | None = None
        at = replay.size
        try:
            while replay.size < end:
                if pending is None:
                    pending = asyncio.ensure_future(client.leaf_hashes(origin, at, end))
                page = await pending
                at += len(page)
                pending = (
                    asyncio.ensure_future(client.leaf_hashes(origin, at, end)) if at < end else None
                )
                replay.feed(page)
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending

    async def check_uncovered(
        self, origin: str, unchecked: Sequence[SignedCheckpoint], live: Sequence[_LiveView]
    ) -> list[Conflict]:
        conflicts: list[Conflict] = []
        budget = MAX_PROOF_CHECKS
        for cp in unchecked:
            prover = _prover(cp, live)
            if prover is None:
                self.notes.append(
                    f"origin={origin}: the checkpoint of size {cp.size} from {cp.source} could "
                    "not be compared with any other source"
                )
                continue
            if budget == 0:
                self.notes.append(
                    f"origin={origin}: more than {MAX_PROOF_CHECKS} checkpoints needed a proof; "
                    "the rest were not compared"
                )
                break
            budget -= 1
            lv, newer = prover
            try:
                proof = await lv.node.client.consistency(origin, cp.size, newer.size)
            except PeerError as e:
                self.fail("fetch", origin, newer.source, e.reason, cp.size, newer.size)
                continue
            try:
                verify_consistency(cp.size, newer.size, cp.root_hash, newer.root_hash, proof.hashes)
            except ProtocolError:
                conflicts.append(
                    Conflict(check="split-view", older=cp, newer=newer, prefix_root=None)
                )
                self.proofs[(cp.size, newer.source, newer.size)] = proof.hashes
        return conflicts

    async def report_conflicts(
        self,
        origin: str,
        chain: KeyChain,
        conflicts: Sequence[Conflict],
        live: Sequence[_LiveView],
        proofs: Mapping[tuple[int, str, int], Sequence[bytes]],
    ) -> None:
        # One failure per pair of sources (per source, within one): the first
        # divergence, where the evidence is smallest, says all there is to say.
        seen: set[frozenset[str]] = set()
        for conflict in sorted(conflicts, key=lambda c: (c.older.size, c.newer.size)):
            a, b = conflict.older, conflict.newer
            key = frozenset((a.source, b.source))
            if key in seen:
                continue
            seen.add(key)
            evidence = None
            why = ""
            try:
                known = proofs.get((a.size, b.source, b.size))
                got_proof, prefix = await self.prove_prefix(origin, conflict, live, known)
                evidence = conflict_evidence(
                    origin, conflict, chain, proof=got_proof, prefix_root=prefix
                )
            except (ProtocolError, PeerError) as e:
                why = f" (no fork evidence: {e})"
            self.fail(
                conflict.check,
                origin,
                b.source if a.source in (b.source, STATE_SOURCE) else f"{a.source} vs {b.source}",
                conflict.message() + why,
                a.size,
                b.size,
                evidence,
            )

    async def prove_prefix(
        self,
        origin: str,
        conflict: Conflict,
        live: Sequence[_LiveView],
        proof: Sequence[bytes] | None,
    ) -> tuple[Sequence[bytes], bytes | None]:
        """The newer tree's consistency proof from the older size, and its prefix root."""
        a, b = conflict.older, conflict.newer
        if a.size == b.size:
            return (), None
        for bundle in self.bundles:
            if str(bundle.path) == b.source:
                leaves = await asyncio.to_thread(_bundle_leaf_hashes, bundle.path, b.size)
                return (
                    consistency_proof_from_leaves(leaves, a.size, b.size),
                    root_of_leaves(leaves[: a.size]),
                )
        for lv in live:
            if lv.node.target.url == b.source:
                client = lv.node.client
                if proof is None:
                    proof = (await client.consistency(origin, a.size, b.size)).hashes
                prefix = conflict.prefix_root or implied_prefix_root(a.size, b.size, proof)
                if prefix is None:
                    # A power-of-two prefix is a complete subtree the proof leaves
                    # out: its root comes from the node's leaf hashes.
                    hashes: list[bytes] = []
                    while len(hashes) < a.size:
                        hashes += await client.leaf_hashes(origin, len(hashes), a.size)
                    prefix = root_of_leaves(hashes)
                return proof, prefix
        raise MalformedError(f"no source can prove the prefix of {b.source}")


def _needs_other_key(chain: KeyChain, note: str) -> bool:
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


def _view(
    source: str,
    authoritative: bool,
    checkpoints: tuple[SignedCheckpoint, ...],
    replay_from: int,
    computed: Mapping[int, bytes],
    tree: CompactRange | None,
    hashed: int,
) -> SourceView:
    return SourceView(
        source=source,
        authoritative=authoritative,
        checkpoints=checkpoints,
        replay_from=replay_from,
        computed=computed,
        tree=tree,
        leaves_hashed=hashed,
    )


def _prover(
    cp: SignedCheckpoint, live: Sequence[_LiveView]
) -> tuple[_LiveView, SignedCheckpoint] | None:
    """A live source (the origin's own node first) whose latest tree covers ``cp``."""
    candidates = [
        lv
        for lv in live
        if lv.view is not None
        and lv.view.latest is not None
        and lv.node.target.url != cp.source
        and lv.view.latest.size >= cp.size
    ]
    candidates.sort(key=lambda lv: not (lv.view is not None and lv.view.authoritative))
    if not candidates or candidates[0].view is None or candidates[0].view.latest is None:
        return None
    return candidates[0], candidates[0].view.latest


def _bundle_leaf_hashes(path: Path, size: int) -> list[bytes]:
    with path.open("rb") as f:
        reader = BundleReader(f)
        header = reader.header()
        hashes: list[bytes] = []
        for datas in reader.leaf_batches(header.leaf_count):
            hashes.extend(hash_leaf(d) for d in datas)
            if len(hashes) >= size:
                break
        return hashes[:size]


async def run_audit(
    nodes: Sequence[NodeTarget],
    bundles: Sequence[Path],
    state: AuditState,
    options: AuditOptions,
) -> AuditReport:
    """Audit live nodes and bundles against each other and the saved state.

    Args:
        nodes: nodes to audit live (as an ``auditor``).
        bundles: bundle files to audit.
        state: what earlier audits remembered.
        options: keys, TLS identity, modes.

    Returns:
        The failures, per-origin outcomes, notes and the state to save
        (unchanged for any origin that failed).
    """
    run = _Run(state, options)
    try:
        for target in nodes:
            await run.open_node(target)
        for path in bundles:
            run.open_bundle(path)
        for origin in run.origins():
            await run.audit_origin(origin)
    finally:
        await run.close()
    return AuditReport(
        failures=tuple(run.failures),
        origins=tuple(run.reports),
        notes=tuple(run.notes),
        state=run.state,
    )
