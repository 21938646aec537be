"""TLS identity of a node: key, self-signed certificate, SPKI fingerprint.

Layer: node (beside storage; imports only protocol-free libraries). Performs no
network I/O; :func:`write_node_identity` writes two files, the context
builders read the node's key and certificate.

Peers identify each other by the SHA-256 fingerprint of the certificate's
SubjectPublicKeyInfo, pinned from the node's card, so a node's certificate can
be renewed without changing its identity as long as the key stays.

Mutual TLS is pinned through the trust store rather than through a CA: the
server trusts exactly the self-signed certificates of its known peers, and a
client trusts exactly the certificate on the card of the server it calls. That
keeps OpenSSL's signature and validity checks (an expired certificate fails the
handshake), which fingerprint pinning in aiohttp would switch off. The trust
store only decides who may *connect*; who may *read* is decided again on every
request from the SPKI fingerprint (:func:`peer_spki`), because a keep-alive
connection outlives any change to the trust store.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import ipaddress
import secrets
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.config import make_private_dir, write_private_file
from node.errors import ConfigError

__all__ = [
    "CERT_VALIDITY_DAYS",
    "MIN_TLS_VERSION",
    "add_trusted_cert",
    "certificate_expiry",
    "check_server_context",
    "check_tls_server_context",
    "client_ssl_context",
    "peer_spki",
    "public_client_ssl_context",
    "public_server_ssl_context",
    "reload_identity",
    "server_ssl_context",
    "spki_fingerprint",
    "spki_from_der",
    "write_node_identity",
]

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
    # A renewed certificate of the same node is trusted beside the old one
    # (``hashmesh tls renew``); OpenSSL finds a self-signed certificate's
    # issuer in the trust store by name, so each name is made unique, and
    # the key identifiers tell the two apart as well.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, secrets.token_hex(8)),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
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
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    make_private_dir(key_path.parent)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private_file(key_path, pem)
    write_private_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return spki_fingerprint(cert)


@functools.lru_cache(maxsize=256)
def certificate_expiry(pem: str) -> datetime.datetime:
    """When a PEM certificate stops being valid (its notAfter, in UTC).

    Cached: a page listing every peer asks for the same few certificates.

    Raises:
        ConfigError: if ``pem`` is not a PEM certificate.
    """
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as e:
        raise ConfigError(f"not a PEM certificate: {e}") from e
    return cert.not_valid_after_utc


def spki_fingerprint(cert: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the certificate's SubjectPublicKeyInfo (DER)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


MIN_TLS_VERSION = ssl.TLSVersion.TLSv1_2
"""Oldest TLS version either side accepts; OpenSSL negotiates 1.3 when both can."""


def _load_identity(ctx: ssl.SSLContext, cert_path: Path, key_path: Path) -> None:
    try:
        ctx.load_cert_chain(certfile=cert_path, keyfile=key_path)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(
            f"cannot load the TLS identity {cert_path} / {key_path}: {e}; "
            "the node directory may be incomplete"
        ) from e


def reload_identity(ctx: ssl.SSLContext, cert_path: Path, key_path: Path) -> None:
    """Present the certificate and key now in the files on new handshakes.

    ``hashmesh serve`` calls it on SIGHUP (``systemctl reload``), e.g. after
    ``hashmesh tls retire-old``; open connections keep their certificate.

    Raises:
        ConfigError: if the files cannot be loaded (the context is unchanged).
    """
    _load_identity(ctx, cert_path, key_path)


def add_trusted_cert(ctx: ssl.SSLContext, pem: str) -> None:
    """Trust one more self-signed peer certificate for new handshakes.

    Connections already open are not affected; authorisation on every request
    covers them.

    Args:
        ctx: a context made by :func:`server_ssl_context`.
        pem: the peer's PEM certificate, from its card.

    Raises:
        ConfigError: if ``pem`` is not a PEM certificate.
    """
    try:
        x509.load_pem_x509_certificate(pem.encode("ascii"))
        ctx.load_verify_locations(cadata=pem)
    except (ValueError, UnicodeEncodeError, ssl.SSLError) as e:
        raise ConfigError(f"tls_cert is not a usable PEM certificate: {e}") from e


def check_server_context(ctx: ssl.SSLContext) -> None:
    """Refuse a server context that would let a client in without a certificate.

    Called by the server start path on whatever context it is handed, so a
    context built elsewhere (``CERT_OPTIONAL``, ``CERT_NONE``, a client
    context, TLS 1.0) stops startup instead of serving hash data.

    Raises:
        ConfigError: naming what is wrong with the context.
    """
    check_tls_server_context(ctx)
    if ctx.verify_mode is not ssl.CERT_REQUIRED:
        raise ConfigError(
            f"server TLS context must require client certificates (CERT_REQUIRED), "
            f"not {ctx.verify_mode.name}; refusing to serve"
        )


def check_tls_server_context(ctx: ssl.SSLContext) -> None:
    """Refuse a context that is not a TLS 1.2+ server context (client certificates aside).

    The public listener's check; :func:`check_server_context` adds the
    client-certificate requirement of the API.

    Raises:
        ConfigError: naming what is wrong with the context.
    """
    if ctx.protocol is not ssl.PROTOCOL_TLS_SERVER:
        raise ConfigError(f"server TLS context must be PROTOCOL_TLS_SERVER, not {ctx.protocol!r}")
    # MINIMUM_SUPPORTED is a magic value below every real version.
    if ctx.minimum_version is ssl.TLSVersion.MINIMUM_SUPPORTED or (
        ctx.minimum_version < MIN_TLS_VERSION
    ):
        raise ConfigError(
            f"server TLS context allows {ctx.minimum_version.name}; the minimum is TLSv1_2"
        )


def server_ssl_context(
    cert_path: Path, key_path: Path, trusted_peer_certs: Iterable[str]
) -> ssl.SSLContext:
    """The server side of mutual TLS: present our certificate, require the peer's.

    Args:
        cert_path: the node's PEM certificate.
        key_path: the node's PEM private key.
        trusted_peer_certs: PEM certificates of every known peer (any role).

    Returns:
        A context for ``TCPSite(ssl_context=...)``. With no peers yet it is
        valid but every handshake fails.

    Raises:
        ConfigError: if the identity files or a peer certificate cannot be loaded.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_TLS_VERSION
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_identity(ctx, cert_path, key_path)
    for pem in trusted_peer_certs:
        add_trusted_cert(ctx, pem)
    check_server_context(ctx)
    return ctx


