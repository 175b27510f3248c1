"""End-to-end tests of the webhook receiver, run as a real ``customer-store serve`` process.

Each backend gets one uvicorn process on a free port (a class-scoped fixture); the tests
send real HTTP requests to it and read what was stored straight from the database. The
tables are emptied before each test, so every test starts from an empty store.
"""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session

from customer_store.web import DEFAULT_MAX_BODY_BYTES
from models import Base, CustomerValidationError, parse_customer
from models.events import WebhookEventRow
from models.signature import sign
from repository import CustomerRepository, make_engine
from repository.db.schema import upgrade_to_head
from repository.webhooks import list_events
from tests.conftest import alter_database
from tests.servers import (
    ROOT,
    SECRET_ENV,
    Reply,
    Server,
    child_env,
    free_port,
    running_server,
    serve_command,
)

EVENT_EXAMPLES = Path(__file__).parent / "fixtures" / "voucherify" / "events"
#: Random per run, and distinctive enough to be searched for in the server's log.
SECRET = f"whsec-e2e-{uuid.uuid4().hex}"
#: The events whose data.customer replaces or deletes the stored customer (webhooks.md).
CHANGE_EVENTS = {"customer.created", "customer.updated", "customer.deleted"}


# --- envelopes ----------------------------------------------------------------------------


def timestamp(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def envelope(
    event_type: str, data: Any, *, event_id: str | None = None, created_at: str | None = None
) -> dict[str, Any]:
    """A v2024-01-01 envelope, as Voucherify sends it."""
    created = created_at or timestamp(datetime.now(UTC))
    customer = data.get("customer") if isinstance(data, dict) else None
    return {
        "id": f"whs_{uuid.uuid4().hex[:18]}",
        "project_id": "proj_e2eTest",
        "created_at": created,
        "type": event_type,
        "data": data,
        "source": {"id": "wh_e2eTest", "object": "webhook", "target_url": "https://example.test/"},
        "event": {
            "id": event_id or f"evcus_{uuid.uuid4().hex}",
            "type": event_type,
            "created_at": created,
            "entity_id": customer.get("id") if isinstance(customer, dict) else None,
            "group_id": f"v-{uuid.uuid4().hex[:18]}",
            "event_source": {"channel": "API", "api_key": {"name": "e2e", "app_id": "app"}},
        },
    }


def encode(document: Any) -> bytes:
    return json.dumps(document).encode("utf-8")


def event_id_of(body: bytes) -> str:
    event_id: str = json.loads(body)["event"]["id"]
    return event_id


def example_data(name_start: str) -> Any:
    (path,) = EVENT_EXAMPLES.glob(f"{name_start}*.json")
    return json.loads(path.read_text(encoding="utf-8"))


def created_customer() -> dict[str, Any]:
    """The full customer of Voucherify's customer.created example."""
    customer: dict[str, Any] = example_data("03-customer.created-data")["customer"]
    return customer


def example_deliveries() -> list[tuple[str, str, Any, bytes]]:
    """(file name, event type, data, body) for every example event, in file order.

    The full envelopes are sent as the bytes of the file; the data examples are wrapped
    in an envelope of the event type their file is named for.
    """
    deliveries = []
    for path in sorted(EVENT_EXAMPLES.glob("*.json")):
        raw = path.read_bytes()
        document = json.loads(raw)
        if path.name.endswith("-data.json"):
            event_type = path.name.removesuffix("-data.json").split("-", 1)[1]
            body = encode(envelope(event_type, document))
            deliveries.append((path.name, event_type, document, body))
        else:
            deliveries.append((path.name, document["event"]["type"], document["data"], raw))
    return deliveries


def expected_outcome(event_type: str, data: Any) -> str:
    """What the rules of webhooks.md make of an event delivered to an empty store in order."""
    if event_type not in CHANGE_EVENTS:
        return "ignored"
    if event_type == "customer.deleted":
        return "applied"
    try:
        parse_customer(data["customer"])
    except CustomerValidationError:
        return "rejected"
    return "applied"


# --- the database, read directly ----------------------------------------------------------


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def empty(self) -> None:
        with self.engine.begin() as connection:
            for table in reversed(Base.metadata.sorted_tables):
                connection.execute(delete(table))

    def customer_json(self, customer_id: str) -> Any:
        with Session(self.engine) as session:
            customer = CustomerRepository(session).get(customer_id)
            return None if customer is None else customer.to_dict()

    def deleted_at(self, customer_id: str) -> bool:
        with Session(self.engine) as session:
            return CustomerRepository(session).deleted_at(customer_id) is not None

    def customer_count(self) -> int:
        with Session(self.engine) as session:
            return CustomerRepository(session).count()

    def events(self) -> dict[str, WebhookEventRow]:
        with Session(self.engine, expire_on_commit=False) as session:
            rows = list_events(session, limit=10_000)
            session.expunge_all()
            return {row.event_id: row for row in rows}

    def event_count(self) -> int:
        with Session(self.engine) as session:
            return session.scalar(select(func.count()).select_from(WebhookEventRow)) or 0


@dataclass(frozen=True)
class Receiver:
    server: Server
    store: Store


@pytest.fixture(scope="class", params=["sqlite", "postgresql"])
def running(
    request: pytest.FixtureRequest, make_database: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Store]]:
    url: str = make_database(request.param)
    upgrade_to_head(url)
    engine = make_engine(url)
    log_path = tmp_path_factory.mktemp(f"receiver-{request.param}") / "server.log"
    try:
        with running_server(url, log_path=log_path, secret=SECRET) as server:
            yield server, Store(engine)
    finally:
        engine.dispose()


