"""An httpx transport that gives each request one deadline, from connecting to its last byte.

httpx's timeouts bound each network operation, not a request: a server that sends a byte
every few seconds keeps one request open for hours. This transport's network backend cuts
every connect, TLS handshake, write and read down to what is left of the request's
deadline, and fails the one that would outlast it, whatever the server does. (Name
resolution is the system resolver's and has no deadline.)

A request's deadline starts when it is sent and also covers reading its body, which httpx
does after the transport has returned: the transport serves one request at a time per
thread, as a synchronous client does.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpcore
import httpx

__all__ = ["DeadlineTransport"]

_T = TypeVar("_T")

#: httpcore's failures, turned into httpx's exception of the same name.
_HTTPCORE_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.ProxyError,
    httpcore.UnsupportedProtocol,
)


class DeadlineTransport(httpx.BaseTransport):
    """HTTP/1.1 through a pool whose every request ends within ``seconds``, directly or
    through an HTTP(S) ``proxy`` URL."""

    def __init__(self, seconds: float, *, proxy: str | None = None) -> None:
        if not seconds > 0:
            raise ValueError("a request's deadline must be a positive number of seconds")
        self.seconds = seconds
        self._backend = _DeadlineBackend()
        context = httpx.create_ssl_context()
        self._pool: httpcore.ConnectionPool
        if proxy is None:
            self._pool = httpcore.ConnectionPool(ssl_context=context,
                                                 network_backend=self._backend)
        else:
            route = httpx.Proxy(proxy)
            if route.url.scheme not in ("http", "https"):
                raise ValueError(f"unsupported proxy scheme {route.url.scheme!r}: "
                                 "expected http or https")
            self._pool = httpcore.HTTPProxy(
                proxy_url=httpcore.URL(
                    scheme=route.url.raw_scheme, host=route.url.raw_host,
                    port=route.url.port, target=route.url.raw_path,
                ),
                proxy_auth=route.raw_auth, proxy_headers=route.headers.raw,
                ssl_context=context, network_backend=self._backend,
            )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        self._backend.start(self.seconds)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme, host=request.url.raw_host,
                port=request.url.port, target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            answer = self._pool.handle_request(core)
        assert isinstance(answer.stream, Iterable)
        return httpx.Response(
            status_code=answer.status, headers=answer.headers,
            stream=_Body(answer.stream), extensions=answer.extensions,
        )

    def close(self) -> None:
        self._pool.close()


class _Body(httpx.SyncByteStream):
    def __init__(self, parts: Iterable[bytes]) -> None:
        self._parts = parts

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors():
            yield from self._parts

    def close(self) -> None:
        close = getattr(self._parts, "close", None)
        if close is not None:
            close()


@contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except _HTTPCORE_ERRORS as exc:
        # The two libraries name their exceptions alike (ReadTimeout, ConnectError, ...).
        kind = getattr(httpx, type(exc).__name__, None)
        if not (isinstance(kind, type) and issubclass(kind, httpx.TransportError)):
            kind = httpx.TransportError
        raise kind(str(exc)) from exc


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own socket backend, every operation bounded by the thread's deadline."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()
        self._local = threading.local()

    def start(self, seconds: float) -> None:
        self._local.deadline = time.monotonic() + seconds
        self._local.seconds = seconds

    def within(
        self, operation: Callable[[float | None], _T], timeout: float | None,
        error: type[Exception],
    ) -> _T:
        """``operation(timeout)``, its ``timeout`` cut to what is left of the deadline; a
        timeout once the deadline has passed is said to be the deadline's."""
        deadline: float | None = getattr(self._local, "deadline", None)
        if deadline is None:
            raise RuntimeError("a request's deadline was not started")
        left = deadline - time.monotonic()
        if left <= 0:
            raise error(self._missed())
        try:
            return operation(left if timeout is None else min(timeout, left))
        except httpcore.TimeoutException:
            if time.monotonic() >= deadline:
                raise error(self._missed()) from None
            raise

    def _missed(self) -> str:
        return f"no complete answer within {self._local.seconds:g} s"

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self.within(
            lambda left: self._inner.connect_tcp(host, port, left, local_address,
                                                 socket_options),
            timeout, httpcore.ConnectTimeout,
        )
        return _DeadlineStream(stream, self)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self.within(
            lambda left: self._inner.connect_unix_socket(path, left, socket_options),
            timeout, httpcore.ConnectTimeout,
        )
        return _DeadlineStream(stream, self)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: _DeadlineBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._backend.within(
            lambda left: self._inner.read(max_bytes, left), timeout, httpcore.ReadTimeout
        )

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._backend.within(
            lambda left: self._inner.write(buffer, left), timeout, httpcore.WriteTimeout
        )

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.within(
            lambda left: self._inner.start_tls(ssl_context, server_hostname, left),
            timeout, httpcore.ConnectTimeout,
        )
        return _DeadlineStream(stream, self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)
