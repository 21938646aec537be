"""Replay: leaf hashes through the Merkle tree, recording the root at every signed size.

Layer: node.audit. A bundle is replayed from zero by
:func:`protocol.audit.audit_bundle` (in a worker thread, as it hashes every
leaf); a node's leaf hashes after the saved head are fed, page by page as
:mod:`node.audit.gather` fetches them, to a :class:`~protocol.audit.TreeReplay`
started from the head's frontier. Each source becomes a
:class:`~protocol.audit.SourceView`: its verified checkpoints beside the
roots its own leaves produce, for :mod:`node.audit.decide` to judge.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

from node.audit.client import AuditClient
from node.audit.gather import BundleFile, leaf_hash_pages
from protocol.audit import (
    AuditHead,
    BundleAudit,
    SourceView,
    TreeReplay,
    audit_bundle,
)
from protocol.bundle import BundleHeader
from protocol.checkpoint import CheckpointNote, VerifiedCheckpoint, checkpoint_size
from protocol.entry import parse_entry_fast
from protocol.errors import MalformedError
from protocol.rotation import KeyChain

__all__ = ["node_view", "replay_bundle", "replay_marks", "replay_node"]


def replay_marks(
    head: AuditHead | None, notes: Iterable[CheckpointNote], headers: Iterable[BundleHeader]
) -> set[int]:
    """Every tree size any source signed (and the saved head's): the roots a replay records.

    A note too malformed to name its size is left to the signature check.
    """
    marks: set[int] = {head.size} if head is not None else set()
    for note in notes:
        with contextlib.suppress(MalformedError):
            marks.add(checkpoint_size(note))
    for header in headers:
        marks.update(size for size, _n, _l in header.checkpoints)
    return marks


async def replay_bundle(
    bundle: BundleFile,
    start: KeyChain,
    marks: set[int],
    *,
    check_entries: bool,
    progress: Callable[[int, int], None] | None = None,
) -> BundleAudit:
    """Replay a bundle from zero, verifying its checkpoints as its rotations extend ``start``.

    ``progress`` is told the leaves replayed and the bundle's leaves after each batch.

    Raises:
        MalformedError: the bundle is malformed past its header.
    """
    return await asyncio.to_thread(
        audit_bundle,
        bundle.reader,
        bundle.header,
        start,
        source=str(bundle.path),
        marks=marks,
        check_entries=parse_entry_fast if check_entries else None,
        on_leaves=None
        if progress is None
        else lambda done: progress(done, bundle.header.leaf_count),
    )


async def replay_node(
    replay: TreeReplay,
    client: AuditClient,
    origin: str,
    end: int,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Feed ``replay`` the node's leaf hashes of ``origin`` up to size ``end``.

    On failure ``replay`` holds what was fed so far. ``progress`` is told the
    leaf hashes fed and the number to feed, after each page.

    Raises:
        PeerError: a page could not be fetched.
    """
    first = replay.size
    async with contextlib.aclosing(leaf_hash_pages(client, origin, first, end)) as pages:
        async for page in pages:
            replay.feed(page)
            if progress is not None:
                progress(replay.size - first, end - first)


def node_view(
    source: str,
    authoritative: bool,
    checkpoints: tuple[VerifiedCheckpoint, ...],
    replay_from: int,
    replay: TreeReplay | None,
) -> SourceView:
    """A node's view: its verified checkpoints and what its leaves produced from ``replay_from``.

    Args:
        source: the node's URL.
        authoritative: the node is the origin's own.
        checkpoints: its verified checkpoints, by size.
        replay_from: the size the replay started at.
        replay: the replay, or None when the leaves were not replayed.
    """
    return SourceView(
        source=source,
        authoritative=authoritative,
        checkpoints=checkpoints,
        replay_from=replay_from,
        computed=replay.roots if replay is not None else {},
        tree=replay.tree if replay is not None else None,
        leaves_hashed=replay.size - replay_from if replay is not None else 0,
    )