@pytest.fixture
def receiver(running: tuple[Server, Store]) -> Receiver:
    server, store = running
    store.empty()
    return Receiver(server, store)


def assert_nothing_stored(store: Store) -> None:
    assert store.event_count() == 0
    assert store.customer_count() == 0


def assert_applied(receiver: Receiver, event_type: str, customer: dict[str, Any]) -> None:
    """Deliver an event of ``event_type`` about ``customer``: it must be applied."""
    assert receiver.server.deliver(
        encode(envelope(event_type, {"customer": customer}))
    ).json()["outcome"] == "applied"


class TestReceiver:
    def test_healthz_answers_ok(self, receiver: Receiver) -> None:
        reply = receiver.server.get("/healthz")
        assert reply.status == 200
        assert reply.json() == {"status": "ok"}

    def test_signed_customer_created_is_applied_and_stored_as_sent(
        self, receiver: Receiver
    ) -> None:
        customer = created_customer()
        body = encode(envelope("customer.created", {"customer": customer}))

        reply = receiver.server.deliver(body)

        assert reply.status == 200
        assert reply.headers["content-type"].startswith("application/json")
        assert reply.json() == {"event_id": event_id_of(body), "outcome": "applied"}
        assert receiver.store.customer_json(customer["id"]) == customer
        row = receiver.store.events()[event_id_of(body)]
        assert (row.outcome, row.deliveries, row.customer_id) == ("applied", 1, customer["id"])
        assert bytes(row.body) == body

    def test_redelivered_event_is_a_duplicate_that_changes_nothing(
        self, receiver: Receiver
    ) -> None:
        customer = created_customer()
        body = encode(envelope("customer.created", {"customer": customer}))
        assert receiver.server.deliver(body).json()["outcome"] == "applied"
        # Change the stored customer behind the event's back: a duplicate must not undo it.
        newer = copy.deepcopy(customer)
        newer["name"], newer["updated_at"] = "Renamed Later", "2030-01-01T00:00:00.000Z"
        assert_applied(receiver, "customer.updated", newer)

        again = receiver.server.deliver(body)

        assert again.status == 200
        assert again.json() == {"event_id": event_id_of(body), "outcome": "duplicate"}
        assert receiver.store.customer_json(customer["id"]) == newer
        row = receiver.store.events()[event_id_of(body)]
        assert (row.outcome, row.deliveries) == ("applied", 2)

    def test_unsigned_delivery_is_refused_with_401_and_nothing_stored(
        self, receiver: Receiver
    ) -> None:
        body = encode(envelope("customer.created", {"customer": created_customer()}))

        reply = receiver.server.deliver(body, unsigned=True)

        assert reply.status == 401
        assert "error" in reply.json()
        assert_nothing_stored(receiver.store)
        # The same body, signed, is accepted: the signature alone made the difference.
        assert receiver.server.deliver(body).json()["outcome"] == "applied"

    @pytest.mark.parametrize(
        "forge",
        [
            pytest.param(lambda body: sign(body + b" ", SECRET.encode()), id="another-body"),
            pytest.param(lambda body: sign(body, b"not-the-secret"), id="another-secret"),
            pytest.param(lambda body: "not a signature at all", id="garbage"),
            pytest.param(lambda body: sign(body, SECRET.encode())[:-2], id="truncated"),
            pytest.param(lambda body: "", id="empty"),
        ],
    )
    def test_wrongly_signed_delivery_is_refused_with_401_and_nothing_stored(
        self, receiver: Receiver, forge: Any
    ) -> None:
        body = encode(envelope("customer.created", {"customer": created_customer()}))

        reply = receiver.server.deliver(body, signature=forge(body))

        assert reply.status == 401
        assert "error" in reply.json()
        assert_nothing_stored(receiver.store)
        assert receiver.server.deliver(body).json()["outcome"] == "applied"

    def test_signed_body_over_the_limit_is_refused_with_413_and_nothing_stored(
        self, receiver: Receiver
    ) -> None:
        data = {"customer": created_customer(), "padding": "x" * DEFAULT_MAX_BODY_BYTES}
        body = encode(envelope("customer.created", data))
        assert len(body) > DEFAULT_MAX_BODY_BYTES

        reply = receiver.server.deliver(body)

        assert reply.status == 413
        assert_nothing_stored(receiver.store)

    def test_chunked_body_over_the_limit_is_refused_with_413_and_nothing_stored(
        self, receiver: Receiver
    ) -> None:
        data = {"customer": created_customer(), "padding": "x" * DEFAULT_MAX_BODY_BYTES}
        body = encode(envelope("customer.created", data))

        reply = receiver.server.deliver(body, chunk_size=65536)

        assert reply.status == 413
        assert_nothing_stored(receiver.store)

    def test_chunked_body_under_the_limit_is_accepted(self, receiver: Receiver) -> None:
        customer = created_customer()
        body = encode(envelope("customer.created", {"customer": customer}))

        reply = receiver.server.deliver(body, chunk_size=100)

        assert reply.status == 200
        assert reply.json()["outcome"] == "applied"
        assert receiver.store.customer_json(customer["id"]) == customer

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param(b'{"event": {"id": "evcus_1", ', id="truncated-json"),
            pytest.param(b"not json", id="not-json"),
            pytest.param(b"{\xff\xfe}", id="not-utf8"),
            pytest.param(b"", id="empty"),
            pytest.param(b'[{"event": {"id": "evcus_1"}}]', id="array"),
            pytest.param(b'"evcus_1"', id="string"),
            pytest.param(b"null", id="null"),
            pytest.param(
                encode({"type": "customer.created", "data": {"customer": created_customer()}}),
                id="object-without-event",
            ),
            pytest.param(
                encode({"event": {"type": "customer.created"}, "data": {}}),
                id="event-without-id",
            ),
            pytest.param(
                encode({"id": 7, "event": {"id": 12, "type": "customer.created"}, "data": {}}),
                id="event-id-not-a-string",
            ),
            pytest.param(
                encode(envelope("customer.created", {}, event_id="evcus_" + "9" * 250)),
                id="event-id-too-long",
            ),
            pytest.param(
                encode(envelope("customer.created", {}, event_id="evcus_\u0000")),
                id="event-id-with-nul",
            ),
            pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested-too-deep"),
        ],
    )
    def test_signed_body_that_is_not_an_envelope_is_refused_with_400_and_nothing_stored(
        self, receiver: Receiver, body: bytes
    ) -> None:
        reply = receiver.server.deliver(body)

        assert reply.status == 400
        assert reply.json()["error"]
        assert_nothing_stored(receiver.store)

    @pytest.mark.parametrize(
        ("codec", "bom"),
        [("utf-16-le", b""), ("utf-16-be", b"\xfe\xff"), ("utf-16", b""),
         ("utf-32-le", b""), ("utf-32-be", b"\x00\x00\xfe\xff")],
    )
    def test_signed_body_in_utf16_or_utf32_is_refused_with_415_and_nothing_stored(
        self, receiver: Receiver, codec: str, bom: bytes
    ) -> None:
        # ("utf-16" writes its own BOM.) Signed over its bytes, as a sender would sign it.
        customer = {**created_customer(), "email": "wide.chars@encoding.example"}
        text = json.dumps(envelope("customer.created", {"customer": customer}),
                          ensure_ascii=False)
        body = bom + text.encode(codec)

        reply = receiver.server.deliver(body)

        assert reply.status == 415, reply.body
        assert "not UTF-8" in reply.json()["error"]
        assert_nothing_stored(receiver.store)

    @pytest.mark.parametrize("charset", ["utf-16", "ISO-8859-1", '"latin1"'])
    def test_a_charset_other_than_utf8_is_refused_with_415_and_nothing_stored(
        self, receiver: Receiver, charset: str
    ) -> None:
        body = encode(envelope("customer.created", {"customer": created_customer()}))

        reply = receiver.server.deliver(
            body, content_type=f"application/json; charset={charset}"
        )

        assert reply.status == 415, reply.body
        assert "is not utf-8" in reply.json()["error"]
        assert_nothing_stored(receiver.store)

    def test_a_utf8_charset_is_accepted(self, receiver: Receiver) -> None:
        customer = created_customer()
        body = encode(envelope("customer.created", {"customer": customer}))

        reply = receiver.server.deliver(body, content_type='application/json; Charset="UTF-8"')

        assert reply.status == 200, reply.body
        assert receiver.store.customer_json(customer["id"]) == customer

    def test_customer_updated_with_invalid_customer_is_rejected_with_422_naming_the_path(
        self, receiver: Receiver
    ) -> None:
        customer = created_customer()
        assert_applied(receiver, "customer.created", customer)
        bad = copy.deepcopy(customer)
        bad["name"], bad["updated_at"] = "Not Stored", "2030-01-01T00:00:00.000Z"
        bad["summary"]["orders"]["total_amount"] = "12"
        with pytest.raises(CustomerValidationError) as invalid:
            parse_customer(bad)
        paths = [f"$.data.customer{error.path[1:]}" for error in invalid.value.errors]
        body = encode(envelope("customer.updated", {"customer": bad}))

        reply = receiver.server.deliver(body)

        assert reply.status == 422
        answer = reply.json()
        assert (answer["event_id"], answer["outcome"]) == (event_id_of(body), "rejected")
        assert "$.data.customer.summary.orders.total_amount" in answer["error"]
        assert all(path in answer["error"] for path in paths)
        row = receiver.store.events()[event_id_of(body)]
        assert (row.outcome, row.error) == ("rejected", answer["error"])
        assert receiver.store.customer_json(customer["id"]) == customer

        # A rejected event is processed again when it is delivered again.
        again = receiver.server.deliver(body)
        assert again.status == 422
        assert again.json()["outcome"] == "rejected"
        assert receiver.store.events()[event_id_of(body)].deliveries == 2
        assert receiver.store.customer_json(customer["id"]) == customer

    @pytest.mark.parametrize(
        ("event_type", "change", "path"),
        [
            pytest.param(
                "customer.created",
                lambda document: document["event"].pop("created_at"),
                "$.event.created_at",
                id="event-without-created_at",
            ),
            pytest.param(
                "customer.deleted",
                lambda document: document["data"]["customer"].update(updated_at=20240201),
                "$.data.customer.updated_at",
                id="deletion-dated-by-a-number",
            ),
        ],
    )
    def test_envelope_with_unusable_date_is_rejected_with_422_giving_path_and_reason(
        self, receiver: Receiver, event_type: str, change: Any, path: str
    ) -> None:
        document = envelope(event_type, {"customer": created_customer()})
        change(document)
        body = encode(document)

        reply = receiver.server.deliver(body)

        assert reply.status == 422
        answer = reply.json()
        assert (answer["event_id"], answer["outcome"]) == (event_id_of(body), "rejected")
        reason = answer["error"].partition(f"{path}: ")[2]
        assert reason.strip(), f"no reason after {path} in {answer['error']!r}"
        assert receiver.store.events()[event_id_of(body)].outcome == "rejected"
        assert receiver.store.customer_count() == 0

    def test_legacy_v2018_envelope_is_applied(self, receiver: Receiver) -> None:
        customer = created_customer()
        event_id = f"evcus_{uuid.uuid4().hex}"
        body = encode({
            "id": event_id,
            "object": "event",
            "webhook_id": "wh_e2eTest",
            "type": "customer.created",
            "created_at": customer["created_at"],
            "data": {"customer": customer},
            "metadata": {"source": "API"},
        })

        reply = receiver.server.deliver(body)

        assert reply.status == 200
        assert reply.json() == {"event_id": event_id, "outcome": "applied"}
        assert receiver.store.customer_json(customer["id"]) == customer

    def test_noise_event_with_a_smaller_customer_is_ignored_and_changes_nothing(
        self, receiver: Receiver
    ) -> None:
        customer = created_customer()
        assert_applied(receiver, "customer.created", customer)
        data = example_data("30-customer.order.paid-data")
        data["customer"] = {**data["customer"], "id": customer["id"], "name": "Smaller Self"}
        body = encode(envelope("customer.order.paid", data))

        reply = receiver.server.deliver(body)

        assert reply.status == 200
        assert reply.json() == {"event_id": event_id_of(body), "outcome": "ignored"}
        assert receiver.store.customer_json(customer["id"]) == customer
        row = receiver.store.events()[event_id_of(body)]
        assert (row.outcome, row.event_type) == ("ignored", "customer.order.paid")

    def test_every_voucherify_example_event_is_answered_with_its_recorded_outcome(
        self, receiver: Receiver
    ) -> None:
        store = receiver.store
        deliveries = example_deliveries()
        expectations = [expected_outcome(t, data) for _, t, data, _ in deliveries]
        # The corpus exercises more than one rule, or this test would prove little.
        assert {"applied", "ignored"} <= set(expectations)

        answered: dict[str, tuple[int, Any]] = {}
        for (name, event_type, data, body), expected in zip(
            deliveries, expectations, strict=True
        ):
            customer = data.get("customer") if isinstance(data, dict) else None
            customer_id = customer.get("id") if isinstance(customer, dict) else None
            before = store.customer_json(customer_id) if customer_id else None

            reply = receiver.server.deliver(body)

            answered[name] = (reply.status, reply.json())
            assert reply.status == (422 if expected == "rejected" else 200), (name, reply)
            assert reply.json()["outcome"] == expected, name
            assert reply.json()["event_id"] == event_id_of(body), name
            row = store.events()[event_id_of(body)]
            assert (row.outcome, row.event_type) == (expected, event_type), name
            assert bytes(row.body) == body, name
            if expected != "applied":
                if customer_id is not None:
                    assert store.customer_json(customer_id) == before, name
                continue
            assert customer_id is not None, name
            if event_type == "customer.deleted":
                assert store.deleted_at(customer_id), name
                assert store.customer_json(customer_id) is None, name
            else:
                assert store.customer_json(customer_id) == customer, name

        assert all(status < 500 for status, _ in answered.values())
        assert store.event_count() == len(deliveries)

    def test_simultaneous_deliveries_of_one_event_apply_it_exactly_once(
        self, receiver: Receiver
    ) -> None:
        customer = created_customer()
        body = encode(envelope("customer.created", {"customer": customer}))
        senders = 20
        barrier = threading.Barrier(senders)

        def deliver() -> Reply:
            connection = receiver.server.connection()
            connection.connect()
            barrier.wait(timeout=15)
            return receiver.server.deliver(body, connection=connection)

        with ThreadPoolExecutor(max_workers=senders) as pool:
            replies = list(pool.map(lambda _: deliver(), range(senders)))

        assert [reply.status for reply in replies] == [200] * senders
        outcomes = Counter(reply.json()["outcome"] for reply in replies)
        assert outcomes == {"applied": 1, "duplicate": senders - 1}
        row = receiver.store.events()[event_id_of(body)]
        assert (row.outcome, row.deliveries) == ("applied", senders)
        assert receiver.store.customer_json(customer["id"]) == customer

    def test_client_disconnecting_mid_body_gets_one_log_line_and_no_traceback(
        self, receiver: Receiver
    ) -> None:
        server = receiver.server
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
                client.sendall(
                    b"POST /webhooks/voucherify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
                )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and server.log().count("status=499") < 3:
            time.sleep(0.05)

        server.deliveries += 3  # the server's log has a line for each delivery
        log = server.log()
        assert log.count("status=499") == 3, log
        assert "Traceback" not in log and "Exception in ASGI" not in log, log
        assert_nothing_stored(receiver.store)
        # The server goes on answering.
        body = encode(envelope("customer.created", {"customer": created_customer()}))
        assert server.deliver(body).status == 200

    def test_log_has_one_line_per_delivery_and_never_the_secret(
        self, receiver: Receiver
    ) -> None:
        server = receiver.server
        body = encode(envelope("customer.created", {"customer": created_customer()}))
        server.deliver(body, unsigned=True)
        server.deliver(body, signature=sign(body, b"other"))
        server.deliver(b"{")
        server.deliver(body)

        log = server.log()
        delivery_lines = [line for line in log.splitlines() if "delivery" in line]
        assert len(delivery_lines) == server.deliveries
        assert any(event_id_of(body) in line and "applied" in line for line in delivery_lines)
        assert SECRET not in log
        # Nor the signature made with it (which would let anyone replay the body).
        assert sign(body, SECRET.encode()) not in log


