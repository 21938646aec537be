"""Certificate renewal: a peer follows a node across its old certificate's retirement.

Real nodes (``run_server``, real mutual TLS on 127.0.0.1): A renews its
certificate, B fetches A's card signed with A's log key and trusts both
certificates, A retires the old one and presents the new one, and B keeps
syncing A's log without anyone handing B a card.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import aiohttp
import pytest

from node.cli import main as hashmesh
from node.config import load_config
from node.ledger import Ledger
from node.ledger.cards import load_certificates, next_card
from node.ledger.provision import init_node
from node.tls import client_ssl_context, spki_fingerprint
from protocol.card import SignedCard, open_card, sign_card
from protocol.errors import MalformedError, UnknownKeyError
from protocol.keys import NoteSigner
from tests.api.conftest import add_peer, make_expired_identity
from tests.ops.conftest import add, cli, held
from tests.sync.conftest import serve, shutdown, trusted
from tests.waiting import eventually
from tests.witness.conftest import add_card

pytestmark = pytest.mark.integration

A = "hotline-a.example/hashmesh"
B = "hotline-b.example/hashmesh"


def spki_of(path: Path) -> str:
    (cert,) = load_certificates(path.read_text(encoding="ascii"))
    return spki_fingerprint(cert)


def trusted_for(node_dir: Path, name: str) -> set[str]:
    """The fingerprints node_dir recognises as peer ``name``."""
    with Ledger.open(node_dir, read_only=True) as ledger:
        (peer,) = [p for p in ledger.peers.list_peers() if p.name == name]
        return {spki_fingerprint(c) for c in load_certificates(peer.tls_cert)}


async def status_as(url: str, server_pem: str, cert: Path, key: Path) -> int:
    ctx = client_ssl_context(cert, key, server_pem)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s,
        s.get(url + "/v1/health") as resp,
    ):
        return resp.status


def link(a_dir: Path, b_dir: Path, a_url: str, b_url: str) -> None:
    """A and B as each other's peers (B follows A), as `peer add CARD --role peer` does."""
    add_card(a_dir, b_dir, b_url)
    add_card(b_dir, a_dir, a_url)
    with Ledger.open(a_dir, read_only=True) as ledger:
        a_vkey = ledger.own_log.verifier_key
    with Ledger.open(b_dir) as ledger:
        ledger.follow(A, a_vkey)


async def test_peer_runs_across_the_old_certificates_retirement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    init_node(a_dir, A)
    init_node(b_dir, B)
    a = await serve(a_dir, sync=True, poll=1.0)
    b = await serve(b_dir, sync=True, poll=1.0)
    try:
        link(a_dir, b_dir, a.url, b.url)
        await trusted(a, b_dir)
        await trusted(b, a_dir)
        config = load_config(a_dir)
        old_spki = spki_of(config.tls_cert_path)
        old_copy = tmp_path / "old-identity"
        old_copy.mkdir()
        shutil.copy(config.tls_cert_path, old_copy / "node.crt")
        shutil.copy(config.tls_key_path, old_copy / "node.key")

        add(a_dir, 0, 2)
        await eventually(
            functools.partial(held, b_dir, A),
            until=lambda n: n == 2,
            what="B to follow A to size 2",
        )

        status, out, err = await cli(capsys, "--dir", str(a_dir), "tls", "renew")
        assert status == 0, err
        new_spki = spki_of(config.tls_next_cert_path)
        assert new_spki in out and new_spki != old_spki
        # B fetches A's signed card by itself and trusts both certificates.
        await eventually(
            functools.partial(trusted_for, b_dir, A),
            until=lambda s: s == {old_spki, new_spki},
            what="B to trust A's old and renewed certificates",
        )
        add(a_dir, 2, 2)
        await eventually(
            functools.partial(held, b_dir, A),
            until=lambda n: n == 4,
            what="B to follow A to size 4 (old certificate presented)",
        )

        status, out, err = await cli(capsys, "--dir", str(a_dir), "tls", "retire-old")
        assert status == 0, err
        assert spki_of(config.tls_cert_path) == new_spki
        assert not config.tls_next_cert_path.exists()
        # A presents the new certificate; B drops the old one from the next card.
        new_pem = config.tls_cert_path.read_text(encoding="ascii")
        b_config = load_config(b_dir)

        async def presents_new() -> bool:
            try:
                return (
                    await status_as(a.url, new_pem, b_config.tls_cert_path, b_config.tls_key_path)
                    == 200
                )
            except aiohttp.ClientError:
                return False

        await eventually(presents_new, what="A to present its renewed certificate")
        await eventually(
            functools.partial(trusted_for, b_dir, A),
            until=lambda s: s == {new_spki},
            what="B to trust only A's renewed certificate",
        )
        add(a_dir, 4, 3)
        await eventually(
            functools.partial(held, b_dir, A),
            until=lambda n: n == 7,
            what="B to follow A to size 7 across the retirement",
        )
        # A syncs from B with its new client certificate too (B authorises it).
        assert await status_as(b.url, b.cert_pem, config.tls_cert_path, config.tls_key_path) == 200
        # The retired certificate no longer gets in at B.
        assert (
            await status_as(b.url, b.cert_pem, old_copy / "node.crt", old_copy / "node.key") == 403
        )
        with Ledger.open(b_dir, read_only=True) as ledger:
            assert ledger.peers.list_evidence() == []
    finally:
        await shutdown(a, b)


