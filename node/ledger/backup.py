"""Backups of a node directory, restores, and the mark of a node still recovering.

Layer: node.ledger. Reads and writes files in node directories and backup
files; the database copy is SQLite's online backup
(:meth:`node.storage.ledger_store.LedgerStore.backup_to`), so a backup runs
while ``hashmesh serve`` writes.

A backup file is an uncompressed tar archive (mode 0600: it holds the
signing key, the TLS key and every hash value) of::

    hashmesh-backup.json   the manifest: format, origin, time, own log size,
                           and the SHA-256 of every other member
    config.toml, signing.key[, signing.key.next][, witness.key], tls/...
    ledger.db              one consistent copy of the database

with ``FILE.sha256`` beside it (``sha256sum -c`` format) for the archive as
a whole. :func:`restore_backup` checks both before anything is written.

A restored node is **recovering** (:func:`read_recovery_mark`): the file
``RECOVERING`` in its directory makes :class:`~node.ledger.service.Ledger`
refuse to sign anything. Its peers and witnesses may hold checkpoints of
its own origin signed after the backup was made; a new entry signed on top
of the backup's head would be a second history for them (a fork). The mark
is removed by :func:`node.sync.recovery.recover_own_log` once those entries
are back in the log (docs/operations.md).
"""

from __future__ import annotations

import datetime
import hashlib
import io
import itertools
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from node.config import (
    CONFIG_FILE,
    NodeConfig,
    load_config,
    make_private_dir,
    write_private_file,
)
from node.errors import ConfigError, NodeExistsError, StorageError
from node.ledger.key_files import read_key_file
from node.ledger.rotation import load_key_chain, next_key_path
from node.storage.ledger_store import LedgerStore
from protocol.encoding import dumps_canonical, loads_strict
from protocol.errors import MalformedError

__all__ = [
    "BACKUP_FORMAT",
    "BackupProgress",
    "BackupResult",
    "RecoveryMark",
    "RestoreResult",
    "clear_recovery_mark",
    "make_backup",
    "mark_recovering",
    "read_recovery_mark",
    "restore_backup",
]

