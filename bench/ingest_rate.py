"""Webhook ingest throughput: against a raw psycopg baseline, and by 1 to N processes.

    python -m bench.ingest_rate [--database-url URL] [--events N] [--processes 1 2 4 8]

Run from the repository root (the stream generator lives in ``tests/webhook_streams.py``).
Without ``--database-url`` a throwaway PostgreSQL database is created on the server of
``--admin-url`` (CREATE DATABASE), migrated, and dropped at the end. A database given with
``--database-url`` is migrated and EMPTIED before each run; one that already holds rows is
refused unless ``--force`` is given.

First, in this process, one delivery after the other on one connection: the store's
``ingest_delivery`` against bench/raw_ingest.py, which does the same work per delivery in
plain psycopg (claim the event row, upsert the customer row and its children, commit), and
their ratio (target >= 0.5); they take turns three times, the best time of each kept.

Then the stream (about ``--events`` deliveries, every event delivered 1-3 times, shuffled) is
dealt round-robin to the processes; each runs the CLI's ``ingest`` on its shard. The time
is wall-clock from starting the first process to the end of the last one, so it includes
each process's start-up (printed separately for reference). Figures only: nothing asserted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import make_url

from bench.raw_ingest import raw_ingest
from models import Base, CustomerRow, WebhookEventRow
from repository import CustomerRepository, ingest_delivery, make_engine, make_session_factory
from repository.db.engine import normalize_url
from repository.db.schema import upgrade_to_head
from tests.webhook_streams import (
    WebhookStream,
    build_stream,
    customers_for_deliveries,
    split_round_robin,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass(frozen=True)
class Run:
    processes: int
    events: int
    seconds: float
    retries: int
    state_ok: bool


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    print(f"generating a stream of about {args.events:,} deliveries (seed {args.seed})...",
          file=sys.stderr)
    customers = customers_for_deliveries(args.events, seed=args.seed)
    stream = build_stream(customers, seed=args.seed)
    deliveries = stream.deliveries(args.seed)
    with _database(args) as url, tempfile.TemporaryDirectory(prefix="ingest-rate-") as tmp:
        engine = make_engine(url)
        try:
            upgrade_to_head(url)
            startup = _startup_seconds(url, Path(tmp))
            if engine.dialect.name != "postgresql":
                raise SystemExit("the raw baseline is PostgreSQL's: give a PostgreSQL URL")
            # Taking turns, three times each, the best of each kept: the machine's speed
            # drifts between runs, and the ratio should not measure the drift.
            raw_times, ours_times = [], []
            for _ in range(3):
                reset_store(engine)
                raw_times.append(raw_ingest(_libpq(url), deliveries))
                reset_store(engine)
                ours_times.append(ingest_in_process(engine, deliveries))
                ours_ok = state_is_newest(engine, stream)
            raw_seconds, ours_seconds = min(raw_times), min(ours_times)
            runs = []
            for count in args.processes:
                reset_store(engine)
                shards = split_round_robin(deliveries, count)
                seconds, retries = _timed_ingest(url, shards, Path(tmp))
                runs.append(Run(count, len(deliveries), seconds, retries,
                                state_is_newest(engine, stream)))
                print(f"  {count} process(es): {seconds:.2f} s", file=sys.stderr)
            reset_store(engine)
        finally:
            engine.dispose()
    backend = make_url(normalize_url(url)).get_backend_name()
    print(f"\ningest rate on {backend}: {customers:,} customers, {len(stream.events):,} distinct "
          f"events, {len(deliveries):,} deliveries ({len(deliveries) - len(stream.events):,} "
          f"duplicates), {sum(e.legacy for e in stream.events):,} legacy envelopes")
    raw_rate, ours_rate = len(deliveries) / raw_seconds, len(deliveries) / ours_seconds
    print(f"one process, one connection: ingest_delivery {ours_rate:,.0f} events/s "
          f"({'as expected' if ours_ok else 'WRONG'}), raw psycopg baseline {raw_rate:,.0f} "
          f"events/s: ratio {ours_rate / raw_rate:.2f} (target >= 0.5)")
    print(f"{'processes':>9}  {'events':>8}  {'seconds':>8}  {'events/s':>9}  {'retries':>7}  "
          "final state")
    for run in runs:
        print(f"{run.processes:>9}  {run.events:>8,}  {run.seconds:>8.2f}  "
              f"{run.events / run.seconds:>9,.0f}  {run.retries:>7}  "
              f"{'as expected' if run.state_ok else 'WRONG'}")
    print("(retries: transactions run again after a deadlock or serialization failure)")
    print(f"(each time includes process start-up: about {startup:.2f} s for one CLI process "
          "with an empty input)")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_rate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=None, metavar="URL",
                        help="database to measure on (emptied before each run); default: a "
                             "throwaway PostgreSQL database on --admin-url's server")
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL, metavar="URL",
                        help=f"PostgreSQL server for the throwaway database ({DEFAULT_ADMIN_URL})")
    parser.add_argument("--events", type=int, default=20_000,
                        help="about this many deliveries, duplicates included (20000)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="process counts to measure (1 2 4 8)")
    parser.add_argument("--seed", type=int, default=2024, help="stream seed (2024)")
    parser.add_argument("--force", action="store_true",
                        help="empty a --database-url database even if it holds rows")
    return parser


@contextmanager
def _database(args: argparse.Namespace) -> Iterator[str]:
    if args.database_url:
        url = normalize_url(args.database_url)
        if not args.force and _holds_rows(url):
            raise SystemExit(f"{make_url(url).render_as_string()} already holds rows and "
                             "would be emptied; pass --force to allow it")
        yield url
        return
    admin = make_engine(args.admin_url, isolation_level="AUTOCOMMIT")  # ?pgbouncer= understood
    name = f"bench_ingest_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(normalize_url(args.admin_url)).set(database=name).render_as_string(
            hide_password=False
        )
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _holds_rows(url: str) -> bool:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            tables = [Base.metadata.tables[name] for name in (
                CustomerRow.__tablename__, WebhookEventRow.__tablename__
            )]
            if not all(engine.dialect.has_table(connection, t.name) for t in tables):
                return False
            return any(
                connection.scalar(select(func.count()).select_from(table))
                for table in tables
            )
    finally:
        engine.dispose()


def reset_store(engine: Engine) -> None:
    """Empty every table of the store (the schema stays)."""
    tables = list(reversed(Base.metadata.sorted_tables))
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            names = ", ".join(f'"{table.name}"' for table in tables)
            connection.execute(text(f"TRUNCATE {names}"))
        else:
            for table in tables:
                connection.execute(table.delete())
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def ingest_in_process(engine: Engine, deliveries: list[bytes]) -> float:
    """Seconds for ``ingest_delivery`` of each delivery in turn, in this process."""
    sessions = make_session_factory(engine)
    started = time.perf_counter()
    for body in deliveries:
        ingest_delivery(sessions, body)
    return time.perf_counter() - started


def _command(url: str, path: Path) -> list[str]:
    return [sys.executable, "-m", "customer_store", "--database-url", url, "ingest", str(path)]


def _timed_ingest(url: str, shards: list[list[bytes]], tmp: Path) -> tuple[float, int]:
    """Wall-clock seconds for all shards ingested side by side, and transactions retried."""
    paths = []
    for index, shard in enumerate(shards):
        path = tmp / f"shard-{len(shards)}-{index}.jsonl"
        path.write_bytes(b"".join(body + b"\n" for body in shard))
        paths.append(path)
    logs = [path.with_suffix(".log").open("w+", encoding="utf-8") for path in paths]
    retries = 0
    try:
        started = time.perf_counter()
        processes = [
            subprocess.Popen(_command(url, path), cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                             stderr=log)
            for path, log in zip(paths, logs, strict=True)
        ]
        codes = [process.wait() for process in processes]
        elapsed = time.perf_counter() - started
        for code, log, path in zip(codes, logs, paths, strict=True):
            log.seek(0)
            summary = log.read().strip().splitlines()
            retries += sum("retrying transaction" in line for line in summary)
            if code != 0:
                print(f"  warning: ingest of {path.name} exited {code}: {summary[-3:]}",
                      file=sys.stderr)
    finally:
        for log in logs:
            log.close()
    return elapsed, retries


def _startup_seconds(url: str, tmp: Path) -> float:
    empty = tmp / "empty.jsonl"
    empty.write_bytes(b"")
    started = time.perf_counter()
    subprocess.run(_command(url, empty), cwd=REPO_ROOT, capture_output=True, check=False)
    return time.perf_counter() - started


def state_is_newest(engine: Engine, stream: WebhookStream) -> bool:
    """Whether every customer stored is exactly the newest the stream delivered for it."""
    with make_session_factory(engine)() as session:
        repo = CustomerRepository(session)
        stored = {customer.id: customer.to_dict() for customer in repo.iter_all()}
        events = session.scalar(select(func.count()).select_from(WebhookEventRow))
    return stored == stream.expected and events == len(stream.events)


if __name__ == "__main__":
    sys.exit(main())
