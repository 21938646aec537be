"""The console's read pages: Overview, Entry, Evidence, Activity, and the downloads.

Layer: node.api. Each page gathers its facts in one function of the ledger,
run in a reader thread (:meth:`Database.read`), and hands them to
:func:`~node.api.console.app.render` as JSON-ready data. The rules come from
where they live: receipts, opinions and retractions from
:func:`node.ledger.matching.describe_entry`, receipt verification from
:func:`protocol.receipt.verify_receipt` under the origin's key chain,
evidence from :class:`protocol.evidence.ForkEvidence`.
"""

from __future__ import annotations

import datetime
import itertools
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from node.api.console.chart import CHART_DAYS, growth_chart
from node.api.console.render import (
    CONSOLE_DB_KEY,
    CONSOLE_SETTINGS_KEY,
    ConsoleInputError,
    Page,
    render,
)
from node.errors import ConfigError, NodeError
from node.ledger.cards import CertificateExpiry, holder_expiries
from node.ledger.matching import EntryView, describe_entry
from node.ledger.service import Ledger
from node.sync.heads import PeerHeads, peer_heads
from protocol.checkpoint import Checkpoint
from protocol.entry import RetractEntry, RotateEntry, parse_entry
from protocol.errors import ProtocolError
from protocol.evidence import ForkEvidence
from protocol.receipt import verify_receipt
from protocol.rotation import KeyChain

__all__ = [
    "activity",
    "entry",
    "evidence",
    "evidence_file",
    "overview",
    "overview_facts",
    "receipt",
]

RECENT = 20
"""Rows of each Activity table."""


def _parse_time(text: str) -> float:
    # fromisoformat, not strptime: a fraction of the cost (no locale look-up);
    # stored times end in Z, which 3.11 reads as UTC.
    return datetime.datetime.fromisoformat(text).timestamp()


def age_text(seconds: float) -> str:
    """A duration as people read it: ``42 s``, ``7 min``, ``3 h``, ``12 d``."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def _days_left(expiry: CertificateExpiry | None, now: float) -> int | None:
    """Whole days until ``expiry`` (None: the certificate could not be read)."""
    if expiry is None:
        return None
    return int((expiry.not_after.timestamp() - now) // 86400)


def _warns(expiry: CertificateExpiry | None) -> bool:
    """The ledger's warning ([ops] certificate_warn_days); an unreadable certificate warns."""
    return expiry is None or expiry.warning


def _expiries(ledger: Ledger) -> dict[str, CertificateExpiry]:
    """Per holder, when its link ends, by the ledger's rule (empty if a PEM is unreadable)."""
    try:
        return holder_expiries(ledger.certificate_expiries())
    except ConfigError:
        return {}


def _checkpoint_text(note: str) -> str:
    """The body of a signed note (origin, size, root), without signature lines."""
    return note.split("\n\n", 1)[0] + "\n"


# -- Overview -------------------------------------------------------------------------


