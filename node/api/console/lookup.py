"""The Look up page: pasted hashes, uploaded hash lists and image files, matched here.

Layer: node.api. Reads the upload into memory with a cap per part and in
all, hashes files in a worker thread (:func:`node.ledger.filehash.hash_bytes`:
MD5, SHA-1, SHA-256, and PDQ for images) and forgets them: nothing uploaded
is written anywhere, and no image is ever sent back. Values are normalised as
``hashmesh match`` normalises them (:class:`node.ledger.lookup.HashInputs`)
and matched by :func:`node.ledger.matching.match` in ``serve``'s match
worker processes (:mod:`node.api.workers`, :func:`lookup_job`), as ``POST
/v1/match`` is, so a look-up of 50,000 hashes at 10M entries does not hold
the server's GIL; with ``workers = 0`` (or no pool, as in a console built
alone) in the database's reader threads. Either way exact values take
``/v1/match``'s path: the mapped ``active`` key file
(:class:`~node.ledger.active_index.ActiveKeyIndex`, ``index/active.seg``),
SQLite only for what it does not cover; the results are those of SQLite's
seeks (tests/console/test_lookup_exact.py).

Bad input is answered on the page, naming what was wrong: a paste or file
over its cap, a binary file given as a hash list, an image that does not
decode, a value of the wrong length, too many hashes.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from node.api.console.render import (
    CONSOLE_DB_KEY,
    CONSOLE_SETTINGS_KEY,
    ConsoleInputError,
    Page,
    check_csrf,
    render,
)
from node.api.match import job_args, match_service, worker_exact_index, worker_pdq_index
from node.api.workers import WorkerContext, WorkerPool
from node.errors import IndexPendingError, NodeError
from node.ledger.database import Database
from node.ledger.filehash import hash_bytes, pdq_support
from node.ledger.lookup import HashInputs, decode_hash_list
from node.ledger.matching import (
    DEFAULT_MAX_DISTANCE,
    MAX_DISTANCE_CAP,
    ItemResult,
    MatchQuery,
    match,
)
from node.ledger.service import Ledger
from protocol.signal import SIGNAL_TYPES

__all__ = [
    "LOOKUP_JOB",
    "MAX_FILES",
    "MAX_FILE_BYTES",
    "MAX_HASHES",
    "MAX_PASTE_BYTES",
    "MAX_REQUEST_BYTES",
    "lookup",
    "lookup_job",
]

MAX_PASTE_BYTES = 8 * 1024 * 1024
"""Largest paste or hash list: 50,000 hashes of any type fit with room."""
MAX_FILE_BYTES = 32 * 1024 * 1024
"""Largest image file hashed."""
MAX_FILES = 50
"""Most files in one look-up."""
MAX_REQUEST_BYTES = 128 * 1024 * 1024
"""Largest form read at all; a larger one is refused before it is read."""
MAX_HASHES = 50_000
"""Most hashes matched in one look-up (five match batches)."""
LOOKUP_CHUNK = 2_500
"""Hashes matched per reader-thread call; a look-up's chunks run at once."""
WORKER_CHUNK = 10_000
"""Hashes matched per worker-process job (as many as one ``/v1/match``): at
most five jobs a look-up, well within the pool's queue."""
LOOKUP_JOB = "node.api.console.lookup:lookup_job"
"""The worker-process job (:mod:`node.api.workers`) matching a chunk of a look-up."""
MAX_INVALID_SHOWN = 200
"""Invalid values listed on the page (all are counted)."""

_CHUNK = 256 * 1024
_MB = 1024 * 1024


