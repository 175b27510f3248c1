"""Pruning the webhook event log: ``prune_events`` and ``customer-store events prune``.

Old events go, recent ones and (unless asked) rejected ones stay, in batches of one
transaction each; on PostgreSQL a large log is pruned while a real receiver keeps answering.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, inspect, select
from sqlalchemy.orm import Session

from customer_store.cli import main
from models import EventOutcome, WebhookEventRow
from repository import make_engine, make_session_factory
from repository.db.schema import upgrade_to_head
from repository.db.tables import events
from repository.webhooks import count_events, iter_events, prune_events
from tests.conftest import load_example_customers
from tests.servers import running_server
from tests.test_cli_arguments import assert_usage_error
from tests.webhook_streams import envelope, iso

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)
RECENT = NOW - timedelta(days=2)
CUTOFF = NOW - timedelta(days=30)
SECRET = f"whsec-prune-{uuid.uuid4().hex}"


def event_row(event_id: str, received_at: datetime, outcome: str = "applied") -> dict[str, Any]:
    return {
        "event_id": event_id,
        "envelope_id": None,
        "event_type": "customer.updated",
        "project_id": "proj_prune",
        "customer_id": f"cust_{event_id}",
        "event_created_at": received_at,
        "first_received_at": received_at,
        "last_received_at": received_at,
        "deliveries": 1,
        "outcome": outcome,
        "error": "a reason" if outcome == "rejected" else None,
        "body": b"{}",
    }


def insert_events(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as connection:
        connection.execute(insert(events), rows)


def stored_ids(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(connection.scalars(select(events.c.event_id)))


@pytest.fixture
def log(engine: Engine, session: Session) -> Iterator[Engine]:
    """A log of old and recent events of each outcome; emptied afterwards (``session``)."""
    rows = []
    for outcome in ("applied", "stale", "ignored", "rejected"):
        rows += [event_row(f"ev_old_{outcome}_{n}", OLD, outcome) for n in range(3)]
        rows += [event_row(f"ev_new_{outcome}_{n}", RECENT, outcome) for n in range(2)]
    insert_events(engine, rows)
    yield engine


def test_old_events_are_pruned_and_recent_and_rejected_ones_kept(log: Engine) -> None:
    pruned = prune_events(make_session_factory(log), older_than=CUTOFF)

    assert pruned == 9  # 3 old of applied, stale and ignored
    remaining = stored_ids(log)
    assert {i for i in remaining if i.startswith("ev_old_")} == {
        f"ev_old_rejected_{n}" for n in range(3)
    }
    assert {i for i in remaining if i.startswith("ev_new_")} == {
        f"ev_new_{outcome}_{n}"
        for outcome in ("applied", "stale", "ignored", "rejected")
        for n in range(2)
    }


def test_include_rejected_prunes_old_rejected_events_too(log: Engine) -> None:
    pruned = prune_events(make_session_factory(log), older_than=CUTOFF, include_rejected=True)

    assert pruned == 12
    assert all(i.startswith("ev_new_") for i in stored_ids(log))
    assert len(stored_ids(log)) == 8


def test_batches_smaller_than_the_log_prune_all_of_it(engine: Engine, session: Session) -> None:
    # Old and recent events interleaved in id order, so that batches skip over kept ones.
    rows = [
        event_row(f"ev_{n:04d}", OLD if n % 3 else RECENT, "rejected" if n % 7 == 0 else "applied")
        for n in range(100)
    ]
    insert_events(engine, rows)
    expected = sum(1 for n in range(100) if n % 3 and n % 7)
    progress: list[int] = []

    pruned = prune_events(
        make_session_factory(engine), older_than=CUTOFF, batch_size=7,
        on_progress=progress.append,
    )

    assert pruned == expected
    # One call per batch, with the running total.
    assert len(progress) == -(-expected // 7)
    assert progress == sorted(progress) and progress[-1] == expected
    kept = stored_ids(engine)
    assert kept == {f"ev_{n:04d}" for n in range(100) if n % 3 == 0 or n % 7 == 0}


def test_nothing_old_prunes_nothing(engine: Engine, session: Session) -> None:
    insert_events(engine, [event_row(f"ev_{n}", RECENT) for n in range(5)])
    calls: list[int] = []
    assert prune_events(make_session_factory(engine), older_than=CUTOFF,
                        on_progress=calls.append) == 0
    assert calls == []
    assert len(stored_ids(engine)) == 5


def test_count_events_received_before_counts_what_prune_would_take(log: Engine) -> None:
    with Session(log) as session:
        old = count_events(session, received_before=CUTOFF)
        everything = count_events(session)
    assert {k: v for k, v in old.items() if k != "duplicate"} == {
        "applied": 3, "stale": 3, "ignored": 3, "rejected": 3
    }
    assert everything["applied"] == 5


def test_iter_events_leaves_the_callers_session_as_it_was(log: Engine) -> None:
    """Objects the caller holds, pending or loaded, stay in its session; the events handed
    out are detached and the session keeps none of them."""
    with make_session_factory(log)() as session:
        loaded = session.get(WebhookEventRow, "ev_old_applied_0")
        pending = WebhookEventRow(**event_row("ev_pending", RECENT))
        session.add(pending)
        held = set(session.identity_map.values())
        read = list(iter_events(session, outcome=EventOutcome.STALE, page_size=2))
        assert loaded in session and pending in session
        assert inspect(pending).pending or inspect(pending).persistent
        assert set(session.identity_map.values()) <= held | {pending}
        assert [e.event_id for e in read] == sorted(
            f"ev_{age}_stale_{n}" for age, count in (("old", 3), ("new", 2)) for n in range(count)
        )
        assert all(inspect(e).detached and e not in session for e in read)
        assert read[0].body == b"{}" and read[0].deliveries == 1
        with pytest.raises(ValueError, match=r"^page_size must be at least 1, got 0$"):
            next(iter_events(session, page_size=0))


def test_bad_arguments_are_refused(engine: Engine) -> None:
    sessions = make_session_factory(engine)
    with pytest.raises(ValueError, match="batch_size"):
        prune_events(sessions, older_than=CUTOFF, batch_size=0)
    with pytest.raises(ValueError, match="naive"):
        prune_events(sessions, older_than=datetime(2024, 1, 1))


# --- the command --------------------------------------------------------------------------


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        status = main(args)
    except SystemExit as exit_:
        status = int(exit_.code or 0)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_events_prune_command_reports_what_it_removed_and_kept(
    log: Engine, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(
        ["--database-url", database_url, "events", "prune", "--older-than", "30d"], capsys
    )

    assert status == 0, err
    assert out == ""
    assert "pruned 9 events last received before " in err
    assert "(rejected kept: 3)" in err
    assert len(stored_ids(log)) == 11

    status, _, err = run_cli(
        ["--database-url", database_url, "events", "prune", "--older-than", "720h",
         "--include-rejected", "--batch-size", "2"], capsys
    )
    assert status == 0, err
    assert "pruned 3 events" in err and "rejected kept" not in err
    assert len(stored_ids(log)) == 8


def test_events_without_a_sub_action_still_lists(
    log: Engine, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(
        ["--database-url", database_url, "events", "--outcome", "rejected", "--limit", "2"],
        capsys,
    )
    assert status == 0, err
    listed = [json.loads(line) for line in out.splitlines()]
    assert [e["outcome"] for e in listed] == ["rejected", "rejected"]


@pytest.mark.parametrize(
    "value", ["0d", "0s", "-1d", "30", "d", "30x", "1.5d", "30 days", "99999999999d", "٣d", ""]
)
def test_a_bad_duration_is_a_one_line_usage_error(
    value: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Refused before the database is touched: the file is never created.
    url = f"sqlite:///{tmp_path / 'never.db'}"
    status, out, err = run_cli(
        ["--database-url", url, "events", "prune", "--older-than", value], capsys
    )
    assert_usage_error(status, out + err, "--older-than")
    assert not (tmp_path / "never.db").exists()


def test_prune_without_older_than_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, out, err = run_cli(
        ["--database-url", f"sqlite:///{tmp_path / 'x.db'}", "events", "prune"], capsys
    )
    assert status == 2
    assert len((out + err).strip().splitlines()) == 1
    assert "--older-than" in err


@pytest.mark.parametrize(
    ("value", "seconds"), [("30d", 30 * 86_400), ("12h", 43_200), ("90m", 5_400), ("3600s", 3_600)]
)
def test_durations_in_each_unit(
    engine: Engine, session: Session, database_url: str, value: str, seconds: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # One event just older than the duration, one just younger, by the clock of this
    # test (the module's NOW may be minutes old by the time it runs).
    now = datetime.now(UTC)
    insert_events(engine, [
        event_row("ev_older", now - timedelta(seconds=seconds + 120)),
        event_row("ev_younger", now - timedelta(seconds=seconds - 120)),
    ])
    status, _, err = run_cli(
        ["--database-url", database_url, "events", "prune", "--older-than", value], capsys
    )
    assert status == 0, err
    assert stored_ids(engine) == {"ev_younger"}


# --- a large log, pruned under traffic --------------------------------------------------


@dataclass(frozen=True)
class Answer:
    event_id: str
    status: int | None
    sent_at: float
    seconds: float


def delivery_body(customer: dict[str, Any], n: int) -> tuple[str, bytes]:
    event_id = f"evcus_prune_{uuid.uuid4().hex}"
    document = envelope(
        event_id, "customer.updated",
        {"customer": {**customer, "id": f"cust_prune{n:06d}", "source_id": f"src_prune{n}"}},
        iso(datetime.now(UTC)), entity_id=f"cust_prune{n:06d}",
    )
    return event_id, json.dumps(document).encode()


@pytest.mark.slow
def test_a_large_log_is_pruned_on_postgresql_while_the_receiver_keeps_answering(
    make_database: Any, tmp_path: Path
) -> None:
    url: str = make_database("postgresql")
    upgrade_to_head(url)
    engine = make_engine(url)
    try:
        started = time.monotonic()
        rows = [event_row(f"ev_bulk_{n:06d}", OLD - timedelta(seconds=n)) for n in range(20_000)]
        for start in range(0, len(rows), 5_000):
            insert_events(engine, rows[start:start + 5_000])
        assert time.monotonic() - started < 60
        customer = next(raw for name, raw in load_example_customers() if name.startswith("03-"))
        answers: list[Answer] = []
        stop = threading.Event()

        with running_server(url, log_path=tmp_path / "server.log", secret=SECRET) as server:

            def keep_delivering(worker: int) -> None:
                n = worker * 1_000_000
                while not stop.is_set():
                    n += 1
                    event_id, body = delivery_body(customer, n)
                    sent = time.monotonic()
                    try:
                        status: int | None = server.deliver(body).status
                    except OSError:
                        status = None
                    answers.append(Answer(event_id, status, sent, time.monotonic() - sent))

            workers = [threading.Thread(target=keep_delivering, args=(w,)) for w in range(3)]
            for worker in workers:
                worker.start()
            try:
                time.sleep(0.5)
                prune_started = time.monotonic()
                batches: list[int] = []
                pruned = prune_events(
                    make_session_factory(engine), older_than=CUTOFF, batch_size=1_000,
                    on_progress=batches.append,
                )
                prune_ended = time.monotonic()
                time.sleep(0.3)
            finally:
                stop.set()
                for worker in workers:
                    worker.join(timeout=30)

        assert pruned == 20_000
        assert len(batches) == 20
        during = [a for a in answers if prune_started <= a.sent_at <= prune_ended]
        assert during, "no delivery was sent while the prune ran"
        slow_or_failed = [a for a in answers if a.status not in (200,) or a.seconds >= 2.0]
        assert slow_or_failed == [], slow_or_failed[:5]
        # What was delivered is stored; what was old is gone.
        ids = stored_ids(engine)
        assert {a.event_id for a in answers} <= ids
        assert not any(i.startswith("ev_bulk_") for i in ids)
        with engine.connect() as connection:
            assert connection.scalar(select(func.count()).select_from(events)) == len(answers)
        with Session(engine) as session:
            assert count_events(session).get(EventOutcome.APPLIED.value, 0) == len(answers)
    finally:
        engine.dispose()
