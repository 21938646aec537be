"""hashmesh protocol core: entries, RFC 6962 Merkle logs, C2SP checkpoints and notes.

Layer: protocol (pure). Nothing in this package performs network, file or
database I/O; an auditor can use it alone.
"""

from __future__ import annotations

PROTOCOL_VERSION = 2
"""Version of the entry encoding this implementation writes (salted entries)."""

READ_VERSIONS = (1, 2)
"""Versions of the entry encoding this implementation reads and verifies."""

__all__ = ["PROTOCOL_VERSION", "READ_VERSIONS"]
