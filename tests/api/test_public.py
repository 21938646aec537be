"""The public read listener: real servers on 127.0.0.1, real TLS, real SQLite.

The client trusts the node's certificate and presents none. What it gets
must be byte for byte what ``protocol.tiles`` computes and what ``hashmesh
publish`` writes; every non-canonical path is a 400/404 JSON error (sent as
raw request targets, so no client library normalises them first); entry
bundles are never served; each client IP has its own bucket; and the
mutual-TLS API beside it still refuses clients without certificates.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from node.api.app import make_app
from node.api.public import (
    CHECKPOINT_CACHE_CONTROL,
    FULL_TILE_CACHE_CONTROL,
    PARTIAL_TILE_CACHE_CONTROL,
    PublicLimits,
    make_public_app,
)
from node.api.server import RunningServer, run_server, start_public_server, start_server
from node.api.state import PeerRateLimiter
from node.config import load_config
from node.errors import ConfigError
from node.ledger import Ledger
from node.ledger.database import Database
from node.ledger.events import CheckpointHub
from node.ledger.hashlist import HashListReader
from node.ledger.provision import init_node
from node.ledger.publish import publish
from node.tls import public_server_ssl_context, server_ssl_context
from protocol.tiles import compute_tiles_from_leaf_hashes, tiles_for_size
from tests.api.conftest import Served, raw_request

ORIGIN = "hotline-public.example/hashmesh"
SIZE = 600


def add_random(ledger: Ledger, n: int, seed: int) -> None:
    rng = random.Random(seed)
    reader = HashListReader(fmt="lines", default_type="sha256", extra_labels=["src:test"])
    ledger.import_lines(reader.read(iter([f"{rng.getrandbits(256):064x}\n" for _ in range(n)])))


@dataclass
class Public:
    node_dir: Path
    server: RunningServer
    client_ctx: ssl.SSLContext
    db: Database

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.client_ctx))

    async def raw(self, method: str, target: str) -> tuple[int, dict[str, str], bytes]:
        """Send one request with exactly this target; return status, headers, body."""
        return await raw_request(
            self.server.host, self.server.port, self.client_ctx, method, target
        )


def trusting_ctx(cert_path: Path) -> ssl.SSLContext:
    """A client that trusts the node's certificate and presents none."""
    return ssl.create_default_context(cafile=str(cert_path))


@pytest.fixture
def public_node(tmp_path: Path) -> Path:
    path = tmp_path / "node"
    init_node(path, ORIGIN, listen="127.0.0.1:0")
    with Ledger.open(path) as ledger:
        add_random(ledger, SIZE, seed=1)
    return path


async def _public(node_dir: Path, limits: PublicLimits) -> AsyncIterator[Public]:
    config = load_config(node_dir)
    db = await Database.open(node_dir)
    try:
        app = make_public_app(db, limits)
        ctx = public_server_ssl_context(config.tls_cert_path, config.tls_key_path)
        server = await start_public_server(app, ctx)
        try:
            yield Public(node_dir, server, trusting_ctx(config.tls_cert_path), db)
        finally:
            await server.close()
    finally:
        await db.close()


@pytest.fixture
async def public(public_node: Path) -> AsyncIterator[Public]:
    async for p in _public(public_node, PublicLimits()):
        yield p


async def test_tiles_and_checkpoint_equal_protocol_and_published(
    public: Public, tmp_path: Path
) -> None:
    with Ledger.open(public.node_dir, read_only=True) as ledger:
        leaves = [bytes(h) for _i, _d, h in ledger.entries(ledger.own_log)]
        note = ledger.served_note(ledger.own_log, ledger.latest_checkpoint())
        publish(ledger, tmp_path / "published")
    expected = compute_tiles_from_leaf_hashes(leaves)
    assert [t for t, _ in expected] == tiles_for_size(SIZE)
    async with public.session() as s:
        for tile, data in expected:
            async with s.get(f"{public.server.url}/{tile.to_path()}") as resp:
                assert resp.status == 200
                body = await resp.read()
                assert body == data
                assert body == (tmp_path / "published" / tile.to_path()).read_bytes()
                assert resp.headers["Content-Type"] == "application/octet-stream"
                assert resp.headers["Cache-Control"] == (
                    FULL_TILE_CACHE_CONTROL if tile.is_full else PARTIAL_TILE_CACHE_CONTROL
                )
        # Twice: the second answer comes from the tile cache, the same bytes.
        async with s.get(f"{public.server.url}/tile/0/000") as resp:
            assert await resp.read() == expected[0][1]
        async with s.get(f"{public.server.url}/checkpoint") as resp:
            assert resp.status == 200
            text = await resp.text()
            assert resp.headers["Cache-Control"] == CHECKPOINT_CACHE_CONTROL
            assert resp.headers["Content-Type"].startswith("text/plain")
    assert text == note == (tmp_path / "published" / "checkpoint").read_text(encoding="utf-8")


