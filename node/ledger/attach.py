"""Attaching witness cosignatures gathered outside the peer network to a log's checkpoint.

Layer: node.ledger. Uses :mod:`protocol` for every signature check and
:mod:`node.storage` (through :class:`~node.ledger.service.Ledger`) to keep them.

A witness that is not one of this node's peers cosigns the *published* log:
``hashmesh witness feed https://host/prefix --out cosigned.txt`` reads the
checkpoint and tiles as anyone can, checks consistency with what it cosigned
before and writes the checkpoint note with its cosignature line appended
(C2SP tlog-cosignature). The publisher attaches what it is sent with
``hashmesh witness attach FILE`` or ``hashmesh publish --cosignatures FILE``:
:func:`attach_cosignatures` checks everything before it writes anything:

* the file is the checkpoint note with its signature lines (what ``witness
  feed --out`` writes), or only the cosignature lines for the log's latest
  checkpoint;
* the log's own signature verifies under the log's key chain, and this node
  holds a checkpoint of that size with that root (a witness cannot make the
  publisher serve a checkpoint it never signed);
* every other line is a cosignature/v1 signature by a witness key the
  operator named (``--witness-key``) or configured (``[[witness.ask]]``,
  ``[[witness.require]]`` of the origin), and verifies over the note. An
  unknown key or a bad signature refuses the whole file, naming the witness.

The lines are then stored in ``cosignatures`` in one transaction (the same
table cosignatures collected from peers go to), so every place that serves
the checkpoint serves them too: ``/v1/checkpoint``, the public listener's
``/checkpoint`` and the ``checkpoint`` file ``hashmesh publish`` writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from node.errors import LedgerError
from node.ledger.service import Ledger
from node.ledger.witness import save_cosignatures
from node.storage.ledger_store import LogRecord
from protocol.checkpoint import Checkpoint
from protocol.cosignature import verify_cosignature
from protocol.errors import MalformedError, ProtocolError
from protocol.keys import SIG_COSIGNATURE_V1, NoteVerifier
from protocol.note import Note, NoteSignature, parse_note
from protocol.witness import parse_cosignature_lines

__all__ = ["AttachError", "Attached", "attach_cosignatures"]


class AttachError(LedgerError):
    """A cosignature file was refused; nothing was attached."""


@dataclass(frozen=True, slots=True)
class Attached:
    """What :func:`attach_cosignatures` kept.

    Attributes:
        origin: the log whose checkpoint was cosigned.
        size: the cosigned checkpoint's tree size.
        witnesses: the names of the witnesses whose lines verified, sorted.
        new: how many of their lines were not held before.
        latest: the size of the log's latest checkpoint (when larger than
            ``size``, the checkpoint served and published is a later one,
            which these cosignatures do not cover).
    """

    origin: str
    size: int
    witnesses: tuple[str, ...]
    new: int
    latest: int


def _split(ledger: Ledger, origin: str, text: str, source: str) -> Note:
    """The note the file holds: its own, or the latest checkpoint with the file's lines."""
    if text.startswith("— "):
        log = ledger.log_for(origin)
        try:
            lines = parse_cosignature_lines(text)
        except MalformedError as e:
            raise AttachError(f"{source}: not cosignature lines: {e}") from e
        latest = ledger.latest_checkpoint(log.origin)
        held = parse_note(latest.note)
        return Note(text=held.text, signatures=held.signatures + lines)
    try:
        return parse_note(text)
    except MalformedError as e:
        raise AttachError(
            f"{source}: neither a cosigned checkpoint note nor cosignature lines: {e}"
        ) from e


