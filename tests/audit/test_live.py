"""Live audits of real nodes over real mutual TLS, as an auditor, by the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.ledger import Ledger
from protocol.evidence import ForkEvidence
from tests.api.conftest import Identity
from tests.audit.conftest import (
    ORIGIN,
    Served,
    add_hashes,
    fork_node,
    ident_args,
    new_node,
    run_cli,
    serve,
    vkey_of,
)
from tests.sync.conftest import add_card, once, trusted

pytestmark = pytest.mark.integration


async def test_live_audit_passes_then_fetches_only_new_leaf_hashes(
    tmp_path: Path, auditor: Identity, served_a: Served
) -> None:
    state = tmp_path / "state.json"
    args = ["audit", "--card", str(served_a.card(tmp_path)), *ident_args(auditor)]
    first = await run_cli(*args, "--state", str(state), "--json")
    assert first.status == 0, first.stderr + first.stdout
    doc = first.json()
    assert doc["ok"] is True and doc["state_saved"] is True
    [origin] = doc["origins"]  # type: ignore[misc]
    assert origin["status"] == "ok" and origin["head_after"]["size"] == 5
    assert origin["sources"][0]["leaves_hashed"] == 5

    add_hashes(served_a.node_dir, 5, 4, batch=2)  # checkpoints 7 and 9
    second = await run_cli(*args, "--state", str(state), "--json")
    assert second.status == 0, second.stdout
    [origin] = second.json()["origins"]  # type: ignore[misc]
    [source] = origin["sources"]
    assert (origin["head_before"], origin["head_after"]["size"]) == (5, 9)
    assert (source["replay_from"], source["leaves_hashed"], source["checkpoints"]) == (5, 4, 3)

    text = await run_cli(*args, "--state", str(state))
    assert text.status == 0
    assert f"ok   origin={ORIGIN} (from size 9, head now 9)" in text.stdout
    assert "no new leaves" in text.stdout


async def test_history_rewritten_between_two_audits_is_caught_by_the_state(
    tmp_path: Path, auditor: Identity
) -> None:
    honest = new_node(tmp_path, "a", entries=3)
    rewritten = fork_node(honest, tmp_path / "a-rewritten")
    add_hashes(honest, 3, 3)  # the auditor sees 6 honest entries
    add_hashes(rewritten, 100, 5)  # later the operator serves another history of size 8
    state = tmp_path / "state.json"
    vkey = vkey_of(honest)

    first = await serve(honest, auditor)
    try:
        ok = await run_cli(
            "audit", first.url, "--server-cert", _pem(first, tmp_path), "--vkey", vkey,
            *ident_args(auditor), "--state", str(state),
        )  # fmt: skip
    finally:
        await first.close()
    assert ok.status == 0, ok.stdout + ok.stderr

    second = await serve(rewritten, auditor)
    try:
        caught = await run_cli(
            "audit", second.url, "--server-cert", _pem(second, tmp_path), *ident_args(auditor),
            "--state", str(state), "--evidence-dir", str(tmp_path / "ev"),
        )  # fmt: skip
    finally:
        await second.close()
    assert caught.status == 1
    # The rewritten node signed another tree of the audited size 6: the smallest evidence.
    assert f"FAIL consistency origin={ORIGIN} source={second.url} size 6:" in caught.stdout
    assert "rewritten since the last audit" in caught.stdout
    [evidence_file] = (tmp_path / "ev").iterdir()
    check = await run_cli("verify-evidence", str(evidence_file), "--vkey", vkey, module="protocol")
    assert check.status == 0, check.stderr
    # The state kept the honest head: the rewrite fails again on the next run too.
    saved = json.loads(state.read_text())
    assert saved["origins"][ORIGIN]["head"]["size"] == 6


@pytest.mark.parametrize("audited", [6, 4])
async def test_rewrite_without_a_checkpoint_of_the_audited_size_is_proven_by_proof(
    tmp_path: Path, auditor: Identity, audited: int
) -> None:
    """The new tree has no checkpoint of the audited size: its own consistency proof convicts it.

    At 6 the prefix root follows from the proof; at 4 (a power of two, a
    complete subtree the proof leaves out) from the node's leaf hashes.
    """
    honest = new_node(tmp_path, "a", entries=3)
    rewritten = fork_node(honest, tmp_path / "a-rewritten")
    add_hashes(honest, 3, audited - 3)
    add_hashes(rewritten, 100, 8, batch=8)  # one checkpoint, of size 11
    state = tmp_path / "state.json"
    vkey = vkey_of(honest)
    first = await serve(honest, auditor)
    try:
        ok = await run_cli(
            "audit", "--card", str(first.card(tmp_path)), *ident_args(auditor),
            "--state", str(state),
        )  # fmt: skip
    finally:
        await first.close()
    assert ok.status == 0, ok.stdout
    second = await serve(rewritten, auditor)
    try:
        caught = await run_cli(
            "audit", "--card", str(second.card(tmp_path)), *ident_args(auditor),
            "--state", str(state), "--json",
        )  # fmt: skip
    finally:
        await second.close()
    assert caught.status == 1
    failures = caught.json()["failures"]
    assert isinstance(failures, list)
    by_check = {f["check"]: f for f in failures}
    assert set(by_check) == {"consistency", "history"}, failures
    assert (by_check["consistency"]["old_size"], by_check["consistency"]["new_size"]) == (
        audited,
        11,
    )
    assert "no longer serves the checkpoint of size" in by_check["history"]["message"]
    path = tmp_path / "fork.json"
    path.write_text(json.dumps(by_check["consistency"]["evidence"]))
    check = await run_cli("verify-evidence", str(path), "--vkey", vkey, module="protocol")
    assert check.status == 0, check.stderr


async def test_split_view_between_two_nodes_with_the_same_key(
    tmp_path: Path, auditor: Identity
) -> None:
    a = new_node(tmp_path, "a", entries=4)
    twin = fork_node(a, tmp_path / "a-twin")
    add_hashes(a, 4, 2)
    add_hashes(twin, 50, 5)
    one, two = await serve(a, auditor), await serve(twin, auditor)
    try:
        result = await run_cli(
            "audit", "--card", str(one.card(tmp_path)), "--card", str(two.card(tmp_path)),
            *ident_args(auditor), "--state", str(tmp_path / "s.json"), "--json",
        )  # fmt: skip
    finally:
        await one.close()
        await two.close()
    assert result.status == 1
    doc = result.json()
    failures = doc["failures"]
    assert isinstance(failures, list)
    splits = [f for f in failures if f["check"] == "split-view"]
    assert splits, failures
    split = splits[0]
    # The first divergence: both signed size 5, with different roots.
    assert (split["old_size"], split["new_size"]) == (5, 5)
    assert one.url in split["source"] and two.url in split["source"]
    evidence = ForkEvidence.from_json(split["evidence"])
    path = tmp_path / "fork.json"
    path.write_bytes(evidence.to_json())
    check = await run_cli("verify-evidence", str(path), "--vkey", vkey_of(a), module="protocol")
    assert check.status == 0, check.stderr
    assert not (tmp_path / "s.json").exists()  # nothing is remembered from a failed first audit


async def test_relay_serving_the_same_history_passes(tmp_path: Path, auditor: Identity) -> None:
    a_dir = new_node(tmp_path, "a", entries=6)
    b_dir = new_node(tmp_path, "b", "hotline-b.example/hashmesh", entries=2)
    a = await serve(a_dir, auditor)
    try:
        # B follows A and pulls its log once, as `hashmesh sync` does.
        add_card(b_dir, a_dir, a.url)
        add_card(a_dir, b_dir, "https://127.0.0.1:1", follow=False)
        await trusted(a, b_dir)
        assert await once(b_dir) == [None]
        b = await serve(b_dir, auditor)
        try:
            result = await run_cli(
                "audit", "--card", str(a.card(tmp_path)), "--card", str(b.card(tmp_path)),
                *ident_args(auditor), "--state", str(tmp_path / "s.json"), "--json",
            )  # fmt: skip
        finally:
            await b.close()
    finally:
        await a.close()
    assert result.status == 0, result.stdout
    origins = {o["origin"]: o for o in result.json()["origins"]}  # type: ignore[union-attr]
    assert {s["source"] for s in origins[ORIGIN]["sources"]} == {a.url, b.url}
    assert origins["hotline-b.example/hashmesh"]["head_after"]["size"] == 2


async def test_unknown_certificate_and_missing_key_are_reported(
    tmp_path: Path, auditor: Identity, served_a: Served
) -> None:
    from tests.api.conftest import make_identity

    stranger = make_identity(tmp_path, "stranger")
    result = await run_cli(
        "audit", "--card", str(served_a.card(tmp_path)), "--cert", str(stranger.cert_path),
        "--key", str(stranger.key_path), "--state", str(tmp_path / "s.json"),
    )  # fmt: skip
    assert result.status == 1
    assert "FAIL fetch source=" + served_a.url in result.stdout
    # A URL with no pinned certificate is a usage problem, said plainly.
    bare = await run_cli("audit", served_a.url, *ident_args(auditor))
    assert bare.status == 1 and "--server-cert" in bare.stderr


def _pem(served: Served, base: Path) -> str:
    path = base / f"{served.node_dir.name}-{served.server.url.rsplit(':', 1)[1]}.pem"
    path.write_text(served.cert_pem, encoding="ascii")
    return str(path)


async def test_fork_evidence_a_node_holds_is_reported(tmp_path: Path, auditor: Identity) -> None:
    from protocol.evidence import ForkEvidence as Evidence

    a = new_node(tmp_path, "a", entries=3)
    twin = fork_node(a, tmp_path / "twin")
    add_hashes(a, 3, 1)
    add_hashes(twin, 30, 1)
    with Ledger.open(a, read_only=True) as one, Ledger.open(twin, read_only=True) as two:
        note_a = one.store.latest_checkpoint(one.own_log.log_id)
        note_b = two.store.latest_checkpoint(two.own_log.log_id)
    assert note_a is not None and note_b is not None and note_a.size == note_b.size == 4
    evidence = Evidence(
        origin=ORIGIN,
        note_a=note_a.note,
        note_b=note_b.note,
        prefix_root=note_b.root_hash,
        proof=(),
    )
    with Ledger.open(a) as ledger:  # as a follower that detected the fork would hold it
        ledger.peers.add_evidence(ORIGIN, evidence.to_json(), "a peer")
    served = await serve(a, auditor)
    try:
        result = await run_cli(
            "audit", "--card", str(served.card(tmp_path)), *ident_args(auditor),
            "--state", str(tmp_path / "s.json"),
        )  # fmt: skip
    finally:
        await served.close()
    assert result.status == 1
    assert (
        f"FAIL split-view origin={ORIGIN} source={served.url} size 4: the node holds verified "
        "fork evidence"
    ) in result.stdout
