"""Witnessing: cosign the checkpoints of followed origins, and require cosignatures.

Layer: node.ledger. Uses :mod:`node.storage` for I/O and :mod:`protocol` for
every signature, proof and format.

**As a witness** (C2SP tlog-witness), a node cosigns checkpoints of the
origins it follows (it knows their keys: ``follows`` and the key chain).
:meth:`Witness.add_checkpoint` verifies the log's signature with the
origin's key, then, inside ONE ``BEGIN IMMEDIATE`` transaction: checks that
the client's old size is the size it last cosigned for the origin (else a
conflict carrying that size), that a checkpoint of that same size has the
same root, and that the consistency proof leads from its stored root to the
new one; only then it signs a cosignature/v1 line and saves the new state.
The write lock is held from the check to the save, so two concurrent
requests (threads, or a CLI and a server process) cannot both pass against
the same old state: the witness never cosigns two checkpoints that
contradict each other, across restarts too (the state is in SQLite).

**The witness key** is the node's own Ed25519 cosignature/v1 key (type
``0x04``) named ``<origin>/witness``, kept in ``witness.key`` (mode 0600)
beside ``signing.key`` and made on first use. It is a separate key because
a cosignature states something else than a log signature, and the C2SP
cosignature message does not name the cosigner. ``hashmesh witness vkey``
prints it for the operators of the logs it witnesses.

**As a follower**, a node may require k of n named witnesses for an origin
(``[[witness.require]]`` in ``config.toml``); :func:`open_with_quorum`
refuses a checkpoint without quorum before anything is written. Cosignature
lines held for a checkpoint (``cosignatures``) are served appended to its
note (:func:`served_note`), so they travel with the checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from node.config import NodeConfig, WitnessRequirement
from node.errors import (
    ConfigError,
    UnknownLogError,
    WitnessConflictError,
    WitnessProofError,
)
from node.ledger.key_files import read_key_file, write_key_file
from node.ledger.rotation import load_key_chain
from node.storage.ledger_store import CheckpointRecord, LedgerStore
from protocol.checkpoint import Checkpoint, CheckpointNote, VerifiedCheckpoint
from protocol.cosignature import sign_cosignature, verify_cosignature
from protocol.errors import MalformedError, ProtocolError, QuorumError
from protocol.hashing import EMPTY_ROOT
from protocol.keys import SIG_COSIGNATURE_V1, NoteSigner, NoteVerifier
from protocol.merkle import verify_consistency
from protocol.note import Note, NoteSignature, parse_note
from protocol.rotation import KeyChain
from protocol.witness import attach_cosignatures, parse_cosignature_lines

__all__ = [
    "WITNESS_NAME_SUFFIX",
    "Cosigned",
    "QuorumWait",
    "Weighed",
    "Witness",
    "load_witness_signer",
    "open_with_quorum",
    "quorum_waits",
    "save_cosignatures",
    "served_note",
    "verified_cosignatures",
    "weigh_cosignatures",
    "witness_name",
]

log = logging.getLogger("hashmesh.witness")

WITNESS_NAME_SUFFIX = "/witness"
"""Appended to the node's origin to name its witness key."""


def witness_name(origin: str) -> str:
    """The name of the witness key of the node whose log is ``origin``."""
    return origin + WITNESS_NAME_SUFFIX


def load_witness_signer(config: NodeConfig, *, create: bool = True) -> NoteSigner:
    """The node's witness key, made on first use when ``create`` is set.

    Creation uses ``O_EXCL``, so a server and a CLI making it at once end up
    with one key (the loser reads the winner's).

    Raises:
        ConfigError: if the key is missing (and not created), unreadable,
            readable by others, not cosignature/v1, or named for another node.
    """
    path = config.witness_key_path
    name = witness_name(config.origin)
    if create and not path.exists():
        signer = NoteSigner.generate(name, SIG_COSIGNATURE_V1)
        try:
            write_key_file(path, signer)
        except FileExistsError:
            pass  # another process made it first: read theirs below
        else:
            log.info("made the witness key %s in %s", signer.verifier().to_text(), path)
    signer = read_key_file(path, "witness key")
    if signer.sig_type != SIG_COSIGNATURE_V1 or signer.name != name:
        raise ConfigError(
            f"witness key {path} must be a cosignature/v1 key named {name!r} "
            f"(it is {signer.name!r}, type 0x{signer.sig_type:02x})"
        )
    return signer


@dataclass(frozen=True, slots=True)
class Cosigned:
    """A cosignature this node made as a witness.

    Attributes:
        origin: the checkpoint's origin.
        size: the checkpoint's tree size.
        timestamp: the cosigned time (POSIX seconds).
        signature: the signature line's parts.
        relayed: whether this node holds that very checkpoint of the origin
            (it replicates the log), so it serves it with the new line and
            should announce it to its own followers at once.
    """

    origin: str
    size: int
    timestamp: int
    signature: NoteSignature
    relayed: bool = False

    @property
    def line(self) -> str:
        """The signature line, with its final newline (the 200 answer's body)."""
        return self.signature.to_line()


