"""C2SP signed notes: text signed by one or more keys.

Layer: protocol (pure). This module performs no I/O.

Format (c2sp.org/signed-note)::

    <text: one or more lines, each ending in a newline>
    <blank line>
    — <key name> <base64(4-byte big-endian key ID || signature)>
    ...

The text includes its final newline; it is separated from the signature
lines by the *last* blank line. A note is valid UTF-8 with no control
characters other than newline.

Verification rules (:func:`open_note`), from the spec:

* signatures from unknown keys are ignored, even when they share a name or a
  key ID (but not both) with a known key;
* a signature from a known key must verify, or the whole note is rejected;
* at least one known key must have signed, or the note is rejected.

We are stricter than the spec where it leaves room: every signature line must
be well formed (canonical base64, a valid key name), at most
:data:`MAX_SIGNATURES` lines, and a key that signed twice counts once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from protocol.cosignature import sign_cosignature, verify_cosignature
from protocol.encoding import decode_b64, encode_b64
from protocol.errors import MalformedError, UnknownKeyError
from protocol.keys import SIG_COSIGNATURE_V1, SIG_ED25519, NoteSigner, NoteVerifier, check_key_name

__all__ = [
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "Note",
    "NoteSignature",
    "VerifiedNote",
    "VerifiedSignature",
    "open_note",
    "parse_note",
    "parse_signature_line",
    "sign_note",
]

MAX_NOTE_BYTES = 128 * 1024
"""Largest note we parse (text and signatures)."""

MAX_SIGNATURES = 100
"""Most signature lines we accept (the spec requires at least 16)."""

SIGNATURE_PREFIX = "\u2014 "
"""Em dash (U+2014) and a space: the start of every signature line."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NoteSignature:
    """One signature line: key name, key ID and the signature bytes after the ID."""

    name: str
    key_id: int
    signature: bytes

    def to_line(self) -> str:
        """The signature line, with its final newline."""
        payload = self.key_id.to_bytes(4, "big") + self.signature
        return f"{SIGNATURE_PREFIX}{self.name} {encode_b64(payload)}\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class Note:
    """A parsed (not yet verified) signed note."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def to_text(self) -> str:
        """The note in its text form; parsing it again gives the same note."""
        return self.text + "\n" + "".join(s.to_line() for s in self.signatures)

    def to_bytes(self) -> bytes:
        """UTF-8 bytes of :meth:`to_text`."""
        return self.to_text().encode("utf-8")


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedSignature:
    """A signature that verified under a trusted key."""

    verifier: NoteVerifier
    timestamp: int | None
    """For cosignature/v1 keys, the cosigned time (POSIX seconds); else None."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedNote:
    """A note whose text is signed by at least one trusted key."""

    note: Note
    verified: tuple[VerifiedSignature, ...]

    @property
    def text(self) -> str:
        """The signed text (only meaningful because a trusted key signed it)."""
        return self.note.text

    def signed_by(self, verifier: NoteVerifier) -> VerifiedSignature | None:
        """The verified signature of ``verifier``, if it signed."""
        for v in self.verified:
            if v.verifier == verifier:
                return v
        return None


def _decode(data: bytes | str) -> str:
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as e:
            raise MalformedError("note contains a lone surrogate", field="note") from e
        text = data
    else:
        raw = bytes(data)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedError(f"note is not valid UTF-8 at byte {e.start}", field="note") from e
    if len(raw) > MAX_NOTE_BYTES:
        raise MalformedError(f"note is larger than {MAX_NOTE_BYTES} bytes", field="note")
    for i, ch in enumerate(text):
        if (ord(ch) < 0x20 and ch != "\n") or ch == "\x7f":
            line = text.count("\n", 0, i) + 1
            raise MalformedError(
                f"control character {ch!r} is not allowed in a note", field=f"note line {line}"
            )
    return text


def parse_note(data: bytes | str) -> Note:
    """Split a signed note into its text and signature lines, strictly.

    No signature is checked here: use :func:`open_note`.

    Raises:
        MalformedError: naming the line that is wrong.
    """
    text = _decode(data)
    if not text.endswith("\n"):
        raise MalformedError("a signed note must end with a newline", field="note")
    split = text.rfind("\n\n")
    if split < 0:
        raise MalformedError("no blank line separates the text from the signatures", field="note")
    body, sig_block = text[: split + 1], text[split + 2 :]
    if not sig_block:
        raise MalformedError("the note has no signature lines", field="note")
    first_line = body.count("\n") + 2
    lines = sig_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedError(
            f"{len(lines)} signature lines exceed the maximum {MAX_SIGNATURES}", field="note"
        )
    signatures = tuple(
        parse_signature_line(line, f"note line {first_line + i}") for i, line in enumerate(lines)
    )
    return Note(text=body, signatures=signatures)


