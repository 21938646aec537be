"""Hash lists as people have them: typed CSV columns, labels from columns, PDQ lists."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from node.cli import main as hashmesh
from node.errors import ImportRejectedError
from node.ledger import Ledger
from node.ledger.hashlist import HashListReader, LabelColumn, load_label_map
from protocol.entry import AddEntry, parse_entry
from protocol.errors import MalformedError
from tests.node.conftest import snapshot

MD5 = "0123456789abcdef0123456789abcdef"
SHA1 = "0123456789abcdef0123456789abcdef01234567"
PDQ = "f" * 32 + "0" * 32


def entries(ledger: Ledger) -> list[AddEntry]:
    found = []
    for _i, data, _leaf in ledger.entries(ledger.own_log):
        entry = parse_entry(bytes(data))
        assert isinstance(entry, AddEntry)
        found.append(entry)
    return found


def md5(i: int) -> str:
    return f"{i:032x}"


def test_typed_columns_any_case_several_per_row(ledger: Ledger) -> None:
    text = f"MD5,Sha1,Comment\n{MD5.upper()},{SHA1},x\n{md5(7)},,y\n,{'1' * 40},z\n"
    reader = HashListReader(fmt="csv")
    result = ledger.import_lines(reader.read(io.StringIO(text)))
    assert result.append.count == 4
    assert result.lines_read == 3
    assert reader.ignored_columns == ("comment",)
    assert [(e.signal_type, e.value) for e in entries(ledger)] == [
        ("md5", MD5),
        ("sha1", SHA1),
        ("md5", md5(7)),
        ("sha1", "1" * 40),
    ]
    assert reader.notes["lower-cased hex"] == 1


def test_label_from_column_normalises_and_reports(ledger: Ledger) -> None:
    text = f"md5,Category\n{md5(1)},A\n{md5(2)},Category B\n{md5(3)},\n"
    reader = HashListReader(fmt="csv", label_columns=[LabelColumn.parse("CATEGORY=iwf:")])
    ledger.import_lines(reader.read(io.StringIO(text)))
    assert [e.labels for e in entries(ledger)] == [("iwf:a",), ("iwf:category-b",), ()]
    assert reader.ignored_columns == ()
    assert sum(n for k, n in reader.notes.items() if "column category" in k) == 2


def test_label_map_renames_and_refuses_unknown_values(ledger: Ledger, node_dir: Path) -> None:
    mapping = load_label_map(
        "# IWF grades\nA,category-a\nB , category-b\nnone,\nx,src:legacy\n", "m"
    )
    spec = LabelColumn.parse("category=iwf:", mapping)
    good = f"MD5,CATEGORY\n{md5(1)},a\n{md5(2)},B\n{md5(3)},None\n{md5(4)},X\n"
    ledger.import_lines(HashListReader(fmt="csv", label_columns=[spec]).read(io.StringIO(good)))
    assert [e.labels for e in entries(ledger)] == [
        ("iwf:category-a",),
        ("iwf:category-b",),
        (),
        ("src:legacy",),
    ]
    before = snapshot(node_dir / "ledger.db")
    bad = f"md5,category\n{md5(5)},a\n{md5(6)},Z\n"
    with pytest.raises(ImportRejectedError) as info:
        ledger.import_lines(HashListReader(fmt="csv", label_columns=[spec]).read(io.StringIO(bad)))
    (error,) = info.value.errors
    assert (error.line, error.field) == (3, "category") and "'Z'" in error.reason
    assert snapshot(node_dir / "ledger.db") == before


def test_bad_label_options_are_named() -> None:
    with pytest.raises(MalformedError, match="m line 2: expected FROM,TO, got 3 columns"):
        load_label_map("a,b\na,b,c\n", "m")
    with pytest.raises(MalformedError, match="'A' mapped twice"):
        load_label_map("a,b\nA,c\n", "m")
    for bad in ("c=iwf", "=iwf:", "c:iwf:", "c=:"):
        with pytest.raises(MalformedError, match="COLUMN=NAMESPACE:"):
            LabelColumn.parse(bad)


def test_type_column_disagreeing_with_value_shape_is_an_error(
    ledger: Ledger, node_dir: Path
) -> None:
    before = snapshot(node_dir / "ledger.db")
    text = f"type,value\nmd5,{MD5}\nmd5,{SHA1}\n"
    with pytest.raises(ImportRejectedError) as info:
        ledger.import_lines(HashListReader(fmt="csv").read(io.StringIO(text)))
    (error,) = info.value.errors
    assert error.line == 3 and "sha1" in error.reason
    typed = f"md5\n{SHA1}\n"
    with pytest.raises(ImportRejectedError) as info:
        ledger.import_lines(HashListReader(fmt="csv").read(io.StringIO(typed)))
    (error,) = info.value.errors
    assert (error.line, error.field) == (2, "md5") and "looks like a sha1" in error.reason
    assert snapshot(node_dir / "ledger.db") == before


def test_header_problems_name_what_is_missing(ledger: Ledger) -> None:
    reader = HashListReader(fmt="csv")
    with pytest.raises(ImportRejectedError) as info:
        ledger.import_lines(reader.read(io.StringIO("Category,Note\nA,x\n")))
    assert "column named after a signal type" in info.value.errors[0].reason
    reader = HashListReader(fmt="csv", label_columns=[LabelColumn.parse("Classification=ncmec:")])
    with pytest.raises(ImportRejectedError) as info:
        ledger.import_lines(reader.read(io.StringIO(f"md5\n{MD5}\n")))
    assert "'classification' for --label-from" in info.value.errors[0].reason
    with pytest.raises(ImportRejectedError) as info:
        ledger.import_lines(HashListReader(fmt="csv").read(io.StringIO("md5,sha1\n,\n ,x\n")))
    (error,) = info.value.errors
    assert error.line == 3 and "sha1" in (error.field or "")


def test_pdq_lists_in_the_three_shapes(ledger: Ledger) -> None:
    other = "0" * 32 + "f" * 32
    third = "a" * 64
    text = f"{PDQ.upper()}\n{other},90\n{third},100,photos/x, with comma.jpg\n"
    reader = HashListReader(fmt="lines", default_type="pdq", default_quality=70)
    result = ledger.import_lines(reader.read(io.StringIO(text)))
    assert result.append.count == 3
    assert [(e.value, e.quality) for e in entries(ledger)] == [
        (PDQ, 70),
        (other, 90),
        (third, 100),
    ]


def test_pdq_list_without_quality_names_the_flag(ledger: Ledger, node_dir: Path) -> None:
    before = snapshot(node_dir / "ledger.db")
    text = f"{PDQ},80\n{'a' * 64}\n{'b' * 64},101\n"
    with pytest.raises(ImportRejectedError) as info:
        ledger.import_lines(HashListReader(fmt="lines", default_type="pdq").read(io.StringIO(text)))
    assert [(e.line, e.field) for e in info.value.errors] == [(2, "quality"), (3, "quality")]
    assert "--quality N" in info.value.errors[0].reason
    assert snapshot(node_dir / "ledger.db") == before


def test_quality_default_applies_to_csv_pdq_columns_only(ledger: Ledger) -> None:
    text = f"md5,pdq,quality\n{MD5},{PDQ},\n{md5(9)},{'c' * 64},55\n"
    reader = HashListReader(fmt="csv", default_quality=60)
    ledger.import_lines(reader.read(io.StringIO(text)))
    assert [(e.signal_type, e.quality) for e in entries(ledger)] == [
        ("md5", None),
        ("pdq", 60),
        ("md5", None),
        ("pdq", 55),
    ]


def test_cli_import_with_label_map_and_quality(
    tmp_path: Path, node_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = tmp_path / "ncmec.csv"
    listing.write_text(f"MD5,Classification\n{MD5},Apparent CSAM\n", encoding="utf-8")
    mapping = tmp_path / "map.csv"
    mapping.write_text("apparent csam,apparent-csam\n", encoding="utf-8")
    status = hashmesh(
        [
            "import",
            str(listing),
            "--dir",
            str(node_dir),
            "--label-from",
            "Classification=ncmec:",
            "--label-map",
            str(mapping),
        ]
    )
    assert status == 0
    assert "imported 1 entries" in capsys.readouterr().out
    pdq_list = tmp_path / "pdq.txt"
    pdq_list.write_text(f"{PDQ}\n", encoding="utf-8")
    status = hashmesh(["import", str(pdq_list), "--dir", str(node_dir), "--type", "pdq"])
    assert status == 1
    assert "--quality N" in capsys.readouterr().err
    status = hashmesh(
        ["import", str(pdq_list), "--dir", str(node_dir), "--type", "pdq", "--quality", "80"]
    )
    assert status == 0
    with Ledger.open(node_dir) as ledger:
        assert [(e.labels, e.quality) for e in entries(ledger)] == [
            (("ncmec:apparent-csam",), None),
            ((), 80),
        ]
    status = hashmesh(
        ["import", str(pdq_list), "--dir", str(node_dir), "--label-from", "x=y:", "--type", "pdq"]
    )
    assert status == 1 and "not CSV" in capsys.readouterr().err
