"""Immutable segment files: named numpy arrays on disk, checked, memory-mapped.

Layer: node.storage. File I/O only; what the arrays mean belongs to the
index that writes them (:mod:`node.ledger.live_pdq`, :mod:`node.ledger.leaf_index`).

A derived index kept on disk must never be trusted blindly: a crash, a full
disk or bit rot may leave a file that is short, stale or wrong. So a segment
is written once, whole, to a temporary name, flushed to disk and then renamed
over the old one (readers see the old file or the new one, never a mix), and
it describes itself::

    offset 0   "HMSEG", 0, 0, 1                8-byte magic
    offset 8   u32 header length, u32 CRC-32 of the header (little-endian)
    offset 16  header: UTF-8 JSON {format, kind, byteorder, size, meta, arrays}
    ...        each array at a 4,096-byte aligned offset, raw, C order

``arrays`` lists each array's name, dtype, shape, offset and byte length,
and one CRC-32 per :data:`BLOCK` bytes. :func:`open_segment` checks what is
cheap whatever the file's size (the magic, the header's CRC, the format
version, the byte order, the kind, that every array lies inside a file of
exactly the recorded size) and maps the file read-only: the arrays are
``numpy.frombuffer`` views of the mapping, so opening reads a few KiB and the
page cache is shared between every process that maps the file.
:meth:`Segment.verify` reads everything and checks every block's CRC (a
gigabyte in about a second): ``hashmesh fsck``, the background scrub and a
check after each open run it, not the open itself.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import sys
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "BLOCK",
    "FORMAT_VERSION",
    "INDEX_DIR",
    "MAGIC",
    "Segment",
    "SegmentError",
    "file_identity",
    "fsync_directory",
    "open_segment",
    "remove_stale_temporaries",
    "write_segment",
]

INDEX_DIR = "index"
"""Directory of a node's index files, inside the node directory."""

MAGIC = b"HMSEG\x00\x00\x01"
FORMAT_VERSION = 1
BLOCK = 1 << 22
"""Bytes covered by one CRC-32 of an array (4 MiB)."""

_ALIGN = 4096
_PREFIX = struct.Struct("<8sII")
_MAX_HEADER = 1 << 26
_TEMP_MARK = ".tmp-"


class SegmentError(Exception):
    """A segment file is missing, short, damaged or not what was asked for (one line)."""


@dataclass(frozen=True, slots=True)
class _ArrayInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    crcs: tuple[int, ...]


class Segment:
    """An open, read-only, memory-mapped segment file.

    Attributes:
        path: the file.
        kind: what the file holds (chosen by the writer, checked at open).
        meta: the writer's JSON metadata.
        identity: ``(st_dev, st_ino, st_size, st_mtime_ns)`` of the file when
            opened; a reader compares it with a fresh ``os.stat`` to learn
            that the file was replaced.
    """

    def __init__(
        self,
        path: Path,
        kind: str,
        meta: dict[str, Any],
        arrays: dict[str, _ArrayInfo],
        mapping: mmap.mmap | None,
        identity: tuple[int, int, int, int],
    ) -> None:
        self.path = path
        self.kind = kind
        self.meta = meta
        self.identity = identity
        self._infos = arrays
        self._mapping = mapping

    @property
    def nbytes(self) -> int:
        """Size of the file in bytes."""
        return self.identity[2]

    def names(self) -> list[str]:
        """The names of the arrays held."""
        return list(self._infos)

    def array(self, name: str) -> npt.NDArray[Any]:
        """A read-only view of one array (no copy; pages are read when touched).

        Raises:
            SegmentError: the segment holds no array of that name, or is closed.
        """
        info = self._infos.get(name)
        if info is None:
            raise SegmentError(f"{self.path}: holds no array {name!r}")
        count = int(np.prod(info.shape)) if info.shape else 1
        if count == 0 or self._mapping is None:
            if self._mapping is None and count:
                raise SegmentError(f"{self.path}: closed")
            return np.empty(info.shape, dtype=np.dtype(info.dtype))
        view = np.frombuffer(
            self._mapping, dtype=np.dtype(info.dtype), count=count, offset=info.offset
        )
        return view.reshape(info.shape)

    def verify(self, pause: Callable[[], None] | None = None) -> str | None:
        """Check every block of every array against its CRC; a problem in one line, or None.

        Args:
            pause: called between blocks (the background scrub paces itself there).
        """
        if self._mapping is None:
            return f"{self.path}: closed"
        view = memoryview(self._mapping)
        try:
            for info in self._infos.values():
                for i, expected in enumerate(info.crcs):
                    start = info.offset + i * BLOCK
                    end = min(info.offset + info.nbytes, start + BLOCK)
                    if zlib.crc32(view[start:end]) != expected:
                        return (
                            f"{self.path}: array {info.name!r} block {i} "
                            f"(bytes {start:,}-{end:,}) fails its checksum"
                        )
                    # Out of this process's resident set again (they stay in
                    # the page cache): a check must not make the whole file
                    # count as the server's memory. Searches fault them back.
                    self._mapping.madvise(mmap.MADV_DONTNEED, start, end - start)
                    if pause is not None:
                        pause()
        finally:
            view.release()
        return None

    def close(self) -> None:
        """Drop this object's mapping.

        Views handed out by :meth:`array` keep the pages mapped until they
        are garbage: the mapping is never unmapped under a live view.
        """
        self._mapping = None


