"""C2SP tlog-checkpoint bodies, signed and opened as C2SP signed notes.

Layer: protocol (pure). This module performs no I/O.

A checkpoint body (c2sp.org/tlog-checkpoint) is at least three non-empty
lines, each ending in a newline::

    <origin>                      the log's identity
    <tree size>                   ASCII decimal, no leading zeros
    <root hash>                   standard padded base64 of 32 bytes
    <extension line>...           optional, opaque, non-empty

A log signs its checkpoints with an Ed25519 note key whose name is the
origin. :func:`open_checkpoint` verifies the log's signature *before* it
parses the body, then requires the body's origin to be the key's name, so a
checkpoint of one log can never verify as another's. Witness cosignatures
(plain Ed25519 or tlog-cosignature/v1 lines by other keys) are counted
against an optional k-of-n policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from protocol.encoding import MAX_UINT63, decode_b64, encode_b64, parse_decimal
from protocol.errors import (
    MalformedError,
    OriginMismatchError,
    QuorumError,
    UnknownKeyError,
)
from protocol.hashing import HASH_SIZE
from protocol.keys import SIG_ED25519, NoteSigner, NoteVerifier
from protocol.note import Note, VerifiedNote, open_note, parse_note, sign_note

__all__ = [
    "Checkpoint",
    "CheckpointNote",
    "VerifiedCheckpoint",
    "checkpoint_size",
    "cosign_checkpoint",
    "open_checkpoint",
    "sign_checkpoint",
]


def _check_line(text: str, field: str) -> None:
    if not isinstance(text, str) or not text:
        raise MalformedError("must be a non-empty line", field=field)
    if "\n" in text or any(ord(c) < 0x20 or c == "\x7f" for c in text):
        raise MalformedError("must not contain newlines or control characters", field=field)


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """A log's tree head: origin, tree size and root hash (RFC 6962 SHA-256)."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "checkpoint.origin")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise MalformedError("tree size must be an integer", field="checkpoint.size")
        if not 0 <= self.size <= MAX_UINT63:
            raise MalformedError(
                f"tree size {self.size} is out of range 0..2^63-1", field="checkpoint.size"
            )
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_SIZE:
            raise MalformedError(f"root hash must be {HASH_SIZE} bytes", field="checkpoint.root")
        for i, ext in enumerate(self.extensions):
            _check_line(ext, f"checkpoint.extensions[{i}]")

    def to_text(self) -> str:
        """The checkpoint body: the note text that the log signs."""
        lines = [self.origin, str(self.size), encode_b64(self.root_hash), *self.extensions]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body strictly (one canonical form).

        Raises:
            MalformedError: naming the line that is wrong.
        """
        if not text.endswith("\n"):
            raise MalformedError("checkpoint text must end with a newline", field="checkpoint")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise MalformedError(
                f"checkpoint needs origin, size and root lines, got {len(lines)} line(s)",
                field="checkpoint",
            )
        origin, size_text, root_text, *extensions = lines
        if not origin:
            raise MalformedError("origin line is empty", field="checkpoint.origin")
        size = parse_decimal(size_text, field="checkpoint.size")
        root = decode_b64(root_text, field="checkpoint.root", length=HASH_SIZE)
        for i, ext in enumerate(extensions):
            if not ext:
                raise MalformedError(
                    "extension lines must be non-empty", field=f"checkpoint line {4 + i}"
                )
        return cls(origin=origin, size=size, root_hash=root, extensions=tuple(extensions))


CheckpointNote: TypeAlias = str
"""The exact text of a signed checkpoint note, as signed, served and stored.

The one spelling of a checkpoint that stays text: what is signed, relayed,
kept in evidence and in the database. Parsed, it is a :class:`Checkpoint`
body; opened with the origin's key, a :class:`VerifiedCheckpoint`; stored,
a ``CheckpointRecord`` (``node.storage``).
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedCheckpoint:
    """A checkpoint whose log signature verified, with the witnesses that cosigned it.

    Attributes:
        checkpoint: the parsed body.
        note: the parsed signed note (all signature lines, verified or not).
        cosignatures: witness name -> cosigned timestamp (None for plain
            Ed25519 witness signatures), for trusted witnesses that verified.
        source: where it was seen, for a verifier comparing several sources
            (a node URL, a bundle path); empty when there is only one.
    """

    checkpoint: Checkpoint
    note: Note
    cosignatures: Mapping[str, int | None]
    source: str = ""

    @property
    def size(self) -> int:
        """The tree size."""
        return self.checkpoint.size

    @property
    def root_hash(self) -> bytes:
        """The signed root hash."""
        return self.checkpoint.root_hash

    @property
    def text(self) -> CheckpointNote:
        """The signed note's text (signature lines included)."""
        return self.note.to_text()


