"""The ``hashmesh`` command line.

Layer: node.cli, the composition root: it may import anything, nothing
imports it. Every command opens the node, does one thing, and reports in one
line per fact; errors are one ``error:`` line and exit status 1 (``--verbose``
shows the traceback), usage errors exit 2.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import os
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from node.cli.audit import register as register_audit
from node.cli.backup import register as register_backup
from node.cli.federation import register as register_federation
from node.cli.fsck import integrity_json, integrity_lines
from node.cli.fsck import register as register_fsck
from node.cli.index import register as register_index
from node.cli.keys import register as register_keys
from node.cli.match import register as register_match
from node.cli.output import describe_subcommands
from node.cli.progress import progress_bar
from node.cli.publish import register as register_publish
from node.cli.tls import print_expiry_warnings
from node.cli.tls import register as register_tls
from node.cli.witness import register as register_witness
from node.cli.witness import wait_line
from node.config import DEFAULT_LISTEN, resolve_node_dir
from node.errors import ImportRejectedError, LineError, NodeError
from node.ledger import Ledger
from node.ledger.export import EXPORT_FORMATS, FILE_EXPORTS, export_text, listed_adds
from node.ledger.feeds import ReplacingFile, write_misp_feed, write_stix_bundle
from node.ledger.hashlist import FORMATS, Format, HashListReader, LabelColumn, load_label_map
from node.ledger.provision import init_node
from node.ledger.service import AppendResult, ImportResult, LogStatus
from node.ledger.vics import PROFILES, VicsReader, load_profile, looks_like_vics, write_vics
from node.storage.connection import describe_sqlite_error
from protocol.encoding import encode_b64
from protocol.entry import AddEntry, OpinionEntry, RetractEntry, RotateEntry, parse_entry
from protocol.errors import ProtocolError
from protocol.signal import SIGNAL_TYPES, normalise_signal_value

__all__ = ["build_parser", "main"]

_DESCRIPTION = """\
hashmesh: a node of a federated, signed, append-only hash ledger.