def overview_facts(ledger: Ledger, heads: PeerHeads, now: float) -> dict[str, Any]:
    """Everything the Overview shows, JSON-ready (one reader thread, a few indexed reads)."""
    config = ledger.config
    since = datetime.datetime.fromtimestamp(now - CHART_DAYS * 86400, datetime.UTC)
    since_day = since.strftime("%Y-%m-%d")
    required = {r.origin: r.threshold for r in config.witness.require}
    frozen = ledger.peers.frozen_origins()
    expiries = _expiries(ledger)
    logs: list[dict[str, Any]] = []
    growth: dict[str, list[tuple[str, int]]] = {}
    for log in ledger.logs():
        record = ledger.stored_checkpoint(log)
        size = 0 if record is None else record.size
        best = None if log.is_own else heads.best(log.origin)
        cosigned = 0 if record is None else len(ledger.matching.cosignature_lines(log.log_id, size))
        logs.append(
            {
                "origin": log.origin,
                "own": log.is_own,
                "size": size,
                "checkpoint_age_s": None
                if record is None
                else round(now - _parse_time(record.recorded_at), 1),
                "lag": None if best is None else max(0, best.size - size),
                "best_peer": None if best is None else best.peer,
                "state": "forked (frozen)" if log.origin in frozen else "ok",
                "cosignatures": cosigned,
                "cosignatures_required": len(config.witness.ask)
                if log.is_own
                else required.get(log.origin, 0),
            }
        )
        growth[log.origin] = ledger.size_by_day(log, since_day)
    statuses = {s.name: s for s in ledger.peers.peer_statuses()}
    peers: list[dict[str, Any]] = []
    for peer in ledger.peers.list_peers():
        status = statuses.get(peer.name)
        ok = status.last_ok_at if status else None
        error_at = status.last_error_at if status else None
        if peer.role != "peer":
            state = f"reads from us ({peer.role})"
        elif ok is None and error_at is None:
            state = "not synced yet"
        elif error_at is not None and (ok is None or error_at > ok):
            state = "failing"
        else:
            state = "ok"
        peers.append(
            {
                "name": peer.name,
                "url": peer.url,
                "role": peer.role,
                "state": state,
                "last_success": ok,
                "last_error": status.last_error if status else None,
                "last_error_at": error_at,
                "failures": status.failures if status else 0,
                "certificate_days_left": _days_left(expiries.get(peer.name), now),
                "certificate_warning": _warns(expiries.get(peer.name)),
            }
        )
    own = logs[0]
    return {
        "certificate_days_left": _days_left(expiries.get("own"), now),
        "certificate_warning": _warns(expiries.get("own")),
        "origin": own["origin"],
        "size": own["size"],
        "checkpoint_age_s": own["checkpoint_age_s"],
        "cosignatures": own["cosignatures"],
        "cosignatures_required": own["cosignatures_required"],
        "logs": logs,
        "peers": peers,
        "entries_per_day": _per_day(growth, since_day),
        "generated_at": datetime.datetime.fromtimestamp(now, datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        ),
    }


def _per_day(growth: dict[str, list[tuple[str, int]]], since_day: str) -> dict[str, dict[str, int]]:
    """Entries added per UTC day and log, from the size at each day's last checkpoint."""
    out: dict[str, dict[str, int]] = {}
    for origin, days in growth.items():
        previous = 0
        counts: dict[str, int] = {}
        for day, size in days:
            if day >= since_day:
                counts[day] = size - previous
            previous = size
        out[origin] = counts
    return out


async def overview(request: web.Request) -> web.StreamResponse:
    """Own origin and size, every log held, every peer, and growth per day."""
    db = request.app[CONSOLE_DB_KEY]
    heads = peer_heads(db)
    now = time.time()
    facts = await db.read(lambda ledger: overview_facts(ledger, heads, now))
    integrity = request.app[CONSOLE_SETTINGS_KEY].integrity
    for log in facts["logs"]:
        damage = None if integrity is None else integrity.damage(log["origin"])
        log["damage"] = None if damage is None else str(damage)
        if damage is not None:
            log["state"] = "damaged (not served until repaired)"
        age = log["checkpoint_age_s"]
        log["age_text"] = None if age is None else age_text(age)
    view = {"chart": growth_chart(facts["entries_per_day"], now)}
    return render(request, Page("overview.html", "Overview", facts, view))


# -- Entry ------------------------------------------------------------------------------


def _entry_query(request: web.Request) -> tuple[str, int]:
    origin = request.query.get("origin")
    if not origin:
        raise ConsoleInputError("say which log: ?origin=ORIGIN&index=N", field="origin")
    index_text = request.query.get("index", "")
    if not index_text.isdigit() or len(index_text) > 15:
        raise ConsoleInputError(
            f"index must be an entry number (0 or more), got {index_text!r}", field="index"
        )
    return origin, int(index_text)


def _entry_doc(view: EntryView) -> dict[str, Any]:
    entry = view.entry
    doc: dict[str, Any] = {
        "origin": view.origin,
        "index": view.index,
        "leaf_hash": view.leaf_hash.hex(),
        "kind": type(entry).__name__.removesuffix("Entry").lower(),
        "entry": entry.to_json_obj(),
        "opinions": [o.to_json_obj() for o in view.opinions],
        "retracted_by": view.retracted_by,
        "checkpoint": None,
        "inclusion_proof": None,
    }
    receipt = view.receipt
    if receipt is not None:
        doc["checkpoint"] = {"size": receipt.size, "note": receipt.checkpoint}
        doc["inclusion_proof"] = [h.hex() for h in receipt.hashes]
    return doc


