"""Federation state: peers and their sync status, followed origins, fork evidence.

Layer: node.storage. SQLite I/O on the connection of a
:class:`~node.storage.ledger_store.LedgerStore`, which hands this store out
(``store.peers``). Peers are looked up by TLS key fingerprint on every
request, so that look-up is one indexed read. The single-purpose write
methods join the caller's transaction when one is open and otherwise run in
one of their own; no method verifies a signature or evidence: the ledger
layer above decides what to write.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from node.errors import ConfigError
from node.storage.connection import joined_transaction, now_text

__all__ = [
    "PEER_ROLES",
    "EvidenceRecord",
    "FollowRecord",
    "PeerRecord",
    "PeerStatus",
    "PeerStore",
]

PEER_ROLES = ("peer", "subscriber", "auditor")
"""What a peer may do: ``peer`` (read all, and we sync from it), ``subscriber``
(read logs and entries), ``auditor`` (read checkpoints, proofs, evidence)."""


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A node allowed to connect to us (and, for role ``peer``, synced from)."""

    name: str
    url: str
    tls_cert: str
    spki: str
    vkey: str
    role: str
    added_at: str


@dataclass(frozen=True, slots=True)
class FollowRecord:
    """An origin we replicate, pinned to its verifier key."""

    origin: str
    vkey: str
    added_at: str


@dataclass(frozen=True, slots=True)
class EvidenceRecord:
    """Stored fork evidence (``evidence_json`` is :class:`protocol.evidence.ForkEvidence`)."""

    origin: str
    evidence_json: bytes
    source: str
    detected_at: str


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """The sync engine's last word on a peer."""

    name: str
    last_ok_at: str | None
    last_error: str | None
    last_error_at: str | None
    failures: int


_PEER_COLUMNS = "name, url, tls_cert, spki, vkey, role, added_at"


