"""What streaming replication costs the store: commit latency, ingest rate and read-API
throughput on a throwaway primary with and without a standby.

    python -m bench.replication_bench [--rounds 2] [--commits 300] [--events 600]
                                      [--customers 5000] [--clients 4] [--seconds 5]

Run from the repository root, with PostgreSQL's server programs on the machine (the
clusters are made by ``tests/replication.py``: ``initdb``, ``pg_basebackup -R``,
``pg_ctl``; as root they run as the ``postgres`` OS user). One primary and one streaming
standby are started for the whole run and removed at the end. The replication mode is
switched on the primary between measurements (``ALTER SYSTEM`` and a reload on the
throwaway primary only), so that every mode meets the same clusters, and the modes take
turns, ``--rounds`` times:

- ``primary alone``: the standby stopped;
- ``async standby``: streaming, no ``synchronous_standby_names``;
- ``sync standby, on``: ``synchronous_standby_names = 'standby'``, ``synchronous_commit``
  on (a commit waits for the standby's flush);
- ``sync standby, remote_apply``: the same, a commit waits for the standby's replay.

For each mode:

- commit latency of one customer upserted in a transaction of its own through
  ``CustomerRepository.upsert`` under ``run_in_transaction`` (the write a webhook makes),
  each commit a newer version of one of 50 customers (each written once before the
  measured commits): p50, p95, p99, mean; and how many of the commits a read on the
  standby made right after it already saw;
- ingest rate: a stream of webhook deliveries (``tests/webhook_streams.py``, every event
  delivered 1-3 times) through ``ingest_delivery`` one after the other in this process, as
  ``bench/ingest_rate.py`` measures it, and whether the final state is the expected one.

The commit latencies again, with a synchronous standby, the modes taking turns per commit
rather than per run (each on connections of its own that set ``synchronous_commit`` to
``local``, which waits for no standby as asynchronous replication does, ``on`` or
``remote_apply``): drift in the machine's speed then weighs on every mode alike.

Last, read-API throughput: ``--customers`` generated customers imported on the primary
(async replication, replayed by the standby), and ``customer-store serve`` answering
``GET /v1/customers/{id}`` to ``--clients`` threads, each on a kept-alive connection, for
``--seconds`` seconds: with the reads on the primary, and with ``--read-database-url`` on
the standby. Requests per second, p50 and p99, and the transactions each server committed
in the store's database during the run (where the reads went).

Everything runs on one machine: the primary, the standby, this process and the service
share its CPUs, so the standby adds no capacity here. Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from sqlalchemy.orm import Session

from bench.customers import generate_customers, write_jsonl
from bench.ingest_rate import ingest_in_process, reset_store, state_is_newest
from bench.read_api_bench import APP_ID, APP_TOKEN, HEADERS
from bench.store_bench import libpq_url, run_import, sample_ids
from customer_store.read_api import APP_ID_VARIABLE, APP_TOKEN_VARIABLE
from repository import (
    CustomerRepository,
    UpsertOutcome,
    make_engine,
    make_session_factory,
    run_in_transaction,
)
from repository.db import upgrade_to_head
from tests.replication import (
    STORE_DATABASE,
    Cluster,
    Pair,
    replicated_pair,
    wait_for_replay,
    wait_for_streaming,
)
from tests.servers import ROOT, cli_command, running_server
from tests.webhook_streams import build_stream, customers_for_deliveries

#: Customers the commit-latency loop writes new versions of, in turn.
WRITTEN_CUSTOMERS = 50
#: Commits before the measured ones, after each change of mode: one insert of each written
#: customer, so that every measured commit is an update, as most webhooks are.
WARM_UP = WRITTEN_CUSTOMERS
#: Connections' own ``synchronous_commit`` on a primary with a synchronous standby, so that
#: the modes can take turns per commit: ``local`` waits for no standby, as with
#: asynchronous replication.
TURNS: dict[str, str | None] = {
    "async (local)": "local",
    "sync, on": "on",
    "sync, remote_apply": "remote_apply",
}
#: Seconds a change of the primary's settings may take to show.
SETTLE_SECONDS = 30.0


@dataclass(frozen=True)
class Mode:
    name: str
    standby: bool
    standby_names: str
    synchronous_commit: str


MODES = (
    Mode("primary alone", standby=False, standby_names="", synchronous_commit="on"),
    Mode("async standby", standby=True, standby_names="", synchronous_commit="on"),
    Mode("sync standby, on", standby=True, standby_names="standby", synchronous_commit="on"),
    Mode("sync standby, remote_apply", standby=True, standby_names="standby",
         synchronous_commit="remote_apply"),
)


@dataclass
class CommitRun:
    mode: str
    round: int
    #: Milliseconds of each measured upsert and commit.
    samples: list[float] = field(default_factory=list)
    #: How many of the commits a read on the standby right after it saw (None: no standby).
    seen: int | None = None
    load: float = 0.0


@dataclass(frozen=True)
class IngestRun:
    mode: str
    round: int
    deliveries: int
    seconds: float
    #: Whether the final state is the one the stream must end in.
    state_ok: bool
    load: float


@dataclass
class Results:
    """Each run's figures, and the machine's 1-minute load average at its end (the load
    other work puts on the machine shows there)."""

    commits: list[CommitRun] = field(default_factory=list)
    #: The synchronous modes again, taking turns per commit on one synchronous standby.
    turns: list[CommitRun] = field(default_factory=list)
    ingests: list[IngestRun] = field(default_factory=list)
    reads: list[ReadRun] = field(default_factory=list)


@dataclass(frozen=True)
class ReadRun:
    where: str
    round: int
    seconds: float
    #: Milliseconds of each request answered.
    samples: list[float]
    failed: int
    load: float
    #: Transactions committed in the store's database on each server during the run: where
    #: the reads went (the router's own lag checks included).
    on_primary: int
    on_standby: int


# -- modes -----------------------------------------------------------------------------------

def set_mode(pair: Pair, mode: Mode) -> None:
    """Put the primary (and standby) in ``mode``: the settings altered and reloaded, the
    standby started or stopped, and back only once the primary reports the standby's
    state the mode expects."""
    primary, standby = pair.primary, pair.standby
    _alter(primary, synchronous_standby_names=mode.standby_names,
           synchronous_commit=mode.synchronous_commit)
    if mode.standby and not standby.running:
        standby.start()
    elif not mode.standby and standby.running:
        standby.stop()  # after the reload above: no commit waits for a stopped standby
    if mode.standby:
        wait_for_streaming(primary, standby, synchronous=bool(mode.standby_names))
        _wait_for_sync_state(primary, standby, "sync" if mode.standby_names else "async")


def _alter(primary: Cluster, **settings: str) -> None:
    with primary.connect() as connection:
        for name, value in settings.items():
            connection.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(
                sql.Identifier(name), sql.Literal(value)))
        connection.execute("SELECT pg_reload_conf()")


def _wait_for_sync_state(primary: Cluster, standby: Cluster, wanted: str) -> None:
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        state = primary.scalar(
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
            [standby.name],
        )
        if state == wanted:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the standby is {state!r}, not {wanted!r}, after a reload")
        time.sleep(0.05)


def _settings(url: str, mode: Mode) -> None:
    """Fail unless a new connection of ``url`` runs with ``mode``'s settings."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        with psycopg.connect(libpq_url(url), autocommit=True) as connection:
            row = connection.execute(
                "SELECT current_setting('synchronous_commit'),"
                " current_setting('synchronous_standby_names')").fetchone()
        if row == (mode.synchronous_commit, mode.standby_names):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"{mode.name}: the primary runs with {row}")
        time.sleep(0.05)


