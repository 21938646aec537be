"""Key chains: which key signs an origin's checkpoints at which tree size.

Layer: protocol (pure). This module performs no I/O.

A log rotates its signing key by appending a ``rotate`` entry
(:class:`protocol.entry.RotateEntry`) at some index ``r`` and signing the
checkpoint of size ``r + 1`` with the *old* key. From then on:

* the old key signs checkpoints of size ``<= r + 1`` only;
* the new key signs checkpoints of size ``>= r + 2``.

So the key of a checkpoint follows from its size alone, checkpoints signed
before the rotation keep verifying, and a checkpoint signed by the old key
beyond ``r + 1`` (say by someone who stole it) is refused. The new key is
trusted because the old key signed a tree that contains the rotation; a
rotation carried only by checkpoints that the new key signed proves nothing
and raises :class:`~protocol.errors.RotationError`.

A verifier starts a chain from a key it trusts (:meth:`KeyChain.pinned`,
usually the key from a peer's card) and applies rotations as it reads the
log's entries (:meth:`KeyChain.apply`). A rotation to the key already
trusted at that size (a verifier who pinned the current key) is accepted
without the old key's checkpoint and changes nothing: the pinned key alone
vouches for the tree.

A verifier that may not read a log's entries (an auditor) learns a rotation
from the rotate entry's bytes, the old key's checkpoint of size ``r + 1`` and
the entry's inclusion proof in that tree (:func:`apply_rotation_proof`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protocol.checkpoint import Checkpoint, CheckpointNote, VerifiedCheckpoint, open_checkpoint
from protocol.entry import RotateEntry, parse_entry
from protocol.errors import MalformedError, RotationError, UnknownKeyError
from protocol.hashing import hash_leaf
from protocol.keys import NoteVerifier
from protocol.merkle import verify_inclusion
from protocol.note import Note, parse_note

__all__ = ["KeyChain", "KeyPeriod", "apply_rotation_proof"]


@dataclass(frozen=True, slots=True)
class KeyPeriod:
    """One link of a chain: ``verifier`` signs checkpoints of size ``>= from_size``.

    Attributes:
        from_size: the smallest checkpoint size this key signs.
        verifier: the key.
        rotated_by: the index of the rotate entry that introduced it, or None
            for the key the chain started from.
    """

    from_size: int
    verifier: NoteVerifier
    rotated_by: int | None = None


@dataclass(frozen=True, slots=True)
class KeyChain:
    """The keys of one origin, ordered by the sizes they sign.

    Each period ends where the next begins; the last is open-ended.
    """

    origin: str
    periods: tuple[KeyPeriod, ...]

    def __post_init__(self) -> None:
        if not self.periods:
            raise MalformedError("a key chain needs at least one key", field="periods")
        previous = -1
        for i, period in enumerate(self.periods):
            if period.verifier.name != self.origin:
                raise MalformedError(
                    f"key {period.verifier.name!r} is not named after origin {self.origin!r}",
                    field=f"periods[{i}]",
                )
            if period.from_size <= previous:
                raise MalformedError(
                    "periods must start at increasing sizes", field=f"periods[{i}].from_size"
                )
            previous = period.from_size

    @classmethod
    def pinned(cls, verifier: NoteVerifier) -> KeyChain:
        """A chain trusting ``verifier`` for every size, until a rotation says otherwise."""
        return cls(verifier.name, (KeyPeriod(0, verifier),))

    @property
    def current(self) -> NoteVerifier:
        """The key that signs the newest checkpoints."""
        return self.periods[-1].verifier

    def verifier_for(self, size: int) -> NoteVerifier:
        """The key that must have signed a checkpoint of tree size ``size``.

        Raises:
            UnknownKeyError: if ``size`` is below the first period (a chain
                started from a later key cannot check older checkpoints).
        """
        chosen: KeyPeriod | None = None
        for period in self.periods:
            if period.from_size > size:
                break
            chosen = period
        if chosen is None:
            raise UnknownKeyError(
                f"no key of {self.origin} is known for checkpoints of size {size} (the chain "
                f"starts at size {self.periods[0].from_size})"
            )
        return chosen.verifier

    def open(
        self,
        note: bytes | CheckpointNote | Note,
        *,
        witnesses: Sequence[NoteVerifier] = (),
        witness_threshold: int = 0,
    ) -> VerifiedCheckpoint:
        """Verify a checkpoint of this origin with the key its size calls for.

        The body is parsed before the signature is checked only to read the
        size; nothing from it is returned unless the signature verifies.

        Raises:
            MalformedError, VerificationError: as
                :func:`protocol.checkpoint.open_checkpoint`; an
                :class:`~protocol.errors.UnknownKeyError` names the key
                expected for the size.
        """
        parsed = note if isinstance(note, Note) else parse_note(note)
        size = Checkpoint.from_text(parsed.text).size
        verifier = self.verifier_for(size)
        try:
            return open_checkpoint(
                parsed,
                verifier,
                origin=self.origin,
                witnesses=witnesses,
                witness_threshold=witness_threshold,
            )
        except UnknownKeyError as e:
            raise UnknownKeyError(
                f"checkpoint of {self.origin} at size {size} is not signed by the key for "
                f"that size ({verifier.to_text()})"
                + (
                    "; that key was rotated out, so a signature by an older key is not accepted"
                    if verifier is not self.periods[0].verifier
                    else ""
                )
            ) from e

    def apply(self, index: int, entry: RotateEntry, checkpoint_size: int) -> KeyChain:
        """The chain after the rotate entry at ``index``.

        Args:
            index: the rotate entry's index in the log.
            entry: the rotate entry.
            checkpoint_size: the size of the checkpoint, already verified with
                *this* chain, that the entry was proven against.

        Returns:
            The new chain (``self`` if the entry names the key already trusted).

        Raises:
            RotationError: if the new key is not named after the origin, or
                the checkpoint is not the one of size ``index + 1`` (only that
                one, signed by the old key, attests the rotation).
        """
        new = entry.verifier
        if new.name != self.origin:
            raise RotationError(
                f"rotate entry {index} names a key of {new.name!r}, not of origin {self.origin!r}"
            )
        if index + 1 > checkpoint_size:
            raise RotationError(
                f"rotate entry {index} is beyond the checkpoint of size {checkpoint_size}"
            )
        old = self.verifier_for(index + 1)
        if new == old:
            return self
        if checkpoint_size != index + 1:
            raise RotationError(
                f"rotate entry {index} of {self.origin} must be committed by the old key's "
                f"checkpoint of size {index + 1}, not one of size {checkpoint_size}"
            )
        if any(p.from_size == index + 2 and p.verifier == new for p in self.periods):
            return self  # already in the chain (learnt from a saved state or another source)
        if self.periods[-1].from_size > index + 1:
            raise RotationError(
                f"rotate entry {index} of {self.origin} comes before a later rotation already "
                "applied"
            )
        return KeyChain(self.origin, (*self.periods, KeyPeriod(index + 2, new, index)))


def apply_rotation_proof(
    chain: KeyChain,
    index: int,
    entry_bytes: bytes,
    proof: Sequence[bytes],
    checkpoint_note: bytes | CheckpointNote | Note,
) -> KeyChain:
    """The chain after a rotate entry proven by the checkpoint that commits it.

    For a verifier that does not hold the log's entries: the exact bytes of
    the entry at ``index``, the checkpoint of size ``index + 1`` (which the
    key *this* chain trusts for that size must have signed) and the
    inclusion proof of the entry in that tree. A rotation to the key the
    chain already trusts at that size is a no-op and needs no proof (as
    :meth:`KeyChain.apply`): the chain is returned unchanged.

    Args:
        chain: the origin's chain before the rotation.
        index: the rotate entry's index in the log.
        entry_bytes: the entry's exact bytes (the leaf data).
        proof: the inclusion proof of leaf ``index`` in the tree of size
            ``index + 1``.
        checkpoint_note: the signed checkpoint note of size ``index + 1``.

    Returns:
        The extended chain (``chain`` itself for a no-op rotation).

    Raises:
        MalformedError: if the entry, the note or the proof is malformed.
        RotationError: if the entry is not a rotate entry, the checkpoint is
            not of size ``index + 1``, or :meth:`KeyChain.apply` refuses it.
        UnknownKeyError: if the checkpoint is not signed by the key the chain
            trusts for its size (the old key), say by the new key.
        ProofError: if the inclusion proof does not lead to the checkpoint's
            root (the bytes are not the committed entry).
    """
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise MalformedError("expected a non-negative entry index", field="index")
    try:
        entry = parse_entry(entry_bytes)
    except MalformedError as e:
        raise MalformedError(f"entry {index} does not parse: {e}") from e
    if not isinstance(entry, RotateEntry):
        raise RotationError(f"entry {index} is not a rotate entry (its kind is {entry.kind!r})")
    if entry.verifier == chain.verifier_for(index + 1):
        return chain
    checkpoint = chain.open(checkpoint_note).checkpoint
    if checkpoint.size != index + 1:
        raise RotationError(
            f"rotate entry {index} of {chain.origin} must be proven against the checkpoint of "
            f"size {index + 1}, not one of size {checkpoint.size}"
        )
    verify_inclusion(index, index + 1, hash_leaf(entry_bytes), proof, checkpoint.root_hash)
    return chain.apply(index, entry, index + 1)
