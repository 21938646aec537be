"""Peer cards: what one node hands another to be added as a peer.

Layer: node.cli. Performs no I/O (the commands read and write the files): the
CLI alone uses cards (``peer card``, ``peer add``, ``follow --card``,
``audit --card``, ``match --card``).

A card is one JSON object::

    {"card": 1, "name": "<origin>", "url": "https://HOST:PORT",
     "tls_cert": "<PEM certificate>", "vkey": "<verifier key>"}

The certificate is pinned (by its SPKI fingerprint) as the peer's identity
on every request; the verifier key is the key its log is checked against.
The card is not signed: it must reach the other operator over a channel they
trust (in person, signed e-mail), like an SSH host key.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from node.errors import ConfigError
from node.storage.peer_store import PEER_ROLES, PeerRecord
from node.tls import spki_fingerprint
from protocol.encoding import dumps_canonical, loads_strict
from protocol.errors import MalformedError
from protocol.keys import SIG_ED25519, NoteVerifier

__all__ = ["CARD_VERSION", "ROLES", "Card", "parse_card"]

CARD_VERSION = 1
ROLES = PEER_ROLES
"""The roles a card can be added with (the peers table's, one definition)."""
_KEYS = {"card", "name", "url", "tls_cert", "vkey"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Card:
    """A parsed, checked peer card."""

    name: str
    url: str
    tls_cert: str
    vkey: str
    spki: str

    def to_json(self) -> str:
        """The card as canonical JSON text (one line)."""
        obj = {
            "card": CARD_VERSION,
            "name": self.name,
            "url": self.url,
            "tls_cert": self.tls_cert,
            "vkey": self.vkey,
        }
        return dumps_canonical(obj).decode("utf-8")

    def peer_record(self, role: str) -> PeerRecord:
        """The peers-table row for this card with ``role``."""
        if role not in ROLES:
            raise ConfigError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return PeerRecord(
            name=self.name,
            url=self.url,
            tls_cert=self.tls_cert,
            spki=self.spki,
            vkey=self.vkey,
            role=role,
            added_at=now,
        )


def make_card(*, name: str, url: str, tls_cert: str, vkey: str) -> Card:
    """Build (and check) this node's own card."""
    return parse_card(
        dumps_canonical(
            {"card": CARD_VERSION, "name": name, "url": url, "tls_cert": tls_cert, "vkey": vkey}
        )
    )


def parse_card(data: bytes | str) -> Card:
    """Parse a card strictly.

    Raises:
        ConfigError: naming the field that is wrong.
    """
    try:
        obj: Any = loads_strict(data.encode("utf-8") if isinstance(data, str) else data)
    except MalformedError as e:
        raise ConfigError(f"card is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise ConfigError("card must be a JSON object")
    for key in sorted(set(obj) - _KEYS):
        raise ConfigError(f"card: unknown field {key!r}")
    for key in sorted(_KEYS - set(obj)):
        raise ConfigError(f"card: missing field {key!r}")
    if obj["card"] != CARD_VERSION or isinstance(obj["card"], bool):
        raise ConfigError(f"card: version {obj['card']!r} is not supported (expected 1)")
    for key in ("name", "url", "tls_cert", "vkey"):
        if not isinstance(obj[key], str):
            raise ConfigError(f"card: {key} must be a string")
    name, url, pem, vkey = obj["name"], obj["url"], obj["tls_cert"], obj["vkey"]
    try:
        verifier = NoteVerifier.from_text(vkey)
    except MalformedError as e:
        raise ConfigError(f"card: vkey: {e}") from e
    if verifier.sig_type != SIG_ED25519:
        raise ConfigError("card: vkey must be an Ed25519 (0x01) log key")
    if verifier.name != name:
        raise ConfigError(f"card: vkey is for {verifier.name!r}, not the card's name {name!r}")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(f"card: url must be https://HOST:PORT, not {url!r}")
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as e:
        raise ConfigError(f"card: tls_cert is not a PEM certificate: {e}") from e
    return Card(
        name=name, url=url.rstrip("/"), tls_cert=pem, vkey=vkey, spki=spki_fingerprint(cert)
    )
