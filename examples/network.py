"""A working local hashmesh network: hotline A, hotline B, agency C (peers only with B).

Run it with ``scripts/demo`` (or ``.venv/bin/python examples/network.py``).

It creates three nodes in a temporary directory, exchanges their cards, makes
B a witness of A's log, starts ``hashmesh serve`` for each on 127.0.0.1
(random ports, mutual TLS), adds hashes at A, and shows them arriving at C
through B, verified at every hop against A's key. C matches hashes against
every log it holds and checks each hit's receipt with nothing but A's key; an
auditor audits A live without seeing a hash value. Then A retracts one entry,
rotates its signing key, and C follows; the auditor checks A's bundle across
the rotation. Everything it does is an ordinary ``hashmesh`` command. Each node
also serves its analyst console (docs/console.md) on its operations listener;
the demo prints their URLs (``--stay`` keeps the nodes serving at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
# How long to wait for a server or an entry: generous, because a busy machine is
# slow; the times printed say how long it really took.
WAIT = 120.0

ORIGINS = {
    "A": "hotline-a.example/hashmesh",
    "B": "hotline-b.example/hashmesh",
    "C": "agency-c.example/hashmesh",
}


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hashmesh(node: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(
        [PY, "-m", "node", "--dir", str(node), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if check and proc.returncode != 0:
        raise SystemExit(f"hashmesh {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def protocol_cli(*args: str) -> str:
    proc = subprocess.run(
        [PY, "-m", "protocol", *args], capture_output=True, text=True, cwd=ROOT, check=False
    )
    return (proc.stdout + proc.stderr).strip()


def status(node: Path, origin: str) -> dict[str, object] | None:
    out = hashmesh(node, "status", "--origin", origin, "--json", check=False)
    try:
        doc = json.loads(out)
    except json.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def wait_for(node: Path, origin: str, size: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        doc = status(node, origin)
        if doc is not None and int(str(doc.get("size", 0))) >= size:
            return time.monotonic() - started
        time.sleep(0.05)
    raise SystemExit(f"{node.name} did not reach size {size} of {origin} in {timeout} s")


def wait_listening(port: int, timeout: float) -> None:
    """Wait until a server accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout} s") from None
            time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the node directories")
    parser.add_argument(
        "--stay",
        action="store_true",
        help="keep the three nodes serving at the end, until Ctrl-C, to browse their consoles",
    )
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="hashmesh-network-"))
    nodes = {name: base / name for name in ORIGINS}
    servers: list[subprocess.Popen[bytes]] = []
    try:
        say("Three nodes are created: hotline A, hotline B, agency C")
        ports = {name: free_port() for name in ORIGINS}
        ops_ports = {name: free_port() for name in ORIGINS}
        for name, node in nodes.items():
            hashmesh(
                node, "init", "--origin", ORIGINS[name], "--listen", f"127.0.0.1:{ports[name]}"
            )
            # The operations listener (health, and the analyst console at /console/).
            with (node / "config.toml").open("a", encoding="utf-8") as f:
                f.write(f'\n[ops]\nlisten = "127.0.0.1:{ops_ports[name]}"\n')
            print(f"{name}: {ORIGINS[name]}")
        cards = {}
        for name, node in nodes.items():
            card = base / f"{name}.card.json"
            card.write_text(hashmesh(node, "peer", "card"), encoding="utf-8")
            cards[name] = card

        say("They exchange cards: A <-> B and B <-> C are peers; C never talks to A")
        hashmesh(nodes["A"], "peer", "add", str(cards["B"]), "--role", "peer")
        hashmesh(nodes["B"], "peer", "add", str(cards["A"]), "--role", "peer")
        hashmesh(nodes["B"], "peer", "add", str(cards["C"]), "--role", "peer")
        hashmesh(nodes["C"], "peer", "add", str(cards["B"]), "--role", "peer")
        a_vkey = hashmesh(nodes["A"], "vkey").strip()
        hashmesh(nodes["C"], "follow", ORIGINS["A"], a_vkey)
        print(f"C follows A's log, trusting only A's key {a_vkey}")

        say("B witnesses A's log: A asks B to cosign each checkpoint it signs")
        b_witness = hashmesh(nodes["B"], "witness", "vkey").strip()
        hashmesh(nodes["A"], "witness", "add", ORIGINS["B"], b_witness)
        print(f"B's witness key: {b_witness}")
        hashmesh(
            nodes["C"], "witness", "require", ORIGINS["A"], "--key", b_witness, "--threshold", "1"
        )
        print("C accepts A's checkpoints only with B's cosignature")

        say("An auditor gets a TLS identity and the auditor role at A (no hash values, ever)")
        auditor = base / "auditor"
        hashmesh(auditor, "init", "--origin", "auditor.example/audit")
        auditor_card = base / "auditor.card.json"
        auditor_card.write_text(hashmesh(auditor, "peer", "card"), encoding="utf-8")
        hashmesh(nodes["A"], "peer", "add", str(auditor_card), "--role", "auditor")

        say("Each node serves over mutual TLS on 127.0.0.1 and syncs live")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for node in nodes.values():
            servers.append(
                subprocess.Popen(
                    [PY, "-m", "node", "--dir", str(node), "serve"],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=(base / f"{node.name}.log").open("wb"),
                )
            )
        for port in [*ports.values(), *ops_ports.values()]:
            wait_listening(port, timeout=WAIT)
        consoles = {name: f"http://127.0.0.1:{port}/console/" for name, port in ops_ports.items()}
        print("Analyst consoles (read-only; open one in a browser):")
        for name, url in consoles.items():
            print(f"  {name} ({ORIGINS[name]}): {url}")

        say("Hotline A's analyst lists three hashes")
        values = [
            ("sha256", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
            ("md5", "5d41402abc4b2a76b9719d911017c592"),
            ("sha1", "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3"),
        ]
        for kind, value in values:
            index = hashmesh(
                nodes["A"], "add", "--type", kind, "--value", value, "--label", "iwf:category-a"
            ).strip()
            print(f"A: {kind} {value} is entry {index}")

        took = wait_for(nodes["C"], ORIGINS["A"], 3, timeout=WAIT)
        say(f"C holds A's three entries {took:.2f} s later, relayed by B")
        print(hashmesh(nodes["C"], "log", "--origin", ORIGINS["A"]).rstrip())

        say("C proves, with nothing but A's key, that entry 1 is in A's signed log")
        work = base / "check"
        work.mkdir()
        (work / "checkpoint.txt").write_text(
            hashmesh(nodes["C"], "checkpoint", "--origin", ORIGINS["A"]), encoding="utf-8"
        )
        (work / "proof.json").write_text(
            hashmesh(nodes["C"], "prove", "inclusion", "1", "--origin", ORIGINS["A"], "--json"),
            encoding="utf-8",
        )
        print(
            protocol_cli(
                "verify-inclusion",
                str(work / "proof.json"),
                "--checkpoint",
                str(work / "checkpoint.txt"),
                "--vkey",
                a_vkey,
            )
        )

        say("C's analyst checks hashes from a seized drive against every log C holds")
        receipts = work / "receipts"
        seized = work / "seized-hashes.txt"
        # As such lists come: upper case, CRLF line ends, a hash nobody lists.
        seized.write_bytes(
            b"md5:5D41402ABC4B2A76B9719D911017C592\r\n"
            b"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\r\n"
        )
        print(
            hashmesh(
                nodes["C"], "match", "--list", str(seized), "--save-receipts", str(receipts)
            ).rstrip()
        )
        # The same receipts as C2SP tlog-proofs, the format other log tools read.
        hashmesh(
            nodes["C"],
            "match",
            "--list",
            str(seized),
            "--save-receipts",
            str(receipts),
            "--receipt-format",
            "tlog-proof",
        )
        for receipt in sorted(receipts.iterdir()):
            print(
                f"{receipt.name}: " + protocol_cli("verify-receipt", str(receipt), "--vkey", a_vkey)
            )

        say("A's checkpoint as C holds it: signed by A, cosigned by witness B")
        print(hashmesh(nodes["C"], "checkpoint", "--origin", ORIGINS["A"]).rstrip())

        say("The auditor audits A live, over mTLS, seeing only checkpoints and leaf hashes")
        state = base / "audit-state.json"
        print(
            hashmesh(
                auditor,
                "audit",
                "--card",
                str(cards["A"]),
                "--vkey",
                a_vkey,
                "--state",
                str(state),
            ).rstrip()
        )

        say("A retracts entry 1 (a false positive); the retraction travels the same way")
        hashmesh(nodes["A"], "retract", "1", "--reason", "false positive, reviewed by analyst")
        took = wait_for(nodes["C"], ORIGINS["A"], 4, timeout=WAIT)
        doc = status(nodes["C"], ORIGINS["A"]) or {}
        print(
            f"C has A's retraction {took:.2f} s later: size {doc.get('size')}, "
            f"{doc.get('retracted')} retracted, listed {doc.get('active_by_signal_type')}"
        )

        say("A rotates its signing key; C follows the key chain through B")
        print(
            hashmesh(nodes["A"], "key", "rotate", "--reason", "scheduled yearly rotation").rstrip()
        )
        hashmesh(
            nodes["A"], "add", "--type", "sha256", "--value", "ab" * 32, "--label", "iwf:category-a"
        )
        took = wait_for(nodes["C"], ORIGINS["A"], 6, timeout=WAIT)
        print(f"C verified A's next entry under the new key {took:.2f} s later:")
        print(hashmesh(nodes["C"], "key", "chain", "--origin", ORIGINS["A"]).rstrip())

        say("The auditor audits A again from a bundle: same history, across the rotation")
        bundle = base / "a.bundle"
        hashmesh(nodes["A"], "export", "--format", "bundle", "--out", str(bundle))
        print(
            hashmesh(
                auditor, "audit", str(bundle), "--vkey", a_vkey, "--state", str(state)
            ).rstrip()
        )

        say("C's console, read as JSON (every console page is also JSON)")
        with urllib.request.urlopen(consoles["C"] + "overview.json", timeout=WAIT) as answer:
            overview = json.load(answer)
        for held in overview["logs"]:
            print(f"C's console: {held['origin']} size {held['size']} ({held['state']})")

        say("Peers as B sees them")
        print(hashmesh(nodes["B"], "peer", "list").rstrip())
        print("\nDone: three nodes, no central database, every entry verified against its author.")
        print("Consoles: " + "  ".join(f"{name} {url}" for name, url in consoles.items()))
        if args.stay:
            print("The nodes keep serving; Ctrl-C stops them.", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
        else:
            print("(run with --stay to keep them serving and browse the consoles)")
        return 0
    finally:
        for proc in servers:
            proc.send_signal(signal.SIGINT)
        for proc in servers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if args.keep:
            print(f"(node directories kept in {base})")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
