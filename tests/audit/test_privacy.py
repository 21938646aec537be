"""No hash value, label, note or entry byte reaches an auditor certificate, from ANY endpoint.

The endpoints are taken from ``node.api.app.ROUTES`` at run time, so an
endpoint added later is probed here without editing this file. Parameters
are not listed per endpoint either: the probe starts with none and follows
the server's own 400 answers (``missing``/``unknown`` query parameter,
naming the field) until it gets a 200, for the node's own log and for a log
it replicates. Every body is searched for every planted secret in every
spelling. The same probe as a subscriber finds the secrets, which shows the
planting and the search work.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from node.api.app import ROUTES, Route
from node.config import load_config
from node.ledger import Ledger
from node.ledger.cards import next_card
from node.tls import client_ssl_context
from protocol.entry import AddEntry
from tests.api.conftest import Identity, add_peer, make_identity
from tests.audit.conftest import Served, new_node, serve
from tests.sync.conftest import add_card, once, trusted
from tests.waiting import PATIENCE

pytestmark = pytest.mark.integration

B = "hotline-b.example/hashmesh"
LABELS = ("iwf:planted-label-q7x", "src:planted-source-k2v")
NOTE = "planted note zq9 reviewed"
_FRESH = itertools.count(1)


def planted(tag: str) -> list[AddEntry]:
    digest = hashlib.sha256(f"planted-{tag}".encode()).digest()
    return [
        AddEntry.create(signal_type="sha256", value=digest.hex(), labels=LABELS, note=NOTE),
        AddEntry.create(signal_type="md5", value=digest[:16].hex(), labels=LABELS[:1]),
        AddEntry.create(signal_type="sha1", value=digest[:20].hex()),
        AddEntry.create(signal_type="pdq", value=digest[::-1].hex(), quality=90),
        AddEntry.create(
            signal_type="photodna", value=base64.b64encode(digest * 4 + digest[:16]).decode()
        ),
    ]


def spellings(node_dir: Path) -> set[bytes]:
    """Every form a secret could travel in: values, raw bytes, labels, notes, salts, entry bytes."""
    out: set[bytes] = {NOTE.encode(), NOTE.split()[2].encode()}
    for label in LABELS:
        out |= {label.encode(), label.split(":", 1)[1].encode()}
    with Ledger.open(node_dir, read_only=True) as ledger:
        for log in ledger.store.list_logs():
            for _i, data, _leaf in ledger.store.iter_entries(log.log_id):
                raw_entry = bytes(data)
                out |= {base64.b64encode(raw_entry), raw_entry.hex().encode(), raw_entry}
                salt = json.loads(raw_entry).get("salt")
                if salt is not None:  # lives only where the entry's bytes do
                    out |= {salt.encode(), base64.b64encode(bytes.fromhex(salt))}
                signal = json.loads(raw_entry).get("signal")
                if signal is None:
                    continue  # a retraction carries no hash value
                value = signal["value"]
                out |= {value.encode(), value.upper().encode()}
                raw = (
                    base64.b64decode(value)
                    if signal["type"] == "photodna"
                    else bytes.fromhex(value)
                )
                out |= {raw.hex().encode(), base64.b64encode(raw), base64.b64encode(raw)[:24]}
    return out


@dataclass
class Probe:
    bodies: dict[str, list[bytes]] = field(default_factory=dict)
    statuses: dict[str, set[int]] = field(default_factory=dict)

    def add(self, path: str, status: int, body: bytes) -> None:
        self.bodies.setdefault(path, []).append(body)
        self.statuses.setdefault(path, set()).add(status)


async def _request(
    s: aiohttp.ClientSession, url: str, route: Route, params: dict[str, str], card: bytes
) -> tuple[int, bytes]:
    method = getattr(route, "method", "GET")
    # A caller presents only its own signed card; every other POST gets an empty object.
    body = card if route.path == "/v1/peer-card" else b"{}"
    async with s.request(
        method, url + route.path, params=params, data=body if method != "GET" else None
    ) as r:
        return r.status, await r.read()


async def _follow_the_errors(
    s: aiohttp.ClientSession, url: str, route: Route, origin: str, probe: Probe, card: bytes
) -> None:
    params: dict[str, str] = {}
    tried: dict[str, list[str]] = {}
    for _ in range(16):
        status, body = await _request(s, url, route, params, card)
        probe.add(route.path, status, body)
        if status != 400:
            return
        doc = json.loads(body)
        name, error = doc.get("field"), doc.get("error", "")
        if not isinstance(name, str):
            return
        if "unknown query parameter" in error:
            params.pop(name, None)
            continue
        options = [origin] if name == "origin" else ["0", "1", "2", "3"]
        left = [v for v in options if v not in tried.setdefault(name, [])]
        if not left:
            return
        tried[name].append(left[0])
        params[name] = left[0]


async def _stream(
    s: aiohttp.ClientSession, url: str, route: Route, node_dir: Path, probe: Probe
) -> None:
    async with s.get(url + route.path) as resp:
        probe.add(route.path, resp.status, b"")
        if resp.status != 200:
            probe.add(route.path, resp.status, await resp.read())
            return
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout=PATIENCE)
        with Ledger.open(node_dir) as ledger:  # a new checkpoint is announced on the stream
            fresh = f"{next(_FRESH):032x}"
            ledger.append([AddEntry.create(signal_type="md5", value=fresh, labels=LABELS)])
        event = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout=PATIENCE)
        probe.add(route.path, resp.status, first + event)


async def probe_all(
    served: Served, ident: Identity, origins: list[str], card: bytes = b""
) -> Probe:
    """Every route as ``ident``, following its 400s; ``card``: its own signed card."""
    probe = Probe()
    ctx = client_ssl_context(ident.cert_path, ident.key_path, served.cert_pem)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        for route in ROUTES:
            if route.streaming:
                await _stream(s, served.url, route, served.node_dir, probe)
                continue
            for origin in origins:
                await _follow_the_errors(s, served.url, route, origin, probe, card)
    return probe


@pytest.fixture
async def node_with_secrets(
    tmp_path: Path,
) -> AsyncIterator[tuple[Served, Identity, Identity, bytes]]:
    """Node A holding planted entries in its own log and in B's log, which it replicates.

    The auditor is a node of its own (as `hashmesh init` makes one), so it has
    a signed card to present at ``POST /v1/peer-card``.
    """
    a_dir = new_node(tmp_path, "a")
    b_dir = new_node(tmp_path, "b", B)
    with Ledger.open(a_dir) as ledger:
        ledger.append(planted("a"))
        ledger.retract(0, "planted retraction reason")
        # A renewed certificate: GET /v1/card has a signed card to show.
        config = ledger.config
        ledger.sign_card(next_card(config, "https://127.0.0.1:1", [config.tls_cert_path]))
    with Ledger.open(b_dir) as ledger:
        ledger.append(planted("b"))
    b = await serve(b_dir)
    try:
        add_card(a_dir, b_dir, b.url)
        add_card(b_dir, a_dir, "https://127.0.0.1:1", follow=False)
        await trusted(b, a_dir)
        assert await once(a_dir) == [None]
    finally:
        await b.close()
    u_dir = new_node(tmp_path, "u", "auditor-u.example/audit")
    u_config = load_config(u_dir)
    auditor = Identity("auditor-u", u_config.tls_cert_path, u_config.tls_key_path)
    with Ledger.open(u_dir) as ledger:
        card = ledger.sign_card(
            next_card(u_config, "https://127.0.0.1:3", [u_config.tls_cert_path])
        )
    add_card(a_dir, u_dir, "https://127.0.0.1:3", role="auditor")
    subscriber = make_identity(tmp_path, "subscriber")
    add_peer(a_dir, subscriber, "subscriber")
    a = await serve(a_dir)
    try:
        yield a, auditor, subscriber, card.encode()
    finally:
        await a.close()


async def test_no_secret_reaches_an_auditor_from_any_route(
    node_with_secrets: tuple[Served, Identity, Identity, bytes],
) -> None:
    served, auditor, subscriber, card = node_with_secrets
    origins = ["hotline-a.example/hashmesh", B]
    secrets = spellings(served.node_dir)

    # The planting and the search work: a subscriber does receive them.
    seen = await probe_all(served, subscriber, origins)
    leaked_to_subscriber = {
        s for s in secrets for bodies in seen.bodies.values() for b in bodies if s in b
    }
    entry_forms = {s for s in secrets if s.startswith(b"eyJ")}  # base64 of '{"'
    assert len(entry_forms) == 11  # five adds and a retraction at A, five adds at B
    assert entry_forms <= leaked_to_subscriber

    probe = await probe_all(served, auditor, origins, card)
    assert set(probe.bodies) == {r.path for r in ROUTES}
    for route in ROUTES:
        statuses = probe.statuses[route.path]
        if "auditor" in route.roles:
            assert 200 in statuses, f"{route.path} never answered the auditor: {statuses}"
        else:
            assert statuses == {403}, f"{route.path} must refuse auditors: {statuses}"
        for body in probe.bodies[route.path]:
            for secret in secrets:
                assert secret not in body, f"{route.path} gave an auditor {secret[:24]!r}"
    assert sum(len(b) for bodies in probe.bodies.values() for b in bodies) > 2000