async def test_head_has_headers_and_no_body(public: Public) -> None:
    status, headers, body = await public.raw("HEAD", "/tile/0/000")
    assert status == 200 and body == b""
    assert headers["content-length"] == "8192"
    assert headers["cache-control"] == FULL_TILE_CACHE_CONTROL


async def test_older_partial_tiles_are_served_as_prefixes(public: Public) -> None:
    async with public.session() as s:
        async with s.get(f"{public.server.url}/tile/0/002.p/88") as resp:
            current = await resp.read()
        async with s.get(f"{public.server.url}/tile/0/002.p/3") as resp:
            assert resp.status == 200
            assert await resp.read() == current[: 3 * 32]


@pytest.mark.parametrize(
    ("target", "status", "words"),
    [
        ("/tile/0/0000", 400, "not 3 digits"),
        ("/tile/0/01", 400, "not 3 digits"),
        ("/tile/00/000", 400, "leading zero"),
        ("/tile/0/001/000", 400, "needs an 'x' prefix"),
        ("/tile/0/x000/001", 400, "leading zero group"),
        ("/tile/0/000.p/0", 400, "out of range"),
        ("/tile/0/000.p/256", 400, "full tile"),
        ("/tile/0/000.p/300", 400, "out of range"),
        ("/tile/0/000.p/07", 400, "leading zero"),
        ("/tile/8/000", 400, "out of range"),
        ("/tile/0/../../checkpoint", 400, "dot segment"),
        ("/tile/0/%2e%2e/000", 400, "3 digits"),
        ("/tile/0//000", 400, "empty segment"),
        ("/tile/0/000/", 400, "empty segment"),
        ("/tile/0/002.p/89", 404, "beyond the tree"),
        ("/tile/0/003", 404, "beyond the tree"),
        ("/tile/1/000", 404, "beyond the tree"),
        ("/tile/entries/000", 404, "never public"),
        ("/tile/entries/002.p/88", 404, "never public"),
        ("/tile/entries/0000", 400, "not 3 digits"),
        ("/etc/passwd", 404, "no endpoint"),
        ("/../ledger.db", 404, "no endpoint"),
        ("/v1/entries", 404, "no endpoint"),
        ("/checkpoint/", 404, "no endpoint"),
    ],
)
async def test_bad_paths_are_json_errors(
    public: Public, target: str, status: int, words: str
) -> None:
    got, headers, body = await public.raw("GET", target)
    assert got == status, body
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)
    assert words in error["error"]


async def test_only_get_and_head(public: Public) -> None:
    for method in ("POST", "PUT", "DELETE"):
        status, headers, body = await public.raw(method, "/checkpoint")
        assert status == 405
        assert headers["allow"] == "GET,HEAD"
        assert "not allowed" in json.loads(body)["error"]


async def test_each_client_ip_has_a_bucket(public_node: Path) -> None:
    # One token per 100 s: no refill can land between the requests, however slow the machine.
    async for p in _public(public_node, PublicLimits(rate=0.01, burst=3)):
        statuses = []
        for _ in range(4):
            status, headers, body = await p.raw("GET", "/tile/0/000")
            statuses.append(status)
        assert statuses == [200, 200, 200, 429]
        assert int(headers["retry-after"]) >= 1
        assert "requests/s from 127.0.0.1" in json.loads(body)["error"]


def test_ip_buckets_are_bounded() -> None:
    now = [0.0]
    limiter = PeerRateLimiter(rate=1.0, burst=2, clock=lambda: now[0], max_keys=3)
    for ip in ("a", "b", "c"):
        assert limiter.take(ip) == 0.0
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0  # a is empty
    now[0] += 0.5
    assert limiter.take("d") == 0.0  # evicts b, the least recently used
    assert len(limiter) == 3
    assert limiter.take("a") > 0  # a kept its (empty) bucket
    now[0] += 10
    assert limiter.take("e") == 0.0  # every bucket refilled: all dropped for free
    assert len(limiter) == 1


