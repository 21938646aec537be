"""Crash safety: SIGKILL a writing process at random moments, then check everything.

Each cycle restarts the writer and kills it at a point chosen in its own
terms, read from what it reports (see ``crash_writer``): after a chosen number
of acknowledged commits (zero included: right after it opened the database, or
inside its first write), then right away, as the next write begins, or as the
next large import begins. No timing is involved, so a loaded machine changes
only how long the test takes. Then the test opens the database and checks:
SQLite integrity, the root recomputed from every stored leaf equals the
latest signed checkpoint, every acknowledged checkpoint is still there
with the same root, no hash appended twice, and no checkpoint ahead of its
entries.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import signal
import threading
from pathlib import Path

import pytest

from node.ledger import Ledger
from protocol.checkpoint import open_checkpoint
from protocol.entry import AddEntry, parse_entry
from protocol.keys import NoteVerifier
from tests.node import crash_writer
from tests.waiting import PATIENCE

CYCLES = 50


def check_invariants(
    node_dir: Path, acked: dict[int, str], parsed: dict[bytes, str | None] | None = None
) -> tuple[int, int]:
    """Check everything; ``parsed`` remembers each entry's parse across calls.

    Parsing is a function of the entry's bytes alone, so looking the bytes up
    checks exactly what parsing them again would, without re-parsing the
    whole log every cycle (which made the test quadratic in its length).
    """
    parsed = {} if parsed is None else parsed
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
            raw = bytes(data)
            if raw not in parsed:
                entry = parse_entry(raw)
                parsed[raw] = entry.value if isinstance(entry, AddEntry) else None
            value = parsed[raw]
            if value is not None and idx not in retracted:
                listed += 1
                values.add(value)
        # A retracted hash may be listed again later, but never twice at once.
        assert listed == len(values), "a hash is listed twice"
        return count, store.retraction_count(log.log_id)


# Writers are forked from a fork server that imported crash_writer (and the
# node) once: each is a process of its own, killed with its database open,
# without paying for a fresh interpreter and its imports fifty times.
_FORKS = multiprocessing.get_context("forkserver")
_FORKS.set_forkserver_preload(["tests.node.crash_writer"])


class Writer:
    """A running crash_writer process, its report lines read from a pipe with a deadline."""

    def __init__(self, node_dir: Path, seed: int) -> None:
        reader, writer = _FORKS.Pipe(duplex=False)
        self.proc = _FORKS.Process(
            target=crash_writer.run, args=(str(node_dir), seed, writer), daemon=True
        )
        self.proc.start()
        writer.close()  # the child's copy is the only one left: its death is our EOF
        self._conn = reader
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.acked: dict[int, str] = {}
        self.acks = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with self._conn:
            while True:
                try:
                    raw = self._conn.recv_bytes()
                except (EOFError, OSError):
                    break
                self.lines.put(raw.decode())
        self.lines.put(None)

    def next_line(self) -> str:
        """The writer's next line; fails if it ends or stays silent for PATIENCE s."""
        try:
            line = self.lines.get(timeout=PATIENCE)
        except queue.Empty:
            pytest.fail(f"the writer said nothing for {PATIENCE:g} s")
        if line is None:
            self.proc.join(PATIENCE)
            pytest.fail(f"the writer ended on its own (exit code {self.proc.exitcode})")
        if line.startswith("DIED "):
            pytest.fail(f"the writer failed: {line}")
        self._note(line)
        return line

    def wait_for(self, prefix: str) -> None:
        while not self.next_line().startswith(prefix):
            pass

    def kill(self) -> None:
        """SIGKILL it; collect every acknowledgement it sent before dying."""
        assert self.proc.pid is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(PATIENCE)
        self._reader.join(timeout=PATIENCE)
        died = [line for line in self.lines.queue if line is not None and line.startswith("DIED")]
        assert self.proc.exitcode == -signal.SIGKILL, died or self.proc.exitcode
        while (line := self.lines.get_nowait()) is not None:
            self._note(line)

    def _note(self, line: str) -> None:
        words = line.split()
        if words[0] == "ACK":
            self.acks += 1
            self.acked[int(words[1])] = words[2]


# Where a cycle kills the writer, counted in its acknowledged commits: after
# ``acks`` of them, then right away ("now": between writes, or right after
# opening the database when acks is 0), as the next write begins ("write"), or
# as the next large import begins ("import": a long transaction, killed inside).
ACKS = (0, 0, 1, 2, 3, 5)
WHERE = ("now", "write", "import")


# Fifty writer processes and fifty full checks: a minute on a loaded machine.
# Every wait inside has its own deadline (PATIENCE); this one bounds the whole.
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_during_writes(node_dir: Path) -> None:
    rng = random.Random(20261122)
    acked: dict[int, str] = {}
    plans: set[tuple[bool, str]] = set()
    parsed: dict[bytes, str | None] = {}
    for cycle in range(CYCLES):
        acks, where = rng.choice(ACKS), rng.choice(WHERE)
        writer = Writer(node_dir, cycle)
        try:
            writer.wait_for("OPEN")
            for _ in range(acks):
                writer.wait_for("ACK")
            if where != "now":
                writer.wait_for("BEGIN " if where == "write" else "BEGIN import")
        finally:
            writer.kill()
        assert writer.acks >= acks
        acked.update(writer.acked)
        plans.add((acks == 0, where))
        check_invariants(node_dir, acked, parsed)
    count, _retracted = check_invariants(node_dir, acked)
    assert count > 0 and acked, "the writer never committed: test is not testing"
    # Every kind of kill point was chosen, before the first commit and after.
    assert plans == {(first, where) for first in (True, False) for where in WHERE}, plans
