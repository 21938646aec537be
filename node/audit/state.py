"""The auditor's memory between runs: one JSON file, replaced atomically.

Layer: node.audit. Reads and writes the one state file it is given.

Per origin the state keeps the key chain the auditor trusts and the *head*:
the last tree size, root, signed note and compact-range frontier an audit
verified. The next audit proves every source's tree extends that head and
hashes only the leaves after it, so a history rewritten since the last audit
is caught however long ago it was audited. Format (canonical JSON)::

    {"hashmesh_audit_state": 1,
     "origins": {"<origin>": {
        "keys": [{"from_size": 0, "rotated_by": null, "vkey": "<verifier key>"}, ...],
        "head": {"size": N, "root": "<64 hex>", "note": "<signed note>",
                 "frontier": ["<64 hex>", ...]} or null,
        "audited_at": "<UTC time of the audit that saved the head>" or null}}}

Loading re-checks everything it can on its own: the head's note must be
signed by the chain's key for its size and name the saved size and root, and
the frontier must produce that root. A state that fails is refused with an
:class:`~node.errors.AuditStateError` naming the field; an audit never runs on
a corrupted memory, since that could hide a rewrite.

Saving writes a temporary file in the same directory, fsyncs it, renames it
over the old one and fsyncs the directory: a crash leaves the old state or
the new one, never a mix. A lock file serialises audits sharing one state.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.errors import AuditStateError
from protocol.audit import AuditHead
from protocol.encoding import decode_hex, dumps_canonical, loads_strict
from protocol.errors import MalformedError, ProtocolError
from protocol.hashing import HASH_SIZE
from protocol.keys import NoteVerifier
from protocol.rotation import KeyChain, KeyPeriod

__all__ = [
    "STATE_ENV",
    "STATE_VERSION",
    "AuditState",
    "OriginState",
    "default_state_path",
    "load_state",
    "locked_state",
    "save_state",
]

STATE_VERSION = 1
STATE_ENV = "HASHMESH_AUDIT_STATE"
"""Environment variable naming the state file (``--state`` wins over it)."""

_TOP_KEYS = {"hashmesh_audit_state", "origins"}
_ORIGIN_KEYS = {"keys", "head", "audited_at"}
_KEY_KEYS = {"from_size", "rotated_by", "vkey"}
_HEAD_KEYS = {"size", "root", "note", "frontier"}


@dataclass(frozen=True, slots=True)
class OriginState:
    """What the auditor remembers of one origin.

    Attributes:
        chain: the key chain trusted for the origin.
        head: the last verified tree, or None before the first clean audit.
        audited_at: when the head was saved (UTC, ISO 8601), or None.
    """

    chain: KeyChain
    head: AuditHead | None = None
    audited_at: str | None = None


@dataclass(frozen=True, slots=True)
class AuditState:
    """Every origin the auditor remembers."""

    origins: Mapping[str, OriginState] = field(default_factory=dict)

    def with_origin(self, origin: str, state: OriginState) -> AuditState:
        """A copy with ``origin``'s state replaced."""
        return AuditState({**self.origins, origin: state})


