"""Matching commands: ``hashmesh match`` and ``hashmesh opinion``.

Layer: node.cli (composition root). ``match`` gathers hashes from the command
line, from files (hashed here) and from hash lists (normalised here, with a
report of what was changed), then matches them against the local node's
database directly, or against a remote node's ``POST /v1/match`` over mutual
TLS. Both paths produce the same result objects. ``opinion`` appends an
opinion entry about an entry this node holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from aiohttp import web

from node.api.match import MATCH_JOB
from node.api.workers import WorkerPool
from node.cli.cards import parse_card
from node.cli.output import Command, Output
from node.config import available_cores, load_config, resolve_node_dir
from node.errors import ConfigError, NodeError, PeerProtocolError
from node.ledger import Ledger
from node.ledger.filehash import hash_file, pdq_support
from node.ledger.live_pdq import open_pdq_index, pdq_rows_beyond_file
from node.ledger.lookup import HashInput, HashInputs, decode_hash_list
from node.ledger.matching import (
    DEFAULT_MAX_DISTANCE,
    MAX_BATCH,
    MAX_DISTANCE_CAP,
    MatchQuery,
    make_opinion,
    match,
)
from node.sync.transport import Transport
from node.tls import client_ssl_context
from protocol.api_documents import MatchRequestBody, MatchResponseBody, SignalQuery
from protocol.entry import OPINION_VERDICTS
from protocol.errors import MalformedError
from protocol.receipt import MatchReceipt, ReceiptForm
from protocol.signal import SIGNAL_TYPES

__all__ = ["register"]

MAX_RESPONSE_BYTES = 512 * 1024 * 1024
"""Largest match response read from a remote node (10,000 hits with receipts fit)."""

MATCH_TIMEOUT = 300.0
"""Seconds one batch of a remote match may take (a cold PDQ index loads first)."""

# -- gathering -----------------------------------------------------------------------


def _files(paths: Sequence[str]) -> Iterator[Path]:
    for name in paths:
        path = Path(name)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for file in sorted(files):
                    yield Path(root) / file
        else:
            yield path


def _gather_files(inputs: HashInputs, paths: Sequence[str], out: Output) -> None:
    missing = pdq_support()
    if missing is not None:
        out.note(f"note: {missing}; matching by MD5, SHA-1 and SHA-256 only")
    for path in _files(paths):
        try:
            hashes = hash_file(path, pdq=missing is None)
        except OSError as e:
            inputs.invalid.append(
                {"source": f"file {path}", "field": None, "error": e.strerror or str(e)}
            )
            continue
        inputs.add_file(hashes, f"file {path}")
        # A PDQ hash of low quality is reported by the match itself (a warning).
        if hashes.pdq is None and missing is None and hashes.pdq_skipped is not None:
            inputs.remarks[f"no PDQ hash: {hashes.pdq_skipped}"] += 1


def _gather_list(inputs: HashInputs, name: str, default_type: str | None) -> None:
    try:
        raw = Path(name).read_bytes()
    except OSError as e:
        raise NodeError(f"cannot read {name}: {e.strerror or e}") from e
    inputs.add_lines(decode_hash_list(raw, name, inputs.notes), default_type)


def _gather(request: MatchCommand, out: Output) -> HashInputs:
    inputs = HashInputs()
    for i, raw in enumerate(request.values, start=1):
        inputs.add(f"argument {i}", request.signal_type, raw)
    if request.files:
        _gather_files(inputs, request.files, out)
    if request.hash_list:
        _gather_list(inputs, request.hash_list, request.signal_type)
    return inputs


# -- matching --------------------------------------------------------------------------


@dataclass
class _Found:
    input: HashInput
    hits: list[dict[str, Any]]
    hidden: int
    truncated: bool = False
    warning: str | None = None


def _batches(items: Sequence[HashInput]) -> Iterator[tuple[int, Sequence[HashInput]]]:
    for start in range(0, len(items), MAX_BATCH):
        yield start, items[start : start + MAX_BATCH]


def _match_local(request: MatchCommand, inputs: HashInputs, out: Output) -> list[_Found]:
    found: list[_Found] = []
    with Ledger.open(resolve_node_dir(request.node_dir), read_only=True) as ledger:
        pdq = None
        if any(q.signal_type == "pdq" for q in inputs.queries):
            started = time.monotonic()
            # Maps the node's persisted index; only rows beyond it are read.
            pdq = open_pdq_index(ledger)
            took = time.monotonic() - started
            if took > 1:
                out.note(
                    f"note: read {pdq.tail_rows:,} PDQ hashes beyond the index file "
                    f"({pdq.base_rows:,} mapped) in {took:.1f} s"
                )
        for start, batch in _batches(inputs.queries):
            queries = [
                (start + i, MatchQuery(q.signal_type, q.value, q.quality))
                for i, q in enumerate(batch)
            ]
            for result in match(
                ledger,
                queries,
                pdq=pdq,
                max_distance=request.max_distance,
                receipts=request.receipts,
            ):
                found.append(
                    _Found(
                        inputs.queries[result.position],
                        [h.to_json_obj(receipts=request.receipts) for h in result.hits],
                        result.hidden,
                        result.truncated,
                        result.warning,
                    )
                )
    return found


def _batch_body(request: MatchCommand, batch: Sequence[HashInput]) -> bytes:
    return MatchRequestBody(
        hashes=tuple(
            SignalQuery(type=q.signal_type, value=q.value, quality=q.quality) for q in batch
        ),
        max_distance=request.max_distance,
        receipts=request.receipts,
    ).to_json()


def _pdq_read_per_worker(request: MatchCommand, inputs: HashInputs, out: Output) -> bool:
    """Whether worker processes would each read more PDQ rows than ``[match] worker_read_max``.

    Each worker reads the rows beyond the index file itself; with many (a
    node without ``index/pdq.seg``) one process reads them once instead.
    """
    if not any(q.signal_type == "pdq" for q in inputs.queries):
        return False
    with Ledger.open(resolve_node_dir(request.node_dir), read_only=True) as ledger:
        read_max = ledger.config.match.worker_read_max
        beyond = pdq_rows_beyond_file(ledger, read_max + 1)
    if beyond <= read_max:
        return False
    out.note(
        f"note: more than {read_max:,} PDQ hashes lie beyond the index file: matching in one "
        "process, which reads them once (hashmesh index build writes the file)"
    )
    return True


def _match_in_workers(request: MatchCommand, inputs: HashInputs, workers: int) -> list[_Found]:
    """:func:`_match_local` with the batches spread over worker processes (both cores).

    Each worker opens the node read-only and answers a batch as ``POST
    /v1/match`` would (:data:`~node.api.match.MATCH_JOB`; PDQ queries through
    the persisted index, mapped by every worker); the answers are
    taken in batch order, so the report is the one :func:`_match_local` makes.
    """
    node_dir = resolve_node_dir(request.node_dir)
    batches = list(_batches(inputs.queries))

    async def run() -> list[_Found]:
        pool = WorkerPool(workers, len(batches), node_dir, jobs=(MATCH_JOB,))
        pool.start()
        # At most two batches per worker built and waiting at a time.
        window = asyncio.Semaphore(2 * workers)

        async def one(batch: Sequence[HashInput]) -> MatchResponseBody:
            async with window:
                document, _facts = await pool.run(
                    MATCH_JOB,
                    _batch_body(request, batch),
                    {"pdq": any(q.signal_type == "pdq" for q in batch)},
                )
            return MatchResponseBody.from_json(document)

        try:
            answers = await asyncio.gather(*(one(batch) for _start, batch in batches))
        except web.HTTPException as e:  # a worker process ended (killed, out of memory)
            raise NodeError(f"matching in worker processes failed: {e.text}") from e
        finally:
            await pool.close()
        found: list[_Found] = []
        for (_start, batch), answer in zip(batches, answers, strict=True):
            found.extend(_found_in(answer, batch, inputs))
        return found

    return asyncio.run(run())


def _found_in(
    answer: MatchResponseBody, batch: Sequence[HashInput], inputs: HashInputs
) -> list[_Found]:
    """A local answer's results by position, a warning with its query's hits (as in-process)."""
    by_position: dict[int, _Found] = {}
    for item in answer.matches:
        by_position[item.i] = _Found(
            batch[item.i], [dict(h) for h in item.hits], item.hidden, item.truncated
        )
    for warning in answer.warnings:
        found = by_position.setdefault(warning.i, _Found(batch[warning.i], [], 0))
        found.warning = warning.warning
    for error in answer.errors:
        inputs.invalid.append(
            {"source": batch[error.i].source, "field": error.field, "error": error.error}
        )
    return [by_position[i] for i in sorted(by_position)]


@dataclass(frozen=True, slots=True)
class _Remote:
    url: str
    server_pem: str
    cert: Path
    key: Path


def _remote(request: MatchCommand) -> _Remote | None:
    if request.card:
        try:
            card = parse_card(Path(request.card).read_bytes())
        except OSError as e:
            raise ConfigError(f"cannot read card {request.card}: {e.strerror or e}") from e
        url, pem = request.remote or card.url, card.tls_cert
    elif request.remote:
        if not request.server_cert:
            raise ConfigError("--remote needs --server-cert PEM (or use --card CARD_FILE)")
        try:
            pem = Path(request.server_cert).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read {request.server_cert}: {e}") from e
        url = request.remote
    else:
        return None
    if request.cert and request.key:
        cert, key = Path(request.cert), Path(request.key)
    elif request.cert or request.key:
        raise ConfigError("give both --cert and --key, or neither (to use the node's)")
    else:
        config = load_config(resolve_node_dir(request.node_dir))
        cert, key = config.tls_cert_path, config.tls_key_path
    return _Remote(url.rstrip("/"), pem, cert, key)


async def _post_batches(remote: _Remote, request: MatchCommand, inputs: HashInputs) -> list[_Found]:
    found: list[_Found] = []
    async with Transport(
        remote.url,
        remote.url,
        ssl_context=client_ssl_context(remote.cert, remote.key, remote.server_pem),
        timeout=MATCH_TIMEOUT,
        connect_timeout=10.0,
    ) as transport:
        for _start, batch in _batches(inputs.queries):
            doc = await transport.post_json(
                "/v1/match", _batch_body(request, batch), cap=MAX_RESPONSE_BYTES
            )
            try:
                answer = MatchResponseBody.from_json(doc)
            except MalformedError as e:
                raise PeerProtocolError(remote.url, f"/v1/match: {e}") from e
            # Positions in a response are relative to its batch.
            _take_remote(answer, batch, inputs, found, remote.url)
    return found


def _take_remote(
    answer: MatchResponseBody,
    batch: Sequence[HashInput],
    inputs: HashInputs,
    found: list[_Found],
    peer: str,
) -> None:
    for item in answer.matches:
        if item.i >= len(batch):
            raise PeerProtocolError(peer, "/v1/match: a match names no query of the batch")
        found.append(
            _Found(batch[item.i], [dict(h) for h in item.hits], item.hidden, item.truncated)
        )
    for warning in answer.warnings:
        if warning.i >= len(batch):
            raise PeerProtocolError(peer, "/v1/match: a warning names no query of the batch")
        found.append(_Found(batch[warning.i], [], 0, warning=warning.warning))
    for error in answer.errors:
        if error.i < len(batch):
            inputs.invalid.append(
                {"source": batch[error.i].source, "field": error.field, "error": error.error}
            )


# -- reporting ---------------------------------------------------------------------------


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text)


RECEIPT_FORMATS: tuple[ReceiptForm, ...] = get_args(ReceiptForm)
"""How ``--save-receipts`` writes a receipt: today's JSON, or a C2SP tlog-proof."""


