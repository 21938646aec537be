"""Node directory layout and its TOML config file.

Layer: node (bottom). Reads and writes files in the node directory only.

A node directory holds::

    config.toml        settings, with comments (written by ``hashmesh init``)
    signing.key        the log's Ed25519 note signing key (mode 0600)
    tls/node.key       the node's TLS private key (mode 0600)
    tls/node.crt       the node's self-signed TLS certificate (pinned by peers)
    ledger.db          the SQLite database (WAL mode)
    RECOVERING         only after `hashmesh restore`, until the own log is recovered
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from node.errors import ConfigError
from protocol.errors import MalformedError
from protocol.keys import SIG_COSIGNATURE_V1, NoteVerifier

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_DIR",
    "DEFAULT_LISTEN",
    "DEFAULT_MAX_HITS",
    "DEFAULT_MIN_QUALITY",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "ApiLimits",
    "ApiSettings",
    "ConnectionSettings",
    "LogSettings",
    "MatchSettings",
    "NodeConfig",
    "OpsSettings",
    "PublicSettings",
    "ScrubSettings",
    "SyncSettings",
    "WitnessAsk",
    "WitnessRequirement",
    "WitnessSettings",
    "append_witness_setting",
    "available_cores",
    "check_advertise_url",
    "check_origin",
    "listen_url",
    "load_config",
    "make_private_dir",
    "parse_listen",
    "render_config",
    "resolve_node_dir",
    "write_private_file",
]

DEFAULT_DIR = ".hashmesh"
DEFAULT_LISTEN = "127.0.0.1:8443"
CONFIG_FILE = "config.toml"
DIR_ENV = "HASHMESH_DIR"

# C2SP tlog-checkpoint recommends a schema-less URL as origin; it is also the
# note key name, so it must not contain whitespace or '+'.
_ORIGIN = re.compile(r"[a-z0-9][a-z0-9.-]*(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~-]+)*")
MAX_ORIGIN_LENGTH = 255


def check_origin(origin: str) -> str:
    """Check that ``origin`` is a usable log origin and return it.

    Args:
        origin: e.g. ``hotline-a.example/hashmesh``.

    Returns:
        The origin unchanged.

    Raises:
        ConfigError: if it is not a lower-case host name with an optional path.
    """
    if len(origin) > MAX_ORIGIN_LENGTH or not _ORIGIN.fullmatch(origin):
        raise ConfigError(
            f"origin {origin!r} is not valid: use a lower-case host name and "
            "optional path, like 'hotline.example.org/hashmesh'"
        )
    return origin


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6) into host and port.

    Raises:
        ConfigError: if the value is not HOST:PORT with a port in 0..65535.
    """
    match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})", value)
    if not match or int(match.group(2)) > 65535:
        raise ConfigError(f"listen address {value!r} is not HOST:PORT")
    return match.group(1).strip("[]"), int(match.group(2))


def write_private_file(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Write ``path`` readable and writable by its owner only (0600) whatever the umask, and fsync.

    Args:
        path: where.
        data: the whole content.
        replace: overwrite an existing file (its mode is set to 0600 too); by
            default the file must not exist (``FileExistsError``).
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode on O_TRUNC
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dir(path: Path) -> None:
    """Create the directory ``path`` (and missing parents) accessible by its owner only (0700).

    An existing directory is left as it is.
    """
    if path.is_dir():
        return
    path.mkdir(mode=0o700, parents=True)
    path.chmod(0o700)  # mkdir's mode is filtered by the umask, never widened by it


def check_advertise_url(url: str) -> str:
    """Check a URL peers can reach this node at (``https://HOST:PORT``) and return it.

    Raises:
        ConfigError: if it is not ``https://HOST[:PORT]`` without a path, or
            its host is an any-address (``0.0.0.0``, ``::``) no peer can dial.
    """
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"advertised URL {url!r} has an invalid port") from None
    if (
        parts.scheme != "https"
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username
    ):
        raise ConfigError(f"advertised URL must be https://HOST:PORT, not {url!r}")
    if parts.hostname in _ANY_HOST:
        raise ConfigError(
            f"advertised URL {url!r} names an any-address; give the host name or address peers dial"
        )
    return url.rstrip("/")


def listen_url(listen: str) -> str:
    """``https://HOST:PORT`` for a ``HOST:PORT`` listen address (IPv6 in brackets)."""
    host, port = parse_listen(listen)
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{port}"


