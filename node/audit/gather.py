"""Gather: what live nodes, bundle files and published logs show, fetched and read, not judged.

Layer: node.audit. Every network request and file read of an audit is made
here, through :class:`~node.audit.client.AuditClient` (as an ``auditor``,
over mutual TLS), a :class:`~protocol.bundle.BundleReader`, or, for a log
published as tlog-tiles, :class:`~node.sync.published.PublishedLog` (no
client certificate). Nothing here
decides whether what it fetched is true: a failed request raises
:class:`~node.errors.PeerError`, an unreadable file :class:`OSError`, a
malformed bundle :class:`~protocol.errors.MalformedError`, and the run
records the failure; :mod:`node.audit.replay` and :mod:`node.audit.decide`
do the checking.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from node.audit.client import AuditClient
from node.sync.client import RemoteLog
from protocol.audit import (
    Conflict,
    consistency_proof_from_leaves,
    implied_prefix_root,
    root_of_leaves,
)
from protocol.bundle import BundleHeader, BundleReader
from protocol.errors import MalformedError
from protocol.evidence import ForkEvidence
from protocol.hashing import hash_leaf

__all__ = [
    "CHECKPOINTS_PAGE",
    "BundleFile",
    "LiveNode",
    "bundle_leaf_hashes",
    "checkpoint_notes",
    "leaf_hash_pages",
    "open_bundle",
    "open_node",
    "prove_prefix",
]

CHECKPOINTS_PAGE = 1000
"""``/v1/checkpoints`` page size (the server's cap)."""


@dataclass(frozen=True, slots=True)
class LiveNode:
    """A node opened for a live audit, with what it showed when it was opened.

    Attributes:
        url: ``https://HOST:PORT``; the node's name as a source.
        client: its read API, to be closed by the caller.
        own_origin: the origin of the node's own log (``/v1/health``).
        logs: the logs it holds, by origin, with their latest checkpoints.
        evidence: the fork evidence it holds (unverified).
    """

    url: str
    client: AuditClient
    own_origin: str
    logs: dict[str, RemoteLog]
    evidence: list[ForkEvidence]


@dataclass(frozen=True, slots=True)
class BundleFile:
    """An open bundle file whose header has been read; its leaves are read by the replay."""

    path: Path
    file: IO[bytes]
    reader: BundleReader
    header: BundleHeader


async def open_node(url: str, server_cert_pem: str, cert_path: Path, key_path: Path) -> LiveNode:
    """Connect to a node as an auditor and read its origin, logs and evidence.

    Raises:
        PeerError: the node did not answer, or answered out of shape (the
            client is closed then).
    """
    client = AuditClient(
        url, url, server_cert_pem=server_cert_pem, cert_path=cert_path, key_path=key_path
    )
    try:
        own_origin = await client.health()
        logs = {log.origin: log for log in await client.logs()}
        evidence = await client.evidence()
    except BaseException:
        await client.close()
        raise
    return LiveNode(url, client, own_origin, logs, evidence)


def open_bundle(path: Path) -> BundleFile:
    """Open a bundle file and read its header (the caller closes :attr:`BundleFile.file`).

    Raises:
        OSError: the file cannot be opened.
        MalformedError: the header is malformed (the file is closed then).
    """
    f = path.open("rb")
    reader = BundleReader(f)
    try:
        header = reader.header()
    except MalformedError:
        f.close()
        raise
    return BundleFile(path, f, reader, header)


async def checkpoint_notes(node: LiveNode, origin: str, start: int) -> list[str]:
    """Every checkpoint note the node stores of ``origin`` from size ``start``, and its latest.

    Raises:
        PeerError: a page could not be fetched.
    """
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


async def leaf_hash_pages(
    client: AuditClient, origin: str, start: int, end: int
) -> AsyncGenerator[list[bytes], None]:
    """The node's leaf hashes of ``origin`` from ``start`` to ``end``, a page at a time.

    The next page is fetched while the caller works on the current one. Close
    the iterator (``contextlib.aclosing``) when stopping early, so the fetch
    ahead is cancelled.

    Raises:
        PeerError: a page could not be fetched.
    """
    pending: asyncio.Task[list[bytes]] | None = None
    at = start
    try:
        while at < end:
            if pending is None:
                pending = asyncio.ensure_future(client.leaf_hashes(origin, at, end))
            page = await pending
            at += len(page)
            pending = (
                asyncio.ensure_future(client.leaf_hashes(origin, at, end)) if at < end else None
            )
            yield page
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending


def bundle_leaf_hashes(path: Path, size: int) -> list[bytes]:
    """The first ``size`` leaf hashes of a bundle file (read afresh; blocking)."""
    with path.open("rb") as f:
        reader = BundleReader(f)
        header = reader.header()
        hashes: list[bytes] = []
        for datas in reader.leaf_batches(header.leaf_count):
            hashes.extend(hash_leaf(d) for d in datas)
            if len(hashes) >= size:
                break
        return hashes[:size]


async def prove_prefix(
    origin: str,
    conflict: Conflict,
    bundles: Sequence[BundleFile],
    nodes: Sequence[LiveNode],
    proof: Sequence[bytes] | None,
) -> tuple[Sequence[bytes], bytes | None]:
    """The newer tree's consistency proof from the older size, and its prefix root.

    This is what fork evidence needs from the newer tree's source: a bundle
    computes both from its leaves; a node is asked for the proof (unless
    ``proof`` was already fetched) and, where the proof leaves the prefix out,
    for the prefix's leaf hashes.

    Raises:
        PeerError: the node did not give them.
        MalformedError: no source of that name can prove anything.
    """
    a, b = conflict.older, conflict.newer
    if a.size == b.size:
        return (), None
    for bundle in bundles:
        if str(bundle.path) == b.source:
            leaves = await asyncio.to_thread(bundle_leaf_hashes, bundle.path, b.size)
            return (
                consistency_proof_from_leaves(leaves, a.size, b.size),
                root_of_leaves(leaves[: a.size]),
            )
    for node in nodes:
        if node.url == b.source:
            if proof is None:
                proof = (await node.client.consistency(origin, a.size, b.size)).hashes
            prefix = conflict.prefix_root or implied_prefix_root(a.size, b.size, proof)
            if prefix is None:
                # A power-of-two prefix is a complete subtree the proof leaves
                # out: its root comes from the node's leaf hashes.
                hashes: list[bytes] = []
                while len(hashes) < a.size:
                    hashes += await node.client.leaf_hashes(origin, len(hashes), a.size)
                prefix = root_of_leaves(hashes)
            return proof, prefix
    raise MalformedError(f"no source can prove the prefix of {b.source}")
