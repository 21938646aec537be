"""C2SP tlog-cosignature/v1: timestamped Ed25519 witness cosignatures.

Layer: protocol (pure). This module performs no I/O.

A cosignature is a signed-note signature line whose key has signature type
``0x04`` (:data:`protocol.keys.SIG_COSIGNATURE_V1`). Its signature bytes are a
``timestamped_signature``: an 8-byte big-endian POSIX timestamp followed by a
64-byte Ed25519 signature over::

    cosignature/v1
    time <timestamp, ASCII decimal, no leading zeros>
    <the whole checkpoint note text, including its final newline>

By signing it, a witness states that, as of that time, this is the largest
consistent tree head it has seen for the origin. Deciding *whether* to sign is
the witness's job (node layer); this module only builds and checks the bytes.
"""

from __future__ import annotations

from protocol.encoding import MAX_UINT63
from protocol.errors import InvalidSignatureError, MalformedError
from protocol.keys import ED25519_SIGNATURE_SIZE, SIG_COSIGNATURE_V1, NoteSigner, NoteVerifier

__all__ = [
    "COSIGNATURE_HEADER",
    "COSIGNATURE_SIZE",
    "cosignature_message",
    "decode_cosignature",
    "sign_cosignature",
    "verify_cosignature",
]

COSIGNATURE_HEADER = b"cosignature/v1\n"
"""First line of the cosigned message: domain separation from plain note signatures."""

COSIGNATURE_SIZE = 8 + ED25519_SIGNATURE_SIZE
"""Bytes of a timestamped_signature (after the 4-byte key ID)."""


def _check_timestamp(timestamp: int) -> None:
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise MalformedError("timestamp must be an integer", field="cosignature.timestamp")
    if not 0 <= timestamp <= MAX_UINT63:
        raise MalformedError(
            f"timestamp {timestamp} is out of range 0..2^63-1", field="cosignature.timestamp"
        )


def cosignature_message(note_text: bytes, timestamp: int) -> bytes:
    """The exact bytes a cosigner signs for ``note_text`` at ``timestamp``."""
    _check_timestamp(timestamp)
    return COSIGNATURE_HEADER + b"time %d\n" % timestamp + note_text


def decode_cosignature(signature: bytes) -> tuple[int, bytes]:
    """Split a timestamped_signature into (timestamp, Ed25519 signature).

    Raises:
        MalformedError: if the length is wrong or the timestamp exceeds 2^63-1.
    """
    if len(signature) != COSIGNATURE_SIZE:
        raise MalformedError(
            f"cosignature is {len(signature)} bytes, want {COSIGNATURE_SIZE}",
            field="cosignature",
        )
    timestamp = int.from_bytes(signature[:8], "big")
    _check_timestamp(timestamp)
    return timestamp, signature[8:]


def sign_cosignature(signer: NoteSigner, note_text: bytes, timestamp: int) -> bytes:
    """The timestamped_signature of ``signer`` over ``note_text``.

    Raises:
        MalformedError: if ``signer`` is not a cosignature/v1 key.
    """
    if signer.sig_type != SIG_COSIGNATURE_V1:
        raise MalformedError(
            f"key {signer.name} is not a cosignature/v1 key (type 0x{signer.sig_type:02x})",
            field="signer",
        )
    message = cosignature_message(note_text, timestamp)
    return timestamp.to_bytes(8, "big") + signer.sign(message)


def verify_cosignature(verifier: NoteVerifier, note_text: bytes, signature: bytes) -> int:
    """Check a cosignature and return its timestamp.

    Raises:
        MalformedError: if the signature bytes are malformed.
        InvalidSignatureError: if it does not verify (or the key is not 0x04).
    """
    if verifier.sig_type != SIG_COSIGNATURE_V1:
        raise InvalidSignatureError(f"key {verifier.name} is not a cosignature/v1 key")
    timestamp, raw = decode_cosignature(signature)
    verifier.verify(cosignature_message(note_text, timestamp), raw)
    return timestamp
