"""What server-side prepared statements are worth, and what PgBouncer costs, in one run.

    python -m bench.prepared_bench [--customers 5000] [--gets 3000] [--events 4000]

Run from the repository root (PgBouncer is started by ``tests/pgbouncer.py``, the stream
comes from ``tests/webhook_streams.py``). On throwaway PostgreSQL databases (dropped at the
end) it prints:

- ``get`` by id latency (p50, p99) on a direct connection, a new read-only session per call
  as a service's request handlers make them: with psycopg's prepared statements (the
  default) and without them (``?pgbouncer=true``, which only turns them off here);
- webhook ingest throughput, 4 threads each delivering its share of a shuffled stream with
  ``ingest_delivery``: direct with prepared statements, direct without, and through a
  PgBouncer in transaction pooling mode with ``?pgbouncer=true`` (when ``pgbouncer`` is
  installed; otherwise that line says why it is missing).

Figures only; nothing is asserted but that every ingest ends in the expected state.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy.engine import make_url

from bench.async_bench import store
from bench.ingest_rate import state_is_newest
from bench.store_bench import DEFAULT_ADMIN_URL, percentiles, throwaway_database
from repository import CustomerRepository, ingest_delivery, make_engine, make_session_factory
from repository.db import upgrade_to_head
from tests.pgbouncer import PgBouncer, find_pgbouncer, running_pgbouncer
from tests.webhook_streams import build_stream, customers_for_deliveries, split_round_robin

THREADS = 4


def unprepared(url: str) -> str:
    """``url`` with ``?pgbouncer=true``: on a direct connection, only no prepared statements."""
    return make_url(url).update_query_dict({"pgbouncer": "true"}).render_as_string(
        hide_password=False
    )


def get_latencies(url: str, ids: list[str], passes: int = 3) -> dict[str, tuple[float, float]]:
    """p50 and p99 (ms) of ``get`` with and without prepared statements, the two measured in
    alternating passes so that drift in the machine's load hits both alike."""
    engines = {"prepared": make_engine(url, read_only=True),
               "not prepared": make_engine(unprepared(url), read_only=True)}
    samples: dict[str, list[float]] = {name: [] for name in engines}
    try:
        for engine in engines.values():  # warm up connections, caches and plans
            sessions = make_session_factory(engine)
            for customer_id in ids[:100]:
                with sessions() as session:
                    CustomerRepository(session).get(customer_id)
        for _ in range(passes):
            for name, engine in engines.items():
                sessions = make_session_factory(engine)
                for customer_id in ids:
                    started = time.perf_counter()
                    with sessions() as session:
                        found = CustomerRepository(session).get(customer_id)
                    samples[name].append((time.perf_counter() - started) * 1000)
                    assert found is not None
    finally:
        for engine in engines.values():
            engine.dispose()
    return {name: percentiles(values) for name, values in samples.items()}


def ingest_rate(url: str, events: int, seed: int) -> tuple[float, int, bool]:
    """Deliveries per second of ``THREADS`` threads ingesting a shuffled stream into the
    migrated, empty database at ``url``; the deliveries; whether the end state is right."""
    stream = build_stream(customers_for_deliveries(events, seed=seed), seed=seed)
    deliveries = stream.deliveries(seed)
    engine = make_engine(url, pool_size=THREADS)
    sessions = make_session_factory(engine)
    errors: list[BaseException] = []

    def deliver(shard: Sequence[bytes]) -> None:
        try:
            for body in shard:
                ingest_delivery(sessions, body)
        except BaseException as exc:  # reported after the run
            errors.append(exc)

    try:
        threads = [threading.Thread(target=deliver, args=(shard,))
                   for shard in split_round_robin(deliveries, THREADS)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        if errors:
            raise SystemExit(f"ingest failed: {errors[0]!r}")
        state_ok = state_is_newest(engine, stream)
    finally:
        engine.dispose()
    return len(deliveries) / elapsed, len(deliveries), state_ok


@contextlib.contextmanager
def migrated(admin_url: str) -> Iterator[str]:
    with throwaway_database(admin_url) as url:
        upgrade_to_head(url)
        yield url


@contextlib.contextmanager
def pgbouncer(admin_url: str) -> Iterator[PgBouncer | str]:
    """A PgBouncer in transaction pooling mode in front of the server, or why there is none."""
    binary = find_pgbouncer()
    if binary is None:
        yield "pgbouncer is not installed (Debian: apt-get install pgbouncer)"
        return
    with running_pgbouncer(binary, admin_url) as bouncer:
        yield bouncer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prepared_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL",
                                                              DEFAULT_ADMIN_URL))
    parser.add_argument("--customers", type=int, default=5_000, help="stored for gets (5000)")
    parser.add_argument("--gets", type=int, default=3_000, help="gets per pass and mode (3000)")
    parser.add_argument("--events", type=int, default=4_000,
                        help="about this many deliveries per ingest run (4000)")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)
    started = time.perf_counter()

    print(f"storing {args.customers:,} customers...", file=sys.stderr)
    with migrated(args.admin_url) as url:
        ids = store(url, args.customers)[: args.gets]
        latencies = get_latencies(url, ids)

    rates: dict[str, tuple[float, int, bool] | str] = {}
    with pgbouncer(args.admin_url) as bouncer:
        runs: list[tuple[str, Any]] = [
            ("direct, prepared statements (default)", lambda u: u),
            ("direct, no prepared statements (?pgbouncer=true)", unprepared),
        ]
        if isinstance(bouncer, str):
            rates["through PgBouncer (transaction pooling, ?pgbouncer=true)"] = bouncer
        else:
            runs.append(("through PgBouncer (transaction pooling, ?pgbouncer=true)",
                         bouncer.url))
        for label, through in runs:
            print(f"ingesting: {label}...", file=sys.stderr)
            with throwaway_database(args.admin_url) as direct:
                url = through(direct)
                upgrade_to_head(url)
                rates[label] = ingest_rate(url, args.events, args.seed)

    print(f"\nget by id on a direct connection, a read-only session per call, "
          f"{len(ids):,} ids x 3 passes")
    print(f"{'':<14}{'p50 ms':>8}{'p99 ms':>8}")
    for name, (p50, p99) in latencies.items():
        print(f"{name:<14}{p50:>8.3f}{p99:>8.3f}")
    prepared, plain = latencies["prepared"][0], latencies["not prepared"][0]
    print(f"prepared statements save {plain - prepared:.3f} ms of the p50 "
          f"({(plain - prepared) / plain:.0%})")
    print(f"\nwebhook ingest, {THREADS} threads")
    baseline = None
    for label, rate in rates.items():
        if isinstance(rate, str):
            print(f"{label}: not measured: {rate}")
            continue
        per_second, deliveries, state_ok = rate
        baseline = baseline or per_second
        print(f"{label}: {per_second:,.0f} deliveries/s ({deliveries:,} deliveries, "
              f"{per_second / baseline:.0%} of direct, final state "
              f"{'as expected' if state_ok else 'WRONG'})")
    print(f"\n({time.perf_counter() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
