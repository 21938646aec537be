"""Ed25519 signer and verifier keys in the C2SP signed-note text forms.

Layer: protocol (pure). This module performs no I/O. It is the only module
that touches PyNaCl, so every third-party error is translated here, once.

Text forms (C2SP signed-note, "verifier keys"; Go's ``golang.org/x/mod/sumdb/note``)::

    verifier key:  <name>+<key ID, 8 lowercase hex>+<base64(signature type || public key)>
    signer key:    PRIVATE+KEY+<name>+<key ID>+<base64(signature type || 32-byte seed)>

Key ID = ``SHA-256(name || 0x0A || signature type || public key)[:4]``, as a
big-endian uint32. Two signature types are supported:

* ``0x01`` (:data:`SIG_ED25519`): Ed25519 over the note text; logs sign their
  checkpoints with it.
* ``0x04`` (:data:`SIG_COSIGNATURE_V1`): timestamped Ed25519 witness
  cosignatures, C2SP tlog-cosignature (see :mod:`protocol.cosignature`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import nacl.exceptions
import nacl.signing

from protocol.encoding import decode_b64, encode_b64
from protocol.errors import InvalidSignatureError, MalformedError

__all__ = [
    "ED25519_SIGNATURE_SIZE",
    "SIG_COSIGNATURE_V1",
    "SIG_ED25519",
    "NoteSigner",
    "NoteVerifier",
    "check_key_name",
    "compute_key_id",
]

SIG_ED25519 = 0x01
"""Signature type byte of plain Ed25519 note signatures."""

SIG_COSIGNATURE_V1 = 0x04
"""Signature type byte of timestamped Ed25519 cosignatures (tlog-cosignature)."""

ED25519_SIGNATURE_SIZE = 64
_KEY_SIZE = 32
_SUPPORTED_TYPES = {SIG_ED25519: "Ed25519", SIG_COSIGNATURE_V1: "cosignature/v1 (Ed25519)"}
_MAX_NAME_CHARS = 256
_KEY_ID_HEX = re.compile(r"[0-9a-f]{8}")
_PRIVATE_PREFIX = "PRIVATE+KEY+"


def check_key_name(name: str, *, field: str = "name") -> None:
    """Reject key names the signed-note spec forbids.

    A name must be non-empty and contain no Unicode space and no ``+``. We also
    reject control characters (a note may not contain them) and cap the length.

    Raises:
        MalformedError: naming ``field``.
    """
    if not isinstance(name, str) or not name:
        raise MalformedError("key name must be a non-empty string", field=field)
    if len(name) > _MAX_NAME_CHARS:
        raise MalformedError(f"key name longer than {_MAX_NAME_CHARS} characters", field=field)
    for ch in name:
        if ch == "+" or ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise MalformedError(
                f"key name must not contain {ch!r} (no spaces, '+' or control characters)",
                field=field,
            )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise MalformedError("key name contains a lone surrogate", field=field) from e


def compute_key_id(name: str, sig_type: int, public_key: bytes) -> int:
    """The signed-note key ID: first 4 bytes of SHA-256(name || 0x0A || type || key)."""
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public_key)
    return int.from_bytes(digest.digest()[:4], "big")


def _check_type(sig_type: int, field: str) -> None:
    if sig_type not in _SUPPORTED_TYPES:
        raise MalformedError(
            f"unsupported signature type 0x{sig_type:02x}; supported: "
            + ", ".join(f"0x{t:02x} {n}" for t, n in _SUPPORTED_TYPES.items()),
            field=field,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class NoteVerifier:
    """A public key that verifies note signatures of one name and key ID.

    Attributes:
        name: the key name (for a log, its origin).
        sig_type: :data:`SIG_ED25519` or :data:`SIG_COSIGNATURE_V1`.
        public_key: the 32-byte Ed25519 public key.
        key_id: the signed-note key ID (uint32), derived from the other fields.
    """

    name: str
    sig_type: int
    public_key: bytes
    key_id: int = field(init=False)
    _nacl: nacl.signing.VerifyKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_key_name(self.name, field="vkey.name")
        _check_type(self.sig_type, "vkey.type")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != _KEY_SIZE:
            raise MalformedError(f"public key must be {_KEY_SIZE} bytes", field="vkey.key")
        try:
            verify_key = nacl.signing.VerifyKey(self.public_key)
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as e:
            raise MalformedError(f"not an Ed25519 public key: {e}", field="vkey.key") from e
        object.__setattr__(
            self, "key_id", compute_key_id(self.name, self.sig_type, self.public_key)
        )
        object.__setattr__(self, "_nacl", verify_key)

    @classmethod
    def from_text(cls, text: str) -> NoteVerifier:
        """Parse ``<name>+<key ID>+<base64(type || key)>`` strictly.

        The key ID in the text must equal the one computed from name, type and
        key (a mismatch means a corrupted or spliced key).

        Raises:
            MalformedError: naming the part that is wrong.
        """
        if not isinstance(text, str):
            raise MalformedError("verifier key must be text", field="vkey")
        if text.startswith(_PRIVATE_PREFIX):
            raise MalformedError(
                "this is a private signer key, not a verifier key; never share it", field="vkey"
            )
        # Names hold no '+', base64 may: split at the first two only.
        parts = text.split("+", 2)
        if len(parts) != 3:
            raise MalformedError("expected <name>+<8 hex key ID>+<base64 key>", field="vkey")
        name, id_hex, b64 = parts
        check_key_name(name, field="vkey.name")
        if not _KEY_ID_HEX.fullmatch(id_hex):
            raise MalformedError("key ID must be 8 lowercase hex digits", field="vkey.key_id")
        raw = decode_b64(b64, field="vkey.key", length=1 + _KEY_SIZE)
        verifier = cls(name=name, sig_type=raw[0], public_key=raw[1:])
        if verifier.key_id != int(id_hex, 16):
            raise MalformedError(
                f"key ID {id_hex} does not match the key (computed {verifier.key_id:08x})",
                field="vkey.key_id",
            )
        return verifier

    def to_text(self) -> str:
        """The verifier key text, to give to peers and auditors."""
        return (
            f"{self.name}+{self.key_id:08x}+{encode_b64(bytes([self.sig_type]) + self.public_key)}"
        )

    def verify(self, message: bytes, signature: bytes) -> None:
        """Check a raw Ed25519 signature over ``message``.

        This is the bare primitive: which bytes are signed depends on the
        signature type and is decided by :mod:`protocol.note` and
        :mod:`protocol.cosignature`.

        Raises:
            InvalidSignatureError: if the signature does not verify.
        """
        if len(signature) != ED25519_SIGNATURE_SIZE:
            raise InvalidSignatureError(
                f"signature by {self.name} ({self.key_id:08x}) is {len(signature)} bytes, "
                f"want {ED25519_SIGNATURE_SIZE}"
            )
        try:
            self._nacl.verify(message, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError) as e:
            raise InvalidSignatureError(
                f"signature by {self.name} ({self.key_id:08x}) does not verify"
            ) from e


@dataclass(frozen=True, slots=True, kw_only=True)
class NoteSigner:
    """A private Ed25519 key that signs notes under one name.

    ``repr`` never shows the seed.
    """

    name: str
    sig_type: int
    seed: bytes = field(repr=False)
    _nacl: nacl.signing.SigningKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_key_name(self.name, field="skey.name")
        _check_type(self.sig_type, "skey.type")
        if not isinstance(self.seed, bytes) or len(self.seed) != _KEY_SIZE:
            raise MalformedError(f"seed must be {_KEY_SIZE} bytes", field="skey.key")
        object.__setattr__(self, "_nacl", nacl.signing.SigningKey(self.seed))

    @classmethod
    def generate(cls, name: str, sig_type: int = SIG_ED25519) -> NoteSigner:
        """A new key from the operating system's random source (via libsodium)."""
        key = nacl.signing.SigningKey.generate()
        return cls(name=name, sig_type=sig_type, seed=bytes(key))

    @classmethod
    def from_seed(cls, name: str, seed: bytes, sig_type: int = SIG_ED25519) -> NoteSigner:
        """A key from a 32-byte RFC 8032 seed (tests and conformance vectors)."""
        return cls(name=name, sig_type=sig_type, seed=seed)

    @classmethod
    def from_text(cls, text: str) -> NoteSigner:
        """Parse ``PRIVATE+KEY+<name>+<key ID>+<base64(type || seed)>`` strictly.

        Raises:
            MalformedError: naming the part that is wrong (never echoing the key).
        """
        if not isinstance(text, str) or not text.startswith(_PRIVATE_PREFIX):
            raise MalformedError("expected a key starting with PRIVATE+KEY+", field="skey")
        parts = text[len(_PRIVATE_PREFIX) :].split("+", 2)
        if len(parts) != 3:
            raise MalformedError(
                "expected PRIVATE+KEY+<name>+<8 hex key ID>+<base64 seed>", field="skey"
            )
        name, id_hex, b64 = parts
        check_key_name(name, field="skey.name")
        if not _KEY_ID_HEX.fullmatch(id_hex):
            raise MalformedError("key ID must be 8 lowercase hex digits", field="skey.key_id")
        try:
            raw = decode_b64(b64, field="skey.key", length=1 + _KEY_SIZE)
        except MalformedError as e:
            raise MalformedError(e.reason, field="skey.key") from None
        signer = cls(name=name, sig_type=raw[0], seed=raw[1:])
        if signer.verifier().key_id != int(id_hex, 16):
            raise MalformedError("key ID does not match the key", field="skey.key_id")
        return signer

    def to_text(self) -> str:
        """The private key text (store it with mode 0600; never print it)."""
        return (
            f"{_PRIVATE_PREFIX}{self.name}+{self.verifier().key_id:08x}+"
            f"{encode_b64(bytes([self.sig_type]) + self.seed)}"
        )

    def verifier(self) -> NoteVerifier:
        """The matching verifier key."""
        return NoteVerifier(
            name=self.name,
            sig_type=self.sig_type,
            public_key=bytes(self._nacl.verify_key),
        )

    def sign(self, message: bytes) -> bytes:
        """The raw 64-byte Ed25519 signature of ``message`` (RFC 8032, deterministic)."""
        return bytes(self._nacl.sign(message).signature)