Start with `hashmesh init --dir DIR --origin ORIGIN`. Every other command works
on the node in --dir (or $HASHMESH_DIR, or ./.hashmesh).
"""


class _Out:
    """Where commands write: stdout for results, stderr for reports."""

    def __init__(self, stdout: TextIO, stderr: TextIO) -> None:
        self.stdout = stdout
        self.stderr = stderr

    def print(self, text: str = "") -> None:
        print(text, file=self.stdout)

    def note(self, text: str) -> None:
        print(text, file=self.stderr)

    def json(self, value: Any) -> None:
        print(json.dumps(value, indent=2, ensure_ascii=False), file=self.stdout)


def _database_path(args: argparse.Namespace) -> Path | None:
    try:
        return resolve_node_dir(getattr(args, "dir", None)) / "ledger.db"
    except NodeError:
        return None


def _open(args: argparse.Namespace, *, read_only: bool = False) -> Ledger:
    return Ledger.open(resolve_node_dir(args.dir), read_only=read_only)


# -- commands ---------------------------------------------------------------


def cmd_init(args: argparse.Namespace, out: _Out) -> int:
    result = init_node(
        resolve_node_dir(args.dir), args.origin, listen=args.listen, advertise=args.advertise_url
    )
    out.print(f"created node {result.origin} in {result.node_dir}")
    out.print(f"verifier key: {result.verifier_key}")
    out.print(f"TLS SPKI fingerprint: sha256:{result.tls_fingerprint}")
    out.print(f"listen address: {result.listen}")
    return 0


def _report_append(result: AppendResult, out: _Out, *, as_json: bool) -> None:
    if as_json:
        out.json(
            {
                "indexes": list(result.indexes),
                "duplicates": [
                    {"value": d.entry.value, "existing_index": d.existing_index}
                    for d in result.duplicates
                ],
                "size": result.checkpoint.size,
            }
        )


def cmd_add(args: argparse.Namespace, out: _Out) -> int:
    value, changes = normalise_signal_value(args.type, args.value)
    for change in changes:
        out.note(f"note: {change}")
    labels = [label.strip().lower() for label in args.label]
    for given, stored in zip(args.label, labels, strict=True):
        if given != stored:
            out.note(f"note: label {given!r} stored as {stored!r} (labels are lower case)")
    entry = AddEntry.create(
        signal_type=args.type,
        value=value,
        labels=labels,
        note=args.note,
        quality=args.quality,
    )
    with _open(args) as ledger:
        result = ledger.append([entry])
    _report_append(result, out, as_json=args.json)
    if result.duplicates:
        existing = result.duplicates[0].existing_index
        out.note(f"{args.type} {value} is already listed as entry {existing}; nothing appended")
        if not args.json:
            out.print(str(existing))
        return 0
    if not args.json:
        out.print(str(result.start))
    return 0


def _guess_format(path: str) -> Format:
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".ndjson", ".jsonl"):
        return "ndjson"
    return "lines"


def _label_columns(args: argparse.Namespace) -> list[LabelColumn]:
    mapping = None
    if args.label_map:
        if not args.label_from:
            raise NodeError("--label-map renames the values of --label-from COLUMN=NAMESPACE:")
        try:
            text = Path(args.label_map).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise NodeError(f"cannot read {args.label_map}: {e}") from e
        mapping = load_label_map(text, args.label_map)
    if args.label_from and (args.format or _guess_format(args.file)) != "csv":
        raise NodeError("--label-from reads a CSV column; this input is not CSV (see --format)")
    return [LabelColumn.parse(spec, mapping) for spec in args.label_from]


def _is_vics(args: argparse.Namespace) -> bool:
    if args.format is not None:
        return bool(args.format == "vics")
    if args.file == "-" or Path(args.file).suffix.lower() != ".json":
        return False
    try:
        with open(args.file, "rb") as f:
            return looks_like_vics(f.read(4096))
    except OSError as e:
        raise NodeError(f"cannot read {args.file}: {e.strerror or e}") from e


def _import_vics(args: argparse.Namespace, out: _Out) -> int:
    if args.file == "-":
        raise NodeError("a VICS document is read from a file, not standard input")
    if not args.profile:
        raise NodeError(f"a VICS document needs --profile ({', '.join(PROFILES)} or FILE)")
    if args.type or args.quality is not None or args.label_from:
        raise NodeError("--type, --quality and --label-from do not apply to a VICS document")
    reader = VicsReader(load_profile(args.profile), extra_labels=tuple(args.label))
    try:
        total = os.stat(args.file).st_size
    except OSError as e:
        raise NodeError(f"cannot read {args.file}: {e.strerror or e}") from e
    started = time.monotonic()
    with (
        _open(args) as ledger,
        progress_bar(out.stderr, total, f"import {args.file}", unit="B") as progress,
    ):

        def bytes_read(_entries: int) -> None:
            # The document's bytes parsed so far: a percentage and an ETA,
            # which a count of media items (total unknown) could not give.
            progress(reader.bytes_read() or total)

        try:
            result = ledger.import_lines(
                reader.read(Path(args.file)), skip_invalid=args.skip_invalid, progress=bytes_read
            )
        except ImportRejectedError as e:
            _write_line_report(args, out, e.errors, skipped=False)
            raise NodeError(
                f"{len(e.errors):,} invalid field(s) in {reader.media_read:,} media items; "
                f"nothing was imported (first: {e.errors[0]}). Fix them, or pass --skip-invalid"
            ) from e
    out.note(f"VICS document: {reader.context} ({reader.media_read:,} media items)")
    for reason, count in sorted(reader.skipped.items()):
        out.note(f"skipped {count:,} media items: {reason}")
    _report_import(args, out, result, reader.notes, time.monotonic() - started, "media items")
    return 0


class _LineCounter(io.BufferedIOBase):
    """A binary stream that counts the newlines it hands to a text decoder.

    A text stream reports a decoding error by its offset in the chunk being
    decoded; with the newlines before that chunk counted (one ``count`` per
    8 KiB chunk, no work per line) the error is named by its line.
    """

    def __init__(self, raw: io.BufferedReader) -> None:
        super().__init__()
        self._raw = raw
        self._newlines = 0
        self._before_chunk = 0

    @property
    def name(self) -> object:
        return self._raw.name

    def fileno(self) -> int:
        return self._raw.fileno()

    def readable(self) -> bool:
        return True

    def _counted(self, data: bytes) -> bytes:
        self._before_chunk = self._newlines
        self._newlines += data.count(b"\n")
        return data

    def read(self, size: int | None = -1) -> bytes:
        return self._counted(self._raw.read(size))

    def read1(self, size: int = -1) -> bytes:
        return self._counted(self._raw.read1(size))

    def close(self) -> None:
        self._raw.close()
        super().close()

    def line_of(self, error: UnicodeDecodeError) -> int:
        """The 1-based line holding the first byte ``error`` names (in the last chunk read)."""
        return self._before_chunk + bytes(error.object[: error.start]).count(b"\n") + 1


def cmd_import(args: argparse.Namespace, out: _Out) -> int:
    if _is_vics(args):
        return _import_vics(args, out)
    if args.profile:
        raise NodeError("--profile applies to a VICS document (--format vics)")
    fmt: Format = args.format or _guess_format(args.file)
    reader = HashListReader(
        fmt=fmt,
        default_type=args.type,
        extra_labels=args.label,
        default_quality=args.quality,
        label_columns=_label_columns(args),
    )
    if args.file == "-":
        raw = open(sys.stdin.fileno(), "rb", closefd=False)  # noqa: SIM115 - closed below
        total = None
    else:
        try:
            raw = open(args.file, "rb")  # noqa: SIM115 - closed below
            total = os.fstat(raw.fileno()).st_size
        except OSError as e:
            raise NodeError(f"cannot read {args.file}: {e.strerror or e}") from e
    lines_in = _LineCounter(raw)
    stream: TextIO = io.TextIOWrapper(lines_in, encoding="utf-8", newline="", errors="strict")
    started = time.monotonic()
    try:
        with (
            _open(args) as ledger,
            progress_bar(out.stderr, total, f"import {args.file}", unit="B") as progress,
        ):

            def bytes_read(_lines: int) -> None:
                # Bytes the reader has taken from the file (ahead by one buffer).
                progress(os.lseek(stream.fileno(), 0, os.SEEK_CUR))

            try:
                result = ledger.import_lines(
                    reader.read(stream),
                    skip_invalid=args.skip_invalid,
                    progress=bytes_read if total is not None else None,
                )
            except UnicodeDecodeError as e:
                name = "standard input" if args.file == "-" else args.file
                raise NodeError(
                    f"{name} is not UTF-8 text: line {lines_in.line_of(e)} has bytes that are "
                    "not UTF-8 (save the list as UTF-8): nothing was imported"
                ) from e
            except ImportRejectedError as e:
                if args.json:
                    out.json(_import_doc(reader, None, e.total_lines, e.errors, 0.0))
                else:
                    _write_line_report(args, out, e.errors, skipped=False)
                raise
    finally:
        stream.close()
    elapsed = time.monotonic() - started
    if args.json:
        out.json(_import_doc(reader, result, result.lines_read, result.skipped, elapsed))
        return 0
    if reader.ignored_columns:
        out.note(f"ignored CSV columns: {', '.join(reader.ignored_columns)}")
    _report_import(args, out, result, reader.notes, elapsed, "lines")
    if reader.skipped_blank:
        out.print(f"passed over {reader.skipped_blank:,} blank or comment lines")
    return 0


def _import_doc(
    reader: HashListReader,
    result: ImportResult | None,
    lines_read: int,
    invalid: Sequence[LineError],
    seconds: float,
) -> dict[str, Any]:
    """``import --json``: the summary, and every invalid line (field and reason, no value)."""
    append = None if result is None else result.append
    return {
        "imported": 0 if append is None else append.count,
        "start": None if append is None or not append.count else append.start,
        "lines_read": lines_read,
        "duplicates": 0 if append is None else len(append.duplicates),
        "invalid": [{"line": e.line, "field": e.field, "reason": e.reason} for e in invalid],
        "rejected": result is None,
        "normalised": dict(sorted(reader.notes.items())),
        "ignored_columns": list(reader.ignored_columns),
        "blank_or_comment_lines": reader.skipped_blank,
        "size": None if append is None else append.checkpoint.size,
        "seconds": round(seconds, 3),
        # The merge of the active index's levels the import ended with (its time is in seconds).
        "merged": 0 if result is None or result.merged is None else result.merged.rows,
    }


def _report_import(
    args: argparse.Namespace,
    out: _Out,
    result: ImportResult,
    notes: Counter[str],
    elapsed: float,
    unit: str,
) -> None:
    append = result.append
    for change, count in sorted(notes.items()):
        out.note(f"normalised: {change} ({count:,} {unit})")
    if result.skipped:
        _write_line_report(args, out, result.skipped, skipped=True)
    first = f" (indexes {append.start}..{append.start + append.count - 1})" if append.count else ""
    out.print(
        f"imported {append.count:,} entries{first} from {result.lines_read:,} {unit} "
        f"in {elapsed:.1f} s"
    )
    if append.duplicates:
        out.print(f"skipped {len(append.duplicates):,} hashes already listed")
    if result.merged is not None:
        out.print(
            f"merged {result.merged.rows:,} listed hashes into the base level of the "
            f"active index in {result.merged.seconds:.1f} s (part of the time above)"
        )
    if result.skipped:
        out.print(f"skipped {len(result.skipped):,} invalid {unit} (--skip-invalid)")
    if append.count:
        out.print(f"log size {append.checkpoint.size:,}, checkpoint signed")
    else:
        out.print(
            f"nothing new to import; log size {append.checkpoint.size:,}, no checkpoint signed"
        )


def _write_line_report(
    args: argparse.Namespace, out: _Out, errors: Sequence[Any], *, skipped: bool
) -> None:
    verb = "skipped" if skipped else "invalid"
    lines = [f"{verb}: {e}" for e in errors]
    if args.report:
        Path(args.report).write_text("\n".join(lines) + "\n", encoding="utf-8")
        out.note(f"{len(lines):,} {verb} lines listed in {args.report}")
        return
    limit = len(lines) if skipped or args.all_errors else 20
    for line in lines[:limit]:
        out.note(line)
    if len(lines) > limit:
        out.note(f"... and {len(lines) - limit:,} more (use --report FILE to list all)")


def cmd_retract(args: argparse.Namespace, out: _Out) -> int:
    with _open(args) as ledger:
        result = ledger.retract(args.index, args.reason)
    out.print(str(result.start))
    out.note(f"entry {args.index} retracted by entry {result.start}")
    return 0


def _status_json(status: LogStatus) -> dict[str, Any]:
    return {
        "origin": status.origin,
        "own": status.is_own,
        "size": status.size,
        "root": encode_b64(status.root_hash),
        "last_checkpoint_at": status.checkpoint_recorded_at,
        "active_by_signal_type": status.by_signal_type,
        "active_by_label": status.by_label,
        "retracted": status.retracted,
    }


def cmd_status(args: argparse.Namespace, out: _Out) -> int:
    with _open(args, read_only=True) as ledger:
        origins = [log.origin for log in ledger.logs()]
        if args.origin is not None and args.origin != ledger.own_log.origin:
            frozen = ledger.peers.is_frozen(args.origin)
            held = ledger.replica(args.origin).state()
            if held.checkpoint is None:
                # A followed log mid catch-up: entries held, no signed head yet.
                if args.json:
                    out.json(
                        {
                            "origin": args.origin,
                            "own": False,
                            "size": held.size,
                            "checkpoint": None,
                            "frozen": frozen,
                            "logs_held": origins,
                        }
                    )
                else:
                    out.print(f"origin:           {args.origin} (replicated)")
                    out.print(f"held:             {held.size:,} entries, no signed checkpoint yet")
                return 0
        else:
            frozen = False
        frozen_origins = sorted(ledger.peers.frozen_origins())
        status = ledger.status(args.origin)
        waits = [w for w in ledger.witness_waits() if args.origin in (None, w.origin)]
        # Only the own log is held back by a restore's recovery.
        recovering = ledger.recovering if status.is_own else None
        print_expiry_warnings(ledger.certificate_expiries(), out)
    node_dir = resolve_node_dir(args.dir)
    if args.json:
        doc = _status_json(status)
        doc["logs_held"] = origins
        doc["frozen"] = frozen
        doc["witness_waits"] = [w.to_json() for w in waits]
        doc["integrity"] = integrity_json(node_dir)
        doc["frozen_origins"] = frozen_origins
        doc["recovering"] = None
        if recovering is not None:
            doc["recovering"] = {
                "log_size": recovering.log_size,
                "backup_created_at": recovering.backup_created_at,
                "restored_at": recovering.restored_at,
            }
        out.json(doc)
        return 0
    out.print(f"origin:           {status.origin}{'' if status.is_own else ' (replicated)'}")
    if frozen:
        out.print("FROZEN:           fork evidence held; nothing more is accepted (evidence list)")
    if recovering is not None:
        out.print(
            f"RECOVERING:       restored from a backup made {recovering.backup_created_at} "
            f"(own log size {recovering.log_size:,}); signs nothing until `hashmesh recover` "
            "or `hashmesh serve` has asked its peers and witnesses (docs/operations.md)"
        )
    out.print(f"size:             {status.size:,} entries")
    out.print(f"root:             {encode_b64(status.root_hash)}")
    out.print(f"last checkpoint:  {status.checkpoint_recorded_at}")
    listed = sum(status.by_signal_type.values())
    out.print(f"listed hashes:    {listed:,}")
    # str(): an entry damaged on disk has no readable type or label.
    for name, count in status.by_signal_type.items():
        out.print(f"  {name!s:<14}  {count:,}")
    if status.by_label:
        out.print("by label:")
        for name, count in status.by_label.items():
            out.print(f"  {name!s:<30}  {count:,}")
    out.print(f"retracted:        {status.retracted:,}")
    out.print(f"logs held:        {', '.join(origins)}")
    for w in waits:
        out.print(f"waiting:          {wait_line(w)}")
    for line in integrity_lines(node_dir):
        out.print(line)
    if frozen_origins:
        out.print(
            f"FROZEN origins:   {', '.join(frozen_origins)} "
            "(fork evidence held; see `hashmesh evidence list`)"
        )
    return 0


def cmd_checkpoint(args: argparse.Namespace, out: _Out) -> int:
    with _open(args, read_only=True) as ledger:
        record = ledger.latest_checkpoint(args.origin)
        # As peers are served it: with the witness cosignatures held for it.
        note = ledger.served_note(ledger.log_for(args.origin), record)
    out.stdout.write(note)
    return 0


def cmd_vkey(args: argparse.Namespace, out: _Out) -> int:
    with _open(args, read_only=True) as ledger:
        out.print(ledger.own_log.verifier_key)
    return 0


def cmd_log(args: argparse.Namespace, out: _Out) -> int:
    with _open(args, read_only=True) as ledger:
        log = ledger.log_for(args.origin)
        end = args.end if args.end is not None else args.start + args.limit
        retracted = ledger.retracted_targets(log, args.start, end)
        for index, data, _leaf in ledger.entries(log, args.start, end):
            entry = parse_entry(bytes(data))
            if args.json:
                out.print(bytes(data).decode("utf-8"))
                continue
            if isinstance(entry, AddEntry):
                extra = f" q={entry.quality}" if entry.quality is not None else ""
                labels = f" [{', '.join(entry.labels)}]" if entry.labels else ""
                state = f"  (retracted by {retracted[index]})" if index in retracted else ""
                out.print(
                    f"{index:>8}  add      {entry.signal_type} {entry.value}{extra}{labels}{state}"
                )
            elif isinstance(entry, RetractEntry):
                out.print(f"{index:>8}  retract  {entry.index}: {entry.reason}")
            elif isinstance(entry, OpinionEntry):
                note = f": {entry.note}" if entry.note else ""
                out.print(
                    f"{index:>8}  opinion  {entry.verdict} {entry.origin}#{entry.index} "
                    f"(leaf {entry.leaf_hash.hex()[:16]}…){note}"
                )
            elif isinstance(entry, RotateEntry):
                out.print(f"{index:>8}  rotate   new key {entry.key}: {entry.reason}")
    return 0


def cmd_prove(args: argparse.Namespace, out: _Out) -> int:
    with _open(args, read_only=True) as ledger:
        if args.proof == "inclusion":
            proof = ledger.prove_inclusion(args.index, args.size, origin=args.origin)
            assert proof.leaf_hash is not None
            doc: dict[str, Any] = {
                "index": proof.index,
                "size": proof.size,
                "leaf_hash": proof.leaf_hash.hex(),
                "hashes": [h.hex() for h in proof.hashes],
            }
        else:
            proof = ledger.prove_consistency(args.old, args.new, origin=args.origin)
            doc = {
                "old_size": proof.old_size,
                "new_size": proof.size,
                "hashes": [h.hex() for h in proof.hashes],
            }
    if args.json:
        out.print(json.dumps(doc))
    else:
        for key, value in doc.items():
            if key != "hashes":
                out.print(f"{key}: {value}")
        out.print("hashes:")
        for h in doc["hashes"]:
            out.print(f"  {h}")
    return 0


def _export_for_tools(args: argparse.Namespace, out: _Out) -> int:
    """VICS, MISP and STIX exports: listed entries only, to a place the operator names."""
    if not args.out:
        what = "DIR" if args.format == "misp" else "FILE"
        raise NodeError(f"--format {args.format} needs --out {what} (exports hold hash values)")
    if args.format == "vics" and not args.profile:
        raise NodeError(f"--format vics needs --profile ({', '.join(PROFILES)} or FILE)")
    target = Path(args.out)
    with (
        _open(args, read_only=True) as ledger,
        progress_bar(
            out.stderr, ledger.latest_checkpoint(args.origin).size, f"export {args.format}"
        ) as progress,
    ):
        origin = ledger.log_for(args.origin).origin
        entries = listed_adds(ledger, args.origin, progress)
        if args.format == "misp":
            events, attributes, left_out = write_misp_feed(target, origin, entries)
            out.note(
                f"wrote a MISP feed of {attributes:,} attributes in {events:,} events to {target}"
            )
        else:
            with ReplacingFile(target) as f:
                if args.format == "stix":
                    count = write_stix_bundle(f, origin, entries)
                    left_out = Counter()
                else:
                    left_out = write_vics(f, entries, load_profile(args.profile))
                    count = -1
            if count >= 0:
                out.note(f"wrote a STIX 2.1 bundle of {count:,} indicators to {target}")
            else:
                out.note(f"wrote a VICS document to {target}")
    for reason, number in sorted(left_out.items()):
        out.note(f"left out {number:,} entries: {reason}")
    return 0


def cmd_export(args: argparse.Namespace, out: _Out) -> int:
    if args.format in FILE_EXPORTS:
        return _export_for_tools(args, out)
    if args.format == "bundle" and not args.out:
        raise NodeError("--format bundle needs --out FILE")
    with _open(args, read_only=True) as ledger:
        size = ledger.latest_checkpoint(args.origin).size
        with progress_bar(out.stderr, size, f"export {args.format}") as progress:
            text = export_text(ledger, args.format, origin=args.origin, progress=progress)
            if args.out:
                target = Path(args.out)
                partial = target.with_name(target.name + ".partial")
                with partial.open("w", encoding="utf-8", newline="") as f:
                    f.writelines(text)
                partial.replace(target)
                out.note(f"wrote {args.format} export of {size:,} entries to {target}")
            else:
                out.stdout.writelines(text)
    return 0


# -- parser -----------------------------------------------------------------


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _quality(text: str) -> int:
    value = _non_negative(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"expected 0-100, got {value}")
    return value


def _version() -> str:
    try:
        return importlib.metadata.version("hashmesh")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"  # run from a checkout without `pip install`


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hashmesh``."""
    # SUPPRESS: a subcommand's own default must not overwrite `--dir` given
    # before the subcommand (argparse copies sub-parser defaults over it).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="node directory (default: $HASHMESH_DIR or ./.hashmesh)",
    )
    common.add_argument(
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks on errors",
    )

    parser = argparse.ArgumentParser(
        prog="hashmesh",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Separate actions from `common`'s: parents share action objects, so a
    # default set here would leak into every subcommand.
    parser.add_argument(
        "--dir", metavar="DIR", help="node directory (default: $HASHMESH_DIR or ./.hashmesh)"
    )
    parser.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"hashmesh {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str,
        run: Callable[[argparse.Namespace, _Out], int],
        help_text: str,
        description: str | None = None,
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, help=help_text, description=description or help_text, parents=[common]
        )
        p.set_defaults(run=run)
        return p

    p = command(
        "init",
        cmd_init,
        "create a new node (keys, TLS identity, config, empty ledger)",
        "Create a node: an Ed25519 signing key (mode 0600), a TLS key and "
        "self-signed certificate, a commented config.toml and an empty signed "
        "ledger. Refuses to overwrite an existing node.",
    )
    p.add_argument(
        "--origin",
        required=True,
        help="log identity, e.g. hotline.example.org/hashmesh",
    )
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address for `hashmesh serve` (default {DEFAULT_LISTEN})",
    )
    p.add_argument(
        "--advertise-url",
        metavar="URL",
        help="https://HOST:PORT peers reach this node at, written to [api] advertise and "
        "put in its card (needed with --listen 0.0.0.0:PORT or behind NAT)",
    )

    types = ", ".join(SIGNAL_TYPES)
    p = command("add", cmd_add, "append one hash; prints its index")
    p.add_argument(
        "--type",
        required=True,
        choices=sorted(SIGNAL_TYPES),
        metavar="TYPE",
        help=f"signal type: {types}",
    )
    p.add_argument("--value", required=True, help="the hash (hex; base64 for photodna)")
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="NS:VALUE",
        help="label, e.g. iwf:category-a (repeatable)",
    )
    p.add_argument("--note", help="short free-text note stored with the entry")
    p.add_argument("--quality", type=int, help="PDQ quality 0-100 (pdq only, required there)")
    p.add_argument("--json", action="store_true", help="print a JSON result")

    p = command(
        "import",
        cmd_import,
        "append a hash list (lines, CSV or NDJSON) in one transaction",
        "Validate a hash list and append it in one transaction with one new "
        "checkpoint. Upper-case hex, CRLF, a byte order mark and stray spaces "
        "are normalised and reported. Invalid lines are listed with line "
        "number and field, and nothing is imported unless --skip-invalid. "
        "CSV needs a header (any case) with a 'value' (or 'hash') column, or "
        "columns named after signal types (md5, sha1, sha256, pdq, photodna; "
        "several per row give one entry each), and optional 'type', 'labels' "
        "(separated by ';'), 'note', 'quality'. NDJSON lines are objects with "
        "'type', 'value', 'labels', 'note', 'quality'. A pdq list (--type pdq) "
        "has lines HASH, HASH,QUALITY or HASH,QUALITY,ANYTHING (the PDQ "
        "hasher's output). A Project VIC / CAID VICS document (JSON with an "
        "@odata.context) is streamed: one entry per hash of each media item, "
        "labels from its Category through --profile; non-pertinent items are "
        "skipped and counted, invalid ones named by JSON path.",
    )
    p.add_argument("file", help="the hash list, or - for standard input")
    p.add_argument(
        "--format",
        choices=(*FORMATS, "vics"),
        help="default: by extension (.csv, .ndjson/.jsonl, a .json VICS document, else lines)",
    )
    p.add_argument(
        "--profile",
        metavar="PROFILE",
        help=f"vics: what each Category means ({', '.join(PROFILES)} or a profile FILE; "
        "docs/labels.md)",
    )
    p.add_argument(
        "--type",
        choices=sorted(SIGNAL_TYPES),
        metavar="TYPE",
        help="signal type for lines that do not say (needed for sha256/pdq lists)",
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="NS:VALUE",
        help="label added to every entry (repeatable)",
    )
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="import the valid lines and list the skipped ones",
    )
    p.add_argument(
        "--quality",
        type=_quality,
        metavar="N",
        help="PDQ quality (0-100) for pdq values whose line gives none",
    )
    p.add_argument(
        "--label-from",
        action="append",
        default=[],
        metavar="COLUMN=NAMESPACE:",
        help="CSV: turn COLUMN's cells into labels NAMESPACE:VALUE (lower-cased, spaces as "
        "'-'), e.g. --label-from Category=iwf: (repeatable)",
    )
    p.add_argument(
        "--label-map",
        metavar="FILE",
        help="with --label-from: CSV lines FROM,TO renaming cell values (TO may be a whole "
        "NS:VALUE label, or empty for no label); a cell not in FILE is an invalid line",
    )
    p.add_argument("--report", metavar="FILE", help="write the list of invalid/skipped lines here")
    p.add_argument(
        "--all-errors",
        action="store_true",
        help="print every invalid line, not the first 20",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the summary and every invalid line as one JSON document",
    )

    p = command("retract", cmd_retract, "append a retraction of an earlier entry")
    p.add_argument("index", type=_non_negative, help="index of the entry to retract")
    p.add_argument("--reason", required=True, help="why (stored in the ledger, visible to peers)")

    p = command("status", cmd_status, "show origin, size, root and counts")
    p.add_argument("--origin", help="a replicated log instead of the own log")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command("checkpoint", cmd_checkpoint, "print the latest signed checkpoint note")
    p.add_argument("--origin", help="a replicated log instead of the own log")

    command("vkey", cmd_vkey, "print this node's verifier key (C2SP signed-note form)")

    p = command("log", cmd_log, "list entries [start, end)")
    p.add_argument("--start", type=_non_negative, default=0, help="first index (default 0)")
    p.add_argument("--end", type=_non_negative, help="stop before this index")
    p.add_argument(
        "--limit",
        type=_non_negative,
        default=100,
        help="entries to list when --end is not given (default 100)",
    )
    p.add_argument("--origin", help="a replicated log instead of the own log")
    p.add_argument(
        "--json",
        action="store_true",
        help="print each entry's exact bytes (its canonical JSON, as signed), one per line, "
        "without the index",
    )

    p = command("prove", cmd_prove, "print an inclusion or consistency proof")
    proofs = p.add_subparsers(dest="proof", required=True, metavar="KIND")
    q = proofs.add_parser(
        "inclusion", help="entry INDEX is in the tree of --size", parents=[common]
    )
    q.add_argument("index", type=_non_negative, help="the entry's index")
    q.add_argument("--size", type=_non_negative, help="tree size (default: latest checkpoint)")
    q.add_argument("--origin", help="a replicated log instead of the own log")
    q.add_argument("--json", action="store_true", help="print JSON (for python -m protocol)")
    q = proofs.add_parser("consistency", help="tree NEW extends tree OLD", parents=[common])
    q.add_argument("old", type=_non_negative, help="old tree size")
    q.add_argument("new", type=_non_negative, help="new tree size")
    q.add_argument("--origin", help="a replicated log instead of the own log")
    q.add_argument("--json", action="store_true", help="print JSON (for python -m protocol)")

    p = command(
        "export",
        cmd_export,
        "export a log (ndjson, csv, leaves, or an audit bundle)",
        "Export a log up to its latest checkpoint. ndjson/csv: decoded entries "
        "with index and retraction state. leaves: base64 of each exact leaf. "
        "bundle: verifier key, every checkpoint and every leaf, checked by "
        "`python -m protocol verify-bundle FILE`. For other tools, the listed "
        "(not retracted) entries: vics (a Project VIC / CAID document, --profile), "
        "misp (a MISP feed directory: manifest.json, one event per 10,000 entries), "
        "stix (a STIX 2.1 bundle of indicators); docs/integrations.md.",
    )
    p.add_argument("--format", required=True, choices=(*EXPORT_FORMATS, *FILE_EXPORTS))
    p.add_argument(
        "--out",
        metavar="FILE",
        help="write here (default: standard output; vics, stix: a FILE and misp: a DIR, required)",
    )
    p.add_argument(
        "--profile",
        metavar="PROFILE",
        help=f"vics: how labels become categories ({', '.join(PROFILES)} or a profile FILE)",
    )
    p.add_argument("--origin", help="a replicated log instead of the own log")

    register_fsck(command, common)
    register_index(command, common)
    register_federation(command, common)
    register_audit(command, common)
    register_match(command, common)
    register_keys(command, common)
    register_publish(command, common)
    register_witness(command, common)
    register_backup(command, common)
    register_tls(command, common)
    describe_subcommands(parser)
    return parser


