"""Refused TLS handshakes are logged with address and reason, rate-limited, and counted."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from node.api.app import make_app
from node.api.connections import HandshakeLog
from node.api.server import start_server
from node.config import load_config
from node.ledger.database import Database
from node.ledger.events import CheckpointHub
from node.metrics import NodeMetrics
from node.tls import server_ssl_context
from tests.waiting import eventually


async def test_a_client_without_a_certificate_is_logged_and_counted(
    node_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hashmesh.api")
    config = load_config(node_dir)
    db = await Database.open(node_dir)
    metrics = NodeMetrics()
    try:
        ctx = server_ssl_context(config.tls_cert_path, config.tls_key_path, [])
        app = make_app(db, CheckpointHub(), origin=config.origin, metrics=metrics)
        server = await start_server(app, ctx)
        try:
            client = ssl.create_default_context(cafile=str(config.tls_cert_path))
            client.check_hostname = False
            # No client certificate: the server refuses the handshake.
            try:
                reader, writer = await asyncio.open_connection(server.host, server.port, ssl=client)
                writer.write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
                await writer.drain()
                await reader.read()
                writer.close()
            except (ssl.SSLError, ConnectionError, OSError):
                pass  # how the refusal reaches the client depends on the TLS version

            def lines() -> list[str]:
                return [
                    r.getMessage()
                    for r in caplog.records
                    if r.getMessage().startswith("refused a TLS handshake")
                ]

            (line,) = await eventually(lines, until=lambda ls: len(ls) == 1, what="one line")
        finally:
            await server.close()
    finally:
        await db.close()
    assert line.startswith("refused a TLS handshake on the api listener from 127.0.0.1: ")
    assert "certificate" in line
    samples = [
        s
        for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for s in f.samples
        if s.name == "hashmesh_tls_handshake_failures_total"
    ]
    assert len(samples) == 1 and samples[0].value == 1 and samples[0].labels["listener"] == "api"


def test_refusals_are_rate_limited_and_the_rest_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hashmesh.api")
    now = [0.0]
    counted: list[str] = []
    log = HandshakeLog("public", counted.append, rate=1.0, burst=3, clock=lambda: now[0])
    for _ in range(10):
        log.refused("198.51.100.7", TimeoutError())
    now[0] = 1.0  # one token back
    log.refused("198.51.100.7", ConnectionResetError())
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4 and len(counted) == 11
    assert messages[0].endswith("from 198.51.100.7: timeout")
    assert messages[3].endswith("connection_reset (7 more refused since, not logged)")
    assert counted[-1] == "connection_reset"
