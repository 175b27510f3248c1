"""A real PgBouncer in transaction pooling mode in front of the test PostgreSQL server.

:func:`running_pgbouncer` starts Debian's ``pgbouncer`` on a free port of 127.0.0.1 with
``pool_mode = transaction`` and otherwise its defaults (``ignore_startup_parameters`` too:
a client sending ``options`` is refused, as by a stock PgBouncer), trusting the server's
user (listed in an auth file, with the server's password if it has one). Every database
of the server is reachable through it under its own name. Its files (config, auth file,
pid file, log) live in a private temporary directory; it is stopped afterwards.

PgBouncer refuses to run as root: as root, it is started with ``-u postgres`` (it drops to
that user itself), in a directory owned by that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.servers import stop

#: Where Debian installs it, off a non-root user's PATH.
_SYSTEM_BINARY = Path("/usr/sbin/pgbouncer")
#: The user PgBouncer drops to when started as root.
_UNPRIVILEGED_USER = "postgres"
#: How long PgBouncer may take to listen, and to exit after SIGTERM.
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class PgBouncer:
    port: int
    log_path: Path

    def url(self, database_url: str, *, flag: bool = True) -> str:
        """``database_url`` (a database of the server behind) through this PgBouncer, with
        ``?pgbouncer=true`` unless ``flag`` is false."""
        parsed = make_url(database_url).set(host="127.0.0.1", port=self.port)
        if flag:
            parsed = parsed.update_query_dict({"pgbouncer": "true"})
        return parsed.render_as_string(hide_password=False)

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


def find_pgbouncer() -> str | None:
    """The ``pgbouncer`` program: on PATH, else Debian's /usr/sbin/pgbouncer; None without."""
    found = shutil.which("pgbouncer")
    if found is None and os.access(_SYSTEM_BINARY, os.X_OK):
        found = str(_SYSTEM_BINARY)
    return found


@contextlib.contextmanager
def running_pgbouncer(binary: str, server_url: str) -> Iterator[PgBouncer]:
    """PgBouncer in transaction pooling mode in front of the server of ``server_url`` (any
    database of it: connect with its user), listening on 127.0.0.1; stopped afterwards."""
    server = make_url(server_url)
    user = server.username or "postgres"
    as_root = os.geteuid() == 0
    with tempfile.TemporaryDirectory(prefix="customer-store-pgbouncer-") as name:
        directory = Path(name)
        port = _free_port()
        log_path = directory / "pgbouncer.log"
        # The auth file lists the user (trusted) and the password PgBouncer logs in with.
        (directory / "users.txt").write_text(
            f'"{_quoted(user)}" "{_quoted(server.password or "")}"\n', encoding="utf-8"
        )
        (directory / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server.host or '127.0.0.1'} port={server.port or 5432}\n"
            "\n[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {directory / 'users.txt'}\n"
            "pool_mode = transaction\n"
            f"logfile = {log_path}\n"
            f"pidfile = {directory / 'pgbouncer.pid'}\n",
            encoding="utf-8",
        )
        command = [binary, str(directory / "pgbouncer.ini")]
        if as_root:
            account = pwd.getpwnam(_UNPRIVILEGED_USER)
            for path in [directory, *directory.iterdir()]:
                os.chown(path, account.pw_uid, account.pw_gid)
            command[1:1] = ["-u", _UNPRIVILEGED_USER]
        bouncer = PgBouncer(port, log_path)
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_until_listening(process, bouncer)
            yield bouncer
        finally:
            stop(process, timeout=STOP_TIMEOUT)


def _quoted(text: str) -> str:
    """Text inside double quotes of a PgBouncer auth file (a quote is doubled)."""
    return text.replace('"', '""')


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_listening(process: subprocess.Popen[bytes], bouncer: PgBouncer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"pgbouncer exited with {process.returncode} at start:\n{bouncer.log()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", bouncer.port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"pgbouncer did not listen within {START_TIMEOUT}s:\n{bouncer.log()}"
                ) from None
            time.sleep(0.05)