def sign_checkpoint(checkpoint: Checkpoint, signer: NoteSigner) -> CheckpointNote:
    """Sign a checkpoint as the log: the signed note text.

    Raises:
        MalformedError: if the signer's name is not the checkpoint's origin, or
            it is not a plain Ed25519 key.
    """
    if signer.name != checkpoint.origin:
        raise MalformedError(
            f"key {signer.name!r} cannot sign a checkpoint of origin {checkpoint.origin!r}",
            field="signer",
        )
    if signer.sig_type != SIG_ED25519:
        raise MalformedError(
            "a log signs its checkpoints with an Ed25519 (0x01) key", field="signer"
        )
    return sign_note(checkpoint.to_text(), [signer])


def cosign_checkpoint(
    note: bytes | CheckpointNote | Note, witness: NoteSigner, timestamp: int
) -> CheckpointNote:
    """Add a witness's signature line to a signed checkpoint note.

    The caller (a witness) must already have checked the checkpoint: this only
    produces the bytes. A cosignature/v1 key signs with ``timestamp``; a plain
    Ed25519 witness key ignores it.

    Raises:
        MalformedError: if the note or its body is malformed.
    """
    parsed = note if isinstance(note, Note) else parse_note(note)
    Checkpoint.from_text(parsed.text)
    return sign_note(parsed, [witness], timestamp=timestamp)


def open_checkpoint(
    note: bytes | CheckpointNote | Note,
    verifier: NoteVerifier,
    *,
    origin: str | None = None,
    witnesses: Sequence[NoteVerifier] = (),
    witness_threshold: int = 0,
) -> VerifiedCheckpoint:
    """Verify a signed checkpoint: the log's signature, its origin, its witnesses.

    Args:
        note: the exact signed note as received.
        verifier: the log's verifier key; its name must be the origin line.
        origin: the origin the caller expects, if it knows one.
        witnesses: trusted witness keys; their signatures must verify if
            present, others are ignored.
        witness_threshold: how many distinct ``witnesses`` must have cosigned.

    Returns:
        The verified checkpoint.

    Raises:
        MalformedError: if the note or body is malformed or the policy is
            impossible (threshold above the number of witnesses).
        InvalidSignatureError: if a signature by a trusted key fails.
        UnknownKeyError: if the log's key did not sign the note.
        OriginMismatchError: if the body names another origin.
        QuorumError: if too few witnesses cosigned.
    """
    if isinstance(witness_threshold, bool) or not 0 <= witness_threshold <= len(witnesses):
        raise MalformedError(
            f"witness threshold {witness_threshold} is impossible with {len(witnesses)} "
            "witness key(s)",
            field="witness_threshold",
        )
    opened: VerifiedNote = open_note(note, [verifier, *witnesses])
    if opened.signed_by(verifier) is None:
        raise UnknownKeyError(
            f"the checkpoint is not signed by the log key {verifier.name} ({verifier.key_id:08x})"
        )
    # Parse only what the log's key has signed.
    checkpoint = Checkpoint.from_text(opened.text)
    if checkpoint.origin != verifier.name:
        raise OriginMismatchError(
            f"checkpoint origin {checkpoint.origin!r} is not the key's name {verifier.name!r}"
        )
    if origin is not None and checkpoint.origin != origin:
        raise OriginMismatchError(
            f"checkpoint is for origin {checkpoint.origin!r}, expected {origin!r}"
        )
    cosignatures = {v.verifier.name: v.timestamp for v in opened.verified if v.verifier != verifier}
    if len(cosignatures) < witness_threshold:
        raise QuorumError(
            f"{len(cosignatures)} of the required {witness_threshold} witness "
            f"cosignature(s) verified"
            + (f" ({', '.join(sorted(cosignatures))})" if cosignatures else "")
        )
    return VerifiedCheckpoint(checkpoint=checkpoint, note=opened.note, cosignatures=cosignatures)


def checkpoint_size(note: CheckpointNote) -> int:
    """The tree size a note claims, before any signature is checked (to plan fetches).

    Raises:
        MalformedError: if the note or its body is malformed.
    """
    return Checkpoint.from_text(parse_note(note).text).size
