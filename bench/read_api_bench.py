"""What reading through the Voucherify-compatible API costs, in one run.

    python -m bench.read_api_bench [--customers 20000] [--scale 1000000] [--gets 2000]

Run from the repository root (the server is started by ``tests/servers.py``). On a
throwaway PostgreSQL database (dropped at the end) it imports ``--customers`` generated
customers (bench/customers.py), copies them under new ids up to ``--scale``, starts
``customer-store serve`` with read credentials and prints:

- ``GET /v1/customers/{id}`` latency (p50, p99) over one kept-alive HTTP connection, by id
  and by ``source_id``, against ``CustomerRepository.get`` in-process (a new read-only
  session per call, as a request handler makes them) and ``get_json``;
- list pages of 100 (``?limit=100&page=N``, default order ``-created_at``) at page 1 and
  page 99, and filtered by ``city``, over HTTP, with ``total`` served from the few-second
  cache the API keeps per filter set, and what a page would cost if each counted its
  ``total`` (the ``count(*)`` itself, timed alone).

Figures only; nothing is asserted but that every answer is a 200 with the expected body.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

from bench.customers import write_jsonl
from bench.store_bench import (
    DEFAULT_ADMIN_URL,
    grow,
    libpq_url,
    percentiles,
    run_import,
    sample_ids,
    throwaway_database,
)
from customer_store.read_api import APP_ID_VARIABLE, APP_TOKEN_VARIABLE
from repository import CustomerRepository, make_engine, make_session_factory
from repository.db import upgrade_to_head
from tests.servers import running_server

APP_ID = "bench-app"
APP_TOKEN = "bench-token"  # noqa: S105 - a throwaway credential of a throwaway server
HEADERS = {"X-App-Id": APP_ID, "X-App-Token": APP_TOKEN, "Accept": "application/json"}
PAGE = 100
# Pages sampled per list figure; the API caches a total for 5 s, so a run of this many
# pages recounts a few times: the p99 shows it.
PAGE_SAMPLES = 200


def timed(samples: int, call: Callable[[int], Any], *, warm_up: int = 20) -> list[float]:
    """Milliseconds of ``call(i)`` for ``i`` in ``range(samples)``, after ``warm_up`` calls."""
    for i in range(warm_up):
        call(i)
    out = []
    for i in range(samples):
        started = time.perf_counter()
        call(i)
        out.append((time.perf_counter() - started) * 1000)
    return out


def fetch(connection: http.client.HTTPConnection, path: str) -> Any:
    connection.request("GET", path, headers=HEADERS)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise SystemExit(f"GET {path} answered {response.status}: {body[:300]!r}")
    return body


def source_ids(url: str, ids: list[str]) -> list[str]:
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute(
            "SELECT id, source_id FROM customers WHERE id = ANY(%s) AND source_id IS NOT NULL",
            (ids,),
        ).fetchall()
    by_id: dict[str, str] = dict(rows)
    return [by_id[i] for i in ids if i in by_id]


def common_city(url: str) -> tuple[str, int]:
    with psycopg.connect(libpq_url(url)) as conn:
        row = conn.execute(
            "SELECT city, count(*) FROM customer_addresses WHERE city IS NOT NULL"
            " GROUP BY city ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def count_latency(url: str, statement: str, params: tuple[Any, ...] = ()) -> float:
    """Median milliseconds of the ``total`` statement alone (5 runs, after one)."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(statement, params)
        samples = []
        for _ in range(5):
            started = time.perf_counter()
            conn.execute(statement, params).fetchone()
            samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def in_process(url: str, ids: list[str]) -> dict[str, tuple[float, float]]:
    engine = make_engine(url, read_only=True)
    sessions = make_session_factory(engine)
    out = {}
    for name in ("get", "get_json"):
        def call(i: int, name: str = name) -> Any:
            with sessions() as session:
                found = getattr(CustomerRepository(session), name)(ids[i % len(ids)])
                assert found is not None
                return found

        if hasattr(CustomerRepository, name):
            out[f"in-process {name}"] = percentiles(timed(len(ids), call))
    engine.dispose()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--scale", type=int, default=1_000_000)
    parser.add_argument("--gets", type=int, default=2_000)
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL",
                                                               DEFAULT_ADMIN_URL))
    args = parser.parse_args(argv)
    rows: list[tuple[str, str]] = []

    def report(name: str, value: str) -> None:
        rows.append((name, value))
        print(f"{name:<58} {value}", file=sys.stderr, flush=True)

    with throwaway_database(args.admin_url) as url, tempfile.TemporaryDirectory() as tmp:
        upgrade_to_head(url)
        path = str(Path(tmp) / "customers.jsonl")
        write_jsonl(path, args.customers)
        seconds = run_import(url, path)
        report("import", f"{args.customers:,} customers in {seconds:.1f} s")
        started = time.perf_counter()
        stored = grow(url, args.scale)
        report("copied up to", f"{stored:,} customers in {time.perf_counter() - started:.0f} s")
        ids = sample_ids(url, args.gets)
        by_source = source_ids(url, ids)
        city, in_city = common_city(url)

        for name, (p50, p99) in in_process(url, ids).items():
            report(name, f"p50 {p50:.3f} ms  p99 {p99:.3f} ms")
        env = {APP_ID_VARIABLE: APP_ID, APP_TOKEN_VARIABLE: APP_TOKEN}
        with running_server(url, log_path=Path(tmp) / "serve.log", env=env,
                            extra_args=["--no-signature-check"]) as server:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            for label, keys in (("by id", ids), ("by source_id", by_source)):
                def one(i: int, keys: list[str] = keys) -> Any:
                    return fetch(connection, f"/v1/customers/{quote(keys[i % len(keys)], safe='')}")

                samples = timed(len(keys), one)
                p50, p99 = percentiles(samples)
                report(f"HTTP GET /v1/customers/{{id}} {label}", f"p50 {p50:.3f} ms  "
                       f"p99 {p99:.3f} ms")
            for label, query in (("", ""), (f" city={city} ({in_city:,})", f"&city={quote(city)}")):
                for page in (1, 99):
                    def page_call(_i: int, page: int = page, query: str = query) -> Any:
                        body = json.loads(fetch(
                            connection, f"/v1/customers?limit={PAGE}&page={page}{query}"))
                        expected = min(PAGE, max(0, body["total"] - (page - 1) * PAGE))
                        assert len(body["customers"]) == expected, "short page"
                        return body

                    p50, p99 = percentiles(timed(PAGE_SAMPLES, page_call, warm_up=5))
                    report(f"HTTP list page {page}{label}", f"p50 {p50:.2f} ms  "
                           f"p99 {p99:.2f} ms")
            connection.close()
        report("count(*) for total, all customers",
               f"{count_latency(url, 'SELECT count(*) FROM customers'):.1f} ms")
        report(f"count(*) for total, city={city}", "{:.1f} ms".format(count_latency(
            url,
            "SELECT count(*) FROM customers WHERE EXISTS (SELECT 1 FROM customer_addresses"
            " a WHERE a.customer_id = customers.id AND a.city = %s)",
            (city,),
        )))
    print(f"\n{'figure':<58} value")
    for name, value in rows:
        print(f"{name:<58} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
