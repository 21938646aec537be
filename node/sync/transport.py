"""The one HTTP edge of the node's clients: mutual TLS, caps, timeouts, error translation.

Layer: node.sync. Performs network I/O (aiohttp); decides nothing about trust.

Every client that talks to another node (the peer client of the sync
engine, the witness client, ``hashmesh match --remote`` and the auditor's
client) sends its requests through a :class:`Transport`. It is the only
place where aiohttp and timeout errors become :class:`~node.errors.PeerError`
subclasses naming the peer (the tuf ``FetcherInterface`` pattern):

* every body is read with a hard cap on its *decoded* size: a declared
  ``Content-Length`` over the cap is refused before reading, and the stream
  is counted after aiohttp has inflated it, so a gzip body that expands past
  the cap is cut off;
* a 200 answer must have the media type asked for (an HTML error page from
  a proxy is an error, not data);
* a 429 or 503 answer that carries ``Retry-After`` (delta-seconds or an
  HTTP-date, RFC 9110 §10.2.3) is retried after that wait, a bounded number
  of times, only when the wait is short (:attr:`RetryPolicy.max_wait`) and
  ends before the caller's deadline; otherwise the answer is an error;
* connection, TLS and timeout failures and 5xx answers are
  :class:`~node.errors.PeerUnavailableError` (retry later with backoff);
  anything malformed, oversized or unexpected is
  :class:`~node.errors.PeerProtocolError`.
"""

from __future__ import annotations

import asyncio
import email.utils
import ssl
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from node.errors import PeerError, PeerProtocolError, PeerUnavailableError
from protocol.api_documents import ErrorBody
from protocol.encoding import loads_strict
from protocol.errors import MalformedError

__all__ = [
    "JSON_MEDIA_TYPE",
    "Reply",
    "RetryPolicy",
    "Transport",
    "parse_retry_after",
]

JSON_MEDIA_TYPE = "application/json"

_READ_CHUNK = 64 * 1024  # bytes per read of a capped body
_MAX_ERROR_TEXT = 500  # characters of a peer's error message kept in ours


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How a 429 or 503 answer with ``Retry-After`` is retried."""

    max_attempts: int = 3
    """Requests sent in all, the first included (1: never retry)."""
    max_wait: float = 30.0
    """Longest ``Retry-After`` waited for, in seconds; a longer one is an error at once."""


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer the caller accepted by its status: status, media type, capped body."""

    status: int
    media_type: str
    body: bytes


