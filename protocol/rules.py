"""The rules a log's entries obey beyond their encoding: retractions and key rotations.

Layer: protocol (pure). This module performs no I/O: what the rules need to
know of the entries before those they are shown comes from a
:class:`LogHistory` the caller supplies (the node's database), or from
nothing for a log read from its first entry.

An entry is canonical on its own (:mod:`protocol.entry`); these rules are
about its place in its log, and every reader of a log applies them through
one :class:`LogRules`: the node writing its own log or a replica
(``node.ledger``), the auditor replaying a bundle
(:func:`protocol.audit.audit_bundle`) and ``verify-bundle``
(:func:`protocol.bundle.verify_bundle`).

* A ``retract`` entry at index ``i`` names an earlier ``add`` of the same log
  (index ``< i``) that no earlier retraction named.
* A ``rotate`` entry at index ``r`` hands the log to a new key once the
  checkpoint of size ``r + 1``, verified with the old key, commits it
  (:meth:`protocol.rotation.KeyChain.apply`); until then it is *pending*.
  A rotation to the key already trusted at that size changes nothing and
  needs no such checkpoint.

* An ``opinion`` entry may name any entry of any log, so no rule of its
  own log constrains it. What counts about an entry is, of each author, the
  latest opinion bound to that entry's exact bytes (its leaf hash): an
  opinion about another version of the same index, in a forked log, says
  nothing about this one (:func:`current_opinions`; matching applies it).

Applying the rules costs one byte per entry shown and nothing per add of a
batch known to hold only adds (:meth:`LogRules.extend_adds`), so the bulk
write path pays no per-entry Python work for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

from protocol.entry import AddEntry, Entry, OpinionEntry, RetractEntry, RotateEntry
from protocol.errors import InvalidRetractionError, RotationError
from protocol.rotation import KeyChain

__all__ = ["LogHistory", "LogRules", "OpinionRecord", "PendingRotations", "current_opinions"]

# The kind of each entry shown, one byte each.
_INVALID, _ADD, _RETRACT, _OPINION, _ROTATE = range(5)
_KIND_NAMES = ("invalid entry", "add", "retract", "opinion", "rotate")
_KIND_OF: dict[type, int] = {
    AddEntry: _ADD,
    RetractEntry: _RETRACT,
    OpinionEntry: _OPINION,
    RotateEntry: _ROTATE,
}


class LogHistory(Protocol):
    """What the rules ask about the entries before the first one they are shown."""

    def kind_at(self, index: int) -> str | None:
        """The kind (``add``, ``retract``, ...) of the entry at ``index``, None if not held."""
        ...

    def retracted_by(self, index: int) -> int | None:
        """The index of the retraction of entry ``index``, if any."""
        ...


class LogRules:
    """The retraction and rotation rules of one log, applied to its entries in order.

    Show it every entry of the log from ``start`` on, in log order, with
    :meth:`append`, :meth:`extend` or :meth:`extend_adds`; it raises on the
    first entry that breaks a retraction rule and keeps the rotate entries in
    :attr:`rotations` until a checkpoint settles them.
    """

    __slots__ = ("_history", "_kinds", "_retracted", "rotations", "start")

    def __init__(self, start: int = 0, history: LogHistory | None = None) -> None:
        """Rules for the entries from index ``start`` on.

        Args:
            start: the index of the first entry to be shown.
            history: what the log holds before ``start`` (needed when
                ``start > 0`` and a retraction names an entry before it).
        """
        self.start = start
        self._history = history
        self._kinds = bytearray()
        self._retracted: dict[int, int] = {}
        self.rotations = PendingRotations()
        """The rotate entries shown, until a checkpoint settles them."""

    @property
    def size(self) -> int:
        """The log size after the entries shown: the index of the next one."""
        return self.start + len(self._kinds)

    def append(self, entry: Entry | None) -> None:
        """Take the next entry of the log.

        Args:
            entry: the entry, or None for one that did not parse (it then
                counts as an entry that no retraction may name).

        Raises:
            InvalidRetractionError: if it is a retraction of a missing, non-add
                or already retracted entry. The entry is taken all the same
                (its target stays as it was), so a caller that reports and
                goes on keeps the indexes right.
        """
        index = self.size
        kind = _INVALID if entry is None else _KIND_OF[type(entry)]
        self._kinds.append(kind)
        if kind == _RETRACT:
            assert isinstance(entry, RetractEntry)
            self._retract(entry.index, index)
        elif kind == _ROTATE:
            assert isinstance(entry, RotateEntry)
            self.rotations.add(index, entry)

    def extend(self, entries: Sequence[Entry]) -> None:
        """Take the next entries of the log, in order (see :meth:`append`)."""
        kinds = bytes(map(_KIND_OF.__getitem__, map(type, entries)))
        if _RETRACT not in kinds and _ROTATE not in kinds:
            self._kinds += kinds  # nothing to check: one C-level pass per batch
            return
        for entry in entries:
            self.append(entry)

    def extend_adds(self, count: int) -> None:
        """Take ``count`` add entries (a batch the caller knows holds only adds)."""
        self._kinds += bytes([_ADD]) * count

    def kind_at(self, index: int) -> str | None:
        """The kind of the entry at ``index``, from the entries shown or the history."""
        if index >= self.start:
            at = index - self.start
            return _KIND_NAMES[self._kinds[at]] if at < len(self._kinds) else None
        return None if self._history is None else self._history.kind_at(index)

    def _retract(self, target: int, index: int) -> None:
        if target >= index:
            raise InvalidRetractionError(
                f"retracts entry {target}, but entry {target} does not exist (the log has "
                f"{index} entries before it)"
            )
        kind = self.kind_at(target)
        if kind is None:
            raise InvalidRetractionError(
                f"retracts entry {target}, but entry {target} does not exist (it is not held)"
            )
        if kind != "add":
            article = "an" if kind[0] in "aeiou" else "a"
            raise InvalidRetractionError(
                f"retracts entry {target}, which is {article} {kind}, not an add"
            )
        by = self._retracted.get(target)
        if by is None and target < self.start and self._history is not None:
            by = self._history.retracted_by(target)
        if by is not None:
            raise InvalidRetractionError(
                f"retracts entry {target}, which is already retracted by entry {by}"
            )
        self._retracted[target] = index


class PendingRotations:
    """Rotate entries of a log whose checkpoint of size ``r + 1`` has not been reached.

    A reader that parses every entry gets one from :class:`LogRules`; one
    that only looks for rotations (a bundle audit without entry checks)
    adds them itself.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        """No rotation pending."""
        self._pending: list[tuple[int, RotateEntry]] = []

    def __bool__(self) -> bool:
        return bool(self._pending)

    def add(self, index: int, entry: RotateEntry) -> None:
        """A rotate entry at ``index`` (indexes increase)."""
        self._pending.append((index, entry))

    def due(self, size: int) -> bool:
        """Whether a rotation is settled when the log reaches ``size``."""
        return bool(self._pending) and self._pending[0][0] < size

    def settle(self, chain: KeyChain, size: int, *, verified: bool) -> KeyChain:
        """The key chain once the log has reached ``size``.

        Settles the rotations at indexes below ``size``: with ``verified`` (a
        checkpoint of ``size`` verified with ``chain`` commits them) each is
        applied (:meth:`KeyChain.apply`, which accepts only the checkpoint of
        size ``r + 1``); without, each must name the key already trusted.
        They are settled, applied or refused, once: none stays pending.

        Raises:
            RotationError: for the first one refused.
        """
        due = [(r, e) for r, e in self._pending if r < size]
        if not due:
            return chain
        del self._pending[: len(due)]
        for index, entry in due:
            if verified:
                chain = chain.apply(index, entry, size)
            elif entry.verifier != chain.verifier_for(index + 1):
                raise RotationError(
                    f"rotate entry {index} is not committed by a checkpoint of size "
                    f"{index + 1} signed by the old key; the new key is not trusted"
                )
        return chain


class OpinionRecord(Protocol):
    """An opinion entry as a reader holds it: who, where, and the bytes it is bound to."""

    @property
    def author(self) -> str:
        """The origin of the log holding the opinion entry."""
        ...

    @property
    def index(self) -> int:
        """The opinion entry's index in its author's log."""
        ...

    @property
    def target_leaf_hash(self) -> bytes:
        """The leaf hash of the entry the opinion is about."""
        ...


_Opinion = TypeVar("_Opinion", bound=OpinionRecord)


def current_opinions(opinions: Iterable[_Opinion], leaf_hash: bytes) -> list[_Opinion]:
    """The opinions that count about an entry with ``leaf_hash``, by author.

    Of each author, the latest (highest index) of the opinions bound to
    exactly ``leaf_hash``; the others are outdated or about another version
    of the entry.
    """
    latest: dict[str, _Opinion] = {}
    for opinion in opinions:
        if opinion.target_leaf_hash != leaf_hash:
            continue
        held = latest.get(opinion.author)
        if held is None or opinion.index > held.index:
            latest[opinion.author] = opinion
    return [latest[author] for author in sorted(latest)]
