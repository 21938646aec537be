"""Live audits across key rotations: ``/v1/rotations`` and the audit engine following it.

An auditor never reads entries, so it learns an origin's rotations from
``GET /v1/rotations`` (each proven by the old key's checkpoint and an
inclusion proof). Real nodes, real SQLite, real mutual TLS; forged rotations
are made the way a dishonest operator would, by editing the node's database.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from node.audit.client import AuditClient, ServedRotation
from node.audit.run import AuditOptions, NodeTarget, run_audit
from node.audit.state import AuditState, OriginState
from node.config import load_config
from node.ledger import Ledger
from node.tls import client_ssl_context
from protocol.audit import AuditHead
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.entry import RotateEntry
from protocol.keys import NoteSigner
from protocol.rotation import KeyChain, KeyPeriod, apply_rotation_proof
from tests.api.conftest import Identity
from tests.audit.conftest import (
    ORIGIN,
    CliResult,
    Served,
    add_hashes,
    ident_args,
    new_node,
    run_cli,
    serve,
)

pytestmark = pytest.mark.integration


def signer_of(node: Path) -> NoteSigner:
    path = load_config(node).signing_key_path
    return NoteSigner.from_text(path.read_text(encoding="ascii").strip())


def rotate(node: Path, reason: str = "scheduled rotation") -> tuple[int, NoteSigner]:
    """Rotate the node's key; the rotate entry's index and the new key."""
    new = NoteSigner.generate(ORIGIN)
    with Ledger.open(node) as ledger:
        result = ledger.rotate_key(reason, new_signer=new)
    return result.index, new


def vkey(signer: NoteSigner) -> str:
    return signer.verifier().to_text()


def tamper(node: Path, trigger: str, sql: str, args: tuple[object, ...]) -> None:
    """Edit the node's database as a dishonest operator could (dropping a guard trigger).

    Such an operator also turns off the node's own scrub, which would otherwise
    refuse to serve the forged log (node.ledger.scrub) before the auditor sees it.
    """
    config = node / "config.toml"
    if "[scrub]" not in config.read_text(encoding="utf-8"):
        with config.open("a", encoding="utf-8") as f:
            f.write("\n[scrub]\nentries_per_second = 0\n")
    conn = sqlite3.connect(node / "ledger.db")
    try:
        with conn:
            conn.execute(f"DROP TRIGGER {trigger}")
            assert conn.execute(sql, args).rowcount == 1
    finally:
        conn.close()


async def fetch_rotations(served: Served, auditor: Identity) -> list[ServedRotation]:
    client = AuditClient(
        served.url,
        served.url,
        server_cert_pem=served.cert_pem,
        cert_path=auditor.cert_path,
        key_path=auditor.key_path,
    )
    try:
        return await client.rotations(ORIGIN)
    finally:
        await client.close()


def pem_file(served: Served, base: Path) -> str:
    path = base / f"{served.node_dir.name}.pem"
    path.write_text(served.cert_pem, encoding="ascii")
    return str(path)


async def audit_once(
    node: Path, auditor: Identity, base: Path, pinned: NoteSigner
) -> tuple[CliResult, str]:
    """Serve ``node``, audit it live once with the CLI pinning ``pinned``, stop it.

    The audit state goes to ``base / "state.json"``. Returns the CLI's
    result and the URL the node was served at.
    """
    served = await serve(node, auditor)
    try:
        result = await run_cli(
            "audit", served.url, "--server-cert", pem_file(served, base),
            "--vkey", vkey(pinned), *ident_args(auditor), "--state", str(base / "state.json"),
        )  # fmt: skip
    finally:
        await served.close()
    return result, served.url


def saved_keys(state: Path) -> list[tuple[int, str, int | None]]:
    keys = json.loads(state.read_text())["origins"][ORIGIN]["keys"]
    return [(k["from_size"], k["vkey"], k["rotated_by"]) for k in keys]


# -- the endpoint ---------------------------------------------------------------


async def test_rotations_are_served_to_an_auditor_with_their_proofs(
    tmp_path: Path, auditor: Identity
) -> None:
    node = new_node(tmp_path, "a", entries=3)
    first = signer_of(node)
    r1, second = rotate(node)
    add_hashes(node, 3, 2)
    r2, third = rotate(node)
    served = await serve(node, auditor)
    ctx = client_ssl_context(auditor.cert_path, auditor.key_path, served.cert_pem)
    try:
        rotations = await fetch_rotations(served, auditor)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
            async with s.get(served.url + "/v1/rotations", params={"origin": ORIGIN}) as resp:
                assert resp.status == 200
                body = await resp.read()
            async with s.get(served.url + "/v1/rotations", params={"origin": "x.example/y"}) as r:
                assert r.status == 404
            async with s.get(served.url + "/v1/entries", params={"origin": ORIGIN}) as r:
                assert r.status == 403  # rotations do not open the entries to auditors
    finally:
        await served.close()
    assert [rotation.index for rotation in rotations] == [r1, r2] == [3, 6]
    chain = KeyChain.pinned(first.verifier())
    for rotation in rotations:
        assert rotation.checkpoint is not None
        chain = apply_rotation_proof(
            chain, rotation.index, rotation.entry, rotation.proof, rotation.checkpoint
        )
    assert chain.periods == (
        KeyPeriod(0, first.verifier()),
        KeyPeriod(5, second.verifier(), 3),
        KeyPeriod(8, third.verifier(), 6),
    )
    # Only rotate entries travel: none of the adds, in any spelling.
    with Ledger.open(node, read_only=True) as ledger:
        datas = [bytes(d) for _i, d, _h in ledger.store.iter_entries(ledger.own_log.log_id)]
    for i, data in enumerate(datas):
        sent = base64.b64encode(data) in body
        assert sent == (i in (r1, r2)), i
        if not sent:
            value = json.loads(data)["signal"]["value"].encode()
            assert value not in body and data.hex().encode() not in body


async def test_a_node_without_the_checkpoint_says_so(tmp_path: Path, auditor: Identity) -> None:
    """A node that does not hold the old key's checkpoint serves null, and the audit notes it."""
    node = new_node(tmp_path, "a", entries=2)
    old = signer_of(node)
    r, _new = rotate(node)
    add_hashes(node, 2, 2)
    with Ledger.open(node, read_only=True) as ledger:
        log_id = ledger.own_log.log_id
    tamper(
        node,
        "checkpoints_no_delete",
        "DELETE FROM checkpoints WHERE log_id = ? AND size = ?",
        (log_id, r + 1),
    )
    served = await serve(node, auditor)
    try:
        [rotation] = await fetch_rotations(served, auditor)
        report = await run_audit(
            [NodeTarget(url=served.url, server_cert_pem=served.cert_pem)],
            [],
            AuditState(),
            AuditOptions(
                cert_path=auditor.cert_path,
                key_path=auditor.key_path,
                trusted_keys={ORIGIN: vkey(old)},
            ),
        )
    finally:
        await served.close()
    assert (rotation.index, rotation.checkpoint, len(rotation.proof)) == (r, None, 1)
    assert any(f"does not hold the checkpoint of size {r + 1}" in n for n in report.notes)
    # the chain stayed as pinned, so the new key's checkpoints do not verify
    assert {f.check for f in report.failures} == {"signature"}
    assert ORIGIN not in report.state.origins


