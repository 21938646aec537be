"""hashmesh demo: one hotline node, from creation to an offline audit.

Run with `.venv/bin/python examples/single_node.py [--keep DIR]`. It uses the
same commands a hotline's engineer would type, and says in plain words what
each step showed. Everything stays in a temporary directory unless --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import sys
import tempfile
from pathlib import Path

from node.cli import main as hashmesh
from protocol.__main__ import main as protocol_cli


def run(*argv: str) -> str:
    """Run a hashmesh command in-process; return its stdout; stop on failure."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = hashmesh(list(argv))
    if status != 0:
        sys.exit(f"hashmesh {' '.join(argv)} failed:\n{err.getvalue()}")
    return out.getvalue()


def audit(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = protocol_cli(list(argv))
    return status, (out.getvalue() + err.getvalue()).strip()


def step(text: str) -> None:
    print(f"\n== {text}")


def demo(work: Path) -> None:
    node = str(work / "hotline-a")
    origin = "hotline-a.example/hashmesh"
    step("Hotline A creates its node")
    print(run("init", "--dir", node, "--origin", origin).rstrip())

    step("An analyst adds two hashes of confirmed material")
    rng = random.Random(7)
    first = f"{rng.getrandbits(256):064x}"
    second = f"{rng.getrandbits(128):032x}"
    i1 = run(
        "--dir",
        node,
        "add",
        "--type",
        "sha256",
        "--value",
        first,
        "--label",
        "iwf:category-a",
    ).strip()
    i2 = run(
        "--dir",
        node,
        "add",
        "--type",
        "md5",
        "--value",
        second.upper(),
        "--label",
        "iwf:category-b",
    ).strip()
    print(
        f"sha256 {first[:16]}... is entry {i1}; md5 {second} (typed in upper case, normalised) is entry {i2}"
    )

    step("The hotline imports the list it already had (5,000 lines, with CRLF and a duplicate)")
    hashes = [f"{rng.getrandbits(128):032x}" for _ in range(5000)]
    hashes[10] = second  # already listed: reported, not appended twice
    listing = work / "legacy-md5.txt"
    listing.write_bytes(("\ufeff" + "\r\n".join(h.upper() for h in hashes) + "\r\n").encode())
    print(
        run(
            "--dir",
            node,
            "import",
            str(listing),
            "--type",
            "md5",
            "--label",
            "source:legacy",
        ).rstrip()
    )

    step("A false positive is retracted (the ledger only grows: this appends a retraction)")
    print(
        "retraction is entry",
        run("--dir", node, "retract", i1, "--reason", "false positive after review").strip(),
    )

    step("Status of the ledger")
    status = json.loads(run("--dir", node, "status", "--json"))
    print(
        f"size {status['size']}, root {status['root']}, {status['retracted']} retracted, listed: {status['active_by_signal_type']}"
    )

    step("Anyone with the verifier key checks the signed checkpoint, offline")
    vkey = work / "vkey.txt"
    vkey.write_text(run("--dir", node, "vkey"))
    checkpoint = work / "checkpoint.txt"
    checkpoint.write_text(run("--dir", node, "checkpoint"))
    print(checkpoint.read_text().rstrip())
    print(audit("verify-checkpoint", str(checkpoint), "--vkey", str(vkey))[1])

    step("...that entry 1 is in the ledger (inclusion proof)")
    proof = work / "inclusion.json"
    proof.write_text(run("--dir", node, "prove", "inclusion", i2, "--json"))
    print(
        audit(
            "verify-inclusion",
            str(proof),
            "--checkpoint",
            str(checkpoint),
            "--vkey",
            str(vkey),
        )[1]
    )

    step("...that today's ledger extends yesterday's (consistency proof)")
    old = work / "old-checkpoint.txt"
    old.write_text(checkpoint.read_text())
    run(
        "--dir",
        node,
        "add",
        "--type",
        "sha1",
        "--value",
        f"{rng.getrandbits(160):040x}",
    )
    checkpoint.write_text(run("--dir", node, "checkpoint"))
    old_size = int(old.read_text().splitlines()[1])
    new_size = int(checkpoint.read_text().splitlines()[1])
    cons = work / "consistency.json"
    cons.write_text(
        run(
            "--dir",
            node,
            "prove",
            "consistency",
            str(old_size),
            str(new_size),
            "--json",
        )
    )
    print(
        audit(
            "verify-consistency",
            str(cons),
            "--old",
            str(old),
            "--new",
            str(checkpoint),
            "--vkey",
            str(vkey),
        )[1]
    )

    step("An auditor receives a bundle and checks every signature, entry and root")
    bundle = work / "audit.bundle"
    run("--dir", node, "export", "--format", "bundle", "--out", str(bundle))
    print(audit("verify-bundle", str(bundle), "--vkey", str(vkey))[1])

    step("A forged bundle (one hash changed) is caught")
    lines = bundle.read_text().splitlines(keepends=True)
    leaves_at = next(i for i, line in enumerate(lines) if line.startswith("leaves "))
    import base64

    data = bytearray(base64.b64decode(lines[leaves_at + 1]))
    pos = data.index(b'"value":"') + len('"value":"')
    data[pos] = ord("0") if data[pos] != ord("0") else ord("1")
    lines[leaves_at + 1] = base64.b64encode(bytes(data)).decode() + "\n"
    forged = work / "forged.bundle"
    forged.write_text("".join(lines))
    status_code, message = audit("verify-bundle", str(forged), "--vkey", str(vkey))
    print(f"exit status {status_code}: {message}")
    if status_code == 0:
        sys.exit("the forged bundle was accepted: this is a bug")

    print(
        "\nDone. For several nodes syncing over mutual TLS, run scripts/demo (examples/network.py)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    args = parser.parse_args()
    if args.keep:
        work = Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
        demo(work)
    else:
        with tempfile.TemporaryDirectory(prefix="hashmesh-demo-") as tmp:
            demo(Path(tmp))


if __name__ == "__main__":
    main()
