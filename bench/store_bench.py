"""The store against what PostgreSQL itself can do, measured in one run.

    python -m bench.store_bench [--customers 200000] [--scale 1000000] [--admin-url URL]

Creates a throwaway PostgreSQL database (dropped at the end), generates realistic
customers (bench/customers.py) and prints one table:

- import throughput of ``customer-store import`` (the best of three turns, as for each
  baseline) against (a) a raw psycopg ``COPY`` of the
  same customers into the project's own tables, flattened by a minimal hand-written loop
  without validation (the limit), and (b) a JSONB-document table upserted with psycopg in
  pipelined batches (what a user would build instead);
- ``get`` and ``get_json`` by id latency (p50, p99) of a ``CustomerReader`` on a read-only
  engine (what a request handler uses), and ``get`` in a new read-only session per call,
  against the same statement (``get``'s own, compiled by SQLAlchemy) run by a raw psycopg
  connection and fetched as a row, and a JSONB document fetch, taking turns per id; at 10k
  customers and at ``--scale`` customers;
- ``find`` page latency at page 1 and page 1,000 (pages of 100), without and with a filter;
- peak memory of the import, its validating workers included (their proportional set
  sizes, summed), for the full file and a quarter of it.

Figures only; nothing is asserted. Each ratio is printed beside its target (issue 14's
table, kept in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bench.customers import write_jsonl
from bench.raw_rows import CHILD_TABLES, CUSTOMER_COLUMNS, customer_row
from repository import CustomerFilter, CustomerReader, make_engine, make_session_factory
from repository.db.backends import backend_of
from repository.db.engine import without_pooler_flag
from repository.db.schema import upgrade_to_head
from repository.store.customers import CustomerRepository
from repository.store.queries import cursor_after, find
from repository.store.reads import get_by_id_statement

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
PAGE = 100


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    note: str = ""


@contextmanager
def throwaway_database(admin_url: str) -> Iterator[str]:
    admin = make_engine(admin_url, isolation_level="AUTOCOMMIT")  # ?pgbouncer= understood
    name = f"csbench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def libpq_url(url: str) -> str:
    """``url`` for psycopg itself: libpq's scheme, and no ``?pgbouncer=`` (libpq refuses it)."""
    url, _ = without_pooler_flag(url)
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def reset(url: str) -> None:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(
            "TRUNCATE customers, customer_addresses, customer_loyalty_campaigns, "
            "customer_referral_entries, customer_tombstones, webhook_events"
        )
        conn.execute("DROP TABLE IF EXISTS bench_documents")
        conn.execute("VACUUM ANALYZE")


# -- import ------------------------------------------------------------------------------