# -- the audit follows rotations --------------------------------------------------


async def test_rotation_between_two_live_audits_is_followed_and_remembered(
    tmp_path: Path, auditor: Identity
) -> None:
    node = new_node(tmp_path, "a", entries=5)
    old = signer_of(node)
    served = await serve(node, auditor)
    try:
        card = served.card(tmp_path)  # the card pins the key of the first audit
        state = tmp_path / "state.json"
        args = ["audit", "--card", str(card), *ident_args(auditor), "--state", str(state)]
        first = await run_cli(*args)
        assert first.status == 0, first.stdout + first.stderr
        assert saved_keys(state) == [(0, vkey(old), None)]

        r, new = rotate(node)  # entry 5, the old key signs size 6
        add_hashes(node, 6, 3)  # the new key signs 7, 8 and 9
        second = await run_cli(*args, "--json")
        third = await run_cli(*args)
    finally:
        await served.close()
    assert second.status == 0, second.stdout + second.stderr
    origins = second.json()["origins"]
    assert isinstance(origins, list) and len(origins) == 1
    origin = origins[0]
    assert origin["status"] == "ok"
    assert (origin["head_before"], origin["head_after"]["size"]) == (5, 9)
    assert origin["keys"] == [vkey(old), vkey(new)]
    assert (
        saved_keys(state)
        == [(0, vkey(old), None), (r + 2, vkey(new), r)]
        == [
            (0, vkey(old), None),
            (7, vkey(new), 5),
        ]
    )
    # the remembered chain verifies the next audit without asking again
    assert third.status == 0, third.stdout
    assert f"ok   origin={ORIGIN} (from size 9, head now 9)" in third.stdout


