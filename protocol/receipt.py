"""Match receipts: one entry, its inclusion proof and the signed checkpoint it is proven in.

Layer: protocol (pure). This module performs no I/O.

A node that finds a hash in a log can hand the hit over as a receipt, a
self-contained JSON document that anyone holding the origin's verifier key
can check offline (``python -m protocol verify-receipt``)::

    {"receipt": 1,
     "origin": "<origin of the log holding the entry>",
     "index": <the entry's 0-based index>,
     "size": <tree size of the checkpoint>,
     "entry_b64": "<standard padded base64 of the exact entry bytes>",
     "hashes": ["<64 hex>", ...],
     "checkpoint": "<the signed checkpoint note, with any cosignature lines>"}

``hashes`` is the RFC 6962 inclusion proof (``PATH(index, D[size])``, in the
RFC's order) of the entry's leaf hash, ``SHA-256(0x00 || entry bytes)``, in
the tree whose root the checkpoint signs. So a verified receipt shows that the
origin's log held exactly these entry bytes at this index no later than that
checkpoint: what was listed, by whom, and since which signed tree head. It
says nothing about later entries (a retraction after ``size`` is not in its
scope, and a retraction before it is not shown by it either); an audit bundle
answers those questions.

The same receipt can also be written as a C2SP tlog-proof
(https://c2sp.org/tlog-proof, stored as ``*.tlog-proof``), the text form
other transparency-log tools read::

    c2sp.org/tlog-proof@v1
    extra <standard padded base64 of the exact entry bytes>
    index <the entry's 0-based index, decimal, no leading zeros>
    <base64 of each inclusion proof hash, one per line, RFC 6962 order>

    <the signed checkpoint note, verbatim, with any cosignature lines>

The extra data, which the spec leaves to the application, is the entry's
bytes: without them nobody could recompute the leaf hash. The origin and the
tree size are not repeated; they are read from the checkpoint body. The
extra data is not trusted for being there: it is hashed into the leaf hash
that the proof must lead from to the signed root, and then parsed as an
entry, as ``entry_b64`` is.

Parsing is strict as in :mod:`protocol.wire`: exact keys, canonical base64
and lowercase hex, no duplicate keys; in the tlog-proof form, exactly one
spelling (the header line, the extra line, a canonical index, one hash per
line, one empty line before the checkpoint, nothing after it).
:func:`parse_receipt` tells the two forms apart by their first byte (a JSON
receipt is an object). Verification follows :mod:`protocol.verify`: the
checkpoint signature first, then the proof, then the entry's own encoding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from protocol.checkpoint import Checkpoint, open_checkpoint
from protocol.encoding import (
    MAX_UINT63,
    decode_b64,
    dumps_canonical,
    encode_b64,
    json_hashes,
    json_object,
    json_text,
    json_uint,
    parse_decimal,
)
from protocol.entry import MAX_ENTRY_BYTES, Entry, parse_entry
from protocol.errors import MalformedError, ProofError
from protocol.hashing import HASH_SIZE, hash_leaf
from protocol.keys import NoteVerifier, check_key_name
from protocol.merkle import MAX_PROOF_HASHES, verify_inclusion
from protocol.note import MAX_NOTE_BYTES, parse_note

__all__ = [
    "RECEIPT_VERSION",
    "TLOG_PROOF_HEADER",
    "MatchReceipt",
    "ReceiptForm",
    "VerifiedReceipt",
    "parse_receipt",
    "verify_receipt",
]

RECEIPT_VERSION = 1
"""The value of the ``receipt`` field this implementation writes and reads."""

MAX_RECEIPT_BYTES = 2 * MAX_NOTE_BYTES
"""Largest receipt document parsed: a full note, a full entry and a full proof fit."""

TLOG_PROOF_HEADER = "c2sp.org/tlog-proof@v1"
"""The first line of a C2SP tlog-proof."""

ReceiptForm = Literal["json", "tlog-proof"]
"""The two encodings of a receipt: today's JSON document, or a C2SP tlog-proof."""

_ENTRY_FIELD: dict[ReceiptForm, str] = {"json": "entry_b64", "tlog-proof": "extra"}

