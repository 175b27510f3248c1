"""A throwaway pg_auto_failover formation for the failover tests: a monitor and two
Postgres nodes on free ports of 127.0.0.1, made and run by ``pg_autoctl`` itself, as an
operator runs it (see docs/high-availability.md).

- :func:`find_pg_autoctl`: the ``pg_autoctl`` program (Debian: ``pg-auto-failover-cli``,
  with the monitor's extension from ``postgresql-15-auto-failover``), or None;
- :func:`auto_failover_formation`: the monitor (tuned with :data:`MONITOR_SETTINGS` so that
  a failover takes seconds rather than a minute) and two nodes, the second one a
  synchronous standby of the first; everything stopped and removed afterwards, even when
  the test fails;
- :class:`Formation`: the URL ``pg_autoctl show uri`` prints, the nodes' states as the
  monitor reports them, and a crash of a node (its ``pg_autoctl`` and postgres killed).

Each ``pg_autoctl`` runs in a process group of its own, with its postgres inside: a crash is
a SIGKILL of that group. As root, everything runs as the ``postgres`` OS user (PostgreSQL
refuses root), like tests/replication.py. pg_autoctl keeps its configuration and state
under ``XDG_CONFIG_HOME`` / ``XDG_DATA_HOME`` / ``XDG_RUNTIME_DIR``: all three point into
the formation's temporary directory, so nothing is left in the user's home.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.replication import (
    SERVER_USER,
    ClusterError,
    _as_server_user,
    _own_tree_root,
    _private_dir,
    postgres_bindir,
)
from tests.servers import free_port

#: The monitor's settings that make a failover take seconds (its defaults take ~50 s):
#: health checks every second, a node unhealthy after 3 s, an unreachable primary demoted
#: after 5 s. These are settings of the monitor's postgres.
MONITOR_SETTINGS = {
    "pgautofailover.health_check_period": "1000",
    "pgautofailover.health_check_timeout": "1000",
    "pgautofailover.health_check_max_retries": "1",
    "pgautofailover.health_check_retry_delay": "500",
    "pgautofailover.node_considered_unhealthy_timeout": "3000",
    "pgautofailover.primary_demote_timeout": "5000",
}
#: The formation's database (``pg_autoctl create postgres --dbname``).
DATABASE = "customers"
#: Seconds for a node to be made (the second one takes a base backup) and reach its state.
WAIT_SECONDS = 90.0
#: Seconds ``pg_autoctl stop`` may take before its process group is killed.
STOP_SECONDS = 15.0


def superuser() -> str:
    """The nodes' superuser: initdb (run by pg_autoctl) names it after the OS user."""
    return SERVER_USER if os.geteuid() == 0 else getpass.getuser()


def find_pg_autoctl() -> str | None:
    """The ``pg_autoctl`` program on PATH, or None."""
    return shutil.which("pg_autoctl")


def _bindir() -> Path:
    """The server programs whose extension directory holds pg_auto_failover's."""
    found = postgres_bindir()
    candidates = ([found] if found else []) + sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), reverse=True
    )
    for bindir in candidates:
        if (bindir.parent / "lib" / "pgautofailover.so").exists():
            return bindir
    raise ClusterError(
        "pg_auto_failover's extension (pgautofailover.so) is not installed for any "
        "PostgreSQL here (Debian: postgresql-15-auto-failover)"
    )