# --- processes of their own ---------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, ""], ids=["unset", "empty"])
def test_serve_refuses_to_start_without_a_secret(
    make_database: Any, secret: str | None
) -> None:
    url: str = make_database("sqlite")
    upgrade_to_head(url)
    port = free_port()
    started = time.monotonic()

    finished = subprocess.run(
        serve_command(url, port),
        cwd=ROOT,
        env=child_env(None if secret is None else {SECRET_ENV: secret}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )

    assert finished.returncode == 2, finished.stderr.decode()
    assert SECRET_ENV in finished.stderr.decode()
    assert time.monotonic() - started < 20


@pytest.mark.slow  # waits out connection timeouts of a server process
def test_unreachable_database_answers_503_with_retry_after_and_the_server_stays_up(
    make_database: Any, postgres_admin_url: str, tmp_path: Path
) -> None:
    url: str = make_database("postgresql")
    upgrade_to_head(url)
    with running_server(url, log_path=tmp_path / "server.log", secret=SECRET) as server:
        first = encode(envelope("customer.created", {"customer": created_customer()}))
        assert server.deliver(first).status == 200

        alter_database(postgres_admin_url, url, "DROP DATABASE {name} WITH (FORCE)")

        for attempt in range(2):
            body = encode(envelope("customer.created", {"customer": created_customer()}))
            started = time.monotonic()
            reply = server.deliver(body)
            assert reply.status == 503, (attempt, reply)
            assert int(reply.headers["retry-after"]) > 0
            assert "error" in reply.json()
            # Voucherify counts a sendout as failed after 10 s without an answer.
            assert time.monotonic() - started < 10
        health = server.get("/healthz")
        assert health.status == 503
        assert health.json()["status"] != "ok"
        assert server.process.poll() is None
        log = server.log()
        assert "Traceback" not in log
        assert len([line for line in log.splitlines() if "delivery" in line]) == 3