def default_state_path() -> Path:
    """``$HASHMESH_AUDIT_STATE``, else ``$XDG_STATE_HOME/hashmesh/audit-state.json``.

    ``XDG_STATE_HOME`` defaults to ``~/.local/state``.
    """
    explicit = os.environ.get(STATE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "hashmesh" / "audit-state.json"


def now_utc() -> str:
    """The current time as the state records it."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- loading -------------------------------------------------------------------


class _StateFieldError(Exception):
    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")


def _object(value: Any, keys: set[str], where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _StateFieldError(where, "expected a JSON object")
    for key in sorted(set(value) - keys):
        raise _StateFieldError(f"{where}.{key}", "unknown field")
    for key in sorted(keys - set(value)):
        raise _StateFieldError(f"{where}.{key}", "missing field")
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _StateFieldError(where, "expected a non-negative integer")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _StateFieldError(where, "expected a non-empty string")
    return value


def _chain(origin: str, value: Any, where: str) -> KeyChain:
    if not isinstance(value, list) or not value:
        raise _StateFieldError(where, "expected a non-empty list of keys")
    periods = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        obj = _object(item, _KEY_KEYS, at)
        rotated = obj["rotated_by"]
        periods.append(
            KeyPeriod(
                _int(obj["from_size"], f"{at}.from_size"),
                NoteVerifier.from_text(_str(obj["vkey"], f"{at}.vkey")),
                None if rotated is None else _int(rotated, f"{at}.rotated_by"),
            )
        )
    return KeyChain(origin, tuple(periods))


def _head(chain: KeyChain, value: Any, where: str) -> AuditHead | None:
    if value is None:
        return None
    obj = _object(value, _HEAD_KEYS, where)
    size = _int(obj["size"], f"{where}.size")
    root = decode_hex(_str(obj["root"], f"{where}.root"), field=f"{where}.root", length=HASH_SIZE)
    note = _str(obj["note"], f"{where}.note")
    frontier = obj["frontier"]
    if not isinstance(frontier, list):
        raise _StateFieldError(f"{where}.frontier", "expected a list of hashes")
    head = AuditHead(
        size=size,
        root_hash=root,
        note=note,
        frontier=tuple(
            decode_hex(h, field=f"{where}.frontier[{i}]", length=HASH_SIZE)
            for i, h in enumerate(frontier)
        ),
    )
    try:
        head.tree()
    except MalformedError as e:
        raise _StateFieldError(f"{where}.frontier", e.reason) from e
    try:
        signed = chain.open(note).checkpoint
    except ProtocolError as e:
        raise _StateFieldError(
            f"{where}.note", f"does not verify under the saved key chain: {e}"
        ) from e
    if (signed.size, signed.root_hash) != (size, root):
        raise _StateFieldError(
            f"{where}.note", f"is a checkpoint of size {signed.size}, not of {size}"
        )
    return head


def _parse(data: bytes) -> AuditState:
    top = _object(loads_strict(data), _TOP_KEYS, "state")
    if top["hashmesh_audit_state"] != STATE_VERSION or isinstance(
        top["hashmesh_audit_state"], bool
    ):
        raise _StateFieldError("state.hashmesh_audit_state", f"version must be {STATE_VERSION}")
    origins = top["origins"]
    if not isinstance(origins, dict):
        raise _StateFieldError("state.origins", "expected a JSON object")
    out: dict[str, OriginState] = {}
    for origin, value in origins.items():
        where = f"origins[{origin!r}]"
        obj = _object(value, _ORIGIN_KEYS, where)
        chain = _chain(origin, obj["keys"], f"{where}.keys")
        head = _head(chain, obj["head"], f"{where}.head")
        audited = obj["audited_at"]
        if audited is not None:
            _str(audited, f"{where}.audited_at")
        out[origin] = OriginState(chain, head, audited)
    return AuditState(out)


def load_state(path: Path) -> AuditState:
    """Read and check the state; a missing file is an empty state (a first audit).

    Raises:
        AuditStateError: if the file cannot be read or fails a check, naming
            the file and the field.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return AuditState()
    except OSError as e:
        raise AuditStateError(f"cannot read the audit state {path}: {e.strerror or e}") from e
    try:
        return _parse(data)
    except _StateFieldError as e:
        where, reason = e.where, e.reason
    except ProtocolError as e:
        where, reason = getattr(e, "field", None) or "state", getattr(e, "reason", str(e))
    raise AuditStateError(
        f"the audit state {path} is corrupt ({where}: {reason}); nothing was audited. Restore "
        "it from a backup, or move it away to start over (the next audit is then a first audit)"
    )


# -- saving --------------------------------------------------------------------


def _to_json(state: AuditState) -> bytes:
    origins: dict[str, Any] = {}
    for origin, st in sorted(state.origins.items()):
        head = st.head
        origins[origin] = {
            "keys": [
                {"from_size": p.from_size, "rotated_by": p.rotated_by, "vkey": p.verifier.to_text()}
                for p in st.chain.periods
            ],
            "head": None
            if head is None
            else {
                "size": head.size,
                "root": head.root_hash.hex(),
                "note": head.note,
                "frontier": [h.hex() for h in head.frontier],
            },
            "audited_at": st.audited_at,
        }
    return dumps_canonical({"hashmesh_audit_state": STATE_VERSION, "origins": origins}) + b"\n"


def save_state(path: Path, state: AuditState) -> None:
    """Replace the state file atomically (temporary file, fsync, rename, fsync directory).

    Raises:
        AuditStateError: if the file cannot be written (the old one is kept).
    """
    data = _to_json(state)
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise AuditStateError(f"cannot save the audit state {path}: {e.strerror or e}") from e


@contextlib.contextmanager
def locked_state(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` for one audit run.

    Raises:
        AuditStateError: if another audit holds the lock, or the lock file
            cannot be created.
    """
    lock_path = path.with_name(path.name + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise AuditStateError(f"cannot create the lock {lock_path}: {e.strerror or e}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AuditStateError(
                f"another audit is using the state {path} (lock {lock_path}); wait for it"
            ) from None
        yield
    finally:
        os.close(fd)