async def test_mtls_api_beside_it_still_requires_a_certificate(
    served: Served, tmp_path: Path
) -> None:
    config = load_config(served.node_dir)
    app = make_public_app(served.db)
    public = await start_public_server(
        app, public_server_ssl_context(config.tls_cert_path, config.tls_key_path)
    )
    try:
        ctx = trusting_ctx(config.tls_cert_path)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
            async with s.get(public.url + "/checkpoint") as resp:
                assert resp.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with s.get(served.url + "/v1/health") as resp:
                    await resp.read()
            # And the public listener serves nothing of the API.
            async with s.get(public.url + "/v1/entries?origin=x&start=0&end=1") as resp:
                assert resp.status == 404
    finally:
        await public.close()


async def test_servers_refuse_the_wrong_app_or_context(public_node: Path) -> None:
    config = load_config(public_node)
    db = await Database.open(public_node)
    try:
        api = make_app(db, CheckpointHub(), origin=ORIGIN)
        public_ctx = public_server_ssl_context(config.tls_cert_path, config.tls_key_path)
        with pytest.raises(ConfigError, match="only the public application"):
            await start_public_server(api, public_ctx)
        with pytest.raises(ConfigError, match="CERT_REQUIRED"):
            await start_server(make_public_app(db), public_ctx)
        old_tls = public_server_ssl_context(config.tls_cert_path, config.tls_key_path)
        old_tls.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        with pytest.raises(ConfigError, match="the minimum is TLSv1_2"):
            await start_public_server(make_public_app(db), old_tls)
        mtls_ctx = server_ssl_context(config.tls_cert_path, config.tls_key_path, [])
        public_app = make_public_app(db)
        server = await start_public_server(public_app, mtls_ctx)  # stricter: allowed
        await server.close()
    finally:
        await db.close()


async def test_serve_starts_the_configured_public_listener(public_node: Path) -> None:
    config_path = public_node / "config.toml"
    config_path.write_text(
        config_path.read_text(encoding="utf-8") + '\n[public]\nlisten = "127.0.0.1:0"\n',
        encoding="utf-8",
    )
    stop = asyncio.Event()
    started: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_server(public_node, sync=False, stop=stop, on_public_started=started.set_result)
    )
    try:
        server = await asyncio.wait_for(started, timeout=60)
        ctx = trusting_ctx(load_config(public_node).tls_cert_path)
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s,
            s.get(server.url + "/checkpoint") as resp,
        ):
            assert resp.status == 200
            assert (await resp.text()).startswith(f"{ORIGIN}\n{SIZE}\n")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


def test_public_listener_is_off_by_default(public_node: Path) -> None:
    assert load_config(public_node).public.listen is None


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ('listen = "nowhere"', "public.listen"),
        ("listen = 8444", "public.listen must be a string"),
        ('listen = "127.0.0.1:99999"', "public.listen"),
        ('listen = "127.0.0.1:8443"', "give the public listener a port of its own"),
        ("rate = 0", "public.rate"),
        ('rate = "fast"', "public.rate"),
        ("burst = 0", "public.burst"),
        ("burst = 1.5", "public.burst"),
        ("port = 8444", "unknown [public] setting(s) port"),
    ],
)
def test_public_config_is_validated(tmp_path: Path, table: str, words: str) -> None:
    node_dir = tmp_path / "n"
    init_node(node_dir, ORIGIN, listen="127.0.0.1:8443")
    config_path = node_dir / "config.toml"
    config_path.write_text(
        config_path.read_text(encoding="utf-8") + f"\n[public]\n{table}\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(node_dir)
    assert words in str(caught.value)


def test_public_config_is_read(tmp_path: Path) -> None:
    node_dir = tmp_path / "n"
    init_node(node_dir, ORIGIN)
    config_path = node_dir / "config.toml"
    config_path.write_text(
        config_path.read_text(encoding="utf-8")
        + '\n[public]\nlisten = "0.0.0.0:8444"\nrate = 20\nburst = 40\n',
        encoding="utf-8",
    )
    public = load_config(node_dir).public
    assert (public.listen, public.rate, public.burst) == ("0.0.0.0:8444", 20.0, 40)
