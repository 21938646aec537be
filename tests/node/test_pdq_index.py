"""PdqIndex: exact recall against a brute-force reference, on every search path."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.ledger import pdq_index
from node.ledger.pdq_index import MAX_DISTANCE_CAP, TAIL_LIMIT, PdqIndex

Hashes = npt.NDArray[np.uint8]


def distances(hashes: Hashes, query: bytes) -> npt.NDArray[np.int64]:
    """Reference distances: unpack every bit and count the differences."""
    q = np.frombuffer(query, dtype=np.uint8)
    dist: npt.NDArray[np.int64] = np.unpackbits(hashes ^ q, axis=1).sum(axis=1, dtype=np.int64)
    return dist


def within(
    dist: npt.NDArray[np.int64], ids: list[int] | npt.NDArray[np.int64], d: int
) -> list[tuple[int, int]]:
    hits = [(int(ids[i]), int(dist[i])) for i in np.flatnonzero(dist <= d)]
    return sorted(hits, key=lambda h: (h[1], h[0]))


def brute(
    hashes: Hashes, ids: list[int] | npt.NDArray[np.int64], query: bytes, d: int
) -> list[tuple[int, int]]:
    """Reference: every row within ``d`` of ``query``, sorted by (distance, id)."""
    if len(hashes) == 0:
        return []
    return within(distances(hashes, query), ids, d)


def flip(h: bytes | Hashes, n: int, rng: np.random.Generator) -> bytes:
    """``h`` with exactly ``n`` distinct bits flipped."""
    bits = np.unpackbits(np.frombuffer(bytes(h), dtype=np.uint8))
    bits[rng.choice(256, n, replace=False)] ^= 1
    return np.packbits(bits).tobytes()


def random_hashes(n: int, seed: int) -> Hashes:
    return np.random.default_rng(seed).integers(0, 256, (n, 32), dtype=np.uint8)


@pytest.fixture(params=["auto", "probe", "scan"])
def strategy(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on the cost model's choice, then forced onto each exact path."""
    if request.param == "probe":
        monkeypatch.setattr(pdq_index, "_COST_SCAN_NS", float("inf"))
    elif request.param == "scan":
        monkeypatch.setattr(pdq_index, "_COST_SCAN_NS", 0.0)
    return str(request.param)


@pytest.fixture(scope="module")
def big() -> tuple[Hashes, npt.NDArray[np.int64]]:
    # Above TAIL_LIMIT, so the rows are in the bucket directories.
    hashes = random_hashes(TAIL_LIMIT + 7_000, seed=1)
    ids = np.arange(len(hashes), dtype=np.int64) * 3 + 11
    return hashes, ids


def test_planted_neighbours_random_data(
    big: tuple[Hashes, npt.NDArray[np.int64]], strategy: str
) -> None:
    hashes, ids = big
    index = PdqIndex()
    index.add(ids, hashes)
    assert len(index) == len(hashes)
    assert index._indexed == len(hashes)  # the directories are in use, not just the tail
    rng = np.random.default_rng(2)
    for k in range(40):
        row = int(rng.integers(len(hashes)))
        query = flip(hashes[row], k % 40, rng)
        dist = distances(hashes, query)
        for d in (0, 7, 31, 32, 64):
            expected = within(dist, ids, d)
            assert index.search(query, d) == expected
            if k % 40 <= d:
                assert (int(ids[row]), k % 40) in expected


def test_boundary_distance_is_inclusive(strategy: str) -> None:
    hashes = random_hashes(TAIL_LIMIT + 100, seed=3)
    rng = np.random.default_rng(4)
    base = bytes(hashes[0])
    for d in (0, 10, 11, 21, 22, 31, 32, 33, 44, 55, 63, 64):
        at_d = flip(base, d, rng)
        index = PdqIndex()
        index.add(np.arange(len(hashes)), hashes)
        index.add([-1], [at_d])
        assert (-1, d) in index.search(base, d)
        if d > 0:
            assert (-1, d) not in index.search(base, d - 1)


