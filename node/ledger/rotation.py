"""Key rotation: the stored key chains of origins and rotating the node's own key.

Layer: node.ledger.

An origin's key chain (``protocol.rotation.KeyChain``) is stored in the
``origin_keys`` table: the key a log started with (or the key a follower
pinned) and one row per rotation. Both the own log and replicas extend it in
the same transaction that stores the rotate entry, so the chain and the
entries can never disagree.

Rotating the own key (:func:`rotate_signing_key`) goes in three steps, each
safe to interrupt:

1. the new key is written to ``signing.key.next`` (mode 0600, fsynced);
2. one transaction appends the rotate entry, signs the checkpoint of size
   ``r + 1`` with the *old* key, records the new key's period and makes it
   the log's current key;
3. ``signing.key.next`` replaces ``signing.key``.

A crash before step 2 commits leaves an unused ``.next`` file that the next
rotation overwrites; a crash between 2 and 3 is finished by
:func:`finish_rotation` when the node is next opened (the ``.next`` key is
the chain's current key, so it is the one to use).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from node.errors import ConfigError, LedgerError
from node.ledger.integration import Integration, salted
from node.ledger.key_files import write_key_file
from node.storage.ledger_store import CheckpointRecord, LedgerStore
from node.storage.segment_file import fsync_directory
from protocol.entry import RotateEntry
from protocol.errors import MalformedError
from protocol.keys import NoteSigner, NoteVerifier
from protocol.rotation import KeyChain, KeyPeriod
from protocol.rules import PendingRotations

__all__ = [
    "RotationResult",
    "finish_rotation",
    "load_key_chain",
    "next_key_path",
    "rotate_signing_key",
    "save_rotations",
]


@dataclass(frozen=True, slots=True)
class RotationResult:
    """What :func:`rotate_signing_key` did.

    Attributes:
        index: the rotate entry's index in the own log.
        checkpoint: the checkpoint of size ``index + 1``, signed by the old key.
        old_vkey: the key that signs checkpoints up to ``index + 1``.
        new_vkey: the key that signs checkpoints from ``index + 2`` on.
    """

    index: int
    checkpoint: CheckpointRecord
    old_vkey: str
    new_vkey: str


def load_key_chain(store: LedgerStore, origin: str) -> KeyChain:
    """The stored key chain of ``origin``.

    Raises:
        ConfigError: if no key is stored for the origin, or a stored key is
            not valid (the database was edited by hand).
    """
    rows = store.key_chain(origin)
    if not rows:
        raise ConfigError(f"no key is stored for {origin!r}; follow it with its card first")
    try:
        periods = tuple(
            KeyPeriod(r.from_size, NoteVerifier.from_text(r.vkey), r.rotated_by) for r in rows
        )
        return KeyChain(origin, periods)
    except MalformedError as e:
        raise ConfigError(f"the stored key chain of {origin!r} is not valid: {e}") from e


def save_rotations(
    store: LedgerStore, chain: KeyChain, rotations: PendingRotations, checkpoint_size: int
) -> KeyChain:
    """Settle the pending rotations by a verified checkpoint and store the new links.

    Call inside the transaction that stores the entries, after the
    checkpoint of size ``checkpoint_size`` was verified with ``chain``; the
    rule is :meth:`protocol.rules.PendingRotations.settle`.

    Returns:
        The extended chain.

    Raises:
        RotationError: if a rotation is not attested by the key it replaces.
    """
    extended = rotations.settle(chain, checkpoint_size, verified=True)
    for period in extended.periods[len(chain.periods) :]:
        assert period.rotated_by is not None
        key = period.verifier.to_text()
        store.add_key_period(chain.origin, period.from_size, key, period.rotated_by)
        store.set_verifier_key(chain.origin, key)
    return extended


def next_key_path(signing_key_path: Path) -> Path:
    """Where a rotation stages the new signing key."""
    return signing_key_path.with_name(signing_key_path.name + ".next")


def finish_rotation(
    store: LedgerStore, origin: str, signer: NoteSigner, key_path: Path
) -> NoteSigner:
    """The signer to use, finishing a rotation interrupted before its last step.

    Raises:
        ConfigError: if neither ``signing.key`` nor ``signing.key.next`` is the
            log's current key.
    """
    current = load_key_chain(store, origin).current
    if signer.verifier() == current:
        return signer
    staged = next_key_path(key_path)
    if staged.exists():
        try:
            pending = NoteSigner.from_text(staged.read_text(encoding="ascii").strip())
        except (OSError, MalformedError) as e:
            raise ConfigError(f"cannot read the staged signing key {staged}: {e}") from e
        if pending.verifier() == current:
            os.replace(staged, key_path)
            fsync_directory(key_path.parent)
            return pending
    raise ConfigError(
        f"signing key {key_path} is not the log's current key ({current.to_text()}); the log "
        "was rotated to a key this node does not hold: restore that key from backup"
    )


def rotate_signing_key(
    store: LedgerStore,
    origin: str,
    signer: NoteSigner,
    key_path: Path,
    reason: str,
    *,
    new_signer: NoteSigner | None = None,
) -> tuple[RotationResult, NoteSigner]:
    """Rotate the own log's signing key (see the module docstring for the steps).

    Args:
        store: the node's store.
        origin: the own log's origin.
        signer: the current signing key.
        key_path: the path of ``signing.key``.
        reason: why (recorded in the rotate entry, so every follower sees it).
        new_signer: the new key (tests); a fresh one by default.

    Returns:
        The result and the new signer.

    Raises:
        MalformedError: if the reason is empty, too long or has control characters.
        LedgerError: if the new key is the current one.
    """
    new = new_signer or NoteSigner.generate(origin)
    if new.name != origin:
        raise LedgerError(f"the new key is named {new.name!r}, not {origin!r}")
    if new.verifier() == signer.verifier():
        raise LedgerError("the new signing key is the current one")
    entry = RotateEntry(key=new.verifier().to_text(), reason=reason)
    staged = next_key_path(key_path)
    write_key_file(staged, new, replace=True)
    with store.transaction():
        run = Integration(store, store.own_log())
        index = run.next_index
        run.store_batch(run.sequence([entry], salted([entry])))
        checkpoint = run.commit_checkpoint(signer)
        chain = load_key_chain(store, origin)
        save_rotations(store, chain, run.rules.rotations, checkpoint.size)
    os.replace(staged, key_path)
    fsync_directory(key_path.parent)
    result = RotationResult(index, checkpoint, signer.verifier().to_text(), entry.key)
    return result, new