def _receipt_file(receipt: dict[str, Any], fmt: ReceiptForm, stem: str) -> tuple[str, bytes]:
    if fmt == "json":
        return f"{stem}.receipt.json", (json.dumps(receipt, indent=2) + "\n").encode("utf-8")
    # The node's JSON receipt holds everything a tlog-proof says; converting
    # here keeps the match API as it is. A receipt that cannot be converted
    # is malformed as served: stop rather than write a file that cannot verify.
    try:
        return f"{stem}.tlog-proof", MatchReceipt.from_json(receipt).to_tlog_proof()
    except MalformedError as e:
        raise NodeError(f"receipt {stem} is malformed, not saved: {e}") from e


def _save_receipts(directory: str, found: list[_Found], fmt: ReceiptForm, out: Output) -> int:
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    count = 0
    for f in found:
        for hit in f.hits:
            receipt = hit.get("receipt")
            if not receipt:
                continue
            count += 1
            name, data = _receipt_file(
                receipt, fmt, f"{count:04d}-{_safe(hit['origin'])}-{hit['index']}"
            )
            (target / name).write_bytes(data)
    out.note(
        f"saved {count} receipt(s) in {target}; check one with `python -m protocol "
        "verify-receipt FILE --vkey ORIGIN_KEY`"
    )
    return count


