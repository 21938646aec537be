"""The operations listener: a real ``serve`` on 127.0.0.1 with ``[ops] listen`` set.

Plain HTTP, no client certificate; a bearer token when configured; the
config refuses a non-loopback address without one; other code mounts pages
on it through :class:`node.api.ops.OpsMount`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from node.api.ops import OPS_CONTEXT_KEY, OpsContext, OpsMount, make_ops_app
from node.api.public import PublicLimits, make_public_app
from node.api.server import RunningServer, run_server, start_ops_server
from node.config import load_config
from node.errors import ConfigError
from node.ledger.database import Database
from node.ledger.events import CheckpointHub
from tests.adversary.served_process import serve_process
from tests.api.conftest import VALUES, init_api_node
from tests.waiting import eventually

TOKEN = "s3cret-token-for-the-ops-listener"


def with_ops(node_dir: Path, table: str) -> Path:
    with (node_dir / "config.toml").open("a", encoding="utf-8") as f:
        f.write(f"\n[ops]\n{table}\n")
    return node_dir


@pytest.fixture
def ops_node(tmp_path: Path) -> Path:
    return init_api_node(tmp_path / "node", VALUES[:3])


@asynccontextmanager
async def serving(node_dir: Path, mounts: Sequence[OpsMount] = ()) -> AsyncIterator[RunningServer]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    started: asyncio.Future[RunningServer] = loop.create_future()
    task = asyncio.create_task(
        run_server(
            node_dir, sync=False, stop=stop, on_ops_started=started.set_result, ops_mounts=mounts
        )
    )
    try:
        done, _ = await asyncio.wait({task, started}, timeout=60, return_when="FIRST_COMPLETED")
        assert started in done, "the ops listener did not start"
        yield started.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def test_healthz_answers_over_plain_http(ops_node: Path) -> None:
    with_ops(ops_node, 'listen = "127.0.0.1:0"')
    async with serving(ops_node) as ops:
        assert ops.url.startswith("http://127.0.0.1:")
        status, headers, body = await get(ops.url + "/healthz")
        assert status == 200
        assert body == '{"status": "ok"}'
        assert headers["Cache-Control"] == "no-store"
        status, _, body = await get(ops.url + "/nothing-here")
        assert status == 404
        assert "no endpoint /nothing-here" in body
        assert "/healthz" in body and "docs/monitoring.md" in body


async def test_token_is_asked_when_set(ops_node: Path) -> None:
    with_ops(ops_node, f'listen = "127.0.0.1:0"\ntoken = "{TOKEN}"')
    async with serving(ops_node) as ops:
        status, headers, body = await get(ops.url + "/healthz")
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in body
        wrong = await get(ops.url + "/healthz", {"Authorization": "Bearer " + TOKEN[:-1] + "x"})
        assert wrong[0] == 401
        basic = await get(ops.url + "/healthz", {"Authorization": "Basic " + TOKEN})
        assert basic[0] == 401
        right = await get(ops.url + "/healthz", {"Authorization": "Bearer " + TOKEN})
        assert right[0] == 200


async def test_token_file_is_read_relative_to_the_node(ops_node: Path) -> None:
    (ops_node / "ops.token").write_text(TOKEN + "\n", encoding="utf-8")
    with_ops(ops_node, 'listen = "127.0.0.1:0"\ntoken_file = "ops.token"')
    assert load_config(ops_node).ops.token == TOKEN
    assert TOKEN not in repr(load_config(ops_node))


async def test_mounted_pages_are_served_with_or_without_the_token(ops_node: Path) -> None:
    seen: list[OpsContext] = []

    def build(auth: str) -> Callable[[OpsContext], web.Application]:
        def factory(context: OpsContext) -> web.Application:
            seen.append(context)

            async def page(request: web.Request) -> web.Response:
                # A mounted page reaches the node through the context.
                db = request.app[OPS_CONTEXT_KEY].db
                size = await db.read(lambda ledger: ledger.latest_checkpoint().size)
                return web.Response(text=f"{auth}: {size} entries")

            app = web.Application()
            app[OPS_CONTEXT_KEY] = context
            app.router.add_get("/", page)
            return app

        return factory

    with_ops(ops_node, f'listen = "127.0.0.1:0"\ntoken = "{TOKEN}"')
    mounts = (
        OpsMount("/console", build("own"), own_auth=True),
        OpsMount("/extra", build("token")),
    )
    async with serving(ops_node, mounts) as ops:
        assert [c.config.origin for c in seen] == [load_config(ops_node).origin] * 2
        status, _, body = await get(ops.url + "/console/")
        assert (status, body) == (200, "own: 3 entries")
        # Without the slash: sent to the mount's root (for the bearer-token
        # mount only with the token).
        async with aiohttp.ClientSession() as s:
            async with s.get(ops.url + "/console?x=1", allow_redirects=False) as resp:
                assert (resp.status, resp.headers["Location"]) == (302, "/console/?x=1")
            async with s.get(ops.url + "/console") as resp:
                assert (resp.status, await resp.text()) == (200, "own: 3 entries")
            async with s.get(ops.url + "/extra", allow_redirects=False) as resp:
                assert resp.status == 401
        status, _, _ = await get(ops.url + "/extra/")
        assert status == 401
        status, _, body = await get(ops.url + "/extra/", {"Authorization": f"Bearer {TOKEN}"})
        assert (status, body) == (200, "token: 3 entries")
        # The mounted page's own errors are its own (aiohttp's text), not the ops JSON.
        status, _, body = await get(ops.url + "/console/missing")
        assert status == 404
        assert not body.startswith("{")


def test_ops_listener_is_off_by_default(ops_node: Path) -> None:
    assert load_config(ops_node).ops.listen is None


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ('listen = "0.0.0.0:9443"', "not a loopback address"),
        ('listen = "192.0.2.1:9443"', "set ops.token"),
        ('listen = "ops.example:9443"', "not a loopback address"),
        ("listen = 9443", "ops.listen must be a string"),
        ('listen = "127.0.0.1:99999"', "ops.listen"),
        ('listen = "127.0.0.1:0"\ntoken = "short"', "at least 16 characters"),
        ('listen = "127.0.0.1:0"\ntoken = 12345678901234567', "ops.token must be a string"),
        ('listen = "127.0.0.1:0"\ntoken_file = "absent"', "ops.token_file: cannot read"),
        (f'listen = "127.0.0.1:0"\ntoken = "{TOKEN}"\ntoken_file = "x"', "not both"),
        ('listen = "127.0.0.1:0"\nport = 1', "unknown [ops] setting(s) port"),
    ],
)
def test_bad_ops_settings_are_refused_in_one_line(ops_node: Path, table: str, words: str) -> None:
    with_ops(ops_node, table)
    with pytest.raises(ConfigError) as info:
        load_config(ops_node)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_ops_listener_cannot_share_the_api_address(ops_node: Path) -> None:
    (ops_node / "config.toml").write_text(
        (ops_node / "config.toml")
        .read_text(encoding="utf-8")
        .replace('listen = "127.0.0.1:0"', 'listen = "127.0.0.1:8443"'),
        encoding="utf-8",
    )
    with_ops(ops_node, 'listen = "127.0.0.1:8443"')
    with pytest.raises(ConfigError, match="port of its own"):
        load_config(ops_node)


@pytest.mark.parametrize("listen", ["[::1]:9443", "localhost:9443", "127.0.0.2:9443"])
def test_loopback_addresses_need_no_token(ops_node: Path, listen: str) -> None:
    with_ops(ops_node, f'listen = "{listen}"')
    assert load_config(ops_node).ops.listen == listen


def test_non_loopback_with_a_token_is_allowed(ops_node: Path) -> None:
    with_ops(ops_node, f'listen = "0.0.0.0:9443"\ntoken = "{TOKEN}"')
    assert load_config(ops_node).ops.token == TOKEN


async def test_only_the_ops_app_is_served_over_plain_http(ops_node: Path) -> None:
    db = await Database.open(ops_node)
    try:
        with pytest.raises(ConfigError, match="plain HTTP"):
            await start_ops_server(make_public_app(db, PublicLimits()))
        with pytest.raises(ConfigError, match="plain HTTP"):
            await start_ops_server(web.Application())
        app = make_ops_app(OpsContext(db=db, hub=CheckpointHub(), config=load_config(ops_node)))
        server = await start_ops_server(app)
        try:
            status, _, _ = await get(server.url + "/healthz")
            assert status == 200
        finally:
            await server.close()
    finally:
        await db.close()


async def test_serve_prints_the_bound_addresses(ops_node: Path) -> None:
    """``serve`` names the ports it really bound (``:0`` asks for any), not ``:0``."""
    with_ops(ops_node, 'listen = "127.0.0.1:0"')
    served = await serve_process(ops_node)
    try:
        api = f"hashmesh.api: serving {load_config(ops_node).origin} on {served.url} (mutual TLS)"
        lines = await eventually(
            lambda: [line for line in served.log if "hashmesh.api: serving " in line],
            until=lambda lines: len(lines) == 2,
            what="the two `serving` lines",
        )
        assert lines[0].rstrip("\n").endswith(api)
        ops = re.search(r"serving .* on (http://127\.0\.0\.1:(\d+)) \(no token.*\n", lines[1])
        assert ops is not None and int(ops.group(2)) != 0
        assert f"({ops.group(1)}/console/)" in lines[1]
        # Once each: no note of the CLI repeats a listener.
        assert sum(f"{ops.group(1)}" in line for line in served.log) == 1
        assert sum(served.url in line for line in served.log) == 1
        status, _, _ = await get(ops.group(1) + "/healthz")
        assert status == 200
    finally:
        await served.stop()
