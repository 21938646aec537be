r"""Audit bundles: a whole log, self-contained, verifiable offline.

Layer: protocol (pure). This module performs no I/O: it produces and consumes
lines; reading and writing files is the caller's business.

A bundle holds the origin's first verifier key, every signed checkpoint the node
published, and every leaf (the exact entry bytes). Format, one item per line,
each line ending in ``\\n``::

    hashmesh-bundle v1
    origin <origin>
    vkey <verifier key, C2SP signed-note text form>
    checkpoints <N>
    <base64 of the exact signed note bytes>        N lines, sizes strictly increasing
    leaves <M>
    <base64 of the exact entry bytes>              M lines, index 0 first
    end

:class:`BundleReader` is the one parser of the format (the auditor's
:func:`protocol.audit.audit_bundle` reads bundles with it too);
:func:`verify_bundle` checks a bundle completely: every checkpoint is signed by the
origin's key for that origin, every leaf is a canonical entry, every
retraction names an earlier add of the same log not already retracted, the
leaves hash (RFC 6962) to the root of every checkpoint at its size, and the
last checkpoint covers every leaf. Because every root is recomputed from the
one leaf sequence, the checkpoints are also proven append-only with respect to
each other. A log that rotated its key carries its first key; each checkpoint
is verified with the key its size calls for, following the rotate entries
among the leaves. The retraction and rotation rules are those of
:class:`protocol.rules.LogRules`.
"""

from __future__ import annotations

import binascii
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import cast

from protocol.checkpoint import Checkpoint, CheckpointNote, checkpoint_size
from protocol.encoding import decode_b64, encode_b64, parse_decimal
from protocol.entry import AddEntry, RetractEntry, parse_entry
from protocol.errors import (
    InvalidRetractionError,
    MalformedError,
    OriginMismatchError,
    RootMismatchError,
    VerificationError,
)
from protocol.hashing import hash_leaves
from protocol.keys import NoteVerifier
from protocol.note import Note, parse_note
from protocol.rotation import KeyChain
from protocol.rules import LogRules
from protocol.tree import CompactRange

__all__ = [
    "BUNDLE_MAGIC",
    "BundleHeader",
    "BundleReader",
    "BundleReport",
    "encode_bundle",
    "verify_bundle",
]

BUNDLE_MAGIC = "hashmesh-bundle v1"
_BATCH = 8192  # leaves read (and hashed) per batch


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleReport:
    """What a verified bundle contains."""

    origin: str
    size: int
    root_hash: bytes
    checkpoints: int
    adds: int
    retractions: int


def encode_bundle(
    *,
    origin: str,
    verifier_key: str,
    checkpoint_notes: Sequence[CheckpointNote],
    leaf_count: int,
    leaves: Iterable[bytes],
) -> Iterator[str]:
    """Yield the lines of a bundle, each ending in a newline.

    Args:
        origin: the log's origin.
        verifier_key: the origin's verifier key text.
        checkpoint_notes: every signed checkpoint note, by increasing size.
        leaf_count: how many leaves ``leaves`` yields.
        leaves: the exact entry bytes, index 0 first.

    Raises:
        MalformedError: if ``leaves`` yields a different number of leaves.
    """
    yield BUNDLE_MAGIC + "\n"
    yield f"origin {origin}\n"
    yield f"vkey {verifier_key}\n"
    yield f"checkpoints {len(checkpoint_notes)}\n"
    for note in checkpoint_notes:
        yield encode_b64(note.encode("utf-8")) + "\n"
    yield f"leaves {leaf_count}\n"
    written = 0
    for leaf in leaves:
        written += 1
        yield encode_b64(leaf) + "\n"
    if written != leaf_count:
        raise MalformedError(f"bundle declared {leaf_count} leaves but got {written}")
    yield "end\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleHeader:
    """A bundle's origin, key and checkpoint notes (unverified), and its leaf count.

    Attributes:
        origin: the ``origin`` line.
        vkey: the ``vkey`` line (the key the bundle carries; not trusted by itself).
        checkpoints: ``(size, note, line number)`` by strictly increasing size.
        leaf_count: the ``leaves`` count.
    """

    origin: str
    vkey: str
    checkpoints: tuple[tuple[int, CheckpointNote, int], ...]
    leaf_count: int


