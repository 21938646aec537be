"""Handlers of the read endpoints: parse the query strictly, read, serialise.

Layer: node.api. Every database access goes through
:meth:`~node.ledger.database.Database.read`, which runs it in a reader
thread; the response body is built in that thread too, so a full page never
stalls the event loop.

Authorisation is not done here: the middleware in :mod:`node.api.app` has
already checked the caller's role for the route before a handler runs.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Mapping
from typing import TypeVar

from aiohttp import web

from node.api.state import DB_KEY, LANE_KEY, LEAVES_KEY, LIMITS_KEY, ORIGIN_KEY
from node.errors import EntryNotFoundError, UnknownLogError
from node.ledger.service import Ledger
from node.storage.ledger_store import CheckpointRecord, LogRecord
from protocol.api_documents import (
    EntriesPage,
    ErrorBody,
    EvidenceList,
    Health,
    LeafHashesPage,
    LogList,
    RemoteLog,
)
from protocol.encoding import decode_hex, parse_decimal
from protocol.errors import MalformedError
from protocol.evidence import ForkEvidence
from protocol.hashing import HASH_SIZE
from protocol.tiles import EntryBundleId
from protocol.wire import (
    ENTRY_BUNDLE_MEDIA_TYPE,
    ConsistencyProof,
    InclusionProof,
    encode_entry_bundle,
)

T = TypeVar("T")

__all__ = [
    "MAX_ORIGIN_PARAM",
    "VERSION",
    "checkpoint",
    "consistency_proof",
    "entries",
    "entry_bundle",
    "error_response",
    "evidence",
    "health",
    "heavy_read",
    "inclusion_proof",
    "leaf_hashes",
    "logs",
    "raw_target_path",
]

MAX_ORIGIN_PARAM = 255

try:
    VERSION = importlib.metadata.version("hashmesh")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    VERSION = "0+unknown"

JSON = "application/json"


def error_response(
    status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """An error answer: :class:`~protocol.api_documents.ErrorBody` as JSON (docs/api.md)."""
    return web.Response(
        status=status,
        body=ErrorBody(error=message, field=field).to_json(),
        content_type=JSON,
        headers=headers,
    )


def raw_target_path(request: web.Request) -> str:
    """The request target's path exactly as sent: not percent-decoded, no dot segments folded.

    Tile paths are checked by the strict parser
    (:func:`protocol.tiles.parse_tile_path`), which must see what the client
    sent: ``request.path`` would turn ``%30`` into ``0`` and accept a
    non-canonical spelling.
    """
    return request.raw_path.partition("?")[0]


def _params(
    request: web.Request, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, str]:
    """The query as a dict, refusing unknown, repeated and missing parameters."""
    query = request.query
    allowed = set(required) | set(optional)
    values: dict[str, str] = {}
    for key in query:
        if key not in allowed:
            expected = ", ".join(sorted(allowed)) or "none"
            raise MalformedError(f"unknown query parameter (expected: {expected})", field=key)
        if len(query.getall(key)) > 1:
            raise MalformedError("query parameter given more than once", field=key)
        values[key] = query[key]
    for key in required:
        if key not in values:
            raise MalformedError("missing query parameter", field=key)
    return values


def _origin(params: Mapping[str, str]) -> str:
    origin = params["origin"]
    if not origin or len(origin) > MAX_ORIGIN_PARAM:
        raise MalformedError(
            f"expected a log origin of 1 to {MAX_ORIGIN_PARAM} characters", field="origin"
        )
    return origin


def _optional_decimal(params: Mapping[str, str], key: str) -> int | None:
    text = params.get(key)
    return None if text is None else parse_decimal(text, field=key)


def _latest(ledger: Ledger, origin: str) -> tuple[LogRecord, CheckpointRecord]:
    log = ledger.log_for(origin)
    record = ledger.stored_checkpoint(log)
    if record is None:
        # A followed log before its first replication: nothing signed to serve.
        raise UnknownLogError(f"log {origin!r} has no checkpoint here yet")
    return log, record


def _page_bounds(size: int, start: int, end: int | None, max_page: int) -> int:
    if start > size:
        raise MalformedError(f"start {start} is beyond the tree size {size}", field="start")
    stop = size if end is None else min(end, size)
    return min(stop, start + max_page)


async def heavy_read(request: web.Request, fn: Callable[[Ledger], T]) -> T:
    """Run ``fn`` in a reader thread once the heavy lane has a worker free.

    Raises:
        web.HTTPServiceUnavailable: (503, ``Retry-After``) if the lane's queue is full.
    """
    async with request.app[LANE_KEY].slot():
        return await request.app[DB_KEY].read(fn)


async def health(request: web.Request) -> web.Response:
    """``GET /v1/health``: liveness and the node's origin."""
    _params(request, ())
    doc = Health(status="ok", origin=request.app[ORIGIN_KEY], version=VERSION)
    return web.Response(body=doc.to_json(), content_type=JSON)