def parse_signature_line(line: str, where: str) -> NoteSignature:
    """One signature line (``— <key name> <base64 of key ID and signature>``), strictly.

    Also the form of tlog-witness cosignature lines. ``where`` names the line
    in errors (``"note line 4"``).

    Raises:
        MalformedError: naming ``where``.
    """
    if not line.startswith(SIGNATURE_PREFIX):
        raise MalformedError(
            "a signature line must start with an em dash (U+2014) and a space", field=where
        )
    rest = line[len(SIGNATURE_PREFIX) :]
    name, sep, b64 = rest.partition(" ")
    if not sep:
        raise MalformedError("expected '— <key name> <base64 signature>'", field=where)
    check_key_name(name, field=f"{where} key name")
    payload = decode_b64(b64, field=f"{where} signature")
    if len(payload) < 5:
        raise MalformedError("signature is shorter than 5 bytes", field=f"{where} signature")
    return NoteSignature(
        name=name, key_id=int.from_bytes(payload[:4], "big"), signature=payload[4:]
    )


def _sign(signer: NoteSigner, text: bytes, timestamp: int | None) -> NoteSignature:
    verifier = signer.verifier()
    if signer.sig_type == SIG_COSIGNATURE_V1:
        if timestamp is None:
            raise MalformedError(f"cosigner {signer.name} needs a timestamp", field="timestamp")
        signature = sign_cosignature(signer, text, timestamp)
    else:
        signature = signer.sign(text)
    return NoteSignature(name=signer.name, key_id=verifier.key_id, signature=signature)


def sign_note(
    text: str | Note,
    signers: Iterable[NoteSigner],
    *,
    timestamp: int | None = None,
) -> str:
    """Sign a text (or add signatures to a parsed note) and return the note text.

    Args:
        text: the note text, ending in a newline, or an existing note whose
            signatures are kept (new ones follow them).
        signers: the keys to sign with, in order.
        timestamp: POSIX seconds, required for cosignature/v1 signers.

    Raises:
        MalformedError: if the text cannot be a note text or a cosigner has no
            timestamp.
    """
    if isinstance(text, Note):
        body, existing = text.text, text.signatures
    else:
        body, existing = text, ()
        _check_text(body)
    raw = body.encode("utf-8")
    added = tuple(_sign(s, raw, timestamp) for s in signers)
    if not existing and not added:
        raise MalformedError("a note needs at least one signature", field="signers")
    return Note(text=body, signatures=existing + added).to_text()


def _check_text(text: str) -> None:
    _decode(text)
    if not text.endswith("\n"):
        raise MalformedError("note text must end with a newline", field="text")
    if text.startswith("\n") or "\n\n" in text:
        # Blank lines are legal in note text, but ours never need them and a
        # text ending in one would be mis-split by every verifier.
        raise MalformedError("note text must not contain blank lines", field="text")


def open_note(data: bytes | str | Note, verifiers: Sequence[NoteVerifier]) -> VerifiedNote:
    """Parse a note and verify it against trusted keys (signed-note rules).

    Args:
        data: the exact note bytes as received (or an already parsed note).
        verifiers: the trusted keys. Signatures by other keys are ignored.

    Returns:
        The note with the signatures that verified, each key counted once.

    Raises:
        MalformedError: if the note is malformed.
        InvalidSignatureError: if a signature by a trusted key does not verify.
        UnknownKeyError: if no trusted key signed the note.
    """
    note = data if isinstance(data, Note) else parse_note(data)
    known = {(v.name, v.key_id): v for v in verifiers}
    raw = note.text.encode("utf-8")
    verified: dict[tuple[str, int], VerifiedSignature] = {}
    for sig in note.signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            continue
        timestamp: int | None = None
        if verifier.sig_type == SIG_ED25519:
            verifier.verify(raw, sig.signature)
        else:
            timestamp = verify_cosignature(verifier, raw, sig.signature)
        verified.setdefault(
            (sig.name, sig.key_id), VerifiedSignature(verifier=verifier, timestamp=timestamp)
        )
    if not verified:
        names = ", ".join(f"{v.name} ({v.key_id:08x})" for v in verifiers) or "none given"
        raise UnknownKeyError(f"the note is not signed by any trusted key (trusted: {names})")
    return VerifiedNote(note=note, verified=tuple(verified.values()))
