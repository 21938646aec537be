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
from cryptography.hazmat.primitives.serialization import Encoding

from node.cli import main as hashmesh
from node.config import load_config
from node.errors import PeerRefusedError
from node.ledger import Ledger
from node.ledger.cards import load_certificates, next_card
from node.ledger.provision import init_node
from node.sync.client import HttpPeerClient
from node.tls import client_ssl_context, spki_fingerprint, write_node_identity
from protocol.card import SignedCard, open_card, sign_card
from protocol.errors import MalformedError, UnknownKeyError
from protocol.keys import NoteSigner
from tests.api.conftest import add_peer, make_expired_identity
from tests.ops.conftest import add, cli, held
from tests.sync.conftest import card_json, serve, shutdown, trusted
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


async def refused_with_old(url: str, server_pem: str, old: Path) -> bool:
    """Whether the server now refuses the retired certificate (403, or the handshake)."""
    try:
        return await status_as(url, server_pem, old / "node.crt", old / "node.key") == 403
    except aiohttp.ClientError:
        return True


def keep_identity(node_dir: Path, to: Path) -> Path:
    """A copy of the node's TLS identity as it is now (to try it once retired)."""
    config = load_config(node_dir)
    to.mkdir()
    shutil.copy(config.tls_cert_path, to / "node.crt")
    shutil.copy(config.tls_key_path, to / "node.key")
    return to


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
        old_copy = keep_identity(a_dir, tmp_path / "old-identity")

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


# -- nodes that connect to us but are not polled by us: subscribers, auditors ----

N = "hotline-n.example/hashmesh"
S = "subscriber-s.example/hashmesh"
U = "auditor-u.example/audit"


