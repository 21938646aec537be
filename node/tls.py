"""TLS identity of a node: key, self-signed certificate, SPKI fingerprint.

Layer: node (beside storage; imports only protocol-free libraries). Performs no
network I/O; :func:`write_node_identity` writes two files.

Peers identify each other by the SHA-256 fingerprint of the certificate's
SubjectPublicKeyInfo, pinned from the node's card, so a node's certificate can
be renewed without changing its identity as long as the key stays.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CERT_VALIDITY_DAYS", "spki_fingerprint", "write_node_identity"]

CERT_VALIDITY_DAYS = 825  # the longest validity common TLS clients accept


def _subject_alt_names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host and host != "localhost":
            names.append(x509.DNSName(host))
    else:
        if x509.IPAddress(address) not in names:
            names.append(x509.IPAddress(address))
    return names


def write_node_identity(key_path: Path, cert_path: Path, *, common_name: str, host: str) -> str:
    """Create a P-256 TLS key (mode 0600) and a self-signed certificate.

    The certificate carries both serverAuth and clientAuth, because a node is a
    server to its peers and a client when it syncs from them.

    Args:
        key_path: where to write the PEM private key.
        cert_path: where to write the PEM certificate.
        common_name: subject CN (the node's origin).
        host: the listen host, added to the subject alternative names.

    Returns:
        The SPKI fingerprint (lowercase hex SHA-256) of the new certificate.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(host)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return spki_fingerprint(cert)


def spki_fingerprint(cert: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the certificate's SubjectPublicKeyInfo (DER)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()
