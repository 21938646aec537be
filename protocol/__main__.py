"""Auditor commands that need nothing but ``protocol``: ``python -m protocol``.

Layer: protocol. The only module of the package that reads files and writes
to the terminal; the checks themselves are the pure functions it calls.

Exit status: 0 when the check holds, 1 when it fails (one line on stderr
saying why), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from protocol.api_documents import RotationList
from protocol.bundle import verify_bundle
from protocol.checkpoint import Checkpoint, open_checkpoint
from protocol.encoding import encode_b64
from protocol.entry import AddEntry, OpinionEntry, RetractEntry, RotateEntry
from protocol.errors import MalformedError, ProtocolError, RotationError
from protocol.evidence import ForkEvidence, verify_fork_evidence
from protocol.keys import NoteVerifier
from protocol.note import parse_note
from protocol.receipt import parse_receipt, verify_receipt
from protocol.rotation import KeyChain, apply_rotation_proof
from protocol.tiles import TileId, TileNodeReader, tiles_for_size, verify_tiles
from protocol.tree import CompactRange, frontier_ids
from protocol.verify import verify_append_only, verify_entry_inclusion
from protocol.wire import ConsistencyProof, InclusionProof

__all__ = ["main"]

_DESCRIPTION = """\
Verify hashmesh checkpoints, proofs and audit bundles offline, with nothing
but a verifier key. Every command exits 0 only when the check holds.
"""

_VKEY_HELP = "the origin's verifier key, as text (NAME+HASH+BASE64) or a file holding it"


class _UsageError(Exception):
    """A file could not be read: a usage problem, exit status 2."""


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise _UsageError(f"cannot read {what} {path}: {e.strerror or e}") from e


def _vkey(value: str) -> NoteVerifier:
    # A key text always contains '+'; a path normally does not, so try the
    # file only when the value cannot be a key.
    if "+" in value and not Path(value).exists():
        return NoteVerifier.from_text(value)
    return NoteVerifier.from_text(_read(value, "verifier key file").decode().strip())


def _cmd_checkpoint(args: argparse.Namespace) -> str:
    witnesses = [_vkey(w) for w in args.witness]
    verified = open_checkpoint(
        _read(args.checkpoint, "checkpoint"),
        _vkey(args.vkey),
        origin=args.origin,
        witnesses=witnesses,
        witness_threshold=args.witness_threshold,
    )
    cp = verified.checkpoint
    line = (
        f"checkpoint verified: origin {cp.origin}, size {cp.size}, root {encode_b64(cp.root_hash)}"
    )
    if verified.cosignatures:
        line += f", cosigned by {', '.join(sorted(verified.cosignatures))}"
    return line


def _cmd_inclusion(args: argparse.Namespace) -> str:
    proof = InclusionProof.from_json(_read(args.proof, "proof"))
    entry = _read(args.entry, "entry") if args.entry else None
    cp = verify_entry_inclusion(
        _read(args.checkpoint, "checkpoint"), _vkey(args.vkey), proof, entry=entry
    )
    return (
        f"inclusion verified: leaf {proof.leaf_hash.hex()} is entry {proof.index} "
        f"of {cp.origin} at size {cp.size}"
    )


def _cmd_consistency(args: argparse.Namespace) -> str:
    proof = ConsistencyProof.from_json(_read(args.proof, "proof"))
    old, new = verify_append_only(
        _read(args.old, "old checkpoint"),
        _read(args.new, "new checkpoint"),
        _vkey(args.vkey),
        proof,
    )
    return (
        f"consistency verified: {new.origin} at size {new.size} extends "
        f"size {old.size} (append-only)"
    )


def _cmd_bundle(args: argparse.Namespace) -> str:
    expected = _vkey(args.vkey).to_text() if args.vkey else None
    try:
        with open(args.bundle, "rb") as f:
            report = verify_bundle(f, verifier_key=expected)
    except OSError as e:
        raise _UsageError(f"cannot read bundle {args.bundle}: {e.strerror or e}") from e
    note = "" if expected else " (key taken from the bundle itself; pass --vkey to pin it)"
    return (
        f"bundle verified: {report.origin}, {report.size} entries ({report.adds} adds, "
        f"{report.retractions} retractions), {report.checkpoints} checkpoints, "
        f"root {encode_b64(report.root_hash)}{note}"
    )


def _cmd_evidence(args: argparse.Namespace) -> str:
    evidence = ForkEvidence.from_json(_read(args.evidence, "evidence"))
    a, b = verify_fork_evidence(evidence, _vkey(args.vkey))
    return (
        f"fork proven: {evidence.origin} signed checkpoints of sizes {a.size} and "
        f"{b.size} that cannot both be true"
    )


def _cmd_receipt(args: argparse.Namespace) -> str:
    receipt = parse_receipt(_read(args.receipt, "receipt"))
    verified = verify_receipt(
        receipt,
        _vkey(args.vkey),
        witnesses=[_vkey(w) for w in args.witness],
        witness_threshold=args.witness_threshold,
    )
    entry = verified.entry
    if isinstance(entry, AddEntry):
        quality = "" if entry.quality is None else f" (quality {entry.quality})"
        what = f"add {entry.signal_type} {entry.value}{quality}"
        what += f", labels [{', '.join(entry.labels)}]" if entry.labels else ", no labels"
        if entry.note is not None:
            what += f", note {entry.note!r}"
    elif isinstance(entry, RetractEntry):
        what = f"retraction of entry {entry.index}"
    elif isinstance(entry, OpinionEntry):
        what = f"opinion {entry.verdict!r} on entry {entry.index} of {entry.origin}"
    elif isinstance(entry, RotateEntry):
        what = f"key rotation to {entry.key}"
    lines = [
        f"receipt verified: entry {verified.index} of {verified.origin} is in its signed log",
        f"  checkpoint: size {verified.size}, root {encode_b64(verified.root_hash)}",
        f"  entry: {what}",
        f"  leaf hash: {verified.leaf_hash.hex()}",
    ]
    if verified.cosignatures:
        lines.append(f"  cosigned by: {', '.join(sorted(verified.cosignatures))}")
    return "\n".join(lines)


def _published_rotations(
    directory: Path, chain: KeyChain, size: int
) -> tuple[KeyChain, list[tuple[int, bytes]]]:
    """``chain`` extended by the rotations in ``DIR/rotations`` that a checkpoint of ``size`` needs.

    Also returns each rotation followed as (rotate entry index, the root
    the old key signed at ``index + 1``), for the prefix check on the tiles.
    """
    path = directory / "rotations"
    if not path.exists():
        return chain, []
    listed = RotationList.from_json(_read(str(path), "rotations"))
    if listed.origin != chain.origin:
        raise MalformedError(
            f"rotations names origin {listed.origin!r}, not {chain.origin!r}",
            field="rotations.origin",
        )
    followed: list[tuple[int, bytes]] = []
    for rotation in listed.rotations:
        r = rotation.index
        if r + 2 > size:
            break  # a later key than the checkpoint's: not needed
        if rotation.checkpoint is None:
            raise RotationError(f"rotations: rotate entry {r} comes without its checkpoint")
        extended = apply_rotation_proof(
            chain, r, rotation.entry, rotation.proof, rotation.checkpoint
        )
        if extended is not chain:
            root = Checkpoint.from_text(parse_note(rotation.checkpoint).text).root_hash
            followed.append((r, root))
        chain = extended
    return chain, followed


def _cmd_tiles(args: argparse.Namespace) -> str:
    directory = Path(args.directory)
    if not directory.is_dir():
        raise _UsageError(f"{directory} is not a directory (a log published as tlog-tiles)")
    note = _read(str(directory / "checkpoint"), "checkpoint")
    chain, followed = _published_rotations(
        directory,
        KeyChain.pinned(_vkey(args.vkey)),
        Checkpoint.from_text(parse_note(note).text).size,
    )
    verified = chain.open(
        note,
        witnesses=[_vkey(w) for w in args.witness],
        witness_threshold=args.witness_threshold,
    )
    cp = verified.checkpoint

    def read_tile(tile: TileId) -> bytes:
        # tile.to_path() is canonical (digits, 'x', '.p', '/'): it cannot leave the directory.
        path = directory / tile.to_path()
        try:
            return path.read_bytes()
        except OSError as e:
            raise MalformedError(
                f"cannot read {path}: {e.strerror or e}", field=tile.to_path()
            ) from e

    verify_tiles(cp.size, cp.root_hash, read_tile)
    # The old key vouched for the new one in its tree of size r + 1: the
    # published tree (now verified) must extend that tree.
    reader = TileNodeReader(cp.size, read_tile)
    for r, signed_root in followed:
        m = r + 1
        prefix = CompactRange.from_frontier(m, reader.get_node_hashes(frontier_ids(m))).root()
        if prefix != signed_root:
            raise RotationError(
                f"the published tree's first {m} leaves do not hash to the root the old key "
                f"signed at size {m} with rotate entry {r}: the log forked before the rotation"
            )
    line = (
        f"tiles verified: origin {cp.origin}, size {cp.size}, root {encode_b64(cp.root_hash)}, "
        f"{len(tiles_for_size(cp.size))} tiles hash to the signed root"
    )
    if followed:
        line += f", {len(followed)} key rotation(s) followed (rotate entries "
        line += ", ".join(str(r) for r, _root in followed) + ")"
    if verified.cosignatures:
        line += f", cosigned by {', '.join(sorted(verified.cosignatures))}"
    return line


def _witness_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--witness",
        action="append",
        default=[],
        metavar="VKEY",
        help="a witness verifier key (repeat for several)",
    )
    p.add_argument(
        "--witness-threshold",
        type=int,
        default=0,
        metavar="K",
        help="require cosignatures from at least K of the --witness keys",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m protocol``."""
    parser = argparse.ArgumentParser(
        prog="python -m protocol",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "verify-checkpoint",
        help="check a signed checkpoint note against the origin's key",
        description="Check a C2SP signed checkpoint against the origin's verifier "
        "key and, optionally, k-of-n witness cosignatures.",
    )
    p.add_argument("checkpoint", help="file with the signed checkpoint note")
    p.add_argument("--vkey", required=True, help=_VKEY_HELP)
    p.add_argument("--origin", help="require this origin line")
    _witness_arguments(p)
    p.set_defaults(run=_cmd_checkpoint)

    p = sub.add_parser(
        "verify-inclusion",
        help="check an inclusion proof against a signed checkpoint",
        description="Check that a leaf is in the log: the checkpoint's signature "
        "first, then the proof against its root. The proof is the JSON printed by "
        "`hashmesh prove inclusion --json`.",
    )
    p.add_argument("proof", help="inclusion proof JSON file")
    p.add_argument("--checkpoint", required=True, help="signed checkpoint note file")
    p.add_argument("--vkey", required=True, help=_VKEY_HELP)
    p.add_argument("--entry", help="file with the exact entry bytes (checked against leaf_hash)")
    p.set_defaults(run=_cmd_inclusion)

    p = sub.add_parser(
        "verify-consistency",
        help="check that a newer checkpoint extends an older one",
        description="Check two signed checkpoints of one origin and the "
        "consistency proof between them (JSON printed by `hashmesh prove "
        "consistency --json`).",
    )
    p.add_argument("proof", help="consistency proof JSON file")
    p.add_argument("--old", required=True, help="older signed checkpoint note file")
    p.add_argument("--new", required=True, help="newer signed checkpoint note file")
    p.add_argument("--vkey", required=True, help=_VKEY_HELP)
    p.set_defaults(run=_cmd_consistency)

    p = sub.add_parser(
        "verify-bundle",
        help="check a whole audit bundle (hashmesh export --format bundle)",
        description="Check every checkpoint signature, every entry and every "
        "root of an audit bundle.",
    )
    p.add_argument("bundle", help="bundle file")
    p.add_argument("--vkey", help="pin the origin's key: " + _VKEY_HELP)
    p.set_defaults(run=_cmd_bundle)

    p = sub.add_parser(
        "verify-evidence",
        help="check fork evidence: two signed checkpoints that cannot both be true",
        description="Check a fork evidence document (JSON printed by `hashmesh "
        "evidence export`): both checkpoint signatures under the origin's key, "
        "then the proof that the two trees conflict. Exits 0 only when the "
        "evidence proves a fork.",
    )
    p.add_argument("evidence", help="fork evidence JSON file")
    p.add_argument("--vkey", required=True, help=_VKEY_HELP)
    p.set_defaults(run=_cmd_evidence)

    p = sub.add_parser(
        "verify-receipt",
        help="check a match receipt: an entry, its inclusion proof and a signed checkpoint",
        description="Check a match receipt (written by `hashmesh match "
        "--save-receipts DIR`, or the `receipt` object of `hashmesh match "
        "--receipts --json` saved to a file), in either form: a JSON receipt "
        "or a C2SP tlog-proof (*.tlog-proof, the entry's bytes as its extra "
        "data), told apart by content. Checks the checkpoint's signature under "
        "the origin's key, then the inclusion proof of the entry's exact bytes "
        "in the signed tree, then that the bytes are a canonical entry. Prints "
        "what the receipt proves: which origin listed which entry, at which "
        "index, no later than which checkpoint.",
    )
    p.add_argument("receipt", help="receipt file: JSON or C2SP tlog-proof")
    p.add_argument("--vkey", required=True, help=_VKEY_HELP)
    _witness_arguments(p)
    p.set_defaults(run=_cmd_receipt)

    p = sub.add_parser(
        "verify-tiles",
        help="check a log published as C2SP tlog-tiles (a directory) against its checkpoint",
        description="Check a published log's directory (`checkpoint` and hash tiles "
        "`tile/<L>/<N>[.p/<W>]`, as `hashmesh publish --out DIR` writes it): the "
        "checkpoint's signature under the origin's key, then every tile against the "
        "signed root. A tile that does not hash to the checkpoint's root is named. "
        "If the origin rotated its signing key, give its first key: the rotations in "
        "`rotations` (each rotate entry, the old key's checkpoint that commits it, the "
        "inclusion proof) lead to the key of the checkpoint, and the published tree must "
        "extend each of those checkpoints. "
        "Consistency with an earlier audit is `hashmesh audit DIR`'s job.",
    )
    p.add_argument("directory", help="the published log's directory (holding `checkpoint`)")
    p.add_argument("--vkey", required=True, help=_VKEY_HELP)
    _witness_arguments(p)
    p.set_defaults(run=_cmd_tiles)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run an auditor command; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        message = args.run(args)
    except _UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ProtocolError as e:
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"OK: {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
