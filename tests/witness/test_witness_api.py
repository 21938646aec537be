"""POST /v1/witness/add-checkpoint on a real server, over real mutual TLS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node.api.state import ApiLimits
from node.ledger import Ledger
from node.storage.witness_store import WitnessStore
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.keys import NoteSigner
from protocol.note import open_note, parse_note
from protocol.witness import AddCheckpointRequest, parse_cosignature_lines
from tests.api.conftest import Identity, Served, _serve
from tests.witness.conftest import ORIGIN, Request, append, fork, request, witness_vkey

PATH = "/v1/witness/add-checkpoint"


@pytest.fixture
async def served(tmp_path: Path, witness_dir: Path) -> AsyncIterator[Served]:
    async for s in _serve(tmp_path, witness_dir, ApiLimits()):
        yield s


def body(r: Request) -> bytes:
    return AddCheckpointRequest(old_size=r.old_size, proof=r.proof, note=r.note).to_bytes()


async def post(
    served: Served, data: bytes, ident: Identity | None = None
) -> tuple[int, str, bytes]:
    async with (
        served.session(ident or served.peer) as session,
        session.post(served.url + PATH, data=data) as resp,
    ):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


async def test_cosigns_and_answers_409_with_the_size(
    served: Served, origin_dir: Path, witness_dir: Path
) -> None:
    append(origin_dir, 4)
    r = request(origin_dir, 0)
    status, media, answer = await post(served, body(r))
    assert status == 200, answer
    assert media.startswith("text/plain")
    (sig,) = parse_cosignature_lines(answer)
    opened = open_note(r.note + answer.decode(), [witness_vkey(witness_dir)])
    assert opened.verified[0].timestamp is not None
    assert sig.name == witness_vkey(witness_dir).name

    append(origin_dir, 1)
    status, media, answer = await post(served, body(request(origin_dir, 0)))
    assert status == 409
    assert media == "text/x.tlog.size"
    assert answer == b"4\n"
    status, _, _ = await post(served, body(request(origin_dir, 4)))
    assert status == 200


async def test_refusals_and_their_status_codes(
    served: Served, tmp_path: Path, origin_dir: Path, witness_dir: Path
) -> None:
    append(origin_dir, 3)
    other = fork(origin_dir, tmp_path / "a2")
    append(origin_dir, 2, tag="one")
    append(other, 4, tag="two")
    assert (await post(served, body(request(origin_dir, 0, 3))))[0] == 200
    assert (await post(served, body(request(origin_dir, 3))))[0] == 200

    # An inconsistent checkpoint (the other history): 422, nothing saved.
    status, media, answer = await post(served, body(request(other, 5)))
    assert status == 422, answer
    assert media.startswith("application/json") and b"consistency proof" in answer

    # Not signed by the origin's key: 403.
    r = request(origin_dir, 5)
    forged = sign_checkpoint(
        Checkpoint.from_text(parse_note(r.note).text), NoteSigner.generate(ORIGIN)
    )
    assert (await post(served, body(Request(5, (), forged))))[0] == 403

    # An origin this node does not follow: 404.
    stranger = NoteSigner.generate("hotline-x.example/hashmesh")
    unknown = sign_checkpoint(
        Checkpoint(origin=stranger.name, size=1, root_hash=b"\x01" * 32), stranger
    )
    assert (await post(served, body(Request(0, (), unknown))))[0] == 404

    # Malformed, or old size above the checkpoint's: 400.
    assert (await post(served, b"old 01\n\n" + r.note.encode()))[0] == 400
    assert (await post(served, body(Request(9, (), r.note))))[0] == 400

    # Only peers may ask; subscribers and auditors are refused before anything is read.
    for ident in (served.subscriber, served.auditor):
        status, _, _ = await post(served, body(request(origin_dir, 5)), ident)
        assert status == 403

    with Ledger.open(witness_dir, read_only=True) as ledger:
        record = WitnessStore(ledger.store.conn).get_state(ORIGIN)
    assert record is not None and record.size == 5


async def test_concurrent_conflicting_requests_one_wins(
    served: Served, tmp_path: Path, origin_dir: Path
) -> None:
    append(origin_dir, 2)
    assert (await post(served, body(request(origin_dir, 0))))[0] == 200
    other = fork(origin_dir, tmp_path / "a2")
    append(origin_dir, 3, tag="one")
    append(other, 3, tag="two")
    results = await asyncio.gather(
        post(served, body(request(origin_dir, 2))), post(served, body(request(other, 2)))
    )
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 409]
    (conflict,) = [answer for status, _, answer in results if status == 409]
    assert conflict == b"5\n"


async def test_get_and_oversized_bodies_are_refused(served: Served) -> None:
    async with (
        served.session(served.peer) as session,
        session.get(served.url + PATH) as resp,
    ):
        assert resp.status == 405
    status, _, _ = await post(served, b"old 0\n\n" + b"x" * (200 * 1024))
    assert status == 413
