"""The console's pages over real HTTP: HTML and JSON from the same handlers, guards, bad input."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import json
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from node.config import load_config
from node.ledger import Ledger
from node.ledger.damage import DamageRegister
from node.ledger.key_files import load_signer
from node.tls import client_ssl_context
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.entry import AddEntry
from protocol.evidence import ForkEvidence
from protocol.keys import NoteVerifier
from protocol.receipt import parse_receipt, verify_receipt
from tests.api.conftest import add_peer, make_identity
from tests.console.conftest import (
    LABELS,
    ORIGIN,
    PLANTED,
    Console,
    serve_console,
    unlisted,
    with_ops,
)
from tests.waiting import PATIENCE, eventually

TOKEN = "s3cret-console-token-0123"
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


def _session() -> aiohttp.ClientSession:
    # unsafe: keep cookies of an IP-address host (127.0.0.1), as a browser does.
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _csrf(session: aiohttp.ClientSession, console: Console) -> str:
    async with session.get(console.url("lookup")) as r:
        assert r.status == 200
        match = CSRF_FIELD.search(await r.text())
    assert match is not None
    return match.group(1)


def _form(csrf: str, hashes: str, **files: tuple[str, bytes]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("csrf", csrf)
    if len(hashes) > 1024 * 1024:
        # as a stream, the way a browser sends a large textarea
        form.add_field("hashes", io.BytesIO(hashes.encode()), content_type="text/plain")
    else:
        form.add_field("hashes", hashes)
    for field, (name, data) in files.items():
        form.add_field(field, data, filename=name, content_type="application/octet-stream")
    return form


async def test_overview_json_and_html_from_one_handler(console: Console) -> None:
    async with _session() as session:
        async with session.get(console.url("overview.json")) as r:
            assert r.status == 200
            doc = await r.json()
        async with session.get(
            console.url("overview"), headers={"Accept": "application/json"}
        ) as r:
            assert (await r.json())["size"] == doc["size"]
        async with session.get(console.url("overview")) as r:
            html = await r.text()
            csp = r.headers["Content-Security-Policy"]
    assert doc["origin"] == ORIGIN
    assert 820 <= doc["certificate_days_left"] <= 825  # a fresh self-signed certificate
    assert doc["size"] == len(PLANTED) + 1  # six adds and a retraction
    assert doc["logs"][0] == {**doc["logs"][0], "origin": ORIGIN, "own": True, "state": "ok"}
    assert sum(doc["entries_per_day"][ORIGIN].values()) == len(PLANTED) + 1
    assert f'<b id="own-size">{len(PLANTED) + 1}</b>' in html
    assert "<svg" in html and "<script" not in html
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "style-src 'sha256-" in csp


async def test_lookup_paste_finds_planted_hits_and_reports_bad_values(console: Console) -> None:
    paste = "\n".join(
        [
            "# a mixed list",
            "SHA256: " + PLANTED[0].upper(),  # normalised
            f"sha256:{PLANTED[2]}",
            f"md5:{unlisted(0)[:32]}",
            f"SHA256 {unlisted(1)}",
            f"sha256:{PLANTED[1]}",  # retracted: no longer matches
            "sha1:abc",  # wrong length
        ]
    )
    async with _session() as session:
        csrf = await _csrf(session, console)
        async with session.post(console.url("lookup.json"), data=_form(csrf, paste)) as r:
            assert r.status == 200, await r.text()
            doc = (await r.json())["results"]
        async with session.post(console.url("lookup"), data=_form(csrf, paste)) as r:
            html = await r.text()
    found = {m["value"]: m["hits"] for m in doc["matches"]}
    assert set(found) == {PLANTED[0], PLANTED[2]}
    assert [(h["origin"], h["index"], h["labels"]) for h in found[PLANTED[2]]] == [
        (ORIGIN, 2, list(LABELS))
    ]
    assert doc["checked"] == 5
    assert doc["invalid_count"] == 1
    assert doc["invalid"][0]["source"] == "pasted line 7"
    assert doc["invalid"][0]["error"] == "expected 40 hex characters, got 3"
    assert doc["normalised"]
    assert html.count('class="hit"') == 2
    assert "pasted line 7" in html


async def test_receipt_downloads_and_verifies(console: Console) -> None:
    with Ledger.open(console.node_dir, read_only=True) as ledger:
        vkey = ledger.own_log.verifier_key
    async with _session() as session:
        for form in ("json", "tlog-proof"):
            async with session.get(
                console.url("receipt"), params={"origin": ORIGIN, "index": "3", "format": form}
            ) as r:
                assert r.status == 200
                assert "attachment" in r.headers["Content-Disposition"]
                body = await r.read()
            verified = verify_receipt(parse_receipt(body), NoteVerifier.from_text(vkey))
            assert verified.index == 3
            assert verified.entry.value == PLANTED[3]  # type: ignore[union-attr]


async def test_entry_page_verifies_inclusion_and_shows_retraction(console: Console) -> None:
    async with _session() as session:
        async with session.get(
            console.url("entry.json"), params={"origin": ORIGIN, "index": "1", "verify": "1"}
        ) as r:
            doc = await r.json()
        async with session.get(console.url("entry"), params={"origin": ORIGIN, "index": "99"}) as r:
            missing = r.status, await r.text()
        async with session.get(console.url("entry"), params={"origin": ORIGIN, "index": "x"}) as r:
            bad = r.status, await r.text()
    assert doc["retracted_by"] == 6
    with Ledger.open(console.node_dir, read_only=True) as ledger:
        vkey = ledger.own_log.verifier_key
    assert doc["verify_command"] == f"python -m protocol verify-receipt FILE --vkey '{vkey}'"
    assert doc["verification"]["ok"] is True
    assert doc["checkpoint"]["size"] == 7
    assert len(doc["inclusion_proof"]) == 3
    assert missing[0] == 404 and "there is no entry 99" in missing[1]
    assert bad[0] == 400 and "index must be an entry number" in bad[1]


@pytest.mark.parametrize(
    ("what", "expected"),
    [
        ("paste", "the pasted text is 50.0 MB"),
        ("binary", "evil.txt is not a text file"),
        ("image", "broken.jpg: no PDQ hash"),
    ],
)
async def test_bad_input_gets_a_clear_message(console: Console, what: str, expected: str) -> None:
    async with _session() as session:
        csrf = await _csrf(session, console)
        if what == "paste":
            form = _form(csrf, "a" * (50 * 1024 * 1024))
        elif what == "binary":
            form = _form(csrf, "", list=("evil.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00IHDR" * 50))
        else:
            form = _form(csrf, "", files=("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg"))
        async with session.post(console.url("lookup"), data=form) as r:
            assert r.status < 500
            html = await r.text()
    assert expected in html


async def test_cross_site_post_is_refused(console: Console) -> None:
    async with _session() as session:
        csrf = await _csrf(session, console)
        async with session.post(
            console.url("lookup.json"),
            data=_form(csrf, PLANTED[0]),
            headers={"Origin": "http://127.0.0.1:1"},
        ) as r:
            cross_origin = r.status, await r.text()
        async with session.post(
            console.url("lookup.json"),
            data=_form(csrf, PLANTED[0]),
            headers={"Sec-Fetch-Site": "cross-site"},
        ) as r:
            cross_site = r.status
        async with session.post(
            console.url("lookup.json"), data=_form("forged" * 7, PLANTED[0])
        ) as r:
            forged = r.status
        async with session.post(console.url("lookup.json"), data={"hashes": PLANTED[0]}) as r:
            missing = r.status
    assert cross_origin[0] == 403 and "not from this console" in cross_origin[1]
    assert cross_site == forged == missing == 403


def test_serve_refuses_a_console_beyond_loopback_without_a_token(console_node: Path) -> None:
    with_ops(console_node, listen="0.0.0.0:0")
    run = subprocess.run(
        [sys.executable, "-m", "node", "--dir", str(console_node), "serve", "--no-sync"],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
    )
    assert run.returncode != 0
    assert "not a loopback address" in run.stderr and "ops.token" in run.stderr
    assert "Traceback" not in run.stderr


async def test_token_is_asked_and_login_sets_a_session(console_node: Path) -> None:
    async for console in serve_console(console_node, token=TOKEN):
        async with _session() as session:
            async with session.get(console.url("overview.json")) as r:
                assert r.status == 401
            async with session.get(console.url("overview"), allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"].endswith("/login")
            async with session.get(
                console.url("overview.json"), headers={"Authorization": f"Bearer {TOKEN}"}
            ) as r:
                assert r.status == 200
            async with session.get(console.url("login")) as r:
                csrf = CSRF_FIELD.search(await r.text())
            assert csrf is not None
            async with session.post(
                console.url("login"), data={"csrf": csrf.group(1), "token": "wrong"}
            ) as r:
                assert r.status == 403
            async with session.post(
                console.url("login"), data={"csrf": csrf.group(1), "token": TOKEN}
            ) as r:
                assert r.status == 200 and "Overview" in await r.text()
            # the session cookie never holds the token itself
            assert all(TOKEN not in c.value for c in session.cookie_jar)


async def test_evidence_and_activity_pages(console: Console) -> None:
    async with _session() as session:
        async with session.get(console.url("evidence.json")) as r:
            evidence = await r.json()
        async with session.get(console.url("activity.json")) as r:
            activity = await r.json()
        async with session.get(console.url("nowhere")) as r:
            nowhere = r.status, await r.text()
    assert evidence == {"forks": []}
    assert activity["retractions"] == [{"index": 6, "target": 1, "reason": "listed by mistake"}]
    assert [w["added"] for w in activity["writes"]] == [1, 6]
    assert nowhere[0] == 404 and "no console page" in nowhere[1]
    json.dumps(activity)


async def test_evidence_page_offers_the_fork_and_the_command_that_checks_it(
    console_node: Path, tmp_path: Path
) -> None:
    signer = load_signer(load_config(console_node))
    notes = [
        sign_checkpoint(Checkpoint(origin=ORIGIN, size=7, root_hash=bytes([n]) * 32), signer)
        for n in (1, 2)
    ]
    evidence = ForkEvidence(
        origin=ORIGIN, note_a=notes[0], note_b=notes[1], prefix_root=b"\x02" * 32, proof=()
    )
    with Ledger.open(console_node) as ledger:
        ledger.peers.add_evidence(ORIGIN, evidence.to_json(), "peer hotline-z.example/hashmesh")
    async for console in serve_console(console_node):
        async with _session() as session:
            async with session.get(console.url("evidence.json")) as r:
                (fork,) = (await r.json())["forks"]
            async with session.get(console.url("evidence")) as r:
                html = await r.text()
            async with session.get(console.url("evidence/download"), params={"id": "0"}) as r:
                assert "attachment" in r.headers["Content-Disposition"]
                (tmp_path / "fork.json").write_bytes(await r.read())
            async with session.get(console.url("evidence/download"), params={"id": "5"}) as r:
                missing = r.status
            async with session.get(console.url("overview.json")) as r:
                overview = await r.json()
    assert fork["origin"] == ORIGIN and fork["source"] == "peer hotline-z.example/hashmesh"
    assert [c["size"] for c in fork["checkpoints"]] == [7, 7]
    assert fork["verify_command"] in html.replace("&#39;", "'")
    assert missing == 404
    assert overview["logs"][0]["state"] == "forked (frozen)"
    command = fork["verify_command"].replace("FILE", str(tmp_path / "fork.json"))
    check = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, *shlex.split(command)[1:]],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


async def test_a_value_of_no_stated_type_is_tried_both_ways(console: Console) -> None:
    async with _session() as session:
        csrf = await _csrf(session, console)
        async with session.post(console.url("lookup.json"), data=_form(csrf, PLANTED[4])) as r:
            doc = (await r.json())["results"]
    assert doc["checked"] == 2  # as sha256 and as pdq
    (found,) = doc["matches"]
    assert (found["type"], found["tried_as"]) == ("sha256", ["sha256", "pdq"])
    assert [h["index"] for h in found["hits"]] == [4]


async def _access_rows(console: Console) -> list[dict[str, object]]:
    async with _session() as session, session.get(console.url("activity.json")) as r:
        return list((await r.json())["access_log"])


async def test_activity_counts_who_read_what_without_a_hash_value(console_node: Path) -> None:
    reader = make_identity(console_node.parent, "reader")
    add_peer(console_node, reader, "subscriber")
    async for console in serve_console(console_node):
        server_pem = load_config(console_node).tls_cert_path.read_text(encoding="ascii")
        ctx = client_ssl_context(reader.cert_path, reader.key_path, server_pem)
        body = {"hashes": [{"type": "sha256", "value": v} for v in (PLANTED[3], unlisted(9))]}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as api:
            async with api.get(console.api + "/v1/logs") as r:
                assert r.status == 200
            async with api.post(console.api + "/v1/match", json=body) as r:
                assert r.status == 200

        seen = await eventually(
            functools.partial(_access_rows, console),
            until=lambda r: len(r) == 2,
            what="two access rows",
        )
        async with _session() as session, session.get(console.url("activity")) as r:
            html = await r.text()
    by_route = {row["route"]: row for row in seen}
    assert by_route["/v1/match"] == {
        **by_route["/v1/match"],
        "peer": "reader.example/log",
        "role": "subscriber",
        "requests": 1,
        "hashes": 2,
        "hits": 1,
    }
    assert by_route["/v1/logs"]["requests"] == 1
    assert "reader.example/log" in html and "/v1/match" in html
    assert PLANTED[3] not in html and PLANTED[3] not in json.dumps(seen)


async def test_overview_says_which_log_is_damaged(console_node: Path) -> None:
    DamageRegister(console_node).mark(ORIGIN, 3, "entries do not hash to the root", "fsck")
    async for console in serve_console(console_node):
        async with _session() as session:
            async with session.get(console.url("overview.json")) as r:
                doc = await r.json()
            async with session.get(console.url("overview")) as r:
                html = await r.text()
    own = doc["logs"][0]
    assert own["state"] == "damaged (not served until repaired)"
    assert "from entry 3" in own["damage"] and "found by fsck" in own["damage"]
    assert "damaged (not served until repaired)" in html


async def test_a_long_paste_is_matched_in_chunks_with_lines_kept(console: Console) -> None:
    lines = [f"sha256:{unlisted(i)}" for i in range(6_000)]
    planted_at = {10: PLANTED[0], 3_000: PLANTED[2], 5_999: PLANTED[3]}
    for position, value in planted_at.items():
        lines[position] = f"sha256:{value}"
    async with _session() as session:
        csrf = await _csrf(session, console)
        async with session.post(
            console.url("lookup.json"), data=_form(csrf, "\n".join(lines))
        ) as r:
            doc = (await r.json())["results"]
    assert doc["checked"] == 6_000
    assert [(m["source"], m["value"]) for m in doc["matches"]] == [
        (f"pasted line {p + 1}", v) for p, v in sorted(planted_at.items())
    ]


def _holds(directory: Path, needle: bytes) -> bool:
    return any(needle in p.read_bytes() for p in directory.rglob("*") if p.is_file())


def _png(seed: int) -> bytes:
    from PIL import Image

    rng = random.Random(seed)
    image = Image.new("RGB", (64, 64))
    image.putdata(
        [(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(64 * 64)]
    )
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


async def test_an_uploaded_image_is_hashed_matched_and_not_kept(console_node: Path) -> None:
    picture = _png(7)
    digest = hashlib.sha256(picture).hexdigest()
    with Ledger.open(console_node) as ledger:
        ledger.append(
            [AddEntry.create(signal_type="sha256", value=digest, labels=("series:img-d4",))]
        )
    async for console in serve_console(console_node):
        async with _session() as session:
            csrf = await _csrf(session, console)
            async with session.post(
                console.url("lookup.json"), data=_form(csrf, "", files=("seized.png", picture))
            ) as r:
                doc = (await r.json())["results"]
            async with session.post(
                console.url("lookup"), data=_form(csrf, "", files=("seized.png", picture))
            ) as r:
                html = await r.text()
    (hashed,) = doc["files"]
    assert hashed["sha256"] == digest and hashed["size"] == len(picture)
    assert hashed["pdq"] is not None and len(hashed["pdq"]) == 64
    (found,) = [m for m in doc["matches"] if m["type"] == "sha256"]
    assert found["source"] == "file seized.png" and found["hits"][0]["labels"] == ["series:img-d4"]
    assert doc["checked"] == 4  # md5, sha1, sha256 and pdq of the file
    assert "<img" not in html and "base64," not in html  # never shown back
    # Nothing of the picture was written to the node's directory (database, WAL, logs).
    assert not await asyncio.to_thread(_holds, console_node, picture[200:264])


def _near(value: str, bits: int) -> str:
    """``value`` (64 hex) with its lowest ``bits`` bits flipped."""
    return f"{int(value, 16) ^ ((1 << bits) - 1):064x}"


@pytest.mark.parametrize("workers", [1, 0])
async def test_lookup_runs_in_the_match_workers_unless_there_are_none(
    console_node: Path, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from node.api.console import lookup

    listed_pdq = hashlib.sha256(b"console-pdq").hexdigest()
    with Ledger.open(console_node) as ledger:
        ledger.append(
            [AddEntry.create(signal_type="pdq", value=listed_pdq, quality=90, labels=LABELS)]
        )
    with (console_node / "config.toml").open("a", encoding="utf-8") as f:
        f.write(f"\n[api]\nworkers = {workers}\n")
    in_server: list[int] = []
    matched_here = lookup.match

    def counted(*args: object, **kwargs: object) -> object:
        in_server.append(1)
        return matched_here(*args, **kwargs)  # type: ignore[arg-type]

    # The server process's own matcher; a worker process imports its own.
    monkeypatch.setattr(lookup, "match", counted)
    paste = "\n".join([f"sha256:{PLANTED[0]}", f"pdq:{_near(listed_pdq, 5)}", unlisted(3)])
    async for console in serve_console(console_node):
        async with _session() as session:
            csrf = await _csrf(session, console)
            async with session.post(console.url("lookup.json"), data=_form(csrf, paste)) as r:
                assert r.status == 200, await r.text()
                doc = (await r.json())["results"]
    found = {(m["type"], m["source"]): m["hits"] for m in doc["matches"]}
    assert [h["index"] for h in found["sha256", "pasted line 1"]] == [0]
    (pdq_hit,) = found["pdq", "pasted line 2"]
    assert (pdq_hit["index"], pdq_hit["distance"]) == (7, 5)
    assert doc["checked"] == 4  # the unlabelled value as sha256 and as pdq
    assert bool(in_server) == (workers == 0)
