"""Audits of a log published as C2SP tlog-tiles: a directory and real HTTPS, no certificate.

The public tree is made from a real ledger (real SQLite, real keys) with
``protocol.tiles`` directly, written as ``hashmesh publish --out DIR`` lays it
out (so a test can damage it freely), and served by a small aiohttp static
server over real TLS on 127.0.0.1 with the node's own certificate (which the
auditor trusts with ``--ca``). The last tests go end to end through
``hashmesh publish`` itself and the node's public listener.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from node.config import load_config
from node.ledger import Ledger
from protocol.checkpoint import cosign_checkpoint
from protocol.keys import NoteSigner
from protocol.tiles import compute_tiles_from_leaf_hashes
from tests.api.conftest import Identity
from tests.audit.conftest import (
    ORIGIN,
    add_hashes,
    fork_node,
    ident_args,
    new_node,
    public_listener,
    run_cli,
    serve,
    vkey_of,
)

pytestmark = pytest.mark.integration

ENTRIES = 600  # two full level-0 tiles, a partial one, and a level-1 tile


def publish(node_path: Path, out: Path, *, cosign: bool = False) -> int:
    """Write the node's public tree (checkpoint and hash tiles) to ``out``; its size."""
    with Ledger.open(node_path, read_only=True) as ledger:
        log = ledger.own_log
        record = ledger.latest_checkpoint()
        note = ledger.served_note(log, record)
        leaves = [leaf for _i, _data, leaf in ledger.entries(log, 0, record.size)]
    if cosign:
        witness = NoteSigner.generate("witness.example/w1")
        note = cosign_checkpoint(note, witness, 1_700_000_000)
    for tile, data in compute_tiles_from_leaf_hashes(leaves):
        path = out / tile.to_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoint").write_text(note, encoding="utf-8")
    return len(leaves)


class StaticServer:
    """A directory served read-only over HTTPS under ``/log``, with the node's certificate."""

    def __init__(self, runner: web.AppRunner, url: str) -> None:
        self.runner = runner
        self.url = url

    @classmethod
    async def start(cls, directory: Path, cert: Path, key: Path) -> StaticServer:
        app = web.Application()
        app.router.add_static("/log", directory)
        runner = web.AppRunner(app)
        await runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return cls(runner, f"https://127.0.0.1:{port}/log")