async def test_a_subscriber_renews_without_handing_over_a_card(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """S pulls from N, which lists S as a subscriber and never polls it.

    S renews while N is down (the card cannot be presented), S's `serve`
    presents it once N is back, S retires the old certificate and keeps
    syncing; N refuses the retired certificate. Nobody hands N a card.
    """
    n_dir, s_dir = tmp_path / "n", tmp_path / "s"
    init_node(n_dir, N)
    init_node(s_dir, S)
    n = await serve(n_dir, sync=False)
    n_listen = f"127.0.0.1:{n.server.port}"
    s = await serve(s_dir, sync=True, poll=0.5)
    try:
        add_card(n_dir, s_dir, s.url, role="subscriber")
        add_card(s_dir, n_dir, n.url)  # S pulls from N, and follows it
        with Ledger.open(n_dir, read_only=True) as ledger:
            n_vkey = ledger.own_log.verifier_key
        with Ledger.open(s_dir) as ledger:
            ledger.follow(N, n_vkey)
        await trusted(n, s_dir)
        add(n_dir, 0, 2)
        await eventually(functools.partial(held, s_dir, N), until=lambda k: k == 2, what="S at 2")
        config = load_config(s_dir)
        old_spki = spki_of(config.tls_cert_path)
        old = keep_identity(s_dir, tmp_path / "s-old")

        await shutdown(n)
        status, out, err = await cli(capsys, "--dir", str(s_dir), "tls", "renew")
        assert status == 0, err
        assert f"card presented to {N}: NOT presented" in out  # N is down
        new_spki = spki_of(config.tls_next_cert_path)
        # N is back: S's serve presents the card by itself, N trusts both.
        n = await serve(n_dir, sync=False, listen=n_listen)
        await eventually(
            functools.partial(trusted_for, n_dir, S),
            until=lambda found: found == {old_spki, new_spki},
            what="N to trust S's old and renewed certificates from the card S presented",
        )
        add(n_dir, 2, 2)
        await eventually(functools.partial(held, s_dir, N), until=lambda k: k == 4, what="S at 4")

        status, out, err = await cli(capsys, "--dir", str(s_dir), "tls", "retire-old")
        assert status == 0, err
        assert f"card presented to {N}: accepted (trusts 1 certificate(s))" in out
        assert trusted_for(n_dir, S) == {new_spki}
        add(n_dir, 4, 3)
        await eventually(
            functools.partial(held, s_dir, N),
            until=lambda k: k == 7,
            what="S to follow N across the retirement, with its renewed certificate",
        )
        assert await refused_with_old(n.url, n.cert_pem, old)
    finally:
        await shutdown(n, s)


async def test_an_auditor_renews_without_handing_over_a_card(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """U audits N with its own node identity (no peers, no serve): `audit` presents U's card."""
    n_dir, u_dir = tmp_path / "n", tmp_path / "u"
    init_node(n_dir, N)
    init_node(u_dir, U)
    add(n_dir, 0, 3)
    n = await serve(n_dir, sync=False)
    try:
        add_card(n_dir, u_dir, "https://127.0.0.1:1", role="auditor")
        await trusted(n, u_dir)
        n_card = tmp_path / "n.card.json"
        n_card.write_text(card_json(n_dir, n.url), encoding="utf-8")
        audit = ["--dir", str(u_dir), "audit", "--card", str(n_card)]
        audit += ["--state", str(tmp_path / "state.json")]
        assert (await cli(capsys, *audit))[0] == 0
        config = load_config(u_dir)
        old_spki = spki_of(config.tls_cert_path)
        old = keep_identity(u_dir, tmp_path / "u-old")

        status, _out, err = await cli(capsys, "--dir", str(u_dir), "tls", "renew")
        assert status == 0, err
        new_spki = spki_of(config.tls_next_cert_path)
        status, out, err = await cli(capsys, *audit)
        assert status == 0, out + err
        assert "now trusts the auditor's renewed certificate" in err
        assert trusted_for(n_dir, U) == {old_spki, new_spki}

        status, _out, err = await cli(capsys, "--dir", str(u_dir), "tls", "retire-old")
        assert status == 0, err
        add(n_dir, 3, 2)
        status, out, err = await cli(capsys, *audit)  # with the renewed certificate only
        assert status == 0, out + err
        assert "head now 5" in out
        assert trusted_for(n_dir, U) == {new_spki}
        assert await refused_with_old(n.url, n.cert_pem, old)
    finally:
        await shutdown(n)


async def test_a_forged_or_borrowed_card_is_refused_and_says_why(tmp_path: Path) -> None:
    """Over S's own trusted certificate: a card for S signed by another key, and U's card."""
    n_dir, s_dir, u_dir = tmp_path / "n", tmp_path / "s", tmp_path / "u"
    for path, origin in ((n_dir, N), (s_dir, S), (u_dir, U)):
        init_node(path, origin)
    n = await serve(n_dir, sync=False)
    try:
        add_card(n_dir, s_dir, "https://127.0.0.1:1", role="subscriber")
        add_card(n_dir, u_dir, "https://127.0.0.1:2", role="auditor")
        await trusted(n, s_dir)
        stranger = tmp_path / "stranger"
        write_node_identity(
            stranger / "node.key", stranger / "node.crt", common_name=S, host="127.0.0.1"
        )
        (cert,) = load_certificates((stranger / "node.crt").read_text(encoding="ascii"))
        card = SignedCard(S, "https://127.0.0.1:1", 2, (cert.public_bytes(Encoding.DER),))
        forged = sign_card(card, NoteSigner.generate(S))  # S's name, not S's key
        u_config = load_config(u_dir)
        with Ledger.open(u_dir) as ledger:
            borrowed = ledger.sign_card(
                next_card(u_config, "https://127.0.0.1:2", [u_config.tls_cert_path])
            )
        config = load_config(s_dir)
        async with HttpPeerClient(
            N,
            n.url,
            server_cert_pem=n.cert_pem,
            cert_path=config.tls_cert_path,
            key_path=config.tls_key_path,
        ) as client:
            with pytest.raises(PeerRefusedError) as caught:
                await client.present_card(forged)
            assert f"not signed by the key pinned for {S} here" in caught.value.reason
            with pytest.raises(PeerRefusedError) as caught:
                await client.present_card(borrowed)
            assert f"not signed by the key pinned for {S} here" in caught.value.reason
            with pytest.raises(PeerRefusedError) as caught:
                await client.present_card("hashmesh card v1\nnot a note")
            assert caught.value.reason == "a signed note must end with a newline"
        assert trusted_for(n_dir, S) == {spki_of(config.tls_cert_path)}
        with Ledger.open(n_dir, read_only=True) as ledger:
            assert ledger.peers.card_serial(S) is None
    finally:
        await shutdown(n)
