"""``POST /v1/match``: look up a batch of hashes in every log this node holds.

Layer: node.api. The request body is parsed, matched and the response
serialised in one worker process (:mod:`node.api.workers`, ``[api] workers``),
or with ``workers = 0`` in one reader thread of the database, so a batch of
ten thousand hashes never stalls the event loop. A worker opens the node's
persisted PDQ index read-only at its first PDQ query; the server keeps its
own, writable one current (:func:`keep_current`), which writes the index
files the workers map. Where more PDQ rows lie beyond that file than
``[match] worker_read_max`` (a first start at size), a worker does not read
them all itself: it answers PDQ queries 503 with ``Retry-After`` until the
server has written the file (:func:`worker_pdq_index`; docs/matching.md).

Request (JSON, at most :data:`MAX_BODY` bytes)::

    {"hashes": [{"type": "sha256", "value": "<64 hex>"}, ...],   1 to 10,000 items
                                                  (pdq items may add "quality": 0-100)
     "max_distance": 31,                                          optional, PDQ only
     "receipts": false}                                           optional

Response (200)::

    {"checked": <valid queries>, "max_distance": 31,
     "matches": [{"i": <position>, "type": ..., "value": ..., "hidden": 0,
                  ["truncated": true],
                  "hits": [{"origin", "index", "type", "value", "distance",
                            "labels", "opinions", ["quality"], ["note"],
                            ["receipt"]}]}],
     "errors": [{"i": <position>, "field": "hashes[3].value", "error": "..."}],
     ["warnings": [{"i": <position>, "field": "hashes[5].quality", "warning": "..."}]]}

A PDQ query whose ``quality`` is below the node's ``[match] min_quality`` is
looked up exactly only and answered with a warning; a query with more than
``[match] max_hits`` PDQ hits gets the nearest ones and ``truncated``.

Only queries with hits (or hidden hits) are listed under ``matches``. Values
must be canonical (lowercase hex, padded base64): this is an API for programs,
and a malformed item is reported in ``errors`` without failing the others.
The whole request is refused (400) only when its shape is wrong: not JSON, an
unknown field, ``hashes`` not a list or longer than :data:`MAX_BATCH`.

The PDQ index (:class:`~node.ledger.matching.LivePdqIndex`) belongs to the
database: :func:`match_service` keeps one per open
:class:`~node.ledger.database.Database`. It is brought up to date before
every request that has PDQ queries (one ``data_version`` pragma when nothing
changed), and ``hashmesh serve`` also loads it at start and after every
announced commit (:func:`keep_current`), so requests rarely wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import subprocess
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from node.api.access import METRICS_KEY, request_facts
from node.api.state import DB_KEY, LANE_KEY
from node.api.workers import POOL_KEY, WorkerContext
from node.errors import IndexPendingError, StorageError
from node.ledger import active_index
from node.ledger.active_index import (
    ActiveKeyIndex,
    active_file_due,
    active_index_path,
)
from node.ledger.database import Database
from node.ledger.events import CheckpointHub
from node.ledger.leaf_index import LeafHashIndex
from node.ledger.live_pdq import PENDING_RETRY_AFTER, node_pdq_index, pdq_index_path
from node.ledger.matching import (
    DEFAULT_MAX_DISTANCE,
    MAX_BATCH,
    MAX_DISTANCE_CAP,
    ItemResult,
    LivePdqIndex,
    MatchQuery,
    QueryColumns,
    match,
)
from node.ledger.service import Ledger
from protocol.api_documents import MatchFound, MatchItemError, MatchItemWarning, MatchResponseBody
from protocol.encoding import loads_strict
from protocol.errors import MalformedError
from protocol.signal import SIGNAL_TYPES

__all__ = [
    "MATCH_JOB",
    "MAX_BODY",
    "WAIT_FOR_FILE",
    "MatchRequest",
    "MatchService",
    "job_args",
    "keep_current",
    "match_document",
    "match_endpoint",
    "match_job",
    "match_service",
    "parse_match_request",
    "parse_match_request_strictly",
    "verify_index_files",
    "worker_exact_index",
    "worker_pdq_index",
]

log = logging.getLogger("hashmesh.api")

MAX_BODY = 4 * 1024 * 1024
"""Largest request body: 10,000 PhotoDNA queries (the longest values) fit with room."""

_REQUEST_KEYS = frozenset({"hashes", "max_distance", "receipts"})
_ITEM_KEYS = frozenset({"type", "value", "quality"})


@dataclass(frozen=True, slots=True)
class MatchRequest:
    """A parsed match request: valid queries by position, and per-item errors."""

    queries: Sequence[tuple[int, MatchQuery]]
    errors: tuple[MatchItemError, ...]
    max_distance: int
    receipts: bool


def _item_error(position: int, field: str, message: str) -> MatchItemError:
    return MatchItemError(i=position, field=field, error=message)


def _parse_item(position: int, item: object) -> MatchQuery | MatchItemError:
    if type(item) is dict and len(item) == 2:
        # The common case, checked without building error context.
        signal_type, value = item.get("type"), item.get("value")
        if type(signal_type) is str and type(value) is str:
            try:
                return MatchQuery.parse(signal_type, value)
            except MalformedError as e:
                return _item_error(position, f"hashes[{position}].{e.field or 'value'}", e.reason)
    where = f"hashes[{position}]"
    if not isinstance(item, Mapping):
        return _item_error(position, where, "expected an object with type and value")
    for key in sorted(set(item) - _ITEM_KEYS):
        return _item_error(
            position, f"{where}.{key}", "unknown field (expected type, value, quality)"
        )
    for key in ("type", "value"):
        if key not in item:
            return _item_error(position, f"{where}.{key}", "missing field")
        if not isinstance(item[key], str):
            return _item_error(position, f"{where}.{key}", "expected a string")
    quality = item.get("quality")
    if quality is not None and (isinstance(quality, bool) or not isinstance(quality, int)):
        return _item_error(position, f"{where}.quality", "expected a PDQ quality 0-100")
    try:
        return MatchQuery(item["type"], item["value"], quality)
    except MalformedError as e:
        return _item_error(position, f"{where}.{e.field or 'value'}", e.reason)


# The shape almost every bulk request has: {"hashes": [{"type": T, "value": V}, ...]}
# with canonical hex values (json.dumps or canonical separators), then
# optionally max_distance and receipts in that order. Such a body is read by
# two regular expressions instead of a JSON parse and a check per item; any
# other body (escapes, other keys or order, quality, base64 values, an error
# to report) takes the strict path below, which gives the same answer for
# these bodies (tests/api/test_match_parse.py).
_HEX_ITEM = "|".join(
    f'{name}", ?"value": ?"[0-9a-f]{{{2 * row.length}}}'
    for name, row in SIGNAL_TYPES.items()
    if row.encoding == "hex"
)
_ITEM = f'\\{{"type": ?"(?:{_HEX_ITEM})"\\}}'
_PLAIN_BODY = re.compile(
    f'\\{{"hashes": ?\\[((?:{_ITEM}(?:, ?{_ITEM})*)?)\\]'
    '(?:, ?"max_distance": ?(0|[1-9][0-9]?))?(?:, ?"receipts": ?(true|false))?\\}'
)
_PLAIN_PAIR = re.compile('"type": ?"([a-z0-9]+)", ?"value": ?"([0-9a-f]+)"')


def _parse_plain(body: bytes) -> MatchRequest | None:
    """The request, if ``body`` has the common plain shape (else None: parse it strictly)."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        return None
    found = _PLAIN_BODY.fullmatch(text)
    if found is None:
        return None
    items, distance, receipts = found.groups()
    max_distance = DEFAULT_MAX_DISTANCE if distance is None else int(distance)
    pairs = _PLAIN_PAIR.findall(items)
    if max_distance > MAX_DISTANCE_CAP or len(pairs) > MAX_BATCH:
        return None  # the strict path names the field
    # The pattern above admits only canonical hex of each type's length:
    # the queries need no check of their own, nor an object each.
    types, values = (list(column) for column in zip(*pairs, strict=True)) if pairs else ([], [])
    return MatchRequest(QueryColumns(types, values), (), max_distance, receipts == "true")


