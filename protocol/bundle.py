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

:func:`verify_bundle` checks it completely: every checkpoint is signed by the
origin's key for that origin, every leaf is a canonical entry, every
retraction names an earlier add of the same log not already retracted, the
leaves hash (RFC 6962) to the root of every checkpoint at its size, and the
last checkpoint covers every leaf. Because every root is recomputed from the
one leaf sequence, the checkpoints are also proven append-only with respect to
each other. A log that rotated its key carries its first key; each checkpoint
is verified with the key its size calls for, following the rotate entries
among the leaves (``protocol.rotation``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from protocol.checkpoint import Checkpoint
from protocol.encoding import decode_b64, encode_b64, parse_decimal
from protocol.entry import AddEntry, RetractEntry, RotateEntry, parse_entry
from protocol.errors import (
    MalformedError,
    OriginMismatchError,
    RootMismatchError,
    VerificationError,
)
from protocol.hashing import hash_leaves
from protocol.keys import NoteVerifier
from protocol.note import Note, parse_note
from protocol.rotation import KeyChain
from protocol.tree import CompactRange

__all__ = ["BUNDLE_MAGIC", "BundleReport", "encode_bundle", "verify_bundle"]

BUNDLE_MAGIC = "hashmesh-bundle v1"
_BATCH = 8192  # leaves hashed per CompactRange.extend call


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
    checkpoint_notes: Sequence[str],
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


class _Lines:
    """Numbered access to the bundle's lines with precise errors."""

    def __init__(self, lines: Iterable[bytes | str]) -> None:
        self._it = iter(lines)
        self.number = 0

    def next(self, what: str) -> str:
        self.number += 1
        try:
            raw = next(self._it)
        except StopIteration:
            raise MalformedError(
                f"bundle ends early: expected {what}", field=f"line {self.number}"
            ) from None
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise MalformedError("not valid UTF-8", field=f"line {self.number}") from e
        if not raw.endswith("\n") or raw.endswith("\r\n"):
            raise MalformedError("line must end with a single \\n", field=f"line {self.number}")
        return raw[:-1]

    def keyword(self, keyword: str) -> str:
        line = self.next(f"'{keyword} ...'")
        prefix = keyword + " "
        if not line.startswith(prefix):
            raise MalformedError(f"expected '{keyword} ...'", field=f"line {self.number}")
        return line[len(prefix) :]

    def at_end(self) -> bool:
        try:
            next(self._it)
        except StopIteration:
            return True
        return False


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
    src = _Lines(lines)
    if src.next("the header") != BUNDLE_MAGIC:
        raise MalformedError(f"not a bundle: first line must be {BUNDLE_MAGIC!r}", field="line 1")
    origin = src.keyword("origin")
    vkey_text = src.keyword("vkey")
    verifier = NoteVerifier.from_text(vkey_text)
    if verifier.name != origin:
        raise VerificationError(
            f"verifier key is for {verifier.name!r}, not the bundle origin {origin!r}"
        )
    count = parse_decimal(src.keyword("checkpoints"), field=f"line {src.number}")
    # Signatures are checked when the leaves reach each checkpoint's size:
    # after a key rotation (protocol.rotation) the key depends on the rotate
    # entries read so far.
    checkpoints: list[tuple[int, bytes, int, Note]] = []
    for _ in range(count):
        text = src.next("a checkpoint")
        where = f"line {src.number}"
        try:
            note = parse_note(_b64(text, where))
            cp = Checkpoint.from_text(note.text)
        except MalformedError as e:
            raise MalformedError(
                e.reason, field=f"{where} ({e.field})" if e.field else where
            ) from e
        if cp.origin != origin:
            raise OriginMismatchError(
                f"{where}: checkpoint is for origin {cp.origin!r}, expected {origin!r}"
            )
        if checkpoints and cp.size <= checkpoints[-1][0]:
            raise MalformedError(
                f"checkpoint sizes must increase: {cp.size} after {checkpoints[-1][0]}",
                field=where,
            )
        checkpoints.append((cp.size, cp.root_hash, src.number, note))
    leaf_count = parse_decimal(src.keyword("leaves"), field=f"line {src.number}")
    if not checkpoints:
        raise VerificationError("the bundle has no checkpoint; nothing is signed")
    if checkpoints[-1][0] != leaf_count:
        raise VerificationError(
            f"the latest checkpoint has size {checkpoints[-1][0]} but the bundle "
            f"has {leaf_count} leaves"
        )

    chain = KeyChain.pinned(verifier)
    rotations: list[tuple[int, RotateEntry]] = []
    tree = CompactRange.empty()
    is_add = bytearray()
    retracted: set[int] = set()
    adds = retractions = 0
    pending: list[bytes] = []
    next_cp = 0

    def settle() -> None:
        nonlocal next_cp, chain
        tree.extend(hash_leaves(pending))
        pending.clear()
        while next_cp < len(checkpoints) and checkpoints[next_cp][0] == tree.size:
            size, root, line, note = checkpoints[next_cp]
            try:
                chain.open(note)
            except VerificationError as e:
                # open raises only message-only subclasses, so the same type
                # can be re-raised with the line added.
                raise type(e)(f"line {line}: {e}") from e
            for index, rotation in rotations:
                chain = chain.apply(index, rotation, size)
            rotations.clear()
            calculated = tree.root()
            if calculated != root:
                raise RootMismatchError(
                    f"leaves do not match the checkpoint of size {size} (line {line})",
                    expected=root,
                    calculated=calculated,
                )
            next_cp += 1

    settle()  # a checkpoint of size 0 is checked against the empty root
    for index in range(leaf_count):
        where = f"line {src.number + 1} (leaf {index})"
        data = _b64(src.next(f"leaf {index}"), where)
        try:
            entry = parse_entry(data)
        except MalformedError as e:
            raise MalformedError(e.reason, field=f"{where} {e.field or ''}".strip()) from e
        if isinstance(entry, AddEntry):
            adds += 1
            is_add.append(1)
        else:
            is_add.append(0)
            if isinstance(entry, RetractEntry):
                target = entry.index
                if target >= index or not is_add[target]:
                    raise VerificationError(
                        f"{where}: retracts entry {target}, which is not an earlier add"
                    )
                if target in retracted:
                    raise VerificationError(
                        f"{where}: retracts entry {target}, which is already retracted"
                    )
                retracted.add(target)
                retractions += 1
            elif isinstance(entry, RotateEntry):
                rotations.append((index, entry))
        pending.append(data)
        if len(pending) >= _BATCH or (
            next_cp < len(checkpoints) and tree.size + len(pending) == checkpoints[next_cp][0]
        ):
            settle()
    settle()
    if src.next("'end'") != "end":
        raise MalformedError("expected 'end'", field=f"line {src.number}")
    if not src.at_end():
        raise MalformedError("trailing data after 'end'", field=f"line {src.number + 1}")
    if verifier_key is not None and verifier_key not in (vkey_text, chain.current.to_text()):
        raise VerificationError(
            f"the bundle's log starts with key {vkey_text!r} and is now signed by "
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


def _b64(text: str, where: str) -> bytes:
    return decode_b64(text, field=where)
