"""Writer process for the crash test: appends until killed, acknowledging commits.

Usage: python -m tests.node.crash_writer NODE_DIR SEED

The crash test runs :func:`run` in processes forked from a multiprocessing
fork server that imported this module once (a fresh interpreter and its
imports for each of fifty writers cost more than the writing); each writer is
still a process of its own, SIGKILLed with its database open.

It appends batches of sha256 entries whose values come from a counter that
restarts at 0 each run, so after a crash it re-sends what it sent before
(as a client retrying would). It reports on stdout, one line each, flushed:

- ``OPEN`` once the database is open, before the first write;
- ``BEGIN append|import|retract`` just before each write starts;
- ``ACK <size> <root hex>`` only after that write's transaction committed;
- ``DIED <traceback>`` if it fails on its own (the test reports it).

The crash test reads these lines to choose where to kill it.
"""

from __future__ import annotations

import io
import random
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

from node.ledger import Ledger
from node.ledger.hashlist import HashListReader
from protocol.entry import AddEntry, RetractEntry


def say(line: str) -> None:
    print(line, flush=True)


def run(node_dir: str, seed: int, conn: Connection) -> None:
    """The writer in a forked process, its lines sent on ``conn``.

    Each line is one ``send_bytes`` (one ``write`` of a few bytes, atomic
    on a pipe), so a kill never leaves half a line for the test to read.
    """
    try:
        write(Path(node_dir), seed, lambda line: conn.send_bytes(line.encode()))
    except BaseException:
        conn.send_bytes(("DIED " + traceback.format_exc()).encode())
        raise


def main() -> None:
    write(Path(sys.argv[1]), int(sys.argv[2]), say)


def write(node_dir: Path, seed: int, tell: Callable[[str], None]) -> None:
    """Append until killed, saying what it does (the lines of the module docstring)."""
    rng = random.Random(seed)
    counter = 0
    with Ledger.open(node_dir) as ledger:
        tell("OPEN")
        while True:
            choice = rng.random()
            if choice < 0.5:
                n = rng.randint(1, 50)
                entries = [
                    AddEntry.create(signal_type="sha256", value=f"{counter + i:064x}")
                    for i in range(n)
                ]
                counter += n
                tell("BEGIN append")
                result = ledger.append(entries)
            elif choice < 0.9:
                n = rng.randint(1000, 30000)
                text = "".join(f"{counter + i:064x}\n" for i in range(n))
                counter += n
                reader = HashListReader(fmt="lines", default_type="sha256")
                tell("BEGIN import")
                result = ledger.import_lines(reader.read(io.StringIO(text))).append
            else:
                size = ledger.latest_checkpoint().size
                target = rng.randrange(size) if size else None
                if (
                    target is None
                    or ledger.store.retracted_by(ledger.own_log.log_id, target) is not None
                    or ledger.store.get_entry(ledger.own_log.log_id, target) is None
                ):
                    continue
                data = ledger.store.get_entry(ledger.own_log.log_id, target)
                if data is None or b'"kind":"add"' not in data:
                    continue
                tell("BEGIN retract")
                result = ledger.append([RetractEntry(index=target, reason="crash test")])
            cp = result.checkpoint
            tell(f"ACK {cp.size} {cp.root_hash.hex()}")


if __name__ == "__main__":
    main()
