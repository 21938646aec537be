"""JSON documents exchanged with auditors and peers: proofs.

Layer: protocol (pure). This module performs no I/O.

Proof documents are what ``hashmesh prove ... --json`` prints and what
``python -m protocol verify-*`` reads::

    {"index": 5, "size": 8, "leaf_hash": "<64 hex>", "hashes": ["<64 hex>", ...]}
    {"old_size": 4, "new_size": 8, "hashes": ["<64 hex>", ...]}

Hashes are lowercase hex, in RFC 6962 order. Parsing is strict: unknown or
missing fields, wrong types, duplicate keys and non-canonical hex are errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocol.encoding import (
    decode_hex,
    dumps_canonical,
    json_hashes,
    json_object,
    json_uint,
)
from protocol.hashing import HASH_SIZE

__all__ = ["MAX_PROOF_HASHES", "ConsistencyProof", "InclusionProof"]

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