def _matched_as(signal_type: str) -> str:
    """How a value tried as several types matched: exactly, or PDQ near."""
    return f"{signal_type} ({'near' if signal_type == 'pdq' else 'exact'})"


def _hit_line(hit: dict[str, Any]) -> str:
    parts = [f"{hit['origin']} #{hit['index']}"]
    if hit["type"] == "pdq":
        parts.append(f"distance {hit['distance']}")
        parts.append(f"value {hit['value']}")
    labels = hit.get("labels") or []
    parts.append("labels " + ", ".join(labels) if labels else "no labels")
    if hit.get("note"):
        parts.append(f"note {hit['note']!r}")
    opinions = hit.get("opinions") or []
    if opinions:
        parts.append("opinions: " + "; ".join(f"{o['origin']} {o['verdict']}" for o in opinions))
    return "    " + "  ".join(parts)


def _report_text(inputs: HashInputs, found: list[_Found], out: Output) -> None:
    for f in found:
        if f.warning is not None:
            out.note(f"warning: {f.input.source}: {f.warning}")
        if not (f.hits or f.hidden):
            continue
        source = f.input.source
        if f.input.tried_as:
            tried = " and ".join(_matched_as(t) for t in f.input.tried_as)
            source += f"; tried as {tried}, matched as {_matched_as(f.input.signal_type)}"
        out.print(f"MATCH {f.input.signal_type} {f.input.value}  ({source})")
        for hit in f.hits:
            out.print(_hit_line(hit))
        if f.hidden:
            out.print(f"    ({f.hidden} more hidden: disputed by trusted origins)")
        if f.truncated:
            out.print("    (more hits than the node's cap, [match] max_hits: only the nearest)")
    hits = sum(len(f.hits) for f in found)
    matched = sum(1 for f in found if f.hits)
    out.print(
        f"checked {len(inputs.queries):,} hash(es): {matched:,} matched ({hits:,} hit(s))"
        + (f", {len(inputs.invalid):,} invalid" if inputs.invalid else "")
    )