def resolve_node_dir(arg: str | None) -> Path:
    """The node directory: ``--dir``, else ``$HASHMESH_DIR``, else ``./.hashmesh``."""
    return Path(arg or os.environ.get(DIR_ENV) or DEFAULT_DIR)


DEFAULT_MIN_QUALITY = 50
"""Default ``[match] min_quality``: Meta advises not to trust a PDQ hash of lower quality."""

DEFAULT_MAX_HITS = 1_000
"""Default ``[match] max_hits``: PDQ hits returned per query."""

DEFAULT_WORKER_READ_MAX = 1_000_000
"""Default ``[match] worker_read_max``: PDQ rows a match worker reads itself (a few seconds)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchSettings:
    """The ``[match]`` table of ``config.toml`` (see docs/matching.md).

    Attributes:
        hide_disputed_by: hide a hit when at least this many trusted origins'
            latest opinion of it is ``dispute`` or ``false-positive``; 0 never
            hides.
        trusted_origins: whose opinions count; None means this node's own
            origin and every followed origin.
        min_quality: PDQ quality (0-100) below which a stored hash takes no
            part in near-matching (exact look-ups still find it) and a query
            is looked up exactly only, with a warning.
        max_hits: most PDQ hits returned per query (the nearest); a query
            with more is flagged ``truncated``.
        worker_read_max: most PDQ rows beyond the index file
            (``index/pdq.seg``) that each of ``serve``'s match workers reads
            from the database itself; with more (a first start at size, a
            file of another version), the workers wait for ``serve`` to
            write the file and PDQ queries are answered 503 meanwhile.
    """

    hide_disputed_by: int = 0
    trusted_origins: tuple[str, ...] | None = None
    min_quality: int = DEFAULT_MIN_QUALITY
    max_hits: int = DEFAULT_MAX_HITS
    worker_read_max: int = DEFAULT_WORKER_READ_MAX


@dataclass(frozen=True, slots=True, kw_only=True)
class WitnessAsk:
    """A ``[[witness.ask]]`` entry: a peer asked to cosign our own checkpoints.

    Attributes:
        peer: the peer's name (a row of ``peers``, role ``peer``).
        key: the witness's cosignature/v1 verifier key (what it prints with
            ``hashmesh witness vkey``); its answers are checked against it.
    """

    peer: str
    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WitnessRequirement:
    """A ``[[witness.require]]`` entry: the k-of-n policy for a followed origin.

    Attributes:
        origin: the followed origin.
        keys: the witnesses' cosignature/v1 verifier keys.
        threshold: how many of them must have cosigned a checkpoint.
    """

    origin: str
    keys: tuple[str, ...]
    threshold: int

    def verifiers(self) -> tuple[NoteVerifier, ...]:
        """The witness keys, parsed (checked when the config was loaded)."""
        return tuple(NoteVerifier.from_text(k) for k in self.keys)


@dataclass(frozen=True, slots=True, kw_only=True)
class WitnessSettings:
    """The ``[witness]`` table of ``config.toml`` (see docs/witness.md)."""

    ask: tuple[WitnessAsk, ...] = ()
    require: tuple[WitnessRequirement, ...] = ()

    def requirement_for(self, origin: str) -> WitnessRequirement | None:
        """The policy for checkpoints of ``origin``, if one is configured."""
        for requirement in self.require:
            if requirement.origin == origin:
                return requirement
        return None

    def known_keys(self, origin: str) -> tuple[NoteVerifier, ...]:
        """Every witness key this node knows for ``origin``: its policy's, then those it asks."""
        keys = list(self.require_keys(origin))
        for ask in self.ask:
            verifier = NoteVerifier.from_text(ask.key)
            if verifier not in keys:
                keys.append(verifier)
        return tuple(keys)

    def require_keys(self, origin: str) -> tuple[NoteVerifier, ...]:
        """The witness keys of the policy for ``origin`` (empty without one)."""
        requirement = self.requirement_for(origin)
        return () if requirement is None else requirement.verifiers()


_ANY_HOST = frozenset({"0.0.0.0", "::"})  # noqa: S104 - recognised, not bound

