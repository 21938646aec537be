"""C2SP tlog-tiles: conformance vectors, strict paths, and audit from tiles.

The shared vectors (``../shared/vectors/tiles.json`` beside the repository)
were made with Go's golang.org/x/mod/sumdb/tlog, an independent
implementation: for several tree sizes up to 1,000, every hash tile a log of
that size serves (path and exact bytes) and the root, plus the path encoding
of large tile indexes. We reproduce each byte for byte, both from leaf
hashes and from a node reader, and recompute each root from the tiles.

Bad paths are named vectors, each asserting the exact error. Hypothesis
checks the path round trip, that the root recomputed from tiles is the
protocol's root, and that one flipped byte in any tile is detected and the
tile named.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.audit import audit_tiles
from protocol.checkpoint import Checkpoint, VerifiedCheckpoint, sign_checkpoint
from protocol.encoding import MAX_UINT63
from protocol.errors import MalformedError, RootMismatchError
from protocol.hashing import EMPTY_ROOT, hash_leaf, hash_leaves
from protocol.keys import NoteSigner
from protocol.merkle import root_from_leaf_hashes, verify_consistency, verify_inclusion
from protocol.note import parse_note
from protocol.tiles import (
    MAX_TILE_LEVEL,
    TILE_WIDTH,
    EntryBundleId,
    TileId,
    TileMismatchError,
    TileNodeReader,
    compute_new_tiles,
    compute_tiles,
    compute_tiles_from_leaf_hashes,
    new_tiles,
    parse_tile_path,
    partial_tiles,
    root_from_tiles,
    tiles_for_size,
    verify_tiles,
)
from protocol.tree import (
    CompactRange,
    NodeId,
    compute_consistency_proof,
    compute_inclusion_proof,
)
from tests.conftest import SHARED_DIR, load_shared_vectors
from tests.protocol.test_merkle_properties import ListReader, ref_mth

TILES_VECTORS = SHARED_DIR / "vectors" / "tiles.json"


# Parametrisation needs the vectors at collection time.
VECTORS = load_shared_vectors(TILES_VECTORS)
VECTOR_LEAVES = [hash_leaf(base64.b64decode(b)) for b in VECTORS["leaves_b64"]]
VECTOR_SIZES = VECTORS["sizes"]


def b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


class StoredNodes:
    """A NodeReader over every perfect node of a tree, as storage holds them."""

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        self.levels: dict[int, list[bytes]] = {0: list(leaf_hashes)}
        for run in CompactRange.empty().extend(leaf_hashes, collect=True):
            self.levels.setdefault(run.level, []).extend(run.hashes)
        self.calls = 0

    def get_node_hashes(self, ids: Sequence[NodeId]) -> list[bytes]:
        self.calls += 1
        return [self.levels[n.level][n.index] for n in ids]


def reader_of(tiles: dict[TileId, bytes]) -> Callable[[TileId], bytes]:
    def read_tile(tile: TileId) -> bytes:
        return tiles[tile]

    return read_tile


# --------------------------------------------------------------------------
# Conformance with the shared vectors.
# --------------------------------------------------------------------------


def test_vector_file_shape() -> None:
    assert VECTORS["height"] == 8
    assert len(VECTOR_LEAVES) == 1000
    assert [s["size"] for s in VECTOR_SIZES] == [1, 2, 255, 256, 257, 511, 512, 1000]


@pytest.mark.parametrize("case", VECTOR_SIZES, ids=lambda c: f"size-{c['size']}")
def test_vector_tiles_from_leaf_hashes(case: dict[str, Any]) -> None:
    size = case["size"]
    got = compute_tiles_from_leaf_hashes(VECTOR_LEAVES[:size])
    want = [(t["path"], b64(t["data_b64"])) for t in case["tiles"]]
    assert [(tile.to_path(), data) for tile, data in got] == want
    assert [t.to_path() for t in tiles_for_size(size)] == [p for p, _ in want]
    assert root_from_leaf_hashes(VECTOR_LEAVES[:size]) == b64(case["root_b64"])


@pytest.mark.parametrize("case", VECTOR_SIZES, ids=lambda c: f"size-{c['size']}")
def test_vector_tiles_from_node_reader(case: dict[str, Any]) -> None:
    size = case["size"]
    tiles = [TileId.from_path(t["path"]) for t in case["tiles"]]
    reader = ListReader(VECTOR_LEAVES[:size])
    got = compute_tiles(tiles, reader)
    assert got == [b64(t["data_b64"]) for t in case["tiles"]]
    assert len(reader.requests) == 1  # one batched read for all the tiles


@pytest.mark.parametrize("case", VECTOR_SIZES, ids=lambda c: f"size-{c['size']}")
def test_vector_root_from_tiles(case: dict[str, Any]) -> None:
    size = case["size"]
    tiles = {TileId.from_path(t["path"]): b64(t["data_b64"]) for t in case["tiles"]}
    root = b64(case["root_b64"])
    assert root_from_tiles(size, reader_of(tiles)) == root
    verify_tiles(size, root, reader_of(tiles))


@pytest.mark.parametrize("case", VECTORS["tile_paths"], ids=lambda c: c["path"])
def test_vector_tile_paths_both_ways(case: dict[str, Any]) -> None:
    tile = TileId(case["level"], case["n"], case["width"])
    assert tile.to_path() == case["path"]
    assert parse_tile_path(case["path"]) == tile
    assert TileId.from_path(case["path"]) == tile


def test_spec_example_size_70000() -> None:
    # C2SP tlog-tiles: 273 full level-0 tiles, a partial of 112, one full
    # level-1 tile, a partial of 17 and a partial level-2 tile of width 1.
    tiles = tiles_for_size(70_000)
    assert tiles == [
        *(TileId(0, n) for n in range(273)),
        TileId(0, 273, 112),
        TileId(1, 0),
        TileId(1, 1, 17),
        TileId(2, 0, 1),
    ]
    assert partial_tiles(70_000) == [TileId(0, 273, 112), TileId(1, 1, 17), TileId(2, 0, 1)]
    assert tiles_for_size(256) == [TileId(0, 0), TileId(1, 0, 1)]
    assert tiles_for_size(0) == []


# --------------------------------------------------------------------------
# Paths.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class BadPath:
    desc: str
    path: str
    message: str


BAD_PATHS = [
    BadPath("leading-zero-level", "tile/00/000", "level: '00' has a leading zero"),
    BadPath("leading-zero-level-1", "tile/01/000", "level: '01' has a leading zero"),
    BadPath("level-not-decimal", "tile/a/000", "level: 'a' is not a decimal integer"),
    BadPath("level-signed", "tile/+1/000", "level: '+1' is not a decimal integer"),
    BadPath(
        "level-8",
        "tile/8/000.p/1",
        "level: 8 is out of range 0..7 (no tree of at most 2^63-1 leaves has a tile above level 7)",
    ),
    BadPath(
        "level-63",
        "tile/63/000.p/1",
        "level: 63 is out of range 0..7 (no tree of at most 2^63-1 leaves has a tile above level 7)",
    ),
    BadPath(
        "level-64",
        "tile/64/000",
        "level: 64 is out of range 0..7 (no tree of at most 2^63-1 leaves has a tile above level 7)",
    ),
    BadPath("index-two-digits", "tile/0/00", "index: group '00' is not 3 digits"),
    BadPath("index-four-digits", "tile/0/0001", "index: group '0001' is not 3 digits"),
    BadPath("index-unpadded", "tile/0/7", "index: group '7' is not 3 digits"),
    BadPath(
        "missing-x-prefix",
        "tile/0/001/234",
        "index: group '001' needs an 'x' prefix (every group but the last has one)",
    ),
    BadPath(
        "x-prefix-on-last",
        "tile/0/x001/x234",
        "index: the last group 'x234' must not have an 'x' prefix",
    ),
    BadPath(
        "x-prefix-alone", "tile/0/x000", "index: the last group 'x000' must not have an 'x' prefix"
    ),
    BadPath("leading-zero-group", "tile/0/x000/001", "index: leading zero group 'x000'"),
    BadPath("uppercase-x", "tile/0/X001/000", "index: group 'X001' is not 'x' and 3 digits"),
    BadPath("short-x-group", "tile/0/x01/000", "index: group 'x01' is not 'x' and 3 digits"),
    BadPath("width-zero", "tile/0/000.p/0", "width: 0 is out of range 1..255"),
    BadPath("width-leading-zero", "tile/0/000.p/01", "width: '01' has a leading zero"),
    BadPath("width-zeros", "tile/0/000.p/00", "width: '00' has a leading zero"),
    BadPath(
        "full-as-partial",
        "tile/0/000.p/256",
        "width: 256 is a full tile, whose path has no '.p/' suffix",
    ),
    BadPath("width-257", "tile/0/000.p/257", "width: 257 is out of range 1..255"),
    BadPath("width-not-decimal", "tile/0/000.p/ff", "width: 'ff' is not a decimal integer"),
    BadPath("p-without-width", "tile/0/000.p", "width: '.p' without a width"),
    BadPath(
        "width-on-inner-group",
        "tile/0/x001.p/5/000",
        "index: group 'x001.p' is not 'x' and 3 digits",
    ),
    BadPath(
        "double-slash", "tile/0//000", "path: has an empty segment (a doubled or trailing slash)"
    ),
    BadPath(
        "trailing-slash", "tile/0/000/", "path: has an empty segment (a doubled or trailing slash)"
    ),
    BadPath("leading-slash", "/tile/0/000", "path: does not start with 'tile/'"),
    BadPath("dot-dot", "tile/../000", "path: has a dot segment"),
    BadPath("dot-dot-escape", "tile/0/../../checkpoint", "path: has a dot segment"),
    BadPath("dot", "tile/0/./000", "path: has a dot segment"),
    BadPath("not-a-tile", "checkpoint", "path: does not start with 'tile/'"),
    BadPath("tiles-prefix", "tiles/0/000", "path: does not start with 'tile/'"),
    BadPath("no-index", "tile/0", "path: has no tile index"),
    BadPath("empty", "", "path: does not start with 'tile/'"),
    BadPath("space", "tile/0/000 ", "path: contains a character other than printable ASCII"),
    BadPath(
        "arabic-digit", "tile/\u0661/000", "path: contains a character other than printable ASCII"
    ),
    BadPath("nul", "tile/0/000\x00", "path: contains a character other than printable ASCII"),
    BadPath("backslash", "tile\\0\\000", "path: does not start with 'tile/'"),
    BadPath("query", "tile/0/000?x=1", "index: group '000?x=1' is not 3 digits"),
    BadPath("encoded-slash", "tile/0/x001%2F000", "index: group 'x001%2F000' is not 3 digits"),
    BadPath("too-long", "tile/0/" + "x001/" * 12 + "000", "path: longer than 64 characters"),
    BadPath(
        "beyond-largest-tree",
        "tile/0/x036/x028/x797/x018/x963/968",
        "index: tile 36028797018963968 of level 0 (width 256) lies beyond the largest tree "
        "(2^63-1 leaves)",
    ),
    BadPath(
        "full-level-7",
        "tile/7/000",
        "index: tile 0 of level 7 (width 256) lies beyond the largest tree (2^63-1 leaves)",
    ),
    BadPath(
        "level-7-width-128",
        "tile/7/000.p/128",
        "index: tile 0 of level 7 (width 128) lies beyond the largest tree (2^63-1 leaves)",
    ),
    BadPath(
        "entries-leading-zero-group", "tile/entries/x000/001", "index: leading zero group 'x000'"
    ),
    BadPath(
        "entries-full-as-partial",
        "tile/entries/000.p/256",
        "width: 256 is a full tile, whose path has no '.p/' suffix",
    ),
    BadPath("entries-width-zero", "tile/entries/000.p/0", "width: 0 is out of range 1..255"),
    BadPath("entries-no-index", "tile/entries", "path: has no tile index"),
    BadPath("entries-level", "tile/entries/0/000", "index: group '0' is not 'x' and 3 digits"),
]


@pytest.mark.parametrize("case", BAD_PATHS, ids=lambda c: c.desc)
def test_bad_path(case: BadPath) -> None:
    with pytest.raises(MalformedError) as info:
        parse_tile_path(case.path)
    assert str(info.value) == case.message


def test_bad_path_names_are_unique() -> None:
    assert len({c.desc for c in BAD_PATHS}) == len(BAD_PATHS)


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("tile/0/000", TileId(0, 0)),
        ("tile/0/255.p/255", TileId(0, 255, 255)),
        ("tile/7/000.p/127", TileId(7, 0, 127)),
        ("tile/entries/000", EntryBundleId(0)),
        ("tile/entries/x001/x234/067.p/9", EntryBundleId(1234067, 9)),
        (
            "tile/0/x036/x028/x797/x018/x963/967.p/255",
            TileId(0, 36028797018963967, 255),  # leaves up to 2^63-1 exactly
        ),
    ],
)
def test_good_paths(path: str, want: TileId | EntryBundleId) -> None:
    assert parse_tile_path(path) == want
    assert want.to_path() == path


def test_from_path_keeps_the_kinds_apart() -> None:
    with pytest.raises(MalformedError, match=r"^path: an entry bundle, not a hash tile$"):
        TileId.from_path("tile/entries/000")
    with pytest.raises(MalformedError, match=r"^path: a hash tile, not an entry bundle$"):
        EntryBundleId.from_path("tile/0/000")
    assert EntryBundleId.from_path("tile/entries/001.p/3").tile == TileId(0, 1, 3)
    bundle = EntryBundleId(2, 10)
    assert (bundle.start, bundle.end) == (512, 522)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            (-1, 0, 256),
            "level: -1 is out of range 0..7 (no tree of at most 2^63-1 leaves has a tile above level 7)",
        ),
        ((0, -1, 256), "index: -1 is negative"),
        ((0, 0, 0), "width: 0 is out of range 1..256"),
        ((0, 0, 257), "width: 257 is out of range 1..256"),
        ((True, 0, 256), "level: expected an integer, got bool"),
        ((0, "1", 256), "index: expected an integer, got str"),
    ],
)
def test_tile_id_fields_are_checked(args: tuple[Any, Any, Any], message: str) -> None:
    with pytest.raises(MalformedError) as info:
        TileId(*args)
    assert str(info.value) == message


def max_index(level: int, width: int) -> int:
    return ((MAX_UINT63 >> (8 * level)) - width) // TILE_WIDTH


@st.composite
def tile_ids(draw: st.DrawFn) -> TileId:
    level = draw(st.integers(0, MAX_TILE_LEVEL))
    width = draw(st.integers(1, TILE_WIDTH if level < MAX_TILE_LEVEL else 127))
    index = draw(st.integers(0, max_index(level, width)))
    return TileId(level, index, width)


@settings(max_examples=2000, deadline=None)
@given(tile_ids())
def test_path_round_trip(tile: TileId) -> None:
    path = tile.to_path()
    assert parse_tile_path(path) == tile
    if tile.level == 0:
        bundle = EntryBundleId(tile.index, tile.width)
        assert parse_tile_path(bundle.to_path()) == bundle
        assert bundle.to_path() == path.replace("tile/0/", "tile/entries/", 1)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.text(max_size=70),
        st.from_regex(
            r"tile/(entries|[0-9]{1,2})(/x?[0-9]{1,4}){1,4}(\.p/[0-9]{1,3})?", fullmatch=True
        ),
    )
)
def test_parse_accepts_only_canonical_paths(path: str) -> None:
    try:
        parsed = parse_tile_path(path)
    except MalformedError:
        return
    assert parsed.to_path() == path


# --------------------------------------------------------------------------
# Which tiles a tree serves.
# --------------------------------------------------------------------------

sizes = st.one_of(st.integers(0, 3000), st.integers(0, MAX_UINT63).map(lambda n: n >> 44))


@settings(max_examples=500, deadline=None)
@given(sizes, sizes)
def test_new_tiles_are_exactly_the_difference(a: int, b: int) -> None:
    old_size, new_size = min(a, b), max(a, b)
    old, new = set(tiles_for_size(old_size)), tiles_for_size(new_size)
    assert new_tiles(old_size, new_size) == [t for t in new if t not in old]
    assert new_tiles(0, new_size) == new
    assert all(t.is_within(new_size) for t in new)
    assert all(t.is_within(new_size) for t in tiles_for_size(old_size))


@settings(max_examples=500, deadline=None)
@given(sizes)
def test_tiles_for_size_match_the_spec_formula(size: int) -> None:
    tiles = tiles_for_size(size)
    for level in range(MAX_TILE_LEVEL + 1):
        at_level = [t for t in tiles if t.level == level]
        count = size // TILE_WIDTH**level
        assert [t.index for t in at_level] == list(range(len(at_level)))
        assert sum(t.width for t in at_level) == count
        assert all(t.is_full for t in at_level[:-1])
        assert [t for t in at_level if not t.is_full] == [
            t for t in partial_tiles(size) if t.level == level
        ]


def test_new_tiles_of_an_incremental_publish() -> None:
    assert new_tiles(1000, 1000) == []
    assert new_tiles(1000, 1001) == [TileId(0, 3, 233)]
    assert new_tiles(1000, 1024) == [TileId(0, 3), TileId(1, 0, 4)]
    assert new_tiles(255, 256) == [TileId(0, 0), TileId(1, 0, 1)]
    with pytest.raises(MalformedError, match=r"^old_size: old size is beyond new size: 2 > 1$"):
        new_tiles(2, 1)


def test_is_within() -> None:
    assert TileId(0, 3, 232).is_within(1000)
    assert TileId(0, 3, 200).is_within(1000)  # an earlier size's partial tile
    assert TileId(0, 0, 5).is_within(1000)  # partial of size 5, now full
    assert not TileId(0, 3, 233).is_within(1000)
    assert not TileId(0, 3).is_within(1000)
    assert not TileId(1, 0, 4).is_within(1000)
    assert TileId(1, 0, 3).is_within(1000)
    assert not TileId(0, 4, 1).is_within(1000)


# --------------------------------------------------------------------------
# Contents, and the tree recomputed from tiles.
# --------------------------------------------------------------------------

LEAVES = hash_leaves(b"hashmesh tiles property leaf %d" % i for i in range(70_000))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 3000))
def test_root_from_tiles_is_the_protocol_root(size: int) -> None:
    tiles = dict(compute_tiles_from_leaf_hashes(LEAVES[:size]))
    root = root_from_leaf_hashes(LEAVES[:size])
    assert root_from_tiles(size, reader_of(tiles)) == root
    verify_tiles(size, root, reader_of(tiles))
    assert list(tiles) == tiles_for_size(size)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3000), st.data())
def test_tiles_from_reader_equal_tiles_from_leaves(size: int, data: st.DataObject) -> None:
    tiles = compute_tiles_from_leaf_hashes(LEAVES[:size])
    reader = StoredNodes(LEAVES[:size])
    old_size = data.draw(st.integers(0, size))
    wanted = new_tiles(old_size, size)
    assert compute_tiles(wanted, reader) == [d for t, d in tiles if t in set(wanted)]
    assert reader.calls == 1


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 3000), st.integers(0, 3000))
def test_incremental_tiles_equal_tiles_from_scratch(a: int, b: int) -> None:
    old_size, new_size = min(a, b), max(a, b)
    old = dict(compute_tiles_from_leaf_hashes(LEAVES[:old_size]))
    new = dict(compute_tiles_from_leaf_hashes(LEAVES[:new_size]))
    asked: list[TileId] = []

    def read_tile(tile: TileId) -> bytes:
        asked.append(tile)
        return old[tile]

    got = compute_new_tiles(old_size, LEAVES[old_size:new_size], read_tile)
    assert got == [(t, new[t]) for t in new_tiles(old_size, new_size)]
    assert set(asked) <= set(partial_tiles(old_size))


def test_incremental_tiles_across_levels(tiles_70000: dict[TileId, bytes]) -> None:
    old = dict(compute_tiles_from_leaf_hashes(LEAVES[:65_535]))
    got = compute_new_tiles(65_535, LEAVES[65_535:70_000], old.__getitem__)
    assert got == [(t, tiles_70000[t]) for t in new_tiles(65_535, 70_000)]
    assert [t for t, _ in got][-4:] == [
        TileId(0, 273, 112),
        TileId(1, 0),
        TileId(1, 1, 17),
        TileId(2, 0, 1),
    ]


def test_incremental_tiles_refuse_a_wrong_old_tile() -> None:
    old = dict(compute_tiles_from_leaf_hashes(LEAVES[:1000]))
    old[TileId(1, 0, 3)] = old[TileId(1, 0, 3)][:-1]
    with pytest.raises(MalformedError) as info:
        compute_new_tiles(1000, LEAVES[1000:1100], old.__getitem__)
    assert str(info.value) == "tile/1/000.p/3: 95 bytes, want 96"


def test_tile_hashes_are_the_reference_mth() -> None:
    size = 70_000
    tiles = dict(compute_tiles_from_leaf_hashes(LEAVES[:size]))
    for tile in (TileId(1, 0), TileId(1, 1, 17), TileId(2, 0, 1), TileId(0, 273, 112)):
        span = TILE_WIDTH**tile.level
        want = [
            ref_mth(
                LEAVES[
                    (tile.index * TILE_WIDTH + i) * span : (tile.index * TILE_WIDTH + i + 1) * span
                ]
            )
            for i in range(tile.width)
        ]
        assert tiles[tile] == b"".join(want)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3000), st.data())
def test_proofs_from_tiles(size: int, data: st.DataObject) -> None:
    tiles = dict(compute_tiles_from_leaf_hashes(LEAVES[:size]))
    root = root_from_leaf_hashes(LEAVES[:size])
    reader = TileNodeReader(size, reader_of(tiles))
    index = data.draw(st.integers(0, size - 1))
    proof = compute_inclusion_proof(index, size, reader)
    assert proof == compute_inclusion_proof(index, size, StoredNodes(LEAVES[:size]))
    verify_inclusion(index, size, LEAVES[index], proof, root)
    old_size = data.draw(st.integers(1, size))
    proof = compute_consistency_proof(old_size, size, reader)
    old_root = root_from_leaf_hashes(LEAVES[:old_size])
    verify_consistency(old_size, size, old_root, root, proof)


def test_tile_node_reader_refuses_nodes_outside_the_tree() -> None:
    tiles = dict(compute_tiles_from_leaf_hashes(LEAVES[:1000]))
    reader = TileNodeReader(1000, reader_of(tiles))
    with pytest.raises(
        MalformedError, match=r"^node: node 1 of level 9 is not in a tree of size 1000$"
    ):
        reader.get_node_hashes([NodeId(9, 1)])
    with pytest.raises(
        MalformedError, match=r"^index: a tree of size 1000 has no tile 4 at level 0$"
    ):
        reader.tile_at(0, 4)
    assert reader.get_node_hashes([NodeId(9, 0)]) == [ref_mth(LEAVES[:512])]


def test_empty_tree() -> None:
    assert root_from_tiles(0, reader_of({})) == EMPTY_ROOT
    verify_tiles(0, EMPTY_ROOT, reader_of({}))
    assert compute_tiles_from_leaf_hashes([]) == []
    with pytest.raises(TileMismatchError) as info:
        verify_tiles(0, bytes(32), reader_of({}))
    assert info.value.tile is None


def test_wrong_length_tile_is_named() -> None:
    tiles = dict(compute_tiles_from_leaf_hashes(LEAVES[:1000]))
    tiles[TileId(0, 3, 232)] += b"\x00"
    with pytest.raises(MalformedError) as info:
        verify_tiles(1000, root_from_leaf_hashes(LEAVES[:1000]), reader_of(tiles))
    assert info.value.field == "tile/0/003.p/232"
    assert str(info.value) == "tile/0/003.p/232: 7425 bytes, want 7424 (232 hashes)"


def test_wrong_length_leaf_hash_is_refused() -> None:
    with pytest.raises(MalformedError):
        compute_tiles_from_leaf_hashes([b"\x00" * 31])
    with pytest.raises(MalformedError):
        compute_tiles_from_leaf_hashes([*LEAVES[:300], b"\x00" * 33])


# --------------------------------------------------------------------------
# A wrong tile is detected and named.
# --------------------------------------------------------------------------


def flipped(data: bytes, pos: int, bit: int) -> bytes:
    out = bytearray(data)
    out[pos] ^= 1 << bit
    return bytes(out)


def assert_named(size: int, tiles: dict[TileId, bytes], tile: TileId, pos: int, bit: int) -> None:
    root = root_from_leaf_hashes(LEAVES[:size])
    bad = dict(tiles)
    bad[tile] = flipped(tiles[tile], pos, bit)
    with pytest.raises(TileMismatchError) as info:
        verify_tiles(size, root, reader_of(bad))
    assert info.value.tile == tile, str(info.value)
    assert tile.to_path() in str(info.value)
    assert isinstance(info.value, RootMismatchError)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 3000), st.data())
def test_flipped_byte_in_any_tile_is_named(size: int, data: st.DataObject) -> None:
    tiles = dict(compute_tiles_from_leaf_hashes(LEAVES[:size]))
    tile = data.draw(st.sampled_from(sorted(tiles)))
    pos = data.draw(st.integers(0, len(tiles[tile]) - 1))
    bit = data.draw(st.integers(0, 7))
    assert_named(size, tiles, tile, pos, bit)


@pytest.fixture(scope="module")
def tiles_70000() -> dict[TileId, bytes]:
    return dict(compute_tiles_from_leaf_hashes(LEAVES[:70_000]))


@pytest.mark.parametrize(
    ("tile", "pos"),
    [
        (TileId(2, 0, 1), 31),  # the top of the right edge
        (TileId(1, 1, 17), 0),  # a partial tile above full ones
        (TileId(1, 1, 17), 16 * 32 + 5),
        (TileId(1, 0), 8191),  # a full level-1 tile under a partial one
        (TileId(1, 0), 4000),
        (TileId(0, 0), 0),  # a full level-0 tile under a full level-1 tile
        (TileId(0, 255), 8191),
        (TileId(0, 256), 100),  # a full level-0 tile under a partial level-1 tile
        (TileId(0, 272), 8191),
        (TileId(0, 273, 112), 0),  # the level-0 partial tile
        (TileId(0, 273, 112), 111 * 32 + 31),
    ],
    ids=lambda v: v.to_path() if isinstance(v, TileId) else str(v),
)
def test_flipped_byte_named_in_a_three_level_tree(
    tiles_70000: dict[TileId, bytes], tile: TileId, pos: int
) -> None:
    assert_named(70_000, tiles_70000, tile, pos, 0)


def test_incremental_verify_reads_only_new_tiles(tiles_70000: dict[TileId, bytes]) -> None:
    root = root_from_leaf_hashes(LEAVES[:70_000])
    read: list[TileId] = []

    def read_tile(tile: TileId) -> bytes:
        read.append(tile)
        return tiles_70000[tile]

    verify_tiles(70_000, root, read_tile, since=69_000)
    # Right edge, the level-0 tiles completed since 69,000 and their checks.
    assert set(read) == {
        TileId(0, 269),
        TileId(0, 270),
        TileId(0, 271),
        TileId(0, 272),
        TileId(0, 273, 112),
        TileId(1, 1, 17),
        TileId(2, 0, 1),
    }
    # A wrong old tile goes unnoticed by an incremental check, by design.
    bad = dict(tiles_70000)
    bad[TileId(0, 3)] = flipped(bad[TileId(0, 3)], 0, 0)
    verify_tiles(70_000, root, reader_of(bad), since=69_000)
    with pytest.raises(TileMismatchError):
        verify_tiles(70_000, root, reader_of(bad))
    with pytest.raises(MalformedError, match=r"^old_size: old size is beyond new size"):
        verify_tiles(70_000, root, reader_of(bad), since=70_001)


def test_tiles_of_another_tree_are_reported_as_such(tiles_70000: dict[TileId, bytes]) -> None:
    # Consistent tiles (size 65,536 has no level-0 partial tile) of another root.
    size = 65_536
    tiles = {t: tiles_70000.get(t, b"") for t in tiles_for_size(size)}
    tiles[TileId(2, 0, 1)] = root_from_leaf_hashes(LEAVES[:size])
    verify_tiles(size, root_from_leaf_hashes(LEAVES[:size]), reader_of(tiles))
    with pytest.raises(TileMismatchError) as info:
        verify_tiles(size, root_from_leaf_hashes(LEAVES[1 : size + 1]), reader_of(tiles))
    assert info.value.tile is None
    assert "agree with each other but lead to another root" in str(info.value)


@pytest.mark.parametrize(
    ("tile", "message"),
    [
        (TileId(0, 0), "tile tile/0/000 does not hash to hash 0 of tile tile/1/000: "),
        (TileId(0, 256), "tile tile/0/256 does not hash to hash 0 of tile tile/1/001.p/17: "),
        (
            TileId(1, 1, 17),
            "tile tile/1/001.p/17: hash 0 is not the root of tile tile/0/256, and the "
            "tiles lead to another root than the checkpoint's: ",
        ),
        (
            TileId(0, 273, 112),
            "tile tile/0/273.p/112 is wrong: the other tiles agree with each other and it is "
            "the only one left that decides the root: ",
        ),
    ],
    ids=lambda v: v.to_path() if isinstance(v, TileId) else "",
)
def test_mismatch_messages(tiles_70000: dict[TileId, bytes], tile: TileId, message: str) -> None:
    bad = dict(tiles_70000)
    bad[tile] = flipped(bad[tile], 0, 0)
    with pytest.raises(TileMismatchError) as info:
        verify_tiles(70_000, root_from_leaf_hashes(LEAVES[:70_000]), reader_of(bad))
    assert str(info.value).startswith(message)
    assert str(info.value).endswith(f"expected {info.value.expected.hex()}")


# --------------------------------------------------------------------------
# A published log as an audit source (protocol.audit.audit_tiles).
# --------------------------------------------------------------------------


def signed_at(size: int) -> VerifiedCheckpoint:
    checkpoint = Checkpoint(
        origin="example.org/log", size=size, root_hash=root_from_leaf_hashes(LEAVES[:size])
    )
    note = parse_note(sign_checkpoint(checkpoint, NoteSigner.generate("example.org/log")))
    return VerifiedCheckpoint(checkpoint=checkpoint, note=note, cosignatures={}, source="pub")


def test_audit_tiles_gives_proven_prefix_roots(tiles_70000: dict[TileId, bytes]) -> None:
    latest = signed_at(70_000)
    audited = audit_tiles(
        latest, reader_of(tiles_70000), since=69_000, marks=[0, 4, 69_000, 99_999]
    )
    view = audited.view
    assert view.computed == {
        0: EMPTY_ROOT,
        4: root_from_leaf_hashes(LEAVES[:4]),
        69_000: root_from_leaf_hashes(LEAVES[:69_000]),
        70_000: latest.root_hash,
    }
    assert view.leaves_ok and (view.replay_from, view.leaves_hashed) == (69_000, 1_000)
    assert view.tree is not None and view.tree.root() == latest.root_hash
    assert set(audited.proofs) == {4, 69_000}
    for m, proof in audited.proofs.items():
        verify_consistency(m, 70_000, view.computed[m], latest.root_hash, proof)


def test_audit_tiles_names_a_wrong_old_tile_that_breaks_a_prefix(
    tiles_70000: dict[TileId, bytes],
) -> None:
    # verify_tiles(since=69_000) does not re-read tile 0/3; the prefix proof of 1,000
    # does, fails, and a check from zero names the tile.
    bad = dict(tiles_70000)
    bad[TileId(0, 3)] = flipped(bad[TileId(0, 3)], 0, 0)
    audit_tiles(signed_at(70_000), reader_of(bad), since=69_000)
    with pytest.raises(TileMismatchError) as info:
        audit_tiles(signed_at(70_000), reader_of(bad), since=69_000, marks=[1_000])
    assert info.value.tile == TileId(0, 3)
