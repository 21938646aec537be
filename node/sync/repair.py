"""``hashmesh repair --from-peers``: fetch a damaged log's entries again from peers.

Layer: node.sync. Fetches with :class:`~node.sync.client.HttpPeerClient`;
every check and write is the ledger's (:func:`node.ledger.fsck.plan_repair`,
:func:`node.ledger.fsck.restore_entries`).

Nothing a peer sends is trusted: a range is fetched from the last checkpoint
our entries still reproduce to the first one they no longer do, and written
only if, after our verified entries, it gives exactly the root of *our own*
signed checkpoint of that size. A peer holding the same log (a follower of
ours, or another follower of the origin) has the same bytes; a peer with
another history cannot produce that root. Ranges are repaired one after the
other until the log verifies, then the derived tables are rebuilt from it and
the damage record is cleared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from node.errors import NodeError, StorageError
from node.ledger.damage import DamageRegister
from node.ledger.database import Database
from node.ledger.fsck import RepairProgress, RepairRange, entries_part
from node.ledger.service import Ledger
from node.storage.peer_store import PeerRecord
from node.sync.client import HttpPeerClient

__all__ = ["MAX_RANGES", "RepairReport", "repair_from_peers"]

MAX_RANGES = 1000
"""Most damaged ranges repaired in one run (each one ends at a signed checkpoint)."""


@dataclass
class RepairReport:
    """What one ``repair --from-peers`` run did for one log."""

    origin: str
    ranges: list[tuple[RepairRange, str, int]] = field(default_factory=list)
    """Each range repaired, the peer it came from and the entries rewritten."""
    refusals: list[str] = field(default_factory=list)
    """One line per peer that could not give a range (unreachable, or another history)."""
    repaired: bool = False
    """The log verifies again and its derived data was rebuilt."""


async def repair_from_peers(
    db: Database,
    node_dir: Path,
    origin: str,
    *,
    cert_path: Path,
    key_path: Path,
    only_peer: str | None = None,
    progress: RepairProgress | None = None,
) -> RepairReport:
    """Repair ``origin``'s damaged entries from the peers (role ``peer``) that hold it.

    ``progress`` is told the entries done of each part of the work: ``check
    ORIGIN`` (the scan that finds the next damaged range), ``fetch
    START..END`` (entries written from a peer) and the parts of
    :func:`node.ledger.fsck.repair_derived`.

    Raises:
        NodeError: if no peer could give a range that verifies (the ranges
            already repaired stay repaired), or the damage is not in the
            entries.
    """
    report = RepairReport(origin)
    peers: list[PeerRecord] = await db.read(
        lambda ledger: [p for p in ledger.peers.list_peers() if p.role == "peer"]
    )
    if only_peer is not None:
        peers = [p for p in peers if p.name == only_peer]
    for _ in range(MAX_RANGES):
        plan = await db.read(
            lambda ledger: ledger.plan_repair(
                origin,
                entries_part(progress, f"check {origin}", lambda: ledger.held_entries(origin)),
            )
        )
        if plan is None:
            break
        # Asked only when something must be fetched: a log that verifies needs no peer.
        if not peers:
            raise NodeError(
                f"log {origin}: entries {plan.start}..{plan.end - 1} are damaged and there is "
                "no peer to fetch them from: add one that holds this log with `hashmesh peer "
                "add CARD --role peer`" + (f" (none is named {only_peer!r})" if only_peer else "")
            )
        if progress is not None:
            progress(f"fetch {plan.start}..{plan.end - 1}", 0, plan.end - plan.start)
        if not await _repair_range(db, plan, peers, report, cert_path, key_path):
            raise NodeError(
                f"log {origin}: no peer gave entries {plan.start}..{plan.end - 1} that give our "
                f"signed root of size {plan.end} ({'; '.join(report.refusals)}); "
                f"{_kept(report)}"
            )
        if progress is not None:
            progress(f"fetch {plan.start}..{plan.end - 1}", *[plan.end - plan.start] * 2)
    else:
        raise NodeError(f"log {origin}: more than {MAX_RANGES} damaged ranges; {_kept(report)}")

    def rebuild(ledger: Ledger) -> None:
        ledger.repair_derived(progress)

    await db.write(rebuild)
    DamageRegister(node_dir).clear(origin)
    report.repaired = True
    return report


async def _repair_range(
    db: Database,
    plan: RepairRange,
    peers: list[PeerRecord],
    report: RepairReport,
    cert_path: Path,
    key_path: Path,
) -> bool:
    for peer in peers:
        try:
            async with HttpPeerClient(
                peer.name,
                peer.url,
                server_cert_pem=peer.tls_cert,
                cert_path=cert_path,
                key_path=key_path,
            ) as client:
                datas = await client.entries(plan.origin, plan.start, plan.end)

            def restore(ledger: Ledger, datas: list[bytes] = datas) -> int:
                return ledger.restore_entries(plan, datas)

            written = await db.write(restore)
        except (NodeError, StorageError) as e:
            report.refusals.append(f"{peer.name}: {e}")
            continue
        report.ranges.append((plan, peer.name, written))
        return True
    return False


def _kept(report: RepairReport) -> str:
    if not report.ranges:
        return "nothing was written"
    done = ", ".join(f"{r.start}..{r.end - 1}" for r, _peer, _n in report.ranges)
    return f"the ranges repaired so far ({done}) are kept; nothing else was written"
