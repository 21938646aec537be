"""Matching: find hashes in every held log, exact or PDQ-near, with opinions and receipts.

Layer: node.ledger. Reads through :mod:`node.storage` (synchronously, in
whatever thread the caller runs it: a reader thread of the server, or the
CLI's own connection); holds the in-memory PDQ index.

Two paths, one result shape:

* **Exact** (md5, sha1, sha256, photodna): a batch is looked up in the
  ``active`` index by :func:`~node.storage.schema.active_key`, across every
  held log in one statement per signal type; each candidate is checked
  against its stored entry (a key may be shared by two values).
* **PDQ** (Hamming distance ``<= max_distance``):
  :class:`~node.ledger.live_pdq.LivePdqIndex` holds every row of the ``pdq``
  table (a memory-mapped base file plus the rows beyond it), extended
  incrementally by ``(log, index > last loaded)``. The index never
  forgets a row, so every hit is read back and kept only if its entry is
  still in ``active``: a retraction removes the hash from results as soon as
  it is committed, before any index update.

Each hit carries the opinions held about it (the latest one of each author,
bound to the entry's leaf hash) and, on request, a receipt
(:class:`protocol.receipt.MatchReceipt`). A node setting
(:class:`~node.config.MatchSettings`) hides hits disputed by enough trusted
origins; hidden hits are counted, never silently dropped.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from node.config import MatchSettings
from node.errors import EntryNotFoundError, LedgerError
from node.ledger.active_index import ActiveKeyIndex
from node.ledger.live_pdq import ID_SHIFT as _ID_SHIFT
from node.ledger.live_pdq import LOAD_CHUNK, LivePdqIndex
from node.ledger.pdq_index import MAX_DISTANCE_CAP
from node.ledger.service import Ledger
from node.storage.ledger_store import CheckpointRecord, LedgerStore
from node.storage.match_store import MatchStore, OpinionRow
from node.storage.schema import active_key
from protocol.checkpoint import CheckpointNote
from protocol.entry import AddEntry, Entry, OpinionEntry, parse_entry, parse_entry_fast
from protocol.errors import MalformedError
from protocol.hashing import hash_leaf
from protocol.receipt import MatchReceipt
from protocol.rules import current_opinions
from protocol.signal import SIGNAL_TYPES, detect_signal_type, validate_signal_value
from protocol.tree import compute_inclusion_proof

__all__ = [
    "DEFAULT_MAX_DISTANCE",
    "DISPUTING_VERDICTS",
    "EXACT_TYPES",
    "LOAD_CHUNK",
    "MAX_BATCH",
    "MAX_DISTANCE_CAP",
    "EntryView",
    "Hit",
    "ItemResult",
    "LivePdqIndex",
    "MatchQuery",
    "Opinion",
    "QueryColumns",
    "describe_entry",
    "make_opinion",
    "match",
]

DEFAULT_MAX_DISTANCE = 31
"""PDQ distance used when a request does not say (Meta's confident-match threshold)."""

MAX_BATCH = 10_000
"""Most hashes one match request may carry."""

EXACT_TYPES = frozenset(name for name in SIGNAL_TYPES if name != "pdq")
"""Signal types matched by equality (every registered type but PDQ)."""

DISPUTING_VERDICTS = frozenset({"dispute", "false-positive"})
"""Verdicts that count against a hit for :attr:`MatchSettings.hide_disputed_by`."""

_IDX_MASK = (1 << _ID_SHIFT) - 1


@dataclass(frozen=True, slots=True)
class MatchQuery:
    """One hash to look for, in canonical form (checked on construction).

    Attributes:
        signal_type: the registered signal type.
        value: the canonical value.
        quality: the PDQ quality of the query hash, when the caller knows it
            (pdq only); below the node's minimum the query is looked up
            exactly only (see :class:`LivePdqIndex`).

    Raises:
        MalformedError: naming ``type``, ``value`` or ``quality``.
    """

    signal_type: str
    value: str
    quality: int | None = None

    def __post_init__(self) -> None:
        if self.quality is not None:
            if self.signal_type != "pdq":
                raise MalformedError("quality is given for pdq queries only", field="quality")
            if (
                isinstance(self.quality, bool)
                or not isinstance(self.quality, int)
                or not 0 <= self.quality <= 100
            ):
                raise MalformedError("expected a PDQ quality 0-100", field="quality")
        try:
            validate_signal_value(self.signal_type, self.value, field="value", type_field="type")
        except MalformedError as e:
            # Type confusion is the common mistake (an MD5 sent as sha256):
            # say what the value looks like.
            other = detect_signal_type(self.value) if isinstance(self.value, str) else None
            if e.field != "value" or other is None or other == self.signal_type:
                raise
            raise MalformedError(
                f"{e.reason} (this looks like a {other} value)", field="value"
            ) from e

    @classmethod
    def parse(cls, signal_type: str, value: str) -> MatchQuery:
        """Like the constructor, with a fast path for canonical hex values.

        Bulk requests are almost all canonical hex: one precompiled
        ``fullmatch`` per value replaces the general validation.
        """
        check = _CANONICAL_HEX.get(signal_type)
        if check is not None and check(value) is not None:
            return _checked_query(signal_type, value)
        return cls(signal_type, value)


_CANONICAL_HEX = {
    name: re.compile(f"[0-9a-f]{{{2 * row.length}}}").fullmatch
    for name, row in SIGNAL_TYPES.items()
    if row.encoding == "hex"
}


class QueryColumns(Sequence[tuple[int, MatchQuery]]):
    """Queries already checked to be canonical, held as two columns (a bulk request).

    The same sequence of ``(position, query)`` pairs (position = place in
    the columns) as a tuple of :class:`MatchQuery`, without an object per
    query: :func:`match` groups the columns by signal type in bulk and makes
    a :class:`MatchQuery` only for the queries that found something. Only
    for values whose canonical form was checked by the caller (a parser
    whose pattern admits nothing else, as ``node.api.match`` does).
    """

    __slots__ = ("types", "values")

    def __init__(self, types: list[str], values: list[str]) -> None:
        if len(types) != len(values):
            raise ValueError(f"{len(types)} types but {len(values)} values")
        self.types = types
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __eq__(self, other: object) -> bool:
        # Equal to any sequence of the same pairs (a parser's tuple of queries).
        if isinstance(other, QueryColumns):
            return self.types == other.types and self.values == other.values
        if isinstance(other, Sequence):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    @overload
    def __getitem__(self, i: int) -> tuple[int, MatchQuery]: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[tuple[int, MatchQuery]]: ...

    def __getitem__(
        self, i: int | slice
    ) -> tuple[int, MatchQuery] | Sequence[tuple[int, MatchQuery]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        position = range(len(self))[i]
        return position, _checked_query(self.types[position], self.values[position])

    def by_type(self) -> dict[str, tuple[Sequence[int], list[str]]]:
        """Positions and values of each signal type present."""
        present = set(self.types)
        if len(present) == 1:
            return {present.pop(): (range(len(self)), self.values)}
        groups: dict[str, tuple[Sequence[int], list[str]]] = {}
        for position, (signal_type, value) in enumerate(zip(self.types, self.values, strict=True)):
            group = groups.setdefault(signal_type, ([], []))
            group[0].append(position)  # type: ignore[attr-defined]
            group[1].append(value)
        return groups

    def by_position(self) -> Mapping[int, MatchQuery]:
        """Position -> query, each made when looked up."""
        return _ColumnsByPosition(self)


class _ColumnsByPosition(Mapping[int, MatchQuery]):
    def __init__(self, columns: QueryColumns) -> None:
        self._columns = columns

    def __getitem__(self, position: int) -> MatchQuery:
        return self._columns[position][1]

    def __len__(self) -> int:
        return len(self._columns)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self._columns)))