def spread_flip(h: bytes, d: int, key_bits: int, order: npt.NDArray[np.uint8]) -> bytes:
    """``h`` with ``d`` bits flipped, spread round robin over the 11 chunks' key bits.

    The worst case for the pigeonhole argument: no chunk differs in fewer than
    ``d // 11`` key bits, so a probe radius one smaller would miss it.
    ``order`` is the index's bit order (chunk bit ``i`` is hash bit ``order[i]``).
    """
    value = int.from_bytes(h, "big")
    used = [0] * len(pdq_index._CHUNK_STARTS)
    for k in range(d):
        c = k % len(used)
        value ^= 1 << (255 - int(order[pdq_index._CHUNK_STARTS[c] + used[c]]))
        used[c] += 1
    assert max(used) <= key_bits
    return value.to_bytes(32, "big")


def test_evenly_spread_neighbours_are_found(strategy: str) -> None:
    hashes = random_hashes(TAIL_LIMIT + 500, seed=11)
    index = PdqIndex()
    index.add(range(len(hashes)), hashes)
    bits = index._bucket_bits
    for d in (11, 21, 22, 31, 32, 33, 43, 44, 54, 55, 64):
        for row in (0, 77, len(hashes) - 1):
            query = spread_flip(bytes(hashes[row]), d, bits, index._order)
            assert (row, d) in index.search(query, d)
            assert (row, d) not in index.search(query, d - 1)


def test_clustered_and_duplicated_data(strategy: str) -> None:
    rng = np.random.default_rng(5)
    centres = random_hashes(5, seed=6)
    rows = [flip(centres[i % 5], int(rng.integers(0, 12)), rng) for i in range(20_000)]
    rows += [bytes(centres[0])] * 15_000  # one hash listed many times
    rows += [bytes(32), b"\xff" * 32] * 100
    hashes = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(-1, 32)
    ids = np.arange(len(rows), dtype=np.int64)
    index = PdqIndex()
    index.add(ids, rows)
    for query in (bytes(centres[0]), flip(centres[1], 20, rng), bytes(32), b"\xff" * 32):
        for d in (3, 31, 64):
            assert index.search(query, d) == brute(hashes, ids, query, d)


def test_complement_is_never_a_match(strategy: str) -> None:
    # Distance 256 wraps to 0 in the scan's byte sum; the exact check must drop it.
    zeros = [bytes(32)] * (TAIL_LIMIT + 1)
    index = PdqIndex()
    index.add(range(len(zeros)), zeros)
    index.add([-5], [bytes(32)])  # in the tail as well
    assert index.search(b"\xff" * 32, MAX_DISTANCE_CAP) == []
    assert len(index.search(bytes(32), 0)) == TAIL_LIMIT + 2


def test_incremental_adds_through_merges_and_rebuilds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pdq_index, "TAIL_LIMIT", 300)
    hashes = random_hashes(4_000, seed=7)
    rng = np.random.default_rng(8)
    # Near neighbours of early rows arrive late, so merges must place them correctly.
    late = np.frombuffer(
        b"".join(flip(hashes[i], int(rng.integers(0, 31)), rng) for i in range(200)),
        dtype=np.uint8,
    ).reshape(-1, 32)
    all_hashes = np.concatenate([hashes, late])
    ids = np.arange(len(all_hashes), dtype=np.int64)[::-1].copy()
    index = PdqIndex()
    seen_bits: set[int] = set()
    pos = 0
    while pos < len(all_hashes):
        step = int(rng.integers(1, 250))
        index.add(ids[pos : pos + step], all_hashes[pos : pos + step])
        pos = min(pos + step, len(all_hashes))
        seen_bits.add(index._bucket_bits)
        assert len(index) == pos
        for q in (0, 5, pos - 1):
            query = flip(all_hashes[q], 9, rng)
            assert index.search(query, 31) == brute(all_hashes[:pos], ids[:pos], query, 31)
    assert {11, 12, 13} <= seen_bits  # grew through rebuilds as well as merges
    assert index._indexed > 0
    for i in range(200):
        query = bytes(all_hashes[i])
        assert index.search(query, 31) == brute(all_hashes, ids, query, 31)


