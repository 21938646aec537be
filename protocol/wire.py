"""Documents exchanged with auditors and peers: proofs and entry bundles.

Layer: protocol (pure). This module performs no I/O.

Proof documents are what ``hashmesh prove ... --json`` prints and what
``python -m protocol verify-*`` reads::

    {"index": 5, "size": 8, "leaf_hash": "<64 hex>", "hashes": ["<64 hex>", ...]}
    {"old_size": 4, "new_size": 8, "hashes": ["<64 hex>", ...]}

Hashes are lowercase hex, in RFC 6962 order. Parsing is strict: unknown or
missing fields, wrong types, duplicate keys and non-canonical hex are errors.

An *entry bundle* carries consecutive entries' exact bytes in the encoding of
C2SP tlog-tiles entry bundles: each entry as a big-endian uint16 length
followed by that many bytes, nothing else. Peers use it for bulk sync (it
costs a tenth of the JSON form's base64 to decode); parsing is as strict as
the JSON forms (no empty entry, no truncated or trailing bytes, a bound on
the count).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from protocol.encoding import (
    decode_hex,
    dumps_canonical,
    json_hashes,
    json_object,
    json_uint,
)
from protocol.errors import MalformedError
from protocol.hashing import HASH_SIZE

__all__ = [
    "ENTRY_BUNDLE_MEDIA_TYPE",
    "MAX_PROOF_HASHES",
    "ConsistencyProof",
    "InclusionProof",
    "decode_entry_bundle",
    "encode_entry_bundle",
]

ENTRY_BUNDLE_MEDIA_TYPE = "application/vnd.hashmesh.entry-bundle"
"""The HTTP media type of an entry bundle."""

_MAX_BUNDLED_ENTRY = 0xFFFF  # the uint16 length prefix

MAX_PROOF_HASHES = 64  # ceil(log2(2**63)) + 1 is the most any proof needs


@dataclass(frozen=True, slots=True, kw_only=True)
class InclusionProof:
    """Proof that the leaf with ``leaf_hash`` is at ``index`` in the tree of ``size``."""

    index: int
    size: int
    leaf_hash: bytes
    hashes: tuple[bytes, ...]

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> InclusionProof:
        """Parse a proof document strictly.

        Raises:
            MalformedError: naming the field that is wrong.
        """
        obj = json_object(data, {"index", "size", "leaf_hash", "hashes"})
        return cls(
            index=json_uint(obj, "index"),
            size=json_uint(obj, "size"),
            leaf_hash=decode_hex(obj["leaf_hash"], field="leaf_hash", length=HASH_SIZE),
            hashes=json_hashes(obj, "hashes", length=HASH_SIZE, max_count=MAX_PROOF_HASHES),
        )

    def to_json_obj(self) -> dict[str, Any]:
        """The proof as a JSON-ready dict."""
        return {
            "index": self.index,
            "size": self.size,
            "leaf_hash": self.leaf_hash.hex(),
            "hashes": [h.hex() for h in self.hashes],
        }

    def to_json(self) -> bytes:
        """Canonical JSON bytes of the proof."""
        return dumps_canonical(self.to_json_obj())


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsistencyProof:
    """Proof that the tree of ``new_size`` extends the tree of ``old_size``."""

    old_size: int
    new_size: int
    hashes: tuple[bytes, ...]

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> ConsistencyProof:
        """Parse a proof document strictly.

        Raises:
            MalformedError: naming the field that is wrong.
        """
        obj = json_object(data, {"old_size", "new_size", "hashes"})
        return cls(
            old_size=json_uint(obj, "old_size"),
            new_size=json_uint(obj, "new_size"),
            hashes=json_hashes(obj, "hashes", length=HASH_SIZE, max_count=MAX_PROOF_HASHES),
        )

    def to_json_obj(self) -> dict[str, Any]:
        """The proof as a JSON-ready dict."""
        return {
            "old_size": self.old_size,
            "new_size": self.new_size,
            "hashes": [h.hex() for h in self.hashes],
        }

    def to_json(self) -> bytes:
        """Canonical JSON bytes of the proof."""
        return dumps_canonical(self.to_json_obj())


def encode_entry_bundle(datas: Iterable[bytes]) -> bytes:
    """Entries' exact bytes as an entry bundle (uint16 length, then the bytes).

    Raises:
        ValueError: if an entry is empty or longer than 65,535 bytes (no
            valid entry is: they are at most ``MAX_ENTRY_BYTES``).
    """
    parts: list[bytes] = []
    for i, data in enumerate(datas):
        if not 0 < len(data) <= _MAX_BUNDLED_ENTRY:
            raise ValueError(f"entry {i} is {len(data)} bytes; a bundle holds 1 to 65535")
        parts.append(len(data).to_bytes(2, "big"))
        parts.append(data)
    return b"".join(parts)


def _uniform_entry_bundle(body: bytes, max_entries: int) -> list[bytes] | None:
    """The entries of a bundle whose entries all have one length, or None.

    A page of one family of adds (a replica's sync) is such a bundle: its
    length prefixes are checked with two strided slices and the entries cut
    out in one pass, where the general loop costs four times as much. If
    every prefix at a multiple of ``length + 2`` says ``length`` and the body
    ends exactly after the last entry, the general loop reads exactly these
    entries; any other body (or too many entries) goes to it for its error.
    """
    size = len(body)
    if size < 3:
        return None
    length = (body[0] << 8) | body[1]
    step = length + 2
    count = size // step
    if length == 0 or size % step or count > max_entries:
        return None
    if body[0::step] != body[0:1] * count or body[1::step] != body[1:2] * count:
        return None
    return [body[at : at + length] for at in range(2, size, step)]


def decode_entry_bundle(body: bytes, *, max_entries: int) -> list[bytes]:
    """The entries of an entry bundle, strictly.

    Args:
        body: the bundle.
        max_entries: more entries than this is an error (what was asked for).

    Raises:
        MalformedError: if the bundle is empty, an entry is empty, a length
            prefix or an entry is cut short, or there are more than
            ``max_entries`` entries; the field names the entry.
    """
    uniform = _uniform_entry_bundle(body, max_entries)
    if uniform is not None:
        return uniform
    out: list[bytes] = []
    pos, size = 0, len(body)
    while pos < size:
        field = f"entries[{len(out)}]"
        if len(out) == max_entries:
            raise MalformedError(f"more than the {max_entries} entries asked for", field=field)
        if pos + 2 > size:
            raise MalformedError("the length prefix is cut short", field=field)
        length = (body[pos] << 8) | body[pos + 1]
        pos += 2
        if length == 0:
            raise MalformedError("empty entry", field=field)
        end = pos + length
        if end > size:
            raise MalformedError(
                f"{length} bytes announced, {size - pos} left in the bundle", field=field
            )
        out.append(body[pos:end])
        pos = end
    if not out:
        raise MalformedError("the bundle holds no entries", field="entries")
    return out
