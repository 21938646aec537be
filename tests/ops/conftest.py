"""Helpers of the operations tests: writes and reads as the CLI makes them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from node.cli import main as hashmesh
from node.ledger import Ledger
from protocol.entry import AddEntry


def add(node_dir: Path, start: int, count: int) -> int:
    """``count`` adds at the own log, as the CLI writes; returns the new size."""
    with Ledger.open(node_dir) as ledger:
        result = ledger.append(
            [
                AddEntry.create(signal_type="md5", value=f"{i:032x}")
                for i in range(start, start + count)
            ]
        )
    return result.checkpoint.size


def held(node_dir: Path, origin: str) -> int:
    with Ledger.open(node_dir, read_only=True) as ledger:
        if origin == ledger.own_log.origin:
            return ledger.latest_checkpoint().size
        return ledger.replica(origin).state().size


def witnessed(node_dir: Path, origin: str) -> int:
    with Ledger.open(node_dir, read_only=True) as ledger:
        state = ledger.witnessing.get_state(origin)
    return 0 if state is None else state.size


def evidence(node_dir: Path) -> list[str]:
    with Ledger.open(node_dir, read_only=True) as ledger:
        return [e.origin for e in ledger.peers.list_evidence()]


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``hashmesh`` in a worker thread (commands with their own event loop)."""
    capsys.readouterr()
    status = await asyncio.to_thread(hashmesh, list(argv))
    out, err = capsys.readouterr()
    return status, out, err
