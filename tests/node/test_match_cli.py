"""hashmesh match / opinion against the local node, on real files and a real database."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from node.cli import main as hashmesh
from node.ledger import filehash
from node.ledger.filehash import PDQ_MISSING, hash_file
from protocol.__main__ import main as audit
from protocol.entry import AddEntry
from protocol.errors import RootMismatchError
from protocol.keys import NoteVerifier
from protocol.receipt import parse_receipt, verify_receipt

ORIGIN = "match-cli.example/hashmesh"
OTHER = "b" * 64


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = hashmesh(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    # Smooth structure (not noise), so PDQ quality is high and the hash stable.
    x = np.linspace(0, 6 * np.pi, 96)
    base = (np.sin(x)[:, None] * np.cos(x * rng.uniform(0.5, 2))[None, :] + 1) * 120
    pixels = np.stack([base, base.T, np.flipud(base)], axis=2).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    path = str(tmp_path / "n")
    assert run(capsys, "init", "--dir", path, "--origin", ORIGIN)[0] == 0
    return path


def add(capsys: pytest.CaptureFixture[str], node: str, *argv: str) -> int:
    status, out, err = run(capsys, "--dir", node, "add", *argv)
    assert status == 0, err
    return int(out)


def test_values_are_normalised_and_reported(node: str, capsys: pytest.CaptureFixture[str]) -> None:
    md5 = "5d41402abc4b2a76b9719d911017c592"
    add(capsys, node, "--type", "md5", "--value", md5, "--label", "iwf:category-a")
    status, out, err = run(capsys, "--dir", node, "match", " " + md5.upper() + " ", "c" * 40)
    assert status == 0, err
    assert f"MATCH md5 {md5}  (argument 1)" in out
    assert f"{ORIGIN} #0  labels iwf:category-a" in out
    assert "checked 2 hash(es): 1 matched (1 hit(s))" in out
    assert "normalised: lower-cased hex (1)" in err
    assert "normalised: removed surrounding whitespace (1)" in err


def test_ambiguous_and_invalid_values(node: str, capsys: pytest.CaptureFixture[str]) -> None:
    add(capsys, node, "--type", "sha256", "--value", OTHER)
    near = "b" * 63 + "8"  # two bits from OTHER
    add(capsys, node, "--type", "pdq", "--quality", "90", "--value", "d" * 64)
    # 64 hex digits and no --type: looked up as sha256 (exact) and as pdq (near).
    status, out, err = run(capsys, "--dir", node, "match", OTHER.upper(), "D" * 63 + "c")
    assert status == 0, err
    assert f"MATCH sha256 {OTHER}  (argument 1; tried as sha256 (exact) and pdq (near), " in out
    assert "matched as sha256 (exact))" in out
    assert f"MATCH pdq {'d' * 63}c  (argument 2; " in out and "matched as pdq (near))" in out
    assert "distance 1" in out
    assert "MATCH pdq " + OTHER not in out  # the sha256 entry is no PDQ hash
    assert "looked up as each of sha256 and pdq (no --type) (2)" in err
    status, out, err = run(capsys, "--dir", node, "match", near, "--json")
    doc = json.loads(out)
    assert doc["matches"] == []  # a near miss of a sha256 is no match at all
    assert status == 1  # like grep: nothing matched
    status, out, err = run(capsys, "--dir", node, "match", "xyz", "c" * 33)
    # Each bad input is named; with nothing left to match, the run fails (2, like grep).
    assert status == 2 and out == ""
    assert "invalid: argument 1, type: cannot tell the signal type" in err
    assert "invalid: argument 2, type" in err
    status, out, err = run(capsys, "--dir", node, "match", "--type", "sha256", OTHER, OTHER[:-1])
    assert "MATCH sha256" in out and "argument 2, value: expected 64 hex" in err
    assert status == 0  # one matched, one invalid: something matched
    status, _, err = run(capsys, "--dir", node, "match")
    assert status == 2 and "give hash values" in err
    status, _, err = run(capsys, "--dir", node, "match", "--type", "md5", OTHER)
    assert status == 2 and "every input was invalid" in err and "looks like" not in err


def test_files_hashed_with_pdq_for_images(
    node: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "seized").mkdir()
    pic = image(tmp_path / "seized" / "a.png", 1)
    text = tmp_path / "seized" / "notes.txt"
    text.write_bytes(b"not an image")
    (tmp_path / "seized" / "sub").mkdir()
    same = tmp_path / "seized" / "sub" / "copy.bin"
    same.write_bytes(text.read_bytes())
    hashes = hash_file(pic)
    assert hashes.pdq is not None and hashes.pdq_quality is not None and not hashes.low_quality
    near = f"{int(hashes.pdq, 16) ^ 0b1011:064x}"
    add(capsys, node, "--type", "pdq", "--quality", "90", "--value", near, "--label", "src:x")
    add(capsys, node, "--type", "sha1", "--value", hashlib.sha1(b"not an image").hexdigest())
    status, out, err = run(
        capsys, "--dir", node, "match", "--file", str(tmp_path / "seized"), "--json"
    )
    assert status == 0, err
    doc = json.loads(out)
    assert doc["checked"] == 3 * 3 + 1  # three files, one of them an image
    by_source = {(m["source"], m["type"]): m for m in doc["matches"]}
    pdq = by_source[(f"file {pic}", "pdq")]
    assert pdq["hits"][0]["distance"] == 3 and pdq["hits"][0]["value"] == near
    assert (f"file {text}", "sha1") in by_source and (f"file {same}", "sha1") in by_source
    files = {f["path"]: f for f in doc["files"]}
    assert files[str(text)]["pdq"] is None
    assert "not an image" in files[str(text)]["pdq_skipped"]
    assert files[str(pic)]["sha256"] == hashlib.sha256(pic.read_bytes()).hexdigest()
    assert "note: no PDQ hash: not an image" in err
    status, out, _ = run(capsys, "--dir", node, "match", "--file", str(pic), "--max-distance", "2")
    assert "checked 4 hash(es): 0 matched" in out


def test_without_the_pdq_extra_files_still_match_by_digest(
    node: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pic = image(tmp_path / "a.png", 2)
    add(capsys, node, "--type", "md5", "--value", hashlib.md5(pic.read_bytes()).hexdigest())
    monkeypatch.setattr(filehash, "_pdq_modules", lambda: None)
    status, out, err = run(capsys, "--dir", node, "match", "--file", str(pic))
    assert status == 0
    assert PDQ_MISSING in err and "pip install 'hashmesh[pdq]'" in err
    assert "MATCH md5" in out and "checked 3 hash(es): 1 matched" in out


def test_unreadable_file_is_reported_not_fatal(
    node: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = tmp_path / "real.bin"
    real.write_bytes(b"x")
    status, out, err = run(
        capsys, "--dir", node, "match", "--file", str(tmp_path / "gone.bin"), "--file", str(real)
    )
    # The unreadable file is reported; the readable one is matched (and misses).
    assert status == 1 and "invalid: file" in err and "gone.bin" in err
    assert "checked 3 hash(es)" in out


def test_list_normalisation_is_reported(
    node: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    md5 = "5d41402abc4b2a76b9719d911017c592"
    add(capsys, node, "--type", "md5", "--value", md5)
    add(capsys, node, "--type", "sha256", "--value", OTHER)
    listing = tmp_path / "list.txt"
    listing.write_bytes(
        b"\xef\xbb\xbf# exported list\r\n"
        + md5.upper().encode()
        + b"\r\n   SHA256: "
        + OTHER.upper().encode()
        + b"  \r\n\r\nsha1,"
        + b"0x"
        + b"a" * 40
        + b"\r\nnot-a-hash\r\n"
    )
    status, out, err = run(capsys, "--dir", node, "match", "--list", str(listing), "--json")
    assert status == 0, err
    doc = json.loads(out)
    assert doc["checked"] == 3
    assert [(m["source"], m["type"]) for m in doc["matches"]] == [
        ("list line 2", "md5"),
        ("list line 3", "sha256"),
    ]
    assert doc["normalised"] == {
        "converted CRLF line ends": 6,
        "lower-cased hex": 2,
        "passed over blank or comment lines": 2,
        "removed 0x prefix": 1,
        "removed byte order mark": 1,
        "removed surrounding spaces": 1,
    }
    assert [(e["source"], e["field"]) for e in doc["invalid"]] == [("list line 6", "type")]


def test_receipts_saved_and_verified_offline(
    node: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add(capsys, node, "--type", "sha256", "--value", OTHER, "--label", "iwf:category-a")
    vkey = run(capsys, "--dir", node, "vkey")[1].strip()
    folder = tmp_path / "receipts"
    status, out, err = run(
        capsys,
        "--dir",
        node,
        "match",
        "--type",
        "sha256",
        OTHER,
        "--save-receipts",
        str(folder),
        "--json",
    )
    assert status == 0, err
    hit = json.loads(out)["matches"][0]["hits"][0]
    assert {"entry_b64", "index", "size", "hashes", "checkpoint"} <= set(hit["receipt"])
    (saved,) = folder.iterdir()
    assert json.loads(saved.read_text()) == hit["receipt"]
    assert "verify-receipt" in err
    assert audit(["verify-receipt", str(saved), "--vkey", vkey]) == 0
    assert "entry 0 of " + ORIGIN in capsys.readouterr().out


def test_receipts_saved_as_tlog_proofs_verify_with_protocol_alone(
    node: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(5):  # a tree of several levels, so the proof has hashes
        add(capsys, node, "--type", "sha256", "--value", f"{i:064x}")
    add(capsys, node, "--type", "sha256", "--value", OTHER, "--label", "iwf:category-a")
    vkey = run(capsys, "--dir", node, "vkey")[1].strip()
    folder = tmp_path / "receipts"
    argv = ["--dir", node, "match", "--type", "sha256", OTHER, "--save-receipts", str(folder)]
    status, _, err = run(capsys, *argv, "--receipt-format", "tlog-proof")
    assert status == 0, err
    (saved,) = folder.iterdir()
    assert saved.name == "0001-match-cli.example_hashmesh-5.tlog-proof"
    text = saved.read_text(encoding="utf-8")
    assert text.split("\n")[0] == "c2sp.org/tlog-proof@v1"
    assert text.split("\n")[2] == "index 5"
    # With nothing but protocol/ and the origin's key.
    verified = verify_receipt(parse_receipt(saved.read_bytes()), NoteVerifier.from_text(vkey))
    assert (verified.origin, verified.index, verified.size) == (ORIGIN, 5, 6)
    assert isinstance(verified.entry, AddEntry) and verified.entry.value == OTHER
    # With the auditor's command line.
    assert audit(["verify-receipt", str(saved), "--vkey", vkey]) == 0
    assert "entry 5 of " + ORIGIN in capsys.readouterr().out
    # The same hit saved as JSON proves the same thing.
    json_folder = tmp_path / "json"
    status, _, err = run(capsys, *argv[:-1], str(json_folder))
    assert status == 0, err
    (as_json,) = json_folder.iterdir()
    assert as_json.name.endswith(".receipt.json")
    assert parse_receipt(as_json.read_bytes()) == parse_receipt(saved.read_bytes())
    # Another entry's bytes as the extra data: the proof no longer reaches the root.
    lines = text.split("\n")
    other = AddEntry.create(signal_type="sha256", value="c" * 64).to_bytes()
    lines[1] = "extra " + base64.b64encode(other).decode()
    saved.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(RootMismatchError):
        verify_receipt(parse_receipt(saved.read_bytes()), NoteVerifier.from_text(vkey))
    assert audit(["verify-receipt", str(saved), "--vkey", vkey]) == 1
    assert "FAILED: RootMismatchError: inclusion proof for index 5" in capsys.readouterr().err
    # A non-canonical index is named.
    lines = text.split("\n")
    lines[2] = "index 05"
    saved.write_text("\n".join(lines), encoding="utf-8")
    assert audit(["verify-receipt", str(saved), "--vkey", vkey]) == 1
    assert "FAILED: MalformedError: index: expected a decimal" in capsys.readouterr().err


def test_receipt_format_needs_save_receipts(node: str, capsys: pytest.CaptureFixture[str]) -> None:
    add(capsys, node, "--type", "sha256", "--value", OTHER)
    status, _, err = run(
        capsys, "--dir", node, "match", OTHER, "--type", "sha256", "--receipt-format", "json"
    )
    assert status != 0 and "--save-receipts" in err
    with pytest.raises(SystemExit):
        hashmesh(["match", "--help"])
    assert "tlog-proof" in capsys.readouterr().out


def test_opinion_command_and_results(node: str, capsys: pytest.CaptureFixture[str]) -> None:
    add(capsys, node, "--type", "sha256", "--value", OTHER)
    status, out, err = run(
        capsys,
        "--dir",
        node,
        "opinion",
        ORIGIN,
        "0",
        "--verdict",
        "false-positive",
        "--note",
        "a holiday photo",
    )
    assert status == 0 and out.strip() == "1" and "appended as entry 1" in err
    status, out, _ = run(capsys, "--dir", node, "match", "--type", "sha256", OTHER, "--json")
    (opinion,) = json.loads(out)["matches"][0]["hits"][0]["opinions"]
    assert opinion == {
        "origin": ORIGIN,
        "index": 1,
        "verdict": "false-positive",
        "note": "a holiday photo",
        "trusted": True,
    }
    status, _, err = run(
        capsys, "--dir", node, "opinion", "nobody.example/x", "0", "--verdict", "confirm"
    )
    assert status == 1 and "nobody.example/x" in err
    status, _, err = run(capsys, "--dir", node, "opinion", ORIGIN, "9", "--verdict", "confirm")
    assert status == 1 and "entry 9" in err
    with pytest.raises(SystemExit):
        hashmesh(["--dir", node, "opinion", ORIGIN, "0", "--verdict", "maybe"])


def _count_pools(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The worker counts of every ``match --list`` matched in worker processes, as they come."""
    from node.cli import match as match_cli

    pools: list[int] = []
    in_workers = match_cli._match_in_workers

    def counted(*args: Any) -> Any:
        pools.append(args[2])
        return in_workers(*args)

    monkeypatch.setattr(match_cli, "_match_in_workers", counted)
    return pools


