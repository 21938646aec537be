"""The Merkle tree as C2SP tlog-tiles: tile ids, paths, contents and audit.

Layer: protocol (pure). This module performs no I/O: stored hashes come in
through :class:`~protocol.tree.NodeReader`, published tiles through a
``read_tile`` callable that the caller backs with files or HTTP.

C2SP tlog-tiles (https://c2sp.org/tlog-tiles) serves a log's tree as static
*tiles* of height 8: the tile ``(level L, index n)`` holds, left to right,
the hashes of the perfect nodes ``NodeId(8 * L, n * 256 + i)``, i.e. the
Merkle tree hashes of the 256**L-leaf subtrees ``D[(n*256+i) * 256**L :
(n*256+i+1) * 256**L]``. A *full* tile holds 256 hashes (8,192 bytes); the
rightmost tile of a level is *partial* (1..255 hashes) while the tree's size
is not a multiple of 256**(L+1). Paths::

    tile/<L>/<N>            a full hash tile
    tile/<L>/<N>.p/<W>      a partial hash tile of W hashes
    tile/entries/<N>[.p/<W>]  the entry bundle whose leaf hashes are tile/0/<N>[.p/<W>]

``<N>`` is written in 3-digit groups, every group but the last prefixed with
``x`` (1234067 is ``x001/x234/067``). Exactly one spelling of each tile is
accepted (:func:`parse_tile_path`).

Level range (a decision C2SP leaves to the log): C2SP allows levels 0..63,
but a tree of at most 2**63-1 leaves (the protocol's limit) has no node at
level 64, so no tile above level 7 can ever hold a hash, and a level-7 tile
is at most 127 hashes wide. :class:`TileId` therefore accepts levels 0..7
and only tiles whose hashes fit in a tree of 2**63-1 leaves; anything else
is :class:`~protocol.errors.MalformedError` (a server answers 400, never a
file look-up).

How tiles are checked (:func:`verify_tiles`): the tree's root is a function
of the partial tiles alone (the right edge), and each full tile's Merkle
tree hash is one hash of the tile above it. So an auditor recomputes the
root from the partial tiles, compares it with the checkpoint's, then checks
every full tile against its (already trusted) parent, top level first. The
first tile that does not hash to a trusted value is the wrong one, and
:class:`TileMismatchError` names it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from protocol.encoding import MAX_UINT63
from protocol.errors import MalformedError, RootMismatchError
from protocol.hashing import EMPTY_ROOT, HASH_SIZE
from protocol.tree import CompactRange, NodeId, NodeReader, frontier_ids

__all__ = [
    "MAX_TILE_LEVEL",
    "MAX_TILE_PATH_LENGTH",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "EntryBundleId",
    "TileId",
    "TileMismatchError",
    "TileNodeReader",
    "compute_new_tiles",
    "compute_tiles",
    "compute_tiles_from_leaf_hashes",
    "new_tiles",
    "parse_tile_path",
    "partial_tiles",
    "root_from_tiles",
    "tiles_for_size",
    "verify_tiles",
]

TILE_HEIGHT = 8
"""Merkle levels per tile level (C2SP tlog-tiles uses 8)."""

TILE_WIDTH = 1 << TILE_HEIGHT
"""Hashes in a full tile (256, i.e. 8,192 bytes)."""

MAX_TILE_LEVEL = 7
"""Highest tile level a tree of at most 2**63-1 leaves can have (see module docs)."""

MAX_TILE_PATH_LENGTH = 64
"""Characters in the longest path accepted; every canonical path is shorter (47)."""

_DIGITS = re.compile(r"[0-9]+")
_GROUP = re.compile(r"[0-9]{3}")
_X_GROUP = re.compile(r"x[0-9]{3}")
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]*")


def _check_int(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedError(f"expected an integer, got {type(value).__name__}", field=field)
    return value


def _format_path(kind: str, index: int, width: int) -> str:
    """``tile/<kind>/<N>[.p/<W>]``, the index in x-prefixed groups of 3 digits."""
    digits = str(index)
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    suffix = "" if width == TILE_WIDTH else f".p/{width}"
    return "tile/" + kind + "/" + "/".join([*("x" + g for g in groups[:-1]), groups[-1]]) + suffix


def _check_size(value: object, field: str) -> int:
    size = _check_int(value, field)
    if not 0 <= size <= MAX_UINT63:
        raise MalformedError(f"{size} is out of range 0..2^63-1", field=field)
    return size


@dataclass(frozen=True, slots=True, order=True)
class TileId:
    """One hash tile: ``width`` hashes of Merkle level ``8 * level``.

    Attributes:
        level: the tile level, 0..7 (level 0 holds leaf hashes).
        index: the tile's index within its level.
        width: hashes in the tile, 1..256; 256 is a full tile.

    Raises:
        MalformedError: if a field is out of range, or the tile could not
            exist in a tree of at most 2**63-1 leaves.
    """

    level: int
    index: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        level = _check_int(self.level, "level")
        index = _check_int(self.index, "index")
        width = _check_int(self.width, "width")
        if not 0 <= level <= MAX_TILE_LEVEL:
            raise MalformedError(
                f"{level} is out of range 0..{MAX_TILE_LEVEL} (no tree of at most 2^63-1 "
                f"leaves has a tile above level {MAX_TILE_LEVEL})",
                field="level",
            )
        if index < 0:
            raise MalformedError(f"{index} is negative", field="index")
        if not 1 <= width <= TILE_WIDTH:
            raise MalformedError(f"{width} is out of range 1..{TILE_WIDTH}", field="width")
        if (index * TILE_WIDTH + width) << (TILE_HEIGHT * level) > MAX_UINT63:
            raise MalformedError(
                f"tile {index} of level {level} (width {width}) lies beyond the largest "
                "tree (2^63-1 leaves)",
                field="index",
            )

    @property
    def is_full(self) -> bool:
        """Whether the tile holds all 256 hashes."""
        return self.width == TILE_WIDTH

    def to_path(self) -> str:
        """The canonical path, ``tile/<L>/<N>`` or ``tile/<L>/<N>.p/<W>``."""
        return _format_path(str(self.level), self.index, self.width)

    @classmethod
    def from_path(cls, path: str) -> TileId:
        """Parse the canonical path of a hash tile (see :func:`parse_tile_path`).

        Raises:
            MalformedError: if ``path`` is not exactly a canonical hash tile
                path (an entry bundle path included).
        """
        parsed = parse_tile_path(path)
        if not isinstance(parsed, TileId):
            raise MalformedError("an entry bundle, not a hash tile", field="path")
        return parsed

    def node_ids(self) -> list[NodeId]:
        """The perfect nodes whose hashes the tile holds, left to right."""
        first = self.index * TILE_WIDTH
        level = TILE_HEIGHT * self.level
        return [NodeId(level, first + i) for i in range(self.width)]

    def is_within(self, size: int) -> bool:
        """Whether every hash of this tile exists in a tree of ``size`` leaves.

        True for the tiles of :func:`tiles_for_size` and for every partial
        tile an earlier size of the same tree had (C2SP lets a log serve
        those); false for a tile past the tree.

        Raises:
            MalformedError: if ``size`` is out of range.
        """
        size = _check_size(size, "size")
        return (self.index * TILE_WIDTH + self.width) << (TILE_HEIGHT * self.level) <= size

    def parent_position(self) -> tuple[int, int, int]:
        """``(level, tile index, offset)`` of the hash that commits to this full tile."""
        return self.level + 1, self.index >> TILE_HEIGHT, self.index & (TILE_WIDTH - 1)


@dataclass(frozen=True, slots=True, order=True)
class EntryBundleId:
    """One entry bundle: the entries whose leaf hashes are level-0 tile ``index``.

    Entry bundles hold the entries themselves (hash values included), so a
    hashmesh node never publishes them; they exist only behind the mutual-TLS
    API for roles that may read entries.

    Attributes:
        index: the bundle's index (that of its level-0 tile).
        width: entries in the bundle, 1..256; 256 is a full bundle.

    Raises:
        MalformedError: if a field is out of range.
    """

    index: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        TileId(0, self.index, self.width)

    @property
    def tile(self) -> TileId:
        """The level-0 hash tile of these entries' leaf hashes."""
        return TileId(0, self.index, self.width)

    @property
    def start(self) -> int:
        """Index of the bundle's first entry."""
        return self.index * TILE_WIDTH

    @property
    def end(self) -> int:
        """One past the index of the bundle's last entry."""
        return self.index * TILE_WIDTH + self.width

    def to_path(self) -> str:
        """The canonical path, ``tile/entries/<N>`` or ``tile/entries/<N>.p/<W>``."""
        return _format_path("entries", self.index, self.width)

    @classmethod
    def from_path(cls, path: str) -> EntryBundleId:
        """Parse the canonical path of an entry bundle (see :func:`parse_tile_path`).

        Raises:
            MalformedError: if ``path`` is not exactly a canonical entry
                bundle path (a hash tile path included).
        """
        parsed = parse_tile_path(path)
        if not isinstance(parsed, EntryBundleId):
            raise MalformedError("a hash tile, not an entry bundle", field="path")
        return parsed