SIGPIPE_STATUS = 128 + 13
"""What a shell reports for a command killed by SIGPIPE (``hashmesh log | head``)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hashmesh`` command line; return the exit status.

    1 for an error (2 for ``match``, which exits like grep), 2 for a usage
    error, 130 when interrupted, 141 when the reader of standard output went
    away (``| head``), quietly.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    out = _Out(sys.stdout, sys.stderr)
    error = int(getattr(args, "error_status", 1))  # 2 for match, like grep
    try:
        status: int = args.run(args, out)
        out.stdout.flush()
    except (NodeError, ProtocolError) as e:
        if args.verbose:
            raise
        out.note(f"error: {e}")
        return error
    except BrokenPipeError:
        _silence_stdout()
        return SIGPIPE_STATUS
    except sqlite3.Error as e:
        # A query deep inside a command met a damaged page, a full disk or a
        # lock: one line naming the cause (any open transaction was rolled back).
        if args.verbose:
            raise
        out.note(f"error: database: {describe_sqlite_error(e, _database_path(args))}")
        return error
    except UnicodeDecodeError as e:
        if args.verbose:
            raise
        out.note(
            f"error: database: a stored text is not valid UTF-8 ({e.reason}): the database "
            "is damaged; run `hashmesh fsck`"
        )
        return error
    except OSError as e:
        if args.verbose:
            raise
        where = f": {e.filename}" if e.filename else ""
        out.note(f"error: {e.strerror or e}{where}")
        return error
    except KeyboardInterrupt:
        out.note("interrupted: nothing from the unfinished command was written")
        return 130
    except Exception as e:
        # Last resort: values a damaged database holds can break any reader
        # (a column whose type a flipped byte changed). One line, not a
        # traceback; every write was one transaction, rolled back.
        if args.verbose:
            raise
        out.note(
            f"error: unexpected {type(e).__name__}: {e}; if the database is damaged, "
            "`hashmesh fsck` names what is wrong (--verbose shows the traceback)"
        )
        return error
    return status


def _silence_stdout() -> None:
    # The reader is gone: point stdout at /dev/null so the interpreter's own
    # flush at exit does not raise BrokenPipeError again (Python's
    # documented recipe, docs.python.org signal "Note on SIGPIPE").
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout is not a real file (tests capture it): nothing will flush it
