"""Publishing a log's public tree as static files (C2SP tlog-tiles, height 8).

Layer: node.ledger. Reads the ledger; writes files under the output directory.

``hashmesh publish --out DIR`` writes::

    DIR/checkpoint               the latest signed checkpoint, with held cosignatures
    DIR/tile/<L>/<N>[.p/<W>]     hash tiles (protocol.tiles)
    DIR/rotations                the log's key rotations, proven (only once it has rotated)
    DIR/.hashmesh-publish.json   marker: origin, published size and root
    DIR/.hashmesh-publish.lock   empty; locked while a publish runs, so two never interleave

Entry bundles (``tile/entries/...``) hold hash values and are never written.
Any static web server, CDN or object store can serve ``DIR``;
``hashmesh audit DIR`` (or an HTTPS URL serving it) audits it.

The order of writes is what makes the directory safe to serve while it is
being updated: a reader must never see a checkpoint whose tiles are
missing. So

1. the new tiles are staged as temporary files beside their final names
   (by a few threads: creating a file mostly waits on the journal);
2. one ``os.sync()`` makes them durable (one call instead of one ``fsync``
   per tile: a first publish of 1,000,000 entries writes ~3,900 tiles, and
   per-file fsync costs milliseconds each on this machine, see
   docs/benchmarks.md);
3. each is renamed into place (``os.replace``: a reader sees the old file or
   the new one, never part of one), and ``os.sync()`` makes the renames
   durable;
4. the rotations (if the log ever rotated its key), the marker, then last
   the checkpoint, are each written to a temporary file, fsynced, renamed
   and their directory fsynced.

``rotations`` is the ``GET /v1/rotations`` document
(:func:`node.ledger.rotation_proofs.proven_rotations`): for each rotate
entry below the published size, its bytes, the old key's checkpoint that
commits it and the inclusion proof, so ``hashmesh audit DIR`` and ``python -m
protocol verify-tiles`` follow a checkpoint signed by a later key from the
first one. It is written before the checkpoint: a reader never sees a
checkpoint by a key whose rotation is missing.

A crash anywhere leaves the previous checkpoint with all its tiles in
place; the next run rewrites every tile after the marker's size (tiles are
immutable, so rewriting one writes the same bytes).

Incremental: only :func:`protocol.tiles.new_tiles` ``(published, size)``
are written, each read from the ledger in one range read with no hashing.
Before anything is written the marker's tree is checked to be a prefix of
the log's (its root at the published size), and the new tiles' root against
the signed checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from node.errors import LedgerError, PublishError, StorageError
from node.ledger.damage import DamageRegister
from node.ledger.rotation_proofs import proven_rotations
from node.ledger.service import Ledger
from node.storage.ledger_store import LogRecord
from node.storage.segment_file import fsync_directory
from protocol.encoding import decode_b64, encode_b64
from protocol.errors import MalformedError
from protocol.tiles import TileId, new_tiles, root_from_tiles

__all__ = ["CHECKPOINT_FILE", "MARKER_FILE", "ROTATIONS_FILE", "PublishResult", "publish"]

CHECKPOINT_FILE = "checkpoint"
ROTATIONS_FILE = "rotations"
MARKER_FILE = ".hashmesh-publish.json"
_LOCK_FILE = ".hashmesh-publish.lock"
_MARKER_FORMAT = 1
_WRITERS = 4  # threads creating tile files (their time is spent waiting on the journal)


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What one run of :func:`publish` did.

    Attributes:
        origin: the log published.
        old_size: the tree size the directory held before (0 if none).
        size: the tree size it holds now (the latest checkpoint's).
        full_tiles: full tiles written.
        partial_tiles: partial tiles written.
        tile_bytes: bytes of tiles written.
        checkpoint_written: whether the checkpoint file changed (a new size,
            or new cosignatures on the same checkpoint).
        rotations: key rotations in ``rotations`` (0: the file is not written).
        tiles_seconds: time spent reading, writing and syncing the tiles.
        checkpoint_seconds: time spent writing the marker and the checkpoint
            (each fsynced with its directory).
    """

    origin: str
    old_size: int
    size: int
    full_tiles: int
    partial_tiles: int
    tile_bytes: int
    checkpoint_written: bool
    rotations: int = 0
    tiles_seconds: float = 0.0
    checkpoint_seconds: float = 0.0

    @property
    def tiles(self) -> int:
        """Tiles written, full and partial."""
        return self.full_tiles + self.partial_tiles