def parse_retry_after(value: str, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (RFC 9110 §10.2.3).

    Args:
        value: the header value: delta-seconds (``"120"``) or an HTTP-date.
        now: the current time, for an HTTP-date (default: the clock).

    Returns:
        The wait in seconds (0 for a date in the past), or None when the value
        is neither form.
    """
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": RFC 5322 for UTC of unknown origin
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class Transport:
    """Requests to one peer's HTTPS API; use as ``async with Transport(...)``.

    Args:
        peer: the name errors carry (a peer name, or the URL when there is none).
        url: the base URL, ``https://host:port`` (a trailing slash is ignored).
        ssl_context: the client TLS context (:func:`node.tls.client_ssl_context`).
        timeout: seconds a request may take in all (connect, send, read).
        connect_timeout: seconds to open the connection.
        read_timeout: seconds without a byte read before giving up (default:
            ``timeout``).
        connections: connections kept open to the peer at most.
        retry: how ``Retry-After`` answers are retried.
    """

    def __init__(
        self,
        peer: str,
        url: str,
        *,
        ssl_context: ssl.SSLContext,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        read_timeout: float | None = None,
        connections: int = 4,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.peer = peer
        self.url = url.rstrip("/")
        self._ssl = ssl_context
        self._total = timeout
        self._connect = connect_timeout
        self._read = timeout if read_timeout is None else read_timeout
        self._connections = connections
        self._retry = retry or RetryPolicy()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._connections),
                timeout=aiohttp.ClientTimeout(
                    total=self._total, sock_connect=self._connect, sock_read=self._read
                ),
                raise_for_status=False,
                # Auto-decompression stays on: the cap counts decoded bytes.
            )
        return self._session

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(
        self,
        path: str,
        params: Mapping[str, str | int] | None = None,
        *,
        media: str,
        cap: int,
        deadline: float | None = None,
    ) -> bytes:
        """``GET path``: the body of a 200 answer of type ``media``, at most ``cap`` bytes.

        Args:
            path: the endpoint, e.g. ``/v1/logs``.
            params: the query parameters.
            media: the media type asked for (``Accept``) and required.
            cap: the largest decoded body accepted, in bytes.
            deadline: the event loop time by which the caller must have its
                answer, ``Retry-After`` waits included (default: now plus the
                request timeout).

        Raises:
            PeerUnavailableError: connection, TLS, timeout, a 5xx answer, or a
                429 not retried.
            PeerProtocolError: another status, another media type, a body
                over the cap or cut short.
        """
        query = {k: str(v) for k, v in (params or {}).items()}
        reply = await self.request(
            "GET", path, params=query, accept=media, cap=cap, deadline=deadline
        )
        return self._typed(path, reply, media)

    async def get_json(
        self,
        path: str,
        params: Mapping[str, str | int] | None = None,
        *,
        cap: int,
        deadline: float | None = None,
    ) -> Mapping[str, Any]:
        """``GET path``: a JSON object, parsed strictly (:func:`protocol.encoding.loads_strict`).

        Raises:
            PeerUnavailableError: as :meth:`get`.
            PeerProtocolError: as :meth:`get`, or the body is not a strict
                JSON object.
        """
        body = await self.get(path, params, media=JSON_MEDIA_TYPE, cap=cap, deadline=deadline)
        return self.json_object(path, body)

    async def post_json(
        self, path: str, body: bytes, *, cap: int, deadline: float | None = None
    ) -> Mapping[str, Any]:
        """``POST path`` with a JSON body: the JSON object of a 200 answer.

        Raises:
            PeerUnavailableError: as :meth:`get`.
            PeerProtocolError: as :meth:`get_json`.
        """
        reply = await self.request(
            "POST",
            path,
            body=body,
            content_type=JSON_MEDIA_TYPE,
            accept=JSON_MEDIA_TYPE,
            cap=cap,
            deadline=deadline,
        )
        return self.json_object(path, self._typed(path, reply, JSON_MEDIA_TYPE))

    def _typed(self, path: str, reply: Reply, media: str) -> bytes:
        # An HTML error page of a proxy, say, is an error and not data.
        if reply.media_type != media:
            raise PeerProtocolError(
                self.peer, f"{path}: expected {media}, got {reply.media_type or 'nothing'}"
            )
        return reply.body

    def json_object(self, path: str, body: bytes) -> Mapping[str, Any]:
        """``body`` parsed as a strict JSON object, or a :class:`PeerProtocolError`.

        Raises:
            PeerProtocolError: naming ``path`` and what is wrong.
        """
        try:
            value = loads_strict(body)
        except MalformedError as e:
            raise PeerProtocolError(self.peer, f"{path}: {e}") from e
        if not isinstance(value, Mapping):
            raise PeerProtocolError(self.peer, f"{path}: expected a JSON object")
        return value

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        accept: str | None = None,
        cap: int,
        accepted: Collection[int] = (200,),
        deadline: float | None = None,
    ) -> Reply:
        """One request, retried on ``Retry-After``; the answer if its status is ``accepted``.

        Args:
            method: ``GET`` or ``POST``.
            path: the endpoint.
            params: the query parameters.
            body: the request body.
            content_type: the body's media type.
            accept: the media type asked for.
            cap: the largest decoded answer body accepted, in bytes.
            accepted: statuses handed back to the caller (others are errors).
            deadline: as for :meth:`get`.

        Raises:
            PeerUnavailableError: connection, TLS, timeout, a 5xx answer, or a
                429 not retried.
            PeerProtocolError: a status not accepted, a body over the cap or
                cut short.
        """
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self._total
        headers = {}
        if accept is not None:
            headers["Accept"] = accept
        if content_type is not None:
            headers["Content-Type"] = content_type
        attempt = 1
        while True:
            # A retry may not outlive the deadline: its timeout is what is left.
            limits = (
                None
                if attempt == 1
                else aiohttp.ClientTimeout(
                    total=max(0.001, deadline - loop.time()),
                    sock_connect=self._connect,
                    sock_read=self._read,
                )
            )
            reply, retry_after = await self._send(method, path, params, body, headers, cap, limits)
            if reply.status in accepted:
                return reply
            wait = None if retry_after is None else parse_retry_after(retry_after)
            if (
                reply.status in (429, 503)
                and wait is not None
                and attempt < self._retry.max_attempts
                and wait <= self._retry.max_wait
                and loop.time() + wait < deadline
            ):
                await asyncio.sleep(wait)
                attempt += 1
                continue
            raise self.refusal(path, reply, retry_after)

    async def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: bytes | None,
        headers: Mapping[str, str],
        cap: int,
        limits: aiohttp.ClientTimeout | None,
    ) -> tuple[Reply, str | None]:
        session = self._open()
        extra: dict[str, Any] = {} if limits is None else {"timeout": limits}
        try:
            async with session.request(
                method, self.url + path, params=params, data=body, headers=headers, **extra
            ) as resp:
                data = await self._read_capped(resp, cap)
                media = resp.headers.get("Content-Type", "").split(";")[0].strip()
                return Reply(resp.status, media, data), resp.headers.get("Retry-After")
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as e:
            raise PeerUnavailableError(self.peer, f"cannot reach {self.url}: {e}") from e
        except aiohttp.ClientPayloadError as e:
            raise PeerProtocolError(self.peer, f"{path}: broken response body: {e}") from e
        except TimeoutError as e:
            raise PeerUnavailableError(self.peer, f"{path}: timed out") from e
        except aiohttp.ClientError as e:
            raise PeerUnavailableError(self.peer, f"{path}: {e}") from e

    async def _read_capped(self, resp: aiohttp.ClientResponse, cap: int) -> bytes:
        declared = resp.content_length
        if declared is not None and declared > cap:
            raise PeerProtocolError(
                self.peer, f"response of {declared} bytes exceeds the cap of {cap}"
            )
        chunks: list[bytes] = []
        total = 0
        async for chunk in resp.content.iter_chunked(_READ_CHUNK):
            total += len(chunk)
            if total > cap:
                raise PeerProtocolError(self.peer, f"response exceeds the cap of {cap} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def refusal(self, path: str, reply: Reply, retry_after: str | None = None) -> PeerError:
        """The error a refused answer means, naming the status and the peer's message.

        5xx and 429 are :class:`PeerUnavailableError` (a later round may
        succeed); any other status is :class:`PeerProtocolError`.
        """
        if reply.status >= 500:
            return PeerUnavailableError(self.peer, f"{path} answered {reply.status}")
        text = _error_text(reply.body)
        if reply.status == 429:
            # Rate limited: a later round succeeds; the loop's backoff waits.
            if retry_after is not None:
                text += f" (retry after {retry_after.strip()[:40]})"
            return PeerUnavailableError(self.peer, f"{path} answered 429: {text}")
        return PeerProtocolError(self.peer, f"{path} answered {reply.status}: {text}")

    async def lines(self, path: str, *, max_line: int, read_timeout: float) -> AsyncIterator[str]:
        """``GET path`` as a long-lived stream of text lines (server-sent events).

        Only the connect timeout and ``read_timeout`` (seconds without a byte)
        apply. Lines are yielded without their line end; the stream ends when
        the peer closes it.

        Raises:
            PeerUnavailableError: connection, TLS, timeout, or the stream broke.
            PeerProtocolError: a status other than 200, or a line longer
                than ``max_line`` bytes.
        """
        session = self._open()
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._connect, sock_read=read_timeout
        )
        try:
            async with session.get(self.url + path, timeout=timeout) as resp:
                if resp.status != 200:
                    raise PeerProtocolError(self.peer, f"{path} answered {resp.status}")
                while True:
                    line = await resp.content.readline()
                    if not line:
                        return
                    if len(line) > max_line:
                        raise PeerProtocolError(self.peer, f"{path}: line too long")
                    yield line.decode("utf-8", "replace").rstrip("\r\n")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise PeerUnavailableError(self.peer, f"{path}: {e or type(e).__name__}") from e


def _error_text(body: bytes) -> str:
    """The peer's own error message: an :class:`ErrorBody`'s, else the body's first bytes."""
    try:
        return ErrorBody.from_json(body).error[:_MAX_ERROR_TEXT]
    except MalformedError:
        return body[:200].decode("utf-8", "replace").strip() or "(empty body)"