DEFAULT_PUBLIC_RATE = 50.0
DEFAULT_PUBLIC_BURST = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class PublicSettings:
    """The ``[public]`` table of ``config.toml``: the public read listener (docs/api.md).

    Attributes:
        listen: ``HOST:PORT`` of the public HTTPS listener (no client
            certificate; the public tree only); None (the default) starts none.
        rate: requests per second each client IP may sustain (token bucket).
        burst: requests a client IP may make at once before ``rate`` applies.
    """

    listen: str | None = None
    rate: float = DEFAULT_PUBLIC_RATE
    burst: int = DEFAULT_PUBLIC_BURST


DEFAULT_SCRUB_RATE = 200.0
DEFAULT_SCRUB_SLICE = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class ScrubSettings:
    """The ``[scrub]`` table of ``config.toml``: the scrub of ``serve`` (docs/integrity.md).

    Attributes:
        entries_per_second: the pace (200: ten million entries in about
            fourteen hours); 0 turns the scrub off.
        slice: entries read and checked at a time, in one read.
    """

    entries_per_second: float = DEFAULT_SCRUB_RATE
    slice: int = DEFAULT_SCRUB_SLICE


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiLimits:
    """The ``[api]`` table: caps and timings of the mutual-TLS API (docs/configuration.md)."""

    max_page: int = 10_000
    """Most entries or leaf hashes one page returns."""
    max_streams: int = 64
    """Most event streams open at once; more get 503."""
    ping_interval: float = 15.0
    """Seconds between ``: ping`` comments on an idle event stream."""
    handler_timeout: float = 30.0
    """Seconds a (non-streaming) request may take before it is answered 503."""
    client_max_size: int = 64 * 1024
    """Largest request body accepted by routes without their own cap."""
    peer_rate: float = 100.0
    """Requests per second each peer may sustain (token bucket); more get 429."""
    peer_burst: int = 400
    """Requests a peer may make at once before :attr:`peer_rate` applies."""
    heavy_workers: int = 1
    """Heavy requests (matching, entry pages and bundles, leaf-hash pages,
    inclusion proofs) running at once; keep it below the database's reader
    threads (3), so a reader is always free for light requests. One: their
    work is mostly Python under the GIL, so a second one adds little
    throughput and delays the event loop (docs/benchmarks.md)."""
    heavy_queue: int = 32
    """Heavy requests that may wait for a worker; more get 503 with ``Retry-After``."""
    workers: int = field(default_factory=available_cores)
    """Worker processes that answer bulk matches (``/v1/match``) off the server's
    process, each with its own read-only database connection and interpreter
    (no shared GIL with the event loop); default: one per core. 0 matches in
    the server's own reader threads instead (one process)."""
    worker_nice: int = 10
    """How much lower the worker processes' CPU priority is than the server's
    (``nice``, 0-19), so the event loop wins a contended core."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncSettings:
    """The ``[sync]`` table: timing of the sync loop (and of the witness loop)."""

    poll_interval: float = 30.0
    """Seconds between polls of a healthy peer when no announcement arrives."""
    min_backoff: float = 1.0
    """Seconds before retrying a peer after its first failure."""
    max_backoff: float = 300.0
    """The backoff doubles after each failure up to this many seconds."""
    peer_refresh: float = 1.0
    """Seconds between reads of the peer list (``peer add`` takes effect)."""


_Settings = TypeVar("_Settings", "ApiLimits", "SyncSettings")

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True, slots=True, kw_only=True)
class LogSettings:
    """The ``[log]`` table: what ``hashmesh serve`` logs, and how.

    Attributes:
        level: the least severe level written (``debug`` .. ``error``).
        format: ``text`` (one human line per record) or ``json`` (one JSON
            object per line).
        access: write the access log (one line per API request).
    """

    level: str = "info"
    format: str = "text"
    access: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class OpsSettings:
    """The ``[ops]`` table of ``config.toml``: the operations listener (docs/configuration.md).

    Attributes:
        listen: ``HOST:PORT`` of the plain-HTTP listener serving ``/healthz``,
            ``/readyz`` and ``/metrics``; None (the default) starts none.
        token: the bearer token every request must carry (from ``token`` or
            the file named by ``token_file``); None asks for none, which is
            only allowed on a loopback address.
        peer_failing_after: seconds a peer may keep failing before
            ``/readyz`` reports the node not ready.
        certificate_warn_days: ``/readyz`` reports the node not ready when
            its own TLS certificate expires within this many days (and
            names peer certificates that do).
    """

    listen: str | None = None
    token: str | None = field(default=None, repr=False)
    peer_failing_after: float = 600.0
    certificate_warn_days: int = 30


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionSettings:
    """The ``[connections]`` table of ``config.toml``: what floods may hold (docs/configuration.md).

    Attributes:
        max_connections: connections past their TLS handshake, per listener.
        max_per_address: connections (handshaking or established) from one
            source address; more are closed at once.
        max_handshakes: TLS handshakes in progress at once, per listener; when
            all are taken, the address holding the most loses its oldest.
        handshake_timeout: seconds a TLS handshake may take.
        header_timeout: seconds a connection may take to send a complete
            request head, counted from the handshake or the previous
            response; an idle keep-alive connection is closed after it too.
        raise_open_files: raise the soft open-file limit to the hard limit
            when ``hashmesh serve`` starts.
    """

    max_connections: int = 512
    max_per_address: int = 64
    max_handshakes: int = 128
    handshake_timeout: float = 10.0
    header_timeout: float = 20.0
    raise_open_files: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    """The ``[api]`` table of ``config.toml``: the mutual-TLS API.

    Attributes:
        advertise: the URL peers reach this node at, put in its card
            (``https://HOST:PORT``); None derives it from ``listen``, which
            fails for an any-address like ``0.0.0.0``.
    """

    advertise: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Settings of one node, as read from ``config.toml``."""

    node_dir: Path
    origin: str
    listen: str = DEFAULT_LISTEN
    match: MatchSettings = MatchSettings()
    witness: WitnessSettings = WitnessSettings()
    public: PublicSettings = PublicSettings()
    ops: OpsSettings = OpsSettings()
    scrub: ScrubSettings = ScrubSettings()
    connections: ConnectionSettings = ConnectionSettings()
    api: ApiSettings = ApiSettings()
    limits: ApiLimits = ApiLimits()
    sync: SyncSettings = SyncSettings()
    log: LogSettings = LogSettings()

    def card_url(self, override: str | None = None) -> str:
        """The URL this node's card advertises: ``override``, ``[api] advertise``, or ``listen``.

        Raises:
            ConfigError: if the URL is invalid, or only ``listen`` is known
                and it is an any-address (peers could not dial it).
        """
        if override is not None:
            return check_advertise_url(override)
        if self.api.advertise is not None:
            return self.api.advertise
        host, _port = parse_listen(self.listen)
        if host in _ANY_HOST:
            raise ConfigError(
                f"this node listens on {self.listen!r}, which peers cannot dial; set "
                '[api] advertise = "https://HOST:PORT" in config.toml (or pass '
                "--advertise-url) with the address peers reach it at"
            )
        return listen_url(self.listen)

    @property
    def config_path(self) -> Path:
        """Path of config.toml."""
        return self.node_dir / CONFIG_FILE

    @property
    def database_path(self) -> Path:
        """Path of the SQLite database."""
        return self.node_dir / "ledger.db"

    @property
    def signing_key_path(self) -> Path:
        """Path of the note signing key (mode 0600)."""
        return self.node_dir / "signing.key"

    @property
    def witness_key_path(self) -> Path:
        """Path of the witness cosignature/v1 key (mode 0600, made on first use)."""
        return self.node_dir / "witness.key"

    @property
    def recovery_mark_path(self) -> Path:
        """Present while a restored node has not recovered its own log (it signs nothing)."""
        return self.node_dir / "RECOVERING"

    @property
    def tls_key_path(self) -> Path:
        """Path of the TLS private key (mode 0600)."""
        return self.node_dir / "tls" / "node.key"

    @property
    def tls_cert_path(self) -> Path:
        """Path of the TLS certificate."""
        return self.node_dir / "tls" / "node.crt"

    @property
    def tls_next_key_path(self) -> Path:
        """Path of the renewed TLS key (``tls renew``), in use after ``tls retire-old``."""
        return self.node_dir / "tls" / "next.key"

    @property
    def tls_next_cert_path(self) -> Path:
        """Path of the renewed TLS certificate, trusted by peers beside the current one."""
        return self.node_dir / "tls" / "next.crt"

    @property
    def signed_card_path(self) -> Path:
        """The card signed with the log key, served at ``GET /v1/card`` (after a renewal)."""
        return self.node_dir / "tls" / "card.note"


def render_config(config: NodeConfig) -> str:
    """The commented TOML text ``hashmesh init`` writes."""
    return f"""\
# hashmesh node configuration, written by `hashmesh init`.
# Paths are relative to this directory.

# The identity of this node's log. It is the first line of every checkpoint
# this node signs and the name of its verifier key. Never change it: peers
# and auditors know the log by this name.
origin = "{config.origin}"

# Address `hashmesh serve` listens on and advertises in the node's card.
listen = "{config.listen}"
{_render_api(config.api)}"""


def _render_api(api: ApiSettings) -> str:
    if api.advertise is None:
        return ""
    return f"""
[api]
# The URL peers reach this node at (its card carries it): needed when
# `listen` is an any-address such as 0.0.0.0, or behind NAT.
advertise = {json.dumps(api.advertise)}
"""


def load_config(node_dir: Path) -> NodeConfig:
    """Read ``config.toml`` from a node directory.

    Raises:
        ConfigError: if the directory is not a node or the file is invalid.
    """
    path = node_dir / CONFIG_FILE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(
            f"{node_dir} is not a hashmesh node (no {CONFIG_FILE}); create one "
            "with `hashmesh init --dir DIR --origin ORIGIN` or pass --dir"
        ) from e
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    known = {"origin", "listen", "match", "witness", "public", "ops", "scrub", "connections"}
    unknown = set(raw) - (known | {"api", "sync", "log"})
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
    origin = raw.get("origin")
    if not isinstance(origin, str):
        raise ConfigError(f"{path}: 'origin' must be a string")
    listen = raw.get("listen", DEFAULT_LISTEN)
    if not isinstance(listen, str):
        raise ConfigError(f"{path}: 'listen' must be a string like '127.0.0.1:8443'")
    parse_listen(listen)
    public = _public_settings(path, raw.get("public", {}), listen)
    # [api] holds the card's advertised URL and the API's limits.
    api_table = _section(
        path,
        "api",
        raw.get("api", {}),
        {"advertise", *(f.name for f in dataclasses.fields(ApiLimits))},
    )
    return NodeConfig(
        node_dir=node_dir,
        origin=check_origin(origin),
        listen=listen,
        match=_match_settings(path, raw.get("match", {})),
        witness=_witness_settings(path, raw.get("witness", {})),
        public=public,
        ops=_ops_settings(path, raw.get("ops", {}), (listen, public.listen)),
        scrub=_scrub_settings(path, raw.get("scrub", {})),
        connections=_connection_settings(path, raw.get("connections", {})),
        api=_api_settings(path, {k: v for k, v in api_table.items() if k == "advertise"}),
        limits=_numbers(
            path, "api", {k: v for k, v in api_table.items() if k != "advertise"}, ApiLimits()
        ),
        sync=_sync_settings(path, raw.get("sync", {})),
        log=_log_settings(path, raw.get("log", {})),
    )


def _connection_settings(path: Path, raw: object) -> ConnectionSettings:
    defaults = ConnectionSettings()
    table = _section(path, "connections", raw, set(ConnectionSettings.__dataclass_fields__))
    counts: dict[str, int] = {}
    for name in ("max_connections", "max_per_address", "max_handshakes"):
        value = table.get(name, getattr(defaults, name))
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
            raise ConfigError(f"{path}: connections.{name} must be a whole number, >= 1")
        counts[name] = value
    seconds: dict[str, float] = {}
    for name in ("handshake_timeout", "header_timeout"):
        value = table.get(name, getattr(defaults, name))
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
            raise ConfigError(f"{path}: connections.{name} must be seconds, > 0 and <= 3600")
        seconds[name] = float(value)
    raise_files = table.get("raise_open_files", defaults.raise_open_files)
    if not isinstance(raise_files, bool):
        raise ConfigError(f"{path}: connections.raise_open_files must be true or false")
    return ConnectionSettings(
        max_connections=counts["max_connections"],
        max_per_address=counts["max_per_address"],
        max_handshakes=counts["max_handshakes"],
        handshake_timeout=seconds["handshake_timeout"],
        header_timeout=seconds["header_timeout"],
        raise_open_files=raise_files,
    )


_MAY_BE_ZERO = frozenset({"workers", "worker_nice"})
"""Whole-number settings for which 0 means something (no worker processes; no lower priority)."""


def _numbers(path: Path, name: str, raw: object, defaults: _Settings) -> _Settings:
    """``defaults`` with the numbers of a ``[name]`` table (each > 0, typed like its default)."""
    table = _section(path, name, raw, {f.name for f in dataclasses.fields(defaults)})
    values: dict[str, Any] = {}
    for key, value in table.items():
        default = getattr(defaults, key)
        if isinstance(default, int):
            least = 0 if key in _MAY_BE_ZERO else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{path}: {name}.{key} must be a whole number, >= {least}")
            if key == "worker_nice" and value > 19:
                raise ConfigError(f"{path}: {name}.{key} must be a whole number 0-19")
        elif isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigError(f"{path}: {name}.{key} must be a number of seconds, > 0")
        values[key] = value if isinstance(default, int) else float(value)
    return dataclasses.replace(defaults, **values)


def _sync_settings(path: Path, raw: object) -> SyncSettings:
    settings = _numbers(path, "sync", raw, SyncSettings())
    if settings.min_backoff > settings.max_backoff:
        raise ConfigError(f"{path}: sync.min_backoff must not exceed sync.max_backoff")
    return settings


def _log_settings(path: Path, raw: object) -> LogSettings:
    table = _section(path, "log", raw, {"level", "format", "access"})
    level = table.get("level", "info")
    if level not in LOG_LEVELS:
        raise ConfigError(f"{path}: log.level must be one of {', '.join(LOG_LEVELS)}")
    fmt = table.get("format", "text")
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"{path}: log.format must be one of {', '.join(LOG_FORMATS)}")
    access = table.get("access", True)
    if not isinstance(access, bool):
        raise ConfigError(f"{path}: log.access must be true or false")
    return LogSettings(level=str(level), format=str(fmt), access=access)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def _ops_settings(path: Path, raw: object, taken: tuple[str | None, ...]) -> OpsSettings:
    table = _section(
        path,
        "ops",
        raw,
        {"listen", "token", "token_file", "peer_failing_after", "certificate_warn_days"},
    )
    defaults = OpsSettings()
    failing = table.get("peer_failing_after", defaults.peer_failing_after)
    if isinstance(failing, bool) or not isinstance(failing, int | float) or not failing > 0:
        raise ConfigError(f"{path}: ops.peer_failing_after must be seconds, > 0")
    warn_days = table.get("certificate_warn_days", defaults.certificate_warn_days)
    if isinstance(warn_days, bool) or not isinstance(warn_days, int) or warn_days < 0:
        raise ConfigError(f"{path}: ops.certificate_warn_days must be a whole number of days")
    listen = table.get("listen")
    if listen is None:
        return OpsSettings(peer_failing_after=float(failing), certificate_warn_days=warn_days)
    if not isinstance(listen, str):
        raise ConfigError(f"{path}: ops.listen must be a string like '127.0.0.1:9443'")
    try:
        host, port = parse_listen(listen)
    except ConfigError as e:
        raise ConfigError(f"{path}: ops.listen: {e}") from e
    for other in taken:
        if port != 0 and other == listen:
            raise ConfigError(
                f"{path}: ops.listen {listen!r} is already another listener's address; "
                "give the operations listener a port of its own"
            )
    token = table.get("token")
    token_file = table.get("token_file")
    if token is not None and token_file is not None:
        raise ConfigError(f"{path}: give ops.token or ops.token_file, not both")
    if token_file is not None:
        if not isinstance(token_file, str):
            raise ConfigError(f"{path}: ops.token_file must be a path (relative to the node)")
        try:
            token = (path.parent / token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: ops.token_file: cannot read it: {e}") from e
    if token is not None and (not isinstance(token, str) or len(token) < 16):
        raise ConfigError(f"{path}: ops.token must be a string of at least 16 characters")
    if token is None and not _is_loopback(host):
        raise ConfigError(
            f"{path}: ops.listen {listen!r} is not a loopback address; the operations "
            "listener is plain HTTP, so set ops.token (or ops.token_file) before "
            "serving it beyond this machine"
        )
    return OpsSettings(
        listen=listen,
        token=token,
        peer_failing_after=float(failing),
        certificate_warn_days=warn_days,
    )


def _scrub_settings(path: Path, raw: object) -> ScrubSettings:
    table = _section(path, "scrub", raw, {"entries_per_second", "slice"})
    rate = table.get("entries_per_second", DEFAULT_SCRUB_RATE)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1e9:
        raise ConfigError(
            f"{path}: scrub.entries_per_second must be a number >= 0 (0 turns the scrub off)"
        )
    size = table.get("slice", DEFAULT_SCRUB_SLICE)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 1_000_000:
        raise ConfigError(f"{path}: scrub.slice must be a whole number of entries, 1 to 1000000")
    return ScrubSettings(entries_per_second=float(rate), slice=size)


def _api_settings(path: Path, raw: object) -> ApiSettings:
    table = _section(path, "api", raw, {"advertise"})
    advertise = table.get("advertise")
    if advertise is not None:
        if not isinstance(advertise, str):
            raise ConfigError(f"{path}: api.advertise must be a string like 'https://host:8443'")
        try:
            advertise = check_advertise_url(advertise)
        except ConfigError as e:
            raise ConfigError(f"{path}: api.advertise: {e}") from e
    return ApiSettings(advertise=advertise)


def _public_settings(path: Path, raw: object, api_listen: str) -> PublicSettings:
    table = _section(path, "public", raw, {"listen", "rate", "burst"})
    listen = table.get("listen")
    if listen is not None:
        if not isinstance(listen, str):
            raise ConfigError(f"{path}: public.listen must be a string like '0.0.0.0:8444'")
        try:
            host, port = parse_listen(listen)
        except ConfigError as e:
            raise ConfigError(f"{path}: public.listen: {e}") from e
        api_host, api_port = parse_listen(api_listen)
        if port != 0 and port == api_port and (host == api_host or {host, api_host} & _ANY_HOST):
            raise ConfigError(
                f"{path}: public.listen {listen!r} is the mutual-TLS API's address "
                f"({api_listen!r}); give the public listener a port of its own"
            )
    rate = table.get("rate", DEFAULT_PUBLIC_RATE)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1e6:
        raise ConfigError(f"{path}: public.rate must be requests per second per client, > 0")
    burst = table.get("burst", DEFAULT_PUBLIC_BURST)
    if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= 1_000_000:
        raise ConfigError(f"{path}: public.burst must be a whole number of requests, >= 1")
    return PublicSettings(listen=listen, rate=float(rate), burst=burst)


def _section(path: Path, name: str, table: object, known: set[str]) -> dict[str, object]:
    """A ``[name]`` table of the config, refusing settings other than ``known``."""
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"{path}: unknown [{name}] setting(s) {', '.join(sorted(unknown))}")
    return table


