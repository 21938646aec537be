"""Pausing the cyclic garbage collector around bulk writes: :func:`bulk_allocation`.

Layer: node.ledger. Used by the own log's import and by replica sync chunks.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["bulk_allocation"]


_paused_lock = threading.Lock()
_paused_count = 0
_paused_was_enabled = False


@contextmanager
def bulk_allocation() -> Iterator[None]:
    """Pause Python's cyclic garbage collector around a bulk write.

    An import or a sync chunk allocates millions of short-lived objects that
    form no reference cycles (entries, tuples, bytes); with the collector on,
    its generation scans cost about an eighth of the write path
    (docs/benchmarks.md). Nothing is leaked: the collector runs again when
    the last concurrent bulk write ends, and collects any cycle made meanwhile.
    """
    global _paused_count, _paused_was_enabled
    with _paused_lock:
        if _paused_count == 0:
            _paused_was_enabled = gc.isenabled()
            gc.disable()
        _paused_count += 1
    try:
        yield
    finally:
        with _paused_lock:
            _paused_count -= 1
            if _paused_count == 0 and _paused_was_enabled:
                gc.enable()
