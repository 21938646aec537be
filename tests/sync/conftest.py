"""Sync test harness: real nodes, and a scripted peer that can misbehave.

The scripted peer (python-tuf's RepositorySimulator, over a real socket) is a
small aiohttp app on 127.0.0.1 with real mutual TLS, serving the read API
from a real node directory's SQLite ledger. A test switches on one fault at a
time: bad signatures, entries that do not hash to the root, an HTML error
page, oversized or inflating bodies, stalls, malformed JSON. The syncing side
is the production code: Database, Replica, PeerClient, sync_peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import hashlib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from node.api.server import RunningServer, run_server
from node.api.state import HUB_KEY
from node.cli.cards import make_card, parse_card
from node.config import load_config
from node.ledger import Ledger
from node.ledger.database import Database
from node.ledger.provision import init_node
from node.sync.client import MAX_BUNDLE_BYTES, HttpPeerClient
from node.sync.runner import sync_once
from node.tls import client_ssl_context
from protocol.entry import AddEntry
from protocol.wire import ENTRY_BUNDLE_MEDIA_TYPE, encode_entry_bundle
from tests.waiting import PATIENCE, eventually

AUTHOR = "hotline-a.example/hashmesh"
FOLLOWER = "hotline-b.example/hashmesh"


def sha(i: int) -> str:
    # Distinct for every i, with letters, so upper-casing one changes it.
    return hashlib.sha256(b"%d" % i).hexdigest()


def add_entries(node_dir: Path, start: int, count: int) -> None:
    """Write ``count`` adds to a node's own log, as the CLI would (own connection)."""
    with Ledger.open(node_dir) as ledger:
        ledger.append(
            [
                AddEntry.create(signal_type="sha256", value=sha(i))
                for i in range(start, start + count)
            ]
        )


def make_node(base: Path, name: str, origin: str) -> Path:
    path = base / name
    init_node(path, origin)
    return path


def card_json(node_dir: Path, url: str) -> str:
    config = load_config(node_dir)
    with Ledger.open(node_dir, read_only=True) as ledger:
        vkey = ledger.own_log.verifier_key
    return make_card(
        name=config.origin,
        url=url,
        tls_cert=config.tls_cert_path.read_text(encoding="ascii"),
        vkey=vkey,
    ).to_json()


@dataclass
class Serving:
    """A node run as `hashmesh serve` runs it (``run_server``), in this process."""

    node_dir: Path
    server: RunningServer
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def cert_pem(self) -> str:
        return load_config(self.node_dir).tls_cert_path.read_text(encoding="ascii")

    def card(self, base: Path) -> Path:
        """Write this node's card (as `hashmesh peer card` prints it) under ``base``."""
        path = base / f"{self.node_dir.name}.card.json"
        path.write_text(card_json(self.node_dir, self.url), encoding="utf-8")
        return path

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, timeout=PATIENCE)


async def serve(
    node_dir: Path, *, sync: bool, poll: float = 5.0, listen: str = "127.0.0.1:0"
) -> Serving:
    """Run the node as `hashmesh serve` does; ``listen`` a fixed port to restart it there."""
    started: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_server(
            node_dir,
            listen,
            sync=sync,
            poll_interval=poll,
            on_started=started.set_result,
            stop=stop,
        )
    )
    server = await asyncio.wait_for(started, timeout=PATIENCE)
    return Serving(node_dir, server, stop, task)


async def shutdown(*nodes: Serving) -> None:
    await asyncio.gather(*(node.close() for node in nodes))


async def once(node_dir: Path) -> list[str | None]:
    """One sync round of node_dir with its peers (what `hashmesh sync --once` does)."""
    config = load_config(node_dir)
    db = await Database.open(node_dir)
    try:
        reports = await sync_once(db, cert_path=config.tls_cert_path, key_path=config.tls_key_path)
    finally:
        await db.close()
    return [r.error for r in reports]


