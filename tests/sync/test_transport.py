"""The one capped transport, against a real aiohttp server over real mutual TLS.

The server answers from a script (one answer per request, the last one
repeated), so each test says exactly what the peer does: 429 and 503 with
``Retry-After`` in both forms, oversized and inflating bodies, wrong media
types, error bodies.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web

from node.errors import PeerProtocolError, PeerUnavailableError
from node.sync.transport import RetryPolicy, Transport, parse_retry_after
from node.tls import client_ssl_context, server_ssl_context, write_node_identity

JSON = "application/json"


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"{}"
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ScriptedServer:
    """Answers each request with the next scripted answer (the last one repeats)."""

    answers: list[Answer]
    url: str = ""
    seen: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(f"{request.method} {request.path_qs}")
        answer = self.answers[min(len(self.seen), len(self.answers)) - 1]
        if answer.headers.get("Content-Encoding") == "gzip":
            return web.Response(
                status=answer.status,
                body=answer.body,
                headers={**answer.headers, "Content-Type": answer.content_type},
            )
        return web.Response(
            status=answer.status,
            body=answer.body,
            content_type=answer.content_type,
            headers=answer.headers,
        )


@dataclass
class Pair:
    server: ScriptedServer
    tmp: Path

    def transport(self, **kwargs: object) -> Transport:
        ctx = client_ssl_context(
            self.tmp / "client.crt",
            self.tmp / "client.key",
            (self.tmp / "server.crt").read_text(encoding="ascii"),
        )
        return Transport("peer-x", self.server.url, ssl_context=ctx, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    for name in ("server", "client"):
        write_node_identity(
            tmp_path / f"{name}.key", tmp_path / f"{name}.crt", common_name=name, host="127.0.0.1"
        )
    server = ScriptedServer([Answer()])
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    ctx = server_ssl_context(
        tmp_path / "server.crt",
        tmp_path / "server.key",
        [(tmp_path / "client.crt").read_text(encoding="ascii")],
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
    server.url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield Pair(server, tmp_path)
    finally:
        await runner.cleanup()


def http_date(when: datetime) -> str:
    return email.utils.format_datetime(when, usegmt=True)


# -- Retry-After ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_seconds_is_honoured(pair: Pair, status: int) -> None:
    pair.server.answers = [
        Answer(status, b'{"error":"slow down","field":null}', headers={"Retry-After": "0"}),
        Answer(200, b'{"ok":true}'),
    ]
    async with pair.transport() as transport:
        assert await transport.get_json("/v1/logs", cap=1024) == {"ok": True}
    assert pair.server.seen == ["GET /v1/logs", "GET /v1/logs"]


async def test_retry_after_http_date_is_honoured(pair: Pair) -> None:
    past = http_date(datetime.now(UTC) - timedelta(minutes=5))
    pair.server.answers = [
        Answer(503, b'{"error":"busy","field":null}', headers={"Retry-After": past}),
        Answer(200, b"note\n", content_type="text/plain"),
    ]
    async with pair.transport() as transport:
        assert await transport.get("/v1/checkpoint", media="text/plain", cap=1024) == b"note\n"
    assert len(pair.server.seen) == 2


@pytest.mark.parametrize(
    ("retry_after", "deadline", "reason"),
    [
        ("3600", 60.0, "longer than RetryPolicy.max_wait"),
        ("20", 5.0, "ends past the caller's deadline"),
    ],
)
async def test_a_wait_too_long_is_not_taken(
    pair: Pair, retry_after: str, deadline: float, reason: str
) -> None:
    pair.server.answers = [
        Answer(429, b'{"error":"rate","field":null}', headers={"Retry-After": retry_after})
    ]
    async with pair.transport(retry=RetryPolicy(max_wait=30)) as transport:
        at = asyncio.get_running_loop().time() + deadline
        with pytest.raises(
            PeerUnavailableError, match=rf"answered 429: rate \(retry after {retry_after}\)"
        ):
            await transport.get_json("/v1/logs", cap=1024, deadline=at)
    assert len(pair.server.seen) == 1, reason


async def test_retries_are_bounded(pair: Pair) -> None:
    pair.server.answers = [
        Answer(429, b'{"error":"rate","field":null}', headers={"Retry-After": "0"})
    ]
    async with pair.transport(retry=RetryPolicy(max_attempts=3)) as transport:
        with pytest.raises(PeerUnavailableError, match="429"):
            await transport.get_json("/v1/logs", cap=1024)
    assert len(pair.server.seen) == 3


async def test_503_without_retry_after_is_not_retried(pair: Pair) -> None:
    pair.server.answers = [Answer(503, b"down", content_type="text/plain")]
    async with pair.transport() as transport:
        with pytest.raises(PeerUnavailableError, match="peer peer-x: /v1/logs answered 503"):
            await transport.get_json("/v1/logs", cap=1024)
    assert len(pair.server.seen) == 1


async def test_a_post_is_retried_with_its_body(pair: Pair) -> None:
    pair.server.answers = [
        Answer(429, b"{}", headers={"Retry-After": "0"}),
        Answer(200, b'{"matches":[]}'),
    ]
    async with pair.transport() as transport:
        doc = await transport.post_json("/v1/match", b'{"hashes":[]}', cap=1024)
    assert doc == {"matches": []}
    assert pair.server.seen == ["POST /v1/match", "POST /v1/match"]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Sat, 28 Nov 2026 07:00:30 GMT", 30.0),
        ("Sat, 28 Nov 2026 06:00:00 GMT", 0.0),  # in the past: retry now
        ("Saturday, 28-Nov-26 07:01:00 GMT", 60.0),  # the obsolete forms are accepted too
        ("Sat Nov 28 07:00:45 2026", 45.0),
        ("-1", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        ("\u0661\u0662", None),  # non-ASCII digits
    ],
)
def test_parse_retry_after(value: str, seconds: float | None) -> None:
    now = datetime(2026, 11, 28, 7, 0, 0, tzinfo=UTC)
    assert parse_retry_after(value, now=now) == seconds


# -- caps, media types, errors -----------------------------------------------------------


async def test_a_declared_length_over_the_cap_is_refused(pair: Pair) -> None:
    pair.server.answers = [Answer(body=b"[" + b"0," * 600 + b"0]")]
    async with pair.transport() as transport:
        with pytest.raises(PeerProtocolError, match="exceeds the cap of 1024"):
            await transport.get_json("/v1/logs", cap=1024)


async def test_the_cap_counts_decoded_bytes(pair: Pair) -> None:
    bomb = gzip.compress(b" " * (4 * 1024 * 1024))
    pair.server.answers = [Answer(body=bomb, headers={"Content-Encoding": "gzip"})]
    assert len(bomb) < 64 * 1024
    async with pair.transport() as transport:
        with pytest.raises(PeerProtocolError, match="exceeds the cap of 65536 bytes"):
            await transport.get_json("/v1/logs", cap=64 * 1024)


async def test_another_media_type_is_refused(pair: Pair) -> None:
    pair.server.answers = [Answer(body=b"<html>502</html>", content_type="text/html")]
    async with pair.transport() as transport:
        with pytest.raises(PeerProtocolError, match="expected application/json, got text/html"):
            await transport.get_json("/v1/logs", cap=1024)


async def test_an_error_answer_names_the_peers_message(pair: Pair) -> None:
    pair.server.answers = [Answer(404, b'{"error":"unknown origin","field":"origin"}')]
    async with pair.transport() as transport:
        with pytest.raises(
            PeerProtocolError, match="peer peer-x: /v1/checkpoint answered 404: unknown origin"
        ):
            await transport.get("/v1/checkpoint", {"origin": "o"}, media="text/plain", cap=1024)
    assert pair.server.seen == ["GET /v1/checkpoint?origin=o"]


async def test_an_unreachable_peer_is_unavailable(tmp_path: Path) -> None:
    for name in ("server", "client"):
        write_node_identity(
            tmp_path / f"{name}.key", tmp_path / f"{name}.crt", common_name=name, host="127.0.0.1"
        )
    ctx = client_ssl_context(
        tmp_path / "client.crt",
        tmp_path / "client.key",
        (tmp_path / "server.crt").read_text(encoding="ascii"),
    )
    async with Transport("peer-x", "https://127.0.0.1:1", ssl_context=ctx) as transport:
        with pytest.raises(PeerUnavailableError, match=r"cannot reach https://127\.0\.0\.1:1"):
            await transport.get_json("/v1/logs", cap=1024)
