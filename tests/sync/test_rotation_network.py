"""Key rotation across real servers: followers and relays follow the chain over mTLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.ledger import Ledger
from node.ledger.rotation import load_key_chain
from protocol.entry import parse_entry
from tests.sync.conftest import (
    A,
    B,
    C,
    add_entries,
    follow,
    introduce,
    make_node,
    once,
    serve,
    shutdown,
    trusted,
)

pytestmark = pytest.mark.integration


def state(node_dir: Path, origin: str) -> tuple[int, list[str]]:
    with Ledger.open(node_dir, read_only=True) as ledger:
        chain = load_key_chain(ledger.store, origin)
        return ledger.replica(origin).state().size, [p.verifier.to_text() for p in chain.periods]


async def test_follower_and_relay_cross_a_rotation(tmp_path: Path) -> None:
    a, b, c = [
        await serve(make_node(tmp_path, name, origin), sync=False)
        for name, origin in (("a", A), ("b", B), ("c", C))
    ]
    try:
        introduce(b, a)
        introduce(a, b, follow=False)
        introduce(c, b, follow=False)
        introduce(b, c, follow=False)
        old_vkey = follow(c.node_dir, a.node_dir)
        await trusted(a, b.node_dir)
        await trusted(c, b.node_dir)
        await trusted(b, c.node_dir)
        add_entries(a.node_dir, 0, 5)
        assert set(await once(b.node_dir)) == {None}
        with Ledger.open(a.node_dir) as ledger:
            rotation = ledger.rotate_key("scheduled rotation")
        add_entries(a.node_dir, 100, 3)
        # B held 5 entries under the old key; the head (size 9) is signed by the
        # new one: B catches up to the rotation's checkpoint (size 6) first.
        assert set(await once(b.node_dir)) == {None}
        assert state(b.node_dir, A) == (9, [old_vkey, rotation.new_vkey])
        # C learns the whole chain from B alone (a relay), pinned to the old key.
        assert set(await once(c.node_dir)) == {None}
        assert state(c.node_dir, A) == (9, [old_vkey, rotation.new_vkey])
        with (
            Ledger.open(a.node_dir, read_only=True) as ledger_a,
            Ledger.open(c.node_dir, read_only=True) as ledger_c,
        ):
            assert ledger_c.recompute_root(A) == ledger_a.recompute_root()
            # The relayed entries are A's version 2 bytes, salts and all, the
            # rotate entry included; the roots above are A's signed ones.
            at_a = [bytes(d) for _i, d, _h in ledger_a.entries(ledger_a.own_log)]
            at_c = [bytes(d) for _i, d, _h in ledger_c.entries(ledger_c.store.get_log(A))]
            assert at_c == at_a
            assert [parse_entry(d).version for d in at_c] == [2] * 9
            assert parse_entry(at_c[5]).kind == "rotate"
    finally:
        await shutdown(a, b, c)
