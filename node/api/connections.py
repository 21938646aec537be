"""Connection limits: what a flood of idle or slow connections may hold.

Layer: node.api.

aiohttp's own listener accepts every connection and gives each TLS handshake
asyncio's default 60 s, so a few hundred sockets that never finish their
handshake exhaust the process's open files and lock real peers out (issue 14).
:class:`LimitedSite` replaces its accept loop:

* a connection is counted from the moment it is accepted, by its source
  address, before any TLS byte is read;
* at most ``max_per_address`` connections (handshaking or established) come
  from one address; more are closed at once;
* at most ``max_handshakes`` TLS handshakes run at a time, each for at most
  ``handshake_timeout`` seconds. When all are taken, a newcomer evicts the
  oldest handshake of the address holding the most of them, unless it is that
  address itself (then the newcomer is closed): a flood from some addresses
  can delay a real peer by one eviction, never lock it out;
* at most ``max_connections`` connections are established (handshake done);
  more are closed.

On the mutual-TLS API an established connection has presented a trusted
client certificate, so only peers can hold one; everyone else is bounded by
the handshake pool. A request head must then arrive within the header
timeout (aiohttp's keep-alive deadline, :func:`node.api.server.start_server`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_runner import BaseSite

from node.config import ConnectionSettings

__all__ = [
    "ConnectionCounts",
    "ConnectionGate",
    "HandshakeLog",
    "LimitedSite",
    "handshake_failure_reason",
    "raise_open_file_limit",
]

log = logging.getLogger("hashmesh.api")

_ACCEPT_RETRY = 0.1
"""Seconds the accept loop pauses when the process is out of file descriptors."""
_OPEN_FILES_CEILING = 1 << 20
"""The soft limit asked for when the hard limit is unlimited (Linux's nr_open default)."""


@dataclass(frozen=True, slots=True)
class ConnectionCounts:
    """A snapshot of a listener's connections, for status, metrics and tests.

    Attributes:
        handshaking: TLS handshakes in progress.
        established: connections past their handshake.
        refused: connections closed at accept (address or total cap).
        evicted: handshakes closed to make room for another address.
        timed_out: handshakes closed at the handshake timeout or failed.
        peak_handshaking: the most handshakes ever in progress at once.
        peak_established: the most established connections ever at once.
    """

    handshaking: int
    established: int
    refused: int
    evicted: int
    timed_out: int
    peak_handshaking: int
    peak_established: int


class HandshakeLog:
    """Logs refused TLS handshakes (source address and reason), rate-limited.

    A scanner or a misconfigured peer can fail thousands of handshakes a
    minute: at most ``burst`` lines are written at once and ``rate`` per
    second after that; the next line written says how many were left out.
    Every refusal is counted by ``on_refused(reason)`` (the metrics), logged
    or not.
    """

    def __init__(
        self,
        listener: str,
        on_refused: Callable[[str], None] | None = None,
        *,
        rate: float = 1 / 6,
        burst: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.listener = listener
        self._on_refused = on_refused
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()
        self.suppressed = 0

    def refused(self, address: str, error: BaseException) -> None:
        """A handshake from ``address`` failed with ``error``."""
        reason = handshake_failure_reason(error)
        if self._on_refused is not None:
            self._on_refused(reason)
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1:
            self.suppressed += 1
            return
        self._tokens -= 1
        more = f" ({self.suppressed} more refused since, not logged)" if self.suppressed else ""
        self.suppressed = 0
        log.warning(
            "refused a TLS handshake on the %s listener from %s: %s%s",
            self.listener,
            address,
            reason,
            more,
        )


def handshake_failure_reason(error: BaseException) -> str:
    """A short, bounded name for why a handshake failed (a log word and a metrics label)."""
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason).lower()  # OpenSSL's reason code, e.g. certificate_verify_failed
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, ConnectionResetError):
        return "connection_reset"
    if isinstance(error, ssl.SSLError):
        return "tls_error"
    return "os_error"