def run_import(url: str, path: str) -> float:
    """Seconds of ``customer-store import`` as its own process."""
    started = time.perf_counter()
    process = subprocess.run(
        _import_command(url, path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        check=False,
    )
    if process.returncode != 0:
        raise SystemExit(f"import failed: {process.stderr.decode()}")
    return time.perf_counter() - started


def import_memory(url: str, path: str) -> tuple[float, float]:
    """Peak memory (MB) of ``customer-store import``, its validating workers included: the
    largest total of their proportional set sizes (pages they share counted once; polled
    every 20 ms, in a run of its own since polling costs time), and the sum of each one's
    peak resident set (an upper bound: shared pages count in each, and the peaks need not
    coincide)."""
    process = subprocess.Popen(
        _import_command(url, path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    peaks: dict[int, int] = {}
    largest_total = 0
    while process.poll() is None:
        pids = (process.pid, *_children(process.pid))
        for pid in pids:
            peaks[pid] = max(peaks.get(pid, 0), _status_kib(pid, "VmHWM"))
        largest_total = max(largest_total, sum(_proportional_kib(pid) for pid in pids))
        time.sleep(0.02)
    stderr = process.stderr.read().decode() if process.stderr else ""
    if process.returncode != 0:
        raise SystemExit(f"import failed: {stderr}")
    return largest_total / 1024, sum(peaks.values()) / 1024


def _import_command(url: str, path: str) -> list[str]:
    return [sys.executable, "-m", "customer_store", "--database-url", url, "import", path]


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        return [int(child) for task in tasks
                for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:  # gone meanwhile
        return []


def _status_kib(pid: int, field: str) -> int:
    """A memory figure of /proc/PID/status (``VmHWM``: the peak resident set), in KiB."""
    return _proc_kib(f"/proc/{pid}/status", field)


def _proportional_kib(pid: int) -> int:
    return _proc_kib(f"/proc/{pid}/smaps_rollup", "Pss")


def _proc_kib(path: str, field: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:  # gone meanwhile
        pass
    return 0


def raw_copy(url: str, path: str) -> float:
    """(a): parse each line, flatten it by hand, COPY into the project's tables."""
    started = time.perf_counter()
    with psycopg.connect(libpq_url(url)) as conn, conn.cursor() as cur:
        batch: list[dict[str, Any]] = []
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                batch.append(json.loads(line))
                if len(batch) == 5000:
                    _copy_batch(cur, batch)
                    batch = []
        _copy_batch(cur, batch)
        conn.commit()
    return time.perf_counter() - started


def _copy_batch(cur: Any, batch: list[dict[str, Any]]) -> None:
    if not batch:
        return
    with cur.copy(f"COPY customers ({', '.join(CUSTOMER_COLUMNS)}) FROM STDIN") as copy:
        for customer in batch:
            copy.write_row(customer_row(customer))
    for table, columns, rows in CHILD_TABLES:
        with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for customer in batch:
                for row in rows(customer):
                    copy.write_row(row)


def jsonb_documents(url: str, path: str) -> float:
    """(b): one JSONB document per customer, upserted newest-wins in pipelined batches."""
    started = time.perf_counter()
    with psycopg.connect(libpq_url(url)) as conn:
        conn.execute(
            "CREATE TABLE bench_documents (id text PRIMARY KEY, version_at timestamptz,"
            " doc jsonb NOT NULL)"
        )
        conn.commit()
        sql = (
            "INSERT INTO bench_documents (id, version_at, doc) VALUES (%s, %s, %s::jsonb)"
            " ON CONFLICT (id) DO UPDATE SET doc = excluded.doc, version_at = excluded.version_at"
            " WHERE excluded.version_at >= bench_documents.version_at"
        )
        batch: list[tuple[str, str, str]] = []
        with open(path, encoding="utf-8") as lines, conn.cursor() as cur:
            for line in lines:
                value = json.loads(line)
                batch.append((value["id"], value.get("updated_at") or value.get("created_at"),
                              line))
                if len(batch) == 500:
                    cur.executemany(sql, batch)
                    conn.commit()
                    batch = []
            if batch:
                cur.executemany(sql, batch)
                conn.commit()
    return time.perf_counter() - started


# -- reads ---------------------------------------------------------------------------------

def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def get_latencies(url: str, ids: list[str]) -> dict[str, tuple[float, float]]:
    """p50 and p99 (ms) of ``get``, ``get_json`` and the baselines, called in turn for each
    id so that every variant meets the same conditions (the machine's load drifts)."""
    engine = make_engine(url, read_only=True)  # as a service's request handlers would
    sessions = make_session_factory(engine)
    # The baseline runs get's own statement, compiled by SQLAlchemy, on a raw psycopg
    # connection (prepared after five runs, as psycopg does by default) and fetches the row.
    compiled = get_by_id_statement(backend_of(engine)).compile(dialect=engine.dialect)
    raw_sql, bound = compiled.string, {k: v for k, v in compiled.params.items() if k != "id"}

    reader = CustomerReader(engine)

    def ours(customer_id: str) -> Any:
        found = reader.get(customer_id)
        assert found is not None
        return found

    def ours_json(customer_id: str) -> Any:
        found = reader.get_json(customer_id)
        assert found is not None
        return found

    def in_session(customer_id: str) -> Any:
        with sessions() as session:
            found = CustomerRepository(session).get(customer_id)
            assert found is not None
            return found

    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        def raw(customer_id: str) -> Any:
            return conn.execute(raw_sql, {"id": customer_id, **bound}).fetchone()

        calls: dict[str, Callable[[str], Any]] = {
            "raw single statement": raw, "get": ours, "get_json": ours_json,
        }
        has_documents = conn.execute("SELECT to_regclass('bench_documents')").fetchone()
        if has_documents and has_documents[0]:
            calls["JSONB document"] = lambda i: conn.execute(
                "SELECT doc FROM bench_documents WHERE id = %s", (i,)).fetchone()
        out = interleaved(ids, calls)
        # The session's figure from a pass of its own against the raw statement, so that
        # neither pass has more calls taking turns than before it was added.
        in_sessions = interleaved(ids, {"raw single statement": raw, "get": in_session})
        out["get in a session"] = in_sessions["get"]
        out["raw, beside get in a session"] = in_sessions["raw single statement"]
    engine.dispose()
    return out


def interleaved(
    ids: list[str], calls: dict[str, Callable[[str], Any]]
) -> dict[str, tuple[float, float]]:
    """p50 and p99 (ms) of each call over ``ids``, the calls taking turns per id."""
    for customer_id in ids[:50]:  # warm up connections, caches and prepared statements
        for call in calls.values():
            call(customer_id)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for customer_id in ids:
        for name, call in calls.items():
            started = time.perf_counter()
            call(customer_id)
            samples[name].append((time.perf_counter() - started) * 1000)
    return {name: percentiles(values) for name, values in samples.items()}


def find_latencies(url: str, filters: CustomerFilter | None, label: str) -> dict[str, float]:
    engine = make_engine(url)
    sessions = make_session_factory(engine, read_only=True)
    with sessions() as session:
        where = "WHERE metadata @> '{\"tier\": \"gold\"}'" if filters else ""
        skip = session.scalar(text(
            f"SELECT id FROM customers {where} ORDER BY id OFFSET {PAGE * 999 - 1} LIMIT 1"
        ))
    out = {}
    for page_number, cursor in ((1, None), (1000, cursor_after(skip) if skip else None)):
        samples = []
        for _ in range(30):
            with sessions() as session:
                started = time.perf_counter()
                page = find(session, filters, cursor=cursor, limit=PAGE)
                samples.append((time.perf_counter() - started) * 1000)
                assert len(page.customers) == PAGE
        out[f"find {label} page {page_number}"] = statistics.median(samples)
    engine.dispose()
    return out


def grow(url: str, target: int) -> int:
    """Copy the stored customers under new ids until there are about ``target``."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        count = conn.execute("SELECT count(*) FROM customers").fetchone()[0]  # type: ignore[index]
        copies = max(0, target // count - 1)
        for k in range(1, copies + 1):
            suffix = f".{k}"
            conn.execute(
                "INSERT INTO customers SELECT id || %s AS id, source_id, name, description,"
                " email, phone, birthday, birthdate, metadata, system_metadata, created_at,"
                " updated_at, object, redemptions_total_redeemed, redemptions_total_failed,"
                " redemptions_total_succeeded, redemptions_total_rolled_back,"
                " redemptions_total_rollback_failed, redemptions_total_rollback_succeeded,"
                " gift_redeemed_amount, gift_amount_to_go, loyalty_card_redeemed_points,"
                " loyalty_card_points_to_go, orders_total_amount, orders_total_count,"
                " orders_average_amount, orders_last_order_amount, orders_last_order_date,"
                " loyalty_points, loyalty_referred_customers, referrals_total,"
                " assets_cockpit_url, assets_cockpit_preference_center_url, version_at,"
                " absent_mask, null_mask, extra FROM customers WHERE strpos(id, '.') = 0",
                (suffix,),
            )
            for table in ("customer_addresses", "customer_loyalty_campaigns",
                          "customer_referral_entries"):
                columns = [r[0] for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = %s"
                    " AND column_name <> 'customer_id' ORDER BY ordinal_position", (table,))]
                names = ", ".join(columns)
                conn.execute(
                    f"INSERT INTO {table} (customer_id, {names}) SELECT customer_id || %s,"
                    f" {names} FROM {table} WHERE strpos(customer_id, '.') = 0",
                    (suffix,),
                )
        conn.execute("VACUUM ANALYZE")
        return int(conn.execute("SELECT count(*) FROM customers").fetchone()[0])  # type: ignore[index]


def sample_ids(url: str, count: int) -> list[str]:
    with psycopg.connect(libpq_url(url)) as conn:
        rows = conn.execute(
            "SELECT id FROM customers TABLESAMPLE SYSTEM (10) LIMIT %s", (count * 3,)
        ).fetchall()
    ids = [r[0] for r in rows]
    random.Random(3).shuffle(ids)
    return ids[:count]


# -- the run ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--scale", type=int, default=1_000_000)
    parser.add_argument("--gets", type=int, default=2000)
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL", DEFAULT_ADMIN_URL))
    args = parser.parse_args(argv)

    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as tmp, throwaway_database(args.admin_url) as url:
        upgrade_to_head(url)
        full = str(Path(tmp) / "customers.jsonl")
        quarter = str(Path(tmp) / "quarter.jsonl")
        size = write_jsonl(full, args.customers)
        write_jsonl(quarter, args.customers // 4)
        n = args.customers
        print(f"# {n} customers, {size / n:.0f} bytes each on average", file=sys.stderr)

        reset(url)
        quarter_memory, _ = import_memory(url, quarter)
        reset(url)
        full_memory, peaks_summed = import_memory(url, full)
        # Taking turns, three times each, the best of each kept: the machine's speed drifts
        # between runs, and the ratios should not measure the drift.
        raw_times, doc_times, ours_times = [], [], []
        for _ in range(3):
            reset(url)
            raw_times.append(raw_copy(url, full))
            reset(url)
            doc_times.append(jsonb_documents(url, full))
            reset(url)
            ours_times.append(run_import(url, full))  # its customers stay for the reads
        raw_seconds, doc_seconds, ours_seconds = min(raw_times), min(doc_times), min(ours_times)
        figures += [
            Figure("import: customer-store import", n / ours_seconds, "customers/s"),
            Figure("import: (a) raw COPY", n / raw_seconds, "customers/s"),
            Figure("import: (b) JSONB document upsert", n / doc_seconds, "customers/s"),
            Figure("import / raw COPY", raw_seconds / ours_seconds, "ratio", "target >= 0.6"),
            Figure("import / JSONB upsert", doc_seconds / ours_seconds, "ratio", "report"),
            Figure(f"import peak memory (PSS), {n // 4} customers", quarter_memory, "MB"),
            Figure(f"import peak memory (PSS), {n} customers", full_memory, "MB",
                   "target < 150 at 200k"),
            Figure(f"import peak RSS of each process, summed, {n} customers", peaks_summed,
                   "MB", "an upper bound"),
        ]
        jsonb_documents(url, full)  # documents again, for the document fetch baseline

        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute("DELETE FROM customers WHERE id > (SELECT id FROM customers ORDER BY id"
                         " OFFSET 9999 LIMIT 1)")
            conn.execute("VACUUM ANALYZE")
        small = get_latencies(url, sample_ids(url, args.gets))
        for name, (p50, p99) in small.items():
            figures.append(Figure(f"{name} p50, 10k customers", p50, "ms"))
            figures.append(Figure(f"{name} p99, 10k customers", p99, "ms"))
        figures.append(Figure("get p50 / raw single statement",
                              small["get"][0] / small["raw single statement"][0], "ratio",
                              "target <= 1.5"))
        figures.append(Figure("get_json p50 / raw single statement",
                              small["get_json"][0] / small["raw single statement"][0], "ratio",
                              "report"))
        figures.append(Figure("get in a session p50 / raw single statement",
                              small["get in a session"][0]
                              / small["raw, beside get in a session"][0], "ratio", "report"))

        total = grow(url, args.scale)
        large = get_latencies(url, sample_ids(url, args.gets))
        figures.append(Figure(f"get p50, {total} customers", large["get"][0], "ms"))
        figures.append(Figure(f"get p99, {total} customers", large["get"][1], "ms"))
        figures.append(Figure(f"get p50 at {total} / at 10k", large["get"][0] / small["get"][0],
                              "ratio", "target <= 1.3"))
        for filters, label in ((None, "all"), (CustomerFilter(metadata_contains={"tier": "gold"}),
                                               "tier=gold")):
            pages = find_latencies(url, filters, label)
            for name, value in pages.items():
                figures.append(Figure(f"{name}, {total} customers", value, "ms"))
            first, thousandth = pages[f"find {label} page 1"], pages[f"find {label} page 1000"]
            figures.append(Figure(f"find {label} page 1000 / page 1", thousandth / first,
                                  "ratio", "target <= 1.5"))

    print(f"machine: {platform.node() and 'this machine'}; {os.cpu_count()} CPUs; "
          f"{platform.platform()}; Python {platform.python_version()}")
    print(f"{'figure':<52} {'value':>12}  unit          note")
    for f in figures:
        print(f"{f.name:<52} {f.value:>12.2f}  {f.unit:<12}  {f.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
