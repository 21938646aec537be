"""Project VIC / CAID hash sets: the VICS JSON (OData) document, read and written.

Layer: node.ledger. Reads a file and yields :class:`~node.ledger.hashlist.ParsedLine`
values for :meth:`~node.ledger.service.Ledger.import_lines`; writes the
document for an export.

The VICS data model is what Griffeye, Magnet, XAMN and the UK's CAID exchange:
an OData document whose ``@odata.context`` (VICS 2.0) or ``odata.metadata``
(VICS 1.x) names the model version, a regional profile and whether ``value``
holds cases (each with a ``Media`` array) or media items directly. A media
item carries hashes (``MD5``, ``SHA1``, ``SHA256``, ``PhotoDNA``) and a
numeric ``Category`` whose meaning depends on the country's scheme; a
:class:`VicsProfile` maps each category to labels, or to nothing
(non-pertinent: skipped and counted).

Case exports run to several gigabytes, so the document is streamed with
ijson's C backend, one media item at a time; nothing but the current item is
held. Problems are reported by JSON path (``value[0].Media[17].MD5``).
"""

from __future__ import annotations

import json
import operator
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

from node.errors import LineError, NodeError
from node.ledger.hashlist import ParsedLine, ParsedValues, normalise_labels
from protocol.entry import AddEntry, AddFamily
from protocol.errors import MalformedError
from protocol.signal import LOWER_CASED_HEX, SIGNAL_TYPES, each_canonical, normalise_signal_value

__all__ = [
    "PROFILES",
    "VICS_HASH_FIELDS",
    "VicsProfile",
    "VicsReader",
    "load_profile",
    "looks_like_vics",
    "write_vics",
]

VICS_HASH_FIELDS: tuple[tuple[str, str], ...] = (
    ("MD5", "md5"),
    ("SHA1", "sha1"),
    ("SHA256", "sha256"),
    ("PhotoDNA", "photodna"),
)
"""Media item fields that carry a hash, and the signal type of each."""

# VICS 2.0: http://github.com/VICSDATAMODEL/ProjectVic/DataModels/2.0.xml/US/$metadata#Cases
# VICS 1.x: http://github.com/ICMEC/ProjectVic/DataModels/1.3.xml#Media
_CONTEXT = re.compile(
    r"https?://github\.com/(?:VICSDATAMODEL|ICMEC)/ProjectVic/DataModels/"
    r"(?P<version>\d+\.\d+)\.xml(?:/(?P<region>[A-Za-z0-9_-]+))?(?:/\$metadata)?"
    r"#(?P<shape>Cases|Media)"
)
_CONTEXT_KEYS = ("@odata.context", "odata.metadata")
_WRITE_CONTEXT = (
    "http://github.com/VICSDATAMODEL/ProjectVic/DataModels/2.0.xml/{region}/$metadata#Cases"
)


@dataclass(frozen=True, slots=True)
class VicsProfile:
    """What each VICS ``Category`` means in one country's scheme.

    Attributes:
        name: ``projectvic-us``, ``caid-uk`` or the profile file's name.
        region: the region segment written into an exported ``@odata.context``.
        categories: category number to the labels it gives; None means
            non-pertinent (the media item is skipped and counted).
        meanings: category number to its meaning, for messages and docs.
    """

    name: str
    region: str
    categories: Mapping[int, tuple[str, ...] | None]
    meanings: Mapping[int, str] = field(default_factory=dict)

    def category_of(self, labels: Iterable[str]) -> int | None:
        """The category an entry with ``labels`` is exported as, or None if none fits.

        The category whose labels are all present; the first such by number.
        """
        held = set(labels)
        for number, wanted in sorted(self.categories.items()):
            if wanted and held.issuperset(wanted):
                return number
        return None


def _profile(
    name: str, region: str, rows: Iterable[tuple[int, str, tuple[str, ...] | None]]
) -> VicsProfile:
    rows = list(rows)
    return VicsProfile(
        name=name,
        region=region,
        categories=MappingProxyType({n: labels for n, _m, labels in rows}),
        meanings=MappingProxyType({n: meaning for n, meaning, _l in rows}),
    )


