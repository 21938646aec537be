"""Real nodes, real servers, real mutual TLS: cosignatures travel, split views are caught.

Every node runs what ``hashmesh serve`` runs (``run_server``) in this process
on its own SQLite file; settings are written to ``config.toml`` as the
``hashmesh witness`` commands write them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import WitnessAsk, WitnessRequirement, append_witness_setting, load_config
from node.ledger import Ledger
from node.ledger.database import Database
from node.ledger.provision import init_node
from node.storage.witness_store import WitnessStore
from node.sync.client import HttpPeerClient
from node.sync.runner import sync_once
from node.sync.witness_client import WitnessClient, cosign_latest
from protocol.checkpoint import open_checkpoint
from protocol.keys import SIG_COSIGNATURE_V1, NoteSigner, NoteVerifier
from tests.sync.conftest import NO_POLL, once, serve, shutdown, trusted
from tests.waiting import eventually
from tests.witness.conftest import (
    ORIGIN,
    WITNESS,
    add_card,
    append,
    ask_witnesses,
    fork,
    witness_vkey,
)

pytestmark = pytest.mark.integration

FOLLOWER = "hotline-f.example/hashmesh"
UNREACHABLE = "https://127.0.0.1:1"


def cosigned_sizes(node_dir: Path, origin: str) -> list[int]:
    with Ledger.open(node_dir, read_only=True) as ledger:
        log = ledger.store.get_log(origin)
        rows = ledger.store.conn.execute(
            "SELECT DISTINCT size FROM cosignatures WHERE log_id = ? ORDER BY size", (log.log_id,)
        ).fetchall()
    return [r[0] for r in rows]


async def waiting_reason(node_dir: Path) -> str:
    """One sync round with the only peer: the origin is held back for cosignatures.

    Waiting is not the peer's fault: the round reports no error.
    """
    config = load_config(node_dir)
    db = await Database.open(node_dir)
    try:
        (report,) = await sync_once(
            db, cert_path=config.tls_cert_path, key_path=config.tls_key_path
        )
    finally:
        await db.close()
    assert report.error is None, report.error
    (result,) = report.origins
    assert result.verdict == "waiting" and result.appended == 0
    assert result.waiting is not None
    return result.waiting


def held(node_dir: Path, origin: str) -> int:
    with Ledger.open(node_dir, read_only=True) as ledger:
        return ledger.replica(origin).state().size


def origin_vkey(origin_dir: Path) -> str:
    with Ledger.open(origin_dir, read_only=True) as ledger:
        return ledger.own_log.verifier_key


def make_follower(tmp_path: Path, origin_dir: Path, wkey: NoteVerifier) -> Path:
    """A node that follows ORIGIN and requires the witness's cosignature."""
    path = tmp_path / "f"
    init_node(path, FOLLOWER)
    with Ledger.open(path) as ledger:
        ledger.follow(ORIGIN, origin_vkey(origin_dir))
    append_witness_setting(
        path, WitnessRequirement(origin=ORIGIN, keys=(wkey.to_text(),), threshold=1)
    )
    return path


async def test_cosignatures_travel_with_checkpoints(
    tmp_path: Path, origin_dir: Path, witness_dir: Path
) -> None:
    wkey = witness_vkey(witness_dir)
    append_witness_setting(origin_dir, WitnessAsk(peer=WITNESS, key=wkey.to_text()))
    follower = make_follower(tmp_path, origin_dir, wkey)
    # No polling: only the announcement of A's own write can make its runner ask W.
    a = await serve(origin_dir, sync=True, poll=NO_POLL)
    w = await serve(witness_dir, sync=False)
    try:
        add_card(origin_dir, witness_dir, w.url)  # whom A asks
        add_card(witness_dir, origin_dir, a.url)  # W accepts A's requests (W follows A)
        add_card(origin_dir, follower, UNREACHABLE, role="subscriber")
        add_card(follower, origin_dir, a.url)
        await trusted(w, origin_dir)
        await trusted(a, follower)

        # A writes (as the CLI does); its runner asks W at once, live.
        append(origin_dir, 5)
        await eventually(
            lambda: cosigned_sizes(origin_dir, ORIGIN),
            until=lambda sizes: 5 in sizes,
            what="W's cosignature of size 5 at A",
        )

        # GET /v1/checkpoint carries W's line: k-of-n checks pass with protocol/ alone.
        config = load_config(follower)
        async with HttpPeerClient(
            ORIGIN,
            a.url,
            server_cert_pem=load_config(origin_dir).tls_cert_path.read_text(),
            cert_path=config.tls_cert_path,
            key_path=config.tls_key_path,
        ) as client:
            note = await client.checkpoint(ORIGIN)
            listed = {log.origin: log.checkpoint for log in await client.logs()}
            history = dict(await client.checkpoints(ORIGIN, 5))
        assert listed[ORIGIN] == note == history[5]
        verified = open_checkpoint(
            note,
            NoteVerifier.from_text(origin_vkey(origin_dir)),
            witnesses=[wkey],
            witness_threshold=1,
        )
        assert verified.checkpoint.size == 5 and wkey.name in verified.cosignatures

        # The follower that requires W accepts it, and keeps the cosignature.
        assert await once(follower) == [None]
        assert held(follower, ORIGIN) == 5
        assert cosigned_sizes(follower, ORIGIN) == [5]

        # Without the witness, a new checkpoint gets no cosignature: the
        # follower refuses it, names who signed and the threshold, writes nothing.
        await shutdown(w)
        append(origin_dir, 2)
        reason = await waiting_reason(follower)
        assert ORIGIN in reason and "size 7" in reason and "0 of the 1 required" in reason
        assert wkey.name in reason
        assert held(follower, ORIGIN) == 5
    finally:
        await shutdown(*(n for n in (a, w) if not n.task.done()))