def _check_line(
    sig: NoteSignature,
    known: dict[tuple[str, int], NoteVerifier],
    text: bytes,
    size: int,
    source: str,
) -> None:
    verifier = known.get((sig.name, sig.key_id))
    if verifier is None:
        raise AttachError(
            f"{source}: cosignature by {sig.name} (key ID {sig.key_id:08x}): not a witness "
            "key this node knows; pass the witness's key with --witness-key (what "
            "`hashmesh witness vkey` prints on the witness)"
        )
    try:
        verify_cosignature(verifier, text, sig.signature)
    except ProtocolError as e:
        raise AttachError(
            f"{source}: cosignature by {sig.name} does not verify over the checkpoint of "
            f"size {size}: {e}"
        ) from e


@dataclass(frozen=True, slots=True)
class _Checked:
    checkpoint: Checkpoint
    note: Note
    witnesses: tuple[NoteVerifier, ...]


def _check_file(
    ledger: Ledger,
    log: LogRecord,
    text: str,
    known: dict[tuple[str, int], NoteVerifier],
    source: str,
) -> _Checked:
    note = _split(ledger, log.origin, text, source)
    try:
        checkpoint = Checkpoint.from_text(note.text)
    except MalformedError as e:
        raise AttachError(f"{source}: not a checkpoint: {e}") from e
    if checkpoint.origin != log.origin:
        raise AttachError(
            f"{source} is a checkpoint of {checkpoint.origin!r}, not of {log.origin!r}"
        )
    chain = ledger.key_chain(log.origin)
    try:
        chain.open(note)
    except ProtocolError as e:
        raise AttachError(
            f"{source}: the checkpoint of size {checkpoint.size} is not signed by "
            f"{log.origin}'s key: {e}"
        ) from e
    held = ledger.stored_checkpoint(log, checkpoint.size)
    if held is None or held.root_hash != checkpoint.root_hash:
        raise AttachError(
            f"{source}: this node holds no checkpoint of size {checkpoint.size} with that root "
            f"for {log.origin}"
        )
    log_key = chain.verifier_for(checkpoint.size)
    lines = [s for s in note.signatures if (s.name, s.key_id) != (log_key.name, log_key.key_id)]
    if not lines:
        raise AttachError(f"{source} holds no witness cosignature line")
    body = note.text.encode("utf-8")
    for sig in lines:
        _check_line(sig, known, body, checkpoint.size, source)
    return _Checked(checkpoint, note, tuple(known[(s.name, s.key_id)] for s in lines))


def attach_cosignatures(
    ledger: Ledger,
    files: Sequence[tuple[str, str]],
    witness_keys: Sequence[NoteVerifier] = (),
    *,
    origin: str | None = None,
) -> list[Attached]:
    """Verify cosigned checkpoints (or cosignature lines) and keep their cosignatures.

    Every file is checked before anything is written; then all of them are
    stored in one transaction.

    Args:
        ledger: the publishing node's ledger (opened for writing).
        files: ``(name, text)`` of each file (see the module docs for the two
            forms); the name is for messages.
        witness_keys: witness keys to trust besides those configured for
            the origin.
        origin: the log (the own log when None).

    Returns:
        What was kept, one item per file.

    Raises:
        AttachError: naming the file and what is wrong (the note, its origin
            or size, an unknown witness, a cosignature that does not
            verify); nothing is written then.
    """
    log = ledger.log_for(origin)
    known: dict[tuple[str, int], NoteVerifier] = {}
    for key in (*witness_keys, *ledger.config.witness.known_keys(log.origin)):
        if key.sig_type == SIG_COSIGNATURE_V1:
            known.setdefault((key.name, key.key_id), key)
    checked = [_check_file(ledger, log, text, known, name) for name, text in files]
    counts: list[int] = []
    with ledger.transaction():
        for item in checked:
            counts.append(
                save_cosignatures(
                    ledger.store, log.log_id, item.checkpoint, item.note, item.witnesses
                )
            )
    latest = ledger.latest_checkpoint(log.origin).size
    return [
        Attached(
            log.origin,
            item.checkpoint.size,
            tuple(sorted({w.name for w in item.witnesses})),
            new,
            latest,
        )
        for item, new in zip(checked, counts, strict=True)
    ]
