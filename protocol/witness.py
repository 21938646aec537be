"""C2SP tlog-witness: the add-checkpoint request and response bodies.

Layer: protocol (pure). This module performs no I/O.

A log asks a witness to cosign a checkpoint with ``POST add-checkpoint``
(c2sp.org/tlog-witness). The request body is::

    old <size the witness last cosigned, ASCII decimal, no leading zeros>
    <consistency proof hash, base64>       zero to 63 lines
    <blank line>
    <the signed checkpoint note>

Every line ends in a newline. The answers this module reads and writes:

* 200: one or more note signature lines (``— <name> <base64>``), the
  witness's cosignatures of the checkpoint (:func:`encode_cosignature_lines`,
  :func:`parse_cosignature_lines`);
* 409: the size of the latest checkpoint the witness cosigned for that
  origin, as decimal and a newline, with the media type
  :data:`TLOG_SIZE_MEDIA_TYPE` (:func:`encode_size_body`,
  :func:`parse_size_body`).

Parsing is strict: one spelling per request (canonical decimal and base64, no
CR, no stray blank lines), so two different bodies never mean the same
thing. Deciding whether to cosign is the witness's job (node layer).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from protocol.checkpoint import Checkpoint, CheckpointNote
from protocol.encoding import decode_b64, encode_b64, parse_decimal
from protocol.errors import MalformedError
from protocol.hashing import HASH_SIZE
from protocol.note import (
    MAX_NOTE_BYTES,
    MAX_SIGNATURES,
    Note,
    NoteSignature,
    parse_note,
    parse_signature_line,
)

__all__ = [
    "MAX_COSIGNATURE_LINES",
    "MAX_PROOF_LINES",
    "MAX_REQUEST_BYTES",
    "TLOG_SIZE_MEDIA_TYPE",
    "AddCheckpointRequest",
    "attach_cosignatures",
    "encode_cosignature_lines",
    "encode_size_body",
    "parse_cosignature_lines",
    "parse_size_body",
]

TLOG_SIZE_MEDIA_TYPE = "text/x.tlog.size"
"""Media type of a 409 answer: the witness's latest cosigned tree size."""

MAX_PROOF_LINES = 63
"""Most consistency proof lines a request may carry (the spec's limit)."""

MAX_COSIGNATURE_LINES = 16
"""Most signature lines we accept in one 200 answer (a witness has few keys)."""

_OLD_PREFIX = "old "

MAX_REQUEST_BYTES = len(_OLD_PREFIX) + 20 + MAX_PROOF_LINES * 45 + 1 + MAX_NOTE_BYTES
"""Largest well-formed request body: old line, 63 proof lines, blank line, largest note."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AddCheckpointRequest:
    """An add-checkpoint request: old size, consistency proof, checkpoint note.

    Attributes:
        old_size: the tree size the client believes the witness last cosigned
            for the origin (0 when it never did).
        proof: the RFC 6962 consistency proof from ``old_size`` to the
            checkpoint's size (empty when ``old_size`` is 0 or equal).
        note: the signed checkpoint note, exactly as sent.
    """

    old_size: int
    proof: tuple[bytes, ...]
    note: CheckpointNote

    def __post_init__(self) -> None:
        if isinstance(self.old_size, bool) or not isinstance(self.old_size, int):
            raise MalformedError("old size must be an integer", field="old")
        if self.old_size < 0:
            raise MalformedError(f"old size {self.old_size} is negative", field="old")
        if len(self.proof) > MAX_PROOF_LINES:
            raise MalformedError(
                f"{len(self.proof)} consistency proof lines exceed the maximum {MAX_PROOF_LINES}",
                field="proof",
            )
        for i, h in enumerate(self.proof):
            if not isinstance(h, bytes) or len(h) != HASH_SIZE:
                raise MalformedError(f"expected a {HASH_SIZE}-byte hash", field=f"proof[{i}]")

    @property
    def checkpoint(self) -> Checkpoint:
        """The checkpoint body as sent (not verified: only its signer can vouch for it)."""
        return Checkpoint.from_text(parse_note(self.note).text)

    def to_bytes(self) -> bytes:
        """The request body."""
        lines = [f"{_OLD_PREFIX}{self.old_size}", *(encode_b64(h) for h in self.proof)]
        return ("\n".join(lines) + "\n\n" + self.note).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> AddCheckpointRequest:
        """Parse a request body strictly.

        The note must be a well-formed signed note whose text is a checkpoint;
        its signatures are not checked here.

        Raises:
            MalformedError: naming the line that is wrong.
        """
        if len(data) > MAX_REQUEST_BYTES:
            raise MalformedError(
                f"request body of {len(data)} bytes exceeds {MAX_REQUEST_BYTES}", field="body"
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedError(f"not valid UTF-8 at byte {e.start}", field="body") from e
        head, sep, note = text.partition("\n\n")
        if not sep:
            raise MalformedError(
                "expected the old size line, proof lines, a blank line and the checkpoint",
                field="body",
            )
        lines = head.split("\n")
        first = lines[0]
        if not first.startswith(_OLD_PREFIX):
            raise MalformedError("the first line must be 'old <size>'", field="line 1")
        old_size = parse_decimal(first[len(_OLD_PREFIX) :], field="line 1")
        proof_lines = lines[1:]
        if len(proof_lines) > MAX_PROOF_LINES:
            raise MalformedError(
                f"{len(proof_lines)} consistency proof lines exceed the maximum {MAX_PROOF_LINES}",
                field="body",
            )
        proof = tuple(
            decode_b64(line, field=f"line {i + 2}", length=HASH_SIZE)
            for i, line in enumerate(proof_lines)
        )
        parsed = parse_note(note)
        Checkpoint.from_text(parsed.text)
        return cls(old_size=old_size, proof=proof, note=note)


def encode_size_body(size: int) -> bytes:
    """The body of a 409 answer: ``size`` in decimal and a newline."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise MalformedError(f"tree size {size!r} must be a non-negative integer", field="size")
    return b"%d\n" % size


