"""VICS import and export (round trip), MISP feed and STIX 2.1 bundle exports.

The MISP feed is loaded by PyMISP and the STIX bundle parsed and its patterns
validated by the stix2 libraries: each format is checked by its own ecosystem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import stix2
from pymisp import MISPEvent
from stix2patterns.validator import run_validator

from node.cli import main as hashmesh
from node.errors import ImportRejectedError, NodeError
from node.ledger import Ledger
from node.ledger.export import listed_adds
from node.ledger.provision import init_node
from node.ledger.vics import PROFILES, VicsReader, load_profile
from protocol.entry import AddEntry, parse_entry
from tests.node.conftest import snapshot

US = "http://github.com/VICSDATAMODEL/ProjectVic/DataModels/2.0.xml/US/$metadata#Cases"
PHOTODNA = "AQID" * 48  # 144 bytes, base64


def vics_doc(cases: list[list[dict[str, Any]]], context: str = US) -> dict[str, Any]:
    return {
        "@odata.context": context,
        "value": [
            {"CaseID": f"case-{i}", "CaseNumber": "x", "Media": media}
            for i, media in enumerate(cases)
        ],
    }


def write(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def adds(ledger: Ledger) -> list[tuple[str, str, tuple[str, ...]]]:
    found = []
    for _i, data, _leaf in ledger.entries(ledger.own_log):
        entry = parse_entry(bytes(data))
        if isinstance(entry, AddEntry):
            found.append((entry.signal_type, entry.value, entry.labels))
    return found


def media(i: int, category: object, **hashes: str) -> dict[str, Any]:
    item: dict[str, Any] = {"MediaID": i, "Category": category, "MediaSize": 10, "Tags": []}
    item.update(hashes)
    return item


def test_vics_import_maps_categories_and_skips_non_pertinent(
    ledger: Ledger, tmp_path: Path
) -> None:
    doc = vics_doc(
        [
            [
                media(1, 1, MD5="AB" * 16, SHA1="cd" * 20),
                media(2, 0, MD5="11" * 16),
                media(3, "3", PhotoDNA=PHOTODNA),
            ],
            [
                media(4, 2, SHA1="ef" * 20),
                media(5, None, MD5="22" * 16),
                media(6, 4, MD5="33" * 16),
            ],
        ]
    )
    reader = VicsReader(PROFILES["projectvic-us"], extra_labels=("Src:VIC",))
    result = ledger.import_lines(reader.read(write(tmp_path / "case.json", doc)))
    assert result.append.count == 4
    assert result.lines_read == 3
    assert adds(ledger) == [
        ("md5", "ab" * 16, ("projectvic:category-1", "src:vic")),
        ("sha1", "cd" * 20, ("projectvic:category-1", "src:vic")),
        ("photodna", PHOTODNA, ("projectvic:category-3", "src:vic")),
        ("sha1", "ef" * 20, ("projectvic:category-2", "src:vic")),
    ]
    assert reader.media_read == 6
    assert reader.skipped == {
        "category 0 (Non-Pertinent)": 1,
        "category 4 (Comparison Images)": 1,
        "uncategorised (no Category)": 1,
    }
    assert reader.notes["lower-cased hex"] == 1


def test_vics_media_shape_and_1_3_metadata(ledger: Ledger, tmp_path: Path) -> None:
    doc = {
        "odata.metadata": "http://github.com/ICMEC/ProjectVic/DataModels/1.3.xml#Media",
        "value": [media(1, 1, MD5="aa" * 16), media(2, 3, MD5="bb" * 16)],
    }
    reader = VicsReader(PROFILES["caid-uk"])
    ledger.import_lines(reader.read(write(tmp_path / "caid.json", doc)))
    assert adds(ledger) == [
        ("md5", "aa" * 16, ("caid:category-a",)),
        ("md5", "bb" * 16, ("caid:category-c",)),
    ]


def test_vics_invalid_media_are_named_by_json_path(
    ledger: Ledger, node_dir: Path, tmp_path: Path
) -> None:
    doc = vics_doc(
        [
            [media(1, 1, MD5="aa" * 16)],
            [
                media(2, 1, MD5="bb" * 16),
                media(3, 1, Series="no hash at all"),
                media(4, 9, MD5="cc" * 16),
                media(5, 1, MD5="dd" * 20),
                media(6, 1, SHA1=7),  # type: ignore[arg-type]
            ],
        ]
    )
    path = write(tmp_path / "bad.json", doc)
    before = snapshot(node_dir / "ledger.db")
    with pytest.raises(ImportRejectedError) as info:
        ledger.import_lines(VicsReader(PROFILES["projectvic-us"]).read(path))
    assert snapshot(node_dir / "ledger.db") == before
    described = [str(e) for e in info.value.errors]
    assert described[0] == (
        "value[1].Media[1].MD5: the media item carries no hash (MD5, SHA1, SHA256, PhotoDNA)"
    )
    assert described[1].startswith("value[1].Media[2].Category: category 9 is not in profile")
    assert "--profile FILE" in described[1]
    assert described[2].startswith("value[1].Media[3].MD5: ") and "sha1" in described[2]
    assert described[3] == "value[1].Media[4].SHA1: expected a string"
    result = ledger.import_lines(
        VicsReader(PROFILES["projectvic-us"]).read(path), skip_invalid=True
    )
    assert result.append.count == 2 and len(result.skipped) == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (json.dumps(vics_doc([[media(1, 1, MD5="aa" * 16)]]))[:-30], "not a complete JSON"),
        (
            json.dumps(
                vics_doc([[media(1, 1, MD5="aa" * 16)]], "http://example.org/$metadata#Cases")
            ),
            "unknown @odata.context 'http://example.org/",
        ),
        (json.dumps({"value": []}), "no @odata.context"),
        ("", "not a complete JSON"),
    ],
)
def test_vics_documents_that_cannot_be_trusted_write_nothing(
    ledger: Ledger, node_dir: Path, tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "doc.json"
    path.write_text(text, encoding="utf-8")
    before = snapshot(node_dir / "ledger.db")
    with pytest.raises(NodeError, match=message):
        ledger.import_lines(VicsReader(PROFILES["projectvic-us"]).read(path))
    assert snapshot(node_dir / "ledger.db") == before


def test_vics_profile_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ca.json",
        {"region": "CA", "categories": {"0": None, "1": ["cybertip-ca:class-1"]}},
    )
    profile = load_profile(str(path))
    assert profile.region == "CA"
    assert profile.categories == {0: None, 1: ("cybertip-ca:class-1",)}
    assert profile.category_of(["src:x", "cybertip-ca:class-1"]) == 1
    write(tmp_path / "bad.json", {"categories": {"one": ["x:y"]}})
    with pytest.raises(NodeError, match="category 'one' is not a number"):
        load_profile(str(tmp_path / "bad.json"))
    with pytest.raises(NodeError, match="no such profile"):
        load_profile(str(tmp_path / "missing.json"))


def test_vics_round_trip_through_the_cli(
    tmp_path: Path, node_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = vics_doc(
        [
            [
                media(1, 1, MD5="AB" * 16, SHA1="cd" * 20),
                media(2, 2, SHA256="12" * 32),
                media(3, 3, PhotoDNA=PHOTODNA),
                media(4, 0, MD5="99" * 16),
            ]
        ]
    )
    source = write(tmp_path / "export.json", doc)  # detected by its @odata.context
    assert (
        hashmesh(["import", str(source), "--dir", str(node_dir), "--profile", "projectvic-us"]) == 0
    )
    out, err = capsys.readouterr()
    assert "imported 4 entries" in out and "from 3 media items" in out
    assert "(4 media items)" in err
    assert "skipped 1 media items: category 0 (Non-Pertinent)" in err
    with Ledger.open(node_dir) as ledger:
        first = adds(ledger)
        ledger.append(
            [AddEntry.create(signal_type="pdq", value="f" * 64, quality=90, labels=["src:x"])]
        )
    exported = tmp_path / "again.json"
    args = ["export", "--dir", str(node_dir), "--format", "vics", "--profile", "projectvic-us"]
    assert hashmesh([*args, "--out", str(exported)]) == 0
    err = capsys.readouterr().err
    assert "left out 1 entries: pdq: VICS has no field for it" in err
    assert json.loads(exported.read_text())["@odata.context"] == US
    other = tmp_path / "other"
    init_node(other, "other.example/hashmesh")
    assert (
        hashmesh(["import", str(exported), "--dir", str(other), "--profile", "projectvic-us"]) == 0
    )
    with Ledger.open(other) as ledger:
        assert adds(ledger) == first
    assert hashmesh(args) == 1
    assert "--out FILE (exports hold hash values)" in capsys.readouterr().err


def filled(ledger: Ledger) -> None:
    ledger.append(
        [
            AddEntry.create(signal_type="md5", value="aa" * 16, labels=["iwf:category-a"]),
            AddEntry.create(signal_type="sha1", value="bb" * 20),
            AddEntry.create(
                signal_type="sha256", value="cc" * 32, labels=["src:legacy", "iwf:category-b"]
            ),
            AddEntry.create(signal_type="pdq", value="dd" * 32, quality=80),
            AddEntry.create(signal_type="photodna", value=PHOTODNA),
            AddEntry.create(signal_type="md5", value="ee" * 16),
        ]
    )
    ledger.retract(5, "false positive")


def test_misp_feed_is_loaded_by_pymisp(
    ledger: Ledger, node_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    filled(ledger)
    feed = tmp_path / "feed"
    assert hashmesh(["export", "--dir", str(node_dir), "--format", "misp", "--out", str(feed)]) == 0
    err = capsys.readouterr().err
    assert "3 attributes in 1 events" in err
    assert "left out 1 entries: pdq: MISP has no attribute type for it" in err
    manifest = json.loads((feed / "manifest.json").read_text())
    (event_id,) = manifest
    event = MISPEvent()
    event.load_file(feed / f"{event_id}.json")
    assert event.uuid == event_id
    # PyMISP's own manifest of the loaded event says what ours says.
    (theirs,) = event.manifest.values()
    ours = manifest[event_id]
    for key in ("info", "date", "analysis", "threat_level_id", "timestamp", "Orgc"):
        assert theirs[key] == ours[key], key
    assert [t["name"] for t in theirs["Tag"]] == [t["name"] for t in ours["Tag"]]
    got = {(a.type, a.value, tuple(sorted(t.name for t in a.tags))) for a in event.attributes}
    assert got == {
        ("md5", "aa" * 16, ("iwf:category-a",)),
        ("sha1", "bb" * 20, ()),
        ("sha256", "cc" * 32, ("iwf:category-b", "src:legacy")),
    }  # the retracted md5 is left out
    hashes = (feed / "hashes.csv").read_text().splitlines()
    assert len(hashes) == 3 and all(line.endswith("," + event_id) for line in hashes)
    # Exporting again keeps the ids, so MISP updates the event instead of adding one.
    assert hashmesh(["export", "--dir", str(node_dir), "--format", "misp", "--out", str(feed)]) == 0
    assert list(json.loads((feed / "manifest.json").read_text())) == [event_id]
    assert not list(feed.glob("*.partial"))


def test_stix_bundle_is_parsed_and_validated_by_stix2(
    ledger: Ledger, node_dir: Path, tmp_path: Path
) -> None:
    filled(ledger)
    target = tmp_path / "hashes.stix.json"
    assert (
        hashmesh(["export", "--dir", str(node_dir), "--format", "stix", "--out", str(target)]) == 0
    )
    bundle = stix2.parse(target.read_text(), allow_custom=False)
    identity, *indicators = bundle.objects
    assert identity.type == "identity" and identity.name == ledger.own_log.origin
    patterns = {i.pattern: tuple(getattr(i, "labels", ())) for i in indicators}
    assert patterns == {
        f"[file:hashes.'MD5' = '{'aa' * 16}']": ("iwf:category-a",),
        f"[file:hashes.'SHA-1' = '{'bb' * 20}']": (),
        f"[file:hashes.'SHA-256' = '{'cc' * 32}']": ("iwf:category-b", "src:legacy"),
        f"[file:hashes.'x_pdq' = '{'dd' * 32}']": (),
        f"[file:hashes.'x_photodna' = '{PHOTODNA}']": (),
    }
    for indicator in indicators:
        assert run_validator(indicator.pattern) == []
        assert indicator.created_by_ref == identity.id
    # The validator checks hash shapes: a wrong one would not have passed.
    assert run_validator("[file:hashes.'MD5' = 'abc']") != []
    refs = sorted(i.external_references[0].external_id for i in indicators)
    assert refs == [f"{ledger.own_log.origin}#{n}" for n in range(5)]


def test_listed_adds_leave_out_retracted_and_other_kinds(ledger: Ledger) -> None:
    filled(ledger)
    assert [i for i, _e in listed_adds(ledger)] == [0, 1, 2, 3, 4]