def _match_settings(path: Path, raw: object) -> MatchSettings:
    table = _section(
        path,
        "match",
        raw,
        {"hide_disputed_by", "trusted_origins", "min_quality", "max_hits", "worker_read_max"},
    )
    hide = table.get("hide_disputed_by", 0)
    if isinstance(hide, bool) or not isinstance(hide, int) or hide < 0:
        raise ConfigError(f"{path}: match.hide_disputed_by must be a whole number (0 = never hide)")
    trusted = table.get("trusted_origins")
    if trusted is not None:
        if not isinstance(trusted, list) or not all(isinstance(o, str) for o in trusted):
            raise ConfigError(f"{path}: match.trusted_origins must be a list of origins")
        trusted = tuple(check_origin(o) for o in trusted)
    min_quality = _bounded_int(
        table, "min_quality", DEFAULT_MIN_QUALITY, (0, 100), f"{path}: match.min_quality"
    )
    max_hits = _bounded_int(
        table, "max_hits", DEFAULT_MAX_HITS, (1, 1_000_000), f"{path}: match.max_hits"
    )
    worker_read_max = _bounded_int(
        table,
        "worker_read_max",
        DEFAULT_WORKER_READ_MAX,
        (1, 1 << 40),
        f"{path}: match.worker_read_max",
    )
    return MatchSettings(
        hide_disputed_by=hide,
        trusted_origins=trusted,
        min_quality=min_quality,
        max_hits=max_hits,
        worker_read_max=worker_read_max,
    )