@dataclass
class ScriptedPeer:
    """A peer serving a real node's logs, with switchable faults."""

    node_dir: Path
    client_cert_pem: str
    faults: set[str] = field(default_factory=set)
    transform: Callable[[str, bytes], bytes] | None = None
    requests: list[str] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    def ledger(self) -> Ledger:
        return Ledger.open(self.node_dir, read_only=True)

    def _json(self, path: str, obj: Any) -> web.Response:
        import json

        return self._body(path, json.dumps(obj).encode(), "application/json")

    def _body(self, path: str, body: bytes, content_type: str) -> web.Response:
        if self.transform is not None:
            body = self.transform(path, body)
        if "html" in self.faults:
            return web.Response(
                status=200,
                body=b"<html><body>502 Bad Gateway</body></html>",
                content_type="text/html",
            )
        if "bad_json" in self.faults:
            body = body[: len(body) // 2]
        if "oversized" in self.faults and path == "/v1/entries":
            body = body + b"\x00\x01x" * (MAX_BUNDLE_BYTES // 3 + 1)
        if "gzip_bomb" in self.faults and path == "/v1/entries":
            bomb = gzip.compress(b" " * (64 * 1024 * 1024))
            return web.Response(
                body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": content_type}
            )
        return web.Response(body=body, content_type=content_type)

    async def _logs(self, request: web.Request) -> web.Response:
        self.requests.append("/v1/logs")
        with self.ledger() as ledger:
            logs = []
            for log in ledger.store.list_logs():
                cp = ledger.store.latest_checkpoint(log.log_id)
                if cp is None:
                    continue
                note = cp.note
                if "bad_signature" in self.faults:
                    lines = note.split("\n")
                    lines[1] = str(int(lines[1]) + 1)  # body no longer matches the signature
                    note = "\n".join(lines)
                logs.append(
                    {
                        "origin": log.origin,
                        "vkey": log.verifier_key,
                        "size": cp.size,
                        "checkpoint": note,
                        "frozen": False,
                    }
                )
        return self._json("/v1/logs", {"logs": logs})

    async def _entries(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"/v1/entries {request.query_string}")
        if "stall" in self.faults:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), timeout=60)
        origin = request.query["origin"]
        start, end = int(request.query["start"]), int(request.query["end"])
        with self.ledger() as ledger:
            log = ledger.store.get_log(origin)
            datas = [bytes(d) for _i, d, _h in ledger.store.iter_entries(log.log_id, start, end)]
        if "wrong_entries" in self.faults and datas:
            datas[-1] = AddEntry.create(signal_type="md5", value="e" * 32).to_bytes()
        if "flip_byte" in self.faults and datas:
            raw = bytearray(datas[0])
            raw[-3] ^= 0x01
            datas[0] = bytes(raw)
        if "extra_entry" in self.faults and datas:
            datas.append(datas[-1])
        body = encode_entry_bundle(datas)
        if "trailing_byte" in self.faults:
            body += b"\x00"
        return self._body("/v1/entries", body, ENTRY_BUNDLE_MEDIA_TYPE)

    async def _consistency(self, request: web.Request) -> web.Response:
        self.requests.append("/v1/proof/consistency")
        origin = request.query["origin"]
        old, new = int(request.query["old"]), int(request.query["new"])
        with self.ledger() as ledger:
            proof = ledger.prove_consistency(old, new, origin=origin)
        hashes = [h.hex() for h in proof.hashes]
        if "bad_proof" in self.faults and hashes:
            hashes[0] = "00" * 32
        return self._json(
            "/v1/proof/consistency", {"old_size": old, "new_size": new, "hashes": hashes}
        )

    async def _evidence(self, request: web.Request) -> web.Response:
        self.requests.append("/v1/evidence")
        return self._json("/v1/evidence", {"evidence": []})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/logs", self._logs)
        app.router.add_get("/v1/entries", self._entries)
        app.router.add_get("/v1/proof/consistency", self._consistency)
        app.router.add_get("/v1/evidence", self._evidence)
        config = load_config(self.node_dir)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(config.tls_cert_path, config.tls_key_path)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=self.client_cert_pem)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"https://127.0.0.1:{port}"

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class World:
    author: Path
    follower: Path
    peer: ScriptedPeer
    db: Database

    def client(self, **kwargs: Any) -> HttpPeerClient:
        config = load_config(self.follower)
        return HttpPeerClient(
            AUTHOR,
            self.peer.url,
            server_cert_pem=load_config(self.author).tls_cert_path.read_text(encoding="ascii"),
            cert_path=config.tls_cert_path,
            key_path=config.tls_key_path,
            **kwargs,
        )


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """An author node served by a scripted peer, and a follower that trusts it."""
    author = make_node(tmp_path, "a", AUTHOR)
    follower = make_node(tmp_path, "b", FOLLOWER)
    follower_cert = load_config(follower).tls_cert_path.read_text(encoding="ascii")
    peer = ScriptedPeer(author, follower_cert)
    await peer.start()
    with Ledger.open(author, read_only=True) as ledger:
        vkey = ledger.own_log.verifier_key
    with Ledger.open(follower) as ledger:
        ledger.follow(AUTHOR, vkey)
    db = await Database.open(follower)
    try:
        yield World(author, follower, peer, db)
    finally:
        await db.close()
        await peer.stop()


