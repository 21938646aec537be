"""The node's ledger: creating a node, writing and reading its logs.

Layer: node.ledger, above node.storage.
"""

from __future__ import annotations

from node.ledger.integration import Duplicate
from node.ledger.key_files import load_signer
from node.ledger.service import (
    AppendResult,
    ImportResult,
    Ledger,
    LogStatus,
    Proof,
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
