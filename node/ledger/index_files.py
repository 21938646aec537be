"""The node's index files as a whole: checked by ``hashmesh fsck``, rebuilt on request.

Layer: node.ledger. The files themselves belong to :mod:`node.ledger.live_pdq`
(``index/pdq.seg``), :mod:`node.ledger.active_index` (``index/active.seg``) and
:mod:`node.ledger.leaf_index` (``index/leaves-<log id>.seg``); this module
walks them for the commands that treat every derived structure alike:
``fsck`` (check each against the log, report findings), ``fsck --repair``
and ``hashmesh index build`` (write each afresh).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from node.ledger.active_index import ACTIVE_FILE, build_active_file, check_active_file
from node.ledger.fsck import Finding
from node.ledger.leaf_index import build_leaves_file, check_leaves_file, leaves_file
from node.ledger.live_pdq import PDQ_FILE, build_pdq_file, check_pdq_file
from node.storage.ledger_store import LedgerStore

__all__ = ["IndexFile", "build_index_files", "check_index_files", "index_files"]


@dataclass(frozen=True, slots=True)
class IndexFile:
    """One index file of a node.

    Attributes:
        path: the file.
        what: what it indexes, in words.
        rows: rows (PDQ hashes or entries) written.
    """

    path: Path
    what: str
    rows: int


def check_index_files(
    store: LedgerStore, directory: Path, min_quality: int, own_origin: str
) -> list[Finding]:
    """Every index file checked against the log (``derived`` findings; missing files are fine)."""
    findings = []
    problem = check_pdq_file(store, directory / PDQ_FILE, min_quality)
    if problem is not None:
        findings.append(Finding(own_origin, "derived", f"index/{PDQ_FILE}", None, problem))
    problem = check_active_file(store, directory / ACTIVE_FILE)
    if problem is not None:
        findings.append(Finding(own_origin, "derived", f"index/{ACTIVE_FILE}", None, problem))
    for log in store.list_logs():
        problem = check_leaves_file(store, log.log_id, directory)
        if problem is not None:
            name = leaves_file(directory, log.log_id).name
            findings.append(Finding(log.origin, "derived", f"index/{name}", None, problem))
    return findings


def build_index_files(store: LedgerStore, directory: Path, min_quality: int) -> list[IndexFile]:
    """Write every index file afresh from the log's tables (atomically, one by one)."""
    built = [
        IndexFile(
            directory / PDQ_FILE,
            "PDQ hashes of every held log",
            build_pdq_file(store, directory / PDQ_FILE, min_quality),
        ),
        IndexFile(
            directory / ACTIVE_FILE,
            "listed hashes (active keys) of every held log",
            build_active_file(store, directory / ACTIVE_FILE),
        ),
    ]
    for log in store.list_logs():
        rows = build_leaves_file(store, log.log_id, directory)
        built.append(
            IndexFile(leaves_file(directory, log.log_id), f"leaf hashes of {log.origin}", rows)
        )
    return built


def index_files(directory: Path) -> list[Path]:
    """The index files present in a node's index directory."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix == ".seg")
