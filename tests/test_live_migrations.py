"""Migrations on a store that holds data, and (PostgreSQL) while the service writes.

A private database at revision 0002 gets the example customers and webhook events; its
content (customers as exported, tombstones, every column of every event) must be the same
after the upgrade to head, after the downgrade back to 0002 and after upgrading again.
On PostgreSQL the 0003 -> 0004 upgrade (indexes built CONCURRENTLY) runs in another
process while a writer keeps upserting customers: no write waits more than a moment,
even while an older transaction holds the table (a plain CREATE INDEX would queue behind
it and make every later writer wait).
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import SAWarning
from sqlalchemy.orm import Session

from models.tables import CustomerTombstoneRow
from repository import (
    CustomerRepository,
    UpsertOutcome,
    import_records,
    make_engine,
    make_session_factory,
    read_records,
)
from repository.ingest import ingest_delivery, list_events
from repository.retry import run_in_transaction
from repository.schema import alembic_config, current_revision, head_revision
from tests.conftest import load_example_customers, load_example_events
from tests.webhook_streams import envelope, iso

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "0002"
#: An index of 0004 on both backends, to see which revision the schema really has.
PROBE_INDEX = "ix_customers_updated_at"
#: How long an older transaction keeps a write open on ``customers`` during the upgrade.
HOLD_SECONDS = 4.0
#: The longest a single write may take while the indexes are built.
MAX_WRITE_SECONDS = 2.0
BULK_CUSTOMERS = 5_000


def jsonl(records: list[Any]) -> io.StringIO:
    return io.StringIO("".join(json.dumps(r) + "\n" for r in records))


def example_bodies() -> list[bytes]:
    """Every example event as a delivery: full envelopes as they are, data parts wrapped."""
    bodies = []
    for number, (name, document) in enumerate(load_example_events()):
        if name.endswith("-data.json"):
            event_type = name.removesuffix("-data.json").split("-", 1)[1]
            at = iso(datetime(2024, 6, 1, tzinfo=UTC) + timedelta(minutes=number))
            bodies.append(json.dumps(envelope(
                f"evcus_live{number:04d}{uuid.uuid4().hex[:8]}", event_type, document, at
            )).encode())
        else:
            bodies.append(json.dumps(document).encode())
    return bodies


@dataclass(frozen=True)
class Snapshot:
    customers: list[str]
    tombstones: list[tuple[str, datetime]]
    events: list[tuple[Any, ...]]


def snapshot(engine: Engine) -> Snapshot:
    with Session(engine) as session:
        customers = [
            json.dumps(c.to_json(), ensure_ascii=False, separators=(",", ":"))
            for c in CustomerRepository(session).iter_all()
        ]
        # Only the columns every revision since 0002 has.
        tombstones = [
            (row.customer_id, row.deleted_at)
            for row in session.execute(
                select(CustomerTombstoneRow.customer_id, CustomerTombstoneRow.deleted_at)
                .order_by(CustomerTombstoneRow.customer_id)
            )
        ]
        events = [
            (row.event_id, row.event_type, row.customer_id, row.event_created_at,
             row.first_received_at, row.last_received_at, row.deliveries, row.outcome,
             row.error, bytes(row.body))
            for row in list_events(session, limit=100_000)
        ]
    return Snapshot(customers, tombstones, events)


def indexes(engine: Engine) -> set[str]:
    with warnings.catch_warnings():
        # SQLite: expression indexes are not reflected; the probe index is a plain one.
        warnings.simplefilter("ignore", SAWarning)
        return {ix["name"] for ix in inspect(engine).get_indexes("customers") if ix["name"]}


def revision(engine: Engine) -> str | None:
    return current_revision(engine)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_at_0002(request: pytest.FixtureRequest, make_database: Any) -> Iterator[str]:
    """A database at 0002 holding customers, tombstones and events. They are written by
    the current code (which needs the newest schema) and the schema is then taken back."""
    url: str = make_database(request.param)
    command.upgrade(alembic_config(url), "head")
    engine = make_engine(url)
    try:
        sessions = make_session_factory(engine)
        report = import_records(sessions, read_records(jsonl(
            [raw for _, raw in load_example_customers()]
        )))
        assert report.applied > 0
        outcomes = {ingest_delivery(sessions, body).outcome.value for body in example_bodies()}
        assert {"applied", "ignored"} <= outcomes
    finally:
        engine.dispose()
    command.downgrade(alembic_config(url), BEFORE)
    yield url


def test_data_survives_upgrade_downgrade_and_upgrade_again(store_at_0002: str) -> None:
    url = store_at_0002
    engine = make_engine(url)
    try:
        assert revision(engine) == BEFORE and PROBE_INDEX not in indexes(engine)
        before = snapshot(engine)
        assert before.customers and before.events and before.tombstones

        command.upgrade(alembic_config(url), "head")
        engine.dispose()
        assert revision(engine) == head_revision() and PROBE_INDEX in indexes(engine)
        assert snapshot(engine) == before

        command.downgrade(alembic_config(url), BEFORE)
        engine.dispose()
        assert revision(engine) == BEFORE and PROBE_INDEX not in indexes(engine)
        assert snapshot(engine) == before

        command.upgrade(alembic_config(url), "head")
        engine.dispose()
        assert revision(engine) == head_revision() and PROBE_INDEX in indexes(engine)
        assert snapshot(engine) == before
    finally:
        engine.dispose()


def generated(count: int, prefix: str, updated_at: datetime) -> list[dict[str, Any]]:
    template = next(raw for name, raw in load_example_customers() if name.startswith("03-"))
    customers = []
    for i in range(count):
        customer = copy.deepcopy(template)
        customer.update(
            id=f"cust_{prefix}{i:06d}", source_id=f"{prefix}-{i}",
            email=f"{prefix}.{i}@live.example", name=f"Live {prefix} {i}",
            updated_at=iso(updated_at), metadata={"batch": prefix, "n": i},
        )
        customers.append(customer)
    return customers


@dataclass
class Writer:
    """Upserts new versions of customers, one transaction each, until told to stop."""

    engine: Engine
    customers: list[dict[str, Any]]
    latencies: list[tuple[float, float]]  # (start, seconds)
    stop: threading.Event
    error: BaseException | None = None

    def run(self) -> None:
        sessions = make_session_factory(self.engine)
        version = datetime(2025, 1, 1, tzinfo=UTC)
        try:
            while not self.stop.is_set():
                version += timedelta(seconds=1)
                customer = dict(self.customers[len(self.latencies) % len(self.customers)])
                customer["updated_at"] = iso(version)
                started = time.monotonic()
                run_in_transaction(sessions, _upserting(customer))
                self.latencies.append((started, time.monotonic() - started))
        except BaseException as exc:  # reported by the test
            self.error = exc


def _upserting(customer: dict[str, Any]) -> Callable[[Session], UpsertOutcome]:
    def work(session: Session) -> UpsertOutcome:
        return CustomerRepository(session).upsert(customer)

    return work


def test_building_the_search_indexes_does_not_block_writers(
    make_database: Any, record_property: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    url: str = make_database("postgresql")
    command.upgrade(alembic_config(url), "0003")
    engine = make_engine(url, pool_size=3)
    try:
        stamp = datetime(2024, 1, 1, tzinfo=UTC)
        report = import_records(
            make_session_factory(engine),
            read_records(jsonl(generated(BULK_CUSTOMERS, "bulk", stamp))),
            batch_size=1000,
        )
        assert report.applied == BULK_CUSTOMERS
        writer = Writer(engine, generated(50, "live", stamp), [], threading.Event())
        thread = threading.Thread(target=writer.run, daemon=True)
        thread.start()
        # An older transaction with a write open on customers, as a slow request has.
        holder = engine.connect()
        holder_tx = holder.begin()
        holder.execute(text("UPDATE customers SET description = 'held' WHERE id = :id"),
                       {"id": "cust_bulk000000"})
        migration = subprocess.Popen(
            [sys.executable, "-c",
             "import sys; from alembic import command;"
             " from repository.schema import alembic_config;"
             " command.upgrade(alembic_config(sys.argv[1]), '0004')", url],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        started = time.monotonic()
        time.sleep(HOLD_SECONDS)
        assert migration.poll() is None, "the upgrade ended while an older write was open"
        holder_tx.commit()
        holder.close()
        output, _ = migration.communicate(timeout=120)
        ended = time.monotonic()
        writer.stop.set()
        thread.join(timeout=30)
        assert writer.error is None, repr(writer.error)
        assert migration.returncode == 0, output.decode(errors="replace")
        assert revision(engine) == "0004" and PROBE_INDEX in indexes(engine)

        during = [seconds for start, seconds in writer.latencies if started <= start <= ended]
        worst = max(during)
        record_property("writes_during_upgrade", len(during))
        record_property("max_write_latency_s", round(worst, 3))
        with capsys.disabled():
            print(f"\nupgrade 0003->0004 took {ended - started:.1f}s; {len(during)} writes "
                  f"meanwhile, slowest {worst * 1000:.0f} ms")
        assert len(during) >= 20, len(during)
        assert worst < MAX_WRITE_SECONDS, worst
        # What was written meanwhile is there, newest version of each customer.
        with Session(engine) as session:
            assert CustomerRepository(session).count() == BULK_CUSTOMERS + min(
                50, len(writer.latencies)
            )
    finally:
        engine.dispose()
