"""Webhook ingestion under concurrency, on PostgreSQL: several processes, racing threads.

Deliveries of one stream are ingested by OS processes running the CLI side by side, and
threads released together by a barrier race on one customer or on one event. Whatever
the interleaving, the database must end in the state the events describe, with one
event row per event id.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine, delete, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from models import Base, EventOutcome, WebhookEventRow
from repository import (
    CustomerRepository,
    IngestResult,
    ingest_delivery,
    make_engine,
    make_session_factory,
)
from repository.webhooks import count_events
from tests.servers import cli_command
from tests.webhook_streams import build_stream, envelope, iso

# make test-slow: races several customer-store processes (docs/testing.md).
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
THREADS = 16
T = TypeVar("T")


@pytest.fixture(scope="module")
def postgres_url(make_database: Callable[[str], str]) -> str:
    """An empty PostgreSQL database migrated by the CLI, for this module."""
    url = make_database("postgresql")
    migrate = _cli(url, "migrate")
    assert migrate.returncode == 0, migrate.stderr
    return url


@pytest.fixture(scope="module")
def pg_engine(postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_url, pool_size=THREADS + 4, max_overflow=0)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(pg_engine: Engine) -> Iterator[sessionmaker[Session]]:
    """Sessions on the module's database, emptied after each test."""
    yield make_session_factory(pg_engine)
    with pg_engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(delete(table))


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_command(url, *args),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )


def _race(work: Callable[[Any], T], items: Sequence[Any], engine: Engine) -> list[T]:
    """Run ``work(item)`` for every item in its own thread, all released at once."""
    warm = threading.Barrier(len(items))
    start = threading.Barrier(len(items))

    def run(item: Any) -> T:
        # Every thread holds a pooled connection before the start, so none is still
        # connecting when the others have already begun.
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            warm.wait(timeout=30)
        start.wait(timeout=30)
        return work(item)

    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(run, items))


def _customer(customer_id: str, version_at: str | None, **fields: Any) -> dict[str, Any]:
    customer: dict[str, Any] = {
        "id": customer_id,
        "source_id": f"{customer_id}@shop.example",
        "name": "Racing Customer",
        "loyalty": {"points": 1, "campaigns": {"Summer Campaign": {"points": 1}}},
        "referrals": {"total": 0, "campaigns": []},
        "created_at": "2024-01-01T00:00:00.000Z",
        "object": "customer",
    }
    if version_at is not None:
        customer["updated_at"] = version_at
        customer["metadata"] = {"version_at": version_at}
    customer.update(fields)
    return customer


def _body(event_id: str, event_type: str, customer: dict[str, Any], created_at: str) -> bytes:
    document = envelope(event_id, event_type, {"customer": customer}, created_at,
                        entity_id=customer["id"])
    return json.dumps(document).encode("utf-8")


def _stored(sessions: sessionmaker[Session], customer_id: str) -> Any:
    with sessions() as s:
        found = CustomerRepository(s).get(customer_id)
        return None if found is None else found.to_dict()


_SUMMARY = re.compile(r"(\d+) (applied|stale|duplicate|ignored|rejected|malformed)")