def write_segment(
    path: Path,
    kind: str,
    meta: Mapping[str, Any],
    arrays: Mapping[str, npt.NDArray[Any]],
    *,
    before_rename: Callable[[Path], None] | None = None,
) -> None:
    """Write a segment file crash-safely: temporary file, fsync, rename, fsync of the directory.

    Args:
        path: the final name; its directory is created if missing.
        kind: what the file holds (checked by :func:`open_segment`).
        meta: JSON-ready metadata.
        arrays: name -> array (any numeric dtype, any shape; written in C order).
        before_rename: called with the complete, synced temporary file (tests
            stop a writer there).

    Raises:
        OSError: the file could not be written (the old file, if any, is intact).
    """
    # Index files hold the listed hashes: as private as the database.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    infos: list[dict[str, Any]] = []
    contiguous = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    layout: list[tuple[str, npt.NDArray[Any], int]] = []
    # The header records the arrays' offsets, so its room is reserved first:
    # generously, with a CRC (at most 11 characters in JSON) per block.
    reserve = (
        4096
        + len(json.dumps(dict(meta)))
        + sum(200 + len(name) + 12 * (a.nbytes // BLOCK + 1) for name, a in contiguous.items())
    )
    data_start = offset = _align(_PREFIX.size + reserve)
    for name, a in contiguous.items():
        layout.append((name, a, offset))
        offset = _align(offset + a.nbytes)
    size = offset
    temp = path.with_name(f"{path.name}{_TEMP_MARK}{os.getpid()}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as f:
            f.truncate(size)
            for name, a, at in layout:
                f.seek(at)
                crcs = []
                raw = memoryview(a.reshape(-1).view(np.uint8).data) if a.nbytes else memoryview(b"")
                for start in range(0, a.nbytes, BLOCK):
                    block = raw[start : start + BLOCK]
                    crcs.append(zlib.crc32(block))
                    f.write(block)
                infos.append(
                    {
                        "name": name,
                        "dtype": a.dtype.str,
                        "shape": list(a.shape),
                        "offset": at,
                        "nbytes": a.nbytes,
                        "crcs": crcs,
                    }
                )
            header = json.dumps(
                {
                    "format": FORMAT_VERSION,
                    "kind": kind,
                    "byteorder": sys.byteorder,
                    "size": size,
                    "meta": dict(meta),
                    "arrays": infos,
                },
                separators=(",", ":"),
            ).encode()
            if _PREFIX.size + len(header) > data_start:
                raise OSError(f"{path}: segment header larger than its reserved room")
            f.seek(0)
            f.write(_PREFIX.pack(MAGIC, len(header), zlib.crc32(header)))
            f.write(header)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def open_segment(path: Path, kind: str) -> Segment:
    """Open and map a segment after the checks that cost nothing at any size.

    Raises:
        FileNotFoundError: there is no such file.
        SegmentError: the file is not a complete segment of ``kind`` written
            on a machine of this byte order (one line naming what is wrong).
    """
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        prefix = f.read(_PREFIX.size)
        if len(prefix) < _PREFIX.size:
            raise SegmentError(f"{path}: truncated ({st.st_size} bytes, no header)")
        magic, header_len, header_crc = _PREFIX.unpack(prefix)
        if magic != MAGIC:
            raise SegmentError(f"{path}: not a hashmesh segment file (bad magic)")
        if header_len > _MAX_HEADER:
            raise SegmentError(f"{path}: header length {header_len} is implausible")
        header = f.read(header_len)
        if len(header) < header_len:
            raise SegmentError(f"{path}: truncated inside its header")
        if zlib.crc32(header) != header_crc:
            raise SegmentError(f"{path}: header fails its checksum")
        try:
            doc = json.loads(header)
            if doc["format"] != FORMAT_VERSION:
                raise SegmentError(
                    f"{path}: format version {doc['format']}, this program reads {FORMAT_VERSION}"
                )
            if doc["kind"] != kind:
                raise SegmentError(f"{path}: holds {doc['kind']!r}, not {kind!r}")
            if doc["byteorder"] != sys.byteorder:
                raise SegmentError(f"{path}: written on a {doc['byteorder']}-endian machine")
            if doc["size"] != st.st_size:
                raise SegmentError(
                    f"{path}: {st.st_size:,} bytes, its header says {doc['size']:,} (truncated?)"
                )
            infos = {}
            for item in doc["arrays"]:
                info = _ArrayInfo(
                    str(item["name"]),
                    str(item["dtype"]),
                    tuple(int(n) for n in item["shape"]),
                    int(item["offset"]),
                    int(item["nbytes"]),
                    tuple(int(c) for c in item["crcs"]),
                )
                dtype = np.dtype(info.dtype)
                if (
                    info.offset % _ALIGN
                    or info.offset + info.nbytes > st.st_size
                    or int(np.prod(info.shape)) * dtype.itemsize != info.nbytes
                    or len(info.crcs) != -(-info.nbytes // BLOCK)
                ):
                    raise SegmentError(f"{path}: array {info.name!r} is out of bounds")
                infos[info.name] = info
            meta = dict(doc["meta"])
        except (KeyError, TypeError, ValueError) as e:
            raise SegmentError(f"{path}: malformed header ({e})") from e
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if st.st_size else None
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return Segment(path, kind, meta, infos, mapping, identity)


def file_identity(path: Path) -> tuple[int, int, int, int] | None:
    """``(st_dev, st_ino, st_size, st_mtime_ns)`` of a file, or None if it is missing."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete temporary files of ``path`` left by writers that died; the ones removed."""
    removed = []
    for temp in path.parent.glob(f"{path.name}{_TEMP_MARK}*"):
        pid_text = temp.name.rsplit(_TEMP_MARK, 1)[-1]
        if pid_text.isdigit() and _alive(int(pid_text)):
            continue
        temp.unlink(missing_ok=True)
        removed.append(temp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def fsync_directory(directory: Path) -> None:
    """Flush a directory's entries to disk, so that a rename into it survives a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
