"""Throwaway PostgreSQL clusters for the high-availability tests: a primary and a streaming
standby, made with the server's own programs (``initdb``, ``pg_basebackup -R``,
``pg_ctl``), as a real deployment makes them.

- :func:`new_primary` / :func:`standby_of`: a cluster on a free port of 127.0.0.1, its data
  directory under a private temporary directory, its log beside it;
- :func:`cluster_directory`: a temporary directory for clusters, and the server programs;
- :func:`lone_primary`: one such primary, with the store's database created on it;
- :func:`replicated_pair`: both, the standby streaming from the primary (synchronously
  with ``synchronous=True``), both stopped and removed afterwards, even when the test fails;
- :class:`Cluster`: start, stop (``immediate`` is a crash), promote, run SQL, URLs.

PostgreSQL refuses to run as root: as root, every program runs as the ``postgres`` OS user,
in directories owned by it. The programs come from ``pg_config --bindir`` or Debian's
/usr/lib/postgresql/<version>/bin (:func:`postgres_bindir`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.servers import free_port

#: The OS user the server programs run as when the tests run as root.
SERVER_USER = "postgres"
#: The superuser every throwaway cluster is made with (trust authentication).
SUPERUSER = "postgres"
#: The database the store is migrated into on a throwaway cluster.
STORE_DATABASE = "customers"
#: Seconds a cluster may take to start, stop or promote; and a standby to catch up.
WAIT_SECONDS = 60.0
#: The settings every cluster starts with: small, quick, and ready to be replicated.
BASE_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "hot_standby": "on",
    "wal_keep_size": "'256MB'",
    "shared_buffers": "'32MB'",
    "max_connections": "100",
    "logging_collector": "off",
    "log_min_messages": "warning",
    # A standby notices a dead primary (and reconnects to a new one) quickly.
    "wal_receiver_timeout": "'5s'",
    "wal_retrieve_retry_interval": "'500ms'",
}


class ClusterError(RuntimeError):
    """A server program failed; the message holds its output and the server's log."""