class Witness:
    """This node as a C2SP tlog-witness for the origins it follows."""

    def __init__(
        self,
        store: LedgerStore,
        signer: NoteSigner,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Witness with ``signer`` over ``store``.

        Args:
            store: the node's store (its connection is used for the state).
            signer: the witness key (cosignature/v1).
            clock: the time source for cosignature timestamps; it is called
                inside the transaction, after every check (tests use it to
                hold a request there).

        Raises:
            ConfigError: if ``signer`` is not a cosignature/v1 key.
        """
        if signer.sig_type != SIG_COSIGNATURE_V1:
            raise ConfigError(f"witness key {signer.name} is not a cosignature/v1 key")
        self.store = store
        self.state = store.witnessing
        self.signer = signer
        self._clock = clock

    def _chain(self, origin: str) -> KeyChain:
        if self.store.peers.get_follow(origin) is None:
            raise UnknownLogError(
                f"this node does not witness {origin!r}: it witnesses only the origins it follows"
            )
        return load_key_chain(self.store, origin)

    def add_checkpoint(
        self, old_size: int, proof: Sequence[bytes], note: CheckpointNote
    ) -> Cosigned:
        """Cosign ``note`` if it extends the checkpoint last cosigned for its origin.

        Args:
            old_size: the size the client says we last cosigned (0: never).
            proof: the consistency proof from ``old_size`` to the checkpoint.
            note: the signed checkpoint note.

        Returns:
            The cosignature (also saved as the origin's new state).

        Raises:
            MalformedError: if the note is malformed or ``old_size`` exceeds
                the checkpoint's size (400).
            UnknownLogError: if the origin is not followed here (404).
            VerificationError: if the origin's key did not sign it (403).
            WitnessConflictError: if ``old_size`` is not our size, or it is
                the checkpoint's size and the roots differ (409, with our size).
            WitnessProofError: if the proof does not verify (422).
        """
        parsed = parse_note(note)
        origin = Checkpoint.from_text(parsed.text).origin
        checkpoint = self._chain(origin).open(parsed).checkpoint
        size = checkpoint.size
        if old_size > size:
            raise MalformedError(
                f"old size {old_size} is larger than the checkpoint's size {size}", field="old"
            )
        with self.store.transaction():
            state = self.state.get_state(origin)
            have_size = 0 if state is None else state.size
            have_root = EMPTY_ROOT if state is None else state.root_hash
            if old_size != have_size:
                raise WitnessConflictError(
                    f"{origin}: old size {old_size} is not the size {have_size} this witness "
                    "last cosigned; retry from that size",
                    origin=origin,
                    size=have_size,
                )
            if size == have_size and checkpoint.root_hash != have_root:
                log.warning(
                    "refused a checkpoint of %s at size %d whose root differs from the one "
                    "cosigned: the log shows two histories",
                    origin,
                    size,
                )
                raise WitnessConflictError(
                    f"{origin}: a checkpoint of size {size} with another root hash was "
                    "already cosigned; this witness never cosigns both",
                    origin=origin,
                    size=have_size,
                )
            try:
                verify_consistency(have_size, size, have_root, checkpoint.root_hash, list(proof))
            except ProtocolError as e:
                log.warning(
                    "refused a checkpoint of %s at size %d: not consistent with size %d (%s)",
                    origin,
                    size,
                    have_size,
                    e,
                )
                raise WitnessProofError(
                    f"{origin}: the consistency proof from size {have_size} to {size} does "
                    f"not verify: {e}"
                ) from e
            timestamp = int(self._clock())
            raw = sign_cosignature(self.signer, parsed.text.encode("utf-8"), timestamp)
            signature = NoteSignature(
                name=self.signer.name, key_id=self.signer.verifier().key_id, signature=raw
            )
            self.state.save_state(origin, size, checkpoint.root_hash, note)
            relayed = self._keep_own(origin, checkpoint, signature)
        return Cosigned(origin, size, timestamp, signature, relayed)

    def _keep_own(self, origin: str, checkpoint: Checkpoint, signature: NoteSignature) -> bool:
        """Serve our cosignature with the origin's checkpoint when we relay its log.

        Followers downstream (C syncing A's log from us, B) then receive the
        cosignature with the note. The entries may not have arrived yet: the
        line waits for the checkpoint of that size, and is never attached to a
        checkpoint of that size with another root (that would be a fork).

        Returns:
            Whether the checkpoint itself is held here: then it is served with
            the line from now on and should be announced at once; otherwise
            the sync that brings it announces it.
        """
        try:
            log_ = self.store.get_log(origin)
        except UnknownLogError:
            # Nothing replicated yet: register the log as the replica's first
            # batch would (its pinned key), so the line is kept for the
            # checkpoint our sync is about to fetch, and served with it.
            follow = self.store.peers.get_follow(origin)
            if follow is None:
                return False
            log_ = self.store.create_log(origin, follow.vkey, is_own=False)
        held = self.store.get_checkpoint(log_.log_id, checkpoint.size)
        if held is not None and held.root_hash != checkpoint.root_hash:
            return False
        line = signature.to_line()[:-1]
        self.state.add_cosignatures(
            log_.log_id, checkpoint.size, [(signature.name, signature.key_id, line)]
        )
        return held is not None


def verified_cosignatures(
    note: Note, signatures: Iterable[NoteSignature], witnesses: Sequence[NoteVerifier]
) -> list[NoteSignature]:
    """The ``signatures`` that are valid cosignatures of ``note`` by one of ``witnesses``.

    Lines by other keys are ignored (signed-note rules), and so are lines by
    a known key that do not verify: a relay could add those, and dropping
    them keeps a genuine copy of the checkpoint usable.
    """
    return [sig for sig, _timestamp in _verify_each(note, signatures, witnesses)]


def _verify_each(
    note: Note, signatures: Iterable[NoteSignature], witnesses: Sequence[NoteVerifier]
) -> list[tuple[NoteSignature, int]]:
    known = {(w.name, w.key_id): w for w in witnesses if w.sig_type == SIG_COSIGNATURE_V1}
    text = note.text.encode("utf-8")
    good: list[tuple[NoteSignature, int]] = []
    for sig in signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            continue
        try:
            timestamp = verify_cosignature(verifier, text, sig.signature)
        except ProtocolError as e:
            log.debug("ignored a cosignature line by %s: %s", sig.name, e)
            continue
        good.append((sig, timestamp))
    return good


@dataclass(frozen=True, slots=True)
class Weighed:
    """A checkpoint opened with its origin's key chain, and its cosignatures counted.

    Attributes:
        opened: the verified checkpoint; its note carries the origin's
            signature(s) and every verified cosignature by a required
            witness, from the note and from the lines collected before.
        signed: the required witnesses whose cosignature verified, by name.
        threshold: how many the policy requires.
        counted: every required witness, by name.
    """

    opened: VerifiedCheckpoint
    signed: tuple[str, ...]
    threshold: int
    counted: tuple[str, ...]

    @property
    def met(self) -> bool:
        """Whether the policy is met."""
        return len(self.signed) >= self.threshold

    @property
    def missing(self) -> tuple[str, ...]:
        """The required witnesses whose cosignature is not held."""
        return tuple(n for n in self.counted if n not in self.signed)

    def refusal(self) -> str:
        """The one-line reason a checkpoint short of the policy is refused."""
        return (
            f"{self.opened.checkpoint.origin}: checkpoint of size {self.opened.checkpoint.size} "
            f"is cosigned by {len(self.signed)} of the {self.threshold} required witness(es) "
            f"(signed: {', '.join(self.signed) or 'none'}; counted: {', '.join(self.counted)}); "
            "nothing was written"
        )


def weigh_cosignatures(
    chain: KeyChain,
    note: CheckpointNote | Note,
    requirement: WitnessRequirement,
    *,
    collected: CheckpointNote | Note | None = None,
) -> Weighed:
    """Open a checkpoint with its origin's key chain and count its required cosignatures.

    Args:
        chain: the origin's key chain.
        note: the checkpoint as received.
        requirement: the witness policy for the origin.
        collected: the same checkpoint as seen before (another peer's copy,
            kept while waiting); its verified lines count too when its text
            is the same. Lines of another checkpoint never verify, so they
            never count.

    Raises:
        MalformedError, VerificationError: as :meth:`KeyChain.open`.
    """
    opened = chain.open(note)
    witnesses = requirement.verifiers()
    good = _verify_each(opened.note, opened.note.signatures, witnesses)
    if collected is not None:
        earlier = collected if isinstance(collected, Note) else parse_note(collected)
        if earlier.text == opened.note.text:
            good += _verify_each(opened.note, earlier.signatures, witnesses)
    by_name: dict[str, tuple[NoteSignature, int]] = {}
    for sig, timestamp in good:
        by_name.setdefault(sig.name, (sig, timestamp))
    # A line under a required key that did not verify is dropped, so it
    # cannot shadow a good line for that key collected from elsewhere.
    required = {(w.name, w.key_id) for w in witnesses}
    kept = tuple(s for s in opened.note.signatures if (s.name, s.key_id) not in required)
    merged = attach_cosignatures(
        Note(text=opened.note.text, signatures=kept), [sig for sig, _t in by_name.values()]
    )
    return Weighed(
        opened=VerifiedCheckpoint(
            checkpoint=opened.checkpoint,
            note=merged,
            cosignatures={**opened.cosignatures, **{n: t for n, (_s, t) in by_name.items()}},
        ),
        signed=tuple(sorted(by_name)),
        threshold=requirement.threshold,
        counted=tuple(w.name for w in witnesses),
    )


def open_with_quorum(
    chain: KeyChain,
    note: CheckpointNote | Note,
    requirement: WitnessRequirement | None,
    *,
    collected: CheckpointNote | Note | None = None,
) -> VerifiedCheckpoint:
    """Open a checkpoint with its origin's key chain and check the witness policy.

    ``collected`` is as for :func:`weigh_cosignatures`.

    Raises:
        MalformedError, VerificationError: as :meth:`KeyChain.open`.
        QuorumError: if fewer than ``requirement.threshold`` of its witnesses
            cosigned, naming the origin, the size, who signed and who counts.
    """
    if requirement is None:
        return chain.open(note)
    weighed = weigh_cosignatures(chain, note, requirement, collected=collected)
    if not weighed.met:
        raise QuorumError(weighed.refusal())
    return weighed.opened


@dataclass(frozen=True, slots=True)
class QuorumWait:
    """A followed origin's checkpoint this node holds back until enough witnesses cosign it.

    Attributes:
        origin: the followed origin.
        size: the checkpoint's tree size.
        since: when the node started waiting (UTC text, as stored).
        threshold: how many cosignatures the policy requires.
        signed: the required witnesses whose cosignature is held.
        missing: the required witnesses whose cosignature is not held.
    """

    origin: str
    size: int
    since: str
    threshold: int
    signed: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def since_unix(self) -> float:
        """When the node started waiting, in POSIX seconds (a metrics gauge)."""
        return (
            datetime.strptime(self.since, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
        )

    def to_json(self) -> dict[str, object]:
        """The wait as ``status --json`` and the metrics show it."""
        return {
            "origin": self.origin,
            "size": self.size,
            "since": self.since,
            "threshold": self.threshold,
            "signed": list(self.signed),
            "waiting_for": list(self.missing),
        }


def quorum_waits(store: LedgerStore, config: NodeConfig) -> list[QuorumWait]:
    """The checkpoints this node holds back for cosignatures, by origin.

    The cosignatures held are counted again against the current policy (a
    restart may have changed it); a row whose origin has no policy any
    more is not listed.
    """
    waits: list[QuorumWait] = []
    for row in store.witnessing.list_waits():
        requirement = config.witness.requirement_for(row.origin)
        if requirement is None:
            continue
        note = parse_note(row.note)
        signed = sorted(
            {s.name for s, _t in _verify_each(note, note.signatures, requirement.verifiers())}
        )
        waits.append(
            QuorumWait(
                origin=row.origin,
                size=row.size,
                since=row.since,
                threshold=requirement.threshold,
                signed=tuple(signed),
                missing=tuple(w.name for w in requirement.verifiers() if w.name not in set(signed)),
            )
        )
    return waits


def save_cosignatures(
    store: LedgerStore,
    log_id: int,
    checkpoint: Checkpoint,
    note: CheckpointNote | Note,
    witnesses: Sequence[NoteVerifier],
) -> int:
    """Store the cosignatures in ``note`` by known ``witnesses`` for a held checkpoint.

    Only when a checkpoint of that size with that root is stored; call inside
    the transaction that stored or matched it.

    Returns:
        How many lines were new.
    """
    if not witnesses:
        return 0
    held = store.get_checkpoint(log_id, checkpoint.size)
    if held is None or held.root_hash != checkpoint.root_hash:
        return 0
    parsed = note if isinstance(note, Note) else parse_note(note)
    good = verified_cosignatures(parsed, parsed.signatures, witnesses)
    return store.witnessing.add_cosignatures(
        log_id, checkpoint.size, ((s.name, s.key_id, s.to_line()[:-1]) for s in good)
    )


def served_note(store: LedgerStore, log_id: int, record: CheckpointRecord) -> str:
    """A stored checkpoint's note with the cosignature lines held for it appended.

    Lines for keys that already signed the note are not repeated; a stored
    line that no longer parses is skipped (it was checked when stored).
    """
    held = store.witnessing.cosignatures(log_id, record.size)
    if not held:
        return record.note
    extra: list[NoteSignature] = []
    for item in held:
        try:
            extra.extend(parse_cosignature_lines(item.line + "\n"))
        except MalformedError:
            log.warning("skipped a stored cosignature line of %s that does not parse", item.witness)
    return attach_cosignatures(record.note, extra).to_text()