def _checked_query(signal_type: str, value: str) -> MatchQuery:
    """A :class:`MatchQuery` of a value the caller checked (see :class:`QueryColumns`)."""
    query = object.__new__(MatchQuery)
    object.__setattr__(query, "signal_type", signal_type)
    object.__setattr__(query, "value", value)
    object.__setattr__(query, "quality", None)
    return query


@dataclass(frozen=True, slots=True)
class Opinion:
    """An origin's latest opinion of a hit, from an opinion entry in its log.

    Attributes:
        origin: the author of the opinion.
        index: the opinion entry's index in the author's log.
        verdict: ``confirm``, ``dispute`` or ``false-positive``.
        note: the opinion's note, if any.
        trusted: whether the author counts for the node's dispute policy.
    """

    origin: str
    index: int
    verdict: str
    note: str | None
    trusted: bool

    def to_json_obj(self) -> dict[str, Any]:
        """The opinion as a JSON-ready dict."""
        obj: dict[str, Any] = {
            "origin": self.origin,
            "index": self.index,
            "verdict": self.verdict,
            "trusted": self.trusted,
        }
        if self.note is not None:
            obj["note"] = self.note
        return obj


@dataclass(frozen=True, slots=True)
class Hit:
    """A listed entry that matches a query.

    Attributes:
        origin: the log listing the hash.
        index: the add entry's index in that log.
        signal_type: the entry's signal type.
        value: the listed value (for PDQ, possibly not the query's).
        distance: Hamming distance for PDQ, 0 for exact matches.
        labels: the entry's labels.
        quality: the entry's quality score (PDQ), or None.
        note: the entry's note, or None.
        opinions: the latest opinion of each origin that has one.
        receipt: the receipt, when asked for and the entry is under a
            signed checkpoint.
    """

    origin: str
    index: int
    signal_type: str
    value: str
    distance: int
    labels: tuple[str, ...]
    quality: int | None
    note: str | None
    opinions: tuple[Opinion, ...] = ()
    receipt: MatchReceipt | None = None

    def to_json_obj(self, *, receipts: bool = False) -> dict[str, Any]:
        """The hit as a JSON-ready dict (``receipt`` included when ``receipts``)."""
        obj: dict[str, Any] = {
            "origin": self.origin,
            "index": self.index,
            "type": self.signal_type,
            "value": self.value,
            "distance": self.distance,
            "labels": list(self.labels),
            "opinions": [o.to_json_obj() for o in self.opinions],
        }
        if self.quality is not None:
            obj["quality"] = self.quality
        if self.note is not None:
            obj["note"] = self.note
        if receipts:
            obj["receipt"] = None if self.receipt is None else self.receipt.to_json_obj()
        return obj


