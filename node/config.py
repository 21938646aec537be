"""Node directory layout and its TOML config file.

Layer: node (bottom). Reads and writes files in the node directory only.

A node directory holds::

    config.toml        settings, with comments (written by ``hashmesh init``)
    signing.key        the log's Ed25519 note signing key (mode 0600)
    tls/node.key       the node's TLS private key (mode 0600)
    tls/node.crt       the node's self-signed TLS certificate (pinned by peers)
    ledger.db          the SQLite database (WAL mode)
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from node.errors import ConfigError

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_DIR",
    "DEFAULT_LISTEN",
    "NodeConfig",
    "check_origin",
    "load_config",
    "parse_listen",
    "render_config",
    "resolve_node_dir",
]

DEFAULT_DIR = ".hashmesh"
DEFAULT_LISTEN = "127.0.0.1:8443"
CONFIG_FILE = "config.toml"
DIR_ENV = "HASHMESH_DIR"

# C2SP tlog-checkpoint recommends a schema-less URL as origin; it is also the
# note key name, so it must not contain whitespace or '+'.
_ORIGIN = re.compile(r"[a-z0-9][a-z0-9.-]*(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~-]+)*")
MAX_ORIGIN_LENGTH = 255


def check_origin(origin: str) -> str:
    """Check that ``origin`` is a usable log origin and return it.

    Args:
        origin: e.g. ``hotline-a.example/hashmesh``.

    Returns:
        The origin unchanged.

    Raises:
        ConfigError: if it is not a lower-case host name with an optional path.
    """
    if len(origin) > MAX_ORIGIN_LENGTH or not _ORIGIN.fullmatch(origin):
        raise ConfigError(
            f"origin {origin!r} is not valid: use a lower-case host name and "
            "optional path, like 'hotline.example.org/hashmesh'"
        )
    return origin


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6) into host and port.

    Raises:
        ConfigError: if the value is not HOST:PORT with a port in 0..65535.
    """
    match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})", value)
    if not match or int(match.group(2)) > 65535:
        raise ConfigError(f"listen address {value!r} is not HOST:PORT")
    return match.group(1).strip("[]"), int(match.group(2))


def resolve_node_dir(arg: str | None) -> Path:
    """The node directory: ``--dir``, else ``$HASHMESH_DIR``, else ``./.hashmesh``."""
    return Path(arg or os.environ.get(DIR_ENV) or DEFAULT_DIR)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Settings of one node, as read from ``config.toml``."""

    node_dir: Path
    origin: str
    listen: str = DEFAULT_LISTEN

    @property
    def config_path(self) -> Path:
        """Path of config.toml."""
        return self.node_dir / CONFIG_FILE

    @property
    def database_path(self) -> Path:
        """Path of the SQLite database."""
        return self.node_dir / "ledger.db"

    @property
    def signing_key_path(self) -> Path:
        """Path of the note signing key (mode 0600)."""
        return self.node_dir / "signing.key"

    @property
    def tls_key_path(self) -> Path:
        """Path of the TLS private key (mode 0600)."""
        return self.node_dir / "tls" / "node.key"

    @property
    def tls_cert_path(self) -> Path:
        """Path of the TLS certificate."""
        return self.node_dir / "tls" / "node.crt"


def render_config(config: NodeConfig) -> str:
    """The commented TOML text ``hashmesh init`` writes."""
    return f"""\
# hashmesh node configuration, written by `hashmesh init`.
# Paths are relative to this directory.

# The identity of this node's log. It is the first line of every checkpoint
# this node signs and the name of its verifier key. Never change it: peers
# and auditors know the log by this name.
origin = "{config.origin}"

# Address `hashmesh serve` listens on and advertises in the node's card.
listen = "{config.listen}"
"""


def load_config(node_dir: Path) -> NodeConfig:
    """Read ``config.toml`` from a node directory.

    Raises:
        ConfigError: if the directory is not a node or the file is invalid.
    """
    path = node_dir / CONFIG_FILE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(
            f"{node_dir} is not a hashmesh node (no {CONFIG_FILE}); create one "
            "with `hashmesh init --dir DIR --origin ORIGIN` or pass --dir"
        ) from e
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    unknown = set(raw) - {"origin", "listen"}
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
    origin = raw.get("origin")
    if not isinstance(origin, str):
        raise ConfigError(f"{path}: 'origin' must be a string")
    listen = raw.get("listen", DEFAULT_LISTEN)
    if not isinstance(listen, str):
        raise ConfigError(f"{path}: 'listen' must be a string like '127.0.0.1:8443'")
    parse_listen(listen)
    return NodeConfig(node_dir=node_dir, origin=check_origin(origin), listen=listen)
