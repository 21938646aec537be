"""Certificate renewal: the own signed card, peers' signed cards, expiry warnings.

Layer: node.ledger. Reads and writes the node's ``tls/`` files and the
``peer_cards`` / ``peer_certs`` tables; the card format and its check are
:mod:`protocol.card`'s.

``hashmesh tls renew`` writes a new key and certificate beside the one in
use (``tls/next.key``, ``tls/next.crt``) and a card listing both, signed
with the log's key (``tls/card.note``, served at ``GET /v1/card``). Peers
fetch it, check it with the origin's current key and trust both
certificates. ``hashmesh tls retire-old`` moves the new pair into place and
signs a card listing only it; peers then drop the old certificate. A node
never needs a card exchanged by hand again while its log key is known.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from node.config import NodeConfig, check_advertise_url
from node.errors import ConfigError
from node.ledger.rotation import load_key_chain
from node.storage.ledger_store import LedgerStore
from node.storage.peer_store import PeerRecord
from node.tls import spki_fingerprint
from protocol.card import SignedCard, open_card
from protocol.errors import MalformedError
from protocol.keys import NoteVerifier
from protocol.note import parse_note

__all__ = [
    "CertificateExpiry",
    "accept_peer_card",
    "certificate_expiries",
    "holder_expiries",
    "load_certificates",
    "next_card",
    "read_own_card",
    "read_own_card_note",
    "write_own_card_note",
]


@dataclass(frozen=True, slots=True)
class CertificateExpiry:
    """When one certificate this node presents or trusts expires.

    Attributes:
        holder: ``"own"`` (this node's), ``"own (renewed)"``, or a peer's name.
        spki: the certificate's key fingerprint.
        not_after: the end of its validity (UTC).
        days_left: whole days until then (negative once expired).
        warning: it expires within ``[ops] certificate_warn_days`` (30 by
            default), or has.
    """

    holder: str
    spki: str
    not_after: datetime.datetime
    days_left: int
    warning: bool
    renewed: bool = False
    """For the own certificate in use: a renewed one waits for ``tls retire-old``."""

    @property
    def advice(self) -> str:
        """What to do about it: renew, retire the old certificate, or ask the peer."""
        if self.holder == "own" and not self.renewed:
            return "renew it (hashmesh tls renew)"
        if self.holder.startswith("own"):
            return "put the renewed one in use (hashmesh tls retire-old)"
        return "ask that peer to renew it (hashmesh tls renew)"

    def describe(self) -> str:
        """One line for ``status`` and ``peer list``."""
        when = self.not_after.strftime("%Y-%m-%d")
        if self.days_left < 0:
            return f"{self.holder}: TLS certificate sha256:{self.spki[:16]}… EXPIRED on {when}"
        return (
            f"{self.holder}: TLS certificate sha256:{self.spki[:16]}… expires {when} "
            f"(in {self.days_left} days)"
        )


def load_certificates(pem: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (a peer's row holds one per card entry).

    Raises:
        ConfigError: if the text holds no certificate.
    """
    try:
        certs = x509.load_pem_x509_certificates(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as e:
        raise ConfigError(f"not a PEM certificate bundle: {e}") from e
    return certs


def _expiry(
    holder: str, cert: x509.Certificate, now: datetime.datetime, warn_days: int
) -> CertificateExpiry:
    not_after = cert.not_valid_after_utc
    days = (not_after - now) // datetime.timedelta(days=1)
    warning = not_after - now < datetime.timedelta(days=warn_days)
    return CertificateExpiry(holder, spki_fingerprint(cert), not_after, days, warning)


def certificate_expiries(
    config: NodeConfig, peers: Sequence[PeerRecord], now: datetime.datetime | None = None
) -> list[CertificateExpiry]:
    """The expiry of the own certificate(s) and of every certificate trusted for a peer.

    The one place the warning rule lives: ``status``, ``peer list``, ``tls
    status``, ``/readyz``, ``/metrics`` and the console call it. An entry
    with ``warning`` set expires within ``[ops] certificate_warn_days``: a
    certificate to renew (own) or a peer to ask to renew. A peer that renewed
    is trusted with its old and new certificates (its card lists both): only
    the one lasting longest can warn, as the link fails only when it ends.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    days = config.ops.certificate_warn_days
    found: list[CertificateExpiry] = []
    own = [("own", config.tls_cert_path), ("own (renewed)", config.tls_next_cert_path)]
    for holder, path in own:
        if path.exists():
            try:
                pem = path.read_text(encoding="ascii")
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"cannot read {path}: {e}") from e
            found += [_expiry(holder, cert, now, days) for cert in load_certificates(pem)]
    if config.tls_next_cert_path.exists():
        found = [dataclasses.replace(e, renewed=e.holder == "own") for e in found]
    for peer in peers:
        trusted = [_expiry(peer.name, cert, now, days) for cert in load_certificates(peer.tls_cert)]
        last = max(e.not_after for e in trusted)
        found += [
            dataclasses.replace(e, warning=e.warning and e.not_after == last) for e in trusted
        ]
    return found


def holder_expiries(expiries: Sequence[CertificateExpiry]) -> dict[str, CertificateExpiry]:
    """Per holder, its certificate that lasts longest: when that holder's link ends.

    What ``peer list``, ``/metrics`` and the console show per node (a peer
    in renewal has two; ``own`` and ``own (renewed)`` are holders apart).
    """
    last: dict[str, CertificateExpiry] = {}
    for expiry in expiries:
        held = last.get(expiry.holder)
        if held is None or expiry.not_after > held.not_after:
            last[expiry.holder] = expiry
    return last


def next_card(config: NodeConfig, url: str, certificate_paths: Sequence[Path]) -> SignedCard:
    """The card to sign next: these certificates, a serial above the last card's."""
    serial = int(time.time())
    previous = read_own_card(config)
    if previous is not None:
        serial = max(serial, previous.serial + 1)
    ders = []
    for path in certificate_paths:
        (cert,) = load_certificates(path.read_text(encoding="ascii"))[:1]
        ders.append(cert.public_bytes(serialization.Encoding.DER))
    return SignedCard(config.origin, check_advertise_url(url), serial, tuple(ders))


def read_own_card(config: NodeConfig) -> SignedCard | None:
    """The card this node serves (parsed), or None before its first renewal."""
    note = read_own_card_note(config)
    if note is None:
        return None
    return SignedCard.from_text(parse_note(note).text)


def read_own_card_note(config: NodeConfig) -> str | None:
    """The signed card note this node serves at ``GET /v1/card``, or None."""
    try:
        return config.signed_card_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {config.signed_card_path}: {e}") from e


def write_own_card_note(config: NodeConfig, note: str) -> None:
    """Replace the served card atomically."""
    path = config.signed_card_path
    staged = path.with_name(path.name + ".new")
    staged.write_text(note, encoding="utf-8")
    os.replace(staged, path)


def accept_peer_card(store: LedgerStore, peer: PeerRecord, note: str) -> SignedCard | None:
    """Verify a peer's signed card and, if newer, trust exactly its certificates.

    The card must be signed by the current key of the peer's origin: the
    key chain this node replicates (rotations included), or the key on the
    peer's card when its log is not followed. Call inside a transaction.

    Returns:
        The card, or None when it is not newer than the one held.

    Raises:
        MalformedError: if the card, a certificate or its URL is malformed.
        VerificationError: if the card is not signed by that key (a card
            signed by anyone else is refused) or names another origin.
        ConfigError: if a certificate's key belongs to another peer.
    """
    if store.key_chain(peer.name):
        verifier = load_key_chain(store, peer.name).current
    else:
        verifier = NoteVerifier.from_text(peer.vkey)
    card = open_card(note, verifier)
    held = store.peers.card_serial(peer.name)
    if held is not None and card.serial <= held:
        return None
    try:
        check_advertise_url(card.url)
    except ConfigError as e:
        raise MalformedError(f"card url: {e}", field="url") from e
    certs: list[tuple[str, str]] = []
    for der in card.certificates:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as e:
            raise MalformedError(f"card certificate: {e}", field="tls") from e
        pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        certs.append((spki_fingerprint(cert), pem))
    store.peers.accept_card(peer.name, card.serial, note, certs)
    return card