def parse_match_request(body: bytes) -> MatchRequest:
    """Parse a match request body.

    Raises:
        MalformedError: if the request as a whole is malformed (the field is
            named); malformed items are returned in ``errors`` instead.
    """
    plain = _parse_plain(body)
    return plain if plain is not None else parse_match_request_strictly(body)


def parse_match_request_strictly(body: bytes) -> MatchRequest:
    """:func:`parse_match_request` without the fast path for plain bodies (tests compare them)."""
    if not body:
        raise MalformedError("expected a JSON object with a hashes list; the body is empty")
    doc = loads_strict(body)
    if not isinstance(doc, Mapping):
        raise MalformedError("expected a JSON object with a hashes list")
    for key in sorted(set(doc) - _REQUEST_KEYS):
        raise MalformedError("unknown field (expected hashes, max_distance, receipts)", field=key)
    hashes = doc.get("hashes")
    if not isinstance(hashes, list):
        raise MalformedError("expected a list of {type, value} objects", field="hashes")
    if len(hashes) > MAX_BATCH:
        raise MalformedError(
            f"at most {MAX_BATCH} hashes per request, got {len(hashes)}; split the batch",
            field="hashes",
        )
    max_distance = doc.get("max_distance", DEFAULT_MAX_DISTANCE)
    if (
        isinstance(max_distance, bool)
        or not isinstance(max_distance, int)
        or not 0 <= max_distance <= MAX_DISTANCE_CAP
    ):
        raise MalformedError(f"expected an integer 0-{MAX_DISTANCE_CAP}", field="max_distance")
    receipts = doc.get("receipts", False)
    if not isinstance(receipts, bool):
        raise MalformedError("expected true or false", field="receipts")
    queries: list[tuple[int, MatchQuery]] = []
    errors: list[MatchItemError] = []
    for position, item in enumerate(hashes):
        parsed = _parse_item(position, item)
        if isinstance(parsed, MatchQuery):
            queries.append((position, parsed))
        else:
            errors.append(parsed)
    return MatchRequest(tuple(queries), tuple(errors), max_distance, receipts)


