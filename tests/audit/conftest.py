"""Audit test harness: real nodes served over real mutual TLS, bundles, the CLI.

Nodes are real node directories served by ``run_server`` in this process (no
sync runner unless asked). The auditor is a TLS identity added to each node
with role ``auditor`` only. A *fork* is made the way a misbehaving operator
would: copy the node directory (same signing key, same history) and let the
two copies grow apart. Bundles are exported by the node, or built from
scratch with protocol functions when a test needs one no node would write.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.api.public import PublicLimits, make_public_app
from node.api.server import start_public_server
from node.config import load_config
from node.ledger import Ledger
from node.ledger.database import Database
from node.ledger.export import export_lines
from node.ledger.provision import init_node
from node.tls import public_server_ssl_context
from protocol.bundle import encode_bundle
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.entry import AddEntry
from protocol.hashing import hash_leaves
from protocol.keys import NoteSigner
from protocol.merkle import root_from_leaf_hashes
from tests.api.conftest import (  # the API tier's served node, for the endpoint tests
    Identity,
    add_peer,
    make_identity,
    node_dir,  # noqa: F401
    served,  # noqa: F401
)
from tests.sync.conftest import Serving, sha
from tests.sync.conftest import serve as serve_node

__all__ = [
    "ORIGIN",
    "ROOT",
    "Served",
    "add_hashes",
    "build_bundle",
    "export_bundle",
    "fork_node",
    "ident_args",
    "new_node",
    "run_cli",
    "serve",
    "vkey_of",
]

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = "hotline-a.example/hashmesh"


def new_node(base: Path, name: str, origin: str = ORIGIN, entries: int = 0) -> Path:
    path = base / name
    init_node(path, origin, listen="127.0.0.1:0")
    if entries:
        add_hashes(path, 0, entries)
    return path


def add_hashes(node_path: Path, start: int, count: int, *, batch: int = 1) -> None:
    """Append ``count`` adds, one checkpoint per ``batch`` entries."""
    with Ledger.open(node_path) as ledger:
        for at in range(start, start + count, batch):
            stop = min(at + batch, start + count)
            ledger.append(
                [AddEntry.create(signal_type="sha256", value=sha(i)) for i in range(at, stop)]
            )


def fork_node(node_path: Path, copy_to: Path) -> Path:
    """A copy of the node: same key, same history, free to diverge from here."""
    shutil.copytree(node_path, copy_to)
    return copy_to


def vkey_of(node_path: Path) -> str:
    with Ledger.open(node_path, read_only=True) as ledger:
        return ledger.own_log.verifier_key


def export_bundle(node_path: Path, out: Path, origin: str | None = None) -> Path:
    with Ledger.open(node_path, read_only=True) as ledger:
        out.write_text("".join(export_lines(ledger, "bundle", origin=origin)), encoding="utf-8")
    return out


def build_bundle(
    out: Path,
    entries: Sequence[bytes],
    sizes: Sequence[int],
    signer_for: dict[int, NoteSigner] | NoteSigner,
    *,
    vkey: str | None = None,
) -> Path:
    """A bundle signed by hand: checkpoints at ``sizes``, each signed as ``signer_for`` says."""
    hashes = hash_leaves(entries)
    notes = []
    for size in sizes:
        signer = signer_for if isinstance(signer_for, NoteSigner) else signer_for[size]
        cp = Checkpoint(
            origin=signer.name, size=size, root_hash=root_from_leaf_hashes(hashes[:size])
        )
        notes.append(sign_checkpoint(cp, signer))
    first = signer_for if isinstance(signer_for, NoteSigner) else signer_for[min(signer_for)]
    lines = encode_bundle(
        origin=first.name,
        verifier_key=vkey or first.verifier().to_text(),
        checkpoint_notes=notes,
        leaf_count=len(entries),
        leaves=entries,
    )
    out.write_text("".join(lines), encoding="utf-8")
    return out


Served = Serving  # a node served by run_server in this process, as in the sync tier


def ident_args(auditor: Identity) -> list[str]:
    """The CLI options that make ``auditor`` the TLS client."""
    return ["--cert", str(auditor.cert_path), "--key", str(auditor.key_path)]


async def serve(node_path: Path, auditor: Identity | None = None) -> Serving:
    """Serve a node (no sync) with ``auditor`` added as a peer of role auditor."""
    if auditor is not None:
        add_peer(node_path, auditor, "auditor")
    return await serve_node(node_path, sync=False)


@asynccontextmanager
async def public_listener(node_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """The node's public listener on 127.0.0.1: its URL and the certificate to trust."""
    config = load_config(node_path)
    db = await Database.open(node_path)
    server = await start_public_server(
        make_public_app(db, PublicLimits()),
        public_server_ssl_context(config.tls_cert_path, config.tls_key_path),
    )
    try:
        yield server.url, config.tls_cert_path
    finally:
        await server.close()
        await db.close()


@pytest.fixture
def auditor(tmp_path: Path) -> Identity:
    return make_identity(tmp_path, "auditor")


@pytest.fixture
async def served_a(tmp_path: Path, auditor: Identity) -> AsyncIterator[Served]:
    s = await serve(new_node(tmp_path, "a", entries=5), auditor)
    try:
        yield s
    finally:
        await s.close()


@dataclass(frozen=True)
class CliResult:
    status: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, object]:
        value: dict[str, object] = json.loads(self.stdout)
        return value


async def run_cli(*args: str, module: str = "node") -> CliResult:
    """Run ``python -m node ARGS`` (or ``-m protocol``) as a real process (servers stay here)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())