async def test_first_live_audit_after_a_rotation_with_the_old_key_pinned(
    tmp_path: Path, auditor: Identity
) -> None:
    node = new_node(tmp_path, "a", entries=3)
    old = signer_of(node)
    r, new = rotate(node)
    add_hashes(node, 4, 2)
    state = tmp_path / "state.json"
    result, _url = await audit_once(node, auditor, tmp_path, old)
    assert result.status == 0, result.stdout + result.stderr
    assert f"ok   origin={ORIGIN} (first audit, head now 6)" in result.stdout
    assert saved_keys(state) == [(0, vkey(old), None), (r + 2, vkey(new), r)]


# -- forged rotations fail the rotation check ------------------------------------------


def _sign_with_new_key(node: Path, log_id: int, size: int, new: NoteSigner) -> None:
    with Ledger.open(node, read_only=True) as ledger:
        record = ledger.store.get_checkpoint(log_id, size)
    assert record is not None
    forged = sign_checkpoint(Checkpoint(origin=ORIGIN, size=size, root_hash=record.root_hash), new)
    tamper(
        node,
        "checkpoints_no_update",
        "UPDATE checkpoints SET note = ? WHERE log_id = ? AND size = ?",
        (forged, log_id, size),
    )


def _swap_entry_key(node: Path, log_id: int, index: int, _new: NoteSigner) -> None:
    other = RotateEntry(key=vkey(NoteSigner.generate(ORIGIN)), reason="scheduled rotation")
    tamper(
        node,
        "entries_no_update",
        "UPDATE entries SET data = ? WHERE log_id = ? AND idx = ?",
        (other.to_bytes(), log_id, index),
    )


@pytest.mark.parametrize(
    ("forgery", "why"),
    [
        ("checkpoint signed by the new key", "is not signed by the key for that size"),
        ("rotate entry names another key", "inclusion proof for index 3 at size 4 does not match"),
    ],
)
async def test_forged_rotation_fails_the_rotation_check(
    tmp_path: Path, auditor: Identity, forgery: str, why: str
) -> None:
    node = new_node(tmp_path, "a", entries=3)
    old = signer_of(node)
    r, new = rotate(node)
    add_hashes(node, 4, 2)
    with Ledger.open(node, read_only=True) as ledger:
        log_id = ledger.own_log.log_id
    if forgery == "checkpoint signed by the new key":
        _sign_with_new_key(node, log_id, r + 1, new)
    else:
        _swap_entry_key(node, log_id, r, new)
    state = tmp_path / "state.json"
    result, url = await audit_once(node, auditor, tmp_path, old)
    assert result.status == 1, result.stdout
    assert f"FAIL rotation origin={ORIGIN} source={url}: index={r}: " in result.stdout
    [line] = [x for x in result.stdout.splitlines() if x.startswith("FAIL rotation")]
    assert why in line, line
    assert "FAILED:" in result.stdout and "rotation" in result.stdout.splitlines()[-1]
    assert not state.exists()  # nothing learnt from a forgery


async def test_head_signed_by_the_old_key_past_its_rotation_fails(
    tmp_path: Path, auditor: Identity
) -> None:
    """A thief's tree the auditor saw before learning of the rotation convicts the history."""
    node = new_node(tmp_path, "a", entries=4)
    old = signer_of(node)
    r, _new = rotate(node)  # entry 4: the old key may sign up to size 5 only
    add_hashes(node, 5, 3)
    with Ledger.open(node, read_only=True) as ledger:
        tree = ledger.store.load_compact_range(ledger.own_log.log_id, 7)
    stolen = sign_checkpoint(Checkpoint(origin=ORIGIN, size=7, root_hash=tree.root()), old)
    state = AuditState().with_origin(
        ORIGIN, OriginState(KeyChain.pinned(old.verifier()), AuditHead.from_tree(tree, stolen))
    )
    served = await serve(node, auditor)
    try:
        report = await run_audit(
            [NodeTarget(url=served.url, server_cert_pem=served.cert_pem)],
            [],
            state,
            AuditOptions(cert_path=auditor.cert_path, key_path=auditor.key_path),
        )
    finally:
        await served.close()
    [failure] = [f for f in report.failures if f.check == "rotation"]
    assert failure.message.startswith(f"index={r}: the tree of size 7 audited before")
    assert "rotated out" in failure.message
    assert report.state == state  # the saved chain and head are kept
