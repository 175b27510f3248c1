"""Webhook and read-API load across a failover, and what it must leave behind.

:class:`FailoverLoad` runs sender threads that deliver ``customer.updated`` events with
increasing ``updated_at`` for a set of customers to a running ``customer-store serve``,
retrying each delivery as Voucherify does (an answer other than 2xx, a timeout or a
refused connection is retried; a 2xx is an acknowledgement), and reader threads that read
those customers through the read API (by id, by ``source_id`` and by list page). Every
exchange is recorded with its start and end, so the test can say what was answered when
relative to the kill of the primary and its standby's promotion.

:func:`assert_survived` checks the outcome: every acknowledged delivery stored, the final
state of each customer exactly the newest delivered, 2xx again within
:data:`RECOVERY_BOUND` seconds of the promotion, and no read answered 5xx (or not at all)
once the new primary accepted read-write sessions.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.events import WebhookEventRow
from repository import CustomerRepository, make_engine
from tests.servers import Server, request
from tests.webhook_streams import envelope, iso

#: The read API's credentials (CUSTOMER_STORE_APP_ID / _TOKEN of the serve process).
READ_ENV = {"CUSTOMER_STORE_APP_ID": "failover-reader",
            "CUSTOMER_STORE_APP_TOKEN": "failover-reader-token"}
READ_HEADERS = {"X-App-Id": READ_ENV["CUSTOMER_STORE_APP_ID"],
                "X-App-Token": READ_ENV["CUSTOMER_STORE_APP_TOKEN"]}
#: Seconds after the promotion by which deliveries must be answered 2xx again.
RECOVERY_BOUND = 10.0
#: How long one exchange may take before the sender counts it as a timeout and retries.
EXCHANGE_TIMEOUT = 5.0
#: Pause between two attempts of one delivery, and between two reads of a reader.
RETRY_PAUSE = 0.1
READ_PAUSE = 0.05
#: Seconds a delivery may go unacknowledged, retries included, before the test fails.
DELIVERY_DEADLINE = 60.0
EXAMPLE = (Path(__file__).parent / "fixtures" / "voucherify" / "events"
           / "03-customer.created-data.json")
_BASE = datetime(2025, 6, 1, 9, 0, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Exchange:
    """One HTTP exchange: monotonic start and end, and the status (None: no answer)."""

    start: float
    end: float
    status: int | None


@dataclass
class Delivery:
    customer_id: str
    version: int
    event_id: str
    body: bytes
    payload: dict[str, Any]
    attempts: list[Exchange] = field(default_factory=list)

    @property
    def acknowledged(self) -> bool:
        return any(_is_2xx(a.status) for a in self.attempts)


def _is_2xx(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


class FailoverLoad:
    """Senders and readers against ``server``, until :meth:`finish`."""

    def __init__(self, server: Server, *, customers: int = 12, senders: int = 4,
                 readers: int = 2) -> None:
        self.server = server
        template = json.loads(EXAMPLE.read_text(encoding="utf-8"))["customer"]
        run = uuid.uuid4().hex[:8]
        self.customers = [
            (f"cust_failover{run}{number:04d}", f"failover-{run}-{number}@shop.example")
            for number in range(customers)
        ]
        self._template = template
        self._next = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.deliveries: list[Delivery] = []
        self.reads: list[tuple[str, Exchange]] = []
        self.errors: list[str] = []
        self._threads = [
            threading.Thread(target=self._send, name=f"sender-{n}", daemon=True)
            for n in range(senders)
        ] + [
            threading.Thread(target=self._read, args=(n,), name=f"reader-{n}", daemon=True)
            for n in range(readers)
        ]

    # --- the stream ---------------------------------------------------------------------------

    def _delivery(self, index: int) -> Delivery:
        """Event ``index``: customer ``index % N``, version ``index // N`` (newer versions
        later); threads take indexes in turn, so a customer's versions race each other."""
        customer_id, source_id = self.customers[index % len(self.customers)]
        version = index // len(self.customers)
        payload = copy.deepcopy(self._template)
        created = _BASE + timedelta(minutes=index % len(self.customers))
        payload.update(id=customer_id, source_id=source_id, object="customer",
                       created_at=iso(created),
                       updated_at=iso(created + timedelta(seconds=1 + version)),
                       metadata={"version": version})
        event_id = f"evcus_{uuid.uuid4().hex[:18]}"
        document = envelope(event_id, "customer.updated", {"customer": payload},
                            iso(datetime.now(UTC)), entity_id=customer_id)
        return Delivery(customer_id, version, event_id,
                        json.dumps(document).encode("utf-8"), payload)

    def _send(self) -> None:
        while not self._stop.is_set():
            delivery = self._delivery(next(self._next))
            with self._lock:
                self.deliveries.append(delivery)
            deadline = time.monotonic() + DELIVERY_DEADLINE
            while not delivery.acknowledged and time.monotonic() < deadline:
                start = time.monotonic()
                status: int | None
                try:
                    status = self.server.deliver(delivery.body).status
                except OSError:  # refused, reset, or timed out: Voucherify retries
                    status = None
                delivery.attempts.append(Exchange(start, time.monotonic(), status))
                if not _is_2xx(status):
                    time.sleep(RETRY_PAUSE)
            if not delivery.acknowledged:
                self.errors.append(f"{delivery.event_id} never acknowledged")

    def _read(self, number: int) -> None:
        for turn in itertools.count(number):
            if self._stop.is_set():
                return
            customer_id, source_id = self.customers[turn % len(self.customers)]
            path = (f"/v1/customers/{customer_id}", f"/v1/customers/{source_id}",
                    "/v1/customers?limit=5")[turn % 3]
            start = time.monotonic()
            status: int | None
            try:
                status = request(self.server.port, "GET", path, headers=READ_HEADERS,
                                 timeout=EXCHANGE_TIMEOUT).status
            except OSError:
                status = None
            with self._lock:
                self.reads.append((path, Exchange(start, time.monotonic(), status)))
            time.sleep(READ_PAUSE)

    # --- running ----------------------------------------------------------------------------

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def acknowledged_count(self) -> int:
        with self._lock:
            return sum(d.acknowledged for d in self.deliveries)

    def wait_until(self, done: Callable[[], bool], *, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not within {timeout}s: {self.summary()}")
            time.sleep(0.05)

    def finish(self) -> None:
        """Stop taking new events; wait for the in-flight ones to be acknowledged."""
        self._stop.set()
        for thread in self._threads:
            thread.join(DELIVERY_DEADLINE + EXCHANGE_TIMEOUT + 5)
        assert not any(t.is_alive() for t in self._threads), "a load thread did not end"

    # --- what happened ------------------------------------------------------------------------

    def first_2xx_after(self, moment: float) -> float | None:
        """The end of the first delivery attempt started at or after ``moment`` and answered
        2xx."""
        ends = [a.end for d in self.deliveries for a in d.attempts
                if a.start >= moment and _is_2xx(a.status)]
        return min(ends, default=None)

    def summary(self) -> str:
        statuses: dict[str, int] = {}
        for delivery in self.deliveries:
            for attempt in delivery.attempts:
                statuses[str(attempt.status)] = statuses.get(str(attempt.status), 0) + 1
        reads: dict[str, int] = {}
        for _, exchange in self.reads:
            reads[str(exchange.status)] = reads.get(str(exchange.status), 0) + 1
        return (f"{len(self.deliveries)} deliveries, attempts by status {statuses}; "
                f"{len(self.reads)} reads by status {reads}")


@dataclass(frozen=True)
class Timeline:
    """Monotonic moments of the failover: the kill, the promotion (the new primary out of
    recovery), and the recovery point (the new primary accepting read-write sessions)."""

    killed: float
    promoted: float
    recovered: float


def assert_survived(load: FailoverLoad, timeline: Timeline, store_url: str, *,
                    label: str) -> float:
    """Everything :mod:`tests.failover_load` promises, checked on the database of
    ``store_url`` (the new primary); the seconds from promotion to the first 2xx (below
    zero when the store wrote to the new primary before the promotion was seen to end:
    ``pg_ctl promote -w`` polls)."""
    assert not load.errors, load.errors
    assert load.deliveries and all(d.acknowledged for d in load.deliveries), load.summary()
    assert any(a.start < timeline.killed and _is_2xx(a.status)
               for d in load.deliveries for a in d.attempts), "no load before the kill"

    first = load.first_2xx_after(timeline.killed)
    assert first is not None, f"no 2xx after the kill: {load.summary()}"
    time_to_2xx = first - timeline.promoted
    print(f"\n{label}: promotion {timeline.promoted - timeline.killed:.2f} s after the kill; "
          f"read-write {timeline.recovered - timeline.promoted:.2f} s after promotion; "
          f"first 2xx {time_to_2xx:.2f} s after promotion; {load.summary()}")
    assert time_to_2xx <= RECOVERY_BOUND, (time_to_2xx, load.summary())

    late_failures = [(path, exchange) for path, exchange in load.reads
                     if exchange.start >= timeline.recovered
                     and (exchange.status is None or exchange.status >= 500)]
    assert not late_failures, f"reads failed after the recovery point: {late_failures[:10]}"

    newest: dict[str, Delivery] = {}
    for delivery in load.deliveries:
        held = newest.get(delivery.customer_id)
        if held is None or delivery.version > held.version:
            newest[delivery.customer_id] = delivery

    engine = make_engine(store_url)
    try:
        with Session(engine) as session:
            repo = CustomerRepository(session)
            stored = {cid: repo.get(cid) for cid, _ in load.customers}
            events = set(session.scalars(select(WebhookEventRow.event_id).where(
                WebhookEventRow.event_id.in_([d.event_id for d in load.deliveries])
            )))
    finally:
        engine.dispose()
    missing = [d.event_id for d in load.deliveries if d.event_id not in events]
    assert not missing, f"{len(missing)} acknowledged events not stored: {missing[:10]}"
    for delivery in load.deliveries:
        customer = stored[delivery.customer_id]
        assert customer is not None, f"{delivery.customer_id} acknowledged but not stored"
        assert customer.to_dict()["metadata"]["version"] >= delivery.version, delivery.event_id
    for customer_id, delivery in newest.items():
        customer = stored[customer_id]
        assert customer is not None and customer.to_dict() == delivery.payload, customer_id
    return time_to_2xx
