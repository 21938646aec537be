"""Flip bytes of a file, at chosen or random offsets, and put them back.

Bit rot and a torn write look the same to a reader: some bytes of the file
are not what was written. :func:`flip` changes one byte (XOR with a non-zero
mask, so it really changes), :func:`flip_random` draws offsets from a seeded
:class:`random.Random` (a failing case is re-run from its seed), and
:func:`table_offsets` narrows the offsets to the pages of one SQLite table or
index, so a test can aim at derived data (``active``) or at the log itself
(``entries``). :func:`restore` undoes a list of flips. :func:`tamper` changes chosen rows
(what a flipped bit does to one value) through SQL, append-only triggers
lifted for the moment, when a test needs damage at an exact place.
"""

from __future__ import annotations

import os
import random
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Flip", "flip", "flip_random", "restore", "table_offsets", "tamper", "truncate"]


@dataclass(frozen=True, slots=True)
class Flip:
    """One changed byte: where, what it was, what it became."""

    offset: int
    old: int
    new: int

    def __str__(self) -> str:
        return f"byte {self.offset}: {self.old:#04x} -> {self.new:#04x}"


def flip(path: Path, offset: int, mask: int = 0xFF) -> Flip:
    """XOR the byte at ``offset`` with ``mask`` (1..255) in place; returns what changed."""
    if not 1 <= mask <= 0xFF:
        raise ValueError(f"mask must change the byte (1..255), got {mask}")
    with path.open("r+b") as f:
        f.seek(offset)
        old = f.read(1)
        if len(old) != 1:
            raise ValueError(f"offset {offset} is past the end of {path}")
        new = old[0] ^ mask
        f.seek(offset)
        f.write(bytes([new]))
        f.flush()
        os.fsync(f.fileno())
    return Flip(offset, old[0], new)


def flip_random(
    path: Path,
    rng: random.Random,
    count: int = 1,
    offsets: Sequence[int] | None = None,
) -> list[Flip]:
    """Flip ``count`` distinct bytes chosen by ``rng`` (among ``offsets``, or the whole file)."""
    pool: Sequence[int] = offsets if offsets is not None else range(path.stat().st_size)
    chosen = rng.sample(pool, count)
    return [flip(path, offset, rng.randrange(1, 256)) for offset in chosen]


def restore(path: Path, flips: Sequence[Flip]) -> None:
    """Put the original bytes back, last flip first."""
    with path.open("r+b") as f:
        for change in reversed(flips):
            f.seek(change.offset)
            f.write(bytes([change.old]))


def truncate(path: Path, size: int) -> None:
    """Cut the file to ``size`` bytes (0: an empty file)."""
    with path.open("r+b") as f:
        f.truncate(size)


def table_offsets(path: Path, name: str) -> list[int]:
    """Byte offsets of every page of one table or index of a SQLite file.

    Read with SQLite's ``dbstat`` table, on a read-only connection, before
    the file is damaged. Run it on a checkpointed file (no ``-wal`` beside
    it), or the pages may still live in the WAL.
    """
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        pages = [
            int(p) for (p,) in conn.execute("SELECT pageno FROM dbstat WHERE name = ?", (name,))
        ]
    finally:
        conn.close()
    if not pages:
        raise ValueError(f"{path} has no table or index named {name!r}")
    return [(p - 1) * page_size + i for p in pages for i in range(page_size)]


def tamper(db: Path, *statements: str) -> None:
    """Run raw SQL on a database with its triggers lifted (what bit rot can do to a row)."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        triggers = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
        ).fetchall()
        conn.execute("BEGIN IMMEDIATE")
        for name, _sql in triggers:
            conn.execute(f"DROP TRIGGER {name}")
        for statement in statements:
            conn.execute(statement)
        for _name, sql in triggers:
            conn.execute(sql)
        conn.execute("COMMIT")
    finally:
        conn.close()