def public_server_ssl_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """The public listener's server side: the node's certificate, no client certificate.

    Only :func:`node.api.server.start_public_server` accepts it, and only
    with the public application (the public tree, nothing else).

    Raises:
        ConfigError: if the identity files cannot be loaded.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_TLS_VERSION
    ctx.verify_mode = ssl.CERT_NONE
    _load_identity(ctx, cert_path, key_path)
    return ctx


def client_ssl_context(cert_path: Path, key_path: Path, server_cert_pem: str) -> ssl.SSLContext:
    """The client side of mutual TLS towards one peer.

    Trusts only that peer's certificate, so the pin is the identity and the
    host name is not checked (peers are often reached by IP address).

    Args:
        cert_path: our PEM certificate (presented to the server).
        key_path: our PEM private key.
        server_cert_pem: the server's certificate from its card.

    Raises:
        ConfigError: if a file or the server certificate cannot be loaded.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = MIN_TLS_VERSION
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        x509.load_pem_x509_certificate(server_cert_pem.encode("ascii"))
        ctx.load_verify_locations(cadata=server_cert_pem)
    except (ValueError, UnicodeEncodeError, ssl.SSLError) as e:
        raise ConfigError(f"the server's tls_cert is not a usable PEM certificate: {e}") from e
    _load_identity(ctx, cert_path, key_path)
    return ctx


def public_client_ssl_context(ca_path: Path | None = None) -> ssl.SSLContext:
    """A server-authenticated TLS client with no certificate of its own.

    For reading what a log publishes to anyone (its tlog-tiles): the server
    is verified, host name included, against the system's trust store, or
    against ``ca_path`` alone (e.g. a node's self-signed certificate, whose
    names include ``localhost`` and ``127.0.0.1``).

    Raises:
        ConfigError: if ``ca_path`` cannot be read as PEM certificates.
    """
    if ca_path is None:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the host name by default
        try:
            ctx.load_verify_locations(cafile=str(ca_path))
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"--ca {ca_path}: not a readable PEM certificate: {e}") from e
    ctx.minimum_version = MIN_TLS_VERSION
    return ctx


@functools.lru_cache(maxsize=1024)
def spki_from_der(der: bytes) -> str:
    """SPKI fingerprint of a DER certificate (cached: asked on every request).

    Raises:
        ValueError: if ``der`` is not a certificate.
    """
    return spki_fingerprint(x509.load_der_x509_certificate(der))


class _HasTransport(Protocol):
    @property
    def transport(self) -> asyncio.BaseTransport | None: ...


def peer_spki(request: _HasTransport) -> str | None:
    """SPKI fingerprint of the client certificate of a request's connection.

    Args:
        request: an aiohttp request (anything with a ``transport``).

    Returns:
        The fingerprint, or None if the connection is not TLS, is closed, or
        carries no verified client certificate.
    """
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        return spki_from_der(der)
    except ValueError:
        return None