@dataclass
class _Form:
    """The look-up form as read, within its caps."""

    csrf: str | None = None
    paste: str = ""
    signal_type: str | None = None
    max_distance: int = DEFAULT_MAX_DISTANCE
    lists: list[tuple[str, bytes]] = field(default_factory=list)
    files: list[tuple[str, bytes]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _size(n: int) -> str:
    return f"{n / _MB:.1f} MB" if n >= _MB else f"{n:,} bytes"


async def _read_part(part: BodyPartReader, cap: int, what: str, form: _Form) -> bytes | None:
    """The part's bytes, or None (and a problem noted) when it exceeds ``cap``; drains it."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(_CHUNK):
        size += len(chunk)
        if size <= cap:
            chunks.append(chunk)
        else:
            chunks.clear()
    if size > cap:
        form.problems.append(
            f"{what} is {_size(size)}; at most {_size(cap)} is read - nothing of it was used"
        )
        return None
    return b"".join(chunks)


def _text_field(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConsoleInputError(
            f"the {name} field is not UTF-8 text (byte {e.start})", field=name
        ) from e


async def _read_multipart(request: web.Request) -> _Form:
    length = request.content_length
    if length is not None and length > MAX_REQUEST_BYTES:
        raise ConsoleInputError(
            f"the form is {_size(length)}; at most {_size(MAX_REQUEST_BYTES)} is accepted",
            status=413,
        )
    form = _Form()
    reader = await request.multipart()
    total = 0
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise ConsoleInputError("nested multipart forms are not accepted")
        name = part.name or ""
        filename = part.filename
        if name == "hashes":
            raw = await _read_part(part, MAX_PASTE_BYTES, "the pasted text", form)
            if raw is not None:
                form.paste = _text_field(raw, "hashes")
                total += len(raw)
        elif name in ("list", "files") and filename is not None:
            if not filename:
                await part.release()  # an empty file input
                continue
            if len(form.lists) + len(form.files) >= MAX_FILES:
                await part.release()
                form.problems.append(f"{filename}: more than {MAX_FILES} files; left out")
                continue
            cap = MAX_PASTE_BYTES if name == "list" else MAX_FILE_BYTES
            raw = await _read_part(part, cap, filename, form)
            if raw is None:
                continue
            total += len(raw)
            (form.lists if name == "list" else form.files).append((filename, raw))
        elif name in ("csrf", "type", "max_distance"):
            raw = await _read_part(part, 4096, f"the {name} field", form)
            value = _text_field(raw or b"", name).strip()
            if name == "csrf":
                form.csrf = value
            elif name == "type":
                form.signal_type = _signal_type(value)
            else:
                form.max_distance = _distance(value)
        else:
            await part.release()
            raise ConsoleInputError(f"unknown form field {name!r}", field=name)
        if total > MAX_REQUEST_BYTES:
            raise ConsoleInputError("the form is too large", status=413)
    return form


def _signal_type(value: str) -> str | None:
    if value in ("", "auto"):
        return None
    if value not in SIGNAL_TYPES:
        raise ConsoleInputError(
            f"type must be auto or one of {', '.join(sorted(SIGNAL_TYPES))}, got {value!r}",
            field="type",
        )
    return value


def _distance(value: str) -> int:
    if value == "":
        return DEFAULT_MAX_DISTANCE
    if not value.isdigit() or int(value) > MAX_DISTANCE_CAP:
        raise ConsoleInputError(
            f"PDQ distance must be a whole number from 0 to {MAX_DISTANCE_CAP}, got {value!r}",
            field="max_distance",
        )
    return int(value)


async def _read_form(request: web.Request) -> _Form:
    if request.content_type == "multipart/form-data":
        form = await _read_multipart(request)
        check_csrf(request, form.csrf)
        return form
    # urlencoded (checked for CSRF by the guard): a paste only.
    posted = await request.post()
    form = _Form()
    for key in posted:
        if key not in ("csrf", "hashes", "type", "max_distance"):
            raise ConsoleInputError(f"unknown form field {key!r}", field=key)
    paste = posted.get("hashes", "")
    form.paste = paste if isinstance(paste, str) else ""
    kind = posted.get("type", "")
    form.signal_type = _signal_type(kind.strip() if isinstance(kind, str) else "")
    distance = posted.get("max_distance", "")
    form.max_distance = _distance(distance.strip() if isinstance(distance, str) else "")
    return form


async def _gather(form: _Form) -> HashInputs:
    inputs = HashInputs()
    if form.paste.strip():
        # Browsers send a textarea's lines with CRLF (HTML's form encoding):
        # not the analyst's doing, so not reported as a normalisation.
        inputs.add_lines(form.paste.replace("\r\n", "\n"), form.signal_type, source="pasted")
    for name, raw in form.lists:
        try:
            text = decode_hash_list(raw, name, inputs.notes)
        except NodeError as e:
            form.problems.append(str(e))
            continue
        inputs.add_lines(text, form.signal_type, source=name)
    if form.files:
        missing = pdq_support()
        if missing is not None:
            form.problems.append(f"{missing}; files are matched by MD5, SHA-1 and SHA-256 only")
        for name, raw in form.files:
            # PDQ and three digests of up to 32 MB: off the event loop.
            hashes = await asyncio.to_thread(hash_bytes, raw, name, pdq=missing is None)
            inputs.add_file(hashes, f"file {name}")
            if hashes.pdq is None and missing is None:
                form.problems.append(
                    f"{name}: no PDQ hash ({hashes.pdq_skipped}); matched by its digests only"
                )
            elif hashes.low_quality:
                form.problems.append(
                    f"{name}: PDQ quality {hashes.pdq_quality} is below 50; "
                    "near matches are unreliable"
                )
    return inputs


def _found_rows(results: list[ItemResult]) -> list[dict[str, Any]]:
    """What the page shows of each result: position, hidden hits and the hits (JSON-ready)."""
    return [
        {
            "position": r.position,
            "hidden": r.hidden,
            "hits": [hit.to_json_obj() for hit in r.hits],
        }
        for r in results
    ]


def lookup_job(
    context: WorkerContext, body: bytes, args: Mapping[str, Any]
) -> tuple[bytes, dict[str, Any]]:
    """Match one chunk of a look-up in a worker process.

    ``body`` is JSON: ``start`` (the chunk's first position), ``queries``
    (``[signal type, value]`` pairs, already normalised by the server) and
    ``max_distance``; the document is the JSON list of :func:`_found_rows`.
    The worker's PDQ and ``active`` key file indexes are those ``/v1/match``
    uses (:func:`~node.api.match.worker_pdq_index`,
    :func:`~node.api.match.worker_exact_index`).
    """
    request = json.loads(body)
    queries = [MatchQuery.parse(t, v) for t, v in request["queries"]]
    has_pdq = any(q.signal_type == "pdq" for q in queries)
    pdq = worker_pdq_index(context, args) if has_pdq else None
    results = match(
        context.ledger,
        list(enumerate(queries, start=request["start"])),
        pdq=pdq,
        max_distance=request["max_distance"],
        exact=worker_exact_index(context),
    )
    return json.dumps(_found_rows(results)).encode("utf-8"), {}


async def _match_all(
    request: web.Request, inputs: HashInputs, max_distance: int
) -> list[dict[str, Any]]:
    pool = request.app[CONSOLE_SETTINGS_KEY].pool
    db = request.app[CONSOLE_DB_KEY]
    if pool is None:
        return await _match_here(db, inputs, max_distance)
    try:
        return await _match_in_workers(pool, db, inputs, max_distance)
    except IndexPendingError:
        # A worker waits for the PDQ index file the server is writing; the
        # server has the whole index loaded (or this is the same 503).
        if not match_service(db).answers_pdq_itself():
            raise
        return await _match_here(db, inputs, max_distance)


async def _match_in_workers(
    pool: WorkerPool, db: Database, inputs: HashInputs, max_distance: int
) -> list[dict[str, Any]]:
    pairs = [(q.signal_type, q.value) for q in inputs.queries]
    bodies = [
        json.dumps(
            {
                "start": start,
                "queries": pairs[start : start + WORKER_CHUNK],
                "max_distance": max_distance,
            }
        ).encode("utf-8")
        for start in range(0, len(pairs), WORKER_CHUNK)
    ]
    # The pool's lane bounds them like /v1/match requests (503 when full).
    args = job_args(db, pdq=any(t == "pdq" for t, _v in pairs))
    answers = await asyncio.gather(*(pool.run(LOOKUP_JOB, body, args) for body in bodies))
    return [row for document, _facts in answers for row in json.loads(document)]


async def _match_here(db: Database, inputs: HashInputs, max_distance: int) -> list[dict[str, Any]]:
    service = match_service(db)
    queries = [MatchQuery.parse(q.signal_type, q.value) for q in inputs.queries]
    if any(q.signal_type == "pdq" for q in queries):
        service.refuse_while_loading()
        await service.ensure_current()
    pdq = service.pdq

    def run(ledger: Ledger, batch: list[tuple[int, MatchQuery]]) -> list[dict[str, Any]]:
        # Exact values through the mapped key file, as /v1/match looks them up.
        exact = service.exact_index(ledger)
        return _found_rows(match(ledger, batch, pdq=pdq, max_distance=max_distance, exact=exact))

    # Chunks in the reader threads at once: SQLite's seeks run in parallel
    # (10,000 hashes: 1.36 s -> 1.05 s on the loaded 2-core machine, in-process
    # A/B against one batch; docs/benchmarks.md). Positions stay global.
    chunks = [
        list(enumerate(queries[start : start + LOOKUP_CHUNK], start=start))
        for start in range(0, len(queries), LOOKUP_CHUNK)
    ]
    parts = await asyncio.gather(
        *(db.read(functools.partial(run, batch=chunk)) for chunk in chunks)
    )
    return [row for part in parts for row in part]


def _results_doc(form: _Form, inputs: HashInputs, found: list[dict[str, Any]]) -> dict[str, Any]:
    matches: list[dict[str, Any]] = []
    for row in found:
        source = inputs.queries[row["position"]]
        matches.append(
            {
                "source": source.source,
                "type": source.signal_type,
                "value": source.value,
                # a value of no stated type looked up as each type it fits
                "tried_as": list(source.tried_as),
                "hidden": row["hidden"],
                "hits": row["hits"],
            }
        )
    return {
        "checked": len(inputs.queries),
        "matched": sum(1 for m in matches if m["hits"]),
        "hit_count": sum(len(m["hits"]) for m in matches),
        "max_distance": form.max_distance,
        "matches": matches,
        "invalid": inputs.invalid[:MAX_INVALID_SHOWN],
        "invalid_count": len(inputs.invalid),
        "normalised": dict(sorted(inputs.notes.items())),
        "problems": form.problems,
        "files": [h.to_json_obj() for h in inputs.files],
    }


def _form_view() -> dict[str, Any]:
    return {
        "types": sorted(SIGNAL_TYPES),
        "default_distance": DEFAULT_MAX_DISTANCE,
        "max_distance_cap": MAX_DISTANCE_CAP,
        "max_hashes": MAX_HASHES,
        "max_paste_mb": MAX_PASTE_BYTES // _MB,
        "max_file_mb": MAX_FILE_BYTES // _MB,
    }


async def lookup(request: web.Request) -> web.StreamResponse:
    """GET: the form. POST: match what was pasted or uploaded and show the hits."""
    if request.method == "GET":
        return render(request, Page("lookup.html", "Look up", {"results": None}, _form_view()))
    form = await _read_form(request)
    inputs = await _gather(form)
    if len(inputs.queries) > MAX_HASHES:
        raise ConsoleInputError(
            f"{len(inputs.queries):,} hashes given; at most {MAX_HASHES:,} per look-up: "
            "split the list",
            status=413,
        )
    if not inputs.queries and not inputs.invalid and not form.problems:
        raise ConsoleInputError("nothing to look up: paste hashes or choose a file", field="hashes")
    results = await _match_all(request, inputs, form.max_distance) if inputs.queries else []
    doc = _results_doc(form, inputs, results)
    return render(request, Page("lookup.html", "Look up", {"results": doc}, _form_view()))
