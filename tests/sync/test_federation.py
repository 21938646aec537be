"""Real nodes, real servers, real mutual TLS on 127.0.0.1: relay, live propagation, forks.

Every node here is what ``hashmesh serve`` runs (``run_server``), in this
process, on its own SQLite file; cards are exchanged as the CLI does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from node.cli import main as cli
from node.ledger import Ledger
from protocol.__main__ import main as audit
from protocol.entry import AddEntry, RetractEntry
from tests.sync.conftest import (
    NO_POLL,
    A,
    B,
    C,
    Serving,
    introduce,
    make_node,
    once,
    serve,
    sha,
    shutdown,
    trusted,
)
from tests.waiting import PATIENCE, eventually

pytestmark = pytest.mark.integration


def held(node_dir: Path, origin: str) -> int:
    with Ledger.open(node_dir, read_only=True) as ledger:
        return ledger.replica(origin).state().size


async def wait_size(node_dir: Path, origin: str, size: int) -> None:
    await eventually(
        lambda: held(node_dir, origin),
        until=lambda held_size: held_size >= size,
        what=f"{node_dir.name} to hold size {size} of {origin}",
    )


async def test_hash_added_at_a_reaches_c_through_b_live(
    network: tuple[Serving, Serving, Serving],
) -> None:
    a, b, c = network
    # Live propagation: the runners' poll is an hour away (NO_POLL), so every
    # write reaching C within the wait was announced at each hop, A to B to C.
    assert PATIENCE < NO_POLL / 2
    for i in range(5):
        with Ledger.open(a.node_dir) as ledger:  # a CLI write, another connection
            ledger.append([AddEntry.create(signal_type="sha256", value=sha(i))])
        await wait_size(c.node_dir, A, i + 1)
    with Ledger.open(a.node_dir) as ledger:
        ledger.append([RetractEntry(index=1, reason="false positive")])
    await wait_size(c.node_dir, A, 6)
    with Ledger.open(c.node_dir, read_only=True) as ledger:
        status = ledger.status(A)
    assert status.retracted == 1 and status.by_signal_type == {"sha256": 4}
    with (
        Ledger.open(b.node_dir, read_only=True) as ledger,
        Ledger.open(c.node_dir, read_only=True) as ledger_c,
        Ledger.open(a.node_dir, read_only=True) as ledger_a,
    ):
        assert ledger_c.recompute_root(A) == ledger.recompute_root(A) == ledger_a.recompute_root()


async def test_c_verifies_a_entry_offline_with_a_key_only(
    network: tuple[Serving, Serving, Serving],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, _b, c = network
    with Ledger.open(a.node_dir) as ledger:
        ledger.append([AddEntry.create(signal_type="md5", value="ab" * 16)])
        vkey = ledger.own_log.verifier_key
    await wait_size(c.node_dir, A, 1)
    capsys.readouterr()
    assert cli(["--dir", str(c.node_dir), "checkpoint", "--origin", A]) == 0
    (tmp_path / "cp.txt").write_text(capsys.readouterr().out, encoding="utf-8")
    assert cli(["--dir", str(c.node_dir), "prove", "inclusion", "0", "--origin", A, "--json"]) == 0
    (tmp_path / "proof.json").write_text(capsys.readouterr().out, encoding="utf-8")
    status = audit(
        [
            "verify-inclusion",
            str(tmp_path / "proof.json"),
            "--checkpoint",
            str(tmp_path / "cp.txt"),
            "--vkey",
            vkey,
        ]
    )
    assert status == 0, capsys.readouterr()


async def test_removed_peer_is_not_synced_and_gets_403(tmp_path: Path) -> None:
    a = await serve(make_node(tmp_path, "a", A), sync=False)
    b = await serve(make_node(tmp_path, "b", B), sync=False)
    try:
        introduce(a, b)
        introduce(b, a)
        await trusted(a, b.node_dir)
        with Ledger.open(a.node_dir) as ledger:
            ledger.append([AddEntry.create(signal_type="sha256", value=sha(1))])
        assert await once(b.node_dir) == [None]
        assert held(b.node_dir, A) == 1
        with Ledger.open(a.node_dir) as ledger:
            assert ledger.peers.remove_peer(B)
        errors = await once(b.node_dir)
        assert len(errors) == 1 and errors[0] is not None and "403" in errors[0]
    finally:
        await shutdown(a, b)


async def test_author_showing_two_histories_is_caught_on_first_contact(tmp_path: Path) -> None:
    """A signs two different histories; B and C each see one, then meet."""
    author = make_node(tmp_path, "a", A)
    with Ledger.open(author) as ledger:
        ledger.append([AddEntry.create(signal_type="sha256", value=sha(i)) for i in range(5)])
    twin = tmp_path / "a-twin"
    shutil.copytree(author, twin)  # same signing key, same TLS identity
    with Ledger.open(author) as ledger:  # history X: 10 entries
        ledger.append([AddEntry.create(signal_type="sha256", value=sha(i)) for i in range(5, 10)])
    with Ledger.open(twin) as ledger:  # history Y: 8 entries, diverging at 5
        ledger.append([AddEntry.create(signal_type="md5", value=f"{i:032x}") for i in range(3)])

    x = await serve(author, sync=False)
    y = await serve(twin, sync=False)
    b = await serve(make_node(tmp_path, "b", B), sync=False)
    c = await serve(make_node(tmp_path, "c", C), sync=False)
    try:
        introduce(b, x)  # B only ever talks to history X
        introduce(x, b, follow=False)
        introduce(c, y)  # C only ever talks to history Y
        introduce(y, c, follow=False)
        await trusted(x, b.node_dir)
        await trusted(y, c.node_dir)
        assert await once(b.node_dir) == [None]
        assert await once(c.node_dir) == [None]
        assert (held(b.node_dir, A), held(c.node_dir, A)) == (10, 8)

        # First contact between B and C (neither follows the other's own log).
        introduce(b, c, follow=False)
        introduce(c, b, follow=False)
        await trusted(c, b.node_dir)
        await trusted(b, c.node_dir)
        await once(b.node_dir)
        await once(c.node_dir)
        for node in (b.node_dir, c.node_dir):
            with Ledger.open(node, read_only=True) as ledger:
                evidence = [e for e in ledger.peers.list_evidence() if e.origin == A]
                assert evidence, f"{node.name} did not detect the fork"
                assert ledger.replica(A).state().frozen

        # The evidence is checkable by anyone holding A's key, with protocol alone.
        out = tmp_path / "fork.json"
        assert cli(["--dir", str(c.node_dir), "evidence", "export", A, "--out", str(out)]) == 0
        doc = json.loads(out.read_text(encoding="utf-8"))
        assert doc["note_a"] != doc["note_b"]
        with Ledger.open(author, read_only=True) as ledger:
            vkey = ledger.own_log.verifier_key
        assert audit(["verify-evidence", str(out), "--vkey", vkey]) == 0

        # A frozen origin accepts nothing more, even from the honest-looking side.
        with Ledger.open(author) as ledger:
            ledger.append([AddEntry.create(signal_type="sha256", value=sha(99))])
        await once(b.node_dir)
        assert held(b.node_dir, A) == 10
    finally:
        await shutdown(x, y, b, c)