# -- commit latency --------------------------------------------------------------------------

def commit_latencies(url: str, standby: Cluster | None, runs: dict[str, str | None],
                     commits: int, start: datetime, *, round_number: int
                     ) -> tuple[list[CommitRun], datetime]:
    """Each run's single-customer upserts, taking turns per commit: ``runs`` maps a run's
    name to the ``synchronous_commit`` its connections set (None: the server's). Each
    commit is a newer version of one of :data:`WRITTEN_CUSTOMERS`; after each, a read on
    ``standby`` tells whether it is there yet. Returns the runs and the last version."""
    customers = list(generate_customers(WRITTEN_CUSTOMERS, seed=11))
    factories = {}
    for name, setting in runs.items():
        own: dict[str, Any] = {} if setting is None else {
            "connect_args": {"options": f"-c synchronous_commit={setting}"}}
        engine = make_engine(url, **own)
        with engine.connect() as connection:
            shown = connection.exec_driver_sql("SHOW synchronous_commit").scalar()
        if setting is not None and shown != setting:
            raise SystemExit(f"{name}: the connections run with synchronous_commit={shown}")
        factories[name] = engine, make_session_factory(engine)
    results = {name: CommitRun(name, round_number, seen=None if standby is None else 0)
               for name in runs}
    watcher = None if standby is None else standby.connect(STORE_DATABASE)
    version = start
    try:
        for i in range(WARM_UP + commits):
            for name, (_, sessions) in factories.items():
                version += timedelta(milliseconds=1)
                customer = {**customers[i % WRITTEN_CUSTOMERS],
                            "updated_at": version.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"}
                started = time.perf_counter()
                run_in_transaction(sessions, partial(_upsert, customer=customer))
                elapsed = (time.perf_counter() - started) * 1000
                if i < WARM_UP:
                    continue
                run = results[name]
                run.samples.append(elapsed)
                if watcher is not None and run.seen is not None:
                    row = watcher.execute("SELECT updated_at FROM customers WHERE id = %s",
                                          [customer["id"]]).fetchone()
                    run.seen += row is not None and row[0] >= version
    finally:
        if watcher is not None:
            watcher.close()
        for engine, _ in factories.values():
            engine.dispose()
    load = os.getloadavg()[0]
    for run in results.values():
        run.load = load
    return list(results.values()), version


def _upsert(session: Session, customer: dict[str, Any]) -> UpsertOutcome:
    return CustomerRepository(session).upsert(customer)


def summary(samples: list[float]) -> tuple[float, float, float, float]:
    """p50, p95, p99 and mean of ``samples``."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[94], cuts[98], statistics.fmean(samples)


# -- ingest ----------------------------------------------------------------------------------

def ingest_rate(url: str, events: int, seed: int) -> tuple[int, float, bool]:
    """Deliveries, seconds for ``ingest_delivery`` of each in turn, final state right."""
    stream = build_stream(customers_for_deliveries(events, seed=seed), seed=seed)
    deliveries = stream.deliveries(seed)
    engine = make_engine(url)
    try:
        reset_store(engine)
        seconds = ingest_in_process(engine, deliveries)
        return len(deliveries), seconds, state_is_newest(engine, stream)
    finally:
        reset_store(engine)
        engine.dispose()


# -- reads -------------------------------------------------------------------------------------

def serve_has_read_url() -> bool:
    """Whether ``customer-store serve`` takes ``--read-database-url``."""
    helped = subprocess.run(cli_command("sqlite://", "serve", "--help"), cwd=ROOT,
                            capture_output=True, text=True, check=False)
    return "--read-database-url" in helped.stdout


def read_load(port: int, ids: list[str], *, clients: int, seconds: float
              ) -> tuple[int, list[float], int]:
    """Requests answered, their milliseconds, and how many were not 200, with ``clients``
    threads asking by id on kept-alive connections for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients
    ready = threading.Barrier(clients + 1)
    deadline: list[float] = []

    def client(index: int) -> None:
        rng = random.Random(index)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        paths = [f"/v1/customers/{quote(i, safe='')}" for i in ids]
        ready.wait()
        try:
            while time.perf_counter() < deadline[0]:
                started = time.perf_counter()
                connection.request("GET", rng.choice(paths), headers=HEADERS)
                response = connection.getresponse()
                response.read()
                latencies[index].append((time.perf_counter() - started) * 1000)
                failures[index] += response.status != 200
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    deadline.append(time.perf_counter() + seconds)
    ready.wait()
    for thread in threads:
        thread.join()
    flat = [value for per_client in latencies for value in per_client]
    return len(flat), flat, sum(failures)


def measure_reads(pair: Pair, url: str, args: argparse.Namespace, results: Results,
                  tmp: Path) -> None:
    path = tmp / "customers.jsonl"
    write_jsonl(str(path), args.customers)
    run_import(url, str(path))
    wait_for_replay(pair.primary, pair.standby)
    ids = sample_ids(url, 1000)
    env = {APP_ID_VARIABLE: APP_ID, APP_TOKEN_VARIABLE: APP_TOKEN}
    places = {"reads on the primary": [],
              "reads on the standby": ["--read-database-url", pair.standby.url()]}
    for round_number in range(1, args.rounds + 1):
        for where, extra in places.items():
            before = _transactions(pair.primary), _transactions(pair.standby)
            with running_server(url, log_path=tmp / "serve.log", env=env,
                                extra_args=["--no-signature-check", *extra]) as server:
                read_load(server.port, ids[:50], clients=args.clients, seconds=1.0)  # warm up
                count, samples, failed = read_load(server.port, ids, clients=args.clients,
                                                   seconds=args.seconds)
                load = os.getloadavg()[0]
            time.sleep(0.5)  # the server's backends report their counts as they exit
            run = ReadRun(where, round_number, args.seconds, samples, failed, load,
                          _transactions(pair.primary) - before[0],
                          _transactions(pair.standby) - before[1])
            results.reads.append(run)
            print(f"  {where}, round {round_number}: {count / args.seconds:,.0f} requests/s",
                  file=sys.stderr, flush=True)


def _transactions(cluster: Cluster) -> int:
    return int(cluster.scalar(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
        [STORE_DATABASE]))


# -- the run -----------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    results = Results()
    started = time.perf_counter()
    reads = args.seconds > 0 and serve_has_read_url()
    with (replicated_pair(synchronous=False) as pair,
          tempfile.TemporaryDirectory(prefix="replication-bench-") as tmp):
        url = pair.primary.url()
        upgrade_to_head(url)
        version = pair.primary.scalar("SHOW server_version")
        written = datetime(2030, 1, 1, tzinfo=UTC)
        for round_number in range(1, args.rounds + 1):
            for mode in MODES:
                set_mode(pair, mode)
                _settings(url, mode)
                runs, written = commit_latencies(
                    url, pair.standby if mode.standby else None, {mode.name: None},
                    args.commits, written, round_number=round_number)
                results.commits += runs
                samples = runs[0].samples
                count, seconds, ok = ingest_rate(url, args.events, args.seed)
                results.ingests.append(IngestRun(mode.name, round_number, count, seconds, ok,
                                                 os.getloadavg()[0]))
                print(f"  {mode.name}, round {round_number}: commit p50 "
                      f"{summary(samples)[0]:.2f} ms, ingest {count / seconds:,.0f}/s",
                      file=sys.stderr, flush=True)
        set_mode(pair, MODES[2])
        _settings(url, MODES[2])
        for round_number in range(1, args.rounds + 1):
            runs, written = commit_latencies(url, pair.standby, TURNS, args.commits, written,
                                             round_number=round_number)
            results.turns += runs
        set_mode(pair, MODES[1])
        if reads:
            measure_reads(pair, url, args, results, Path(tmp))
    _print(results, args, version, reads, time.perf_counter() - started)
    return 0


def _print(results: Results, args: argparse.Namespace, version: str, reads: bool,
           elapsed: float) -> None:
    print(f"\nPostgreSQL {version}, primary and standby on this machine; {os.cpu_count()} CPUs "
          "shared by both servers, this process and the service")
    print(f"\ncommit latency (ms), one customer upserted per transaction, {args.commits} "
          "commits per run, the modes taking turns per run")
    _commit_table(results.commits)
    print("\nthe same, the modes taking turns per commit on a primary with a synchronous "
          "standby, each connection setting its own synchronous_commit")
    _commit_table(results.turns)
    print("\ningest_delivery, one delivery after the other, one process")
    print(f"{'mode':<28} {'round':>5} {'deliveries':>10} {'seconds':>8} {'per s':>7} {'load':>5}  "
          "final state")
    for run in results.ingests:
        print(f"{run.mode:<28} {run.round:>5} {run.deliveries:>10,} {run.seconds:>8.2f} "
              f"{run.deliveries / run.seconds:>7,.0f} {run.load:>5.1f}  "
              f"{'as expected' if run.state_ok else 'WRONG'}")
    for mode in MODES:
        runs = [run for run in results.ingests if run.mode == mode.name]
        count, seconds = sum(r.deliveries for r in runs), sum(r.seconds for r in runs)
        print(f"{mode.name:<28} {'all':>5} {count:>10,} {seconds:>8.2f} "
              f"{count / seconds:>7,.0f}")
    if reads:
        print(f"\nread API, GET /v1/customers/{{id}}, {args.clients} clients for "
              f"{args.seconds:g} s each, {args.customers:,} customers, async replication")
        print(f"{'reads':<28} {'round':>5} {'requests':>8} {'per s':>7} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'not 200':>7} {'load':>5}  transactions primary / standby")
        for read in results.reads:
            p50, _, p99, _ = summary(read.samples)
            count = len(read.samples)
            print(f"{read.where:<28} {read.round:>5} {count:>8,} {count / read.seconds:>7,.0f} "
                  f"{p50:>7.2f} {p99:>7.2f} {read.failed:>7} {read.load:>5.1f}  "
                  f"{read.on_primary:,} / {read.on_standby:,}")
    elif args.seconds > 0:
        print("\nread API: not measured, `customer-store serve` has no --read-database-url")
    print("(load: the machine's 1-minute load average at the end of the run, other work "
          "included)")
    print(f"\n({elapsed:.0f} s in all)")


def _commit_table(runs: list[CommitRun]) -> None:
    print(f"{'mode':<28} {'round':>5} {'p50':>7} {'p95':>7} {'p99':>7} {'mean':>7} "
          f"{'load':>5}  standby read right after saw it")
    pooled: dict[str, CommitRun] = {}
    for run in runs:
        both = pooled.setdefault(run.mode, CommitRun(run.mode, 0, seen=run.seen and 0))
        both.samples += run.samples
        if both.seen is not None and run.seen is not None:
            both.seen += run.seen
    for run in [*runs, *pooled.values()]:
        p50, p95, p99, mean = summary(run.samples)
        saw = "-" if run.seen is None else f"{run.seen}/{len(run.samples)}"
        load = f"{run.load:.1f}" if run.round else ""
        print(f"{run.mode:<28} {run.round or 'all':>5} {p50:>7.2f} {p95:>7.2f} {p99:>7.2f} "
              f"{mean:>7.2f} {load:>5}  {saw}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.replication_bench",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2,
                        help="times each mode is measured, the modes taking turns (2)")
    parser.add_argument("--commits", type=int, default=300,
                        help="measured commits per mode and round (300)")
    parser.add_argument("--events", type=int, default=600,
                        help="about this many webhook deliveries per mode and round (600)")
    parser.add_argument("--seed", type=int, default=2024, help="stream seed (2024)")
    parser.add_argument("--customers", type=int, default=5000,
                        help="customers imported for the read API (5000)")
    parser.add_argument("--clients", type=int, default=4,
                        help="concurrent HTTP clients of the read API (4)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="seconds of read load per place and round; 0 skips reads (5)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