class BundleReader:
    """Reads a bundle's lines in order: :meth:`header`, then :meth:`leaf_batches`.

    Every error is a :class:`MalformedError` whose field names the line.
    """

    def __init__(self, lines: Iterable[bytes | str]) -> None:
        """Read from ``lines``, each with its newline (a binary file iterates this way).

        Text lines are read as their UTF-8 encoding.
        """
        self._it = _as_bytes(lines)
        self.number = 0
        """The number of the last line read (1-based)."""

    def _raw(self) -> bytes | None:
        return next(self._it, None)

    def _next(self, what: str) -> str:
        self.number += 1
        raw = self._raw()
        where = f"line {self.number}"
        if raw is None:
            raise MalformedError(f"bundle ends early: expected {what}", field=where)
        if not raw.endswith(b"\n") or raw.endswith(b"\r\n"):
            raise MalformedError("line must end with a single \\n", field=where)
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedError("not valid UTF-8", field=where) from e

    def _keyword(self, keyword: str) -> str:
        line = self._next(f"'{keyword} ...'")
        if not line.startswith(keyword + " "):
            raise MalformedError(f"expected '{keyword} ...'", field=f"line {self.number}")
        return line[len(keyword) + 1 :]

    def header(self) -> BundleHeader:
        """Read up to and including the ``leaves`` line.

        Checkpoint notes are parsed only for their size; no signature is checked.

        Raises:
            MalformedError: naming the line that is wrong.
        """
        if self._next("the header") != BUNDLE_MAGIC:
            raise MalformedError(
                f"not a bundle: first line must be {BUNDLE_MAGIC!r}", field="line 1"
            )
        origin = self._keyword("origin")
        vkey = self._keyword("vkey")
        count = parse_decimal(self._keyword("checkpoints"), field=f"line {self.number}")
        checkpoints: list[tuple[int, CheckpointNote, int]] = []
        for _ in range(count):
            text = self._next("a checkpoint")
            where = f"line {self.number}"
            try:
                note = decode_b64(text, field=where).decode("utf-8")
                size = checkpoint_size(note)
            except UnicodeDecodeError as e:
                raise MalformedError("checkpoint note is not UTF-8", field=where) from e
            except MalformedError as e:
                inner = f"{where} ({e.field})" if e.field and e.field != where else where
                raise MalformedError(e.reason, field=inner) from e
            if checkpoints and size <= checkpoints[-1][0]:
                raise MalformedError(
                    f"checkpoint sizes must increase: {size} after {checkpoints[-1][0]}",
                    field=where,
                )
            checkpoints.append((size, note, self.number))
        leaf_count = parse_decimal(self._keyword("leaves"), field=f"line {self.number}")
        return BundleHeader(
            origin=origin, vkey=vkey, checkpoints=tuple(checkpoints), leaf_count=leaf_count
        )

    def leaf_batches(self, leaf_count: int, batch: int = _BATCH) -> Iterator[list[bytes]]:
        """Yield the exact leaf bytes in batches, then check the ``end`` line.

        Each line must be canonical padded base64 ending in a single newline
        (decoding and re-encoding must give the line back). After a batch is
        yielded, :attr:`number` is the line of its last leaf.

        Raises:
            MalformedError: naming the line that is wrong.
        """
        a2b, b2a = binascii.a2b_base64, binascii.b2a_base64
        done = 0
        while done < leaf_count:
            lines = list(islice(self._it, min(batch, leaf_count - done)))
            try:
                datas = [a2b(line) for line in lines]
                canonical = [b2a(d) for d in datas] == lines
            except binascii.Error:
                canonical = False
            if not canonical or len(lines) < min(batch, leaf_count - done):
                self._locate_bad(lines, done)
            self.number += len(lines)
            done += len(lines)
            yield datas
        if self._next("'end'") != "end":
            raise MalformedError("expected 'end'", field=f"line {self.number}")
        if self._raw() is not None:
            raise MalformedError("trailing data after 'end'", field=f"line {self.number + 1}")

    def _locate_bad(self, lines: list[bytes], first_leaf: int) -> None:
        for i, line in enumerate(lines):
            where = f"line {self.number + i + 1} (leaf {first_leaf + i})"
            try:
                ok = binascii.b2a_base64(binascii.a2b_base64(line)) == line
            except binascii.Error:
                ok = False
            if not ok:
                raise MalformedError(
                    "leaf is not canonical base64 ending in a single \\n", field=where
                )
        raise MalformedError(
            "bundle ends early: expected more leaves",
            field=f"line {self.number + len(lines) + 1}",
        )