class ConnectionGate:
    """Counts connections per source address and decides who may connect.

    Attributes:
        handshakes: where refused TLS handshakes are logged and counted
            (none: not logged).
    """

    def __init__(
        self, settings: ConnectionSettings, handshakes: HandshakeLog | None = None
    ) -> None:
        self.settings = settings
        self.handshakes = handshakes
        # Per address, its handshakes oldest first (dict order), each task once.
        self._handshakes: dict[str, OrderedDict[asyncio.Task[None], None]] = {}
        self._handshaking = 0
        self._established: dict[str, int] = {}
        self._established_total = 0
        self._refused = 0
        self._evicted = 0
        self._timed_out = 0
        self._peak_handshaking = 0
        self._peak_established = 0

    def counts(self) -> ConnectionCounts:
        """The current counts."""
        return ConnectionCounts(
            handshaking=self._handshaking,
            established=self._established_total,
            refused=self._refused,
            evicted=self._evicted,
            timed_out=self._timed_out,
            peak_handshaking=self._peak_handshaking,
            peak_established=self._peak_established,
        )

    def _held(self, address: str) -> int:
        return len(self._handshakes.get(address, ())) + self._established.get(address, 0)

    def admit(self, address: str) -> bool:
        """Whether a connection just accepted from ``address`` may start its handshake.

        Makes room by evicting another address's oldest handshake when the
        handshake pool is full; the caller then calls :meth:`handshaking`.
        """
        limits = self.settings
        if self._held(address) >= limits.max_per_address:
            self._refused += 1
            return False
        if self._handshaking >= limits.max_handshakes:
            heaviest = max(self._handshakes, key=lambda a: len(self._handshakes[a]))
            if heaviest == address or len(self._handshakes[heaviest]) <= len(
                self._handshakes.get(address, ())
            ):
                self._refused += 1
                return False
            oldest = next(iter(self._handshakes[heaviest]))
            self._forget_handshake(heaviest, oldest)
            oldest.cancel()
            self._evicted += 1
        return True

    def handshaking(self, address: str, task: asyncio.Task[None]) -> None:
        """Count ``task`` as a handshake in progress from ``address``."""
        self._handshakes.setdefault(address, OrderedDict())[task] = None
        self._handshaking += 1
        self._peak_handshaking = max(self._peak_handshaking, self._handshaking)

    def _forget_handshake(self, address: str, task: asyncio.Task[None]) -> bool:
        pending = self._handshakes.get(address)
        if pending is None or task not in pending:
            return False
        del pending[task]
        if not pending:
            del self._handshakes[address]
        self._handshaking -= 1
        return True

    def handshake_failed(self, address: str, task: asyncio.Task[None]) -> None:
        """The handshake ended without a connection (timeout, TLS error, eviction)."""
        if self._forget_handshake(address, task):
            self._timed_out += 1

    def establish(self, address: str, task: asyncio.Task[None]) -> bool:
        """Move a finished handshake to the established count; False if over the cap."""
        self._forget_handshake(address, task)
        if self._established_total >= self.settings.max_connections:
            self._refused += 1
            return False
        self._established[address] = self._established.get(address, 0) + 1
        self._established_total += 1
        self._peak_established = max(self._peak_established, self._established_total)
        return True

    def closed(self, address: str) -> None:
        """An established connection from ``address`` closed."""
        left = self._established.get(address, 0) - 1
        if left < 0:
            return
        if left:
            self._established[address] = left
        else:
            del self._established[address]
        self._established_total -= 1

    def pending_tasks(self) -> list[asyncio.Task[None]]:
        """Every handshake in progress (to cancel them at shutdown)."""
        return [t for tasks in self._handshakes.values() for t in tasks]


class _Counted(asyncio.Protocol):
    """Forwards to aiohttp's request handler and tells the gate when the connection ends."""

    def __init__(self, inner: asyncio.Protocol, on_lost: Callable[[], None]) -> None:
        self._inner = inner
        self._on_lost: Callable[[], None] | None = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        on_lost, self._on_lost = self._on_lost, None
        if on_lost is not None:
            on_lost()
        self._inner.connection_lost(exc)