def _report_json(inputs: HashInputs, found: list[_Found], out: Output) -> None:
    out.json(
        {
            "checked": len(inputs.queries),
            "matches": [
                {
                    "source": f.input.source,
                    "type": f.input.signal_type,
                    "value": f.input.value,
                    **(
                        {
                            "tried_as": list(f.input.tried_as),
                            "matched_as": _matched_as(f.input.signal_type),
                        }
                        if f.input.tried_as
                        else {}
                    ),
                    "hidden": f.hidden,
                    "hits": f.hits,
                    **({"truncated": True} if f.truncated else {}),
                }
                for f in found
                if f.hits or f.hidden
            ],
            "warnings": [
                {
                    "source": f.input.source,
                    "type": f.input.signal_type,
                    "value": f.input.value,
                    "warning": f.warning,
                }
                for f in found
                if f.warning is not None
            ],
            "invalid": inputs.invalid,
            "normalised": dict(sorted(inputs.notes.items())),
            "files": [h.to_json_obj() for h in inputs.files],
        }
    )


# -- commands --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchCommand:
    """What ``hashmesh match`` was asked to do, read once from the command line."""

    values: tuple[str, ...]
    signal_type: str | None
    files: tuple[str, ...]
    hash_list: str | None
    max_distance: int
    receipts: bool
    save_receipts: str | None
    receipt_format: ReceiptForm
    as_json: bool
    node_dir: str | None
    card: str | None
    remote: str | None
    server_cert: str | None
    cert: str | None
    key: str | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> MatchCommand:
        """The request of a parsed ``hashmesh match`` command line.

        Raises:
            ConfigError: if nothing to match was given.
        """
        if not (args.values or args.file or args.list):
            raise ConfigError("give hash values, --file PATH or --list FILE")
        if args.receipt_format is not None and not args.save_receipts:
            raise ConfigError("--receipt-format applies to --save-receipts DIR; give both")
        return cls(
            values=tuple(args.values),
            signal_type=args.type,
            files=tuple(args.file),
            hash_list=args.list,
            max_distance=args.max_distance,
            receipts=args.receipts or bool(args.save_receipts),
            save_receipts=args.save_receipts,
            receipt_format=args.receipt_format or "json",
            as_json=args.json,
            node_dir=args.dir,
            card=args.card,
            remote=args.remote,
            server_cert=args.server_cert,
            cert=args.cert,
            key=args.key,
        )


