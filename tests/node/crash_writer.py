"""Writer process for the crash test: appends until killed, acknowledging commits.

Usage: python -m tests.node.crash_writer NODE_DIR SEED

It appends batches of sha256 entries whose values come from a counter that
restarts at 0 each run, so after a crash it re-sends what it sent before
(as a client retrying would). It reports on stdout, one line each, flushed:

- ``OPEN`` once the database is open, before the first write;
- ``BEGIN append|import|retract`` just before each write starts;
- ``ACK <size> <root hex>`` only after that write's transaction committed.

The crash test reads these lines to choose where to kill it.
"""

from __future__ import annotations

import io
import random
import sys
from pathlib import Path

from node.ledger import Ledger
from node.ledger.hashlist import HashListReader
from protocol.entry import AddEntry, RetractEntry


def say(line: str) -> None:
    print(line, flush=True)


def main() -> None:
    node_dir, seed = Path(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    counter = 0
    with Ledger.open(node_dir) as ledger:
        say("OPEN")
        while True:
            choice = rng.random()
            if choice < 0.5:
                n = rng.randint(1, 50)
                entries = [
                    AddEntry.create(signal_type="sha256", value=f"{counter + i:064x}")
                    for i in range(n)
                ]
                counter += n
                say("BEGIN append")
                result = ledger.append(entries)
            elif choice < 0.9:
                n = rng.randint(1000, 30000)
                text = "".join(f"{counter + i:064x}\n" for i in range(n))
                counter += n
                reader = HashListReader(fmt="lines", default_type="sha256")
                say("BEGIN import")
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
                say("BEGIN retract")
                result = ledger.append([RetractEntry(index=target, reason="crash test")])
            cp = result.checkpoint
            say(f"ACK {cp.size} {cp.root_hash.hex()}")


if __name__ == "__main__":
    main()
