"""How long the async API holds the event loop: a 10 ms ticker beside concurrent upserts.

    python -m bench.loop_block [--upserts 300] [--rounds 3] [--batch 600] [--admin-url URL]

On a throwaway PostgreSQL database (dropped at the end), a fresh async engine (pool of 20)
takes ``--upserts`` concurrent single upserts, started one after another as requests
arrive, while a ticker task asks to wake every 10 ms and records how late it woke. The
first round is the engine's first work (what a service's first requests meet); the next
``--rounds`` run on the warm engine. Then the same ticker beside ``upsert_many`` batches of
``--batch`` customers (about 1 MiB of JSON at the default), one after another.

The schema is migrated in a process of its own, so that nothing the first call builds is
built before it; the objects this process holds once the customers are generated are then
frozen out of the garbage collector's way (``gc.freeze``, as a long-running service does
after start-up), so that a full collection of them is not what holds the loop.

Prints the worst and p99 tick lateness of each round. Figures only; nothing is asserted
(``tests/test_async.py`` holds the bound).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from bench.customers import generate_customers
from bench.store_bench import DEFAULT_ADMIN_URL, throwaway_database
from repository import AsyncCustomerRepository, make_async_engine, make_async_session_factory
from repository.db.schema import upgrade_to_head

TICK = 0.01
POOL = 20


async def _ticker(stop: asyncio.Event, lateness: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        expected = loop.time() + TICK
        await asyncio.sleep(TICK)
        lateness.append(loop.time() - expected)


async def beside_ticker(calls: list[Callable[[], Awaitable[Any]]]) -> list[float]:
    """Tick lateness (seconds) while ``calls`` run concurrently, each started after the
    loop turned once, as requests arrive."""
    stop, lateness = asyncio.Event(), list[float]()
    ticker = asyncio.create_task(_ticker(stop, lateness))
    await asyncio.sleep(0)
    tasks = []
    for call in calls:
        tasks.append(asyncio.ensure_future(call()))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    stop.set()
    await ticker
    return lateness


def summary(label: str, lateness: list[float], elapsed: float) -> str:
    ordered = sorted(lateness)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0
    worst = ordered[-1] if ordered else 0.0
    return (f"{label:<42}{worst * 1000:>9.1f}{p99 * 1000:>9.1f}{len(ordered):>7}"
            f"{elapsed:>9.2f}")


async def measure(url: str, upserts: int, rounds: int, batch: int) -> list[str]:
    customers = list(generate_customers(upserts * (rounds + 1) + batch * rounds))
    gc.collect()
    gc.freeze()
    engine = make_async_engine(url, pool_size=POOL, max_overflow=0)
    sessions = make_async_session_factory(engine)

    def upsert(customer: dict[str, Any]) -> Callable[[], Awaitable[Any]]:
        async def call() -> Any:
            async with sessions.begin() as session:
                return await AsyncCustomerRepository(session).upsert(customer)

        return call

    def upsert_many(chunk: list[dict[str, Any]]) -> Callable[[], Awaitable[Any]]:
        async def call() -> Any:
            async with sessions.begin() as session:
                return await AsyncCustomerRepository(session).upsert_many(chunk)

        return call

    lines = []
    try:
        for round_ in range(rounds + 1):
            chunk = customers[round_ * upserts:(round_ + 1) * upserts]
            started = time.monotonic()
            lateness = await beside_ticker([upsert(c) for c in chunk])
            label = "first call (fresh engine)" if round_ == 0 else f"later, round {round_}"
            lines.append(summary(f"{upserts} upserts, {label}", lateness,
                                 time.monotonic() - started))
        offset = upserts * (rounds + 1)
        for round_ in range(rounds):
            chunk = customers[offset + round_ * batch:offset + (round_ + 1) * batch]
            started = time.monotonic()
            lateness = await beside_ticker([upsert_many(chunk)])
            lines.append(summary(f"upsert_many of {batch}, round {round_ + 1}", lateness,
                                 time.monotonic() - started))
    finally:
        await engine.dispose()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--upserts", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=600)
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL", DEFAULT_ADMIN_URL))
    args = parser.parse_args(argv)
    with throwaway_database(args.admin_url) as url:
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=spawn) as migration:
            migration.submit(upgrade_to_head, url).result()
        lines = asyncio.run(measure(url, args.upserts, args.rounds, args.batch))
    print(f"{'10 ms ticker lateness beside':<42}{'worst ms':>9}{'p99 ms':>9}{'ticks':>7}"
          f"{'secs':>9}")
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
