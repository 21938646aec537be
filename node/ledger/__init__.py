"""The node's ledger: creating a node, writing and reading its logs.

Layer: node.ledger, above node.storage.
"""

from __future__ import annotations

from node.ledger.service import (
    AppendResult,
    Duplicate,
    ImportResult,
    Ledger,
    LogStatus,
    Proof,
    load_signer,
)

__all__ = [
    "AppendResult",
    "Duplicate",
    "ImportResult",
    "Ledger",
    "LogStatus",
    "Proof",
    "load_signer",
]