BACKUP_FORMAT = 1
MANIFEST = "hashmesh-backup.json"
DATABASE = "ledger.db"
_REQUIRED = (CONFIG_FILE, "signing.key", DATABASE, "tls/node.key", "tls/node.crt")
_OPTIONAL = ("signing.key.next", "witness.key")
_TLS_MEMBER = re.compile(r"tls/[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class BackupResult:
    """What :func:`make_backup` wrote."""

    path: Path
    checksum_path: Path
    sha256: str
    origin: str
    log_size: int
    files: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What :func:`restore_backup` restored."""

    node_dir: Path
    origin: str
    log_size: int
    created_at: str


@dataclass(frozen=True, slots=True)
class RecoveryMark:
    """The ``RECOVERING`` file of a restored node.

    Attributes:
        log_size: the own log's size in the backup.
        backup_created_at: when the backup was made (UTC, ISO 8601).
        restored_at: when it was restored.
    """

    log_size: int
    backup_created_at: str
    restored_at: str


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


BackupProgress = Callable[[str, int, int], None]
"""``progress(part, bytes done, bytes in all)`` of a backup or a restore, part by part."""


def _sha256_file(path: Path, count: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            if count is not None:
                count(len(chunk))
    return digest.hexdigest()


class _Tally:
    """Bytes done of one part of a backup or restore, told to its progress callable."""

    def __init__(self, progress: BackupProgress | None, part: str, total: int) -> None:
        self._progress = progress
        self._part = part
        self._total = total
        self.done = 0
        self(0)

    def __call__(self, more: int) -> None:
        self.done += more
        if self._progress is not None:
            self._progress(self._part, self.done, self._total)


class _Counted(io.RawIOBase):
    """A file read through a :class:`_Tally` (what ``tarfile`` writes from)."""

    def __init__(self, f: IO[bytes], tally: _Tally) -> None:
        self._f = f
        self._tally = tally

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._tally(len(data))
        return data


# -- the recovering mark -------------------------------------------------------


def read_recovery_mark(config: NodeConfig) -> RecoveryMark | None:
    """The node's recovering mark, or None when it may sign.

    An unreadable mark still counts as recovering: it is never taken for
    permission to sign.
    """
    path = config.recovery_mark_path
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        return RecoveryMark(0, "unknown", "unknown")
    try:
        doc = loads_strict(raw)
        return RecoveryMark(
            int(doc["log_size"]), str(doc["backup_created_at"]), str(doc["restored_at"])
        )
    except (MalformedError, KeyError, TypeError, ValueError):
        return RecoveryMark(0, "unknown", "unknown")


def mark_recovering(node_dir: Path, log_size: int, backup_created_at: str) -> None:
    """Mark the node in ``node_dir`` as restored and recovering (see the module docstring).

    Used by :func:`restore_backup` and, for a database restored by other
    means (Litestream), by ``hashmesh restore --in-place``.
    """
    doc = {"backup_created_at": backup_created_at, "log_size": log_size, "restored_at": _now()}
    path = node_dir / "RECOVERING"
    staged = path.with_name(path.name + ".new")
    staged.unlink(missing_ok=True)
    write_private_file(staged, dumps_canonical(doc) + b"\n")
    os.replace(staged, path)


def clear_recovery_mark(config: NodeConfig) -> None:
    """Remove the recovering mark: the node may sign again."""
    config.recovery_mark_path.unlink(missing_ok=True)


# -- backup --------------------------------------------------------------------


def _identity_files(config: NodeConfig) -> list[str]:
    names = list(_REQUIRED[:2]) + [n for n in _OPTIONAL if (config.node_dir / n).is_file()]
    tls = config.tls_key_path.parent
    names += sorted(
        f"tls/{p.name}"
        for p in tls.iterdir()
        if p.is_file() and _TLS_MEMBER.fullmatch(f"tls/{p.name}")
    )
    return names


def make_backup(node_dir: Path, out: Path, progress: BackupProgress | None = None) -> BackupResult:
    """Write a consistent backup of the node in ``node_dir`` to ``out`` (mode 0600).

    The database is copied first (one snapshot, while the node may be
    writing); then the key files are read and the signing key is checked
    against the copy's key chain, so a key rotation that ran during the
    backup is noticed instead of saved with the wrong key. ``progress`` is
    told the bytes done of each part: ``copy the database``, ``checksum the
    files``, ``write FILE``, ``checksum FILE``.

    Raises:
        ConfigError: if ``out`` exists or its directory cannot be written,
            the node is incomplete, or the signing key does not sign the
            copied log's head.
        StorageError: if the database cannot be copied.
    """
    config = load_config(node_dir)
    if out.exists():
        raise ConfigError(f"{out} exists; a backup never overwrites a file")
    try:
        staging = Path(tempfile.mkdtemp(prefix=".hashmesh-backup-", dir=out.parent))
    except OSError as e:
        raise ConfigError(f"cannot write beside {out}: {e.strerror or e}") from e
    try:
        snapshot = staging / DATABASE
        source = LedgerStore.open(config.database_path, read_only=True)
        try:
            copied = (
                None
                if progress is None
                else lambda done, total: progress("copy the database", done, total)
            )
            source.backup_to(snapshot, copied)
        finally:
            source.close()
        log_size = _check_snapshot(config, snapshot)
        members: dict[str, Path] = {DATABASE: snapshot}
        for name in _identity_files(config):
            copy = staging / name
            make_private_dir(copy.parent)
            try:
                write_private_file(copy, (config.node_dir / name).read_bytes())
            except OSError as e:
                raise ConfigError(f"cannot read {config.node_dir / name}: {e.strerror or e}") from e
            members[name] = copy
        created_at = _now()
        sizes = sum(path.stat().st_size for path in members.values())
        hashed = _Tally(progress, "checksum the files", sizes)
        manifest = {
            "hashmesh_backup": BACKUP_FORMAT,
            "origin": config.origin,
            "created_at": created_at,
            "log_size": log_size,
            "files": {name: _sha256_file(path, hashed) for name, path in sorted(members.items())},
        }
        partial = out.with_name(out.name + ".partial")
        partial.unlink(missing_ok=True)
        written = _Tally(progress, f"write {out.name}", sizes)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                _add_bytes(tar, MANIFEST, dumps_canonical(manifest) + b"\n")
                for name, path in sorted(members.items()):
                    info = _private(tar.gettarinfo(path, arcname=name))
                    with path.open("rb") as member:
                        tar.addfile(info, _Counted(member, written))
            f.flush()
            os.fsync(f.fileno())
        digest = _sha256_file(
            partial, _Tally(progress, f"checksum {out.name}", partial.stat().st_size)
        )
        checksum_path = out.with_name(out.name + ".sha256")
        checksum_path.unlink(missing_ok=True)
        write_private_file(checksum_path, f"{digest}  {out.name}\n".encode())
        os.replace(partial, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BackupResult(out, checksum_path, digest, config.origin, log_size, tuple(sorted(members)))


def _private(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mode = 0o600
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = _private(tarfile.TarInfo(name))
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _check_snapshot(config: NodeConfig, snapshot: Path) -> int:
    """The copied own log's size; the signing key on disk must sign its head."""
    store = LedgerStore.open(snapshot, read_only=True)
    try:
        own = store.own_log()
        if own.origin != config.origin:
            raise ConfigError(
                f"the database holds {own.origin!r}, but config.toml says {config.origin!r}"
            )
        latest = store.latest_checkpoint(own.log_id)
        size = 0 if latest is None else latest.size
        current = load_key_chain(store, own.origin).current
    finally:
        store.close()
    keys = [config.signing_key_path, next_key_path(config.signing_key_path)]
    for path in keys:
        if path.is_file() and read_key_file(path, "signing key").verifier() == current:
            return size
    raise ConfigError(
        "the signing key on disk is not the copied log's current key (a key rotation ran "
        "during the backup?); run the backup again"
    )


# -- restore -------------------------------------------------------------------


def _check_archive_sum(archive: Path, progress: BackupProgress | None) -> None:
    sums = archive.with_name(archive.name + ".sha256")
    if not sums.exists():
        return
    try:
        expected = sums.read_text(encoding="ascii").split()[0].lower()
    except (OSError, UnicodeDecodeError, IndexError) as e:
        raise ConfigError(f"cannot read the checksum file {sums}: {e}") from e
    actual = _sha256_file(
        archive, _Tally(progress, f"checksum {archive.name}", archive.stat().st_size)
    )
    if actual != expected:
        raise ConfigError(
            f"{archive}: SHA-256 {actual} is not the {expected} in {sums}; the backup is "
            "damaged or not the one the checksum was made for; nothing was restored"
        )


def _manifest(tar: tarfile.TarFile, archive: Path) -> dict[str, Any]:
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isfile():
        raise ConfigError(f"{archive} is not a hashmesh backup (no {MANIFEST} first)")
    f = tar.extractfile(first)
    assert f is not None
    try:
        doc: Any = loads_strict(f.read(1 << 20))
    except MalformedError as e:
        raise ConfigError(f"{archive}: {MANIFEST} is not valid JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("hashmesh_backup") != BACKUP_FORMAT:
        raise ConfigError(f"{archive}: backup format {doc.get('hashmesh_backup')!r} is not 1")
    files = doc.get("files")
    if (
        not isinstance(files, dict)
        or not all(isinstance(v, str) for v in files.values())
        or not isinstance(doc.get("origin"), str)
        or not isinstance(doc.get("created_at"), str)
        or not isinstance(doc.get("log_size"), int)
    ):
        raise ConfigError(f"{archive}: {MANIFEST} lacks origin, created_at, log_size or files")
    for name in _REQUIRED:
        if name not in files:
            raise ConfigError(f"{archive}: the backup has no {name}")
    return doc


def _member_name(name: str, archive: Path) -> str:
    if name in _REQUIRED or name in _OPTIONAL or _TLS_MEMBER.fullmatch(name):
        return name
    raise ConfigError(f"{archive}: unexpected member {name!r}; nothing was restored")


def _copy_member(src: IO[bytes], target: Path, count: _Tally) -> str:
    digest = hashlib.sha256()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            f.write(chunk)
            count(len(chunk))
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


@contextmanager
def _staging_beside(node_dir: Path) -> Iterator[Path]:
    node_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{node_dir.name}.restore-", dir=node_dir.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def restore_backup(
    archive: Path, node_dir: Path, progress: BackupProgress | None = None
) -> RestoreResult:
    """Restore the backup ``archive`` into the new node directory ``node_dir``, recovering.

    Every member's SHA-256 is checked against the manifest (and the archive's
    against ``FILE.sha256`` when it is beside it), the database's integrity
    and head are checked, and only then is the directory put in place, with
    the recovering mark in it: the node signs nothing until it has
    recovered (:mod:`node.sync.recovery`). ``progress`` is told the bytes
    done of ``checksum FILE`` (when FILE.sha256 is there) and ``unpack FILE``.

    Raises:
        NodeExistsError: if ``node_dir`` holds a node.
        ConfigError: if ``node_dir`` is not empty, or the backup is damaged,
            incomplete or not a hashmesh backup (naming what is wrong);
            nothing is written then.
    """
    if (node_dir / CONFIG_FILE).exists():
        raise NodeExistsError(f"{node_dir} holds a hashmesh node; restore into a new directory")
    if node_dir.exists() and (not node_dir.is_dir() or any(node_dir.iterdir())):
        raise ConfigError(f"{node_dir} exists and is not an empty directory")
    try:
        size = archive.stat().st_size
    except OSError as e:
        raise ConfigError(f"cannot read the backup {archive}: {e.strerror or e}") from e
    _check_archive_sum(archive, progress)
    unpacked = _Tally(progress, f"unpack {archive.name}", size)
    with _staging_beside(node_dir) as staging:
        try:
            with tarfile.open(archive, mode="r:") as tar:
                doc = _manifest(tar, archive)
                expected: dict[str, str] = doc["files"]
                seen: set[str] = set()
                for member in itertools.islice(tar, 1, None):  # after the manifest
                    name = _member_name(member.name, archive)
                    if not member.isfile() or name in seen or name not in expected:
                        raise ConfigError(f"{archive}: member {name!r} is not as the manifest says")
                    seen.add(name)
                    target = staging / name
                    make_private_dir(target.parent)
                    src = tar.extractfile(member)
                    assert src is not None
                    unpacked.done = member.offset_data  # headers and padding count too
                    if _copy_member(src, target, unpacked) != expected[name]:
                        raise ConfigError(
                            f"{archive}: {name} does not match its SHA-256 in the manifest; "
                            "the backup is damaged; nothing was restored"
                        )
        except (tarfile.TarError, EOFError) as e:
            raise ConfigError(f"{archive} is not a readable backup: {e}") from e
        except OSError as e:
            raise ConfigError(f"cannot restore {archive}: {e.strerror or e}") from e
        unpacked(size - unpacked.done)  # the end of the archive
        missing = sorted(set(expected) - seen)
        if missing:
            raise ConfigError(f"{archive}: the backup ends before {', '.join(missing)}")
        _check_restored(staging, doc)
        mark_recovering(staging, doc["log_size"], doc["created_at"])
        if node_dir.exists():
            node_dir.rmdir()
        staging.chmod(0o700)
        staging.rename(node_dir)
    return RestoreResult(node_dir, doc["origin"], doc["log_size"], doc["created_at"])


def _check_restored(staging: Path, doc: dict[str, Any]) -> None:
    config = load_config(staging)
    if config.origin != doc["origin"]:
        raise ConfigError(
            f"the backup's config.toml is for {config.origin!r}, its manifest for {doc['origin']!r}"
        )
    try:
        store = LedgerStore.open(config.database_path)
    except StorageError as e:
        raise ConfigError(f"the backup's database cannot be opened: {e}") from e
    try:
        problems = store.integrity_check()
        if problems != ["ok"]:
            raise ConfigError(f"the backup's database is damaged: {'; '.join(problems[:3])}")
        own = store.own_log()
        latest = store.latest_checkpoint(own.log_id)
        size = 0 if latest is None else latest.size
    finally:
        store.close()
    if own.origin != doc["origin"] or size != doc["log_size"]:
        raise ConfigError(
            f"the backup's database holds {own.origin} at size {size}, its manifest says "
            f"{doc['origin']} at size {doc['log_size']}"
        )
