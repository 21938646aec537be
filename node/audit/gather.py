"""Gather: what live nodes, bundle files and published logs show, fetched and read, not judged.

Layer: node.audit. Every network request and file read of an audit is made
here, through :class:`~node.audit.client.AuditClient` (as an ``auditor``,
over mutual TLS), a :class:`~protocol.bundle.BundleReader`, or, for a log
published as tlog-tiles, the capped :class:`~node.sync.transport.Transport`
with no client certificate (or plain file reads of a published directory). Nothing here
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
from typing import IO, Protocol

from node.audit.client import AuditClient
from node.errors import PeerProtocolError
from node.sync.client import RemoteLog
from node.sync.transport import Transport
from node.tls import public_client_ssl_context
from protocol.audit import (
    Conflict,
    consistency_proof_from_leaves,
    implied_prefix_root,
    root_of_leaves,
)
from protocol.bundle import BundleHeader, BundleReader
from protocol.checkpoint import Checkpoint
from protocol.errors import MalformedError
from protocol.evidence import ForkEvidence
from protocol.hashing import HASH_SIZE, hash_leaf
from protocol.note import MAX_NOTE_BYTES, parse_note
from protocol.tiles import TILE_WIDTH, TileId

__all__ = [
    "CHECKPOINTS_PAGE",
    "MAX_TILE_BYTES",
    "BundleFile",
    "LiveNode",
    "PublishedLog",
    "PublishedTarget",
    "bundle_leaf_hashes",
    "checkpoint_notes",
    "leaf_hash_pages",
    "open_bundle",
    "open_node",
    "open_published",
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


MAX_TILE_BYTES = TILE_WIDTH * HASH_SIZE
"""The largest tile (a full one, 8,192 bytes): the cap on a tile's body."""


@dataclass(frozen=True, slots=True)
class PublishedTarget:
    """A log published as C2SP tlog-tiles, to audit from what anyone can read.

    Attributes:
        location: ``https://HOST[:PORT]/PREFIX`` or a directory.
        ca_path: for HTTPS, the only certificate(s) to trust for the server
            (default: the system's trust store).
    """

    location: str
    ca_path: Path | None = None


class _TileSource(Protocol):
    async def read_checkpoint(self) -> bytes: ...

    def read_tile(self, tile: TileId) -> bytes: ...

    async def close(self) -> None: ...


class PublishedLog:
    """A published log, opened: its checkpoint (unverified) and a reader of its tiles.

    Attributes:
        source: the log's name in reports (its URL or directory).
        origin: the origin its checkpoint names.
        note: the signed checkpoint note as published.
    """

    def __init__(self, source: str, origin: str, note: str, tiles: _TileSource) -> None:
        self.source = source
        self.origin = origin
        self.note = note
        self._tiles = tiles

    def read_tile(self, tile: TileId) -> bytes:
        """A tile's bytes (at most :data:`MAX_TILE_BYTES` + 1); blocking.

        Call it from a worker thread (``asyncio.to_thread``), never on the
        event loop: an HTTPS log's tiles are fetched on that loop.

        Raises:
            PeerError: an HTTPS log did not serve the tile (a missing tile
                is a :class:`~node.errors.PeerProtocolError` naming it).
            OSError: a directory's tile cannot be read.
        """
        return self._tiles.read_tile(tile)

    async def close(self) -> None:
        """Close the connection pool of an HTTPS log."""
        await self._tiles.close()


class _DirectoryTiles:
    """A published directory: ``<dir>/checkpoint`` and ``<dir>/tile/...``."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def _read(self, path: Path, cap: int) -> bytes:
        with path.open("rb") as f:
            return f.read(cap + 1)  # one byte more: an oversized file is then refused

    async def read_checkpoint(self) -> bytes:
        return await asyncio.to_thread(self._read, self._dir / "checkpoint", MAX_NOTE_BYTES)

    def read_tile(self, tile: TileId) -> bytes:
        # A canonical tile path (digits, 'x', '.p', '/') cannot leave the directory.
        return self._read(self._dir / tile.to_path(), MAX_TILE_BYTES)

    async def close(self) -> None:
        return None


class _HttpTiles:
    """A published HTTPS log, read through the capped transport without a client certificate."""

    def __init__(self, transport: Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop

    async def _get(self, path: str, cap: int, what: str) -> bytes:
        reply = await self._transport.request("GET", path, cap=cap, accepted=(200, 404))
        if reply.status == 404:
            raise PeerProtocolError(
                self._transport.peer, f"{what} is missing ({path} answered 404)"
            )
        return reply.body

    async def read_checkpoint(self) -> bytes:
        return await self._get("/checkpoint", MAX_NOTE_BYTES, "the checkpoint")

    def read_tile(self, tile: TileId) -> bytes:
        path = tile.to_path()
        future = asyncio.run_coroutine_threadsafe(
            self._get("/" + path, MAX_TILE_BYTES, f"tile {path}"), self._loop
        )
        return future.result()

    async def close(self) -> None:
        await self._transport.close()


async def open_published(target: PublishedTarget) -> PublishedLog:
    """Open a published log and read its checkpoint (not verified here).

    Raises:
        PeerError: an HTTPS log did not serve its checkpoint.
        OSError: a directory's checkpoint cannot be read.
        MalformedError: the checkpoint is not a checkpoint note.
        ConfigError: ``ca_path`` is not a usable certificate file.
    """
    tiles: _TileSource
    if target.location.startswith("https://"):
        source = target.location.rstrip("/")
        transport = Transport(source, source, ssl_context=public_client_ssl_context(target.ca_path))
        tiles = _HttpTiles(transport, asyncio.get_running_loop())
    else:
        source = target.location
        tiles = _DirectoryTiles(Path(target.location))
    try:
        note = parse_note(await tiles.read_checkpoint())  # refuses MAX_NOTE_BYTES + 1
        origin = Checkpoint.from_text(note.text).origin
    except BaseException:
        await tiles.close()
        raise
    return PublishedLog(source, origin, note.to_text(), tiles)


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
