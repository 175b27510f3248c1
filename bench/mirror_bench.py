"""The mirror of a local server that follows Voucherify's list API: throughput and requests.

    python -m bench.mirror_bench [--customers 20000] [--ties 500] [--admin-url URL]

Puts ``--customers`` generated customers (``--ties`` of them sharing one ``created_at``) in
the test suite's stand-in for Voucherify (tests/voucherify_api.py, no rate limit), then
mirrors them into a throwaway PostgreSQL database (dropped at the end) and into a fresh SQLite
file, and prints for each: customers/s of the full backfill, requests per 1,000 customers,
and the requests of an incremental run after 100 updates. Figures only; nothing asserted.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.store_bench import DEFAULT_ADMIN_URL, throwaway_database
from repository import make_engine, make_session_factory
from repository.db import upgrade_to_head
from repository.voucherify import VoucherifyClient, mirror_customers
from tests.voucherify_api import FakeVoucherify, format_instant, make_customers

# A key made up for the run: the stand-in server accepts whatever it is started with.
_TOKEN = secrets.token_hex(16)


def run(url: str, count: int, ties: int) -> list[tuple[str, float, str]]:
    upgrade_to_head(url)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    customers = make_customers(count, tie_block=ties, seed=1)
    backend = engine.dialect.name
    try:
        with FakeVoucherify(app_id="bench", app_token=_TOKEN) as fake:
            fake.put_many(customers)
            with VoucherifyClient(app_id="bench", app_token=_TOKEN, api_url=fake.url) as client:
                started = time.perf_counter()
                report = mirror_customers(sessions, client)
                seconds = time.perf_counter() - started
            assert report.complete and report.applied == count, report
            now = format_instant(datetime.now(UTC))
            for customer in customers[:100]:
                fake.update(customer["id"], at=now, name="Updated")
            with VoucherifyClient(app_id="bench", app_token=_TOKEN, api_url=fake.url) as client:
                later = mirror_customers(sessions, client)
            assert later.applied == 100, later
    finally:
        engine.dispose()
    return [
        (f"{backend}: full backfill", count / seconds, "customers/s"),
        (f"{backend}: requests per 1,000 customers", report.requests * 1000 / count, ""),
        (f"{backend}: incremental run after 100 updates", later.requests, "requests"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--ties", type=int, default=500)
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    args = parser.parse_args(argv)
    rows = []
    with throwaway_database(args.admin_url) as url:
        rows += run(url, args.customers, args.ties)
    with tempfile.TemporaryDirectory() as directory:
        rows += run(f"sqlite:///{Path(directory) / 'sync.db'}", args.customers, args.ties)
    print(f"# {args.customers} customers, {args.ties} sharing one created_at")
    for label, value, unit in rows:
        print(f"{label:<50} {value:>10.2f}  {unit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
