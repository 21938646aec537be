"""Crash safety: SIGKILL a writing process at random moments, then check everything.

Each cycle restarts the writer, kills it after a random delay (biased towards
the middle of large transactions and commits), then opens the database and
checks: SQLite integrity, the root recomputed from every stored leaf equals
the latest signed checkpoint, every acknowledged checkpoint is still there
with the same root, no hash appended twice, and no checkpoint ahead of its
entries.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.ledger import Ledger
from protocol.checkpoint import open_checkpoint
from protocol.entry import AddEntry, parse_entry
from protocol.keys import NoteVerifier

ROOT = Path(__file__).resolve().parents[2]
CYCLES = 50


def check_invariants(node_dir: Path, acked: dict[int, str]) -> tuple[int, int]:
    with Ledger.open(node_dir, read_only=True) as ledger:
        store = ledger.store
        assert store.integrity_check() == ["ok"]
        log = ledger.own_log
        latest = ledger.latest_checkpoint()
        count = store.entry_count(log.log_id)
        assert latest.size == count, "checkpoint ahead of (or behind) its entries"
        size, root = ledger.recompute_root()
        assert (size, root) == (latest.size, latest.root_hash)
        verifier = NoteVerifier.from_text(log.verifier_key)
        open_checkpoint(latest.note, verifier, origin=log.origin)
        for acked_size, root_hex in acked.items():
            record = store.get_checkpoint(log.log_id, acked_size)
            assert record is not None, f"acknowledged checkpoint {acked_size} lost"
            assert record.root_hash.hex() == root_hex
        retracted = store.retracted_targets(log.log_id, 0, count)
        values: set[str] = set()
        listed = 0
        for idx, data, _leaf in store.iter_entries(log.log_id):
            entry = parse_entry(bytes(data))
            if isinstance(entry, AddEntry) and idx not in retracted:
                listed += 1
                values.add(entry.value)
        # A retracted hash may be listed again later, but never twice at once.
        assert listed == len(values), "a hash is listed twice"
        return count, store.retraction_count(log.log_id)


@pytest.mark.slow
def test_sigkill_during_writes(node_dir: Path) -> None:
    rng = random.Random(20261122)
    acked: dict[int, str] = {}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    kills_mid_write = 0
    for cycle in range(CYCLES):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.node.crash_writer",
                str(node_dir),
                str(cycle),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        # Start-up takes ~0.3 s; kill anywhere from start-up to several commits in.
        time.sleep(rng.uniform(0.2, 1.5))
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err.decode()
        lines = out.decode().splitlines()
        for line in lines:
            _ack, size, root = line.split()
            acked[int(size)] = root
        kills_mid_write += bool(lines)
        check_invariants(node_dir, acked)
    count, _retracted = check_invariants(node_dir, acked)
    assert count > 0 and len(acked) > CYCLES / 2, "the writer hardly wrote: test is not testing"
    assert kills_mid_write > CYCLES / 2