@dataclass(frozen=True, slots=True)
class ItemResult:
    """What one query found.

    Attributes:
        position: the query's position in the batch.
        query: the query.
        hits: matching entries, by distance, then origin, then index.
        hidden: hits left out by the dispute policy.
        truncated: more PDQ rows were within the distance than
            :attr:`MatchSettings.max_hits`; only the nearest were checked.
        warning: why the query was not near-matched (its quality is below
            the minimum), or None.
    """

    position: int
    query: MatchQuery
    hits: tuple[Hit, ...]
    hidden: int = 0
    truncated: bool = False
    warning: str | None = None


@dataclass
class _Found:
    """A verified hit before opinions, policy and receipts."""

    position: int
    log_id: int
    index: int
    data: bytes
    entry: AddEntry
    distance: int
    opinions: list[Opinion] = field(default_factory=list)


def match(
    ledger: Ledger,
    queries: Sequence[tuple[int, MatchQuery]],
    *,
    pdq: LivePdqIndex | None,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    receipts: bool = False,
    settings: MatchSettings | None = None,
    exact: ActiveKeyIndex | None = None,
) -> list[ItemResult]:
    """Look up a batch of hashes in every held log.

    Args:
        ledger: the node's ledger (read-only is enough); one read transaction
            is held for the whole batch, so results are one consistent view.
        queries: ``(position, query)`` pairs; positions are echoed back.
        pdq: the PDQ index (needed only if a query is PDQ).
        max_distance: PDQ Hamming distance, 0 to :data:`MAX_DISTANCE_CAP`.
        receipts: attach a receipt to every hit under a signed checkpoint.
        settings: the dispute policy (default: the node's config).
        exact: the mapped ``active`` key file for exact queries (None: SQLite
            seeks; the results are the same, only slower at size).

    Returns:
        A result for each query that found something (hits, or hits hidden
        by the dispute policy) or carries a warning, by position; queries
        that found nothing have none. PDQ hits are capped at
        ``settings.max_hits`` per query (the nearest; ``truncated`` set).

    Raises:
        MalformedError: if ``max_distance`` is out of range (field
            ``max_distance``).
        LedgerError: if a PDQ query is given without an index.
    """
    if (
        isinstance(max_distance, bool)
        or not isinstance(max_distance, int)
        or not 0 <= max_distance <= MAX_DISTANCE_CAP
    ):
        raise MalformedError(
            f"expected an integer 0-{MAX_DISTANCE_CAP}, got {max_distance!r}",
            field="max_distance",
        )
    settings = settings if settings is not None else ledger.config.match
    # One read snapshot: the active rows checked and the entries, opinions
    # and checkpoints read all belong to the same committed state.
    with ledger.store.read_snapshot():
        return _match(ledger, queries, (pdq, exact), max_distance, receipts, settings)


