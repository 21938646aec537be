"""Fixtures for API tests: a real node served over real mutual TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from node.api.app import make_app
from node.api.server import RunningServer, start_server
from node.api.state import ApiLimits
from node.config import load_config
from node.ledger import Ledger
from node.ledger.database import Database
from node.ledger.events import CheckpointHub
from node.ledger.provision import init_node
from node.storage.peer_store import PeerRecord
from node.tls import client_ssl_context, server_ssl_context, spki_fingerprint, write_node_identity
from protocol.entry import AddEntry

ORIGIN = "hotline-api.example/hashmesh"
LABELS = ("category:confirmed-zz9", "series:api-test-qq7")


def signal_value(i: int) -> str:
    return hashlib.sha256(f"api-test-{i}".encode()).hexdigest()


VALUES = [signal_value(i) for i in range(5)]


@dataclass(frozen=True)
class Identity:
    """A client TLS identity: key, certificate, fingerprint."""

    name: str
    cert_path: Path
    key_path: Path

    @property
    def pem(self) -> str:
        return self.cert_path.read_text(encoding="ascii")

    @property
    def spki(self) -> str:
        return spki_fingerprint(x509.load_pem_x509_certificate(self.pem.encode()))


def make_identity(tmp_path: Path, name: str) -> Identity:
    directory = tmp_path / "clients" / name
    write_node_identity(
        directory / "node.key", directory / "node.crt", common_name=name, host="127.0.0.1"
    )
    return Identity(name, directory / "node.crt", directory / "node.key")


def make_expired_identity(tmp_path: Path, name: str, *, days_left: int = -1) -> Identity:
    """A self-signed certificate whose validity ended yesterday (or ends in ``days_left``)."""
    directory = tmp_path / "clients" / name
    directory.mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now + datetime.timedelta(days=days_left))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "node.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / "node.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Identity(name, directory / "node.crt", directory / "node.key")


def add_peer(node_dir: Path, ident: Identity, role: str) -> None:
    with Ledger.open(node_dir) as ledger:
        ledger.peers.add_peer(
            PeerRecord(
                name=f"{ident.name}.example/log",
                url="https://127.0.0.1:1",
                tls_cert=ident.pem,
                spki=ident.spki,
                vkey=f"{ident.name}.example/log+00000000+AAAA",
                role=role,
                added_at="2025-01-01T00:00:00Z",
            )
        )


@dataclass
class Served:
    """A running server of a real node, and clients for each role."""

    node_dir: Path
    server: RunningServer
    server_pem: str
    db: Database
    hub: CheckpointHub
    ssl_ctx: ssl.SSLContext
    peer: Identity
    subscriber: Identity
    auditor: Identity

    @property
    def url(self) -> str:
        return self.server.url

    def client_ctx(self, ident: Identity) -> ssl.SSLContext:
        return client_ssl_context(ident.cert_path, ident.key_path, self.server_pem)

    def session(self, ident: Identity) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(ssl=self.client_ctx(ident))
        return aiohttp.ClientSession(connector=connector)


ServeFactory = Callable[..., "AsyncIterator[Served]"]


async def raw_request(
    host: str, port: int, ctx: ssl.SSLContext, method: str, target: str
) -> tuple[int, dict[str, str], bytes]:
    """Send one request with exactly this target (no client-side normalising).

    Returns:
        The status, the headers (names in lower case) and the body.
    """
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
    try:
        writer.write(
            f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            "Content-Length: 0\r\n\r\n".encode("ascii")
        )
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def init_api_node(path: Path, values: Sequence[str]) -> Path:
    """A node of :data:`ORIGIN` whose log holds an add of each value, labelled :data:`LABELS`."""
    init_node(path, ORIGIN, listen="127.0.0.1:0")
    with Ledger.open(path) as ledger:
        ledger.append(
            [AddEntry.create(signal_type="sha256", value=v, labels=LABELS) for v in values]
        )
    return path


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    path = init_api_node(tmp_path / "node", VALUES)
    with Ledger.open(path) as ledger:
        ledger.retract(1, "listed by mistake")
    return path


@pytest.fixture
async def served(tmp_path: Path, node_dir: Path) -> AsyncIterator[Served]:
    async for s in _serve(tmp_path, node_dir, ApiLimits()):
        yield s


async def _serve(
    tmp_path: Path, node_dir: Path, limits: ApiLimits, **server_options: float
) -> AsyncIterator[Served]:
    peer = make_identity(tmp_path, "peer")
    subscriber = make_identity(tmp_path, "subscriber")
    auditor = make_identity(tmp_path, "auditor")
    for ident, role in ((peer, "peer"), (subscriber, "subscriber"), (auditor, "auditor")):
        add_peer(node_dir, ident, role)
    config = load_config(node_dir)
    db = await Database.open(node_dir)
    hub = CheckpointHub()
    try:
        peers = await db.read(lambda ledger: ledger.peers.list_peers())
        ctx = server_ssl_context(
            config.tls_cert_path, config.tls_key_path, [p.tls_cert for p in peers]
        )
        app = make_app(db, hub, origin=config.origin, limits=limits)
        server = await start_server(app, ctx, **server_options)
        try:
            yield Served(
                node_dir,
                server,
                config.tls_cert_path.read_text(encoding="ascii"),
                db,
                hub,
                ctx,
                peer,
                subscriber,
                auditor,
            )
        finally:
            await server.close()
    finally:
        await db.close()


@pytest.fixture
def serve_with(tmp_path: Path, node_dir: Path) -> Callable[..., AsyncIterator[Served]]:
    def factory(limits: ApiLimits, **server_options: float) -> AsyncIterator[Served]:
        return _serve(tmp_path, node_dir, limits, **server_options)

    return factory
