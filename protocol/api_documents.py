"""The JSON documents of the node's HTTP API, shared by the server and its clients.

Layer: protocol (pure). This module performs no I/O.

Each endpoint's request or response body is one frozen dataclass here:
the server (``node.api``) builds its answers from them and the clients
(``node.sync``, ``node.audit``, ``hashmesh match --remote``) parse answers
with them, so the two sides cannot drift apart. ``to_json()`` gives the
canonical bytes (sorted keys, no whitespace; docs/api.md); ``from_json()``
parses strictly: unknown, missing or wrongly typed fields, non-canonical
hex or base64 and out-of-order pages are :class:`~protocol.errors.MalformedError`
naming the field (``logs[2].size``). The proof documents and the entry
bundle are :mod:`protocol.wire`'s; fork evidence is
:class:`protocol.evidence.ForkEvidence`.

=================================  =====================================
endpoint                           document
=================================  =====================================
any error answer                   :class:`ErrorBody`
``GET /v1/health``                 :class:`Health`
``GET /v1/logs``                   :class:`LogList` of :class:`RemoteLog`
``GET /v1/checkpoints``            :class:`CheckpointList`
``GET /v1/rotations``              :class:`RotationList`
``GET /v1/entries`` (JSON form)    :class:`EntriesPage`
``GET /v1/leaf-hashes``            :class:`LeafHashesPage`
``GET /v1/evidence``               :class:`EvidenceList`
``GET /v1/events`` (event data)    :class:`CheckpointEvent`
``POST /v1/match``                 :class:`MatchRequestBody`, :class:`MatchResponseBody`
``POST /v1/peer-card``             the caller's signed card (text), :class:`PeerCardAnswer`
=================================  =====================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from protocol.checkpoint import CheckpointNote
from protocol.encoding import (
    decode_b64,
    dumps_canonical,
    encode_b64,
    json_hashes,
    json_object,
    json_text,
    json_uint,
    loads_strict,
)
from protocol.errors import MalformedError
from protocol.evidence import ForkEvidence
from protocol.hashing import HASH_SIZE
from protocol.wire import MAX_PROOF_HASHES

__all__ = [
    "MAX_PAGE_ENTRIES",
    "CheckpointEvent",
    "CheckpointList",
    "EntriesPage",
    "ErrorBody",
    "EvidenceList",
    "Health",
    "LeafHashesPage",
    "LogList",
    "MatchFound",
    "MatchItemError",
    "MatchItemWarning",
    "MatchRequestBody",
    "MatchResponseBody",
    "PeerCardAnswer",
    "RemoteLog",
    "RotationList",
    "ServedCheckpoint",
    "ServedRotation",
    "SignalQuery",
]

MAX_PAGE_ENTRIES = 10_000
"""Most entries or leaf hashes in one page (the server's hard cap)."""

_T = TypeVar("_T")


def _items(
    obj: Mapping[str, Any], key: str, parse: Callable[[Any], _T], *, max_count: int | None = None
) -> tuple[_T, ...]:
    """Field ``key``: a list, each item parsed by ``parse``; errors name ``key[i].field``."""
    value = obj.get(key)
    if not isinstance(value, list):
        raise MalformedError("expected a list", field=key)
    if max_count is not None and len(value) > max_count:
        raise MalformedError(f"{len(value)} items exceed the maximum {max_count}", field=key)
    out: list[_T] = []
    for i, item in enumerate(value):
        try:
            out.append(parse(item))
        except MalformedError as e:
            where = f"{key}[{i}]"
            raise MalformedError(e.reason, field=f"{where}.{e.field}" if e.field else where) from e
    return tuple(out)


def _bool(obj: Mapping[str, Any], key: str) -> bool:
    value = obj.get(key)
    if not isinstance(value, bool):
        raise MalformedError("expected true or false", field=key)
    return value


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise MalformedError("expected a string", field=key)
    return value


def _increasing(sizes: Sequence[int], key: str, what: str) -> None:
    for i in range(1, len(sizes)):
        if sizes[i] <= sizes[i - 1]:
            raise MalformedError(f"out of order ({what} {sizes[i]})", field=f"{key}[{i}]")


class _Document:
    """``to_json()`` for every document: canonical bytes of ``to_json_obj()``."""

    __slots__ = ()

    def to_json_obj(self) -> dict[str, Any]:
        """The document as a JSON-ready dict."""
        raise NotImplementedError

    def to_json(self) -> bytes:
        """Canonical JSON bytes of the document."""
        return dumps_canonical(self.to_json_obj())


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorBody(_Document):
    """Every error answer: a message, and the query parameter or field at fault."""

    error: str
    field: str | None = None

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> ErrorBody:
        """Parse strictly.

        Raises:
            MalformedError: naming the field that is wrong.
        """
        obj = json_object(data, {"error", "field"})
        field = obj["field"]
        if field is not None and not isinstance(field, str):
            raise MalformedError("expected a string or null", field="field")
        return cls(error=_str(obj, "error"), field=field)

    def to_json_obj(self) -> dict[str, Any]:
        """The document as a JSON-ready dict."""
        return {"error": self.error, "field": self.field}


@dataclass(frozen=True, slots=True, kw_only=True)
class Health(_Document):
    """``GET /v1/health``: liveness, the node's own origin and its software version."""

    status: str
    origin: str
    version: str

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> Health:
        """Parse strictly.

        Raises:
            MalformedError: naming the field that is wrong.
        """
        obj = json_object(data, {"status", "origin", "version"})
        return cls(
            status=_str(obj, "status"),
            origin=json_text(obj, "origin"),
            version=_str(obj, "version"),
        )

    def to_json_obj(self) -> dict[str, Any]:
        """The document as a JSON-ready dict."""
        return {"status": self.status, "origin": self.origin, "version": self.version}


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteLog(_Document):
    """A log as a node lists it: not verified until the origin's key says so."""

    origin: str
    vkey: str
    size: int
    checkpoint: str
    frozen: bool

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> RemoteLog:
        """Parse strictly.

        Raises:
            MalformedError: naming the field that is wrong.
        """
        obj = json_object(data, {"origin", "vkey", "size", "checkpoint", "frozen"})
        return cls(
            origin=_str(obj, "origin"),
            vkey=_str(obj, "vkey"),
            size=json_uint(obj, "size"),
            checkpoint=_str(obj, "checkpoint"),
            frozen=_bool(obj, "frozen"),
        )

    def to_json_obj(self) -> dict[str, Any]:
        """The document as a JSON-ready dict."""
        return {
            "origin": self.origin,
            "vkey": self.vkey,
            "size": self.size,
            "checkpoint": self.checkpoint,
            "frozen": self.frozen,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class LogList(_Document):
    """``GET /v1/logs``: every log the node holds that has a checkpoint."""

    logs: tuple[RemoteLog, ...]

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> LogList:
        """Parse strictly.

        Raises:
            MalformedError: naming the field that is wrong.
        """
        obj = json_object(data, {"logs"})
        return cls(logs=_items(obj, "logs", RemoteLog.from_json))

    def to_json_obj(self) -> dict[str, Any]:
        """The document as a JSON-ready dict."""
        return {"logs": [log.to_json_obj() for log in self.logs]}


@dataclass(frozen=True, slots=True, kw_only=True)
class ServedCheckpoint(_Document):
    """One stored checkpoint note and its size (with the cosignatures held for it)."""

    size: int
    note: CheckpointNote

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> ServedCheckpoint:
        """Parse strictly.

        Raises:
            MalformedError: naming the field that is wrong.
        """
        obj = json_object(data, {"size", "note"})
        return cls(size=json_uint(obj, "size"), note=_str(obj, "note"))

    def to_json_obj(self) -> dict[str, Any]:
        """The document as a JSON-ready dict."""
        return {"size": self.size, "note": self.note}


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointList(_Document):
    """``GET /v1/checkpoints``: one page of a log's stored checkpoints, by increasing size."""

    origin: str
    checkpoints: tuple[ServedCheckpoint, ...]

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> CheckpointList:
        """Parse strictly; sizes must increase.

        Raises:
            MalformedError: naming the field that is wrong.
        """
        obj = json_object(data, {"origin", "checkpoints"})
        items = _items(obj, "checkpoints", ServedCheckpoint.from_json)
        _increasing([c.size for c in items], "checkpoints", "size")
        return cls(origin=_str(obj, "origin"), checkpoints=items)

    def to_json_obj(self) -> dict[str, Any]:
        """The document as a JSON-ready dict."""
        return {"origin": self.origin, "checkpoints": [c.to_json_obj() for c in self.checkpoints]}


@dataclass(frozen=True, slots=True, kw_only=True)
class ServedRotation(_Document):
    """A key rotation as a node serves it (``/v1/rotations``), not yet verified.

    Attributes:
        index: the rotate entry's index in the log.
        entry: the entry's exact bytes.
        checkpoint: the signed note of size ``index + 1``, or None when the
            node does not hold it.
        proof: the inclusion proof of the entry in the tree of size ``index + 1``.
    """

    index: int
    entry: bytes
    checkpoint: str | None
    proof: tuple[bytes, ...]

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> ServedRotation:
        """Parse strictly.

        Raises:
            MalformedError: naming the field that is wrong.
        """
        obj = json_object(data, {"index", "entry_b64", "checkpoint", "proof"})
        note = obj["checkpoint"]
        if note is not None and not isinstance(note, str):
            raise MalformedError("expected a string or null", field="checkpoint")
        return cls(
            index=json_uint(obj, "index"),
            entry=decode_b64(_str(obj, "entry_b64"), field="entry_b64"),
            checkpoint=note,
            proof=json_hashes(obj, "proof", length=HASH_SIZE, max_count=MAX_PROOF_HASHES),
        )

    def to_json_obj(self) -> dict[str, Any]:
        """The document as a JSON-ready dict."""
        return {
            "index": self.index,
            "entry_b64": encode_b64(self.entry),
            "checkpoint": self.checkpoint,
            "proof": [h.hex() for h in self.proof],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class RotationList(_Document):
    """``GET /v1/rotations``: an origin's applied key rotations, by increasing index."""

    origin: str
    rotations: tuple[ServedRotation, ...]

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> RotationList:
        """Parse strictly; indexes must increase.

        Raises:
            MalformedError: naming the field that is wrong.
        """
        obj = json_object(data, {"origin", "rotations"})
        items = _items(obj, "rotations", ServedRotation.from_json)
        _increasing([r.index for r in items], "rotations", "index")
        return cls(origin=_str(obj, "origin"), rotations=items)

    def to_json_obj(self) -> dict[str, Any]:
        """The document as a JSON-ready dict."""
        return {"origin": self.origin, "rotations": [r.to_json_obj() for r in self.rotations]}


@dataclass(frozen=True, slots=True, kw_only=True)
class EntriesPage(_Document):
    """``GET /v1/entries`` as JSON: entries' exact bytes from ``start`` (base64 on the wire)."""

    origin: str
    start: int
    entries: tuple[bytes, ...]

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> EntriesPage:
        """Parse strictly.

        Raises:
            MalformedError: naming the field that is wrong.
        """
        obj = json_object(data, {"origin", "start", "entries"})
        value = obj["entries"]
        if not isinstance(value, list) or len(value) > MAX_PAGE_ENTRIES:
            raise MalformedError(
                f"expected a list of at most {MAX_PAGE_ENTRIES} base64 entries", field="entries"
            )
        return cls(
            origin=_str(obj, "origin"),
            start=json_uint(obj, "start"),
            entries=tuple(decode_b64(_text(e), field=f"entries[{i}]") for i, e in enumerate(value)),
        )

    def to_json_obj(self) -> dict[str, Any]:
        """The document as a JSON-ready dict."""
        return {
            "origin": self.origin,
            "start": self.start,
            "entries": [encode_b64(e) for e in self.entries],
        }


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise MalformedError("expected a string")
    return value


def _page_hashes(obj: Mapping[str, Any], key: str) -> tuple[bytes, ...]:
    """Field ``key``: a page of lowercase hex hashes, checked in bulk.

    A page holds up to 10,000 hashes, and an audit reads a million: decoding
    them all and comparing the re-encoding with the input costs a third of
    checking each with :func:`~protocol.encoding.decode_hex`. Anything the
    bulk check refuses is parsed again item by item, for the error naming it.
    """
    value = obj.get(key)
    if isinstance(value, list) and len(value) <= MAX_PAGE_ENTRIES:
        try:
            out = [bytes.fromhex(h) for h in value]
        except (TypeError, ValueError):
            out = []
        # fromhex skips whitespace and takes upper case: the re-encoding must give the input.
        if (
            len(out) == len(value)
            and all(len(h) == HASH_SIZE for h in out)
            and [h.hex() for h in out] == value
        ):
            return tuple(out)
    return json_hashes(obj, key, length=HASH_SIZE, max_count=MAX_PAGE_ENTRIES)


@dataclass(frozen=True, slots=True, kw_only=True)
class LeafHashesPage(_Document):
    """``GET /v1/leaf-hashes``: RFC 6962 leaf hashes from ``start`` (lowercase hex)."""

    origin: str
    start: int
    leaf_hashes: tuple[bytes, ...]

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> LeafHashesPage:
        """Parse strictly.

        Raises:
            MalformedError: naming the field that is wrong.
        """
        obj = json_object(data, {"origin", "start", "leaf_hashes"})
        return cls(
            origin=_str(obj, "origin"),
            start=json_uint(obj, "start"),
            leaf_hashes=_page_hashes(obj, "leaf_hashes"),
        )

    def to_json_obj(self) -> dict[str, Any]:
        """The document as a JSON-ready dict."""
        return {
            "origin": self.origin,
            "start": self.start,
            "leaf_hashes": [h.hex() for h in self.leaf_hashes],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class EvidenceList(_Document):
    """``GET /v1/evidence``: every fork evidence the node holds."""

    evidence: tuple[ForkEvidence, ...]

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> EvidenceList:
        """Parse strictly (each evidence still to be verified).

        Raises:
            MalformedError: naming the field that is wrong.
        """
        obj = json_object(data, {"evidence"})
        return cls(evidence=_items(obj, "evidence", ForkEvidence.from_json))

    def to_json_obj(self) -> dict[str, Any]:
        """The document as a JSON-ready dict."""
        return {"evidence": [e.to_json_obj() for e in self.evidence]}


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointEvent(_Document):
    """The data of a ``checkpoint`` event on ``GET /v1/events``: a log reached ``size``."""

    origin: str
    size: int

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> CheckpointEvent:
        """Parse strictly.

        Raises:
            MalformedError: naming the field that is wrong.
        """
        obj = json_object(data, {"origin", "size"})
        return cls(origin=_str(obj, "origin"), size=json_uint(obj, "size"))

    def to_json_obj(self) -> dict[str, Any]:
        """The document as a JSON-ready dict."""
        return {"origin": self.origin, "size": self.size}


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalQuery(_Document):
    """One hash of a match request: its signal type and canonical value."""

    type: str
    value: str
    quality: int | None = None

    def to_json_obj(self) -> dict[str, Any]:
        """The document as a JSON-ready dict (``quality`` only when known)."""
        if self.quality is None:
            return {"type": self.type, "value": self.value}
        return {"type": self.type, "value": self.value, "quality": self.quality}


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchRequestBody(_Document):
    """``POST /v1/match`` request: up to 10,000 hashes, the PDQ distance, receipts or not.

    The server parses it item by item (``node.api.match.parse_match_request``)
    so that one malformed hash is reported without failing the others.
    """

    hashes: tuple[SignalQuery, ...]
    max_distance: int
    receipts: bool

    def to_json_obj(self) -> dict[str, Any]:
        """The document as a JSON-ready dict."""
        return {
            "hashes": [h.to_json_obj() for h in self.hashes],
            "max_distance": self.max_distance,
            "receipts": self.receipts,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchFound(_Document):
    """The hits of one query of a match request, by its position ``i`` in ``hashes``.

    ``hits`` are JSON objects as ``node.ledger.matching`` writes them
    (docs/api.md): origin, index, type, value, distance, labels, opinions and
    optional quality, note and receipt.
    """

    i: int
    type: str
    value: str
    hidden: int
    hits: tuple[Mapping[str, Any], ...]
    truncated: bool = False

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> MatchFound:
        """Parse strictly (each hit must be an object).

        ``truncated`` is present only when true (more hits than the node's cap).

        Raises:
            MalformedError: naming the field that is wrong.
        """
        if not isinstance(data, Mapping):
            data = loads_strict(data)
        keys = {"i", "type", "value", "hidden", "hits"}
        if isinstance(data, Mapping) and "truncated" in data:
            keys.add("truncated")
        obj = json_object(data, keys)
        truncated = obj.get("truncated", False)
        if truncated is not False and truncated is not True:
            raise MalformedError("expected true or false", field="truncated")
        return cls(
            i=json_uint(obj, "i"),
            type=_str(obj, "type"),
            value=_str(obj, "value"),
            hidden=json_uint(obj, "hidden"),
            hits=_items(obj, "hits", _hit),
            truncated=truncated,
        )

    def to_json_obj(self) -> dict[str, Any]:
        """The document as a JSON-ready dict."""
        obj: dict[str, Any] = {
            "i": self.i,
            "type": self.type,
            "value": self.value,
            "hidden": self.hidden,
            "hits": self.hits,  # dumps_canonical writes a tuple as a list: no copy
        }
        if self.truncated:
            obj["truncated"] = True
        return obj


def _hit(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedError("expected an object")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchItemError(_Document):
    """Why the query at position ``i`` of a match request was not matched."""

    i: int
    field: str | None
    error: str

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> MatchItemError:
        """Parse strictly.

        Raises:
            MalformedError: naming the field that is wrong.
        """
        obj = json_object(data, {"i", "field", "error"})
        field = obj["field"]
        if field is not None and not isinstance(field, str):
            raise MalformedError("expected a string or null", field="field")
        return cls(i=json_uint(obj, "i"), field=field, error=_str(obj, "error"))

    def to_json_obj(self) -> dict[str, Any]:
        """The document as a JSON-ready dict."""
        return {"i": self.i, "field": self.field, "error": self.error}


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchItemWarning(_Document):
    """Why the query at position ``i`` was answered differently than asked (low PDQ quality)."""

    i: int
    field: str
    warning: str

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> MatchItemWarning:
        """Parse strictly.

        Raises:
            MalformedError: naming the field that is wrong.
        """
        obj = json_object(data, {"i", "field", "warning"})
        return cls(i=json_uint(obj, "i"), field=_str(obj, "field"), warning=_str(obj, "warning"))

    def to_json_obj(self) -> dict[str, Any]:
        """The document as a JSON-ready dict."""
        return {"i": self.i, "field": self.field, "warning": self.warning}


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchResponseBody(_Document):
    """``POST /v1/match`` answer: the queries that found something, and per-item errors."""

    checked: int
    max_distance: int
    matches: tuple[MatchFound, ...]
    errors: tuple[MatchItemError, ...]
    warnings: tuple[MatchItemWarning, ...] = ()

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> MatchResponseBody:
        """Parse strictly (``warnings`` is present only when there are some).

        Raises:
            MalformedError: naming the field that is wrong.
        """
        if not isinstance(data, Mapping):
            data = loads_strict(data)
        keys = {"checked", "max_distance", "matches", "errors"}
        if isinstance(data, Mapping) and "warnings" in data:
            keys.add("warnings")
        obj = json_object(data, keys)
        return cls(
            checked=json_uint(obj, "checked"),
            max_distance=json_uint(obj, "max_distance"),
            matches=_items(obj, "matches", MatchFound.from_json),
            errors=_items(obj, "errors", MatchItemError.from_json),
            warnings=_items(obj, "warnings", MatchItemWarning.from_json)
            if "warnings" in obj
            else (),
        )

    def to_json_obj(self) -> dict[str, Any]:
        """The document as a JSON-ready dict."""
        obj: dict[str, Any] = {
            "checked": self.checked,
            "max_distance": self.max_distance,
            "matches": [m.to_json_obj() for m in self.matches],
            "errors": [e.to_json_obj() for e in self.errors],
        }
        if self.warnings:
            obj["warnings"] = [w.to_json_obj() for w in self.warnings]
        return obj


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerCardAnswer(_Document):
    """``POST /v1/peer-card``: what a node did with the signed card its caller presented.

    Attributes:
        accepted: the card was newer than the one held and verified: its
            certificates are trusted for the caller from now on.
        serial: the serial of the caller's card the node now holds.
        certificates: how many certificates that card lists.
    """

    accepted: bool
    serial: int
    certificates: int

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> PeerCardAnswer:
        """Parse strictly.

        Raises:
            MalformedError: naming the field that is wrong.
        """
        obj = json_object(data, {"accepted", "serial", "certificates"})
        return cls(
            accepted=_bool(obj, "accepted"),
            serial=json_uint(obj, "serial"),
            certificates=json_uint(obj, "certificates"),
        )

    def to_json_obj(self) -> dict[str, Any]:
        """The document as a JSON-ready dict."""
        return {
            "accepted": self.accepted,
            "serial": self.serial,
            "certificates": self.certificates,
        }