async def test_split_view_is_caught_by_the_witness_and_the_policy(
    tmp_path: Path, origin_dir: Path, witness_dir: Path
) -> None:
    """One origin key, two histories, shown to two audiences."""
    wkey = witness_vkey(witness_dir)
    append(origin_dir, 3)
    other = fork(origin_dir, tmp_path / "a2")  # same signing key, same TLS identity
    append(origin_dir, 3, tag="shown-to-b")
    append(other, 3, tag="shown-to-c")
    for face in (origin_dir, other):
        append_witness_setting(face, WitnessAsk(peer=WITNESS, key=wkey.to_text()))
    follower = make_follower(tmp_path, origin_dir, wkey)

    w = await serve(witness_dir, sync=False)
    a1 = await serve(origin_dir, sync=False)
    a2 = await serve(other, sync=False)
    try:
        add_card(witness_dir, origin_dir, a1.url)  # one card: both faces share the TLS key
        for face in (origin_dir, other):
            add_card(face, witness_dir, w.url)
            add_card(face, follower, UNREACHABLE, role="subscriber")
        await trusted(w, origin_dir)
        await trusted(a1, follower)
        await trusted(a2, follower)

        # The witness cosigns the first history it is shown...
        (first,) = await ask_witnesses(origin_dir)
        assert first.error is None and first.added == 1 and first.size == 6
        # ...and refuses the second: same size, another root.
        (second,) = await ask_witnesses(other)
        assert second.error is not None and "forked" in second.error
        assert second.added == 0
        with Ledger.open(witness_dir, read_only=True) as ledger:
            state = WitnessStore(ledger.store.conn).get_state(ORIGIN)
        with Ledger.open(origin_dir, read_only=True) as ledger:
            shown_to_b = ledger.latest_checkpoint()
        assert state is not None and (state.size, state.root_hash) == (6, shown_to_b.root_hash)

        # A follower requiring the witness refuses the un-cosigned history.
        add_card(follower, other, a2.url)
        reason = await waiting_reason(follower)
        assert "0 of the 1 required" in reason and ORIGIN in reason
        with Ledger.open(follower, read_only=True) as ledger:
            assert ORIGIN not in {log.origin for log in ledger.store.list_logs()}

        # Shown the cosigned one, it accepts it.
        with Ledger.open(follower) as ledger:
            ledger.peers.remove_peer(ORIGIN)
        add_card(follower, origin_dir, a1.url)
        assert await once(follower) == [None]
        assert held(follower, ORIGIN) == 6
        with Ledger.open(follower, read_only=True) as ledger:
            stored = ledger.latest_checkpoint(ORIGIN)
        assert stored.root_hash == shown_to_b.root_hash
        assert cosigned_sizes(follower, ORIGIN) == [6]
    finally:
        await shutdown(w, a1, a2)


async def test_client_follows_409_to_the_witness_size(
    tmp_path: Path, origin_dir: Path, witness_dir: Path
) -> None:
    wkey = witness_vkey(witness_dir)
    w = await serve(witness_dir, sync=False)
    try:
        add_card(witness_dir, origin_dir, UNREACHABLE)
        add_card(origin_dir, witness_dir, w.url)
        await trusted(w, origin_dir)
        append(origin_dir, 5)
        config = load_config(origin_dir)
        db = await Database.open(origin_dir)
        try:
            peer = (await db.read(lambda ledger: ledger.peers.list_peers()))[0]
            async with WitnessClient(
                peer, cert_path=config.tls_cert_path, key_path=config.tls_key_path
            ) as client:
                done = await cosign_latest(db, client, wkey)
                assert (done.error, done.added, done.size) == (None, 1, 5)
                again = await cosign_latest(db, client, wkey)
                assert (again.error, again.added) == (None, 0)  # already held: not asked
                append(origin_dir, 2)
                # A stale guess (0): the witness answers 409 "5", the client retries from 5.
                moved = await cosign_latest(db, client, wkey, known_size=0)
                assert (moved.error, moved.added, moved.size, moved.witness_size) == (
                    None,
                    1,
                    7,
                    7,
                )
                # Answers are checked against the configured key, not the witness's word.
                append(origin_dir, 1)
                impostor = NoteSigner.generate(wkey.name, SIG_COSIGNATURE_V1).verifier()
                wrong = await cosign_latest(db, client, impostor, known_size=7)
                assert wrong.error is not None and "no valid cosignature" in wrong.error
                # A witness that cosigned beyond our log means we were rolled back.
                rolled = await cosign_latest(db, client, wkey, known_size=9)
                assert rolled.error is not None and "rolled back" in rolled.error
        finally:
            await db.close()
        assert cosigned_sizes(origin_dir, ORIGIN) == [5, 7]
    finally:
        await shutdown(w)