def render_results(request: MatchRequest, results: list[ItemResult]) -> MatchResponseBody:
    """The response document of a match request."""
    matches = [
        MatchFound(
            i=result.position,
            type=result.query.signal_type,
            value=result.query.value,
            hidden=result.hidden,
            hits=tuple(h.to_json_obj(receipts=request.receipts) for h in result.hits),
            truncated=result.truncated,
        )
        for result in results
        if result.hits or result.hidden
    ]
    warnings = tuple(
        MatchItemWarning(
            i=result.position, field=f"hashes[{result.position}].quality", warning=result.warning
        )
        for result in results
        if result.warning is not None
    )
    return MatchResponseBody(
        checked=len(request.queries),
        max_distance=request.max_distance,
        matches=tuple(matches),
        errors=request.errors,
        warnings=warnings,
    )


class MatchService:
    """The PDQ index of one open database, and when it was last brought up to date.

    The index maps the node's persisted base segment (``index/pdq.seg``) when
    it is valid and reads only the rows beyond it; only the serving process
    (:func:`keep_current`) makes it writable, so that it writes new bases.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.pdq = LivePdqIndex()
        self.exact: ActiveKeyIndex | None = None
        """The ``active`` key file for exact queries answered in this process."""
        self.writable = False
        """Whether this process writes the index files (``serve``: :func:`keep_current`);
        its match workers then wait for a PDQ file rather than read a large table."""
        self._lock = asyncio.Lock()
        self._version: int | None = None
        self._first_read = 0

    @property
    def loaded(self) -> bool:
        """Whether the index has been loaded at least once (``/readyz``)."""
        return self._version is not None

    def refuse_while_loading(self) -> None:
        """Answer a PDQ request at once while a large first load runs (no worker processes).

        Raises:
            IndexPendingError: the index has never been loaded and its load
                has read more than ``[match] worker_read_max`` rows so far.
                A smaller load is waited for, as before.
        """
        read_max = self.pdq.read_max
        if self.loaded or read_max is None or self._first_read <= read_max:
            return
        raise IndexPendingError(
            f"the PDQ index is loading ({self._first_read:,} PDQ hashes read so far); PDQ "
            f"queries are answered once it is loaded (retry in {PENDING_RETRY_AFTER} s), "
            "exact look-ups meanwhile",
            retry_after=PENDING_RETRY_AFTER,
        )

    def answers_pdq_itself(self) -> bool:
        """Whether this process answers a PDQ request that its match worker refused.

        A worker refuses (:class:`~node.errors.IndexPendingError`) while it
        waits for the index file this process writes (a first start at
        size). Once the index is loaded here it holds every row: such
        requests are matched in this process's reader threads until the file
        is written and the workers map it. Requests the workers answer never
        come here, so a node whose workers keep up is not slowed.
        """
        return self.loaded

    def invalidate(self) -> None:
        """Make the next :meth:`ensure_current` read the table again (after a dropped base)."""
        self._version = None

    def exact_index(self, ledger: Ledger) -> ActiveKeyIndex:
        """The ``active`` key file index, made on first use (safe across reader threads)."""
        if self.exact is None:
            self.exact = ActiveKeyIndex(active_index_path(ledger.config.node_dir))
        return self.exact

    async def ensure_current(self) -> int:
        """Load every PDQ row committed so far; the number of rows loaded now.

        Cheap when nothing was committed since the last call (one pragma).
        Loading runs in chunks in reader threads, so requests that need no
        PDQ keep being served meanwhile.
        """
        version = await self.db.data_version()
        if version == self._version:
            return 0
        async with self._lock:
            if version == self._version:
                return 0
            # Read the version before loading: a commit racing with the load
            # changes it again, and the next call loads what was missed.
            version = await self.db.data_version()
            if self.pdq.path is None:
                # The quality floor and the index file are the node's, known
                # once the database is open; the index is still empty here.
                settings, node_dir = await self.db.read(
                    lambda ledger: (ledger.config.match, ledger.config.node_dir)
                )
                self.pdq.min_quality = settings.min_quality
                self.pdq.read_max = settings.worker_read_max
                self.pdq.path = pdq_index_path(node_dir)
            self.pdq.writable = self.writable
            # Maps the base file (or a newer one) first: then only the rows
            # beyond it are read.
            await self.db.read(self.pdq.attach)
            while read := await self.db.read(lambda ledger: self.pdq.read_step(ledger.matching)):
                if self._version is None:
                    self._first_read += read
            loop = asyncio.get_running_loop()
            added = await loop.run_in_executor(None, self.pdq.flush)
            self._version = version
            return added


_SERVICES: weakref.WeakKeyDictionary[Database, MatchService] = weakref.WeakKeyDictionary()


def match_service(db: Database) -> MatchService:
    """The match service of ``db`` (made on first use; one per open database)."""
    service = _SERVICES.get(db)
    if service is None:
        service = _SERVICES[db] = MatchService(db)
    return service


async def keep_current(db: Database, hub: CheckpointHub) -> None:
    """Load the PDQ index now and again after every announced commit (runs until cancelled).

    Own-log writes by the CLI are announced by the server's watcher, replica
    commits by the sync engine; either way the index is extended soon after.
    The serving process owns the index files: once loaded, a mapped base is
    checked block by block in the background (a damaged one is dropped and
    the rows read again from the table), and a new base is written in the
    background whenever the in-memory tail has grown large next to it.
    """
    service = match_service(db)
    service.writable = True
    loop = asyncio.get_running_loop()
    events = hub.subscribe()
    background: set[asyncio.Task[None]] = set()
    try:
        started = loop.time()
        loaded = await _refresh(service)
        took = loop.time() - started
        pdq = service.pdq
        log.info(
            "PDQ index ready: %d hashes (%d mapped from %s, %d read) in %.1f s",
            len(pdq),
            pdq.base_rows,
            pdq.path,
            loaded,
            took,
        )
        if pdq.segment is not None:
            _spawn(background, _checked(service))
        _maybe_persist(service, background)
        _maybe_persist_active(db, background)
        async for _origin, _size in events:
            await _refresh(service)
            _maybe_persist(service, background)
            _maybe_persist_active(db, background)
    finally:
        for task in background:
            task.cancel()
        if isinstance(events, AsyncGenerator):
            await events.aclose()


async def _checked(service: MatchService) -> None:
    await _verify_base(service)


def _spawn(tasks: set[asyncio.Task[None]], coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(coro)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


_PERSISTING: weakref.WeakSet[MatchService] = weakref.WeakSet()


PERSIST_RETRY = 30.0
"""Seconds before a failed PDQ file write is tried again while the match workers wait for it."""


def _maybe_persist(service: MatchService, tasks: set[asyncio.Task[None]]) -> None:
    if service in _PERSISTING or not service.pdq.persist_due():
        return
    _PERSISTING.add(service)
    _spawn(tasks, _persist(service, tasks))


async def _persist_later(service: MatchService, tasks: set[asyncio.Task[None]]) -> None:
    await asyncio.sleep(PERSIST_RETRY)
    _maybe_persist(service, tasks)


async def _persist(service: MatchService, tasks: set[asyncio.Task[None]]) -> None:
    pdq = service.pdq
    database_path = await service.db.read(lambda ledger: ledger.config.database_path)

    def write() -> bool:
        # Its own read-only connection: the build takes seconds and must not
        # hold one of the server's reader threads.
        return pdq.persist(database_path)

    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        written = await _in_daemon_thread(write, "hashmesh-pdq-persist")
    except (OSError, StorageError) as e:
        log.warning("PDQ index not persisted: %s", e)
        written = False
    finally:
        _PERSISTING.discard(service)
    if not written and pdq.readers_wait():
        # The match workers wait for this file: an idle node would otherwise
        # not try again until its next commit.
        log.warning(
            "the match workers wait for the PDQ index file (this process answers PDQ "
            "queries meanwhile); writing it again in %g s",
            PERSIST_RETRY,
        )
        _spawn(tasks, _persist_later(service, tasks))
    if written:
        segment = pdq.segment
        log.info(
            "PDQ index persisted: %d hashes, %d bytes in %s (%.1f s)",
            pdq.base_rows,
            0 if segment is None else segment.nbytes,
            pdq.path,
            asyncio.get_running_loop().time() - started,
        )


_PERSISTING_ACTIVE: weakref.WeakSet[Database] = weakref.WeakSet()


def _maybe_persist_active(db: Database, tasks: set[asyncio.Task[None]]) -> None:
    """Write a new ``active`` key file in the background if enough lies beyond the old one."""
    if db in _PERSISTING_ACTIVE:
        return
    _PERSISTING_ACTIVE.add(db)
    _spawn(tasks, _persist_active(db))


async def _persist_active(db: Database) -> None:
    try:
        due, database_path, node_dir = await db.read(
            lambda ledger: (
                active_file_due(ledger),
                ledger.config.database_path,
                ledger.config.node_dir,
            )
        )
    except StorageError as e:
        _PERSISTING_ACTIVE.discard(db)
        log.warning("active key index not checked: %s", e)
        return
    if not due:
        _PERSISTING_ACTIVE.discard(db)
        return
    path = active_index_path(node_dir)

    def write() -> bool:
        # A child process: reading every row holds an interpreter for seconds
        # to minutes at size; the event loop's must stay free, and the
        # arrays are not the server's memory.
        started = time.monotonic()
        done = subprocess.run(  # noqa: S603 - our own module, our own paths
            [
                sys.executable,
                "-m",
                "node.ledger.active_index",
                str(database_path),
                str(path),
                str(active_index.PERSIST_MIN_ENTRIES),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
            raise OSError(lines[-1])
        if done.stdout.strip():
            log.info(
                "active key index persisted: %s rows in %s (%.1f s)",
                done.stdout.strip(),
                path,
                time.monotonic() - started,
            )
        return bool(done.stdout.strip())

    try:
        await _in_daemon_thread(write, "hashmesh-active-persist")
    except (OSError, StorageError, sqlite3.Error) as e:
        log.warning("active key index not persisted: %s", e)
    finally:
        _PERSISTING_ACTIVE.discard(db)


async def _in_daemon_thread(work: Callable[[], bool], name: str) -> bool:
    """``work()`` in a daemon thread: a server stopping mid-write does not wait for it.

    A write cut short leaves only its temporary file, which the next writer
    removes; the executor's threads, by contrast, are joined at exit, and a
    persist at 100M entries takes a minute.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()

    def settle(result: bool | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(bool(result))

    def run() -> None:
        try:
            result, error = work(), None
        except Exception as e:  # noqa: BLE001 - handed to the awaiting task
            result, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await done


async def _verify_base(service: MatchService) -> str | None:
    """Check the mapped base's block checksums once; drop it and reload if one fails."""
    pdq = service.pdq
    problem = await asyncio.get_running_loop().run_in_executor(None, pdq.verify)
    if problem is None:
        log.info("PDQ index file checked: every block matches its checksum")
        return None
    pdq.drop_base(problem)
    service.invalidate()
    await _refresh(service)
    return problem


async def verify_index_files(db: Database, leaves: LeafHashIndex) -> list[str]:
    """Check the block checksums of every index file this process maps (the scrub's pass end).

    A damaged PDQ base is dropped and its rows read again from the table (a
    new base is written later); a damaged leaf-hash file is forgotten, so
    the next question about its log rebuilds it. Returns the problems found.
    """
    problems = []
    service = match_service(db)
    if service.pdq.segment is not None:
        problem = await _verify_base(service)
        if problem is not None:
            problems.append(problem)
    found = await asyncio.get_running_loop().run_in_executor(None, leaves.verify_and_drop)
    return problems + found


async def _refresh(service: MatchService) -> int:
    # A busy database only delays the index: the next announcement, or the
    # next request with PDQ queries, loads what was missed.
    try:
        return await service.ensure_current()
    except StorageError as e:
        log.warning("PDQ index not updated: %s", e)
        return 0


def match_document(
    ledger: Ledger, body: bytes, pdq: LivePdqIndex | None, exact: ActiveKeyIndex | None = None
) -> tuple[bytes, Counter[str], Counter[str]]:
    """Answer a match request body: the response document, queries and hits by signal type.

    The whole of a request's CPU work, from its bytes to the response's, in
    the calling thread or worker process.

    Raises:
        MalformedError: if the request as a whole is malformed (the field is named).
    """
    parsed = parse_match_request(body)
    results = match(
        ledger,
        parsed.queries,
        pdq=pdq,
        max_distance=parsed.max_distance,
        receipts=parsed.receipts,
        exact=exact,
    )
    # Counted in C (Counter over a generator): the access log and metrics
    # cost no Python loop of their own per hash.
    queries = parsed.queries
    looked_up = (
        Counter(queries.types)
        if isinstance(queries, QueryColumns)
        else Counter(query.signal_type for _position, query in queries)
    )
    hit = Counter(result.query.signal_type for result in results if result.hits)
    return render_results(parsed, results).to_json(), looked_up, hit


MATCH_JOB = "node.api.match:match_job"
"""The worker-process job (:mod:`node.api.workers`) answering a match request."""

_EXACT_STATE = "node.api.match:exact"


def match_job(
    context: WorkerContext, body: bytes, args: Mapping[str, Any]
) -> tuple[bytes, dict[str, Any]]:
    """:func:`match_document` in a worker process.

    ``args["pdq"]``: the body may hold PDQ queries. The worker then opens the
    node's PDQ index read-only once (:func:`worker_pdq_index`: the persisted
    base file mapped, shared with the server and the other workers through
    the page cache) and brings it up to date before each such request (a
    changed base file re-mapped, rows committed since read), or raises
    :class:`~node.errors.IndexPendingError` (503) while it waits for the
    server's file.
    Exact queries go through the node's ``active`` key file
    (:class:`~node.ledger.active_index.ActiveKeyIndex`, mapped on first use,
    re-mapped when replaced), or SQLite where it does not cover a log.
    """
    pdq = worker_pdq_index(context, args) if args.get("pdq") else None
    exact = worker_exact_index(context)
    document, looked_up, hit = match_document(context.ledger, body, pdq, exact)
    return document, {"looked_up": dict(looked_up), "hit": dict(hit)}


def worker_exact_index(context: WorkerContext) -> ActiveKeyIndex:
    """The worker process's ``active`` key file index, made on first use.

    One per worker, shared by every job that looks hashes up exactly
    (``/v1/match``, the console's look-up): the file is mapped once and each
    process reads the entries beyond it once.
    """
    exact: ActiveKeyIndex | None = context.state.get(_EXACT_STATE)
    if exact is None:
        exact = context.state[_EXACT_STATE] = ActiveKeyIndex(active_index_path(context.node_dir))
    return exact


WAIT_FOR_FILE = "wait_for_file"
"""A job's argument: the server writes the PDQ index file (:func:`worker_pdq_index`)."""


def worker_pdq_index(context: WorkerContext, args: Mapping[str, Any]) -> LivePdqIndex:
    """The worker process's PDQ index, made on first use and brought up to date.

    One per worker, shared by every job that near-matches (``/v1/match``,
    the console's look-up). When the job's ``args`` say the server writes
    the index file (:data:`WAIT_FOR_FILE`, from :func:`job_args`), a worker
    reads at most ``[match] worker_read_max`` rows beyond the file itself;
    with more, it waits for the server's new file.

    Raises:
        IndexPendingError: the worker waits for the server's file (503).
    """
    pdq: LivePdqIndex | None = context.state.get(MATCH_JOB)
    if pdq is None:
        pdq = context.state[MATCH_JOB] = node_pdq_index(context.ledger)
    pdq.read_max = context.ledger.config.match.worker_read_max if args.get(WAIT_FOR_FILE) else None
    pdq.refresh(context.ledger)
    return pdq


def job_args(db: Database, *, pdq: bool) -> dict[str, Any]:
    """The arguments of a matching job sent to the workers from this process."""
    return {"pdq": pdq, WAIT_FOR_FILE: match_service(db).writable}


def _may_hold_pdq(body: bytes) -> bool:
    # A byte search, much cheaper than a parse of its own; an escaped key
    # could spell "pdq" without these bytes.
    return b"pdq" in body or b"\\u" in body


async def match_endpoint(request: web.Request) -> web.Response:
    """``POST /v1/match``: exact and PDQ matching of up to 10,000 hashes."""
    if request.query:
        key = next(iter(request.query))
        raise MalformedError("no query parameters are accepted; send a JSON body", field=key)
    body = await request.read()
    db = request.app[DB_KEY]
    pool = request.app.get(POOL_KEY)
    service = match_service(db)
    may_hold_pdq = _may_hold_pdq(body)

    def run(ledger: Ledger) -> tuple[bytes, Counter[str], Counter[str]]:
        return match_document(ledger, body, service.pdq, service.exact_index(ledger))

    async def here() -> tuple[bytes, Counter[str], Counter[str]]:
        if may_hold_pdq:
            service.refuse_while_loading()
        # The heavy lane bounds how many run at once (503 beyond its queue).
        async with request.app[LANE_KEY].slot():
            if may_hold_pdq:
                await service.ensure_current()
            return await db.read(run)

    if pool is None:
        document, looked_up, hit = await here()
    else:
        try:
            # Parsing, matching and serialising run in a worker process: the
            # server's event loop only moves the bytes (issue 14, issue 18).
            document, facts = await pool.run(MATCH_JOB, body, job_args(db, pdq=may_hold_pdq))
        except IndexPendingError:
            if not service.answers_pdq_itself():
                raise
            document, looked_up, hit = await here()
        else:
            looked_up, hit = Counter(facts["looked_up"]), Counter(facts["hit"])
    facts_ = request_facts(request)
    facts_.hashes, facts_.hits = looked_up.total(), hit.total()
    counter = request.app[METRICS_KEY].match_hashes
    for signal_type, n in looked_up.items():
        counter.labels(signal_type, "hit").inc(hit[signal_type])
        counter.labels(signal_type, "miss").inc(n - hit[signal_type])
    return web.Response(body=document, content_type="application/json")