def test_a_card_signed_by_anyone_else_is_refused(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    init_node(a_dir, A)
    init_node(b_dir, B)
    link(a_dir, b_dir, "https://127.0.0.1:1", "https://127.0.0.1:2")
    config = load_config(a_dir)
    card = next_card(config, "https://127.0.0.1:1", [config.tls_cert_path])
    # Someone with a key of the same name (not A's) signs a card for A.
    impostor = NoteSigner.generate(A)
    forged = sign_card(card, impostor)
    with Ledger.open(b_dir) as ledger:
        with pytest.raises(UnknownKeyError):
            ledger.accept_peer_card(A, forged)
        assert ledger.peers.card_serial(A) is None
    with Ledger.open(a_dir) as ledger:
        genuine = ledger.sign_card(card)
    with Ledger.open(b_dir) as ledger:
        assert ledger.accept_peer_card(A, genuine) == card
        # A replay of the same (or an older) card changes nothing.
        assert ledger.accept_peer_card(A, genuine) is None
    # A's card presented to A as B's is opened with B's key and refused.
    with Ledger.open(a_dir) as ledger, pytest.raises(UnknownKeyError):
        ledger.accept_peer_card(B, genuine)
    assert (
        open_card(
            genuine,
            NoteSigner.from_text(
                (a_dir / "signing.key").read_text(encoding="ascii").strip()
            ).verifier(),
        )
        == card
    )


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("hashmesh card v2\norigin a\nurl https://a:1\nserial 1\ntls AA==\n", "header"),
        ("hashmesh card v1\nurl https://a:1\norigin a\nserial 1\ntls AA==\n", "origin"),
        ("hashmesh card v1\norigin a\nurl https://a:1\nserial 01\ntls AA==\n", "serial"),
        ("hashmesh card v1\norigin a\nurl https://a:1\nserial 1\ntls AA==\ntls AA==\n", "tls"),
        ("hashmesh card v1\norigin a\nurl https://a:1\nserial 1\ncert AA==\n", "tls"),
    ],
)
def test_malformed_card_bodies_name_the_field(text: str, field: str) -> None:
    with pytest.raises(MalformedError) as caught:
        SignedCard.from_text(text)
    assert caught.value.field == field


def test_status_and_peer_list_warn_before_expiry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = tmp_path / "node"
    init_node(node, A)
    expired = make_expired_identity(tmp_path, "old-peer")
    add_peer(node, expired, "peer")
    assert hashmesh(["--dir", str(node), "status"]) == 0
    err = capsys.readouterr().err
    assert "WARNING: old-peer.example/log: TLS certificate" in err and "EXPIRED" in err
    assert "hotline-a" not in err  # the own certificate is good for 825 days
    assert hashmesh(["--dir", str(node), "peer", "list", "--json"]) == 0
    captured = capsys.readouterr()
    assert "EXPIRED" in captured.err
    (row,) = json.loads(captured.out)
    assert row["tls_expires"] is not None
    assert hashmesh(["--dir", str(node), "tls", "status", "--json"]) == 0
    rows = {r["holder"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["own"]["warning"] is False and rows["own"]["days_left"] > 800
    assert rows["old-peer.example/log"]["warning"] is True
    assert rows["old-peer.example/log"]["days_left"] < 0


def test_renew_refused_while_recovering(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = tmp_path / "node"
    init_node(node, A)
    assert hashmesh(["--dir", str(node), "restore", "--in-place"]) == 0
    capsys.readouterr()
    assert hashmesh(["--dir", str(node), "tls", "renew"]) == 1
    assert "recovering" in capsys.readouterr().err
    config = load_config(node)
    assert not config.tls_next_cert_path.exists() and not config.signed_card_path.exists()


def test_warning_window_is_the_ops_setting_and_the_advice_follows_the_renewal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = tmp_path / "node"
    init_node(node, A)
    config = node / "config.toml"
    config.write_text(
        config.read_text(encoding="utf-8") + "\n[ops]\ncertificate_warn_days = 100000\n",
        encoding="utf-8",
    )
    assert hashmesh(["--dir", str(node), "status"]) == 0
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("WARNING")]
    assert line.startswith("WARNING: own: TLS certificate") and "hashmesh tls renew" in line
    assert hashmesh(["--dir", str(node), "tls", "renew"]) == 0
    capsys.readouterr()
    assert hashmesh(["--dir", str(node), "status"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("WARNING")]
    assert len(lines) == 2
    assert "own: TLS" in lines[0] and "hashmesh tls retire-old" in lines[0]
    assert "own (renewed): TLS" in lines[1]
