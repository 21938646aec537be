"""Progress of long commands on a terminal.

import, export, sync, audit, fsck (and ``--repair``), publish, backup,
restore, recover and ``repair --from-peers`` draw a bar.

Layer: node.cli.

A bar with percentage, rate and ETA (tqdm) on standard error when, and only
when, standard error is a terminal: piped or redirected output (cron, CI,
``2> log``) gets nothing, so logs stay free of carriage returns. The work
reports through a plain callable (``progress(done)``, called once per chunk,
never per entry; work in parts, such as one origin after another, reports
``progress(part, done, total)``, drawn by :meth:`Bar.parts`), so the ledger,
sync and audit layers know nothing of terminals.

tqdm is a core dependency rather than an extra: it is small, pure Python,
has no dependencies of its own, and an operator importing ten million hashes
should see the ETA without having known to install an extra.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import NoReturn, TextIO

from tqdm import tqdm

__all__ = ["Bar", "Progress", "StagedProgress", "progress_bar"]

Progress = Callable[[int], None]
"""``progress(done)``: the units done so far (absolute, not a delta)."""

StagedProgress = Callable[[str, int, int], None]
"""``progress(part, done, total)``: work in parts (an origin, a source, a phase).

The shape the lower layers report long work in when they learn each part's
total only as they reach it (``node.sync.engine.SyncProgress`` is one).
"""


class Bar:
    """What :func:`progress_bar` yields: call it with the units done so far."""

    def __init__(self, bar: tqdm[NoReturn] | None) -> None:
        self._bar = bar

    def __call__(self, done: int) -> None:
        """Move the bar to ``done`` units (called per chunk, not per entry)."""
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
            if done == self._bar.total:
                self._bar.refresh()  # the end is drawn even within mininterval

    def restart(self, total: int | None, description: str) -> None:
        """Start over for another part of the work (the next origin of a sync)."""
        if self._bar is not None:
            self._bar.reset(total=total)
            self._bar.set_description_str(description)

    def parts(self, label: str) -> StagedProgress:
        """A :data:`StagedProgress` drawing on this bar: it starts over at each new part.

        The bar reads ``LABEL PART``; a part's total is taken as first reported.
        """
        current: list[str] = []

        def report(part: str, done: int, total: int) -> None:
            if current != [part]:
                current[:] = [part]
                self.restart(total, f"{label} {part}" if part else label)
            self(done)

        return report


@contextlib.contextmanager
def progress_bar(
    stream: TextIO, total: int | None, description: str, *, unit: str = "entries"
) -> Iterator[Bar]:
    """A progress callable drawing a bar on ``stream`` if it is a terminal, else a no-op.

    Args:
        stream: where the bar goes (standard error).
        total: the units of the whole job (None: unknown, no percentage or ETA).
        description: the bar's label, like ``export csv``.
        unit: what is counted (``B`` counts bytes, scaled to kB, MB).
    """
    if not (hasattr(stream, "isatty") and stream.isatty()):
        yield Bar(None)
        return
    bar: tqdm[NoReturn] = tqdm(
        total=total,
        desc=description,
        unit=unit if unit == "B" else f" {unit}",
        unit_scale=True,
        file=stream,
        dynamic_ncols=True,
        mininterval=0.2,
        leave=False,  # the command's own summary line follows
    )
    try:
        yield Bar(bar)
    finally:
        bar.close()
