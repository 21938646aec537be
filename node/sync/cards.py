"""Presenting this node's renewed signed card to the nodes it connects to.

Layer: node.sync. Network I/O through :class:`~node.sync.client.HttpPeerClient`
(``POST /v1/peer-card``); the card is the one ``hashmesh tls renew`` signed
(:meth:`node.ledger.service.Ledger.sign_card`).

A node's peers that poll it fetch its card themselves (``GET /v1/card``).
The nodes *it* connects to — the peers it pulls from, whose table may list
it as a ``subscriber`` or ``auditor`` and which never poll it — learn of its
renewed certificate only when it presents the card to them, over the
certificate they still trust. ``hashmesh tls renew`` and ``tls retire-old``
present it at once to every peer of role ``peer`` (:func:`present_to_peers`);
``hashmesh serve`` presents it again on each round until each has it, and
``hashmesh audit --dir`` presents the auditor's to every node it audits.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from node.errors import NodeError, PeerError
from node.ledger.database import Database
from node.storage.peer_store import PeerRecord
from node.sync.client import HttpPeerClient
from protocol.api_documents import PeerCardAnswer

__all__ = ["Presented", "present_to_peers"]


@dataclass(frozen=True, slots=True)
class Presented:
    """What one node did with the card presented to it.

    Attributes:
        peer: the node's name.
        answer: its answer, or None when it could not be asked or refused.
        error: why not (unreachable, or its reason for refusing), or None.
    """

    peer: str
    answer: PeerCardAnswer | None = None
    error: str | None = None

    def describe(self, serial: int) -> str:
        """One line for the operator about the card of ``serial``."""
        if self.error is not None:
            return f"{self.peer}: NOT presented: {self.error}"
        assert self.answer is not None
        if self.answer.serial >= serial:
            held = "accepted" if self.answer.accepted else "already held"
            return f"{self.peer}: {held} (trusts {self.answer.certificates} certificate(s))"
        return f"{self.peer}: holds an older card (serial {self.answer.serial})"


async def _present(peer: PeerRecord, note: str, cert_path: Path, key_path: Path) -> Presented:
    try:
        async with HttpPeerClient.for_peer(peer, cert_path=cert_path, key_path=key_path) as client:
            return Presented(peer.name, await client.present_card(note))
    except PeerError as e:
        return Presented(peer.name, error=e.reason)
    except NodeError as e:  # our own TLS files unreadable
        return Presented(peer.name, error=str(e))


async def present_to_peers(
    db: Database, note: str, *, cert_path: Path, key_path: Path
) -> list[Presented]:
    """Present the signed card ``note`` to every peer of role ``peer``, at once.

    ``cert_path``/``key_path`` is the identity to connect with: the one the
    peers trust now (the old certificate after ``tls renew``, the new one
    after ``tls retire-old``).
    """
    peers = await db.read(lambda ledger: ledger.peers.list_peers())
    return list(
        await asyncio.gather(
            *(_present(p, note, cert_path, key_path) for p in peers if p.role == "peer")
        )
    )
