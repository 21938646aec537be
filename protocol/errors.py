"""Exceptions raised by the protocol core.

Layer: protocol (pure). This module performs no I/O.

Every error that ``protocol`` raises on bad input derives from
:class:`ProtocolError`. Parsing and verifying fail differently, as in
pyca/cryptography (``ValueError`` versus ``InvalidSignature``):

::

    ProtocolError
    ├── MalformedError (also a ValueError)   input cannot be parsed, is not
    │   │                                    canonical, or is out of range
    │   └── UnsupportedVersionError          a format version we do not know
    └── VerificationError                    input parses, but a check fails
        ├── InvalidSignatureError            a signature does not verify
        ├── UnknownKeyError                  no trusted key for a name/key hash
        ├── RotationError                    a key rotation not attested by the
        │                                    key it replaces
        ├── InvalidRetractionError           a retraction of a missing, non-add
        │                                    or already retracted entry
        ├── OriginMismatchError              a checkpoint of another log
        ├── QuorumError                      too few witness cosignatures
        ├── ProofError                       a proof has the wrong shape
        │   └── RootMismatchError            a proof leads to another root
        │       └── TileMismatchError        (in protocol.tiles, as it names a
        │                                    TileId) a published tile that does
        │                                    not hash to a trusted value
        └── InconsistencyError               two signed checkpoints that
                                             cannot both be true (evidence)

Messages are lower case, name the offending field and give the expected and
actual values where that helps, never whole objects or secrets.
"""

from __future__ import annotations

__all__ = [
    "InconsistencyError",
    "InvalidRetractionError",
    "InvalidSignatureError",
    "MalformedError",
    "OriginMismatchError",
    "ProofError",
    "ProtocolError",
    "QuorumError",
    "RootMismatchError",
    "RotationError",
    "UnknownKeyError",
    "UnsupportedVersionError",
    "VerificationError",
]


class ProtocolError(Exception):
    """Root of every error the protocol core raises."""


class MalformedError(ProtocolError, ValueError):
    """The input cannot be parsed, is not in canonical form, or is out of range.

    Attributes:
        field: dotted name of the offending field or line (``"signal.value"``,
            ``"line 2"``), or ``None`` when the input as a whole is bad.
        reason: the message without the field prefix.
    """

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


class UnsupportedVersionError(MalformedError):
    """The input declares a format version this implementation does not know."""


class VerificationError(ProtocolError):
    """The input is well formed, but a cryptographic or proof check failed."""


class InvalidSignatureError(VerificationError):
    """A signature does not verify under the key it names."""


class UnknownKeyError(VerificationError):
    """No trusted verifier key matches the required name or key hash."""


class RotationError(VerificationError):
    """A key rotation that the key it replaces did not attest.

    A log hands its signing role to a new key with a ``rotate`` entry at index
    ``r``, and the old key must sign the checkpoint of size ``r + 1`` that
    commits it; anything else could be forged by whoever holds the new key.
    """


class InvalidRetractionError(VerificationError):
    """A retraction that does not name an earlier add of its log not yet retracted.

    The rule is applied by :class:`protocol.rules.LogRules`.
    """


class OriginMismatchError(VerificationError):
    """A checkpoint names another origin than the log it is checked for.

    The origin line is a log's identity: a checkpoint of one log must never
    pass as another's, even when both are signed by keys we trust.
    """


class QuorumError(VerificationError):
    """Fewer trusted witnesses cosigned a checkpoint than the policy requires."""


class ProofError(VerificationError):
    """A Merkle proof has the wrong shape for the sizes and index it claims."""


class RootMismatchError(ProofError):
    """A proof, or a set of leaves, leads to a root other than the expected one.

    Attributes:
        expected: the trusted root hash (32 bytes).
        calculated: the root hash the proof or leaves produce (32 bytes).
    """

    def __init__(self, reason: str, *, expected: bytes, calculated: bytes) -> None:
        self.expected = expected
        self.calculated = calculated
        super().__init__(f"{reason}: calculated root {calculated.hex()}, expected {expected.hex()}")


class InconsistencyError(VerificationError):
    """Two validly signed checkpoints of one origin cannot both be true.

    This is evidence of a rewritten or split log. It carries everything needed
    to re-verify the claim offline.

    Attributes:
        older_raw: the exact signed note of the smaller (or first) checkpoint.
        newer_raw: the exact signed note of the larger (or second) checkpoint.
        proof: the consistency proof that failed (possibly empty).
    """

    def __init__(
        self,
        reason: str,
        *,
        older_raw: bytes,
        newer_raw: bytes,
        proof: tuple[bytes, ...] = (),
    ) -> None:
        self.older_raw = older_raw
        self.newer_raw = newer_raw
        self.proof = proof
        super().__init__(reason)
