"""SIGHUP (``systemctl reload``) makes a serving node present the certificate now on disk."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
from pathlib import Path

import aiohttp

from node.config import load_config
from node.tls import client_ssl_context, write_node_identity
from tests.api.conftest import VALUES, add_peer, init_api_node, make_identity
from tests.api.test_server import _start
from tests.waiting import PATIENCE, eventually


async def _health(url: str, ctx: ssl.SSLContext) -> int | str:
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s,
            s.get(url + "/v1/health") as resp,
        ):
            return resp.status
    except aiohttp.ClientConnectorCertificateError as e:
        return f"certificate refused: {e}"


async def test_sighup_reloads_the_tls_identity(tmp_path: Path) -> None:
    node_dir = init_api_node(tmp_path / "node", VALUES[:1])
    config = load_config(node_dir)
    peer = make_identity(tmp_path, "peer")
    add_peer(node_dir, peer, "peer")
    old_pem = config.tls_cert_path.read_text(encoding="ascii")
    task, server = await _start(node_dir)
    try:
        # A new identity (as `tls retire-old` leaves it) replaces the files.
        fresh = tmp_path / "fresh"
        write_node_identity(
            fresh / "node.key", fresh / "node.crt", common_name="n", host="127.0.0.1"
        )
        new_pem = (fresh / "node.crt").read_text(encoding="ascii")
        trusting_new = client_ssl_context(peer.cert_path, peer.key_path, new_pem)
        trusting_old = client_ssl_context(peer.cert_path, peer.key_path, old_pem)
        os.replace(fresh / "node.key", config.tls_key_path)
        os.replace(fresh / "node.crt", config.tls_cert_path)
        # Until the reload the old certificate is still presented.
        assert await _health(server.url, trusting_old) == 200
        assert str(await _health(server.url, trusting_new)).startswith("certificate refused")
        os.kill(os.getpid(), signal.SIGHUP)
        await eventually(
            lambda: _health(server.url, trusting_new),
            until=lambda s: s == 200,
            what="the new certificate presented after SIGHUP",
        )
        assert not task.done()
    finally:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(task, PATIENCE)
