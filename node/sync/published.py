"""A log published as C2SP tlog-tiles, read as anyone can: no client certificate.

Layer: node.sync. Performs network I/O (through the one capped
:class:`~node.sync.transport.Transport`, with a server-authenticated TLS
context from :func:`node.tls.public_client_ssl_context`) or file reads (a
published directory). Decides nothing: the auditor
(:mod:`node.audit.run`) and the witness (``hashmesh witness feed``) verify
what it reads with :mod:`protocol`.

A published log is ``<prefix>/checkpoint`` (a signed note), its hash
tiles ``<prefix>/tile/<L>/<N>[.p/<W>]`` and, once its origin rotated its
signing key, ``<prefix>/rotations`` (the rotations proven, as ``GET
/v1/rotations`` serves them; absent means none). The checkpoint is read
when the log is opened, the rotations by :meth:`PublishedLog.rotations` when
needed; tiles are read on demand by :meth:`PublishedLog.read_tile`, a
blocking call for the pure code of :mod:`protocol.tiles` running in a worker
thread; over HTTPS the next few full tiles of a level are fetched ahead
(bounded), as a verification reads them in order. Bodies are capped: a checkpoint at
:data:`~protocol.note.MAX_NOTE_BYTES`, a tile at :data:`MAX_TILE_BYTES`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from node.errors import PeerProtocolError
from node.sync.transport import Transport
from node.tls import public_client_ssl_context
from protocol.api_documents import RotationList, ServedRotation
from protocol.checkpoint import Checkpoint
from protocol.errors import MalformedError
from protocol.hashing import HASH_SIZE
from protocol.note import MAX_NOTE_BYTES, parse_note
from protocol.tiles import TILE_HEIGHT, TILE_WIDTH, TileId

__all__ = [
    "MAX_ROTATIONS_BYTES",
    "MAX_TILE_BYTES",
    "PublishedLog",
    "PublishedTarget",
    "open_published",
]

MAX_TILE_BYTES = TILE_WIDTH * HASH_SIZE
"""The largest tile (a full one, 8,192 bytes): the cap on a tile's body."""

MAX_ROTATIONS_BYTES = 1 << 20
"""The cap on ``rotations`` (one rotation takes about 2 KB: hundreds fit)."""


@dataclass(frozen=True, slots=True)
class PublishedTarget:
    """A log published as C2SP tlog-tiles, to read as anyone can (to audit or witness it).

    Attributes:
        location: ``https://HOST[:PORT]/PREFIX`` or a directory.
        ca_path: for HTTPS, the only certificate(s) to trust for the server
            (default: the system's trust store).
    """

    location: str
    ca_path: Path | None = None


class _TileSource(Protocol):
    async def read_checkpoint(self) -> bytes: ...

    async def read_rotations(self) -> bytes | None: ...

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
        self._rotations: tuple[ServedRotation, ...] | None = None

    async def rotations(self) -> tuple[ServedRotation, ...]:
        """The rotations the log publishes, by index (read once; unverified).

        Raises:
            PeerError: an HTTPS log answered something else than the file or 404.
            OSError: a directory's ``rotations`` exists but cannot be read.
            MalformedError: the document is malformed, too large or names
                another origin.
        """
        if self._rotations is None:
            body = await self._tiles.read_rotations()
            if body is None:
                self._rotations = ()
            else:
                if len(body) > MAX_ROTATIONS_BYTES:
                    raise MalformedError(
                        f"rotations is larger than {MAX_ROTATIONS_BYTES} bytes", field="rotations"
                    )
                listed = RotationList.from_json(body)
                if listed.origin != self.origin:
                    raise MalformedError(
                        f"rotations names origin {listed.origin!r}, the checkpoint {self.origin!r}",
                        field="rotations.origin",
                    )
                self._rotations = listed.rotations
        return self._rotations

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

    async def read_rotations(self) -> bytes | None:
        try:
            return await asyncio.to_thread(self._read, self._dir / "rotations", MAX_ROTATIONS_BYTES)
        except FileNotFoundError:
            return None

    def read_tile(self, tile: TileId) -> bytes:
        # A canonical tile path (digits, 'x', '.p', '/') cannot leave the directory.
        return self._read(self._dir / tile.to_path(), MAX_TILE_BYTES)

    async def close(self) -> None:
        return None


_READ_AHEAD = 8
"""Full tiles of a level fetched ahead of the one read: ``verify_tiles`` reads
them in order, and one round trip at a time a large log's audit would mostly wait."""

_MAX_AHEAD = 32
"""Tiles fetched ahead and not read yet, at most (a bound on memory and requests)."""


class _HttpTiles:
    """A published HTTPS log, read through the capped transport without a client certificate."""

    def __init__(self, transport: Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self.size = 0
        """The published tree's size, once known: tiles are read ahead only within it."""
        self._ahead: dict[TileId, concurrent.futures.Future[bytes]] = {}

    async def _get(self, path: str, cap: int, what: str) -> bytes:
        reply = await self._transport.request("GET", path, cap=cap, accepted=(200, 404))
        if reply.status == 404:
            raise PeerProtocolError(
                self._transport.peer, f"{what} is missing ({path} answered 404)"
            )
        return reply.body

    async def read_checkpoint(self) -> bytes:
        return await self._get("/checkpoint", MAX_NOTE_BYTES, "the checkpoint")

    async def read_rotations(self) -> bytes | None:
        reply = await self._transport.request(
            "GET", "/rotations", cap=MAX_ROTATIONS_BYTES, accepted=(200, 404)
        )
        return None if reply.status == 404 else reply.body

    def _fetch(self, tile: TileId) -> concurrent.futures.Future[bytes]:
        path = tile.to_path()
        return asyncio.run_coroutine_threadsafe(
            self._get("/" + path, MAX_TILE_BYTES, f"tile {path}"), self._loop
        )

    def read_tile(self, tile: TileId) -> bytes:
        future = self._ahead.pop(tile, None) or self._fetch(tile)
        if tile.is_full:
            level_shift = TILE_HEIGHT * tile.level
            for n in range(tile.index + 1, tile.index + 1 + _READ_AHEAD):
                if (
                    len(self._ahead) >= _MAX_AHEAD
                    or ((n + 1) * TILE_WIDTH) << level_shift > self.size
                ):
                    break
                ahead = TileId(tile.level, n)
                if ahead not in self._ahead:
                    self._ahead[ahead] = self._fetch(ahead)
        return future.result()

    async def close(self) -> None:
        for future in self._ahead.values():
            future.cancel()
        self._ahead.clear()
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
        checkpoint = Checkpoint.from_text(note.text)
    except BaseException:
        await tiles.close()
        raise
    if isinstance(tiles, _HttpTiles):
        tiles.size = checkpoint.size
    origin = checkpoint.origin
    return PublishedLog(source, origin, note.to_text(), tiles)
