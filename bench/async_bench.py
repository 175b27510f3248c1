"""The async API against the sync one: ``get`` latency, and 50 gets at once.

    python -m bench.async_bench [--customers 10000] [--gets 2000] [--admin-url URL]

On a throwaway PostgreSQL database (dropped at the end), stores ``--customers`` generated
customers, then prints:

- ``get`` p50/p99 through the sync repository (a read-only session per call, as a request
  handler would) and through the async repository (an async read-only session per call);
- the throughput of 50 concurrent async ``get``s (``asyncio.gather``) against 50 sequential
  sync ones, each repeated ``--rounds`` times. Both engines get a pool of ``BENCH_POOL``
  connections (default 10; with 50, no get waits for a connection).

Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from typing import Any

from bench.customers import generate_customers
from bench.store_bench import DEFAULT_ADMIN_URL, percentiles, throwaway_database
from repository import (
    AsyncCustomerRepository,
    CustomerRepository,
    make_async_engine,
    make_async_session_factory,
    make_engine,
    make_session_factory,
)
from repository.db import upgrade_to_head

CONCURRENT = 50
POOL = int(os.environ.get("BENCH_POOL", "10"))


def store(url: str, count: int) -> list[str]:
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    ids: list[str] = []
    batch: list[dict[str, Any]] = []
    for customer in generate_customers(count):
        batch.append(customer)
        ids.append(customer["id"])
        if len(batch) == 1000:
            with sessions.begin() as session:
                CustomerRepository(session).upsert_many(batch)
            batch = []
    if batch:
        with sessions.begin() as session:
            CustomerRepository(session).upsert_many(batch)
    engine.dispose()
    return ids


def sync_figures(url: str, ids: list[str], rounds: int) -> tuple[float, float, float]:
    engine = make_engine(url, read_only=True, pool_size=10)
    sessions = make_session_factory(engine)

    def get(customer_id: str) -> None:
        with sessions() as session:
            assert CustomerRepository(session).get(customer_id) is not None

    for customer_id in ids[:50]:
        get(customer_id)
    samples = []
    for customer_id in ids:
        started = time.perf_counter()
        get(customer_id)
        samples.append((time.perf_counter() - started) * 1000)
    p50, p99 = percentiles(samples)
    started = time.perf_counter()
    for round_ in range(rounds):
        for customer_id in ids[round_ * CONCURRENT:(round_ + 1) * CONCURRENT]:
            get(customer_id)
    throughput = rounds * CONCURRENT / (time.perf_counter() - started)
    engine.dispose()
    return p50, p99, throughput


async def async_figures(url: str, ids: list[str], rounds: int) -> tuple[float, float, float]:
    engine = make_async_engine(url, read_only=True, pool_size=POOL)
    sessions = make_async_session_factory(engine)

    async def get(customer_id: str) -> None:
        async with sessions() as session:
            assert await AsyncCustomerRepository(session).get(customer_id) is not None

    await asyncio.gather(*(get(customer_id) for customer_id in ids[:50]))
    samples = []
    for customer_id in ids:
        started = time.perf_counter()
        await get(customer_id)
        samples.append((time.perf_counter() - started) * 1000)
    p50, p99 = percentiles(samples)
    started = time.perf_counter()
    for round_ in range(rounds):
        chunk = ids[round_ * CONCURRENT:(round_ + 1) * CONCURRENT]
        await asyncio.gather(*(get(customer_id) for customer_id in chunk))
    throughput = rounds * CONCURRENT / (time.perf_counter() - started)
    await engine.dispose()
    return p50, p99, throughput


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--gets", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL", DEFAULT_ADMIN_URL))
    args = parser.parse_args(argv)
    with throwaway_database(args.admin_url) as url:
        upgrade_to_head(url)
        ids = store(url, args.customers)
        sample = random.Random(3).sample(ids, min(args.gets, len(ids)))
        sync_p50, sync_p99, sync_rate = sync_figures(url, sample, args.rounds)
        async_p50, async_p99, async_rate = asyncio.run(async_figures(url, sample, args.rounds))
    print(f"customers stored: {len(ids):,}; gets timed: {len(sample):,}")
    print(f"{'figure':<48}{'value':>10}  unit")
    for name, value, unit in [
        ("sync get p50", sync_p50, "ms"),
        ("sync get p99", sync_p99, "ms"),
        ("async get p50", async_p50, "ms"),
        ("async get p99", async_p99, "ms"),
        (f"{CONCURRENT} sequential sync gets", sync_rate, "gets/s"),
        (f"{CONCURRENT} concurrent async gets", async_rate, "gets/s"),
        ("concurrent async / sequential sync", async_rate / sync_rate, "ratio"),
    ]:
        print(f"{name:<48}{value:>10.2f}  {unit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