async def logs(request: web.Request) -> web.Response:
    """``GET /v1/logs``: every log held, with its latest signed checkpoint."""
    _params(request, ())

    def read(ledger: Ledger) -> bytes:
        frozen = ledger.peers.frozen_origins()
        items = []
        for log in ledger.logs():
            record = ledger.stored_checkpoint(log)
            if record is None:
                continue
            items.append(
                RemoteLog(
                    origin=log.origin,
                    vkey=log.verifier_key,
                    size=record.size,
                    checkpoint=ledger.served_note(log, record),
                    frozen=log.origin in frozen,
                )
            )
        return LogList(logs=tuple(items)).to_json()

    body = await request.app[DB_KEY].read(read)
    return web.Response(body=body, content_type=JSON)


async def checkpoint(request: web.Request) -> web.Response:
    """``GET /v1/checkpoint?origin=O``: the latest signed note, as text."""
    origin = _origin(_params(request, ("origin",)))

    def read(ledger: Ledger) -> str:
        log, record = _latest(ledger, origin)
        # The witness cosignatures held for it travel with it (node.ledger.witness).
        return ledger.served_note(log, record)

    note = await request.app[DB_KEY].read(read)
    return web.Response(text=note, content_type="text/plain", charset="utf-8")


def _accepts(request: web.Request, media_type: str) -> bool:
    """Whether the request's ``Accept`` header names ``media_type`` (any parameters)."""
    return any(
        part.split(";", 1)[0].strip().lower() == media_type
        for part in request.headers.get("Accept", "").split(",")
    )


def _page_params(request: web.Request) -> tuple[str, int, int | None]:
    params = _params(request, ("origin", "start"), ("end",))
    origin = _origin(params)
    start = parse_decimal(params["start"], field="start")
    end = _optional_decimal(params, "end")
    if end is not None and end < start:
        raise MalformedError(f"end {end} is less than start {start}", field="end")
    return origin, start, end


async def entries(request: web.Request) -> web.Response:
    """``GET /v1/entries?origin=O&start=S[&end=E]``: exact entry bytes.

    JSON with base64 entries by default; an entry bundle
    (:data:`~protocol.wire.ENTRY_BUNDLE_MEDIA_TYPE`) when the request's
    ``Accept`` names that type, as the sync engine's does.
    """
    origin, start, end = _page_params(request)
    max_page = request.app[LIMITS_KEY].max_page
    bundle = _accepts(request, ENTRY_BUNDLE_MEDIA_TYPE)

    def read(ledger: Ledger) -> bytes:
        log, record = _latest(ledger, origin)
        stop = _page_bounds(record.size, start, end, max_page)
        rows = ledger.entries(log, start, stop)
        if bundle:
            return encode_entry_bundle(bytes(data) for _idx, data, _leaf in rows)
        datas = tuple(bytes(data) for _idx, data, _leaf in rows)
        return EntriesPage(origin=origin, start=start, entries=datas).to_json()

    body = await heavy_read(request, read)
    return web.Response(body=body, content_type=ENTRY_BUNDLE_MEDIA_TYPE if bundle else JSON)


_BUNDLE_PREFIX = "/v1/"


async def entry_bundle(request: web.Request) -> web.Response:
    """``GET /v1/tile/entries/<N>[.p/<W>]?origin=O``: a C2SP tlog-tiles entry bundle.

    The entries ``[N*256, N*256+W)`` as an entry bundle
    (:func:`~protocol.wire.encode_entry_bundle`), whose leaf hashes are the
    level-0 hash tile of the same path. Only the canonical path is accepted
    (400 naming the field); a bundle past the latest checkpoint's tree is 404.
    """
    origin = _origin(_params(request, ("origin",)))
    raw = raw_target_path(request)
    if not raw.startswith(_BUNDLE_PREFIX):  # pragma: no cover - the router matched /v1/...
        raise MalformedError("does not start with '/v1/'", field="path")
    bundle = EntryBundleId.from_path(raw.removeprefix(_BUNDLE_PREFIX))

    def read(ledger: Ledger) -> bytes:
        log, record = _latest(ledger, origin)
        if not bundle.tile.is_within(record.size):
            raise EntryNotFoundError(
                f"{bundle.to_path()} lies beyond the tree size {record.size} of {origin}",
                field="bundle",
            )
        datas = [bytes(data) for _idx, data, _leaf in ledger.entries(log, bundle.start, bundle.end)]
        if len(datas) != bundle.width:
            raise EntryNotFoundError(
                f"{bundle.to_path()}: {len(datas)} of {bundle.width} entries held",
                field="bundle",
            )
        return encode_entry_bundle(datas)

    body = await heavy_read(request, read)
    return web.Response(body=body, content_type=ENTRY_BUNDLE_MEDIA_TYPE)