def _parse_level(text: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise MalformedError(f"{text!r} is not a decimal integer", field="level")
    if len(text) > 1 and text[0] == "0":
        raise MalformedError(f"{text!r} has a leading zero", field="level")
    level = int(text)
    if level > MAX_TILE_LEVEL:
        raise MalformedError(
            f"{level} is out of range 0..{MAX_TILE_LEVEL} (no tree of at most 2^63-1 "
            f"leaves has a tile above level {MAX_TILE_LEVEL})",
            field="level",
        )
    return level


def _parse_index(groups: Sequence[str]) -> int:
    last = len(groups) - 1
    for i, group in enumerate(groups):
        if i == last:
            if _X_GROUP.fullmatch(group):
                raise MalformedError(
                    f"the last group {group!r} must not have an 'x' prefix", field="index"
                )
            if not _GROUP.fullmatch(group):
                raise MalformedError(f"group {group!r} is not 3 digits", field="index")
        elif _GROUP.fullmatch(group):
            raise MalformedError(
                f"group {group!r} needs an 'x' prefix (every group but the last has one)",
                field="index",
            )
        elif not _X_GROUP.fullmatch(group):
            raise MalformedError(f"group {group!r} is not 'x' and 3 digits", field="index")
    if last > 0 and groups[0] == "x000":
        raise MalformedError("leading zero group 'x000'", field="index")
    return int("".join(g.removeprefix("x") for g in groups))


def _parse_width(text: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise MalformedError(f"{text!r} is not a decimal integer", field="width")
    if len(text) > 1 and text[0] == "0":
        raise MalformedError(f"{text!r} has a leading zero", field="width")
    width = int(text)
    if width == TILE_WIDTH:
        raise MalformedError(
            f"{TILE_WIDTH} is a full tile, whose path has no '.p/' suffix", field="width"
        )
    if not 1 <= width < TILE_WIDTH:
        raise MalformedError(f"{width} is out of range 1..{TILE_WIDTH - 1}", field="width")
    return width


def parse_tile_path(path: str) -> TileId | EntryBundleId:
    """Parse a hash tile or entry bundle path, accepting only the canonical form.

    The path is relative to the log's prefix (``tile/0/x001/234``, no
    leading slash). Anything but the one spelling :meth:`TileId.to_path` or
    :meth:`EntryBundleId.to_path` produces is rejected: leading zeros in the
    level, width or index, a missing or misplaced ``x`` prefix, a width of 0
    or above 255, ``.p/256`` (a full tile written as partial), a level above
    7, empty or dot segments, any other character.

    Returns:
        A :class:`TileId` for ``tile/<L>/...``, an :class:`EntryBundleId`
        for ``tile/entries/...``.

    Raises:
        MalformedError: naming the field (``path``, ``level``, ``index`` or
            ``width``) that is wrong and how.
    """
    if not isinstance(path, str):
        raise MalformedError(f"expected a string, got {type(path).__name__}", field="path")
    if len(path) > MAX_TILE_PATH_LENGTH:
        raise MalformedError(f"longer than {MAX_TILE_PATH_LENGTH} characters", field="path")
    if not _PRINTABLE_ASCII.fullmatch(path):
        raise MalformedError("contains a character other than printable ASCII", field="path")
    segments = path.split("/")
    if segments[0] != "tile":
        raise MalformedError("does not start with 'tile/'", field="path")
    if "" in segments:
        raise MalformedError("has an empty segment (a doubled or trailing slash)", field="path")
    if "." in segments or ".." in segments:
        raise MalformedError("has a dot segment", field="path")
    if len(segments) < 3:
        raise MalformedError("has no tile index", field="path")
    groups = segments[2:]
    width = TILE_WIDTH
    if len(groups) >= 2 and groups[-2].endswith(".p"):
        width_text = groups[-1]
        groups = [*groups[:-2], groups[-2].removesuffix(".p")]
    elif groups[-1].endswith(".p"):
        raise MalformedError("'.p' without a width", field="width")
    else:
        width_text = None
    parsed: TileId | EntryBundleId
    if segments[1] == "entries":
        index = _parse_index(groups)
        if width_text is not None:
            width = _parse_width(width_text)
        parsed = EntryBundleId(index, width)
    else:
        level = _parse_level(segments[1])
        index = _parse_index(groups)
        if width_text is not None:
            width = _parse_width(width_text)
        parsed = TileId(level, index, width)
    if parsed.to_path() != path:  # pragma: no cover - every other spelling is rejected above
        raise MalformedError("not in canonical form", field="path")
    return parsed


def _levels(size: int) -> Iterator[tuple[int, int]]:
    """``(level, hashes at that level)`` for every tile level a tree of ``size`` has."""
    level = 0
    while count := size >> (TILE_HEIGHT * level):
        yield level, count
        level += 1


def tiles_for_size(size: int) -> list[TileId]:
    """Every tile, full and partial, that represents the tree of ``size`` leaves.

    Ordered by level, then index. There are about size / 255 of them.

    Raises:
        MalformedError: if ``size`` is out of range.
    """
    size = _check_size(size, "size")
    tiles: list[TileId] = []
    for level, count in _levels(size):
        full, width = divmod(count, TILE_WIDTH)
        tiles.extend(TileId(level, n) for n in range(full))
        if width:
            tiles.append(TileId(level, full, width))
    return tiles


def partial_tiles(size: int) -> list[TileId]:
    """The partial tiles of the tree of ``size`` leaves, level 0 first.

    These are the tree's right edge: its root is a function of them alone.

    Raises:
        MalformedError: if ``size`` is out of range.
    """
    size = _check_size(size, "size")
    return [
        TileId(level, count >> TILE_HEIGHT, count & (TILE_WIDTH - 1))
        for level, count in _levels(size)
        if count & (TILE_WIDTH - 1)
    ]


def new_tiles(old_size: int, new_size: int) -> list[TileId]:
    """The tiles the tree of ``new_size`` has and the tree of ``old_size`` lacks.

    That is what an incremental publish writes: the full tiles completed
    since ``old_size`` and the new partial tiles, by level then index. The
    other tiles of ``new_size`` are unchanged, since tiles are immutable.

    Raises:
        MalformedError: if a size is out of range or ``old_size > new_size``.
    """
    old_size = _check_size(old_size, "old_size")
    new_size = _check_size(new_size, "new_size")
    if old_size > new_size:
        raise MalformedError(
            f"old size is beyond new size: {old_size} > {new_size}", field="old_size"
        )
    tiles: list[TileId] = []
    for level, count in _levels(new_size):
        old_count = old_size >> (TILE_HEIGHT * level)
        if old_count == count:
            break  # and so at every level above: nothing changed there
        full, width = divmod(count, TILE_WIDTH)
        tiles.extend(TileId(level, n) for n in range(old_count >> TILE_HEIGHT, full))
        if width:
            tiles.append(TileId(level, full, width))
    return tiles


def compute_tiles(tiles: Sequence[TileId], reader: NodeReader) -> list[bytes]:
    """The bytes of each tile (its hashes concatenated), from stored nodes.

    One batched ``reader.get_node_hashes`` call for all the tiles, one
    :class:`~protocol.tree.NodeId` per hash: right for a few tiles (what a
    server reads to answer one request); :func:`compute_new_tiles` is
    cheaper for publishing many.

    Raises:
        MalformedError: if the reader returns the wrong number or size of hashes.
    """
    ids = [node for tile in tiles for node in tile.node_ids()]
    hashes = reader.get_node_hashes(ids)
    if len(hashes) != len(ids):
        raise MalformedError(f"got {len(hashes)} node hashes, want {len(ids)}")
    out: list[bytes] = []
    pos = 0
    for tile in tiles:
        part = hashes[pos : pos + tile.width]
        pos += tile.width
        if set(map(len, part)) != {HASH_SIZE}:
            raise MalformedError(f"a node hash for {tile.to_path()} is not {HASH_SIZE} bytes")
        out.append(b"".join(part))
    return out


def compute_tiles_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> list[tuple[TileId, bytes]]:
    """Every tile of the tree of these leaf hashes, with its bytes.

    In :func:`tiles_for_size` order; :func:`compute_new_tiles` from size 0.

    Raises:
        MalformedError: if a leaf hash is not 32 bytes or there are too many.
    """
    return compute_new_tiles(0, leaf_hashes, _no_tiles)


def _no_tiles(tile: TileId) -> bytes:  # pragma: no cover - size 0 has no partial tile
    raise MalformedError("the empty tree has no tiles", field=tile.to_path())


def _split_hashes(data: bytes) -> list[bytes]:
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


def compute_new_tiles(
    old_size: int, leaf_hashes: Sequence[bytes], read_tile: Callable[[TileId], bytes]
) -> list[tuple[TileId, bytes]]:
    """The tiles new after appending ``leaf_hashes`` to the tree of ``old_size``, with bytes.

    Exactly :func:`new_tiles` ``(old_size, old_size + len(leaf_hashes))``,
    in that order, computed from the new leaf hashes and the partial tiles
    of the old tree alone (``read_tile`` is asked only for
    :func:`partial_tiles` ``(old_size)``), so an incremental publish costs
    O(new leaves), about one SHA-256 per new leaf, and reads no stored
    nodes. The old partial tiles are trusted as given: check the new root
    (:func:`root_from_tiles`) against the checkpoint before publishing it.

    Raises:
        MalformedError: if a size is out of range, a leaf hash is not 32
            bytes, or an old tile has the wrong length (its path is the
            error's ``field``).
    """
    old_size = _check_size(old_size, "old_size")
    new_size = _check_size(old_size + len(leaf_hashes), "new_size")
    if leaf_hashes and set(map(len, leaf_hashes)) != {HASH_SIZE}:
        raise MalformedError(f"leaf hashes must be {HASH_SIZE} bytes")
    out: list[tuple[TileId, bytes]] = []
    hashes: Sequence[bytes] = leaf_hashes  # the new hashes of the current level
    for level, count in _levels(new_size):
        old_count = old_size >> (TILE_HEIGHT * level)
        if old_count == count:
            break
        first = old_count >> TILE_HEIGHT
        row: list[bytes] = []  # hashes of this level from tile `first` on
        if old_count & (TILE_WIDTH - 1):
            old_tile = TileId(level, first, old_count & (TILE_WIDTH - 1))
            data = read_tile(old_tile)
            if len(data) != old_tile.width * HASH_SIZE:
                raise MalformedError(
                    f"{len(data)} bytes, want {old_tile.width * HASH_SIZE}",
                    field=old_tile.to_path(),
                )
            row = _split_hashes(bytes(data))
        row.extend(hashes)
        full, width = divmod(count, TILE_WIDTH)
        above: list[bytes] = []
        for n in range(first, full + (1 if width else 0)):
            part = row[(n - first) * TILE_WIDTH : (n - first + 1) * TILE_WIDTH]
            tile_data = b"".join(part)
            if n < full:
                out.append((TileId(level, n), tile_data))
                tree = CompactRange.empty()
                tree.extend(part)
                above.append(tree.root())
            else:
                out.append((TileId(level, n, width), tile_data))
        hashes = above
    return out


def _root_of(data: bytes) -> bytes:
    """The Merkle tree hash of concatenated hashes (a full tile, or an aligned run in one)."""
    tree = CompactRange.empty()
    tree.extend(_split_hashes(data))
    return tree.root()


class TileNodeReader:
    """A :class:`~protocol.tree.NodeReader` over the tiles of a tree of ``size``.

    Any perfect node of the tree comes from one tile (a node of level
    ``8 * L + r`` folds ``2**r`` hashes of a level-``L`` tile), so proofs and
    roots can be computed from published tiles with :mod:`protocol.tree`:
    ``compute_inclusion_proof(i, size, TileNodeReader(size, read_tile))``.
    Tiles read are kept for the reader's lifetime.

    The hashes are only as good as the tiles: verify what they lead to
    (the root against a signed checkpoint, see :func:`verify_tiles`).
    """

    __slots__ = ("_read_tile", "_size", "_tiles")

    def __init__(self, size: int, read_tile: Callable[[TileId], bytes]) -> None:
        """Read tiles of the tree of ``size`` leaves with ``read_tile``.

        Raises:
            MalformedError: if ``size`` is out of range.
        """
        self._size = _check_size(size, "size")
        self._read_tile = read_tile
        self._tiles: dict[TileId, bytes] = {}

    @property
    def size(self) -> int:
        """The tree size whose tiles are read."""
        return self._size

    def tile_at(self, level: int, index: int) -> TileId:
        """The tile ``index`` of ``level`` as the tree of :attr:`size` has it.

        Raises:
            MalformedError: if the tree has no such tile.
        """
        count = self._size >> (TILE_HEIGHT * level)
        full = count >> TILE_HEIGHT
        if index < full:
            return TileId(level, index)
        width = count & (TILE_WIDTH - 1)
        if index > full or not width:
            raise MalformedError(
                f"a tree of size {self._size} has no tile {index} at level {level}",
                field="index",
            )
        return TileId(level, index, width)

    def read(self, tile: TileId, *, keep: bool = True) -> bytes:
        """The bytes of ``tile``, checked for length.

        Args:
            tile: the tile to read.
            keep: keep it for later calls (tiles read once can pass False).

        Raises:
            MalformedError: naming the tile (as ``field``) if it is not
                ``width * 32`` bytes.
        """
        data = self._tiles.get(tile)
        if data is None:
            data = bytes(self._read_tile(tile))
            if len(data) != tile.width * HASH_SIZE:
                raise MalformedError(
                    f"{len(data)} bytes, want {tile.width * HASH_SIZE} ({tile.width} hashes)",
                    field=tile.to_path(),
                )
            if keep:
                self._tiles[tile] = data
        return data

    def get_node_hashes(self, ids: Sequence[NodeId]) -> list[bytes]:
        """The hash of each perfect node in ``ids``, from the tiles.

        Raises:
            MalformedError: if a node is not a perfect subtree of the tree,
                or a tile has the wrong length.
        """
        out: list[bytes] = []
        for node in ids:
            if node.level < 0 or node.index < 0 or (node.index + 1) << node.level > self._size:
                raise MalformedError(
                    f"node {node.index} of level {node.level} is not in a tree of size "
                    f"{self._size}",
                    field="node",
                )
            level, shift = divmod(node.level, TILE_HEIGHT)
            first = node.index << shift
            data = self.read(self.tile_at(level, first >> TILE_HEIGHT))
            start = (first & (TILE_WIDTH - 1)) * HASH_SIZE
            if shift == 0:
                out.append(data[start : start + HASH_SIZE])
                continue
            out.append(_root_of(data[start : start + (HASH_SIZE << shift)]))
        return out


class TileMismatchError(RootMismatchError):
    """Published tiles do not hash to the checkpoint's root; ``tile`` is the wrong one.

    Attributes:
        tile: the tile found wrong, or ``None`` when the tiles agree with
            each other but form another tree than the checkpoint's.
        expected: the trusted hash the tile should produce (32 bytes).
        calculated: the hash it produces (32 bytes).
    """

    def __init__(
        self, reason: str, *, tile: TileId | None, expected: bytes, calculated: bytes
    ) -> None:
        self.tile = tile
        super().__init__(reason, expected=expected, calculated=calculated)


def root_from_tiles(size: int, read_tile: Callable[[TileId], bytes]) -> bytes:
    """The root hash of the tree of ``size`` leaves, from its partial tiles.

    Reads only the right edge (:func:`partial_tiles`); it does not check
    the full tiles (:func:`verify_tiles` does).

    Raises:
        MalformedError: if ``size`` is out of range or a tile has the wrong length.
    """
    reader = TileNodeReader(size, read_tile)
    return CompactRange.from_frontier(size, reader.get_node_hashes(frontier_ids(size))).root()


def _blame_right_edge(
    reader: TileNodeReader, root_hash: bytes, calculated: bytes
) -> TileMismatchError:
    """Say which partial tile is wrong, given that they lead to another root.

    A partial tile of level >= 1 holds the hashes of full tiles below it, so
    it is checked against them; a single wrong tile that changes the root is
    a partial one, so a disagreement names it. The level-0 partial tile can
    be checked against nothing but the root.
    """
    edge = partial_tiles(reader.size)
    for tile in reversed(edge):
        if tile.level == 0:
            continue
        data = reader.read(tile)
        for i in range(tile.width):
            child = TileId(tile.level - 1, tile.index * TILE_WIDTH + i)
            child_root = _root_of(reader.read(child, keep=False))
            held = data[i * HASH_SIZE : (i + 1) * HASH_SIZE]
            if held != child_root:
                return TileMismatchError(
                    f"tile {tile.to_path()}: hash {i} is not the root of tile "
                    f"{child.to_path()}, and the tiles lead to another root than the "
                    "checkpoint's",
                    tile=tile,
                    expected=root_hash,
                    calculated=calculated,
                )
    if edge and edge[0].level == 0:
        return TileMismatchError(
            f"tile {edge[0].to_path()} is wrong: the other tiles agree with each other "
            "and it is the only one left that decides the root",
            tile=edge[0],
            expected=root_hash,
            calculated=calculated,
        )
    return TileMismatchError(
        f"the tiles of size {reader.size} agree with each other but lead to another root "
        "than the checkpoint's",
        tile=None,
        expected=root_hash,
        calculated=calculated,
    )


def verify_tiles(
    size: int,
    root_hash: bytes,
    read_tile: Callable[[TileId], bytes],
    *,
    since: int = 0,
    on_tiles: Callable[[int, int], None] | None = None,
) -> None:
    """Check that the tiles of the tree of ``size`` hash to ``root_hash``.

    Recomputes the root from the partial tiles, then checks every full tile
    new since the tree of size ``since`` (all of them for 0) against the
    hash its parent tile holds, top level first, so each tile is compared
    with a hash already trusted. An auditor that verified the tiles of
    ``since`` before passes it to re-read only what is new (tiles are
    immutable; consistency between the two checkpoints is checked apart).

    Args:
        size: the checkpoint's tree size.
        root_hash: the checkpoint's root hash.
        read_tile: returns a tile's bytes (from files, HTTP, ...).
        since: a tree size whose tiles were already verified.
        on_tiles: called with the full tiles checked so far and the full
            tiles to check, after each (for a progress bar).

    Raises:
        MalformedError: if a size is out of range, ``since > size``, or a
            tile has the wrong length (its path is the error's ``field``).
        TileMismatchError: naming the tile that does not hash to a trusted
            value (``tile`` is None if the tiles are those of another tree).
    """
    if not isinstance(root_hash, bytes) or len(root_hash) != HASH_SIZE:
        raise MalformedError(f"expected a {HASH_SIZE}-byte hash", field="root_hash")
    reader = TileNodeReader(size, read_tile)
    checked = new_tiles(since, size)  # validates since <= size
    if size == 0:
        calculated = EMPTY_ROOT
    else:
        frontier = reader.get_node_hashes(frontier_ids(size))
        calculated = CompactRange.from_frontier(size, frontier).root()
    if calculated != root_hash:
        raise _blame_right_edge(reader, root_hash, calculated)
    full = sorted((t for t in checked if t.is_full), key=lambda t: (-t.level, t.index))
    for done, tile in enumerate(full, 1):
        level, index, offset = tile.parent_position()
        parent = reader.tile_at(level, index)
        expected = reader.read(parent)[offset * HASH_SIZE : (offset + 1) * HASH_SIZE]
        calculated = _root_of(reader.read(tile, keep=tile.level > 0))
        if calculated != expected:
            raise TileMismatchError(
                f"tile {tile.to_path()} does not hash to hash {offset} of tile {parent.to_path()}",
                tile=tile,
                expected=expected,
                calculated=calculated,
            )
        if on_tiles is not None:
            on_tiles(done, len(full))