def test_merge_in_place_matches_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pdq_index, "TAIL_LIMIT", 200)
    monkeypatch.setattr(pdq_index, "_COST_SCAN_NS", float("inf"))
    hashes = random_hashes(1_800, seed=9)
    index = PdqIndex()
    index.add(range(1_100), hashes[:1_100])  # one rebuild (bits=13)
    for start in range(1_100, 1_700, 200):  # in-place merges, bits stay 13
        index.add(range(start, start + 200), hashes[start : start + 200])
    index.add(range(1_700, 1_800), hashes[1_700:])  # stays in the tail
    assert index._bucket_bits == 13 and index._indexed == 1_700 and len(index) == 1_800
    fresh = PdqIndex()
    fresh.add(range(1_800), hashes)
    for i in range(0, 1_800, 37):
        query = bytes(hashes[i])
        assert index.search(query, 40) == fresh.search(query, 40)
        assert (i, 0) in index.search(query, 0)


def test_ordering_by_distance_then_id() -> None:
    rng = np.random.default_rng(10)
    base = bytes(32)
    rows = [(7, flip(base, 3, rng)), (-2, flip(base, 3, rng)), (5, base), (9, flip(base, 1, rng))]
    rows += [(5, flip(base, 1, rng))]  # duplicate id: still two rows
    index = PdqIndex()
    index.add([i for i, _ in rows], [h for _, h in rows])
    assert index.search(base, 31) == [(5, 0), (5, 1), (9, 1), (-2, 3), (7, 3)]
    assert index.search_many([base, b"\xff" * 32], 1) == [[(5, 0), (5, 1), (9, 1)], []]


def test_empty_index_and_empty_add() -> None:
    index = PdqIndex()
    index.add([], [])
    assert len(index) == 0
    assert index.search(bytes(32), 31) == []
    assert index.search_many([], 31) == []


def test_nbytes_reports_held_memory(big: tuple[Hashes, npt.NDArray[np.int64]]) -> None:
    hashes, ids = big
    index = PdqIndex()
    index.add(ids, hashes)
    per_hash = index.nbytes / len(index)
    # 32 bytes of hash, 8 of id, 11 permutation slots of 4 bytes, directories.
    assert 84 <= per_hash <= 200


def test_accepts_bytes_like_and_numpy_integers() -> None:
    index = PdqIndex()
    h = bytes(range(32))
    index.add(np.array([1, 2], dtype=np.uint32), [bytearray(h), memoryview(h)])  # type: ignore[list-item]
    assert index.search(memoryview(h), np.int64(0)) == [(1, 0), (2, 0)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ids", "hashes", "message"),
    [
        ([1], [b"\x00" * 31], "hashes[0]: expected 32 bytes, got 31"),
        ([1, 2], [b"\x00" * 32, b"\x00" * 33], "hashes[1]: expected 32 bytes, got 33"),
        ([1], ["00" * 32], "hashes[0]: expected 32 bytes, got str"),
        ([1, 2], [b"\x00" * 32], "ids: expected 1 ids (one per hash), got 2"),
        ([1.5], [b"\x00" * 32], "ids[0]: expected an integer, got float"),
        ([True], [b"\x00" * 32], "ids[0]: expected an integer, got bool"),
        ([2**63], [b"\x00" * 32], "ids[0]: expected a signed 64-bit integer"),
        (np.array([1.0]), [b"\x00" * 32], "ids: expected a 1-d integer array, got dtype float64"),
        (
            np.array([2**64 - 1], dtype=np.uint64),
            [b"\x00" * 32],
            "ids: every id must fit in a signed 64-bit integer",
        ),
        ([1], np.zeros((1, 31), dtype=np.uint8), "hashes: expected a (n, 32) uint8 array"),
    ],
)
def test_add_rejects_bad_input(ids: object, hashes: object, message: str) -> None:
    index = PdqIndex()
    index.add([0], [bytes(32)])
    with pytest.raises(ValueError) as info:
        index.add(ids, hashes)  # type: ignore[arg-type]
    assert message in str(info.value)
    assert len(index) == 1  # nothing added