_KEYS = frozenset({"receipt", "origin", "index", "size", "entry_b64", "hashes", "checkpoint"})


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchReceipt:
    """Evidence that an entry is in an origin's log at a signed checkpoint (unverified).

    Attributes:
        origin: the log holding the entry (the checkpoint's origin line).
        index: the entry's 0-based index in that log.
        size: the tree size of the checkpoint (``index < size``).
        entry: the exact entry bytes (the RFC 6962 leaf data).
        hashes: the inclusion proof of the entry's leaf hash, RFC 6962 order.
        checkpoint: the signed checkpoint note, as text.
        form: the encoding it was read from (errors name that encoding's
            fields); not part of what the receipt says, so not compared.
    """

    origin: str
    index: int
    size: int
    entry: bytes
    hashes: tuple[bytes, ...]
    checkpoint: str
    form: ReceiptForm = field(default="json", compare=False)

    def __post_init__(self) -> None:
        if self.form not in _ENTRY_FIELD:
            raise MalformedError(f"unknown receipt form {self.form!r}", field="form")
        check_key_name(self.origin, field="origin")
        for name in ("index", "size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise MalformedError("expected an integer", field=name)
            if not 0 <= value <= MAX_UINT63:
                raise MalformedError(f"{value} is out of range 0..2^63-1", field=name)
        if self.index >= self.size:
            raise MalformedError(
                f"index {self.index} is not below the tree size {self.size}", field="index"
            )
        if not isinstance(self.entry, bytes) or not 0 < len(self.entry) <= MAX_ENTRY_BYTES:
            raise MalformedError(
                f"expected 1 to {MAX_ENTRY_BYTES} bytes", field=_ENTRY_FIELD[self.form]
            )
        if len(self.hashes) > MAX_PROOF_HASHES:
            raise MalformedError(
                f"{len(self.hashes)} hashes exceed the maximum {MAX_PROOF_HASHES}", field="hashes"
            )
        for i, h in enumerate(self.hashes):
            if not isinstance(h, bytes) or len(h) != HASH_SIZE:
                raise MalformedError(f"expected {HASH_SIZE} bytes", field=f"hashes[{i}]")
        if not isinstance(self.checkpoint, str) or not self.checkpoint:
            raise MalformedError("expected a signed note", field="checkpoint")

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> MatchReceipt:
        """Parse a receipt document strictly.

        Raises:
            MalformedError: naming the field that is wrong.
        """
        if isinstance(data, bytes | str) and len(data) > MAX_RECEIPT_BYTES:
            raise MalformedError(f"receipt is larger than {MAX_RECEIPT_BYTES} bytes")
        obj = json_object(data, _KEYS)
        version = obj["receipt"]
        if isinstance(version, bool) or version != RECEIPT_VERSION:
            raise MalformedError(
                f"receipt version {version!r} is not supported (expected {RECEIPT_VERSION})",
                field="receipt",
            )
        return cls(
            origin=json_text(obj, "origin"),
            index=json_uint(obj, "index"),
            size=json_uint(obj, "size"),
            entry=decode_b64(json_text(obj, "entry_b64"), field="entry_b64"),
            hashes=json_hashes(obj, "hashes", length=HASH_SIZE, max_count=MAX_PROOF_HASHES),
            checkpoint=json_text(obj, "checkpoint"),
        )

    def to_json_obj(self) -> dict[str, Any]:
        """The receipt as a JSON-ready dict."""
        return {
            "receipt": RECEIPT_VERSION,
            "origin": self.origin,
            "index": self.index,
            "size": self.size,
            "entry_b64": encode_b64(self.entry),
            "hashes": [h.hex() for h in self.hashes],
            "checkpoint": self.checkpoint,
        }

    def to_json(self) -> bytes:
        """Canonical JSON bytes of the receipt."""
        return dumps_canonical(self.to_json_obj())

    def to_tlog_proof(self) -> bytes:
        """The receipt as a C2SP tlog-proof, the entry's bytes as its extra data.

        Raises:
            MalformedError: if the checkpoint body does not name this
                receipt's origin and size (the tlog-proof form reads them
                from there, so it could not say the same thing).
        """
        body = Checkpoint.from_text(parse_note(self.checkpoint).text)
        if (body.origin, body.size) != (self.origin, self.size):
            raise MalformedError(
                f"the checkpoint is for {body.origin!r} at size {body.size}, the receipt "
                f"for {self.origin!r} at size {self.size}",
                field="checkpoint",
            )
        lines = [
            TLOG_PROOF_HEADER,
            f"extra {encode_b64(self.entry)}",
            f"index {self.index}",
            *(encode_b64(h) for h in self.hashes),
            "",
        ]
        return ("\n".join(lines) + "\n" + self.checkpoint).encode("utf-8")

    @classmethod
    def from_tlog_proof(cls, data: bytes | str) -> MatchReceipt:
        """Parse a C2SP tlog-proof receipt strictly (one spelling per receipt).

        Origin and size are read from the checkpoint body, unverified, as the
        JSON form's are: :func:`verify_receipt` checks them under the key.

        Raises:
            MalformedError: naming the line or field that is wrong.
        """
        if len(data) > MAX_RECEIPT_BYTES:
            raise MalformedError(f"receipt is larger than {MAX_RECEIPT_BYTES} bytes")
        if isinstance(data, bytes):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise MalformedError(
                    f"tlog-proof is not valid UTF-8 at byte {e.start}", field="tlog-proof"
                ) from e
        else:
            text = data
        if not text.startswith(TLOG_PROOF_HEADER + "\n"):
            raise MalformedError(f"the first line must be {TLOG_PROOF_HEADER}", field="line 1")
        # A checkpoint note holds exactly one empty line (before its
        # signatures), so the one empty line before the checkpoint is the
        # last but one; an empty line anywhere else is an error.
        if text.endswith("\n\n"):
            raise MalformedError("empty line after the checkpoint", field="checkpoint")
        last = text.rfind("\n\n")
        cut = text.rfind("\n\n", 0, last) if last >= 0 else -1
        if cut < 0:
            raise MalformedError(
                "no empty line between the inclusion proof and the checkpoint",
                field="tlog-proof",
            )
        head, note = text[:cut], text[cut + 2 :]
        lines = head.split("\n")
        if "" in lines:
            raise MalformedError(
                "unexpected empty line: exactly one separates the proof from the checkpoint",
                field=f"line {lines.index('') + 1}",
            )
        if len(lines) < 2 or not lines[1].startswith("extra "):
            raise MalformedError(
                "expected 'extra <base64 of the entry bytes>': a receipt carries its entry",
                field="line 2",
            )
        entry = decode_b64(lines[1][len("extra ") :], field="extra")
        if len(lines) < 3 or not lines[2].startswith("index "):
            raise MalformedError("expected 'index <decimal>'", field="line 3")
        index = parse_decimal(lines[2][len("index ") :], field="index")
        proof = lines[3:]
        if len(proof) > MAX_PROOF_HASHES:
            raise MalformedError(
                f"{len(proof)} hashes exceed the maximum {MAX_PROOF_HASHES}", field="line 4"
            )
        hashes = tuple(
            decode_b64(h, field=f"line {4 + i}", length=HASH_SIZE) for i, h in enumerate(proof)
        )
        body = Checkpoint.from_text(parse_note(note).text)
        return cls(
            origin=body.origin,
            index=index,
            size=body.size,
            entry=entry,
            hashes=hashes,
            checkpoint=note,
            form="tlog-proof",
        )


def parse_receipt(data: bytes) -> MatchReceipt:
    """Parse a receipt in either form: JSON (an object) or a C2SP tlog-proof.

    Anything that does not start like a JSON object is read as a tlog-proof,
    so a damaged header is reported as one.

    Raises:
        MalformedError: naming the line or field that is wrong.
    """
    if data.lstrip(b" \t\r\n")[:1] == b"{":
        return MatchReceipt.from_json(data)
    return MatchReceipt.from_tlog_proof(data)


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedReceipt:
    """What a verified receipt proves.

    Attributes:
        origin: the log that signed the checkpoint.
        index: the entry's index in that log.
        size: the checkpoint's tree size: the entry was listed no later than it.
        root_hash: the signed root hash.
        leaf_hash: the entry's RFC 6962 leaf hash.
        entry: the parsed entry.
        cosignatures: witness name -> cosigned time (None for plain Ed25519
            witness signatures), for the witness keys given that cosigned.
    """

    origin: str
    index: int
    size: int
    root_hash: bytes
    leaf_hash: bytes
    entry: Entry
    cosignatures: Mapping[str, int | None]


def verify_receipt(
    receipt: MatchReceipt,
    verifier: NoteVerifier,
    *,
    witnesses: Sequence[NoteVerifier] = (),
    witness_threshold: int = 0,
) -> VerifiedReceipt:
    """Check a receipt: the checkpoint signature, the inclusion proof, the entry.

    Args:
        receipt: the parsed receipt.
        verifier: the origin's verifier key (the one that signed checkpoints
            of this size, if the origin has rotated its key).
        witnesses: trusted witness keys; their cosignatures must verify if
            present.
        witness_threshold: how many of ``witnesses`` must have cosigned.

    Returns:
        What the receipt proves.

    Raises:
        MalformedError: if the note or the entry bytes are malformed, or the
            witness policy is impossible.
        VerificationError: if the signature, the origin, the witness quorum,
            the tree size or the inclusion proof fail.
    """
    opened = open_checkpoint(
        receipt.checkpoint,
        verifier,
        origin=receipt.origin,
        witnesses=witnesses,
        witness_threshold=witness_threshold,
    )
    checkpoint = opened.checkpoint
    if checkpoint.size != receipt.size:
        raise ProofError(
            f"receipt is for tree size {receipt.size}, its checkpoint has size {checkpoint.size}"
        )
    leaf_hash = hash_leaf(receipt.entry)
    verify_inclusion(receipt.index, receipt.size, leaf_hash, receipt.hashes, checkpoint.root_hash)
    try:
        entry = parse_entry(receipt.entry)
    except MalformedError as e:
        where = _ENTRY_FIELD[receipt.form] + (f".{e.field}" if e.field else "")
        raise MalformedError(e.reason, field=where) from e
    return VerifiedReceipt(
        origin=checkpoint.origin,
        index=receipt.index,
        size=checkpoint.size,
        root_hash=checkpoint.root_hash,
        leaf_hash=leaf_hash,
        entry=entry,
        cosignatures=opened.cosignatures,
    )