async def entry(request: web.Request) -> web.StreamResponse:
    """One entry: leaf hash, checkpoint, inclusion proof (verified when asked), opinions."""
    origin, index = _entry_query(request)
    verify = request.query.get("verify") == "1"
    db = request.app[CONSOLE_DB_KEY]

    def read(ledger: Ledger) -> tuple[EntryView, KeyChain]:
        return describe_entry(ledger, origin, index), ledger.key_chain(origin)

    view, chain = await db.read(read)
    doc = _entry_doc(view)
    doc["verification"] = None
    # The key an outsider checks the receipt with: the one for its size.
    vkey = chain.verifier_for(view.receipt.size).to_text() if view.receipt else "ORIGIN_KEY"
    doc["verify_command"] = f"python -m protocol verify-receipt FILE --vkey '{vkey}'"
    if verify:
        doc["verification"] = _verify(view, chain)
    return render(request, Page("entry.html", f"Entry {index} of {origin}", doc))


def _verify(view: EntryView, chain: KeyChain) -> dict[str, Any]:
    """Check the entry's receipt as an outsider would: signature by the key chain, then proof."""
    receipt = view.receipt
    if receipt is None:
        return {"ok": False, "message": "no stored checkpoint covers this entry yet"}
    try:
        verified = verify_receipt(receipt, chain.verifier_for(receipt.size))
    except ProtocolError as e:
        return {"ok": False, "message": f"verification FAILED: {e}"}
    return {
        "ok": True,
        "message": (
            f"verified: leaf hash {verified.leaf_hash.hex()} is entry {verified.index} of the "
            f"tree of size {verified.size} with root {verified.root_hash.hex()}, signed by "
            f"{verified.origin}'s key for that size"
        ),
    }