def test_four_processes_ingesting_one_stream_end_in_the_expected_state(
    postgres_url: str, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    stream = build_stream(320, seed=41)
    shards = stream.shards(4, seed=41)
    deliveries = sum(len(shard) for shard in shards)
    assert deliveries > len(stream.events) * 1.5  # many events are in several shards
    paths = []
    for index, shard in enumerate(shards):
        path = tmp_path / f"shard-{index}.jsonl"
        path.write_bytes(b"".join(body + b"\n" for body in shard))
        paths.append(path)

    processes = [
        subprocess.Popen(
            cli_command(postgres_url, "ingest", str(path)),
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for path in paths
    ]
    outputs = [process.communicate(timeout=180) for process in processes]

    for process, (_out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
    reported: Counter[str] = Counter()
    for _out, err in outputs:
        summary = [line for line in err.splitlines() if line.startswith("ingested ")][-1]
        reported.update({kind: int(n) for n, kind in _SUMMARY.findall(summary)})
    assert reported["rejected"] == reported["malformed"] == 0
    assert reported["duplicate"] == deliveries - len(stream.events)
    assert reported["applied"] + reported["stale"] + reported["ignored"] == len(stream.events)

    with sessions() as s:
        repo = CustomerRepository(s)
        stored = {c.id: c.to_dict() for c in repo.iter_all()}
        assert stored == stream.expected
        for customer_id in stream.deleted_ids:
            assert repo.deleted_at(customer_id) is not None
        assert stream.source_id_answers_of(repo) == stream.source_id_answers

        rows = s.execute(select(WebhookEventRow.event_id, WebhookEventRow.deliveries)).all()
        assert sorted(event_id for event_id, _ in rows) == sorted(
            event.event_id for event in stream.events
        )
        assert sum(n for _, n in rows) == deliveries
        counts = count_events(s)
        assert counts.get("rejected", 0) == 0
        assert counts["applied"] + counts["stale"] + counts["ignored"] == len(stream.events)
        assert counts["duplicate"] == deliveries - len(stream.events)


def test_concurrent_versions_of_one_customer_end_in_the_newest(
    pg_engine: Engine, sessions: sessionmaker[Session]
) -> None:
    for round_ in range(3):
        customer_id = f"cust_versionRace{round_:09d}"
        versions = [
            _customer(customer_id, None if n == 0 else f"2024-02-01T00:{n:02d}:00.000Z",
                      name=f"Version {n}")
            for n in range(THREADS)
        ]
        bodies = [
            _body(f"evcus_vrace{round_:02d}{n:011d}",
                  "customer.created" if n == 0 else "customer.updated",
                  version, version.get("updated_at") or version["created_at"])
            for n, version in enumerate(versions)
        ]
        order = list(range(THREADS))[::-1] if round_ % 2 else list(range(THREADS))

        results = _race(lambda body: ingest_delivery(sessions, body),
                        [bodies[n] for n in order], pg_engine)

        by_version = dict(zip(order, results, strict=True))
        assert by_version[THREADS - 1].outcome is EventOutcome.APPLIED
        assert {r.outcome for r in results} <= {EventOutcome.APPLIED, EventOutcome.STALE}
        assert _stored(sessions, customer_id) == versions[-1]


def test_one_event_delivered_by_many_threads_at_once_is_applied_exactly_once(
    pg_engine: Engine, sessions: sessionmaker[Session]
) -> None:
    for round_ in range(3):
        customer_id = f"cust_sameEvent{round_:010d}"
        customer = _customer(customer_id, "2024-02-01T00:00:00.000Z")
        event_id = f"evcus_same{round_:014d}"
        body = _body(event_id, "customer.updated", customer, "2024-02-01T00:00:00.100Z")

        results: list[IngestResult] = _race(
            lambda same: ingest_delivery(sessions, same), [body] * THREADS, pg_engine
        )

        assert Counter(r.outcome for r in results) == {
            EventOutcome.APPLIED: 1, EventOutcome.DUPLICATE: THREADS - 1
        }
        with sessions() as s:
            row = s.get(WebhookEventRow, event_id)
            assert row is not None
            assert (row.outcome, row.deliveries) == ("applied", THREADS)
            assert s.scalar(select(func.count()).select_from(WebhookEventRow).where(
                WebhookEventRow.event_id == event_id)) == 1
        assert _stored(sessions, customer_id) == customer


def test_a_deletion_racing_an_older_update_never_leaves_the_customer_alive(
    pg_engine: Engine, sessions: sessionmaker[Session]
) -> None:
    base = datetime(2024, 5, 1, tzinfo=UTC)
    for round_ in range(3):
        races: list[bytes] = []
        ids = [f"cust_delRace{round_:02d}{n:010d}" for n in range(THREADS // 2)]
        for n, customer_id in enumerate(ids):
            if n % 2 == 0:  # half of them are stored before the race, half are not
                created = _customer(customer_id, None)
                ingest_delivery(sessions, _body(f"evcus_dc{round_:02d}{n:014d}",
                                                "customer.created", created,
                                                created["created_at"]))
            update_at = iso(base + timedelta(minutes=n))
            deleted_at = iso(base + timedelta(minutes=n, seconds=30))
            update = _customer(customer_id, update_at, name="Updated before deletion")
            gone = _customer(customer_id, deleted_at,
                             source_id=f"{customer_id}@shop.example_deleted{deleted_at}")
            races.append(_body(f"evcus_du{round_:02d}{n:014d}", "customer.updated", update,
                               update_at))
            races.append(_body(f"evcus_dd{round_:02d}{n:014d}", "customer.deleted", gone,
                               iso(base + timedelta(minutes=n, seconds=31))))

        results = _race(lambda body: ingest_delivery(sessions, body), races, pg_engine)

        assert all(r.outcome in (EventOutcome.APPLIED, EventOutcome.STALE) for r in results)
        assert all(r.outcome is EventOutcome.APPLIED for r in results
                   if r.event_type == "customer.deleted")
        with sessions() as s:
            repo = CustomerRepository(s)
            for customer_id in ids:
                assert repo.get(customer_id) is None, customer_id
                assert repo.deleted_at(customer_id) is not None, customer_id