PROFILES: Mapping[str, VicsProfile] = MappingProxyType(
    {
        # Sources and what could not be verified: docs/labels.md "VICS profiles".
        "projectvic-us": _profile(
            "projectvic-us",
            "US",
            [
                (0, "Non-Pertinent", None),
                (1, "Child Abuse Material (CAM)", ("projectvic:category-1",)),
                (2, "Child Exploitive (non-CAM) / Age Difficult", ("projectvic:category-2",)),
                (3, "CGI/Animation - Child Exploitive", ("projectvic:category-3",)),
                (4, "Comparison Images", None),
            ],
        ),
        "caid-uk": _profile(
            "caid-uk",
            "UK",
            [
                (0, "Non-Pertinent", None),
                (1, "Category A", ("caid:category-a",)),
                (2, "Category B", ("caid:category-b",)),
                (3, "Category C", ("caid:category-c",)),
            ],
        ),
    }
)
"""The built-in profiles by name (``--profile``)."""


def load_profile(spec: str) -> VicsProfile:
    """A built-in profile by name, or a profile file (JSON).

    A profile file is ``{"region": "XX", "categories": {"0": null, "1":
    ["ns:value", ...], ...}, "meanings": {"1": "...", ...}}``; ``meanings``
    is optional, ``region`` defaults to ``Default``.

    Raises:
        NodeError: naming the file and what is wrong with it.
    """
    if spec in PROFILES:
        return PROFILES[spec]
    path = Path(spec)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = ", ".join(PROFILES)
        raise NodeError(f"--profile {spec}: no such profile ({known}) or file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise NodeError(f"cannot read profile {spec}: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("categories"), dict):
        raise NodeError(f"profile {spec}: expected an object with a 'categories' object")
    categories: dict[int, tuple[str, ...] | None] = {}
    for key, labels in doc["categories"].items():
        if not key.isdigit():
            raise NodeError(f"profile {spec}: category {key!r} is not a number")
        if labels is not None and (
            not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)
        ):
            raise NodeError(f"profile {spec}: category {key}: expected null or a list of labels")
        categories[int(key)] = None if labels is None else tuple(labels)
    meanings = doc.get("meanings", {})
    region = doc.get("region", "Default")
    if not isinstance(meanings, dict) or not isinstance(region, str):
        raise NodeError(f"profile {spec}: 'meanings' must be an object, 'region' a string")
    return VicsProfile(
        name=path.name,
        region=region,
        categories=MappingProxyType(categories),
        meanings=MappingProxyType({int(k): str(v) for k, v in meanings.items() if k.isdigit()}),
    )


