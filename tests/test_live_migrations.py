"""Migrations on a store that holds data, and (PostgreSQL) while the service writes.

A private database at revision 0002 gets the example customers (and some beyond ASCII) and
webhook events; its content (customers as exported, tombstones, every column of every
event) must be the same after the upgrade to head, after the downgrade back to 0002 and
after upgrading again, and at head every customer is found by its email and name.
On PostgreSQL the 0003 -> 0004 upgrade (indexes built CONCURRENTLY) and the 0004 -> 0005
upgrade (search-key columns added, filled in batches, indexed CONCURRENTLY) run in another
process while a writer of the release before keeps writing customers: no write waits more
than a moment, even while an older transaction holds the table (a plain CREATE INDEX, or
an ALTER TABLE waiting for its lock, would queue behind it and make every later writer
wait). An interrupted 0005 is finished by running it again.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.exc import IntegrityError, SAWarning
from sqlalchemy.orm import Session

from models.tables import CustomerRow, CustomerTombstoneRow
from repository import (
    CustomerFilter,
    CustomerRepository,
    ingest_delivery,
    make_engine,
    make_session_factory,
)
from repository.db.schema import alembic_config, current_revision, head_revision
from repository.importing import import_records, read_records
from repository.store.mapping import email_key, name_key
from repository.store.queries import MAX_PAGE_SIZE
from repository.webhooks import list_events
from tests.conftest import load_example_customers, load_example_events
from tests.webhook_streams import envelope, iso

# make test-slow: measures how long writers wait on migrations (docs/testing.md).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "0002"
#: An index of 0004 on both backends, to see which revision the schema really has.
PROBE_INDEX = "ix_customers_orders_last_order_date"
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
            json.dumps(c.to_dict(), ensure_ascii=False, separators=(",", ":"))
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
def store_at_0002(
    request: pytest.FixtureRequest, make_database: Any
) -> Iterator[tuple[str, Snapshot]]:
    """A database at 0002 holding customers, tombstones and events, and their snapshot. They
    are written and read by the current code (which needs the newest schema: a customer's
    campaign rows gained a column in 0009) and the schema is then taken back."""
    url: str = make_database(request.param)
    command.upgrade(alembic_config(url), "head")
    engine = make_engine(url)
    try:
        sessions = make_session_factory(engine)
        report = import_records(sessions, read_records(jsonl(
            [raw for _, raw in load_example_customers()]
            + generated(30, "uni", datetime(2024, 1, 1, tzinfo=UTC))
        )))
        assert report.applied > 0
        outcomes = {ingest_delivery(sessions, body).outcome.value for body in example_bodies()}
        assert {"applied", "ignored"} <= outcomes
        before = snapshot(engine)
    finally:
        engine.dispose()
    command.downgrade(alembic_config(url), BEFORE)
    yield url, before


def test_data_survives_upgrade_downgrade_and_upgrade_again(
    store_at_0002: tuple[str, Snapshot],
) -> None:
    url, before = store_at_0002
    engine = make_engine(url)
    try:
        assert revision(engine) == BEFORE and PROBE_INDEX not in indexes(engine)
        assert before.customers and before.events and before.tombstones

        command.upgrade(alembic_config(url), "head")
        engine.dispose()
        assert revision(engine) == head_revision() and PROBE_INDEX in indexes(engine)
        assert snapshot(engine) == before
        assert_found_by_folded_email_and_name(engine)

        command.downgrade(alembic_config(url), BEFORE)
        engine.dispose()
        assert revision(engine) == BEFORE and PROBE_INDEX not in indexes(engine)

        command.upgrade(alembic_config(url), "head")
        engine.dispose()
        assert revision(engine) == head_revision() and PROBE_INDEX in indexes(engine)
        assert snapshot(engine) == before
        assert_found_by_folded_email_and_name(engine)
    finally:
        engine.dispose()


def generated(count: int, prefix: str, updated_at: datetime) -> list[dict[str, Any]]:
    """Customers made from an example; every third has an email and a name beyond ASCII."""
    template = next(raw for name, raw in load_example_customers() if name.startswith("03-"))
    customers = []
    for i in range(count):
        customer = copy.deepcopy(template)
        first, domain = ("Ülrike İz", "Örnek.Example") if i % 3 == 0 else ("Live", "live.example")
        customer.update(
            id=f"cust_{prefix}{i:06d}", source_id=f"{prefix}-{i}",
            email=f"{first.split()[0]}.{prefix}.{i}@{domain}", name=f"{first} {prefix} {i}",
            updated_at=iso(updated_at), metadata={"batch": prefix, "n": i},
        )
        customers.append(customer)
    return customers


#: A write as the release running during an upgrade makes it: one statement in a
#: transaction of its own, on columns every revision has (no search keys).
OLD_RELEASE_WRITE = text(
    "UPDATE customers SET description = :description, updated_at = :at, version_at = :at"
    " WHERE id = :id"
)


@dataclass
class Writer:
    """Writes new versions of customers, one transaction each, until told to stop."""

    engine: Engine
    ids: list[str]
    latencies: list[tuple[float, float]]  # (start, seconds)
    stop: threading.Event
    written: dict[str, str] = field(default_factory=dict)
    error: BaseException | None = None

    def run(self) -> None:
        version = datetime(2025, 1, 1, tzinfo=UTC)
        try:
            while not self.stop.is_set():
                version += timedelta(seconds=1)
                customer_id = self.ids[len(self.latencies) % len(self.ids)]
                description = f"written at {iso(version)}"
                started = time.monotonic()
                with self.engine.begin() as connection:
                    connection.execute(OLD_RELEASE_WRITE, {
                        "description": description, "at": version, "id": customer_id,
                    })
                self.latencies.append((started, time.monotonic() - started))
                self.written[customer_id] = description
        except BaseException as exc:  # reported by the test
            self.error = exc


def store_at(make_database: Any, revision_: str, count: int) -> str:
    """A PostgreSQL database at ``revision_`` holding ``count`` generated customers (written
    by the current code at head, then the schema is taken back)."""
    url: str = make_database("postgresql")
    command.upgrade(alembic_config(url), "head")
    engine = make_engine(url)
    try:
        report = import_records(
            make_session_factory(engine),
            read_records(jsonl(generated(count, "bulk", datetime(2024, 1, 1, tzinfo=UTC)))),
            batch_size=1000,
        )
        assert report.applied == count
    finally:
        engine.dispose()
    command.downgrade(alembic_config(url), revision_)
    return url


@dataclass
class LiveUpgrade:
    """An upgrade run in another process while a writer writes and, for its first
    ``HOLD_SECONDS``, an older transaction holds a write open on customers."""

    seconds: float
    latencies: list[float]
    written: dict[str, str]


def upgrade_while_writing(url: str, target: str, writer_ids: list[str]) -> LiveUpgrade:
    engine = make_engine(url, pool_size=3)
    try:
        writer = Writer(engine, writer_ids, [], threading.Event())
        thread = threading.Thread(target=writer.run, daemon=True)
        thread.start()
        # An older transaction with a write open on customers, as a slow request has.
        holder = engine.connect()
        holder_tx = holder.begin()
        holder.execute(text("UPDATE customers SET phone = 'held' WHERE id = :id"),
                       {"id": "cust_bulk000001"})
        migration = subprocess.Popen(
            [sys.executable, "-c",
             "import sys; from alembic import command;"
             " from repository.db.schema import alembic_config;"
             " command.upgrade(alembic_config(sys.argv[1]), sys.argv[2])", url, target],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        started = time.monotonic()
        time.sleep(HOLD_SECONDS)
        assert migration.poll() is None, "the upgrade ended while an older write was open"
        holder_tx.commit()
        holder.close()
        output, _ = migration.communicate(timeout=300)
        ended = time.monotonic()
        writer.stop.set()
        thread.join(timeout=30)
        assert writer.error is None, repr(writer.error)
        assert migration.returncode == 0, output.decode(errors="replace")
        assert revision(engine) == target
        during = [seconds for start, seconds in writer.latencies if started <= start <= ended]
        return LiveUpgrade(ended - started, during, writer.written)
    finally:
        engine.dispose()


def check_writes(live: LiveUpgrade, url: str, label: str, record_property: Any,
                 capsys: pytest.CaptureFixture[str]) -> None:
    worst = max(live.latencies)
    record_property(f"writes_during_{label}", len(live.latencies))
    record_property(f"max_write_latency_{label}_s", round(worst, 3))
    with capsys.disabled():
        print(f"\nupgrade {label} took {live.seconds:.1f}s; {len(live.latencies)} writes "
              f"meanwhile, slowest {worst * 1000:.0f} ms")
    assert len(live.latencies) >= 20, len(live.latencies)
    assert worst < MAX_WRITE_SECONDS, worst
    # What was written meanwhile is there.
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            stored = {row.id: row.description for row in connection.execute(
                select(CustomerRow.id, CustomerRow.description)
                .where(CustomerRow.id.in_(list(live.written)))
            )}
        assert stored == live.written
    finally:
        engine.dispose()


def test_building_the_search_indexes_does_not_block_writers(
    make_database: Any, record_property: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    url = store_at(make_database, "0003", BULK_CUSTOMERS)
    live = upgrade_while_writing(url, "0004", [f"cust_bulk{i:06d}" for i in range(2, 52)])
    engine = make_engine(url)
    try:
        assert PROBE_INDEX in indexes(engine)
        with Session(engine) as session:
            assert CustomerRepository(session).count() == BULK_CUSTOMERS
    finally:
        engine.dispose()
    check_writes(live, url, "0003->0004", record_property, capsys)


def test_adding_the_folded_search_keys_does_not_block_writers(
    make_database: Any, record_property: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """0005 adds two columns (an ALTER needing the table to itself), fills them in batches
    and builds their indexes, all while an older transaction holds a write open and a
    writer of the previous release keeps writing."""
    url = store_at(make_database, "0004", BULK_CUSTOMERS)
    live = upgrade_while_writing(url, "0005", [f"cust_bulk{i:06d}" for i in range(2, 52)])
    check_writes(live, url, "0004->0005", record_property, capsys)
    engine = make_engine(url)
    try:
        assert_search_keys_fill_every_row(engine, BULK_CUSTOMERS)
        # The current code reads whole customers at head (0009 added a column they read);
        # the later revisions leave the search keys as 0005 filled them.
        command.upgrade(alembic_config(url), "head")
        assert_found_by_folded_email_and_name(engine)
        assert {"ix_customers_email_folded", "ix_customers_name_folded"} <= valid_indexes(engine)
        assert not {"ix_customers_email_lower", "ix_customers_name_lower_prefix"} & indexes(
            engine
        )
    finally:
        engine.dispose()


def test_an_interrupted_upgrade_to_the_folded_keys_is_finished_by_running_it_again(
    make_database: Any,
) -> None:
    """As an interrupted 0005 leaves it: the columns added, some rows filled, an index
    left invalid by a CREATE INDEX CONCURRENTLY that failed. The next run completes it."""
    url = store_at(make_database, "0004", 1200)
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(
                "ALTER TABLE customers ADD COLUMN email_folded TEXT, ADD COLUMN name_folded TEXT"
            ))
            connection.execute(text(
                "UPDATE customers SET email_folded = 'same', name_folded = lower(name)"
                " WHERE id < 'cust_bulk000600'"
            ))
        autocommit = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        with autocommit as connection, pytest.raises(IntegrityError):
            connection.execute(text(
                "CREATE UNIQUE INDEX CONCURRENTLY ix_customers_email_folded"
                " ON customers (email_folded)"
            ))
        assert "ix_customers_email_folded" in indexes(engine)
        assert "ix_customers_email_folded" not in valid_indexes(engine)

        command.upgrade(alembic_config(url), "head")
        engine.dispose()
        assert revision(engine) == head_revision()
        assert {"ix_customers_email_folded", "ix_customers_name_folded"} <= valid_indexes(engine)
        with engine.connect() as connection:
            unique = connection.execute(text(
                "SELECT indisunique FROM pg_index"
                " WHERE indexrelid = to_regclass('ix_customers_email_folded')"
            )).scalar_one()
        assert unique is False
        assert_search_keys_fill_every_row(engine, 1200)
        assert_found_by_folded_email_and_name(engine)
    finally:
        engine.dispose()


def valid_indexes(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(connection.execute(text(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = to_regclass('customers') AND i.indisvalid"
        )).scalars())


def assert_search_keys_fill_every_row(engine: Engine, expected_rows: int) -> None:
    """Every row's search keys are the fold of its email and name, as a write makes them."""
    with engine.connect() as connection:
        rows = connection.execute(select(
            CustomerRow.email, CustomerRow.name, CustomerRow.email_folded,
            CustomerRow.name_folded,
        )).all()
    assert len(rows) == expected_rows
    wrong = [r for r in rows if (r[2], r[3]) != (email_key(r[0]), name_key(r[1]))]
    assert wrong == [], wrong[:5]


def assert_found_by_folded_email_and_name(engine: Engine) -> None:
    """Every customer is found by its email in other cases and by its name as a prefix."""
    with Session(engine) as session:
        repo = CustomerRepository(session)
        customers = [c.to_dict() for c in repo.iter_all()]
        assert customers
        for customer in customers[::7]:
            email = customer.get("email")
            for variant in (email, email.upper()) if email else ():
                found = repo.find(CustomerFilter(email=variant), limit=MAX_PAGE_SIZE)
                assert customer["id"] in [c.id for c in found.customers], variant
            if customer.get("name"):
                prefix = customer["name"].swapcase()
                found = repo.find(CustomerFilter(name_prefix=prefix), limit=MAX_PAGE_SIZE)
                assert customer["id"] in [c.id for c in found.customers], prefix