@dataclass(frozen=True, slots=True)
class _Marker:
    origin: str
    size: int
    root_hash: bytes

    def to_json(self) -> bytes:
        doc = {
            "format": _MARKER_FORMAT,
            "origin": self.origin,
            "size": self.size,
            "root": encode_b64(self.root_hash),
        }
        return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def _read_marker(out: Path) -> _Marker | None:
    path = out / MARKER_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PublishError(f"cannot read {path}: {e}") from e
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != _MARKER_FORMAT:
            raise ValueError(f"not a format {_MARKER_FORMAT} marker")
        origin, size, root = doc["origin"], doc["size"], decode_b64(doc["root"], field="root")
        if not isinstance(origin, str) or isinstance(size, bool) or not isinstance(size, int):
            raise ValueError("origin or size has the wrong type")
        if size < 0 or len(root) != 32:
            raise ValueError("size or root out of range")
    except (ValueError, KeyError, TypeError, MalformedError) as e:
        raise PublishError(
            f"{path} is not a hashmesh publish marker ({e}); move the directory aside "
            "or publish somewhere else"
        ) from e
    return _Marker(origin, size, root)


def _foreign_checkpoint_origin(out: Path) -> str | None:
    """The origin line of a checkpoint in ``out`` not written by us, if any."""
    try:
        text = (out / CHECKPOINT_FILE).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PublishError(f"cannot read {out / CHECKPOINT_FILE}: {e}") from e
    return text.split(b"\n", 1)[0].decode("utf-8", "replace")