def _bounded_int(
    table: dict[str, object], key: str, default: int, bounds: tuple[int, int], where: str
) -> int:
    value = table.get(key, default)
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where} must be a whole number {low}-{high}")
    return value


def _witness_key(path: Path, where: str, text: object) -> str:
    if not isinstance(text, str):
        raise ConfigError(f"{path}: {where} must be a witness verifier key (a string)")
    try:
        verifier = NoteVerifier.from_text(text)
    except MalformedError as e:
        raise ConfigError(f"{path}: {where}: {e}") from e
    if verifier.sig_type != SIG_COSIGNATURE_V1:
        raise ConfigError(
            f"{path}: {where} must be a cosignature/v1 (0x04) witness key, from "
            "`hashmesh witness vkey` on the witness"
        )
    return text


def _witness_settings(path: Path, raw: object) -> WitnessSettings:
    table = _section(path, "witness", raw, {"ask", "require"})
    asks: list[WitnessAsk] = []
    for i, item in enumerate(_table_list(path, "witness.ask", table.get("ask", []))):
        where = f"witness.ask[{i}]"
        if set(item) != {"peer", "key"}:
            raise ConfigError(f"{path}: {where} needs exactly 'peer' and 'key'")
        if not isinstance(item["peer"], str) or not item["peer"]:
            raise ConfigError(f"{path}: {where}.peer must be a peer name")
        key = _witness_key(path, f"{where}.key", item["key"])
        if any(a.peer == item["peer"] for a in asks):
            raise ConfigError(f"{path}: {where}: peer {item['peer']!r} is listed twice")
        asks.append(WitnessAsk(peer=item["peer"], key=key))
    requires: list[WitnessRequirement] = []
    for i, item in enumerate(_table_list(path, "witness.require", table.get("require", []))):
        where = f"witness.require[{i}]"
        if set(item) != {"origin", "keys", "threshold"}:
            raise ConfigError(f"{path}: {where} needs exactly 'origin', 'keys' and 'threshold'")
        origin = item["origin"]
        if not isinstance(origin, str):
            raise ConfigError(f"{path}: {where}.origin must be an origin")
        check_origin(origin)
        if any(r.origin == origin for r in requires):
            raise ConfigError(f"{path}: {where}: origin {origin!r} has two policies")
        raw_keys = item["keys"]
        if not isinstance(raw_keys, list) or not raw_keys:
            raise ConfigError(f"{path}: {where}.keys must be a non-empty list of witness keys")
        keys = tuple(_witness_key(path, f"{where}.keys[{j}]", k) for j, k in enumerate(raw_keys))
        if len({NoteVerifier.from_text(k).name for k in keys}) != len(keys):
            raise ConfigError(f"{path}: {where}.keys names one witness twice")
        threshold = item["threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, int):
            raise ConfigError(f"{path}: {where}.threshold must be a whole number")
        if not 1 <= threshold <= len(keys):
            raise ConfigError(
                f"{path}: {where}.threshold {threshold} must be between 1 and the "
                f"{len(keys)} key(s) given"
            )
        requires.append(WitnessRequirement(origin=origin, keys=keys, threshold=threshold))
    return WitnessSettings(ask=tuple(asks), require=tuple(requires))


def _table_list(path: Path, where: str, value: object) -> list[dict[str, object]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{path}: {where} must be written as [[{where}]] tables")
    return value


def append_witness_setting(node_dir: Path, setting: WitnessAsk | WitnessRequirement) -> None:
    """Add a ``[[witness.ask]]`` or ``[[witness.require]]`` table to ``config.toml``.

    The table is appended as text, so the operator's comments are kept; the
    new file is loaded and checked before it replaces the old one (atomically),
    so a setting that makes the config invalid is never written.

    Raises:
        ConfigError: if the result is not a valid config (say, a peer or an
            origin already listed), naming the problem.
    """
    path = node_dir / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    if isinstance(setting, WitnessAsk):
        block = (
            "\n# Asked to cosign this node's checkpoints (`hashmesh witness add`).\n"
            f"[[witness.ask]]\npeer = {json.dumps(setting.peer)}\n"
            f"key = {json.dumps(setting.key)}\n"
        )
    else:
        keys = ", ".join(json.dumps(k) for k in setting.keys)
        block = (
            f"\n# Checkpoints of {setting.origin} need {setting.threshold} of these "
            "witnesses' cosignatures.\n"
            f"[[witness.require]]\norigin = {json.dumps(setting.origin)}\n"
            f"keys = [{keys}]\nthreshold = {setting.threshold}\n"
        )
    staged = path.with_name(path.name + ".new")
    body = (text if text.endswith("\n") else text + "\n") + block
    write_private_file(staged, body.encode("utf-8"), replace=True)
    try:
        raw = tomllib.loads(staged.read_text(encoding="utf-8"))
        _witness_settings(path, raw.get("witness", {}))
    except tomllib.TOMLDecodeError as e:
        staged.unlink()
        raise ConfigError(
            f"{path}: cannot add the setting ({e}); edit the [witness] table by hand"
        ) from e
    except ConfigError:
        staged.unlink()
        raise
    os.replace(staged, path)