def test_a_long_list_is_matched_in_worker_processes_as_in_one(
    node: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """More than one batch: both cores answer, and the report is the one-process report."""
    from node.cli import match as match_cli
    from node.ledger import Ledger

    listed = [hashlib.sha256(f"long-{i}".encode()).hexdigest() for i in range(12)]
    with Ledger.open(Path(node)) as ledger:
        ledger.append([AddEntry.create(signal_type="sha256", value=v) for v in listed])
        ledger.append([AddEntry.create(signal_type="md5", value="ab" * 16, labels=["x:y"])])
        ledger.append([AddEntry.create(signal_type="pdq", value="c" * 64, quality=90)])
    lines = [hashlib.sha256(f"miss-{i}".encode()).hexdigest() for i in range(21_000)]
    for at, value in zip(range(0, 21_000, 1_750), listed, strict=True):
        lines[at] = value
    lines[20_999] = "md5:" + "AB" * 16
    pdq = "c" * 63 + "e"  # one bit from the listed PDQ hash below, found near
    lines[20_998] = f"pdq:{pdq}"
    listing = tmp_path / "long.txt"
    listing.write_text("\n".join(lines) + "\n", encoding="ascii")
    # Untyped 64-hex lines are looked up as sha256 and as pdq (ambiguous).
    argv = ("--dir", node, "match", "--list", str(listing), "--receipts", "--json")
    assert match_cli.available_cores() > 1  # this machine has two cores
    pools = _count_pools(monkeypatch)
    status, pooled, err = run(capsys, *argv)
    assert status == 0, err
    assert pools == [2]  # five batches, two worker processes
    monkeypatch.setattr(match_cli, "available_cores", lambda: 1)  # one process
    status, alone, err = run(capsys, *argv)
    assert status == 0, err
    assert json.loads(pooled) == json.loads(alone)  # the same report (key order aside)
    doc = json.loads(pooled)
    assert doc["checked"] == 2 * 20_998 + 2
    assert doc["matches"][0]["tried_as"] == ["sha256", "pdq"]
    assert [m["source"] for m in doc["matches"]] == [
        *(f"list line {at + 1}" for at in range(0, 21_000, 1_750)),
        "list line 20999",
        "list line 21000",
    ]
    assert doc["matches"][-2]["hits"][0]["distance"] == 1
    assert all(m["hits"][0]["receipt"] for m in doc["matches"])


def test_a_long_list_without_the_pdq_file_reads_the_table_once(
    node: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker processes would each read every PDQ row beyond the file: one process reads them."""
    from node.ledger import Ledger

    pdq = [f"{i:064x}" for i in range(1, 301)]
    with Ledger.open(Path(node)) as ledger:
        ledger.append([AddEntry.create(signal_type="pdq", value=v, quality=90) for v in pdq])
    with (Path(node) / "config.toml").open("a", encoding="utf-8") as f:
        f.write("\n[match]\nworker_read_max = 100\n")
    lines = [f"sha256:{hashlib.sha256(f'miss-{i}'.encode()).hexdigest()}" for i in range(12_000)]
    lines[11_000] = f"pdq:{pdq[40]}"
    listing = tmp_path / "long.txt"
    listing.write_text("\n".join(lines) + "\n", encoding="ascii")
    pools = _count_pools(monkeypatch)
    argv = ("--dir", node, "match", "--list", str(listing), "--json")
    status, out, err = run(capsys, *argv)
    assert status == 0, err
    assert pools == [] and "more than 100 PDQ hashes lie beyond the index file" in err
    (found,) = json.loads(out)["matches"]
    assert found["source"] == "list line 11001" and found["hits"][0]["distance"] == 0
    # With the file written, the rows beyond it are few: both cores again.
    assert run(capsys, "--dir", node, "index", "build")[0] == 0
    status, pooled, err = run(capsys, *argv)
    assert status == 0 and pools == [2] and "beyond the index file" not in err
    assert json.loads(pooled) == json.loads(out)