def parse_size_body(data: bytes) -> int:
    """Parse the body of a 409 answer strictly.

    Raises:
        MalformedError: if it is not one canonical decimal and a newline.
    """
    if not data.endswith(b"\n"):
        raise MalformedError("expected a decimal tree size and a newline", field="size")
    try:
        text = data[:-1].decode("ascii")
    except UnicodeDecodeError as e:
        raise MalformedError("expected an ASCII decimal tree size", field="size") from e
    return parse_decimal(text, field="size")


def encode_cosignature_lines(signatures: Iterable[NoteSignature]) -> bytes:
    """The body of a 200 answer: one signature line per cosignature.

    Raises:
        MalformedError: if there is no signature.
    """
    body = "".join(s.to_line() for s in signatures)
    if not body:
        raise MalformedError("an answer needs at least one cosignature", field="signatures")
    return body.encode("utf-8")


def parse_cosignature_lines(data: bytes | str) -> tuple[NoteSignature, ...]:
    """Parse the body of a 200 answer (or a stored line) strictly.

    Which lines to trust is the caller's choice: check each with
    :func:`protocol.cosignature.verify_cosignature` and the keys it knows,
    ignoring the others.

    Raises:
        MalformedError: if the body is not 1 to :data:`MAX_COSIGNATURE_LINES`
            well-formed signature lines, each ending in a newline.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedError(f"not valid UTF-8 at byte {e.start}", field="body") from e
    else:
        text = data
    if not text.endswith("\n"):
        raise MalformedError("signature lines must end with a newline", field="body")
    lines = text[:-1].split("\n")
    if len(lines) > MAX_COSIGNATURE_LINES:
        raise MalformedError(
            f"{len(lines)} signature lines exceed the maximum {MAX_COSIGNATURE_LINES}",
            field="body",
        )
    return tuple(parse_signature_line(line, f"line {i + 1}") for i, line in enumerate(lines))


def attach_cosignatures(note: CheckpointNote | Note, signatures: Sequence[NoteSignature]) -> Note:
    """The note with ``signatures`` appended, skipping keys that already signed it.

    A key is identified by its name and key ID, as verifiers do; a line for a
    key already present is dropped rather than doubled (a verifier that knows
    the key would otherwise check both and may refuse the note). Lines beyond
    :data:`protocol.note.MAX_SIGNATURES` are dropped, so the result still parses.

    Raises:
        MalformedError: if ``note`` is not a well-formed signed note.
    """
    parsed = note if isinstance(note, Note) else parse_note(note)
    seen = {(s.name, s.key_id) for s in parsed.signatures}
    added: list[NoteSignature] = []
    for sig in signatures:
        if len(parsed.signatures) + len(added) >= MAX_SIGNATURES:
            break
        if (sig.name, sig.key_id) not in seen:
            seen.add((sig.name, sig.key_id))
            added.append(sig)
    return Note(text=parsed.text, signatures=parsed.signatures + tuple(added))
