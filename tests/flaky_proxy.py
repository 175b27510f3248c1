"""A TCP proxy between the store and PostgreSQL that loses a COMMIT on request.

It forwards bytes both ways and reads the client's protocol messages (type byte, length)
to spot a ``COMMIT``. Once armed (:meth:`FlakyProxy.arm`), the next ``COMMIT`` is lost:

- ``"answer"``: the COMMIT reaches the server, which commits, but the connection is
  dropped before its answer (``CommandComplete``) reaches the client: the client cannot
  know it committed;
- ``"request"``: the connection is dropped before the COMMIT reaches the server, which
  then rolls the transaction back.

Clients must connect without TLS (``sslmode=disable``): the proxy reads plain messages.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

_BUFFER = 65536


@dataclass
class _Link:
    client: socket.socket
    server: socket.socket
    #: Set once the client's COMMIT was forwarded and its answer must be lost.
    drop_answer: threading.Event = field(default_factory=threading.Event)

    def close(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class FlakyProxy:
    """Listens on 127.0.0.1:``port`` and forwards to ``target``; see the module doc."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._armed: str | None = None
        #: How many COMMITs were lost so far.
        self.lost = 0
        self._links: list[_Link] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def arm(self, mode: str) -> None:
        """Lose the next COMMIT: ``"answer"`` (committed, unheard) or ``"request"``."""
        if mode not in ("answer", "request"):
            raise ValueError(mode)
        with self._lock:
            self._armed = mode

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        for link in self._links:
            link.close()

    def _take(self) -> str | None:
        with self._lock:
            mode, self._armed = self._armed, None
            if mode is not None:
                self.lost += 1
            return mode

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            link = _Link(client, server)
            self._links.append(link)
            threading.Thread(target=self._upstream, args=(link,), daemon=True).start()
            threading.Thread(target=self._downstream, args=(link,), daemon=True).start()

    def _upstream(self, link: _Link) -> None:
        """Client to server, message by message after the startup packet."""
        try:
            startup = _read_exact(link.client, 4)
            length = struct.unpack("!i", startup)[0]
            link.server.sendall(startup + _read_exact(link.client, length - 4))
            while True:
                header = _read_exact(link.client, 5)
                length = struct.unpack("!i", header[1:])[0]
                message = header + _read_exact(link.client, length - 4)
                if _is_commit(message) and (mode := self._take()) is not None:
                    if mode == "request":
                        link.close()
                        return
                    link.drop_answer.set()
                link.server.sendall(message)
        except OSError:
            link.close()

    def _downstream(self, link: _Link) -> None:
        try:
            while True:
                data = link.server.recv(_BUFFER)
                if not data or link.drop_answer.is_set():
                    # The server has answered the COMMIT (it committed): the client never
                    # hears it.
                    link.close()
                    return
                link.client.sendall(data)
        except OSError:
            link.close()


def _is_commit(message: bytes) -> bool:
    kind, body = message[:1], message[5:]
    if kind == b"Q":  # a simple query
        return body.lstrip().upper().startswith(b"COMMIT")
    if kind == b"P":  # Parse: a name, then the statement
        statement = body.split(b"\0", 2)[1] if body.count(b"\0") >= 2 else b""
        return statement.lstrip().upper().startswith(b"COMMIT")
    return False


def _read_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return bytes(data)


@contextlib.contextmanager
def flaky_proxy(target_host: str, target_port: int) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(target_host, target_port)
    try:
        yield proxy
    finally:
        proxy.close()
