"""The handshake matrix and per-request authorisation over real mutual TLS."""

from __future__ import annotations

import ssl
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from node.api.app import make_app
from node.api.server import start_server
from node.config import load_config
from node.errors import ConfigError
from node.tls import (
    add_trusted_cert,
    check_server_context,
    client_ssl_context,
    server_ssl_context,
)
from tests.api.conftest import (
    Identity,
    Served,
    add_peer,
    make_expired_identity,
    make_identity,
)


async def _get(ctx: ssl.SSLContext | bool, url: str) -> aiohttp.ClientResponse:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.get(url + "/v1/health") as resp,
    ):
        await resp.read()
        return resp


def _no_cert_ctx(server_pem: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=server_pem)
    return ctx


async def test_known_peer_gets_health(served: Served) -> None:
    resp = await _get(served.client_ctx(served.peer), served.url)
    assert resp.status == 200


async def test_no_client_certificate_fails_handshake(served: Served) -> None:
    with pytest.raises(aiohttp.ClientError):
        await _get(_no_cert_ctx(served.server_pem), served.url)


async def test_untrusted_self_signed_certificate_fails_handshake(
    served: Served, tmp_path: Path
) -> None:
    stranger = make_identity(tmp_path, "stranger")
    with pytest.raises(aiohttp.ClientError):
        await _get(served.client_ctx(stranger), served.url)


async def test_certificate_from_another_ca_fails_handshake(served: Served, tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("peer.example", "127.0.0.1")
    ctx = _no_cert_ctx(served.server_pem)
    leaf.configure_cert(ctx)
    with pytest.raises(aiohttp.ClientError):
        await _get(ctx, served.url)


async def test_expired_certificate_fails_handshake_even_when_trusted(
    served: Served, tmp_path: Path
) -> None:
    expired = make_expired_identity(tmp_path, "expired")
    add_peer(served.node_dir, expired, "peer")
    add_trusted_cert(served.ssl_ctx, expired.pem)
    with pytest.raises(aiohttp.ClientError):
        await _get(served.client_ctx(expired), served.url)


async def test_peer_added_while_serving_can_connect(served: Served, tmp_path: Path) -> None:
    late = make_identity(tmp_path, "late")
    add_peer(served.node_dir, late, "subscriber")
    with pytest.raises(aiohttp.ClientError):
        await _get(served.client_ctx(late), served.url)
    add_trusted_cert(served.ssl_ctx, late.pem)
    assert (await _get(served.client_ctx(late), served.url)).status == 200


async def test_trusted_but_unknown_certificate_gets_403(served: Served, tmp_path: Path) -> None:
    # In the trust store (so the handshake passes) but not in the peers table.
    ghost = make_identity(tmp_path, "ghost")
    add_trusted_cert(served.ssl_ctx, ghost.pem)
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=served.client_ctx(ghost))
        ) as session,
        session.get(served.url + "/v1/logs") as resp,
    ):
        assert resp.status == 403
        body = await resp.json()
        assert body["field"] is None and "known peer" in body["error"]
        assert "checkpoint" not in await resp.text()


async def test_removed_peer_is_refused_on_the_same_keepalive_connection(served: Served) -> None:
    created: list[object] = []
    reused: list[object] = []
    trace = aiohttp.TraceConfig()

    async def on_create(_s: object, _c: object, params: object) -> None:
        created.append(params)

    async def on_reuse(_s: object, _c: object, params: object) -> None:
        reused.append(params)

    trace.on_connection_create_end.append(on_create)
    trace.on_connection_reuseconn.append(on_reuse)
    connector = aiohttp.TCPConnector(ssl=served.client_ctx(served.peer), limit=1)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
        async with session.get(served.url + "/v1/logs") as resp:
            assert resp.status == 200
            await resp.read()
        removed = await served.db.write(lambda ledger: ledger.peers.remove_peer("peer.example/log"))
        assert removed is True
        async with session.get(served.url + "/v1/logs") as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]
    assert len(created) == 1
    assert len(reused) == 1


async def test_server_refuses_context_without_cert_required(node_dir: Path) -> None:
    from node.ledger.database import Database
    from node.ledger.events import CheckpointHub

    config = load_config(node_dir)
    for mode in (ssl.CERT_OPTIONAL, ssl.CERT_NONE):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.verify_mode = mode
        ctx.load_cert_chain(config.tls_cert_path, config.tls_key_path)
        with pytest.raises(ConfigError, match="CERT_REQUIRED"):
            check_server_context(ctx)
        db = await Database.open(node_dir)
        try:
            app = make_app(db, CheckpointHub(), origin=config.origin)
            with pytest.raises(ConfigError, match="CERT_REQUIRED"):
                await start_server(app, ctx)
        finally:
            await db.close()


def test_server_context_settings(node_dir: Path) -> None:
    config = load_config(node_dir)
    ctx = server_ssl_context(config.tls_cert_path, config.tls_key_path, [])
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    old.verify_mode = ssl.CERT_REQUIRED
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with pytest.raises(ConfigError, match="minimum is TLSv1_2"):
        check_server_context(old)
    with pytest.raises(ConfigError, match="PROTOCOL_TLS_SERVER"):
        check_server_context(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))


def test_bad_pem_is_a_config_error(node_dir: Path, tmp_path: Path) -> None:
    config = load_config(node_dir)
    with pytest.raises(ConfigError, match="tls_cert"):
        server_ssl_context(config.tls_cert_path, config.tls_key_path, ["not a certificate"])
    ident: Identity = make_identity(tmp_path, "x")
    with pytest.raises(ConfigError, match="tls_cert"):
        client_ssl_context(ident.cert_path, ident.key_path, "-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="TLS identity"):
        server_ssl_context(tmp_path / "missing.crt", tmp_path / "missing.key", [])


async def test_client_refuses_a_server_other_than_the_pinned_one(
    served: Served, tmp_path: Path
) -> None:
    other = make_identity(tmp_path, "other-server")
    ctx = client_ssl_context(served.peer.cert_path, served.peer.key_path, other.pem)
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await _get(ctx, served.url)


def test_peer_spki_without_tls_is_none() -> None:
    from node.tls import peer_spki

    assert peer_spki(SimpleNamespace(transport=None)) is None
