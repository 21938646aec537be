"""Witness test harness: a real origin node, a real witness node that follows it.

Both are node directories on tmp_path with their own SQLite files; the split
view is made the way a misbehaving operator would: copy the origin's
directory (same signing key, same TLS identity) and append different entries
to each copy.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.cli.cards import parse_card
from node.config import load_config
from node.ledger import Ledger
from node.ledger.database import Database
from node.ledger.provision import init_node
from node.ledger.witness import load_witness_signer
from node.sync.witness_client import CosignOutcome, cosign_once
from protocol.entry import AddEntry
from protocol.keys import NoteVerifier
from tests.sync.conftest import card_json

ORIGIN = "hotline-a.example/hashmesh"
WITNESS = "hotline-w.example/hashmesh"


def value(tag: str, i: int) -> str:
    return hashlib.sha256(f"{tag}-{i}".encode()).hexdigest()


def append(node_dir: Path, count: int, *, tag: str = "main") -> None:
    """Append ``count`` adds to a node's own log (one transaction, one checkpoint)."""
    with Ledger.open(node_dir) as ledger:
        start = ledger.latest_checkpoint().size
        ledger.append(
            [
                AddEntry.create(signal_type="sha256", value=value(tag, i))
                for i in range(start, start + count)
            ]
        )


@dataclass(frozen=True)
class Request:
    """What an origin sends a witness: old size, proof, note."""

    old_size: int
    proof: tuple[bytes, ...]
    note: str


def request(node_dir: Path, old_size: int, size: int | None = None) -> Request:
    """The add-checkpoint request of the origin's checkpoint ``size`` (default latest)."""
    with Ledger.open(node_dir, read_only=True) as ledger:
        own = ledger.own_log
        record = (
            ledger.latest_checkpoint()
            if size is None
            else ledger.store.get_checkpoint(own.log_id, size)
        )
        assert record is not None
        proof = ledger.prove_consistency(old_size, record.size).hashes
    return Request(old_size, proof, record.note)


def witness_vkey(node_dir: Path) -> NoteVerifier:
    return load_witness_signer(load_config(node_dir)).verifier()


def fork(origin_dir: Path, copy_dir: Path) -> Path:
    """A second copy of the origin (same keys): the split-view operator's other face."""
    shutil.copytree(origin_dir, copy_dir)
    return copy_dir


@pytest.fixture
def origin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "a"
    init_node(path, ORIGIN)
    return path


@pytest.fixture
def witness_dir(tmp_path: Path, origin_dir: Path) -> Path:
    """A node that follows ORIGIN (so it may witness it)."""
    path = tmp_path / "w"
    init_node(path, WITNESS)
    with Ledger.open(origin_dir, read_only=True) as origin:
        vkey = origin.own_log.verifier_key
    with Ledger.open(path) as ledger:
        ledger.follow(ORIGIN, vkey)
    return path


def add_card(node_dir: Path, other_dir: Path, url: str, role: str = "peer") -> None:
    """node_dir adds other_dir's node (reached at url) as `hashmesh peer add` does."""
    card = parse_card(card_json(other_dir, url))
    with Ledger.open(node_dir) as ledger:
        ledger.peers.add_peer(card.peer_record(role))


async def ask_witnesses(node_dir: Path) -> list[CosignOutcome]:
    """One round of asking the configured witnesses (what `hashmesh witness ask` does)."""
    config = load_config(node_dir)
    db = await Database.open(node_dir)
    try:
        return await cosign_once(db, cert_path=config.tls_cert_path, key_path=config.tls_key_path)
    finally:
        await db.close()
