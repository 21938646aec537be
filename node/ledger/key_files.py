"""Private note keys on disk: written 0600 and fsynced, read only if 0600.

Layer: node.ledger. The node's signing key (``signing.key``), its staged
successor during a rotation (``signing.key.next``) and its witness key
(``witness.key``) are all kept this way.
"""

from __future__ import annotations

from pathlib import Path

from node.config import NodeConfig, write_private_file
from node.errors import ConfigError
from protocol.errors import MalformedError
from protocol.keys import NoteSigner

__all__ = ["load_signer", "read_key_file", "write_key_file"]


def write_key_file(path: Path, signer: NoteSigner, *, replace: bool = False) -> None:
    """Write a private note key, readable by its owner only (0600), and fsync it.

    Args:
        path: where.
        signer: the key.
        replace: overwrite an existing file; by default the file must not
            exist (``FileExistsError``), so two processes never make two keys.
    """
    write_private_file(path, (signer.to_text() + "\n").encode("ascii"), replace=replace)


def read_key_file(path: Path, what: str) -> NoteSigner:
    """Read a private note key that only its owner may read (mode 0600).

    Raises:
        ConfigError: if the file is missing, unreadable, readable by others
            or not a key; ``what`` names it in the message.
    """
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text(encoding="ascii").strip()
    except OSError as e:
        raise ConfigError(f"cannot read the {what} {path}: {e.strerror or e}") from e
    if mode & 0o077:
        raise ConfigError(
            f"{what} {path} is readable by others (mode {mode:o}); run `chmod 600 {path}`"
        )
    try:
        return NoteSigner.from_text(text)
    except MalformedError as e:
        raise ConfigError(f"{what} {path} is not valid: {e}") from e


def load_signer(config: NodeConfig) -> NoteSigner:
    """Load the node's note signing key, checking it belongs to the origin.

    Raises:
        ConfigError: if the key file is missing, unreadable, too open or for
            another origin.
    """
    path = config.signing_key_path
    signer = read_key_file(path, "signing key")
    if signer.name != config.origin:
        raise ConfigError(
            f"signing key {path} is for {signer.name!r}, not this node's origin {config.origin!r}"
        )
    return signer