def _as_bytes(lines: Iterable[bytes | str]) -> Iterator[bytes]:
    """The lines as bytes; text lines (as tests and exports make them) are encoded."""
    it = iter(lines)
    first = next(it, None)
    if first is None:
        return iter(())
    if isinstance(first, bytes):  # a binary file: no per-line work
        return cast(Iterator[bytes], itertools.chain([first], it))
    return (x.encode("utf-8") if isinstance(x, str) else x for x in itertools.chain([first], it))


def verify_bundle(lines: Iterable[bytes | str], *, verifier_key: str | None = None) -> BundleReport:
    """Verify a whole bundle, streaming (memory grows with checkpoints, not leaves).

    Args:
        lines: the bundle's lines, each with its trailing newline (a binary
            file object iterates this way).
        verifier_key: the origin's key as the auditor knows it. When given,
            it must be the key the bundle starts with or the key the log is
            signed with at its end (after rotations); without it the bundle
            only proves self-consistency under the key it carries.

    Returns:
        A summary of the verified log.

    Raises:
        MalformedError: if the bundle, a note or an entry is malformed; the
            field names the line.
        VerificationError: if a signature, origin, retraction or root check
            fails (:class:`RootMismatchError` names the checkpoint size).
    """
    reader = BundleReader(lines)
    header = reader.header()
    origin = header.origin
    verifier = NoteVerifier.from_text(header.vkey)
    if verifier.name != origin:
        raise VerificationError(
            f"verifier key is for {verifier.name!r}, not the bundle origin {origin!r}"
        )
    checkpoints: list[tuple[int, bytes, int, Note]] = []
    for size, text, line in header.checkpoints:
        note = parse_note(text)
        cp = Checkpoint.from_text(note.text)
        if cp.origin != origin:
            raise OriginMismatchError(
                f"line {line}: checkpoint is for origin {cp.origin!r}, expected {origin!r}"
            )
        checkpoints.append((size, cp.root_hash, line, note))
    if not checkpoints:
        raise VerificationError("the bundle has no checkpoint; nothing is signed")
    if checkpoints[-1][0] != header.leaf_count:
        raise VerificationError(
            f"the latest checkpoint has size {checkpoints[-1][0]} but the bundle "
            f"has {header.leaf_count} leaves"
        )

    # Signatures are checked when the leaves reach each checkpoint's size:
    # after a key rotation the key depends on the rotate entries read so far.
    chain = KeyChain.pinned(verifier)
    rules = LogRules()
    tree = CompactRange.empty()
    adds = retractions = 0
    next_cp = 0

    def settle() -> None:
        nonlocal next_cp, chain
        while next_cp < len(checkpoints) and checkpoints[next_cp][0] == tree.size:
            size, root, line, note = checkpoints[next_cp]
            try:
                chain.open(note)
            except VerificationError as e:
                # open raises only message-only subclasses, so the same type
                # can be re-raised with the line added.
                raise type(e)(f"line {line}: {e}") from e
            chain = rules.rotations.settle(chain, size, verified=True)
            calculated = tree.root()
            if calculated != root:
                raise RootMismatchError(
                    f"leaves do not match the checkpoint of size {size} (line {line})",
                    expected=root,
                    calculated=calculated,
                )
            next_cp += 1

    settle()  # a checkpoint of size 0 is checked against the empty root
    for datas in reader.leaf_batches(header.leaf_count):
        first_line = reader.number - len(datas) + 1
        # Up to each checkpoint's size at a time, so that failures are
        # raised in log order.
        pos = 0
        while pos < len(datas):
            end = min(len(datas), pos + checkpoints[next_cp][0] - tree.size)
            for i in range(pos, end):
                index = tree.size + i - pos
                where = f"line {first_line + i} (leaf {index})"
                try:
                    entry = parse_entry(datas[i])
                except MalformedError as e:
                    raise MalformedError(e.reason, field=f"{where} {e.field or ''}".strip()) from e
                try:
                    rules.append(entry)
                except InvalidRetractionError as e:
                    raise InvalidRetractionError(f"{where}: {e}") from e
                if isinstance(entry, AddEntry):
                    adds += 1
                elif isinstance(entry, RetractEntry):
                    retractions += 1
            tree.extend(hash_leaves(datas[pos:end]))
            pos = end
            settle()
    if verifier_key is not None and verifier_key not in (header.vkey, chain.current.to_text()):
        raise VerificationError(
            f"the bundle's log starts with key {header.vkey!r} and is now signed by "
            f"{chain.current.to_text()!r}; neither is the expected {verifier_key!r}"
        )
    return BundleReport(
        origin=origin,
        size=tree.size,
        root_hash=tree.root(),
        checkpoints=len(checkpoints),
        adds=adds,
        retractions=retractions,
    )