def cmd_match(args: argparse.Namespace, out: Output) -> int:
    return run_match(MatchCommand.from_args(args), out)


def run_match(request: MatchCommand, out: Output) -> int:
    """Gather, normalise and match what ``request`` names; report the hits on ``out``.

    Returns:
        0 when at least one hash matched, 1 when none did (like grep).

    Raises:
        NodeError: nothing valid to match, an unreadable input, or the remote
            node failed (a :class:`~node.errors.PeerError`).
    """
    inputs = _gather(request, out)
    for change, count in sorted(inputs.notes.items()):
        out.note(f"normalised: {change} ({count:,})")
    for remark, count in sorted(inputs.remarks.items()):
        out.note(f"note: {remark} ({count:,} file(s))")
    for bad in inputs.invalid:
        where = f"{bad['source']}, {bad['field']}" if bad["field"] else bad["source"]
        out.note(f"invalid: {where}: {bad['error']}")
    if not inputs.queries:
        raise NodeError("nothing to match: every input was invalid")
    remote = _remote(request)
    workers = min(available_cores(), -(-len(inputs.queries) // MAX_BATCH))
    if remote is None and workers > 1 and _pdq_read_per_worker(request, inputs, out):
        workers = 1
    if remote is None and workers > 1:
        # More than one batch: both cores, each worker mapping the PDQ index.
        found = _match_in_workers(request, inputs, workers)
    elif remote is None:
        found = _match_local(request, inputs, out)
    else:
        found = asyncio.run(_post_batches(remote, request, inputs))
    if request.save_receipts:
        _save_receipts(request.save_receipts, found, request.receipt_format, out)
    if request.as_json:
        _report_json(inputs, found, out)
    else:
        _report_text(inputs, found, out)
    # Like grep: 0 when something matched, 1 when nothing did (2, an error,
    # is main's, through MATCH_ERROR_STATUS). Hits hidden by the dispute
    # policy do not count: the trusted origins judged them false positives.
    return 0 if any(f.hits for f in found) else 1


def cmd_opinion(args: argparse.Namespace, out: Output) -> int:
    with Ledger.open(resolve_node_dir(args.dir)) as ledger:
        entry = make_opinion(ledger, args.origin, args.index, args.verdict, args.note)
        result = ledger.append([entry])
    if args.json:
        out.json({"index": result.start, "size": result.checkpoint.size, **entry.to_json_obj()})
    else:
        out.print(str(result.start))
        out.note(
            f"opinion {args.verdict!r} on entry {args.index} of {args.origin} appended as "
            f"entry {result.start}; it travels to peers like any entry"
        )
    return 0


def _distance(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_DISTANCE_CAP:
        raise argparse.ArgumentTypeError(f"expected 0 to {MAX_DISTANCE_CAP}, got {value}")
    return value


def _index(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an entry index (0 or more), got {text!r}")
    return int(text)


def register(command: Command, common: argparse.ArgumentParser) -> None:
    """Add ``match`` and ``opinion`` to the ``hashmesh`` parser."""
    p = command(
        "match",
        cmd_match,
        "match hashes, files or a hash list against every log this node holds",
        "Look hashes up in every log held here (the own log and every followed "
        "origin), exactly for md5, sha1, sha256 and photodna, by Hamming distance "
        "for pdq. VALUEs and --list lines are normalised (upper case, spaces, 0x, "
        "CRLF, a byte order mark) and what changed is reported. --file hashes "
        "files (directories recursively) with MD5, SHA-1, SHA-256 and, for images, "
        "PDQ (needs the pdq extra). Against the local database by default, or a "
        "remote node's POST /v1/match over mutual TLS with --card or --remote. "
        "Exits like grep: 0 when something matched, 1 when nothing did, 2 on an "
        "error (an unreadable input, every input invalid, the remote node failing).",
    )
    p.set_defaults(error_status=2)
    p.add_argument("values", nargs="*", metavar="VALUE", help="hash values to look up")
    p.add_argument(
        "--type",
        choices=sorted(SIGNAL_TYPES),
        metavar="TYPE",
        help="signal type of VALUEs and list lines that do not say; without it, 64 hex digits "
        "are looked up both as sha256 (exact) and as pdq (near), and each hit says which",
    )
    p.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="PATH",
        help="a file or directory to hash and match (repeatable)",
    )
    p.add_argument(
        "--list",
        metavar="FILE",
        help="a hash list: one VALUE or TYPE:VALUE per line, # comments",
    )
    p.add_argument(
        "--max-distance",
        type=_distance,
        default=DEFAULT_MAX_DISTANCE,
        metavar="N",
        help=f"PDQ Hamming distance (default {DEFAULT_MAX_DISTANCE}, at most {MAX_DISTANCE_CAP})",
    )
    p.add_argument(
        "--receipts",
        action="store_true",
        help="attach to each hit a receipt (entry, inclusion proof, signed checkpoint)",
    )
    p.add_argument(
        "--save-receipts",
        metavar="DIR",
        help="write each hit's receipt to a file in DIR (implies --receipts), checked "
        "offline with `python -m protocol verify-receipt FILE --vkey ORIGIN_KEY`",
    )
    p.add_argument(
        "--receipt-format",
        choices=RECEIPT_FORMATS,
        help="with --save-receipts: json (default) writes NNNN-ORIGIN-INDEX.receipt.json, "
        "hashmesh's receipt document; tlog-proof writes NNNN-ORIGIN-INDEX.tlog-proof, a "
        "C2SP tlog-proof (c2sp.org/tlog-proof: index, inclusion proof, the cosigned "
        "checkpoint, the entry's bytes as its extra data) that other transparency-log "
        "tools can read. Both prove the same thing",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--card", metavar="FILE", help="match on the node of this peer card")
    p.add_argument("--remote", metavar="URL", help="match on the node at https://HOST:PORT")
    p.add_argument("--server-cert", metavar="PEM", help="with --remote: the node's certificate")
    p.add_argument("--cert", metavar="PEM", help="client certificate (default: this node's)")
    p.add_argument("--key", metavar="PEM", help="client key (default: this node's)")

    p = command(
        "opinion",
        cmd_opinion,
        "append an opinion (confirm, dispute, false-positive) about an entry held here",
        "Append an opinion entry to the own log about entry INDEX of ORIGIN (the "
        "own log or a followed one), bound to that entry's exact bytes by its leaf "
        "hash. Opinions travel like any entry; match results show them, and a node "
        "may hide hits disputed by enough trusted origins ([match] in config.toml).",
    )
    p.add_argument("origin", help="origin of the log holding the entry")
    p.add_argument("index", type=_index, help="the entry's index in that log")
    p.add_argument("--verdict", required=True, choices=OPINION_VERDICTS)
    p.add_argument("--note", help="short free-text note stored with the opinion")
    p.add_argument("--json", action="store_true", help="print a JSON result")