@dataclass
class Node:
    """One ``pg_autoctl`` service (the monitor or a Postgres node) and its postgres."""

    name: str
    pgdata: Path
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def conninfo(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={superuser()} dbname={database}"

    def connect(
        self, database: str = "postgres", *, timeout: float = 2.0
    ) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.conninfo(database), autocommit=True, connect_timeout=max(1, int(timeout))
        )

    def scalar(self, sql: str, *, database: str = "postgres") -> Any:
        with self.connect(database) as connection:
            cursor = connection.execute(sql)
            row = cursor.fetchone() if cursor.description is not None else None
            return None if row is None else row[0]

    def log_text(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """A crash of the machine's services: SIGKILL to ``pg_autoctl`` and its postgres."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_SECONDS)


@dataclass
class Formation:
    """A pg_auto_failover monitor and its nodes, and how to run ``pg_autoctl`` on them."""

    directory: Path
    bindir: Path
    #: The ``pg_autoctl`` program.
    program: str
    monitor: Node
    nodes: list[Node] = field(default_factory=list)

    # --- pg_autoctl ------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        # A plain PATH: pg_autoctl looks for openssl and friends on it, and as the server's
        # user it cannot read root's directories.
        return {
            **os.environ,
            "PATH": os.pathsep.join([str(self.bindir), "/usr/local/bin", "/usr/bin", "/bin"]),
            "PG_CONFIG": str(self.bindir / "pg_config"),
            "HOME": str(self.directory),
            "XDG_CONFIG_HOME": str(self.directory / "config"),
            "XDG_DATA_HOME": str(self.directory / "share"),
            "XDG_RUNTIME_DIR": str(self.directory / "run"),
        }

    def autoctl(self, *args: str, timeout: float = WAIT_SECONDS) -> str:
        """Run ``pg_autoctl ARGS`` to its end; its standard output."""
        result = subprocess.run(
            [self.program, *args], capture_output=True, text=True, timeout=timeout,
            check=False, cwd=self.directory, env=self.env(), stdin=subprocess.DEVNULL,
            **_as_server_user(),
        )
        if result.returncode != 0:
            raise ClusterError(
                f"pg_autoctl {' '.join(args)} exited with {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        printed: str = result.stdout
        return printed

    def service(self, node: Node, *args: str) -> None:
        """Start ``pg_autoctl ARGS`` (a command that keeps running) for ``node``, in a
        process group of its own, its output in the node's log."""
        with node.log.open("ab") as log:
            node.process = subprocess.Popen(
                [self.program, *args], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.directory, env=self.env(),
                start_new_session=True, **_as_server_user(),
            )

    # --- what the monitor knows --------------------------------------------------------------

    def uri(self) -> str:
        """The formation's URL, as ``pg_autoctl show uri --formation default`` prints it."""
        return self.autoctl(
            "show", "uri", "--pgdata", str(self.monitor.pgdata), "--formation", "default"
        ).strip()

    def states(self) -> dict[int, tuple[str, str]]:
        """Each node's port -> (reported state, assigned state), as the monitor has them."""
        with self.monitor.connect("pg_auto_failover") as connection:
            rows = connection.execute(
                "SELECT nodeport, reportedstate::text, goalstate::text FROM pgautofailover.node"
            ).fetchall()
        return {int(port): (str(reported), str(goal)) for port, reported, goal in rows}

    def wait_for_states(self, wanted: Mapping[int, str], *, timeout: float = WAIT_SECONDS) -> None:
        """Until every port of ``wanted`` reports its state (and is assigned it)."""
        deadline = time.monotonic() + timeout
        states: dict[int, tuple[str, str]] = {}
        while True:
            with contextlib.suppress(psycopg.Error):
                states = self.states()
                if all(states.get(port) == (state, state) for port, state in wanted.items()):
                    return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"states {states} did not reach {dict(wanted)} in {timeout}s\n"
                    + "\n".join(f"--- {n.name}:\n{n.log_text()}" for n in self.every_node())
                )
            time.sleep(0.2)

    def primary(self) -> Node:
        states = self.states()
        (node,) = [n for n in self.nodes if states.get(n.port, ("", ""))[0] == "primary"]
        return node

    def every_node(self) -> list[Node]:
        return [*self.nodes, self.monitor]

    # --- making and stopping -----------------------------------------------------------------

    def monitor_url(self) -> str:
        return f"postgres://autoctl_node@127.0.0.1:{self.monitor.port}/pg_auto_failover?sslmode=prefer"

    def new_node(self, name: str) -> Node:
        return Node(name, self.directory / name, free_port(), self.directory / f"{name}.log")

    def start_monitor(self) -> None:
        """``pg_autoctl create monitor --run``, then :data:`MONITOR_SETTINGS` (reloaded)."""
        monitor = self.monitor
        self.service(
            monitor, "create", "monitor", "--pgdata", str(monitor.pgdata),
            "--pgport", str(monitor.port), "--hostname", "127.0.0.1", "--auth", "trust",
            "--no-ssl", "--pgctl", str(self.bindir / "pg_ctl"), "--run",
        )
        wait_for(lambda: bool(monitor.scalar(
            "SELECT count(*) FROM pg_extension WHERE extname = 'pgautofailover'",
            database="pg_auto_failover",
        )), what="the monitor", node=monitor)
        with monitor.connect() as connection:
            for name, value in MONITOR_SETTINGS.items():
                connection.execute(f"ALTER SYSTEM SET {name} = {value}")
            connection.execute("SELECT pg_reload_conf()")

    def start_node(self, node: Node) -> None:
        """``pg_autoctl create postgres --run``: a new node of the formation (its primary if
        first, else a synchronous standby made by a base backup of the primary)."""
        self.nodes.append(node)
        self.service(
            node, "create", "postgres", "--pgdata", str(node.pgdata), "--pgport",
            str(node.port), "--hostname", "127.0.0.1", "--listen", "127.0.0.1",
            "--name", node.name, "--auth", "trust", "--no-ssl", "--dbname", DATABASE,
            "--pgctl", str(self.bindir / "pg_ctl"), "--monitor", self.monitor_url(), "--run",
        )

    def stop(self) -> None:
        """``pg_autoctl stop`` on every live node, then SIGKILL to whatever is left."""
        for node in self.every_node():
            if node.process is None or node.process.poll() is not None:
                continue
            with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
                self.autoctl("stop", "--pgdata", str(node.pgdata), timeout=STOP_SECONDS)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=STOP_SECONDS)
        for node in self.every_node():
            if node.process is not None:
                # The group's postgres may outlive a pg_autoctl that already exited.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(node.process.pid, signal.SIGKILL)
                node.kill()