# -- a live three-node network: A <-> B <-> C, C follows A through B ------------

A = "hotline-a.example/hashmesh"
B = "hotline-b.example/hashmesh"
C = "agency-c.example/hashmesh"


def add_card(
    node_dir: Path, of: Path, url: str, *, follow: bool = True, role: str = "peer"
) -> None:
    """``node_dir`` adds the node in ``of``, served at ``url``, as a peer of ``role`` (and
    follows its origin, a peer's), as `hashmesh peer add` does with its card."""
    card = parse_card(card_json(of, url))
    with Ledger.open(node_dir) as ledger:
        ledger.peers.add_peer(card.peer_record(role))
        if follow and role == "peer":
            ledger.follow(card.name, card.vkey)


def introduce(a: Serving, b: Serving, *, follow: bool = True) -> None:
    """a adds b as a peer (and follows b's origin), as `hashmesh peer add` does."""
    add_card(a.node_dir, b.node_dir, b.url, follow=follow)


async def accepts(server: Serving, client_dir: Path) -> bool:
    """Whether ``server`` answers a mutual-TLS request made as the node in ``client_dir``."""
    mine = load_config(client_dir)
    ctx = client_ssl_context(mine.tls_cert_path, mine.tls_key_path, server.cert_pem)
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
            session.get(server.url + "/v1/health") as resp,
        ):
            return resp.status == 200
    except (aiohttp.ClientError, ssl.SSLError, OSError):
        return False  # the handshake was refused: not (yet) a trusted peer


async def trusted(server: Serving, *clients: Path) -> None:
    """Wait until ``server`` accepts each of ``clients``, added as peers by another
    connection (its watcher notices new peers by polling the database)."""
    for client in clients:
        await eventually(
            functools.partial(accepts, server, client),
            what=f"{server.node_dir.name} to accept TLS connections from {client.name}",
        )


async def listened(server: Serving, count: int) -> None:
    """Wait until ``count`` clients listen to ``server``'s event stream: the peers'
    sync runners are connected and will hear every announcement from now on."""
    hub = server.server.runner.app[HUB_KEY]
    await eventually(
        lambda: hub.subscriber_count,
        until=lambda n: n >= count,
        what=f"{count} event-stream subscriber(s) at {server.node_dir.name}",
    )


def follow(node_dir: Path, author_dir: Path) -> str:
    with Ledger.open(author_dir, read_only=True) as author:
        origin, vkey = author.own_log.origin, author.own_log.verifier_key
    with Ledger.open(node_dir) as ledger:
        ledger.follow(origin, vkey)
    return vkey


async def author_and_follower(author: Path, follower: Path) -> tuple[Serving, Serving]:
    """Both nodes served (no sync runner), each a peer of the other and trusted by it;
    the follower follows the author and has synced its log once."""
    served_a = await serve(author, sync=False)
    served_b = await serve(follower, sync=False)
    try:
        introduce(served_b, served_a)
        introduce(served_a, served_b, follow=False)
        await trusted(served_a, follower)
        await trusted(served_b, author)
        assert await once(follower) == [None]
    except BaseException:
        await shutdown(served_a, served_b)
        raise
    return served_a, served_b


NO_POLL = 3600.0
"""A poll interval no test outlives: whatever a node learns, it was told."""


@pytest.fixture
async def network(tmp_path: Path) -> AsyncIterator[tuple[Serving, Serving, Serving]]:
    """A <-> B <-> C, C follows A (through B), every node serving and syncing live.

    The runners' fallback poll is an hour away (:data:`NO_POLL`): everything
    travels by announcement, which is what the live tests mean to show.
    """
    nodes = [
        await serve(make_node(tmp_path, name, origin), sync=True, poll=NO_POLL)
        for name, origin in (("a", A), ("b", B), ("c", C))
    ]
    a, b, c = nodes
    introduce(a, b)
    introduce(b, a)
    introduce(b, c)
    introduce(c, b)
    follow(c.node_dir, a.node_dir)
    try:
        # Each runner listens to its peers' announcements before any test writes.
        await listened(a, 1)
        await listened(b, 2)
        await listened(c, 1)
        yield a, b, c
    finally:
        await shutdown(*nodes)
