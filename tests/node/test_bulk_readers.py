"""Bulk reading: blocks of a hash list read into ParsedValues, written without entry objects.

A ``--type`` list of a hex type is read a block at a time: a block whose
lines are all canonical values (after lower-casing and CRLF conversion) is
one :class:`ParsedValues`, any other block goes line by line. Both must give
exactly what the line-by-line reader gives (entries, errors, line numbers,
notes), and writing values must store what writing entries stores, apart
from the fresh salts.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from node.errors import ImportRejectedError
from node.ledger import Ledger
from node.ledger import hashlist as hashlist_module
from node.ledger.hashlist import HashListReader, LabelColumn, ParsedLine, ParsedValues
from protocol.entry import SALT_BYTES, AddEntry, AddFamily, parse_entry, salt_values
from protocol.errors import MalformedError
from protocol.hashing import hash_leaf
from protocol.signal import each_canonical, validate_signal_value
from tests.node.conftest import snapshot


def md5s(start: int, count: int) -> list[str]:
    return [f"{i:032x}" for i in range(start, start + count)]


def expand(items: list[ParsedLine | ParsedValues]) -> list[ParsedLine]:
    """Every item as the line-by-line reader yields it."""
    out: list[ParsedLine] = []
    for item in items:
        if isinstance(item, ParsedValues):
            out += [
                ParsedLine(line, f.entry(v))
                for line, f, v in zip(item.lines, item.families, item.values, strict=True)
            ]
        else:
            out.append(item)
    return out


CLEAN = "\n".join(md5s(1, 400)) + "\n"
BAD_LINES = [*md5s(1, 150), "not a hash", "", "# comment", "  " + md5s(9, 1)[0] + " "]
BAD_LINES += ["0x" + md5s(10, 1)[0], md5s(11, 1)[0][:-1], *md5s(200, 150)]
INPUTS = {
    "canonical": CLEAN,
    "upper-case": CLEAN.upper(),
    "mixed case": "".join(
        v.upper() + "\n" if i % 3 else v + "\n" for i, v in enumerate(md5s(1, 400))
    ),
    "crlf": CLEAN.replace("\n", "\r\n"),
    "bom, crlf on every other line, upper-case": "\ufeff"
    + "".join(v.upper() + ("\r\n" if i % 2 else "\n") for i, v in enumerate(md5s(1, 400))),
    "no final line end": CLEAN.rstrip("\n"),
    "digits only": "\n".join(f"{i:032d}" for i in range(300)) + "\n",
    "bad lines among good ones": "\n".join(BAD_LINES) + "\n",
    "lone carriage returns": "\r".join(md5s(1, 100)) + "\n" + "\n".join(md5s(500, 100)),
    "a carriage return at the very end": CLEAN + md5s(900, 1)[0] + "\r",
    "blank lines only": "\n\n\n",
    "empty": "",
}


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_blocks_read_as_line_by_line(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Blocks of about 15 lines, so every input crosses many block edges.
    monkeypatch.setattr(hashlist_module, "_BLOCK_CHARS", 500)
    text = INPUTS[name]
    blocks = HashListReader(fmt="lines", default_type="md5", extra_labels=["src:t"])
    lines = HashListReader(fmt="lines", default_type="md5", extra_labels=["src:t"])
    got = list(blocks.read(io.StringIO(text, newline="")))
    # A list of lines is not a text stream: it is read line by line.
    want = list(lines.read(io.StringIO(text, newline="").readlines()))
    assert all(isinstance(p, ParsedLine) for p in want)
    assert expand(got) == want
    assert blocks.notes == lines.notes
    assert blocks.skipped_blank == lines.skipped_blank
    for item in got:
        if isinstance(item, ParsedValues):
            assert item.rows == len(item.values) == len(item.lines) == len(item.families)
            assert list(item.lines) == list(range(item.lines[0], item.lines[0] + item.rows))
    if name in ("canonical", "upper-case", "crlf", "no final line end", "digits only"):
        # Clean lists are read in blocks, not line by line.
        assert all(isinstance(p, ParsedValues) for p in got)
        assert len(got) > 10


@pytest.mark.parametrize(
    "value",
    [
        "ab" * 16,
        "0" * 32,
        "AB" * 16,
        "ab" * 15 + "a ",
        "ab" * 14 + "  ab",  # fromhex would skip the spaces
        "ab" * 15 + "ag",
        "ab" * 15 + "\u0661\u0662",  # Arabic-Indic digits: not ASCII
        "ab" * 17,
        "ab" * 15,
        "",
        "0x" + "ab" * 15,
    ],
)
def test_family_canonical_agrees_with_the_strict_check(value: str) -> None:
    family = AddFamily.create(signal_type="md5", labels=["src:t"])
    try:
        validate_signal_value("md5", value)
        valid = True
    except MalformedError:
        valid = False
    assert family.canonical([value]) is valid
    # In a batch, one value that is not canonical makes the whole batch not so.
    assert family.canonical([*md5s(0, 5), value, *md5s(5, 5)]) is valid
    if valid:
        assert family.entry(value) == AddEntry.create(
            signal_type="md5", value=value, labels=["src:t"]
        )
    else:
        with pytest.raises(MalformedError):
            family.entry(value)


def test_family_refuses_what_an_add_refuses() -> None:
    assert family_error(signal_type="md5", labels=["Not A Label"]) == "labels[0]"
    assert family_error(signal_type="pdq") == "signal.quality"
    assert family_error(signal_type="md5", quality=50) == "signal.quality"
    assert family_error(signal_type="photodna") == "signal.type"  # base64, not hex
    assert AddFamily.create(signal_type="md5").canonical([])
    assert not AddFamily.create(signal_type="md5").canonical([b"ab" * 16])  # type: ignore[list-item]


def family_error(**fields: object) -> str | None:
    try:
        AddFamily.create(**fields)  # type: ignore[arg-type]
    except MalformedError as e:
        return e.field
    return None


def test_salt_values_equal_salted_entries() -> None:
    a = AddFamily.create(signal_type="md5", labels=["src:t", "iwf:a"])
    b = AddFamily.create(signal_type="pdq", labels=[], quality=90)
    families = [a, a, b, a, b]
    values = [*md5s(0, 2), "f" * 64, *md5s(2, 1), "e" * 64]
    random = bytes(range(SALT_BYTES * 5))
    datas = salt_values(families, values, random)
    for i, (f, v) in enumerate(zip(families, values, strict=True)):
        salt = random[SALT_BYTES * i : SALT_BYTES * (i + 1)].hex()
        assert datas[i] == f.entry(v).salted(salt).to_bytes()
        assert parse_entry(datas[i]) == f.entry(v).salted(salt)
    with pytest.raises(ValueError, match="random bytes"):
        salt_values(families, values, random[:-1])
    with pytest.raises(ValueError, match="families"):
        salt_values(families[:-1], values, random)


def stored(ledger: Ledger) -> list[tuple[int, AddEntry, bytes, bytes]]:
    rows = ledger.store.iter_entries(ledger.own_log.log_id)
    out = []
    for index, data, leaf in rows:
        entry = parse_entry(bytes(data))
        assert isinstance(entry, AddEntry)
        out.append((index, entry, bytes(data), bytes(leaf)))
    return out


def test_values_store_the_entries_the_line_path_stores(
    tmp_path: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashlist_module, "_BLOCK_CHARS", 2000)
    text = "".join(v.upper() + "\n" for v in md5s(0, 3000)) + "bad\n" + CLEAN
    reader = HashListReader(fmt="lines", default_type="md5", extra_labels=["src:t"])
    result = ledger.import_lines(reader.read(io.StringIO(text, newline="")), skip_invalid=True)
    assert [(e.line, e.field) for e in result.skipped] == [(3001, "value")]
    # 400 values of CLEAN were listed already (md5s(1, 400) within md5s(0, 3000)).
    assert result.append.count == 3000 and len(result.append.duplicates) == 400
    assert [d.line for d in result.append.duplicates] == list(range(3002, 3402))
    assert [d.existing_index for d in result.append.duplicates] == list(range(1, 401))

    from node.ledger.provision import init_node

    init_node(tmp_path / "other", "other.example/hashmesh")
    with Ledger.open(tmp_path / "other") as other:
        by_line = HashListReader(fmt="lines", default_type="md5", extra_labels=["src:t"])
        other.import_lines(by_line.read(text.splitlines(keepends=True)), skip_invalid=True)
        want = stored(other)
    got = stored(ledger)
    assert [(i, e.salted(None)) for i, e, _d, _h in got] == [
        (i, e.salted(None)) for i, e, _d, _h in want
    ]
    assert reader.notes == by_line.notes
    # Every entry has its own salt of 16 bytes (32 hex digits), and its leaf
    # hash is that of its stored bytes.
    salts = [e.salt for _i, e, _d, _h in got]
    assert all(s is not None and re.fullmatch("[0-9a-f]{32}", s) for s in salts)
    assert len(set(salts)) == len(salts) == 3000
    assert not set(salts) & {e.salt for _i, e, _d, _h in want}
    assert all(h == hash_leaf(d) for _i, _e, d, h in got)
    found = ledger.store.find_active(ledger.own_log.log_id, "md5", md5s(0, 3000))
    assert found == {v: i for i, v in enumerate(md5s(0, 3000))}


def test_a_batch_with_duplicates_reports_each_one_with_its_line(ledger: Ledger) -> None:
    family = AddFamily.create(signal_type="md5")
    first = ParsedValues(range(1, 4), [family] * 3, md5s(0, 3), 3)
    again = md5s(5, 2) + md5s(1, 1) + md5s(5, 1)  # listed earlier, and twice in the batch
    second = ParsedValues(range(4, 8), [family] * 4, again, 4)
    result = ledger.import_lines([first, second])
    assert result.lines_read == 7 and result.append.count == 5
    assert [(d.line, d.existing_index, d.entry.value) for d in result.append.duplicates] == [
        (6, 1, md5s(1, 1)[0]),
        (7, 3, md5s(5, 1)[0]),
    ]


def test_values_and_entries_keep_their_order(ledger: Ledger) -> None:
    family = AddFamily.create(signal_type="md5", labels=["src:a"])
    other = AddFamily.create(signal_type="sha1", labels=["src:b"])
    items: list[ParsedLine | ParsedValues] = [
        ParsedValues(
            [1, 1, 2], [family, other, family], [md5s(0, 1)[0], "ab" * 20, md5s(1, 1)[0]], 2
        ),
        ParsedLine(2, family.entry(md5s(2, 1)[0])),  # the same line as the last value
        ParsedLine(3, other.entry("cd" * 20)),
        ParsedValues([4], [other], ["ef" * 20], 1),
    ]
    result = ledger.import_lines(items)
    assert result.lines_read == 4 and result.append.count == 6
    values = [e.value for _i, e, _d, _h in stored(ledger)]
    assert values == [md5s(0, 1)[0], "ab" * 20, md5s(1, 1)[0], md5s(2, 1)[0], "cd" * 20, "ef" * 20]


def test_a_value_that_is_not_canonical_writes_nothing(ledger: Ledger, node_dir: Path) -> None:
    before = snapshot(node_dir / "ledger.db")
    family = AddFamily.create(signal_type="md5")
    bad = ParsedValues(range(1, 4), [family] * 3, [md5s(0, 1)[0], "AB" * 16, md5s(1, 1)[0]], 3)
    with pytest.raises(MalformedError) as caught:
        ledger.import_lines([bad])
    assert caught.value.field == "signal.value"
    assert snapshot(node_dir / "ledger.db") == before


def test_a_rejected_block_import_names_the_line_and_writes_nothing(
    ledger: Ledger, node_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashlist_module, "_BLOCK_CHARS", 1000)
    before = snapshot(node_dir / "ledger.db")
    lines = md5s(0, 2000)
    lines[1500] = "xyz"
    reader = HashListReader(fmt="lines", default_type="md5")
    with pytest.raises(ImportRejectedError) as caught:
        ledger.import_lines(reader.read(io.StringIO("\n".join(lines) + "\n")))
    assert [(e.line, e.field) for e in caught.value.errors] == [(1501, "value")]
    assert caught.value.total_lines == 2000
    assert snapshot(node_dir / "ledger.db") == before


def category_rows(count: int, *, upper: bool = True) -> list[str]:
    rows = []
    for i, v in enumerate(md5s(1000, count)):
        rows.append(f"{v.upper() if upper else v},{'ABC'[i % 3]}")
    return rows


CSV_INPUTS: dict[str, tuple[str, list[str]]] = {
    "md5 and category": ("MD5,Category\n" + "\n".join(category_rows(300)) + "\n", []),
    "crlf and a bom": ("\ufeffMD5,Category\r\n" + "\r\n".join(category_rows(300)) + "\r\n", []),
    "no final line end": ("md5,category\n" + "\n".join(category_rows(300)), []),
    "label cells to normalise": (
        "MD5,Category\n" + "\n".join(f"{v},Cat {i % 2}" for i, v in enumerate(md5s(0, 200))),
        [],
    ),
    "two value columns": (
        "md5,SHA1,Category\n"
        + "\n".join(f"{m},{'AB' * 20},{'xy'[i % 2]}" for i, m in enumerate(md5s(0, 200)))
        + "\n",
        [],
    ),
    "bad rows among good ones": (
        "MD5,Category\n"
        + "\n".join(category_rows(100))
        + "\nnot-a-hash,A\n,B\n\n"
        + md5s(5000, 1)[0]
        + ",A,extra\n  "
        + md5s(5001, 1)[0]
        + " ,B\n"
        + "\n".join(category_rows(100, upper=False))
        + "\n",
        [],
    ),
    "a quoted row": (
        "MD5,Category\n"
        + "\n".join(category_rows(100))
        + '\n"'
        + md5s(7000, 1)[0]
        + '","Category\nB"\n'
        + "\n".join(category_rows(100))
        + "\n",
        [],
    ),
    "a quoted header": ('"MD5","Category"\n' + "\n".join(category_rows(100)) + "\n", []),
    "a hash column and --type": ("hash,Category\n" + "\n".join(category_rows(100)) + "\n", []),
    "a type column": (
        "type,value,Category\n" + "\n".join(f"md5,{r}" for r in category_rows(100)) + "\n",
        [],
    ),
    "non-ascii label cells": (
        "MD5,Category\n" + "\n".join(f"{v},Catégorie {i % 2}" for i, v in enumerate(md5s(0, 99))),
        [],
    ),
    "a label map missing a cell": (
        "MD5,Category\n" + "\n".join(category_rows(100)) + "\n" + md5s(1, 1)[0] + ",Z\n",
        ["a,category-a", "b,category-b", "c,"],
    ),
    "lone carriage returns": ("MD5,Category\r" + "\r".join(category_rows(50)) + "\n", []),
    "header only": ("MD5,Category\n", []),
    "empty": ("", []),
    "no value column": ("name,Category\nx,A\n", []),
}


@pytest.mark.parametrize("name", sorted(CSV_INPUTS))
def test_csv_blocks_read_as_row_by_row(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashlist_module, "_BLOCK_CHARS", 700)
    text, label_map = CSV_INPUTS[name]
    mapping = dict(line.split(",") for line in label_map) if label_map else None

    def reader() -> HashListReader:
        return HashListReader(
            fmt="csv",
            default_type="md5",
            extra_labels=["src:t"],
            label_columns=[LabelColumn.parse("Category=iwf:", mapping)],
        )

    blocks, rows = reader(), reader()
    got = list(blocks.read(io.StringIO(text, newline="")))
    want = list(rows.read(io.StringIO(text, newline="").readlines()))
    assert all(isinstance(p, ParsedLine) for p in want)
    assert expand(got) == want
    assert blocks.notes == rows.notes
    assert blocks.skipped_blank == rows.skipped_blank
    assert blocks.ignored_columns == rows.ignored_columns
    for item in got:
        if isinstance(item, ParsedValues):
            assert len(item.values) == len(item.lines) == len(item.families)
            assert len(set(item.lines)) == item.rows
    if name in ("md5 and category", "crlf and a bom", "two value columns", "no final line end"):
        assert all(isinstance(p, ParsedValues) for p in got)
        assert len(got) > 3


def vics_media(count: int) -> list[dict[str, object]]:
    """Media items of every shape the reader meets, the odd ones among plain ones."""
    items: list[dict[str, object]] = []
    for i in range(count):
        item: dict[str, object] = {"MediaID": i, "Category": 1 + i % 3, "MD5": md5s(i, 1)[0]}
        if i % 2:
            item["MD5"] = md5s(i, 1)[0].upper()
            item["SHA1"] = f"{i:040X}"
        if i % 11 == 5:
            item["PhotoDNA"] = "AQID" * 48  # base64: an entry of its own, between hex ones
        if i % 47 == 6:
            item["MD5"] = " 0x" + md5s(i, 1)[0]  # to normalise
        if i % 53 == 7:
            item["SHA1"] = "zz"  # refused
        if i % 19 == 8:
            item["Category"] = 0  # non-pertinent: skipped
        if i % 23 == 9:
            item["SHA256"] = 5  # not a string
        if i % 29 == 10:
            item = {"MediaID": i, "Category": 1}  # no hash
        items.append(item)
    return items


def test_vics_batches_read_as_value_by_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from node.ledger import vics

    doc = {
        "@odata.context": "http://github.com/VICSDATAMODEL/ProjectVic/DataModels/2.0.xml/US/$metadata#Cases",
        "value": [
            {"CaseID": "c1", "Media": vics_media(150)},
            {"CaseID": "c2", "Media": vics_media(90)},
        ],
    }
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    monkeypatch.setattr(vics, "_BATCH", 20)
    batched = vics.VicsReader(vics.PROFILES["projectvic-us"], extra_labels=("src:t",))
    got = list(batched.read(path))
    # With no batch found canonical, every hash is read one by one.
    monkeypatch.setattr(vics, "each_canonical", lambda _t, _v: False)
    single = vics.VicsReader(vics.PROFILES["projectvic-us"], extra_labels=("src:t",))
    want = list(single.read(path))
    assert all(isinstance(p, ParsedLine) for p in want)
    assert expand(got) == want
    assert batched.notes == single.notes and batched.skipped == single.skipped
    assert sum(isinstance(p, ParsedValues) for p in got) > 5
    errors = [str(p.error) for p in want if p.error is not None]
    assert errors[0] == "value[0].Media[7].SHA1: expected 40 hex characters, got 2"
    assert "value[0].Media[9].SHA256: expected a string" in errors
    assert "value[1].Media[60].SHA1: expected 40 hex characters, got 2" in errors


@pytest.mark.parametrize("held", [150, 2_000_000])
def test_active_rows_held_back_are_written_and_found(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, held: int
) -> None:
    from node.ledger import integration, service

    # Batches of 100 values; the active rows held back until 150 (or the end).
    monkeypatch.setattr(service, "IMPORT_BATCH", 100)
    monkeypatch.setattr(integration, "_DEFERRED_ACTIVE", held)
    family = AddFamily.create(signal_type="md5")
    values = md5s(0, 550)
    values[420] = values[17]  # listed by an earlier batch, its row maybe held back
    items = [
        ParsedValues(range(1 + i, 1 + i + 50), [family] * 50, values[i : i + 50], 50)
        for i in range(0, 550, 50)
    ]
    result = ledger.import_lines(items)
    assert result.append.count == 549
    assert [(d.line, d.existing_index) for d in result.append.duplicates] == [(421, 17)]
    log_id = ledger.own_log.log_id
    found = ledger.store.find_active(log_id, "md5", md5s(0, 550))
    assert found == {v: i if i <= 420 else i - 1 for i, v in enumerate(md5s(0, 550)) if i != 420}
    # The next import sees every row: all duplicates.
    again = ledger.import_lines(items)
    assert again.append.count == 0 and len(again.append.duplicates) == 550


def test_each_canonical_checks_each_value_against_its_own_type() -> None:
    types = ["md5", "sha1", "md5", "sha256"]
    values = ["ab" * 16, "cd" * 20, "ef" * 16, "01" * 32]
    assert each_canonical(types, values)
    assert each_canonical([], [])
    assert not each_canonical(types, values[:3])
    # Each value is hex of some type's length, but not of its own type's.
    assert not each_canonical(["sha1", "md5", "md5", "sha256"], values)
    assert not each_canonical(types, [*values[:3], "01" * 31 + "0G"])
    assert not each_canonical(["photodna"], ["AQID" * 48])  # base64: never in bulk