async def leaf_hashes(request: web.Request) -> web.Response:
    """``GET /v1/leaf-hashes?origin=O&start=S[&end=E]``: RFC 6962 leaf hashes, hex."""
    origin, start, end = _page_params(request)
    max_page = request.app[LIMITS_KEY].max_page

    def read(ledger: Ledger) -> bytes:
        log, record = _latest(ledger, origin)
        stop = _page_bounds(record.size, start, end, max_page)
        hashes = tuple(bytes(leaf) for _idx, _data, leaf in ledger.entries(log, start, stop))
        return LeafHashesPage(origin=origin, start=start, leaf_hashes=hashes).to_json()

    body = await heavy_read(request, read)
    return web.Response(body=body, content_type=JSON)


async def inclusion_proof(request: web.Request) -> web.Response:
    """``GET /v1/proof/inclusion?origin=O&(index=I|leaf_hash=H)[&size=N]``."""
    params = _params(request, ("origin",), ("index", "leaf_hash", "size"))
    origin = _origin(params)
    if ("index" in params) == ("leaf_hash" in params):
        raise MalformedError("give exactly one of index and leaf_hash", field="index")
    index = parse_decimal(params["index"], field="index") if "index" in params else None
    leaf_hash = (
        decode_hex(params["leaf_hash"], field="leaf_hash", length=HASH_SIZE)
        if "leaf_hash" in params
        else None
    )
    size = _optional_decimal(params, "size")
    leaves = request.app[LEAVES_KEY]

    def read(ledger: Ledger) -> bytes:
        _latest(ledger, origin)  # 404 for a log we do not hold or have not signed
        # Both check size <= latest and index < size, naming the field.
        if leaf_hash is not None:
            proof = ledger.prove_inclusion_of_leaf(leaf_hash, leaves, size, origin=origin)
            if proof is None:
                below = "in the latest tree" if size is None else f"below size {size}"
                raise EntryNotFoundError(
                    f"no entry of {origin} {below} has this leaf hash", field="leaf_hash"
                )
        else:
            assert index is not None
            proof = ledger.prove_inclusion(index, size, origin=origin)
        assert proof.index is not None
        assert proof.leaf_hash is not None
        return InclusionProof(
            index=proof.index, size=proof.size, leaf_hash=proof.leaf_hash, hashes=proof.hashes
        ).to_json()

    body = await heavy_read(request, read)
    return web.Response(body=body, content_type=JSON)


async def consistency_proof(request: web.Request) -> web.Response:
    """``GET /v1/proof/consistency?origin=O&old=M[&new=N]``."""
    params = _params(request, ("origin", "old"), ("new",))
    origin = _origin(params)
    old = parse_decimal(params["old"], field="old")
    new = _optional_decimal(params, "new")
    if new is not None and old > new:
        raise MalformedError(f"old {old} is greater than new {new}", field="old")

    def read(ledger: Ledger) -> bytes:
        _log, record = _latest(ledger, origin)
        new_size = record.size if new is None else new
        if new_size > record.size:
            raise MalformedError(
                f"new {new_size} is beyond the latest checkpoint size {record.size}",
                field="new",
            )
        if old > new_size:
            raise MalformedError(f"old {old} is greater than new {new_size}", field="old")
        proof = ledger.prove_consistency(old, new_size, origin=origin)
        return ConsistencyProof(old_size=old, new_size=new_size, hashes=proof.hashes).to_json()

    body = await request.app[DB_KEY].read(read)
    return web.Response(body=body, content_type=JSON)


async def evidence(request: web.Request) -> web.Response:
    """``GET /v1/evidence``: every fork evidence this node holds."""
    _params(request, ())

    def read(ledger: Ledger) -> bytes:
        items = tuple(
            ForkEvidence.from_json(record.evidence_json) for record in ledger.peers.list_evidence()
        )
        return EvidenceList(evidence=items).to_json()

    body = await request.app[DB_KEY].read(read)
    return web.Response(body=body, content_type=JSON)