def looks_like_vics(head: bytes) -> bool:
    """Whether the first bytes of a file are those of a VICS document."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    return text.startswith(b"{") and any(key.encode() in head for key in _CONTEXT_KEYS)


def _ijson() -> Any:
    try:
        import ijson  # the optional extra `vics`, needed only here
    except ImportError:
        raise NodeError("reading VICS needs ijson: pip install 'hashmesh[vics]'") from None
    return ijson


@dataclass
class VicsReader:
    """Turns a VICS document into :class:`ParsedLine` values, one or more per media item.

    Attributes:
        profile: what each category means.
        extra_labels: labels added to every entry (``--label``).
        notes: what normalisation did, counted by kind.
        skipped: media items passed over, counted by reason (non-pertinent,
            uncategorised).
        context: the document's ``@odata.context``, once read.
        media_read: media items read.
    """

    profile: VicsProfile
    extra_labels: tuple[str, ...] = ()
    notes: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    context: str | None = None
    media_read: int = 0
    _makers: dict[tuple[str, tuple[str, ...]], Callable[[str], AddEntry]] = field(
        default_factory=dict, repr=False
    )
    _plans: dict[int, tuple[tuple[str, str, AddFamily | None, Callable[[str], AddEntry]], ...]] = (
        field(default_factory=dict, repr=False)
    )
    _stream: IO[bytes] | None = field(default=None, repr=False)

    def bytes_read(self) -> int:
        """How far into the document :meth:`read` is, in bytes (for a progress bar).

        Read from the open file's position, so it costs one system call and
        nothing per media item; it runs ahead of the items handed on by the
        parser's buffer. 0 when no document is being read.
        """
        stream = self._stream
        if stream is None or stream.closed:
            return 0
        return stream.tell()

    def read(self, path: Path) -> Iterator[ParsedLine | ParsedValues]:
        """Yield the entries (and the rejected media items) of the document at ``path``.

        Hex hashes are gathered into :class:`ParsedValues` of a few thousand
        (checked together, no entry object each); a batch with a value to
        normalise or refuse is read value by value instead. Problems of
        single media items are yielded as errors naming the item's JSON path
        and field (after the items that read well, once the path of each is
        known).

        Raises:
            NodeError: the file cannot be read, is not JSON or is cut short,
                or its ``@odata.context`` is not a VICS one: nothing of it
                can be trusted, so nothing is imported.
        """
        ijson = _ijson()
        try:
            with path.open("rb") as stream:
                shape = self._read_context(ijson, stream, path)
                stream.seek(0)
                self._stream = stream
                prefix = "value.item.Media.item" if shape == "Cases" else "value.item"
                pending: list[tuple[int, str, str]] = []
                batch = _Batch()
                ordinal = -1
                gathered = batch.raws
                for ordinal, media in enumerate(ijson.items(stream, prefix, use_float=True)):
                    out = self._media(ordinal, media, pending, batch)
                    if out:
                        yield from out
                    if len(gathered) >= _BATCH:
                        yield from self._flush(batch, pending)
                        gathered = batch.raws
                yield from self._flush(batch, pending)
                self.media_read = ordinal + 1
                self._stream = None
        except ijson.JSONError as e:
            # yajl's message carries a drawing of the spot on further lines.
            first = (str(e).strip().splitlines() or ["cut short"])[0].strip()
            raise NodeError(
                f"{path}: not a complete JSON document ({first}); nothing was imported"
            ) from e
        except OSError as e:
            raise NodeError(f"cannot read {path}: {e.strerror or e}") from e
        if pending:
            # Hashes of a batch are refused when it is handed on: back to
            # document order (media item, then field).
            pending.sort(key=lambda p: (p[0], _FIELD_RANK.get(p[1], -1)))
            where = self._locate(ijson, path, shape, [p[0] for p in pending])
            for ordinal, name, reason in pending:
                yield ParsedLine(
                    ordinal + 1,
                    error=LineError(ordinal + 1, name, reason, record=where[ordinal]),
                )

    def _read_context(self, ijson: Any, stream: IO[bytes], path: Path) -> str:
        for prefix, event, value in ijson.parse(stream):
            if prefix in _CONTEXT_KEYS and event == "string":
                self.context = value
                break
            if prefix == "" and event == "end_map":
                break
        if self.context is None:
            raise NodeError(f"{path}: no @odata.context: not a VICS document (or give --format)")
        found = _CONTEXT.fullmatch(self.context)
        if found is None:
            raise NodeError(
                f"{path}: unknown @odata.context {self.context[:200]!r}; expected a VICS "
                "data model (http://github.com/VICSDATAMODEL/ProjectVic/DataModels/...)"
                "; nothing was imported"
            )
        return found.group("shape")

    def _media(
        self,
        ordinal: int,
        media: object,
        pending: list[tuple[int, str, str]],
        batch: _Batch,
    ) -> list[ParsedLine | ParsedValues]:
        """Gather a media item's hex hashes into ``batch``; any other hash as a ParsedLine.

        What is returned comes after the batch in the log: the batch is
        flushed first.
        """
        if type(media) is not dict:
            pending.append((ordinal, "", "expected a JSON object"))
            return []
        category = media.get("Category")
        # Per media item only dictionary look-ups: what a category means, and
        # the family or entry maker of each hash field, are worked out once (_plan).
        plan = self._plans.get(category) if type(category) is int else None
        if plan is None:
            plan = self._plan(ordinal, category, pending)
            if not plan:
                return []
        out: list[ParsedLine | ParsedValues] = []
        found = False
        for key, signal_type, family, make in plan:
            raw = media.get(key)
            if raw is None or raw == "":
                continue
            found = True
            if type(raw) is not str:
                pending.append((ordinal, key, "expected a string"))
                continue
            if family is not None and raw.isascii():
                # Tools write upper-case hex: lower-casing is all most values need.
                batch.ordinals.append(ordinal)
                batch.families.append(family)
                batch.raws.append(raw)
                continue
            out += self._flush(batch, pending)  # what was gathered comes first
            parsed = self._parsed(ordinal, key, signal_type, make, raw, pending)
            if parsed is not None:
                out.append(parsed)
        if not found:
            names = ", ".join(k for k, _t in VICS_HASH_FIELDS)
            pending.append((ordinal, "MD5", f"the media item carries no hash ({names})"))
        return out

    def _parsed(
        self,
        ordinal: int,
        key: str,
        signal_type: str,
        make: Callable[[str], AddEntry],
        raw: str,
        pending: list[tuple[int, str, str]],
    ) -> ParsedLine | None:
        """One hash as an entry; None (the problem in ``pending``) if it is not a hash."""
        # Lower-casing first spares a failed attempt (an exception) per
        # upper-case hex hash.
        lowered = raw.lower() if signal_type in _HEX_TYPES and raw.isascii() else raw
        entry: AddEntry | None
        try:
            entry = make(lowered)
        except MalformedError:
            entry = None
        else:
            if lowered != raw:
                self.notes[LOWER_CASED_HEX] += 1
        if entry is None:
            try:
                value, changes = normalise_signal_value(signal_type, raw)
                entry = make(value)
            except MalformedError as e:
                pending.append((ordinal, key, e.reason))
                return None
            for change in changes:
                self.notes[change] += 1
        return ParsedLine(ordinal + 1, entry)

    def _flush(
        self, batch: _Batch, pending: list[tuple[int, str, str]]
    ) -> list[ParsedLine | ParsedValues]:
        """The gathered hex hashes: one ParsedValues, or value by value if one needs that."""
        if not batch.raws:
            return []
        ordinals, families, raws = batch.ordinals, batch.families, batch.raws
        lowered = "\n".join(raws).lower().split("\n")
        out: list[ParsedLine | ParsedValues] = []
        if each_canonical([f.signal_type for f in families], lowered):
            self.notes[LOWER_CASED_HEX] += sum(map(operator.ne, raws, lowered))
            rows = 1 + sum(map(operator.ne, ordinals[1:], ordinals))
            lines = [ordinal + 1 for ordinal in ordinals]
            out.append(ParsedValues(lines, families, lowered, rows))
        else:
            for ordinal, family, raw in zip(ordinals, families, raws, strict=True):
                signal_type = family.signal_type
                key = _FIELD_OF_TYPE[signal_type]
                parsed = self._parsed(ordinal, key, signal_type, family.entry, raw, pending)
                if parsed is not None:
                    out.append(parsed)
        batch.clear()
        return out

    def _plan(
        self, ordinal: int, category: object, pending: list[tuple[int, str, str]]
    ) -> tuple[tuple[str, str, AddFamily | None, Callable[[str], AddEntry]], ...]:
        """The hash fields to read for ``category`` with their families and makers; () to skip.

        A field of a hex type has a family (its values are gathered), every
        field an entry maker.

        Counts a skipped item, or records why the category is refused.
        """
        if category is None or category == "":
            self.skipped["uncategorised (no Category)"] += 1
            return ()
        number = _category_number(category)
        if number is not None and number in self._plans:
            return self._plans[number]
        if number is None or number not in self.profile.categories:
            known = ", ".join(str(n) for n in sorted(self.profile.categories))
            pending.append(
                (
                    ordinal,
                    "Category",
                    f"category {category!r} is not in profile {self.profile.name} "
                    f"(known: {known}); map it with --profile FILE",
                )
            )
            return ()
        labels = self.profile.categories[number]
        if labels is None:
            meaning = self.profile.meanings.get(number, "non-pertinent")
            self.skipped[f"category {number} ({meaning})"] += 1
            return ()
        plan = tuple(
            (key, signal_type, self._family(signal_type, labels), self._maker(signal_type, labels))
            for key, signal_type in VICS_HASH_FIELDS
        )
        self._plans[number] = plan
        return plan

    def _maker(self, signal_type: str, labels: tuple[str, ...]) -> Callable[[str], AddEntry]:
        key = (signal_type, labels)
        make = self._makers.get(key)
        if make is None:
            notes: Counter[str] = Counter()
            make = AddEntry.maker(
                signal_type=signal_type,
                labels=normalise_labels([*labels, *self.extra_labels], notes),
            )
            self._makers[key] = make
        return make

    def _family(self, signal_type: str, labels: tuple[str, ...]) -> AddFamily | None:
        """The family of adds of a hex ``signal_type`` with these labels (None for others)."""
        if signal_type not in _HEX_TYPES or SIGNAL_TYPES[signal_type].requires_quality:
            return None
        return AddFamily.create(
            signal_type=signal_type,
            labels=normalise_labels([*labels, *self.extra_labels], Counter()),
        )

    def _locate(self, ijson: Any, path: Path, shape: str, ordinals: list[int]) -> dict[int, str]:
        """The JSON path of each media item named by its ordinal (a second, rare pass)."""
        if shape == "Media":
            return {o: f"value[{o}]" for o in ordinals}
        wanted = set(ordinals)
        where: dict[int, str] = {}
        case = media = ordinal = -1
        with path.open("rb") as stream:
            for prefix, event, _value in ijson.parse(stream):
                if event != "start_map":
                    continue
                if prefix == "value.item":
                    case += 1
                    media = -1
                elif prefix == "value.item.Media.item":
                    media += 1
                    ordinal += 1
                    if ordinal in wanted:
                        where[ordinal] = f"value[{case}].Media[{media}]"
        return where


_BATCH = 8192  # hex hashes gathered before they are checked and handed on
_FIELD_RANK = {key: rank for rank, (key, _type) in enumerate(VICS_HASH_FIELDS)}
_FIELD_OF_TYPE = {signal_type: key for key, signal_type in VICS_HASH_FIELDS}


class _Batch:
    """Hex hashes of consecutive media items, gathered to be checked and handed on together."""

    __slots__ = ("families", "ordinals", "raws")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.ordinals: list[int] = []
        self.families: list[AddFamily] = []
        self.raws: list[str] = []


def _category_number(category: object) -> int | None:
    if isinstance(category, bool):
        return None
    if isinstance(category, int):
        return category
    if isinstance(category, float) and category.is_integer():
        return int(category)
    if isinstance(category, str) and category.strip().isdigit():
        return int(category.strip())
    return None


_VICS_FIELD = {signal_type: key for key, signal_type in VICS_HASH_FIELDS}
_HEX_TYPES = frozenset(name for name, row in SIGNAL_TYPES.items() if row.encoding == "hex")


def write_vics(
    stream: IO[str],
    entries: Iterable[tuple[int, AddEntry]],
    profile: VicsProfile,
) -> Counter[str]:
    """Write a VICS 2.0 document of one case, one media item per entry.

    ``MediaID`` is the entry's index in the log; ``Category`` comes from the
    entry's labels through ``profile`` (:meth:`VicsProfile.category_of`).
    Entries of a type VICS has no field for (pdq) or with no label the
    profile maps are left out and counted in the returned counter by reason.
    """
    left_out: Counter[str] = Counter()
    stream.write('{"@odata.context":')
    stream.write(json.dumps(_WRITE_CONTEXT.format(region=profile.region)))
    stream.write(',"value":[{"CaseID":')
    stream.write(json.dumps(str(uuid.uuid4())))
    stream.write(',"SourceApplicationName":"hashmesh","Media":[')
    first = True
    for index, entry in entries:
        key = _VICS_FIELD.get(entry.signal_type)
        if key is None:
            left_out[f"{entry.signal_type}: VICS has no field for it"] += 1
            continue
        category = profile.category_of(entry.labels)
        if category is None:
            left_out[f"no label that profile {profile.name} maps to a category"] += 1
            continue
        if not first:
            stream.write(",")
        first = False
        stream.write(
            json.dumps(
                {"MediaID": index, "Category": category, key: entry.value},
                separators=(",", ":"),
            )
        )
    stream.write("]}]}\n")
    return left_out
