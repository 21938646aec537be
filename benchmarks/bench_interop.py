"""Interop benchmark: CSV and VICS imports of 1M hashes, a 2 GB VICS document, a threatexchange fetch.

    .venv/bin/python benchmarks/bench_interop.py [--entries 1000000] [--vics-gb 2] [--skip-big]

Each import runs in a child process (its own peak RSS), against a fresh node,
end to end as `hashmesh import` does it. The baseline, in the same run, is
the plain-lines import of the same number of MD5 values (`--type md5`), so
the figures are ratios to what the machine did at that moment:

* lines   : N upper-case MD5 lines, `--type md5 --label src:bench` (baseline)
* csv     : N rows `MD5,Category` (A/B/C), `--label-from Category=iwf:`
* vics    : N/2 media items with MD5 and SHA1, categories 1-3, projectvic-us
* vics-2gb: a generated document of about --vics-gb GB (padded media items,
            half of them non-pertinent), to show the peak RSS does not grow
            with the file; generated in a temporary directory and deleted.

The threatexchange fetch serves a node of N MD5 entries (`hashmesh serve`,
mutual TLS on 127.0.0.1) and fetches it with HashmeshSignalExchange (pages of
10,000, each verified against the signed checkpoint); baseline: the same
pages fetched raw with the sync client (no verification, no records).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ORIGIN = "bench-interop.example/hashmesh"
CONTEXT = "http://github.com/VICSDATAMODEL/ProjectVic/DataModels/2.0.xml/US/$metadata#Cases"


def child(kind: str, node_dir: str, path: str) -> None:
    from node.ledger import Ledger
    from node.ledger.hashlist import HashListReader, LabelColumn
    from node.ledger.vics import PROFILES, VicsReader

    started = time.perf_counter()
    with Ledger.open(Path(node_dir)) as ledger:
        if kind.startswith("vics"):
            reader = VicsReader(PROFILES["projectvic-us"])
            result = ledger.import_lines(reader.read(Path(path)))
        else:
            with open(path, encoding="utf-8", newline="") as f:
                if kind == "csv":
                    lines = HashListReader(
                        fmt="csv", label_columns=[LabelColumn.parse("Category=iwf:")]
                    )
                else:
                    lines = HashListReader(
                        fmt="lines", default_type="md5", extra_labels=["src:bench"]
                    )
                result = ledger.import_lines(lines.read(f))
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "count": result.append.count,
                "seconds": elapsed,
                "cpu": usage.ru_utime + usage.ru_stime,
                "rss_mib": usage.ru_maxrss / 1024,
            }
        )
    )


def run_child(kind: str, path: Path, work: Path) -> dict[str, float]:
    from node.ledger.provision import init_node

    node_dir = work / f"node-{kind}"
    init_node(node_dir, ORIGIN)
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(node_dir), str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def md5(i: int) -> str:
    return f"{i * 2654435761 % (1 << 128):032X}"


def sha1(i: int) -> str:
    return f"{i * 40503 % (1 << 160):040x}"


def write_inputs(n: int, work: Path) -> dict[str, Path]:
    paths = {"lines": work / "list.txt", "csv": work / "list.csv", "vics": work / "case.json"}
    with paths["lines"].open("w") as f:
        f.writelines(f"{md5(i)}\n" for i in range(n))
    with paths["csv"].open("w") as f:
        f.write("MD5,Category\n")
        f.writelines(f"{md5(i)},{'ABC'[i % 3]}\n" for i in range(n))
    with paths["vics"].open("w") as f:
        f.write('{"@odata.context":"' + CONTEXT + '","value":[{"CaseID":"bench","Media":[')
        for i in range(n // 2):
            f.write("," if i else "")
            f.write(
                f'{{"MediaID":{i},"Category":{1 + i % 3},"MD5":"{md5(i)}","SHA1":"{sha1(i)}",'
                f'"MediaSize":{1000 + i},"IsPrecategorized":false,"Tags":[]}}'
            )
        f.write("]}]}")
    return paths


def write_big_vics(path: Path, gigabytes: float) -> tuple[int, int]:
    """A VICS document of about ``gigabytes``: padded media items, half non-pertinent."""
    pad = "x" * 1800  # a long comment, as case exports carry file paths and notes
    target = int(gigabytes * 1024**3)
    written = media = 0
    with path.open("w") as f:
        head = '{"@odata.context":"' + CONTEXT + '","value":[{"CaseID":"big","Media":['
        f.write(head)
        written += len(head)
        while written < target:
            item = (
                ("," if media else "")
                + f'{{"MediaID":{media},"Category":{media % 4},"MD5":"{md5(media)}",'
                f'"SHA1":"{sha1(media)}","Comments":"{pad}",'
                f'"MediaFiles":[{{"FileName":"f{media}.jpg","FilePath":"/evidence/{media}"}}]}}'
            )
            f.write(item)
            written += len(item)
            media += 1
        f.write("]}]}")
    return media, written


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_fetch(n: int, work: Path) -> dict[str, float]:
    from cryptography import x509
    from threatexchange.signal_type.md5 import VideoMD5Signal

    from node.cli.cards import make_card
    from node.cli.signal_exchange import HashmeshCollabConfig, HashmeshSignalExchange
    from node.config import load_config
    from node.ledger import Ledger
    from node.ledger.hashlist import HashListReader
    from node.ledger.provision import init_node
    from node.storage.peer_store import PeerRecord
    from node.sync.client import HttpPeerClient
    from node.tls import spki_fingerprint, write_node_identity

    node_dir = work / "node-fetch"
    port = free_port()
    init_node(node_dir, ORIGIN, listen=f"127.0.0.1:{port}")
    client = work / "hma"
    write_node_identity(client / "c.key", client / "c.crt", common_name="hma", host="127.0.0.1")
    pem = (client / "c.crt").read_text()
    with Ledger.open(node_dir) as ledger:
        ledger.import_lines(
            HashListReader(fmt="lines", default_type="md5").read(
                f"{md5(i).lower()}\n" for i in range(n)
            )
        )
        ledger.peers.add_peer(
            PeerRecord(
                name="hma.example/log",
                url="https://127.0.0.1:1",
                tls_cert=pem,
                spki=spki_fingerprint(x509.load_pem_x509_certificate(pem.encode())),
                vkey="hma.example/log+00000000+AAAA",
                role="subscriber",
                added_at="2026-01-01T00:00:00Z",
            )
        )
        vkey = ledger.own_log.verifier_key
    config = load_config(node_dir)
    url = f"https://127.0.0.1:{port}"
    card = make_card(name=ORIGIN, url=url, tls_cert=config.tls_cert_path.read_text(), vkey=vkey)
    (work / "card.json").write_text(card.to_json())
    server = subprocess.Popen(
        [sys.executable, "-m", "node", "--dir", str(node_dir), "serve", "--no-sync"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

        async def raw() -> int:
            async with HttpPeerClient(
                ORIGIN,
                url,
                server_cert_pem=card.tls_cert,
                cert_path=client / "c.crt",
                key_path=client / "c.key",
            ) as peer:
                got = 0
                for start in range(0, n, 10_000):
                    got += len(await peer.entries(ORIGIN, start, min(n, start + 10_000)))
                return got

        started, cpu, server_cpu = time.perf_counter(), time.process_time(), cpu_of(server.pid)
        assert asyncio.run(raw()) == n
        raw_s = time.perf_counter() - started
        raw_cpu, raw_server = time.process_time() - cpu, cpu_of(server.pid) - server_cpu

        api = HashmeshSignalExchange.for_collab(
            HashmeshCollabConfig(
                name="bench",
                api="hashmesh",
                card=str(work / "card.json"),
                client_cert=str(client / "c.crt"),
                client_key=str(client / "c.key"),
            )
        )
        started, cpu, server_cpu = time.perf_counter(), time.process_time(), cpu_of(server.pid)
        signals = sum(len(d.updates) for d in api.fetch_iter([VideoMD5Signal], None))
        fetch_s = time.perf_counter() - started
        fetch_cpu, fetch_server = time.process_time() - cpu, cpu_of(server.pid) - server_cpu
        assert signals == n, signals
    finally:
        server.terminate()
        server.wait(30)
    return {
        "signals": signals,
        "seconds": fetch_s,
        "cpu": fetch_cpu,
        "server_cpu": fetch_server,
        "raw_seconds": raw_s,
        "raw_cpu": raw_cpu,
        "raw_server_cpu": raw_server,
    }


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--vics-gb", type=float, default=2.0)
    ap.add_argument("--skip-big", action="store_true", help="leave out the big VICS document")
    ap.add_argument("--skip-fetch", action="store_true", help="leave out the threatexchange fetch")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "NODE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    n = args.entries
    print(f"machine load average: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="bench-interop-") as tmp:
        work = Path(tmp)
        paths = write_inputs(n, work)
        results = {kind: run_child(kind, paths[kind], work) for kind in ("lines", "csv", "vics")}
        base = results["lines"]["count"] / results["lines"]["seconds"]
        cpu_base = results["lines"]["count"] / results["lines"]["cpu"]
        for kind, r in results.items():
            rate = r["count"] / r["seconds"]
            cpu_rate = r["count"] / r["cpu"]
            print(
                f"{kind:8} {r['count']:>9,} entries in {r['seconds']:6.2f} s = {rate:9,.0f}/s "
                f"({rate / base:4.2f}x lines); per CPU second {cpu_rate:9,.0f} "
                f"({cpu_rate / cpu_base:4.2f}x lines)  peak RSS {r['rss_mib']:6.0f} MiB"
            )
        if not args.skip_big:
            big = work / "big.json"
            media, size = write_big_vics(big, args.vics_gb)
            r = run_child("vics-2gb", big, work)
            big.unlink()
            rate = r["count"] / r["seconds"]
            print(
                f"vics-2gb {size / 1024**3:.2f} GB, {media:,} media items: {r['count']:,} entries "
                f"in {r['seconds']:.1f} s = {rate:,.0f}/s ({rate / base:4.2f}x lines), "
                f"{r['cpu']:.1f} CPU s; peak RSS {r['rss_mib']:.0f} MiB"
            )
        if not args.skip_fetch:
            f = bench_fetch(n, work)
            rate = f["signals"] / f["seconds"]
            raw = n / f["raw_seconds"]
            print(
                f"threatexchange fetch of {f['signals']:,} signals, verified: {f['seconds']:.1f} s "
                f"= {rate:,.0f} signals/s; raw pages without verification: {raw:,.0f} entries/s "
                f"({rate / raw:4.2f}x raw)"
            )
            print(
                f"  CPU: fetch {f['cpu']:.1f} s client + {f['server_cpu']:.1f} s server "
                f"({n / f['cpu']:,.0f} signals per client CPU second); raw {f['raw_cpu']:.1f} s "
                f"client + {f['raw_server_cpu']:.1f} s server"
            )


if __name__ == "__main__":
    main()