def _match(
    ledger: Ledger,
    queries: Sequence[tuple[int, MatchQuery]],
    indexes: tuple[LivePdqIndex | None, ActiveKeyIndex | None],
    max_distance: int,
    receipts: bool,
    settings: MatchSettings,
) -> list[ItemResult]:
    pdq, exact = indexes
    store = ledger.store
    matching = store.matching
    origins = matching.log_origins()
    found: dict[int, list[_Found]] = defaultdict(list)
    by_type: dict[str, tuple[Sequence[int], list[str]]]
    pdq_queries: list[tuple[int, MatchQuery]] = []
    if isinstance(queries, QueryColumns):
        by_type = queries.by_type()
        pdq_positions = by_type.pop("pdq", ((), []))[0]
        pdq_queries = [queries[p] for p in pdq_positions]
    else:
        by_type = {}
        for position, query in queries:
            if query.signal_type == "pdq":
                pdq_queries.append((position, query))
            else:
                group = by_type.setdefault(query.signal_type, ([], []))
                group[0].append(position)  # type: ignore[attr-defined]
                group[1].append(query.value)
    truncated: set[int] = set()
    warnings: dict[int, str] = {}
    if pdq_queries:
        if pdq is None:
            raise LedgerError("PDQ queries need the PDQ index; none was given")
        near = [pdq.near_allowed(q.quality) for _p, q in pdq_queries]
        for (position, query), allowed in zip(pdq_queries, near, strict=True):
            if not allowed:
                warnings[position] = (
                    f"PDQ quality {query.quality} is below this node's minimum "
                    f"{pdq.min_quality}: looked up exactly only (distance 0)"
                )
        _match_pdq(
            matching, pdq, pdq_queries, near, (max_distance, settings.max_hits), found, truncated
        )
    for signal_type, (positions, values) in by_type.items():
        _match_exact(store, exact, signal_type, (positions, values), found)
    trusted = _trusted_origins(ledger, settings)
    _attach_opinions(matching, origins, found, trusted)
    checkpoints: dict[int, CheckpointRecord | None] = {}
    results: list[ItemResult] = []
    # Most queries of a bulk batch match nothing: only the others are built.
    if isinstance(queries, QueryColumns):
        by_position: Mapping[int, MatchQuery] = queries.by_position()
    else:
        by_position = dict(queries) if found or warnings else {}
    for position in sorted(found.keys() | warnings.keys()):
        hits: list[Hit] = []
        hidden = 0
        for f in found[position]:
            disputes = sum(1 for o in f.opinions if o.trusted and o.verdict in DISPUTING_VERDICTS)
            if settings.hide_disputed_by and disputes >= settings.hide_disputed_by:
                hidden += 1
                continue
            receipt = None
            if receipts:
                receipt = _receipt(
                    store, matching, origins[f.log_id], (f.log_id, f.index, f.data), checkpoints
                )
            e = f.entry
            hits.append(
                Hit(
                    origin=origins[f.log_id],
                    index=f.index,
                    signal_type=e.signal_type,
                    value=e.value,
                    distance=f.distance,
                    labels=e.labels,
                    quality=e.quality,
                    note=e.note,
                    opinions=tuple(f.opinions),
                    receipt=receipt,
                )
            )
        hits.sort(key=lambda h: (h.distance, h.origin, h.index))
        results.append(
            ItemResult(
                position,
                by_position[position],
                tuple(hits),
                hidden,
                truncated=position in truncated,
                warning=warnings.get(position),
            )
        )
    return results


