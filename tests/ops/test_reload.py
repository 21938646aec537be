"""SIGHUP (``systemctl reload``) makes a serving node present the certificate now on disk."""

from __future__ import annotations

import os
import signal
import ssl
from pathlib import Path

import aiohttp

from node.config import load_config
from node.tls import client_ssl_context, write_node_identity
from tests.api.conftest import VALUES, add_peer, init_api_node, make_identity
from tests.sync.conftest import serve, shutdown
from tests.waiting import eventually


async def _health(url: str, ctx: ssl.SSLContext) -> int | str:
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s,
            s.get(url + "/v1/health") as resp,
        ):
            return resp.status
    except aiohttp.ClientConnectorCertificateError as e:
        return f"certificate refused: {e}"


def _new_identity(tmp_path: Path, name: str) -> tuple[Path, Path, str]:
    fresh = tmp_path / name
    write_node_identity(fresh / "node.key", fresh / "node.crt", common_name="n", host="127.0.0.1")
    return fresh / "node.key", fresh / "node.crt", (fresh / "node.crt").read_text("ascii")


async def test_sighup_and_a_new_certificate_file_reload_the_tls_identity(tmp_path: Path) -> None:
    node_dir = init_api_node(tmp_path / "node", VALUES[:1])
    config = load_config(node_dir)
    peer = make_identity(tmp_path, "peer")
    add_peer(node_dir, peer, "peer")
    old_pem = config.tls_cert_path.read_text(encoding="ascii")
    mtime = config.tls_cert_path.stat().st_mtime_ns
    node = await serve(node_dir, sync=False)
    url = node.server.url

    def trusting(pem: str) -> ssl.SSLContext:
        return client_ssl_context(peer.cert_path, peer.key_path, pem)

    try:
        # New files whose modification time is the old one's: the watcher
        # sees no change, so only SIGHUP (systemctl reload) puts them in use.
        key, cert, second_pem = _new_identity(tmp_path, "second")
        os.utime(cert, ns=(mtime, mtime))
        os.replace(key, config.tls_key_path)
        os.replace(cert, config.tls_cert_path)
        assert await _health(url, trusting(old_pem)) == 200
        assert str(await _health(url, trusting(second_pem))).startswith("certificate refused")
        os.kill(os.getpid(), signal.SIGHUP)
        await eventually(
            lambda: _health(url, trusting(second_pem)),
            until=lambda s: s == 200,
            what="the new certificate presented after SIGHUP",
        )
        # A new certificate file (`tls retire-old`) is presented without a signal.
        key, cert, third_pem = _new_identity(tmp_path, "third")
        os.replace(key, config.tls_key_path)
        os.replace(cert, config.tls_cert_path)
        await eventually(
            lambda: _health(url, trusting(third_pem)),
            until=lambda s: s == 200,
            what="the certificate put in place presented without a signal",
        )
        assert not node.task.done()
    finally:
        await shutdown(node)
