"""Creating a node: keys, TLS identity, config and an empty signed ledger.

Layer: node.ledger. Writes a new node directory.

The directory is built under a temporary name beside its final place and
renamed into place at the end, so an interrupted ``init`` never leaves a
half-made node behind, and an existing node is never overwritten.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from node.config import (
    CONFIG_FILE,
    DEFAULT_LISTEN,
    ApiSettings,
    NodeConfig,
    check_advertise_url,
    check_origin,
    parse_listen,
    render_config,
    write_private_file,
)
from node.errors import ConfigError, NodeExistsError
from node.ledger.key_files import write_key_file
from node.storage.ledger_store import LedgerStore
from node.tls import write_node_identity
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.hashing import EMPTY_ROOT
from protocol.keys import NoteSigner

__all__ = ["InitResult", "init_node"]


@dataclass(frozen=True, slots=True)
class InitResult:
    """What ``init`` created."""

    node_dir: Path
    origin: str
    verifier_key: str
    tls_fingerprint: str
    listen: str


def init_node(
    node_dir: Path, origin: str, *, listen: str = DEFAULT_LISTEN, advertise: str | None = None
) -> InitResult:
    """Create a new node in ``node_dir``.

    Args:
        node_dir: directory to create (it may exist if empty).
        origin: the log's origin, e.g. ``hotline-a.example/hashmesh``.
        listen: HOST:PORT for ``hashmesh serve``.
        advertise: the URL peers reach the node at (``[api] advertise``);
            its host joins the certificate's names.

    Returns:
        The new node's identity.

    Raises:
        NodeExistsError: if ``node_dir`` already holds a node.
        ConfigError: if the origin or listen address is invalid, or the
            directory exists and is not empty.
    """
    check_origin(origin)
    host, _port = parse_listen(listen)
    api = ApiSettings()
    if advertise is not None:
        url = check_advertise_url(advertise)
        api = ApiSettings(advertise=url)
        host = urlsplit(url).hostname or host
    if (node_dir / CONFIG_FILE).exists():
        raise NodeExistsError(f"{node_dir} already holds a hashmesh node; not overwriting it")
    if node_dir.exists() and (not node_dir.is_dir() or any(node_dir.iterdir())):
        raise ConfigError(f"{node_dir} exists and is not an empty directory")
    node_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{node_dir.name}.init-", dir=node_dir.parent))
    try:
        staged = NodeConfig(node_dir=staging, origin=origin, listen=listen, api=api)
        signer = NoteSigner.generate(origin)
        write_key_file(staged.signing_key_path, signer)
        fingerprint = write_node_identity(
            staged.tls_key_path, staged.tls_cert_path, common_name=origin, host=host
        )
        verifier_key = signer.verifier().to_text()
        store = LedgerStore.open(staged.database_path)
        try:
            with store.transaction():
                log = store.create_log(origin, verifier_key, is_own=True)
                empty = Checkpoint(origin=origin, size=0, root_hash=EMPTY_ROOT)
                store.put_checkpoint(log.log_id, 0, EMPTY_ROOT, sign_checkpoint(empty, signer))
        finally:
            store.close()
        # SQLite made the database 0644 less the umask; its -wal and -shm
        # files take the database's mode whenever they are made again.
        for made in staged.node_dir.glob(staged.database_path.name + "*"):
            made.chmod(0o600)
        write_private_file(staged.config_path, render_config(staged).encode("utf-8"))
        if node_dir.exists():
            node_dir.rmdir()
        staging.rename(node_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return InitResult(node_dir, origin, verifier_key, fingerprint, listen)