def _match_exact(
    store: LedgerStore,
    exact: ActiveKeyIndex | None,
    signal_type: str,
    items: tuple[Sequence[int], list[str]],
    found: dict[int, list[_Found]],
) -> None:
    positions, values = items
    candidates = (
        store.matching.exact_candidates(signal_type, values)
        if exact is None
        else exact.candidates(store, signal_type, values)
    )
    for c in candidates:
        entry = parse_entry_fast(c.data)
        position, value = positions[c.position], values[c.position]
        if (
            isinstance(entry, AddEntry)
            and entry.signal_type == signal_type
            and entry.value == value
        ):
            found[position].append(_Found(position, c.log_id, c.index, c.data, entry, 0))


def _match_pdq(
    matching: MatchStore,
    pdq: LivePdqIndex,
    items: Sequence[tuple[int, MatchQuery]],
    near: Sequence[bool],
    bounds: tuple[int, int],
    found: dict[int, list[_Found]],
    truncated: set[int],
) -> None:
    max_distance, max_hits = bounds
    # One row more than the cap tells a full answer from a truncated one.
    candidates = pdq.search_many(
        [bytes.fromhex(q.value) for _p, q in items], max_distance, near=near, limit=max_hits + 1
    )
    by_log: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for (position, _query), rows in zip(items, candidates, strict=True):
        if len(rows) > max_hits:
            truncated.add(position)
            rows = rows[:max_hits]
        for row_id, distance in rows:
            by_log[row_id >> _ID_SHIFT].append((position, row_id & _IDX_MASK, distance))
    for log_id, log_rows in by_log.items():
        datas = matching.entries_at(log_id, (idx for _p, idx, _d in log_rows))
        entries: dict[int, AddEntry] = {}
        for idx, data in datas.items():
            entry = parse_entry_fast(data)
            if isinstance(entry, AddEntry) and entry.signal_type == "pdq":
                entries[idx] = entry
        listed = matching.listed_among(
            log_id, ((active_key("pdq", e.value), idx) for idx, e in entries.items())
        )
        for position, idx, distance in log_rows:
            if idx in listed:
                found[position].append(
                    _Found(position, log_id, idx, datas[idx], entries[idx], distance)
                )


def _trusted_origins(ledger: Ledger, settings: MatchSettings) -> frozenset[str]:
    if settings.trusted_origins is not None:
        return frozenset(settings.trusted_origins)
    own = ledger.store.own_log().origin
    return frozenset([own, *(f.origin for f in ledger.peers.list_follows())])


def _attach_opinions(
    matching: MatchStore,
    origins: dict[int, str],
    found: dict[int, list[_Found]],
    trusted: frozenset[str],
) -> None:
    hits = [f for group in found.values() for f in group]
    if not hits:
        return
    rows = matching.opinions_about((origins[f.log_id], f.index) for f in hits)
    if not rows:
        return
    about: dict[tuple[str, int], list[OpinionRow]] = defaultdict(list)
    for row in rows:
        about[(row.target_origin, row.target_index)].append(row)
    for f in hits:
        mine = about.get((origins[f.log_id], f.index))
        if not mine:
            continue
        for row in current_opinions(mine, hash_leaf(f.data)):
            author = row.author
            entry = parse_entry(row.data)
            note = entry.note if isinstance(entry, OpinionEntry) else None
            f.opinions.append(Opinion(author, row.index, row.verdict, note, author in trusted))