class PeerStore:
    """Peers, peer status, follows and evidence, on one SQLite connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # -- peers ------------------------------------------------------------

    def add_peer(self, record: PeerRecord) -> None:
        """Allow a peer to connect (joins an open transaction, if any).

        Raises:
            ConfigError: if the name or the TLS key fingerprint is already
                registered, or the role or fingerprint is invalid.
        """
        if record.role not in PEER_ROLES:
            raise ConfigError(f"peer role {record.role!r} is not one of {', '.join(PEER_ROLES)}")
        if len(record.spki) != 64 or record.spki != record.spki.lower():
            raise ConfigError(f"peer {record.name}: spki must be 64 lowercase hex digits")
        with joined_transaction(self.conn):
            if self.conn.execute("SELECT 1 FROM peers WHERE name = ?", (record.name,)).fetchone():
                raise ConfigError(
                    f"a peer named {record.name!r} already exists; "
                    "remove it first with `hashmesh peer remove`"
                )
            row = self.conn.execute(
                "SELECT name FROM peers WHERE spki = ?", (record.spki,)
            ).fetchone()
            if row is not None:
                raise ConfigError(
                    f"peer {row[0]!r} already uses TLS key sha256:{record.spki}; "
                    "two peers cannot share a key"
                )
            self.conn.execute(
                f"INSERT INTO peers ({_PEER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608 - constant columns
                (
                    record.name,
                    record.url,
                    record.tls_cert,
                    record.spki,
                    record.vkey,
                    record.role,
                    record.added_at or now_text(),
                ),
            )

    def remove_peer(self, name: str) -> bool:
        """Forget a peer and its sync status; True if it existed."""
        with joined_transaction(self.conn):
            cur = self.conn.execute("DELETE FROM peers WHERE name = ?", (name,))
            self.conn.execute("DELETE FROM peer_status WHERE name = ?", (name,))
            self.conn.execute("DELETE FROM peer_certs WHERE name = ?", (name,))
            self.conn.execute("DELETE FROM peer_cards WHERE name = ?", (name,))
        return cur.rowcount > 0

    def list_peers(self) -> list[PeerRecord]:
        """Every peer, by name."""
        rows = self.conn.execute(
            f"SELECT {_PEER_COLUMNS} FROM peers ORDER BY name"  # noqa: S608 - constant columns
        ).fetchall()
        return [PeerRecord(*row) for row in rows]

    def peer_by_spki(self, spki: str) -> PeerRecord | None:
        """The peer with this TLS key fingerprint, or None.

        The fingerprint is the peer's pinned one, or any certificate its
        latest signed card lists (:meth:`accept_card`): two indexed reads.
        """
        row = self.conn.execute(
            f"SELECT {_PEER_COLUMNS} FROM peers WHERE spki = ?",  # noqa: S608 - constant columns
            (spki,),
        ).fetchone()
        if row is None:
            row = self.conn.execute(
                f"SELECT {_PEER_COLUMNS} FROM peers WHERE name = "  # noqa: S608 - constant columns
                "(SELECT name FROM peer_certs WHERE spki = ?)",
                (spki,),
            ).fetchone()
        return None if row is None else PeerRecord(*row)

    def card_serial(self, name: str) -> int | None:
        """The serial of the latest signed card accepted from peer ``name``, or None."""
        row = self.conn.execute("SELECT serial FROM peer_cards WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def accept_card(self, name: str, serial: int, note: str, certs: list[tuple[str, str]]) -> None:
        """Trust exactly the certificates of a peer's newer signed card (joins a transaction).

        The peer's row then carries the card's certificates as one PEM
        bundle (what TLS contexts load), pinned by the first (newest) one's
        fingerprint; every certificate's fingerprint maps to the peer. The
        URL stays the one the operator added the peer with. The caller
        verified the card and its serial: this layer does not.

        Args:
            name: the peer.
            serial: the card's serial.
            note: the signed card, kept as received.
            certs: ``(spki, pem)`` of each certificate, newest first.

        Raises:
            ConfigError: if a certificate's key belongs to another peer.
        """
        with joined_transaction(self.conn):
            for spki, _pem in certs:
                row = self.conn.execute(
                    "SELECT name FROM peers WHERE spki = ? AND name != ? UNION "
                    "SELECT name FROM peer_certs WHERE spki = ? AND name != ?",
                    (spki, name, spki, name),
                ).fetchone()
                if row is not None:
                    raise ConfigError(f"peer {row[0]!r} already uses TLS key sha256:{spki}")
            self.conn.execute("DELETE FROM peer_certs WHERE name = ?", (name,))
            self.conn.executemany(
                "INSERT INTO peer_certs (spki, name) VALUES (?, ?)",
                [(spki, name) for spki, _pem in certs],
            )
            self.conn.execute(
                "INSERT INTO peer_cards (name, serial, note, received_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET serial = excluded.serial, "
                "note = excluded.note, received_at = excluded.received_at",
                (name, serial, note, now_text()),
            )
            self.conn.execute(
                "UPDATE peers SET tls_cert = ?, spki = ? WHERE name = ?",
                ("".join(pem for _spki, pem in certs), certs[0][0], name),
            )

    def record_peer_ok(self, name: str) -> None:
        """Note a successful sync round with a peer (clears the failure count)."""
        with joined_transaction(self.conn):
            self.conn.execute(
                "INSERT INTO peer_status (name, last_ok_at, failures) VALUES (?, ?, 0) "
                "ON CONFLICT (name) DO UPDATE SET last_ok_at = excluded.last_ok_at, failures = 0",
                (name, now_text()),
            )

    def record_peer_error(self, name: str, reason: str) -> None:
        """Note a failed sync round with a peer, and why."""
        with joined_transaction(self.conn):
            self.conn.execute(
                "INSERT INTO peer_status (name, last_error, last_error_at, failures) "
                "VALUES (?, ?, ?, 1) ON CONFLICT (name) DO UPDATE SET "
                "last_error = excluded.last_error, last_error_at = excluded.last_error_at, "
                "failures = peer_status.failures + 1",
                (name, reason, now_text()),
            )

    def peer_statuses(self) -> list[PeerStatus]:
        """Sync status of every peer that has one, by name."""
        rows = self.conn.execute(
            "SELECT name, last_ok_at, last_error, last_error_at, failures FROM peer_status "
            "ORDER BY name"
        ).fetchall()
        return [PeerStatus(*row) for row in rows]

    # -- follows ----------------------------------------------------------

    def add_follow(self, origin: str, vkey: str) -> None:
        """Record that ``origin`` is replicated, pinned to ``vkey`` (joins an open transaction).

        The caller checked the key and that the origin may be followed
        (:meth:`node.ledger.service.Ledger.follow`): this layer does not.
        """
        with joined_transaction(self.conn):
            self.conn.execute(
                "INSERT INTO follows (origin, vkey, added_at) VALUES (?, ?, ?)",
                (origin, vkey, now_text()),
            )

    def remove_follow(self, origin: str) -> bool:
        """Stop replicating ``origin`` (entries already held stay); True if it was followed."""
        with joined_transaction(self.conn):
            cur = self.conn.execute("DELETE FROM follows WHERE origin = ?", (origin,))
        return cur.rowcount > 0

    def get_follow(self, origin: str) -> FollowRecord | None:
        """The follow record of ``origin``, or None."""
        row = self.conn.execute(
            "SELECT origin, vkey, added_at FROM follows WHERE origin = ?", (origin,)
        ).fetchone()
        return None if row is None else FollowRecord(*row)

    def list_follows(self) -> list[FollowRecord]:
        """Every followed origin, by origin."""
        rows = self.conn.execute(
            "SELECT origin, vkey, added_at FROM follows ORDER BY origin"
        ).fetchall()
        return [FollowRecord(*row) for row in rows]

    # -- evidence ---------------------------------------------------------

    def add_evidence(self, origin: str, evidence_json: bytes, source: str) -> bool:
        """Store fork evidence for ``origin``, which freezes it; False if already held.

        The caller must have verified the evidence: this layer does not.
        """
        with joined_transaction(self.conn):
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO evidence (origin, evidence_json, source, detected_at) "
                "VALUES (?, ?, ?, ?)",
                (origin, bytes(evidence_json), source, now_text()),
            )
        return cur.rowcount > 0

    def list_evidence(self) -> list[EvidenceRecord]:
        """Every stored evidence, oldest first."""
        rows = self.conn.execute(
            "SELECT origin, evidence_json, source, detected_at FROM evidence ORDER BY evidence_id"
        ).fetchall()
        return [EvidenceRecord(r[0], bytes(r[1]), r[2], r[3]) for r in rows]

    def frozen_origins(self) -> set[str]:
        """Origins with fork evidence: no more of their entries are accepted."""
        return {r[0] for r in self.conn.execute("SELECT DISTINCT origin FROM evidence")}

    def is_frozen(self, origin: str) -> bool:
        """Whether fork evidence is held for ``origin``."""
        row = self.conn.execute(
            "SELECT 1 FROM evidence WHERE origin = ? LIMIT 1", (origin,)
        ).fetchone()
        return row is not None