def _check_directory(out: Path, ledger: Ledger, log: LogRecord, size: int) -> int:
    """The size already published in ``out`` for ``log`` (0 if none); refuse another log's."""
    marker = _read_marker(out)
    if marker is None:
        other = _foreign_checkpoint_origin(out)
        if other is not None and other != log.origin:
            raise PublishError(
                f"{out} holds a checkpoint of {other!r}, not of {log.origin!r}; "
                "publish each log into its own directory"
            )
        return 0
    if marker.origin != log.origin:
        raise PublishError(
            f"{out} holds the published log of {marker.origin!r}, not {log.origin!r}; "
            "publish each log into its own directory"
        )
    if marker.size > size:
        raise PublishError(
            f"{out} holds {log.origin} at size {marker.size}, beyond this node's latest "
            f"checkpoint ({size}): it was published from another copy of the log"
        )
    if ledger.root_at(log.origin, marker.size) != marker.root_hash:
        raise PublishError(
            f"{out} holds a tree of size {marker.size} whose root is not this log's root "
            "at that size: it is not this log's history; publish somewhere else"
        )
    return marker.size


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` so two publishes never interleave."""
    fd = os.open(out / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise PublishError(f"another `hashmesh publish` is writing {out}") from e
        yield
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp, fsync, rename, fsync dir)."""
    staged = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with staged.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(staged, path)
    fsync_directory(path.parent)


class _TileWriter:
    """Stages tiles beside their final names, then makes them durable and visible.

    Files are created and renamed by a few threads: creating a file waits on
    the file system's journal far more than on the CPU (milliseconds each
    when other processes sync, see docs/benchmarks.md), and the waits overlap.
    """

    def __init__(self, out: Path, pool: ThreadPoolExecutor) -> None:
        self._out = out
        self._pool = pool
        self._dirs: set[Path] = set()
        self._staged: list[tuple[Path, Path]] = []
        self._writes: list[Future[None]] = []
        self._suffix = f".{os.getpid()}.tmp"

    def stage(self, tile: TileId, data: bytes) -> None:
        final = self._out / tile.to_path()
        parent = final.parent
        if parent not in self._dirs:
            parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(parent)
        staged = parent / (final.name + self._suffix)
        self._staged.append((staged, final))
        self._writes.append(self._pool.submit(_write_file, staged, data))

    def commit(self) -> None:
        for write in self._writes:
            write.result()  # the first error, if any
        if not self._staged:
            return
        os.sync()  # the staged bytes are durable before any name points at them
        for done in self._pool.map(_rename, self._staged):
            del done
        os.sync()  # and the renames before the checkpoint that refers to them

    def discard(self) -> None:
        for write in self._writes:
            with contextlib.suppress(Exception):
                write.result()
        for staged, _final in self._staged:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _rename(pair: tuple[Path, Path]) -> None:
    os.replace(*pair)


def publish(
    ledger: Ledger,
    out: Path,
    *,
    origin: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PublishResult:
    """Write or update the public tree of a log in ``out`` (see the module docs).

    Args:
        ledger: the node's ledger.
        out: the output directory (created if missing).
        origin: a replicated log instead of the own log.
        progress: called with the tiles staged so far and the tiles to
            write (every 256 tiles, and at the end), for a progress bar.

    Returns:
        What was written.

    Raises:
        PublishError: if ``out`` holds another log (or another history of
            this one), or cannot be written.
        LedgerError: if the log has no checkpoint yet, or is recorded as
            damaged (:class:`~node.ledger.damage.DamagedLogError`).
        StorageError: if the stored tiles do not hash to the checkpoint's
            root (a damaged database); nothing is published then.
    """
    log = ledger.log_for(origin)
    # A damaged log is not served, on the public tree either (node.ledger.damage).
    DamageRegister(ledger.config.node_dir).check_writable(log.origin, doing="published")
    record = ledger.stored_checkpoint(log)
    if record is None:
        raise LedgerError(f"log {log.origin!r} has no checkpoint yet; nothing to publish")
    note = ledger.served_note(log, record).encode("utf-8")
    size = record.size
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PublishError(f"cannot create {out}: {e}") from e
    if not out.is_dir():
        raise PublishError(f"{out} is not a directory")
    with _locked(out):
        old_size = _check_directory(out, ledger, log, size)
        tiles = new_tiles(old_size, size)
        written: dict[TileId, bytes] = {}
        full = partial = nbytes = 0
        started = time.perf_counter()
        with ThreadPoolExecutor(_WRITERS, thread_name_prefix="hashmesh-publish") as pool:
            writer = _TileWriter(out, pool)
            try:
                for done, tile in enumerate(tiles):
                    if progress is not None and done % 256 == 0:
                        progress(done, len(tiles))
                    data = ledger.hash_tile(log, tile, size)
                    writer.stage(tile, data)
                    nbytes += len(data)
                    if tile.is_full:
                        full += 1
                    else:
                        partial += 1
                        written[tile] = data
                if progress is not None:
                    progress(len(tiles), len(tiles))
                if tiles:
                    _check_root(ledger, log, size, record.root_hash, written)
                writer.commit()
            except OSError as e:
                writer.discard()
                raise PublishError(f"cannot write the tiles into {out}: {e}") from e
            except BaseException:
                writer.discard()
                raise
        tiles_done = time.perf_counter()
        checkpoint_path = out / CHECKPOINT_FILE
        rotations = proven_rotations(ledger, log.origin, size)
        try:
            if rotations.rotations:
                body = rotations.to_json()
                if _read_or_none(out / ROTATIONS_FILE) != body:
                    _write_durably(out / ROTATIONS_FILE, body)
            if old_size != size or not (out / MARKER_FILE).exists():
                marker = _Marker(log.origin, size, record.root_hash)
                _write_durably(out / MARKER_FILE, marker.to_json())
            changed = _read_or_none(checkpoint_path) != note
            if changed:
                _write_durably(checkpoint_path, note)
        except OSError as e:
            raise PublishError(f"cannot write the checkpoint files into {out}: {e}") from e
        checkpoint_done = time.perf_counter()
    return PublishResult(
        origin=log.origin,
        old_size=old_size,
        size=size,
        full_tiles=full,
        partial_tiles=partial,
        tile_bytes=nbytes,
        checkpoint_written=changed,
        rotations=len(rotations.rotations),
        tiles_seconds=tiles_done - started,
        checkpoint_seconds=checkpoint_done - tiles_done,
    )


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _check_root(
    ledger: Ledger, log: LogRecord, size: int, root_hash: bytes, written: dict[TileId, bytes]
) -> None:
    """Check that the tiles of ``size`` lead to the signed root before publishing them.

    The root depends on the partial tiles alone (all of them are new), so
    this reads nothing but what is about to be written, or for a size that
    is a multiple of 256 the few full tiles of the right edge.
    """

    def read(tile: TileId) -> bytes:
        data = written.get(tile)
        return data if data is not None else ledger.hash_tile(log, tile, size)

    if root_from_tiles(size, read) != root_hash:
        raise StorageError(
            f"the stored tiles of {log.origin} at size {size} do not hash to its signed "
            "checkpoint's root: the database is damaged; run `hashmesh fsck`"
        )