@pytest.fixture(scope="module")
def node_of_600(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The node every test starts from: 600 appends of one entry, each signed (seconds)."""
    return new_node(tmp_path_factory.mktemp("published"), "a", entries=ENTRIES)


@pytest.fixture
def node(tmp_path: Path, node_of_600: Path) -> Path:
    """A copy of :func:`node_of_600` of the test's own (same key and history), free to change."""
    return fork_node(node_of_600, tmp_path / "a")


@pytest.fixture
async def https(tmp_path: Path, node: Path) -> AsyncIterator[tuple[StaticServer, Path, Path]]:
    """The node's public tree served over HTTPS: (server, published dir, CA file)."""
    out = tmp_path / "public"
    publish(node, out)
    config = load_config(node)
    server = await StaticServer.start(out, config.tls_cert_path, config.tls_key_path)
    try:
        yield server, out, config.tls_cert_path
    finally:
        await server.runner.cleanup()


async def test_directory_audits_clean_then_consistent_after_growth(
    tmp_path: Path, node: Path
) -> None:
    out, state = tmp_path / "public", tmp_path / "state.json"
    publish(node, out, cosign=True)  # a witness cosignature line is ignored, not a failure
    args = ["audit", str(out), "--vkey", vkey_of(node), "--state", str(state)]
    first = await run_cli(*args, "--json")
    assert first.status == 0, first.stdout + first.stderr
    [origin] = first.json()["origins"]  # type: ignore[misc]
    assert origin["status"] == "ok" and origin["head_after"]["size"] == ENTRIES
    assert origin["sources"] == [
        {
            "source": str(out),
            "size": ENTRIES,
            "checkpoints": 1,
            "replay_from": 0,
            "leaves_hashed": ENTRIES,
        }
    ]

    add_hashes(node, ENTRIES, 300, batch=300)
    publish(node, out)
    second = await run_cli(*args)
    assert second.status == 0, second.stdout + second.stderr
    assert f"ok   origin={ORIGIN} (from size {ENTRIES}, head now 900)" in second.stdout
    assert f"300 leaf hashes from {ENTRIES}" in second.stdout
    saved = json.loads(state.read_text())
    assert saved["origins"][ORIGIN]["head"]["size"] == 900

    # protocol/ alone audits the same directory.
    alone = await run_cli("verify-tiles", str(out), "--vkey", vkey_of(node), module="protocol")
    assert alone.status == 0, alone.stderr
    assert f"OK: tiles verified: origin {ORIGIN}, size 900" in alone.stdout


async def test_https_audit_without_a_client_certificate(
    tmp_path: Path, node: Path, https: tuple[StaticServer, Path, Path]
) -> None:
    server, out, ca = https
    state = tmp_path / "state.json"
    args = ["audit", server.url, "--ca", str(ca), "--vkey", vkey_of(node), "--state", str(state)]
    first = await run_cli(*args)
    assert first.status == 0, first.stdout + first.stderr
    assert f"{server.url}: size {ENTRIES}, 1 checkpoint(s) verified" in first.stdout

    add_hashes(node, ENTRIES, 100, batch=100)
    publish(node, out)
    second = await run_cli(*args, "--json")
    assert second.status == 0, second.stdout
    [origin] = second.json()["origins"]  # type: ignore[misc]
    assert (origin["head_before"], origin["head_after"]["size"]) == (ENTRIES, ENTRIES + 100)

    # Without --ca the self-signed certificate is not trusted: a fetch failure, no state change.
    untrusted = await run_cli(*args[:2], "--vkey", vkey_of(node), "--state", str(state))
    assert untrusted.status == 1
    assert f"FAIL fetch source={server.url}" in untrusted.stdout


async def test_https_missing_tile_is_a_clear_error(
    tmp_path: Path, node: Path, https: tuple[StaticServer, Path, Path]
) -> None:
    server, out, ca = https
    (out / "tile" / "0" / "001").unlink()
    result = await run_cli(
        "audit", server.url, "--ca", str(ca), "--vkey", vkey_of(node),
        "--state", str(tmp_path / "state.json"),
    )  # fmt: skip
    assert result.status == 1
    assert (
        f"FAIL fetch origin={ORIGIN} source={server.url} size {ENTRIES}: tile tile/0/001 is "
        "missing (/tile/0/001 answered 404)"
    ) in result.stdout
    assert not (tmp_path / "state.json").exists()


async def test_directory_missing_tile_is_a_clear_error(tmp_path: Path, node: Path) -> None:
    out = tmp_path / "public"
    publish(node, out)
    (out / "tile" / "0" / "001").unlink()
    result = await run_cli(
        "audit", str(out), "--vkey", vkey_of(node), "--state", str(tmp_path / "s.json")
    )
    assert result.status == 1
    assert f"FAIL fetch origin={ORIGIN} source={out} size {ENTRIES}: cannot read " in result.stdout
    assert "tile/0/001: No such file or directory" in result.stdout


@pytest.mark.parametrize(
    ("tile", "named"),
    [
        ("tile/0/001", "tile tile/0/001 does not hash to hash 1 of tile tile/1/000.p/2"),
        ("tile/0/002.p/88", "tile tile/0/002.p/88 is wrong"),
        ("tile/1/000.p/2", "tile tile/1/000.p/2: hash 0 is not the root of tile tile/0/000"),
    ],
)
async def test_flipped_byte_names_the_tile(
    tmp_path: Path, node: Path, tile: str, named: str
) -> None:
    out = tmp_path / "public"
    publish(node, out)
    path = out / tile
    data = bytearray(path.read_bytes())
    data[5] ^= 0x01
    path.write_bytes(bytes(data))
    result = await run_cli(
        "audit", str(out), "--vkey", vkey_of(node), "--state", str(tmp_path / "s.json")
    )
    assert result.status == 1
    assert f"FAIL leaves origin={ORIGIN} source={out}" in result.stdout
    assert named in result.stdout
    alone = await run_cli("verify-tiles", str(out), "--vkey", vkey_of(node), module="protocol")
    assert alone.status == 1
    assert named in alone.stderr


async def audited_then_rewritten(tmp_path: Path, node: Path, grown: int) -> tuple[Path, Path]:
    """Audit the node's log of ENTRIES + 10, then publish a rewrite of size ENTRIES + ``grown``.

    Returns the rewritten log's directory and the state file.
    """
    rewritten = fork_node(node, tmp_path / "a-rewritten")
    add_hashes(node, ENTRIES, 10, batch=10)
    add_hashes(rewritten, 10_000, grown, batch=grown)  # same key, another history
    honest_out, rewritten_out = tmp_path / "honest", tmp_path / "rewritten"
    publish(node, honest_out)
    publish(rewritten, rewritten_out)
    state = tmp_path / "state.json"
    ok = await run_cli("audit", str(honest_out), "--vkey", vkey_of(node), "--state", str(state))
    assert ok.status == 0, ok.stdout
    return rewritten_out, state


async def test_rewritten_log_of_the_same_size_is_a_fork_with_evidence(
    tmp_path: Path, node: Path
) -> None:
    rewritten_out, state = await audited_then_rewritten(tmp_path, node, 10)
    vkey = vkey_of(node)
    caught = await run_cli(
        "audit", str(rewritten_out), "--vkey", vkey, "--state", str(state),
        "--evidence-dir", str(tmp_path / "ev"),
    )  # fmt: skip
    assert caught.status == 1, caught.stdout
    size = ENTRIES + 10
    assert f"FAIL consistency origin={ORIGIN} source={rewritten_out} size {size}:" in caught.stdout
    assert "rewritten since the last audit" in caught.stdout
    [evidence] = (tmp_path / "ev").iterdir()
    check = await run_cli("verify-evidence", str(evidence), "--vkey", vkey, module="protocol")
    assert check.status == 0, check.stderr
    assert json.loads(state.read_text())["origins"][ORIGIN]["head"]["size"] == size


async def test_rewritten_log_that_grew_is_a_fork_proven_from_its_tiles(
    tmp_path: Path, node: Path
) -> None:
    # The rewrite has no checkpoint of the audited size: its tiles prove the other prefix.
    rewritten_out, state = await audited_then_rewritten(tmp_path, node, 300)
    vkey = vkey_of(node)
    caught = await run_cli(
        "audit", str(rewritten_out), "--vkey", vkey, "--state", str(state), "--json"
    )
    assert caught.status == 1
    [failure] = caught.json()["failures"]  # type: ignore[misc]
    assert failure["check"] == "consistency"
    assert (failure["old_size"], failure["new_size"]) == (ENTRIES + 10, ENTRIES + 300)
    path = tmp_path / "fork.json"
    path.write_text(json.dumps(failure["evidence"]))
    check = await run_cli("verify-evidence", str(path), "--vkey", vkey, module="protocol")
    assert check.status == 0, check.stderr


async def test_rolled_back_log_is_a_history_failure(tmp_path: Path) -> None:
    small = new_node(tmp_path, "a", entries=300)
    large = fork_node(small, tmp_path / "a-large")
    add_hashes(large, 300, 10, batch=10)
    large_out, small_out = tmp_path / "large", tmp_path / "small"
    publish(large, large_out)
    publish(small, small_out)
    state, vkey = tmp_path / "state.json", vkey_of(small)
    assert (
        await run_cli("audit", str(large_out), "--vkey", vkey, "--state", str(state))
    ).status == 0
    back = await run_cli("audit", str(small_out), "--vkey", vkey, "--state", str(state))
    assert back.status == 1
    assert (
        f"FAIL history origin={ORIGIN} source={small_out} 310 -> 300: the origin's published "
        "log serves size 300, smaller than the size 310 audited before"
    ) in back.stdout


async def test_wrong_key_fails(tmp_path: Path, node: Path) -> None:
    out = tmp_path / "public"
    publish(node, out)
    impostor = new_node(tmp_path, "impostor")  # same origin, another key
    result = await run_cli(
        "audit", str(out), "--vkey", vkey_of(impostor), "--state", str(tmp_path / "s.json")
    )
    assert result.status == 1
    assert f"FAIL signature origin={ORIGIN} source={out} size {ENTRIES}:" in result.stdout
    alone = await run_cli("verify-tiles", str(out), "--vkey", vkey_of(impostor), module="protocol")
    assert alone.status == 1

    # A key for another origin leaves the published log's origin without one: a failure too.
    other = new_node(tmp_path, "other", origin="hotline-other.example/hashmesh")
    unkeyed = await run_cli(
        "audit", str(out), "--vkey", vkey_of(other), "--state", str(tmp_path / "s.json")
    )
    assert unkeyed.status == 1
    assert f"FAIL key origin={ORIGIN} source={out}: no key is trusted for {ORIGIN}" in (
        unkeyed.stdout
    )


async def test_witness_fed_from_the_published_log(
    tmp_path: Path, node: Path, https: tuple[StaticServer, Path, Path]
) -> None:
    server, out, ca = https
    witness = new_node(tmp_path, "w", origin="witness.example/hashmesh")
    with Ledger.open(witness) as ledger:
        ledger.follow(ORIGIN, vkey_of(node))
    node_copy = fork_node(node, tmp_path / "a-at-600")  # same key, free to diverge later
    feed = ["--dir", str(witness), "witness", "feed", server.url, "--ca", str(ca)]
    first = await run_cli(*feed, "--out", str(tmp_path / "cosigned.txt"))
    assert first.status == 0, first.stdout + first.stderr
    assert f"cosigned {ORIGIN} at size {ENTRIES} from {server.url}" in first.stdout
    wkey = (await run_cli("--dir", str(witness), "witness", "vkey")).stdout.strip()
    check = await run_cli(
        "verify-checkpoint", str(tmp_path / "cosigned.txt"), "--vkey", vkey_of(node),
        "--witness", wkey, "--witness-threshold", "1", module="protocol",
    )  # fmt: skip
    assert check.status == 0, check.stderr

    # Growth: the consistency proof from the cosigned size comes from the public tiles.
    add_hashes(node, ENTRIES, 300, batch=300)
    publish(node, out)
    second = await run_cli(*feed)
    assert second.status == 0, second.stdout + second.stderr
    assert f"cosigned {ORIGIN} at size 900" in second.stdout
    assert second.stdout.splitlines()[-1].startswith("— witness.example/hashmesh/witness ")

    # Another history, the copy's, is refused at the cosigned size and past it.
    for extra in (300, 301):
        rewritten = fork_node(node_copy, tmp_path / f"a-rewritten-{extra}")
        add_hashes(rewritten, 50_000, extra, batch=extra)
        publish(rewritten, tmp_path / f"rewritten-{extra}")
        refused = await run_cli(
            "--dir", str(witness), "witness", "feed", str(tmp_path / f"rewritten-{extra}")
        )
        assert refused.status == 1, refused.stdout
        assert (
            "another root hash was already cosigned" if extra == 300 else "does not verify"
        ) in refused.stderr, refused.stderr


# End to end: through `hashmesh publish --out DIR` and the node's public listener.


async def test_audit_of_what_hashmesh_publish_writes(tmp_path: Path, node: Path) -> None:
    out, state = tmp_path / "published", tmp_path / "state.json"
    args = ["audit", str(out), "--vkey", vkey_of(node), "--state", str(state)]
    for size, grown in ((ENTRIES, 0), (ENTRIES + 300, 300)):
        if grown:
            add_hashes(node, ENTRIES, grown, batch=grown)
        wrote = await run_cli("--dir", str(node), "publish", "--out", str(out))
        assert wrote.status == 0, wrote.stderr
        audited = await run_cli(*args, "--json")
        assert audited.status == 0, audited.stdout + audited.stderr
        [origin] = audited.json()["origins"]  # type: ignore[misc]
        assert origin["head_after"]["size"] == size
    alone = await run_cli("verify-tiles", str(out), "--vkey", vkey_of(node), module="protocol")
    assert alone.status == 0, alone.stderr


async def test_audit_and_witness_from_the_public_listener(tmp_path: Path, node: Path) -> None:
    async with public_listener(node) as (url, cert):
        # The listener serves at the root of its host: --published says it is a published log.
        args = [
            "audit", url, "--published", "--ca", str(cert),
            "--vkey", vkey_of(node), "--state", str(tmp_path / "state.json"),
        ]  # fmt: skip
        first = await run_cli(*args)
        assert first.status == 0, first.stdout + first.stderr
        assert f"{url}: size {ENTRIES}, 1 checkpoint(s) verified" in first.stdout
        add_hashes(node, ENTRIES, 100, batch=100)
        second = await run_cli(*args)
        assert second.status == 0, second.stdout + second.stderr
        assert f"(from size {ENTRIES}, head now {ENTRIES + 100})" in second.stdout

        witness = new_node(tmp_path, "w", origin="witness.example/hashmesh")
        with Ledger.open(witness) as ledger:
            ledger.follow(ORIGIN, vkey_of(node))
        fed = await run_cli(
            "--dir", str(witness), "witness", "feed", url, "--ca", str(cert)
        )  # fmt: skip
        assert fed.status == 0, fed.stdout + fed.stderr
        assert f"cosigned {ORIGIN} at size {ENTRIES + 100}" in fed.stdout


async def test_live_node_and_published_logs_compared_in_one_run(
    tmp_path: Path, node: Path, auditor: Identity
) -> None:
    twin = fork_node(node, tmp_path / "a-twin")  # same key, another entry 600
    add_hashes(node, ENTRIES, 1)
    add_hashes(twin, 70_000, 1)
    honest_out, twin_out = tmp_path / "honest", tmp_path / "twin"
    publish(node, honest_out)
    publish(twin, twin_out)
    served = await serve(node, auditor)
    try:
        base = [
            "audit", "--card", str(served.card(tmp_path)), *ident_args(auditor),
            "--state", str(tmp_path / "state.json"), "--no-save",
        ]  # fmt: skip
        same = await run_cli(*base, str(honest_out), "--json")
        assert same.status == 0, same.stdout + same.stderr
        [origin] = same.json()["origins"]  # type: ignore[misc]
        assert {s["source"] for s in origin["sources"]} == {served.url, str(honest_out)}

        split = await run_cli(*base, str(twin_out), "--evidence-dir", str(tmp_path / "ev"))
    finally:
        await served.close()
    assert split.status == 1, split.stdout
    size = ENTRIES + 1
    assert f"FAIL split-view origin={ORIGIN} source=" in split.stdout
    assert f"size {size}: " in split.stdout and "were shown different histories" in split.stdout
    [evidence] = (tmp_path / "ev").iterdir()
    check = await run_cli(
        "verify-evidence", str(evidence), "--vkey", vkey_of(node), module="protocol"
    )
    assert check.status == 0, check.stderr