@pytest.mark.parametrize("bad", [-1, MAX_DISTANCE_CAP + 1, True, 3.0, "31", None])
def test_search_rejects_bad_distance(bad: object) -> None:
    index = PdqIndex()
    with pytest.raises(ValueError, match=r"^max_distance: expected an integer from 0 to 64"):
        index.search(bytes(32), bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^max_distance: "):
        index.search_many([bytes(32)], bad)  # type: ignore[arg-type]


def test_search_rejects_bad_query() -> None:
    index = PdqIndex()
    with pytest.raises(ValueError, match=r"^query: expected 32 bytes, got 31$"):
        index.search(bytes(31), 31)
    with pytest.raises(ValueError, match=r"^query: expected 32 bytes, got str$"):
        index.search("00" * 32, 31)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^queries\[1\]: expected 32 bytes, got 33$"):
        index.search_many([bytes(32), bytes(33)], 31)


@st.composite
def near_sets(draw: st.DrawFn) -> tuple[list[bytes], bytes, int]:
    """A few base hashes, rows scattered near them, and a query near one of them."""
    bases = draw(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(0, 400))
    rows = [
        flip(bases[int(rng.integers(len(bases)))], int(rng.integers(0, 70)), rng) for _ in range(n)
    ]
    query = flip(draw(st.sampled_from(bases)), draw(st.integers(0, 70)), rng)
    return rows, query, draw(st.integers(0, MAX_DISTANCE_CAP))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    case=near_sets(), split=st.integers(0, 400), force=st.sampled_from([None, 0.0, float("inf")])
)
def test_property_matches_brute_force(
    case: tuple[list[bytes], bytes, int],
    split: int,
    force: float | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows, query, d = case
    with monkeypatch.context() as patch:
        patch.setattr(pdq_index, "TAIL_LIMIT", 64)  # so small sets use the directories too
        if force is not None:
            patch.setattr(pdq_index, "_COST_SCAN_NS", force)
        index = PdqIndex()
        ids = list(range(len(rows)))
        index.add(ids[:split], rows[:split])
        index.add(ids[split:], rows[split:])
        hashes = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(-1, 32)
        assert index.search(query, d) == brute(hashes, ids, query, d)


def skewed_rows(kind: str, n: int, rng: np.random.Generator) -> Hashes:
    """Rows like the benchmark's named distributions (benchmarks/pdq_data.py), small."""
    if kind == "uniform":
        return rng.integers(0, 256, (n, 32), dtype=np.uint8)
    if kind == "biased":
        p = rng.uniform(0.05, 0.95, size=256)
        return np.packbits(rng.random((n, 256)) < p, axis=1)
    if kind == "clusters":
        centres = rng.integers(0, 256, (max(1, n // 50), 32), dtype=np.uint8)
        rows = centres[rng.integers(0, len(centres), n)]
        flips = rng.random((n, 256)) < rng.uniform(0, 30 / 256, size=(n, 1))
        return rows ^ np.packbits(flips, axis=1)
    # degenerate: uniform plus near-all-zero rows (0-8 bits set) and exact copies
    rows = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    low = rng.random(n) < 0.3
    rows[low] = np.packbits(rng.random((int(low.sum()), 256)) < 8 / 256, axis=1)
    return rows


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(["uniform", "biased", "clusters", "degenerate"]),
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 3_000),
    split=st.floats(0, 1),
    d=st.sampled_from([0, 3, 22, 31, 32, 44, 64]),
    limit=st.one_of(st.none(), st.integers(1, 40)),
    force=st.sampled_from([None, 0.0, float("inf")]),
)
def test_property_batches_match_brute_force_on_skewed_data(
    kind: str,
    seed: int,
    n: int,
    split: float,
    d: int,
    limit: int | None,
    force: float | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many queries in one call (probed, scanned and tail rows mixed in one block)."""
    rng = np.random.default_rng(seed)
    rows = skewed_rows(kind, n, rng)
    ids = rng.integers(-(2**40), 2**40, n)
    queries = [
        flip(rows[int(rng.integers(n))], int(rng.integers(0, 40)), rng) for _ in range(n and 70)
    ]
    queries += [bytes(q) for q in skewed_rows(kind, 70, rng)]
    with monkeypatch.context() as patch:
        patch.setattr(pdq_index, "TAIL_LIMIT", 64)
        if force is not None:
            patch.setattr(pdq_index, "_COST_SCAN_NS", force)
        index = PdqIndex()
        cut = int(n * split)
        index.add(ids[:cut], rows[:cut])
        index.add(ids[cut:], rows[cut:])
        got = index.search_many(queries, d, limit=limit)
    assert got == [brute(rows, ids, q, d)[:limit] for q in queries]