def postgres_bindir() -> Path | None:
    """Where ``initdb``, ``pg_ctl`` and ``pg_basebackup`` are, or None."""
    found = shutil.which("pg_config")
    candidates: list[Path] = []
    if found is not None:
        result = subprocess.run(
            [found, "--bindir"], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            candidates.append(Path(result.stdout.strip()))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_basebackup").exists():
            return directory
    return None


def _as_server_user() -> dict[str, Any]:
    """``subprocess`` arguments that run a program as :data:`SERVER_USER` when root."""
    if os.geteuid() != 0:
        return {}
    account = pwd.getpwnam(SERVER_USER)
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _own(path: Path) -> None:
    """Hand ``path`` to :data:`SERVER_USER` when root (the server refuses root's files)."""
    if os.geteuid() == 0:
        account = pwd.getpwnam(SERVER_USER)
        os.chown(path, account.pw_uid, account.pw_gid)


@dataclass
class Cluster:
    """One PostgreSQL server of the tests: its data directory, port and log."""

    name: str
    bindir: Path
    data: Path
    port: int
    log: Path
    running: bool = field(default=False)

    # --- addresses -------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, as a multi-host URL lists it."""
        return f"127.0.0.1:{self.port}"

    def url(self, database: str = STORE_DATABASE, *, driver: str = "postgresql") -> str:
        return f"{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database}"

    # --- programs --------------------------------------------------------------------------

    def program(self, name: str, *args: str, timeout: float = WAIT_SECONDS) -> str:
        """Run a server program (as the server's user when root); its output, or
        :class:`ClusterError` with that output and the server log."""
        # Output to a file, not a pipe: the server ``pg_ctl start`` leaves running would hold
        # a pipe open, and reading it to its end would never return.
        with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as output:
            result = subprocess.run(
                [str(self.bindir / name), *args], stdout=output, stderr=subprocess.STDOUT,
                timeout=timeout, check=False, stdin=subprocess.DEVNULL, **_as_server_user(),
            )
            output.seek(0)
            printed = output.read()
        if result.returncode != 0:
            raise ClusterError(
                f"{name} {' '.join(args)} exited with {result.returncode}:\n"
                f"{printed}\n--- {self.name} log:\n{self.log_text()}"
            )
        return printed

    def log_text(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError:
            return ""

    def configure(self, **settings: str) -> None:
        """Append settings (values as postgresql.conf spells them) to postgresql.conf;
        :meth:`reload` or a restart applies them."""
        lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(lines)

    def start(self) -> None:
        self.program(
            "pg_ctl", "start", "-w", "-t", str(int(WAIT_SECONDS)), "-D", str(self.data),
            "-l", str(self.log), "-o", f"-p {self.port} -k {self.data.parent}",
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (clean), or ``immediate`` (a crash: no checkpoint)."""
        if not self.running:
            return
        self.program("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data))
        self.running = False

    def kill(self) -> None:
        """A crash of the server: ``pg_ctl stop -m immediate``."""
        self.stop("immediate")

    def promote(self) -> None:
        self.program("pg_ctl", "promote", "-w", "-t", str(int(WAIT_SECONDS)), "-D", str(self.data))

    def reload(self) -> None:
        self.execute("SELECT pg_reload_conf()")

    # --- SQL -------------------------------------------------------------------------------

    def connect(
        self, database: str = "postgres", *, timeout: float = 5.0
    ) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.conninfo(database), autocommit=True, connect_timeout=int(timeout)
        )

    def execute(self, sql: str, params: Sequence[Any] | None = None, *,
                database: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement in autocommit; its rows (none for a statement without)."""
        with self.connect(database) as connection:
            cursor = connection.execute(sql, params)
            return cursor.fetchall() if cursor.description is not None else []

    def scalar(self, sql: str, params: Sequence[Any] | None = None, *,
               database: str = "postgres") -> Any:
        rows = self.execute(sql, params, database=database)
        return rows[0][0] if rows else None

    def in_recovery(self) -> bool:
        return bool(self.scalar("SELECT pg_is_in_recovery()"))


def new_primary(directory: Path, bindir: Path, *, name: str = "primary",
                settings: dict[str, str] | None = None) -> Cluster:
    """``initdb`` a cluster under ``directory`` (trust authentication, replication allowed
    from 127.0.0.1 by initdb's own pg_hba.conf) and start it."""
    home = _private_dir(directory / name)
    cluster = Cluster(name, bindir, home / "data", free_port(), home / "server.log")
    cluster.program(
        "initdb", "-D", str(cluster.data), "-U", SUPERUSER, "--auth=trust",
        "--no-sync", "-E", "UTF8", "--locale=C",
    )
    cluster.configure(**BASE_SETTINGS, cluster_name=f"'{name}'", **(settings or {}))
    cluster.start()
    return cluster


def standby_of(primary: Cluster, directory: Path, *, name: str = "standby",
               settings: dict[str, str] | None = None) -> Cluster:
    """A streaming standby of ``primary``: ``pg_basebackup -R`` (which writes
    ``primary_conninfo`` and ``standby.signal``), started on a port of its own. Its
    ``cluster_name`` is ``name``: the application name it streams under, which
    ``synchronous_standby_names`` lists."""
    home = _private_dir(directory / name)
    cluster = Cluster(name, primary.bindir, home / "data", free_port(), home / "server.log")
    cluster.program(
        "pg_basebackup", "-D", str(cluster.data), "-h", "127.0.0.1", "-p", str(primary.port),
        "-U", SUPERUSER, "-R", "-X", "stream", "--checkpoint=fast", "--no-sync",
    )
    cluster.configure(cluster_name=f"'{name}'", **(settings or {}))
    cluster.start()
    return cluster


def wait_for_replay(primary: Cluster, standby: Cluster, *, timeout: float = WAIT_SECONDS) -> None:
    """Return once ``standby`` has replayed everything ``primary`` has written so far."""
    target = primary.scalar("SELECT pg_current_wal_lsn()")
    deadline = time.monotonic() + timeout
    while True:
        behind = standby.scalar(
            "SELECT pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn()) > 0", [target]
        )
        if behind is False:
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"{standby.name} did not replay up to {target} in {timeout}s")
        time.sleep(0.05)


def wait_for_streaming(primary: Cluster, standby: Cluster, *, synchronous: bool,
                       timeout: float = WAIT_SECONDS) -> None:
    """Return once ``primary`` sees ``standby`` streaming (as a synchronous standby, if
    ``synchronous``)."""
    wanted = ("sync",) if synchronous else ("async", "potential", "sync", "quorum")
    deadline = time.monotonic() + timeout
    while True:
        state = primary.execute(
            "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s",
            [standby.name],
        )
        if state and state[0][0] == "streaming" and state[0][1] in wanted:
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"{standby.name} not streaming to {primary.name}: {state}")
        time.sleep(0.05)


@dataclass
class Pair:
    """A primary and its streaming standby."""

    primary: Cluster
    standby: Cluster
    directory: Path

    def multi_host_url(self, database: str = STORE_DATABASE, *,
                       target_session_attrs: str = "read-write") -> str:
        """libpq's multi-host URL of both, as operators write it."""
        return (
            f"postgresql://{SUPERUSER}@{self.primary.address},{self.standby.address}/"
            f"{database}?target_session_attrs={target_session_attrs}"
        )


@contextlib.contextmanager
def cluster_directory(prefix: str = "customer-store-ha-") -> Iterator[tuple[Path, Path]]:
    """A temporary directory the server's user may enter, removed afterwards, and where
    the server programs are; :class:`ClusterError` without them."""
    bindir = postgres_bindir()
    if bindir is None:
        raise ClusterError("PostgreSQL's server programs (initdb, pg_basebackup) are not found")
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        directory = Path(name)
        _own_tree_root(directory)
        yield directory, bindir


@contextlib.contextmanager
def lone_primary(*, database: str = STORE_DATABASE,
                 settings: dict[str, str] | None = None) -> Iterator[Cluster]:
    """A primary with no standby and ``database`` created on it; stopped and removed
    afterwards, even when the block fails."""
    with cluster_directory() as (directory, bindir):
        primary = new_primary(directory, bindir, settings=settings)
        try:
            primary.execute(f'CREATE DATABASE "{database}"')
            yield primary
        finally:
            with contextlib.suppress(Exception):
                primary.stop("immediate")


@contextlib.contextmanager
def replicated_pair(*, synchronous: bool = False, database: str = STORE_DATABASE,
                    primary_settings: dict[str, str] | None = None) -> Iterator[Pair]:
    """A primary with ``database`` created on it and a standby streaming from it
    (``synchronous``: every commit waits for the standby's flush, ``synchronous_commit``
    as the primary's settings say). Both are stopped and their files removed afterwards."""
    with cluster_directory() as (directory, bindir):
        clusters: list[Cluster] = []
        try:
            primary = new_primary(directory, bindir, settings=primary_settings)
            clusters.append(primary)
            primary.execute(f'CREATE DATABASE "{database}"')
            standby = standby_of(primary, directory)
            clusters.append(standby)
            if synchronous:
                # Only now: with no standby yet, every commit (CREATE DATABASE's too) waits.
                primary.configure(synchronous_standby_names="'standby'")
                primary.reload()
            wait_for_streaming(primary, standby, synchronous=synchronous)
            yield Pair(primary, standby, directory)
        finally:
            for cluster in reversed(clusters):
                with contextlib.suppress(Exception):
                    cluster.stop("immediate")


def _own_tree_root(directory: Path) -> None:
    # mkdtemp makes it 0700 and root's: the server's user must be able to enter it.
    directory.chmod(0o755)
    _own(directory)


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700)
    _own(path)
    return path
