"""TLS commands: renew the node's certificate, retire the old one, show expiries.

Layer: node.cli (composition root). The signed card and its checks are
:mod:`node.ledger.cards` and :mod:`protocol.card`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from urllib.parse import urlsplit

from node.cli.output import Command, Output
from node.config import load_config, parse_listen, resolve_node_dir
from node.errors import ConfigError
from node.ledger import Ledger
from node.ledger.cards import CertificateExpiry, load_certificates, next_card
from node.ledger.database import Database
from node.sync.cards import Presented, present_to_peers
from node.tls import spki_fingerprint, write_node_identity

__all__ = ["print_expiry_warnings", "register"]


def print_expiry_warnings(expiries: list[CertificateExpiry], out: Output) -> None:
    """One WARNING line per certificate expiring soon (``status``, ``peer list``)."""
    for expiry in expiries:
        if expiry.warning:
            out.note(f"WARNING: {expiry.describe()}; {expiry.advice}")


def _remove(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _present(node_dir: Path, note: str, cert: Path, key: Path) -> list[Presented]:
    """Present ``note`` to every peer of role peer, connecting as ``cert``/``key``."""

    async def run() -> list[Presented]:
        db = await Database.open(node_dir, readers=1)
        try:
            return await present_to_peers(db, note, cert_path=cert, key_path=key)
        finally:
            await db.close()

    return asyncio.run(run())


def _report_presented(presented: list[Presented], serial: int, out: Output) -> None:
    for p in presented:
        out.print(f"card presented to {p.describe(serial)}")
    if any(p.error for p in presented):
        out.note(
            "`hashmesh serve` presents the card again on each sync round until they have it "
            "(or run `hashmesh tls present`)"
        )


def cmd_tls_renew(args: argparse.Namespace, out: Output) -> int:
    node_dir = resolve_node_dir(args.dir)
    config = load_config(node_dir)
    if config.tls_next_cert_path.exists() or config.tls_next_key_path.exists():
        raise ConfigError(
            f"a renewed certificate is waiting in {config.tls_next_cert_path}; run "
            "`hashmesh tls retire-old` to put it in use before renewing again"
        )
    url = config.card_url(args.advertise_url)
    host = urlsplit(url).hostname or parse_listen(config.listen)[0]
    spki = write_node_identity(
        config.tls_next_key_path, config.tls_next_cert_path, common_name=config.origin, host=host
    )
    try:
        card = next_card(config, url, [config.tls_next_cert_path, config.tls_cert_path])
        with Ledger.open(node_dir) as ledger:
            ledger.sign_card(card)
    except BaseException:
        _remove(config.tls_next_key_path, config.tls_next_cert_path)
        raise
    (cert,) = load_certificates(config.tls_next_cert_path.read_text(encoding="ascii"))
    out.print(
        f"new TLS certificate sha256:{spki} valid until "
        f"{cert.not_valid_after_utc:%Y-%m-%d}, in {config.tls_next_cert_path}"
    )
    out.print(
        f"signed card (serial {card.serial}) served at GET /v1/card, listing both certificates"
    )
    note = _own_card(node_dir)
    _report_presented(
        _present(node_dir, note, config.tls_cert_path, config.tls_key_path), card.serial, out
    )
    out.note(
        "nodes that poll this one fetch the card on their next sync, the nodes it connects to "
        "were just presented it, and `hashmesh audit --dir` presents it to the nodes it "
        "audits: each trusts both certificates. This node keeps presenting the old one until "
        "`hashmesh tls retire-old`, well before the old one expires"
    )
    return 0


def _own_card(node_dir: Path) -> str:
    with Ledger.open(node_dir, read_only=True) as ledger:
        note = ledger.signed_card()
    if note is None:
        raise ConfigError("this node has no signed card; run `hashmesh tls renew`")
    return note


def cmd_tls_present(args: argparse.Namespace, out: Output) -> int:
    node_dir = resolve_node_dir(args.dir)
    config = load_config(node_dir)
    note = _own_card(node_dir)
    with Ledger.open(node_dir, read_only=True) as ledger:
        serial = ledger.own_card_serial()
    presented = _present(node_dir, note, config.tls_cert_path, config.tls_key_path)
    if not presented:
        out.note("no peer of role 'peer' to present the card to")
    _report_presented(presented, serial, out)
    return 1 if any(p.error for p in presented) else 0


def cmd_tls_retire_old(args: argparse.Namespace, out: Output) -> int:
    node_dir = resolve_node_dir(args.dir)
    config = load_config(node_dir)
    if not config.tls_next_cert_path.exists() or not config.tls_next_key_path.exists():
        raise ConfigError("no renewed certificate is waiting; run `hashmesh tls renew` first")
    (old,) = load_certificates(config.tls_cert_path.read_text(encoding="ascii"))[:1]
    # Every node this one connects to must hold the card listing the renewed
    # certificate first: after the switch, one that does not refuses it.
    renewal = _own_card(node_dir)
    with Ledger.open(node_dir, read_only=True) as ledger:
        serial = ledger.own_card_serial()
    missing = [
        p
        for p in _present(node_dir, renewal, config.tls_cert_path, config.tls_key_path)
        if p.error is not None or (p.answer is not None and p.answer.serial < serial)
    ]
    if missing and not args.force:
        raise ConfigError(
            "not retired: "
            + "; ".join(p.describe(serial) for p in missing)
            + ". They would refuse the renewed certificate; retry when they have the card, or "
            "pass --force to retire anyway"
        )
    card = next_card(config, config.card_url(args.advertise_url), [config.tls_next_cert_path])
    with Ledger.open(node_dir) as ledger:
        ledger.sign_card(card)
    # The key first: a crash between the two renames leaves a pair the
    # certificate check of `serve` names, and the new card already issued.
    os.replace(config.tls_next_key_path, config.tls_key_path)
    os.replace(config.tls_next_cert_path, config.tls_cert_path)
    out.print(
        f"retired sha256:{spki_fingerprint(old)}; the renewed certificate is now in use and the "
        f"signed card (serial {card.serial}) lists only it"
    )
    _report_presented(
        _present(node_dir, _own_card(node_dir), config.tls_cert_path, config.tls_key_path),
        card.serial,
        out,
    )
    out.note(
        "a running `hashmesh serve` presents it within a second (or `systemctl reload "
        "hashmesh`); nodes drop the old certificate when they fetch or are presented the new card"
    )
    return 0


def cmd_tls_status(args: argparse.Namespace, out: Output) -> int:
    with Ledger.open(resolve_node_dir(args.dir), read_only=True) as ledger:
        expiries = ledger.certificate_expiries()
    if args.json:
        out.json(
            [
                {
                    "holder": e.holder,
                    "spki": e.spki,
                    "not_after": e.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "days_left": e.days_left,
                    "warning": e.warning,
                }
                for e in expiries
            ]
        )
        return 0
    for expiry in expiries:
        out.print(("WARNING " if expiry.warning else "ok      ") + expiry.describe())
    return 0


def _need_sub(args: argparse.Namespace, out: Output) -> int:
    out.note("error: name an action: renew, retire-old or status (see `hashmesh tls --help`)")
    return 2


def register(command: Command, common: argparse.ArgumentParser) -> None:
    """Add the ``tls`` commands to the ``hashmesh`` parser."""
    p = command(
        "tls",
        _need_sub,
        "renew the node's TLS certificate without re-exchanging cards",
        "Certificate renewal (docs/operations.md): `tls renew` makes a new key and "
        "certificate and a card listing old and new, signed with the log's key. Nodes that "
        "poll this one fetch it (GET /v1/card) on their next sync; the nodes this one "
        "connects to are presented it (POST /v1/peer-card) by `tls renew` and `serve`, "
        "and the nodes an auditor audits by `audit --dir`. Each checks it with the key it "
        "pinned for this node and trusts both. `tls retire-old` puts the new one in use and "
        "signs a card without the old one. `tls status` lists every certificate's expiry.",
    )
    sub = p.add_subparsers(dest="tls_command", required=True, metavar="ACTION")
    for name, run, help_text in (
        (
            "renew",
            cmd_tls_renew,
            "new TLS key and certificate, and a signed card listing both, presented to the "
            "nodes this one connects to",
        ),
        (
            "retire-old",
            cmd_tls_retire_old,
            "use the renewed certificate and stop listing the old (refused while a node this "
            "one connects to lacks the renewed card)",
        ),
    ):
        q = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        q.add_argument(
            "--advertise-url",
            metavar="URL",
            help="the URL the signed card carries (default: [api] advertise, else listen)",
        )
        q.set_defaults(run=run)
    q.add_argument(
        "--force",
        action="store_true",
        help="retire although some node could not be given the renewed card (it will "
        "refuse this node until it gets the new card by hand)",
    )
    q = sub.add_parser(
        "present",
        help="present the signed card again to every peer of role peer (POST /v1/peer-card)",
        description="Present this node's signed card to every peer of role 'peer' (the "
        "nodes it connects to), over the certificate in use; each checks it with the key it "
        "pinned for this node and trusts the certificates it lists. `tls renew`, `tls "
        "retire-old` and `serve` do this by themselves; exit status 1 if some could not "
        "be given it.",
        parents=[common],
    )
    q.set_defaults(run=cmd_tls_present)
    q = sub.add_parser(
        "status",
        help="expiry of the own and every peer's certificate (warns [ops] "
        "certificate_warn_days ahead, 30 by default)",
        parents=[common],
    )
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(run=cmd_tls_status)
