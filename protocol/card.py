"""Signed cards: a node's TLS certificates, signed with its log's key.

A node's certificate expires (825 days); its log key does not. So that its
peers can move to a new certificate without exchanging cards by hand, a
node signs, with the key its log's checkpoints are signed with, a signed
note (C2SP signed-note) listing the certificates it may present::

    hashmesh card v1
    origin hotline-a.example/hashmesh
    url https://hotline-a.example:8443
    serial 1767225600
    tls MIIBszCCAVmgAwIBAgIU...        (base64 DER, newest first)
    tls MIIBrzCCAVWgAwIBAgIU...

    — hotline-a.example/hashmesh Az3grlgt...

A peer checks it with the origin's *current* key (from the key chain it
replicates, never a key the card names), accepts only a larger ``serial``
than the card it holds (an old card cannot bring back a retired
certificate), and then trusts exactly the certificates listed. The first
line cannot begin a checkpoint (an origin has no spaces), so a card can
never be taken for one.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.encoding import decode_b64, encode_b64, parse_decimal
from protocol.errors import MalformedError, OriginMismatchError
from protocol.keys import SIG_ED25519, NoteSigner, NoteVerifier
from protocol.note import open_note, parse_note, sign_note

__all__ = ["CARD_HEADER", "MAX_CARD_BYTES", "SignedCard", "open_card", "sign_card"]

CARD_HEADER = "hashmesh card v1"
MAX_CARD_BYTES = 64 * 1024
"""Largest signed card accepted (a few certificates)."""
MAX_CARD_CERTIFICATES = 4
_MAX_CERT_BYTES = 8 * 1024


@dataclass(frozen=True, slots=True)
class SignedCard:
    """The body of a signed card.

    Attributes:
        origin: the log whose key signs the card.
        url: where the node is reached (``https://HOST:PORT``).
        serial: larger for every newer card of the origin.
        certificates: DER certificates the node may present, newest first.
    """

    origin: str
    url: str
    serial: int
    certificates: tuple[bytes, ...]

    def to_text(self) -> str:
        """The note text (the signed body)."""
        lines = [
            CARD_HEADER,
            f"origin {self.origin}",
            f"url {self.url}",
            f"serial {self.serial}",
        ]
        lines += [f"tls {encode_b64(der)}" for der in self.certificates]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str) -> SignedCard:
        """Parse a card body strictly.

        Raises:
            MalformedError: naming the line that is wrong.
        """
        lines = text.split("\n")
        if lines[-1] != "" or len(lines) < 6:
            raise MalformedError("a card has a header, origin, url, serial and tls lines")
        lines = lines[:-1]
        if lines[0] != CARD_HEADER:
            raise MalformedError(f"a card starts with {CARD_HEADER!r}", field="header")
        fields: list[str] = []
        for number, (line, key) in enumerate(
            zip(lines[1:4], ("origin", "url", "serial"), strict=True)
        ):
            prefix = f"{key} "
            if (
                not line.startswith(prefix)
                or len(line) == len(prefix)
                or " " in line[len(prefix) :]
            ):
                raise MalformedError(f"card line {number + 2} must be '{key} VALUE'", field=key)
            fields.append(line[len(prefix) :])
        serial = parse_decimal(fields[2], field="serial")
        certificates: list[bytes] = []
        for line in lines[4:]:
            if not line.startswith("tls "):
                raise MalformedError("card lines after serial must be 'tls BASE64'", field="tls")
            der = decode_b64(line[4:], field="tls")
            if not 0 < len(der) <= _MAX_CERT_BYTES:
                raise MalformedError("a card certificate is empty or too large", field="tls")
            certificates.append(der)
        if len(certificates) > MAX_CARD_CERTIFICATES:
            raise MalformedError(
                f"a card lists at most {MAX_CARD_CERTIFICATES} certificates", field="tls"
            )
        if len(set(certificates)) != len(certificates):
            raise MalformedError("a card lists one certificate twice", field="tls")
        return cls(fields[0], fields[1], serial, tuple(certificates))


def sign_card(card: SignedCard, signer: NoteSigner) -> str:
    """The signed card note, signed by the log's key.

    Raises:
        MalformedError: if the key is not the origin's Ed25519 log key.
    """
    if signer.name != card.origin or signer.sig_type != SIG_ED25519:
        raise MalformedError(
            f"a card of {card.origin!r} is signed by that log's Ed25519 key", field="signer"
        )
    text = card.to_text()
    SignedCard.from_text(text)  # what is signed must parse
    return sign_note(text, [signer])


def open_card(note: str | bytes, verifier: NoteVerifier) -> SignedCard:
    """Verify a signed card with the origin's current log key, then parse it.

    Args:
        note: the signed note as received.
        verifier: the key the origin's newest checkpoints are signed with
            (from the replicated key chain, not from the card).

    Raises:
        MalformedError: if the note or the card is malformed or too large.
        VerificationError: if ``verifier`` did not sign it (a card signed by
            any other key is refused), or it names another origin.
    """
    if len(note) > MAX_CARD_BYTES:
        raise MalformedError(f"a card is at most {MAX_CARD_BYTES} bytes", field="card")
    parsed = parse_note(note)
    opened = open_note(parsed, [verifier])
    card = SignedCard.from_text(opened.text)
    if card.origin != verifier.name:
        raise OriginMismatchError(
            f"the card is for {card.origin!r}, signed by the key of {verifier.name!r}"
        )
    return card
