"""RFC 6962 hashing (RFC 9162 section 2.1.1).

Layer: protocol (pure). This module performs no I/O.

Leaves and interior nodes are hashed with different one-byte prefixes (0x00
and 0x01) so a leaf can never be passed off as an interior node (second
preimage resistance of the tree).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["EMPTY_ROOT", "HASH_SIZE", "hash_children", "hash_leaf", "hash_leaves"]

HASH_SIZE = 32
"""Bytes in every leaf hash, node hash and root hash (SHA-256)."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""Root hash of the empty tree: SHA-256 of the empty string."""

_sha256 = hashlib.sha256


def hash_leaf(data: bytes) -> bytes:
    """Leaf hash: SHA-256(0x00 || data)."""
    return _sha256(b"\x00" + data).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    """Interior node hash: SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


def hash_leaves(datas: Iterable[bytes]) -> list[bytes]:
    """Leaf hashes of many leaves, in order (one list comprehension: fast)."""
    sha = _sha256
    return [sha(b"\x00" + d).digest() for d in datas]