class _Listener(asyncio.AbstractServer):
    """The listening socket and its accept loop, in the shape aiohttp's runner expects."""

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext | None,
        gate: ConnectionGate,
        backlog: int,
    ) -> None:
        self._sock = sock
        self._factory = protocol_factory
        self._ssl = ssl_context
        self._gate = gate
        self._loop = asyncio.get_running_loop()
        self._backlog = backlog
        self._closed = asyncio.Event()
        self._loop.add_reader(sock.fileno(), self._on_readable)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self._closed.is_set() else (self._sock,)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return not self._closed.is_set()

    async def start_serving(self) -> None:
        """Serving starts with the listener."""

    async def serve_forever(self) -> None:
        await self._closed.wait()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._loop.remove_reader(self._sock.fileno())
        for task in self._gate.pending_tasks():
            task.cancel()
        self._sock.close()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _on_readable(self) -> None:
        # Drain the accept queue in one go (as asyncio's own server does): a
        # full queue makes the kernel drop a real peer's SYN, and its retry
        # comes seconds later.
        for _ in range(self._backlog):
            try:
                conn, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors (the caps are above the open-file
                    # limit): stop listening a moment rather than spin.
                    log.warning("cannot accept a connection: %s", e.strerror)
                    self._loop.remove_reader(self._sock.fileno())
                    self._loop.call_later(_ACCEPT_RETRY, self._resume)
                    return
                log.warning("accept failed: %s", e)
                return
            address = str(peer[0])
            if not self._gate.admit(address):
                conn.close()
                continue
            conn.setblocking(False)
            task = self._loop.create_task(self._handshake(conn, address))
            self._gate.handshaking(address, task)

    def _resume(self) -> None:
        if not self._closed.is_set():
            self._loop.add_reader(self._sock.fileno(), self._on_readable)

    async def _handshake(self, conn: socket.socket, address: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        gate = self._gate
        state = {"established": False, "lost": False}

        def lost() -> None:
            state["lost"] = True
            if state["established"]:
                gate.closed(address)

        timeout = None if self._ssl is None else gate.settings.handshake_timeout
        try:
            transport, _protocol = await self._loop.connect_accepted_socket(
                lambda: _Counted(self._factory(), lost),
                conn,
                ssl=self._ssl,
                ssl_handshake_timeout=timeout,
            )
        except (OSError, asyncio.CancelledError) as e:
            # A failed, timed-out or evicted handshake: the transport is
            # already closed, and the socket with it.
            gate.handshake_failed(address, task)
            conn.close()
            if isinstance(e, OSError) and gate.handshakes is not None:
                gate.handshakes.refused(address, e)
            return
        if not gate.establish(address, task):
            transport.abort()
            return
        state["established"] = True
        if state["lost"]:  # it closed before this task resumed
            gate.closed(address)


class LimitedSite(BaseSite):
    """A TCP site whose connections are bounded by a :class:`ConnectionGate`.

    Without an SSL context (the plain-HTTP ops listener) there is no
    handshake: a connection is established as soon as it is admitted.
    """

    __slots__ = ("_gate", "_host", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        gate: ConnectionGate,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._gate = gate

    @property
    def name(self) -> str:
        """The site's URL."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        scheme = "http" if self._ssl_context is None else "https"
        return f"{scheme}://{host}:{self._port}"

    async def start(self) -> None:
        """Bind and start accepting."""
        await super().start()
        server = self._runner.server
        assert server is not None
        sock = _bind(self._host, self._port, self._backlog)
        self._server = _Listener(sock, server, self._ssl_context, self._gate, self._backlog)


def _bind(host: str, port: int, backlog: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _type, proto, _name, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def raise_open_file_limit() -> tuple[int, int]:
    """Raise this process's soft open-file limit to its hard limit.

    Returns:
        The (before, after) soft limits; equal when nothing could be raised.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _OPEN_FILES_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, e)
            return soft, soft
        return soft, target
    return soft, soft