def _receipt(
    store: LedgerStore,
    matching: MatchStore,
    origin: str,
    at: tuple[int, int, bytes],
    checkpoints: dict[int, CheckpointRecord | None],
) -> MatchReceipt | None:
    """The receipt of entry ``at`` = (log id, index, bytes) under its log's latest checkpoint."""
    log_id, index, data = at
    if log_id not in checkpoints:
        checkpoints[log_id] = store.latest_checkpoint(log_id)
    record = checkpoints[log_id]
    if record is None or index >= record.size:
        # A replica mid catch-up: the entry is verified, but the note that
        # covers it is stored only with the last chunk.
        return None
    hashes = compute_inclusion_proof(index, record.size, store.reader(log_id))
    note = _with_cosignatures(record.note, matching.cosignature_lines(log_id, record.size))
    return MatchReceipt(
        origin=origin,
        index=index,
        size=record.size,
        entry=data,
        hashes=tuple(hashes),
        checkpoint=note,
    )


def _with_cosignatures(note: CheckpointNote, lines: Iterable[str]) -> CheckpointNote:
    """The signed note with stored cosignature lines appended (each once)."""
    present = set(note.splitlines())
    extra = []
    for line in lines:
        line = line.rstrip("\n")
        if line and line not in present:
            present.add(line)
            extra.append(line + "\n")
    return note + "".join(extra)


@dataclass(frozen=True, slots=True)
class EntryView:
    """One held entry as an analyst sees it: what it says, who disputes it, its proof.

    Attributes:
        origin: the log holding it.
        index: its index there.
        data: its exact bytes.
        leaf_hash: the RFC 6962 leaf hash of ``data``.
        entry: ``data`` parsed.
        opinions: the latest opinion of each origin about it (adds only).
        retracted_by: the index of the retraction naming it, or None.
        receipt: its receipt under the latest stored checkpoint, or None when
            no stored checkpoint covers it yet.
    """

    origin: str
    index: int
    data: bytes
    leaf_hash: bytes
    entry: Entry
    opinions: tuple[Opinion, ...]
    retracted_by: int | None
    receipt: MatchReceipt | None


def describe_entry(ledger: Ledger, origin: str, index: int) -> EntryView:
    """Entry ``index`` of ``origin`` with its opinions, retraction and receipt (one snapshot).

    Raises:
        UnknownLogError: if no log of ``origin`` is held.
        EntryNotFoundError: if the log holds no entry ``index`` (field ``index``).
    """
    store = ledger.store
    with store.read_snapshot():
        log = store.get_log(origin)
        data = store.get_entry(log.log_id, index)
        if data is None:
            held = store.entry_count(log.log_id)
            raise EntryNotFoundError(
                f"{origin} holds {held} entries; there is no entry {index}", field="index"
            )
        entry = parse_entry(data)
        matching = store.matching
        opinions: tuple[Opinion, ...] = ()
        if isinstance(entry, AddEntry):
            found = _Found(0, log.log_id, index, data, entry, 0)
            _attach_opinions(
                matching,
                {log.log_id: origin},
                {0: [found]},
                _trusted_origins(ledger, ledger.config.match),
            )
            opinions = tuple(found.opinions)
        receipt = _receipt(store, matching, origin, (log.log_id, index, data), {})
        return EntryView(
            origin=origin,
            index=index,
            data=data,
            leaf_hash=hash_leaf(data),
            entry=entry,
            opinions=opinions,
            retracted_by=store.retracted_by(log.log_id, index),
            receipt=receipt,
        )


def make_opinion(
    ledger: Ledger, origin: str, index: int, verdict: str, note: str | None = None
) -> OpinionEntry:
    """An opinion entry about entry ``index`` of ``origin``, bound to its leaf hash.

    The target must be held here (own log or a replica): the opinion names
    the exact bytes the author has seen.

    Raises:
        UnknownLogError: if no log of ``origin`` is held.
        MalformedError: if the entry is not held, or the verdict or note are
            invalid.
    """
    log = ledger.store.get_log(origin)
    data = ledger.store.get_entry(log.log_id, index)
    if data is None:
        held = ledger.store.entry_count(log.log_id)
        raise MalformedError(
            f"entry {index} of {origin} is not held here (it holds {held} entries)",
            field="index",
        )
    return OpinionEntry(
        origin=origin, index=index, leaf_hash=hash_leaf(data), verdict=verdict, note=note
    )
