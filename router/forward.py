"""Sending one request to one upstream service: the router's HTTP/1.1 client.

Two interchangeable clients implement `Upstream.send`:

- `FastUpstream` (default): keep-alive connections on asyncio transports, responses parsed by
  `httptools` (the C parser uvicorn itself uses). Measured on this project's 2-core machine, an
  `httpx.AsyncClient` request costs ~0.8 ms of CPU against ~0.04 ms here; the service spends
  ~1 ms per prediction, so with httpx the router alone would cost about half the throughput.
- `HttpxUpstream`: the same contract on `httpx`, kept as the reference implementation
  (`INKWELL_ROUTER_UPSTREAM_CLIENT=httpx`); both pass the same tests.

A send returns the status, headers and whole body, or raises `UpstreamFailure` with the kind of
failure (timeout, or unavailable: refused, reset, closed mid-answer, unparseable).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import httptools
import httpx

Headers = list[tuple[bytes, bytes]]

TIMEOUT = "timeout"
UNAVAILABLE = "unavailable"


class UpstreamFailure(Exception):
    """No usable answer: `kind` is `timeout` or `unavailable`."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Headers
    body: bytes


class Upstream(Protocol):
    """One upstream service (base URL) and the connections to it."""

    url: str

    async def send(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        timeout: float,
    ) -> Answer: ...

    async def aclose(self) -> None: ...


# ---- the fast client -------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = time.monotonic()
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._headers: Headers = []
        self._body: list[bytes] = []
        self._complete = False
        self._bodiless = False  # a HEAD request: the answer ends with its headers
        self._keep_alive = False
        self.received_any = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamFailure(UNAVAILABLE, f"unparseable answer: {exc}"))
            return
        if self._complete and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        detail = f"connection closed by the service ({exc or 'EOF'})"
        self._fail(UpstreamFailure(UNAVAILABLE, detail))

    def eof_received(self) -> bool | None:
        self.closed = True
        return None

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._bodiless:
            self._complete = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True
        # only meaningful inside the callback: the parser resets once the message is done
        self._keep_alive = self._parser.should_keep_alive()

    # use
    def _fail(self, failure: UpstreamFailure) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(failure)

    async def exchange(self, request: bytes, *, bodiless: bool = False) -> Answer:
        if self.transport is None or self.closed:
            raise UpstreamFailure(UNAVAILABLE, "connection closed")
        self._headers, self._body, self._complete, self.received_any = [], [], False, False
        self._bodiless, self._keep_alive = bodiless, False
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            await self._waiter
        finally:
            self._waiter = None
        return Answer(self._parser.get_status_code(), self._headers, b"".join(self._body))

    @property
    def reusable(self) -> bool:
        return not self.closed and self._complete and self._keep_alive

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class FastUpstream:
    """Keep-alive connection pool to one service, HTTP/1.1 over asyncio transports."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 1.0,
        max_connections: int = 256,
        keepalive_s: float = 4.0,  # below uvicorn's 5 s keep-alive: never reuse a closing one
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the fast upstream client speaks plain http://host:port, not {url}")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 80
        self._host_header = (parts.netloc or self.host).encode("latin-1")
        self.prefix = parts.path.rstrip("/")
        self.connect_timeout = connect_timeout
        self.keepalive_s = keepalive_s
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)

    def _request(
        self, method: str, target: str, headers: Sequence[tuple[bytes, bytes]], body: bytes
    ) -> bytes:
        lines = [f"{method} {self.prefix}{target} HTTP/1.1\r\n".encode("latin-1")]
        lines.append(b"host: " + self._host_header + b"\r\n")
        for name, value in headers:
            lines.append(name + b": " + value + b"\r\n")
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(b"content-length: " + str(len(body)).encode() + b"\r\n")
        lines.append(b"\r\n")
        lines.append(body)
        return b"".join(lines)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(_Connection, self.host, self.port)
        except TimeoutError as exc:
            raise UpstreamFailure(
                UNAVAILABLE, f"no connection within {self.connect_timeout:g} s"
            ) from exc
        except OSError as exc:
            raise UpstreamFailure(UNAVAILABLE, f"cannot connect: {exc.strerror or exc}") from exc
        return connection

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < self.keepalive_s:
                return connection
            connection.close()
        return None

    async def send(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        timeout: float,
    ) -> Answer:
        request = self._request(method, target, headers, body)
        try:
            async with asyncio.timeout(timeout):
                async with self._slots:
                    return await self._send(method, request)
        except TimeoutError as exc:
            raise UpstreamFailure(TIMEOUT, f"no answer within {timeout:g} s") from exc

    async def _send(self, method: str, request: bytes) -> Answer:
        connection = self._take_idle()
        reused = connection is not None
        if connection is None:
            connection = await self._connect()
        try:
            answer = await connection.exchange(request, bodiless=method == "HEAD")
        except UpstreamFailure:
            connection.close()
            if not (reused and not connection.received_any):
                raise
            # The service closed a kept-alive connection as we wrote to it, before answering
            # anything: the request was not processed; send it once on a new connection.
            connection = await self._connect()
            try:
                answer = await connection.exchange(request, bodiless=method == "HEAD")
            except BaseException:
                connection.close()
                raise
        except BaseException:  # timeout or cancellation mid-answer: the connection is unusable
            connection.close()
            raise
        if method != "HEAD" and connection.reusable:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()
        return answer

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()


# ---- the httpx client ------------------------------------------------------------------------


class HttpxUpstream:
    """The same contract on `httpx.AsyncClient` (reference implementation)."""

    def __init__(
        self, url: str, *, connect_timeout: float = 1.0, max_connections: int = 256
    ) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=4.0,
        )
        self._client = httpx.AsyncClient(base_url=url, limits=limits, follow_redirects=False)

    async def send(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        timeout: float,
    ) -> Answer:
        request = self._client.build_request(
            method,
            target,
            headers=list(headers),
            content=body,
            timeout=httpx.Timeout(timeout, connect=min(self.connect_timeout, timeout)),
        )
        try:
            async with asyncio.timeout(timeout):
                response = await self._client.send(request)
        except (TimeoutError, httpx.ReadTimeout, httpx.WriteTimeout) as exc:
            raise UpstreamFailure(TIMEOUT, f"no answer within {timeout:g} s") from exc
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise UpstreamFailure(UNAVAILABLE, type(exc).__name__) from exc
        except httpx.HTTPError as exc:
            raise UpstreamFailure(UNAVAILABLE, f"{type(exc).__name__}: {exc}") from exc
        headers_out = [
            (k, v) for k, v in response.headers.raw if k.lower() != b"content-encoding"
        ]  # httpx has already decoded the body
        return Answer(response.status_code, headers_out, response.content)

    async def aclose(self) -> None:
        await self._client.aclose()


def make_upstream(kind: str, url: str, *, connect_timeout: float, max_connections: int) -> Upstream:
    if kind == "httpx" or not url.startswith("http://"):
        return HttpxUpstream(url, connect_timeout=connect_timeout, max_connections=max_connections)
    return FastUpstream(url, connect_timeout=connect_timeout, max_connections=max_connections)