async def receipt(request: web.Request) -> web.StreamResponse:
    """Download an entry's receipt (``format=json`` or ``tlog-proof``)."""
    origin, index = _entry_query(request)
    form = request.query.get("format", "json")
    if form not in ("json", "tlog-proof"):
        raise ConsoleInputError("format must be json or tlog-proof", field="format")
    db = request.app[CONSOLE_DB_KEY]
    view = await db.read(lambda ledger: describe_entry(ledger, origin, index))
    if view.receipt is None:
        raise ConsoleInputError(
            f"no stored checkpoint of {origin} covers entry {index} yet", status=404
        )
    stem = "".join(c if c.isalnum() or c in ".-" else "_" for c in origin) + f"-{index}"
    if form == "json":
        body, name, kind = view.receipt.to_json(), f"{stem}.receipt.json", "application/json"
    else:
        body, name, kind = view.receipt.to_tlog_proof(), f"{stem}.tlog-proof", "text/plain"
    return web.Response(
        body=body,
        content_type=kind,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# -- Evidence ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Evidence:
    origin: str
    source: str
    detected_at: str
    data: bytes
    vkey: str | None


def _evidence_records(ledger: Ledger) -> list[_Evidence]:
    records = []
    for r in ledger.peers.list_evidence():
        # The key the verify command needs: the origin's key for the larger
        # checkpoint's size, from the key chain this node holds.
        vkey = None
        try:
            found = ForkEvidence.from_json(r.evidence_json)
            size = Checkpoint.from_text(_checkpoint_text(found.note_b)).size
            vkey = ledger.key_chain(r.origin).verifier_for(size).to_text()
        except (ProtocolError, NodeError):
            pass
        records.append(_Evidence(r.origin, r.source, r.detected_at, r.evidence_json, vkey))
    return records


async def evidence(request: web.Request) -> web.StreamResponse:
    """Forks detected, each with its evidence file and the command that checks it."""
    db = request.app[CONSOLE_DB_KEY]
    records = await db.read(_evidence_records)
    forks: list[dict[str, Any]] = []
    for number, record in enumerate(records):
        item: dict[str, Any] = {
            "id": number,
            "origin": record.origin,
            "source": record.source,
            "detected_at": record.detected_at,
            "verify_command": "python -m protocol verify-evidence FILE --vkey "
            + (f"'{record.vkey}'" if record.vkey else "ORIGIN_KEY"),
        }
        try:
            found = ForkEvidence.from_json(record.data)
            a = Checkpoint.from_text(_checkpoint_text(found.note_a))
            b = Checkpoint.from_text(_checkpoint_text(found.note_b))
            item["checkpoints"] = [{"size": c.size, "root": c.root_hash.hex()} for c in (a, b)]
        except ProtocolError as e:
            item["checkpoints"] = []
            item["problem"] = f"stored evidence does not parse: {e}"
        forks.append(item)
    return render(request, Page("evidence.html", "Evidence", {"forks": forks}))


async def evidence_file(request: web.Request) -> web.StreamResponse:
    """Download one stored fork evidence document (``?id=N`` as listed)."""
    text = request.query.get("id", "")
    if not text.isdigit() or len(text) > 9:
        raise ConsoleInputError(f"id must be a number from the Evidence page, got {text!r}")
    db = request.app[CONSOLE_DB_KEY]
    records = await db.read(_evidence_records)
    number = int(text)
    if number >= len(records):
        raise ConsoleInputError(f"there is no evidence {number} ({len(records)} held)", status=404)
    record = records[number]
    stem = "".join(c if c.isalnum() or c in ".-" else "_" for c in record.origin)
    return web.Response(
        body=record.data,
        content_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{stem}-fork-{number}.json"'},
    )


# -- Activity ---------------------------------------------------------------------------


def activity_facts(ledger: Ledger, heads: PeerHeads) -> dict[str, Any]:
    """Recent writes, retractions and key rotations of the own log; who holds how much of it."""
    own = ledger.own_log
    checkpoints = ledger.recent_checkpoints(own, RECENT + 1)
    writes = [
        {
            "at": newer.recorded_at,
            "size": newer.size,
            "added": newer.size - older.size,
            "first_index": older.size,
        }
        for older, newer in itertools.pairwise(reversed(checkpoints))
    ]
    writes.reverse()
    retractions = []
    for target, by in ledger.recent_retractions(own, RECENT):
        data = ledger.entry(own, by)
        parsed = parse_entry(data) if data is not None else None
        retractions.append(
            {
                "index": by,
                "target": target,
                "reason": parsed.reason if isinstance(parsed, RetractEntry) else None,
            }
        )
    rotations = []
    chain = ledger.key_chain(own.origin)
    for period in chain.periods:
        if period.rotated_by is None:
            continue
        data = ledger.entry(own, period.rotated_by)
        parsed = parse_entry(data) if data is not None else None
        rotations.append(
            {
                "index": period.rotated_by,
                "from_size": period.from_size,
                "key": period.verifier.to_text(),
                "reason": parsed.reason if isinstance(parsed, RotateEntry) else None,
            }
        )
    rotations.reverse()
    statuses = {s.name: s for s in ledger.peers.peer_statuses()}
    readers = []
    held = {h.peer: h for h in heads.all() if h.origin == own.origin}
    for peer in ledger.peers.list_peers():
        status = statuses.get(peer.name)
        head = held.get(peer.name)
        readers.append(
            {
                "peer": peer.name,
                "role": peer.role,
                "holds_of_own_log": None if head is None else head.size,
                "last_sync_ok": status.last_ok_at if status else None,
            }
        )
    return {
        "origin": own.origin,
        "writes": writes,
        "retractions": retractions,
        "rotations": rotations,
        "readers": readers,
        "access_log": None,
    }


async def activity(request: web.Request) -> web.StreamResponse:
    """Recent imports, retractions and key rotations of the own log; who read it."""
    db = request.app[CONSOLE_DB_KEY]
    heads = peer_heads(db)
    facts = await db.read(lambda ledger: activity_facts(ledger, heads))
    readers = request.app[CONSOLE_SETTINGS_KEY].readers
    if readers is not None:
        facts["access_log"] = [
            {
                "peer": c.peer,
                "role": c.role,
                "route": c.route,
                "requests": c.requests,
                "hashes": c.hashes,
                "hits": c.hits,
                "last": datetime.datetime.fromtimestamp(c.last_at, datetime.UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                ),
            }
            for c in readers.counts()
        ]
    return render(request, Page("activity.html", "Activity", facts))
