"""Real ``customer-store`` processes for the tests, and HTTP to a running ``serve``.

- :func:`cli_command` / :func:`child_env`: the command line and environment of a CLI process
  (the environment never inherits ``DATABASE_URL`` or the webhook secret by accident);
- :func:`running_server`: a ``customer-store serve`` on a free port of 127.0.0.1, its output
  in a log file, healthy (``/healthz`` 200) before the block runs and always stopped after;
- :func:`request` / :func:`get` / :func:`post`: one HTTP exchange on its own connection,
  answered as a :class:`Reply`; :meth:`Server.deliver` posts a signed webhook delivery.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from models.signature import SIGNATURE_HEADER, sign

ROOT = Path(__file__).resolve().parents[1]
SECRET_ENV = "VOUCHERIFY_WEBHOOK_SECRET"
WEBHOOK_PATH = "/webhooks/voucherify"
#: How long ``serve`` may take to answer ``/healthz`` with 200.
START_TIMEOUT = 30.0
#: How long one HTTP exchange may take.
REQUEST_TIMEOUT = 30.0
#: How long ``serve`` may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0


# --- processes ------------------------------------------------------------------------------


def cli_command(database_url: str, *args: str) -> list[str]:
    """``customer-store --database-url URL ARGS`` as run by this interpreter."""
    return [sys.executable, "-m", "customer_store", "--database-url", database_url, *args]


def serve_command(database_url: str, port: int, *extra_args: str) -> list[str]:
    return cli_command(
        database_url, "serve", "--host", "127.0.0.1", "--port", str(port), *extra_args
    )


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``DATABASE_URL`` and the webhook secret,
    unbuffered, with ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", SECRET_ENV}}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stop(process: subprocess.Popen[bytes], *, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``; reaped either way."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- HTTP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    #: Header names in lower case.
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def data(self) -> Any:
        """The body parsed as JSON, or as text when it is not JSON."""
        try:
            return self.json()
        except ValueError:
            return self.body.decode("utf-8", errors="replace")


def connect(port: int, *, timeout: float = REQUEST_TIMEOUT) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    chunked: bool = False,
    connection: http.client.HTTPConnection | None = None,
    timeout: float = REQUEST_TIMEOUT,
) -> Reply:
    """One exchange on ``connection`` (a new one to 127.0.0.1:``port`` by default), closed after."""
    connection = connection or connect(port, timeout=timeout)
    try:
        # The server may answer (and close) before it has read all of a refused body; its
        # answer is still there to be read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.request(
                method, path, body=body, headers=dict(headers or {}), encode_chunked=chunked
            )
        response = connection.getresponse()
        return Reply(
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            response.read(),
        )
    finally:
        connection.close()


def get(port: int, path: str, *, timeout: float = REQUEST_TIMEOUT) -> Reply:
    return request(port, "GET", path, timeout=timeout)


def post(
    port: int,
    path: str,
    body: bytes | Iterable[bytes],
    headers: Mapping[str, str] | None = None,
    *,
    chunked: bool = False,
    connection: http.client.HTTPConnection | None = None,
) -> Reply:
    return request(
        port, "POST", path, body, headers, chunked=chunked, connection=connection
    )


def signed_headers(body: bytes, secret: str) -> dict[str, str]:
    """The headers of a delivery of ``body`` signed with ``secret``, as Voucherify sends it."""
    return {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, secret.encode())}


# --- a serve process --------------------------------------------------------------------------


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    #: The webhook secret the server was started with (deliveries are signed with it).
    secret: str | None = None
    #: Deliveries sent by :meth:`deliver`; the server logs one line for each.
    deliveries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def connection(self) -> http.client.HTTPConnection:
        return connect(self.port)

    def get(self, path: str) -> Reply:
        return get(self.port, path)

    def post(
        self, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> Reply:
        return post(self.port, path, body, headers)

    def deliver(
        self,
        body: bytes,
        *,
        signature: str | None = None,
        unsigned: bool = False,
        chunk_size: int | None = None,
        connection: http.client.HTTPConnection | None = None,
        content_type: str = "application/json",
    ) -> Reply:
        """POST ``body`` to the webhook endpoint, signed with the server's secret unless
        ``signature`` is given (or ``unsigned``); in chunks of ``chunk_size`` if given."""
        headers = {"Content-Type": content_type}
        if not unsigned:
            if signature is None:
                assert self.secret is not None, "the server was started without a secret"
                signature = sign(body, self.secret.encode())
            headers[SIGNATURE_HEADER] = signature
        sent: bytes | Iterable[bytes] = body
        if chunk_size is not None:
            sent = iter([body[i : i + chunk_size] for i in range(0, len(body), chunk_size)])
        with self._lock:
            self.deliveries += 1
        return post(
            self.port, WEBHOOK_PATH, sent, headers,
            chunked=chunk_size is not None, connection=connection,
        )


def wait_until_healthy(server: Server, *, timeout: float = START_TIMEOUT) -> None:
    """Until ``/healthz`` answers 200; fails with the server's log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            pytest.fail(
                f"customer-store serve exited with {server.process.returncode} before "
                f"answering /healthz:\n{server.log()}",
                pytrace=False,
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(
                f"customer-store serve did not answer /healthz with 200 within {timeout}s:\n"
                f"{server.log()}",
                pytrace=False,
            )
        try:
            if get(server.port, "/healthz", timeout=max(remaining, 1.0)).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)


@contextlib.contextmanager
def running_server(
    database_url: str,
    *,
    log_path: Path,
    secret: str | None = None,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    start_timeout: float = START_TIMEOUT,
) -> Iterator[Server]:
    """``customer-store serve`` on a free port, started with ``secret`` (in
    ``VOUCHERIFY_WEBHOOK_SECRET``) and ``env`` on top of :func:`child_env`, its output in
    ``log_path``. Yields once ``/healthz`` answers 200; stops the process however the block
    ends."""
    port = free_port()
    extra_env = {} if secret is None else {SECRET_ENV: secret}
    extra_env.update(env or {})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            serve_command(database_url, port, *extra_args),
            cwd=ROOT,
            env=child_env(extra_env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            server = Server(port, process, log_path, secret)
            wait_until_healthy(server, timeout=start_timeout)
            yield server
        finally:
            stop(process)