def wait_for(done: Any, *, what: str, node: Node, timeout: float = WAIT_SECONDS) -> None:
    """Until ``done()`` is true (connection errors meaning not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(psycopg.Error):
            if done():
                return
        if node.process is not None and node.process.poll() is not None:
            raise ClusterError(f"{node.name}: pg_autoctl exited\n{node.log_text()}")
        if time.monotonic() > deadline:
            raise ClusterError(f"{what} not ready in {timeout}s\n{node.log_text()}")
        time.sleep(0.2)


@contextlib.contextmanager
def auto_failover_formation() -> Iterator[Formation]:
    """A monitor and two nodes (``node_1`` primary, ``node_2`` its synchronous standby),
    with :data:`DATABASE` on them; stopped and removed afterwards."""
    bindir = _bindir()
    program = find_pg_autoctl()
    if program is None:
        raise ClusterError("pg_autoctl is not installed (Debian: pg-auto-failover-cli)")
    with tempfile.TemporaryDirectory(prefix="customer-store-autofailover-") as name:
        directory = Path(name)
        _own_tree_root(directory)
        for private in ("config", "share", "run"):
            _private_dir(directory / private)
        monitor = Node("monitor", directory / "monitor", free_port(), directory / "monitor.log")
        formation = Formation(directory, bindir, program, monitor)
        try:
            formation.start_monitor()
            first = formation.new_node("node_1")
            formation.start_node(first)
            formation.wait_for_states({first.port: "single"})
            # The second node's base backup starts with a checkpoint: one now, rather than
            # the base backup waiting for the next timed one.
            first.scalar("CHECKPOINT")
            second = formation.new_node("node_2")
            formation.start_node(second)
            formation.wait_for_states({first.port: "primary", second.port: "secondary"})
            yield formation
        finally:
            formation.stop()
