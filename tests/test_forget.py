"""``customer-store forget ID``: nothing personal of the customer remains, anywhere.

On each backend, a customer with a distinctive email, name, phone and source_id is stored
by ``import`` and by webhook deliveries (created, updated, a noise event that mentions
only its email, and the events of another customer), then forgotten through the CLI.
Afterwards every column of every table is searched for those values, raw and in the
forms JSON gives them; the other customer is intact, a tombstone with only the id and a
time remains, and a late ``customer.updated`` cannot store the customer again. A
customer never stored can be forgotten too: its events go and a tombstone is left.
"""

from __future__ import annotations

import copy
import json
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, MetaData, select, update
from sqlalchemy.exc import SAWarning
from sqlalchemy.orm import Session

from repository import CustomerRepository, make_engine
from repository.db.schema import upgrade_to_head
from repository.db.tables import events
from repository.webhooks import list_events
from tests.test_secrets import Run, cli
from tests.webhook_streams import envelope, iso

# make test-slow: erasure end to end through CLI processes (docs/testing.md).
pytestmark = pytest.mark.slow

EVENT_EXAMPLES = Path(__file__).parent / "fixtures" / "voucherify" / "events"
T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def example_customer() -> dict[str, Any]:
    """The full customer of Voucherify's customer.created example."""
    data = json.loads((EVENT_EXAMPLES / "03-customer.created-data.json").read_text("utf-8"))
    customer: dict[str, Any] = data["customer"]
    return customer


@dataclass(frozen=True)
class Person:
    id: str
    email: str
    name: str
    phone: str
    source_id: str

    def personal(self) -> dict[str, str]:
        return {"email": self.email, "name": self.name, "phone": self.phone,
                "source_id": self.source_id}

    def customer(self, updated_at: datetime | None, **changes: Any) -> dict[str, Any]:
        customer = copy.deepcopy(example_customer())
        customer.update(
            id=self.id, email=self.email, name=self.name, phone=self.phone,
            source_id=self.source_id, created_at=iso(T0),
            metadata={"contact": self.email, "note": f"call {self.phone}"},
        )
        if updated_at is not None:
            customer["updated_at"] = iso(updated_at)
        customer.update(changes)
        return customer


def make_person(tag: str) -> Person:
    unique = uuid.uuid4().hex[:10]
    return Person(
        id=f"cust_{tag}{unique}",
        email=f"{tag}.{unique}@erasure.example",
        # Non-ASCII, so that JSON's \\u escapes give it a second form.
        name=f"Ærøskøbing Zoë {tag}{unique}",
        phone=f"+48 600 {int(unique[:6], 16) % 1_000_000:06d}",
        source_id=f"src/{tag}-{unique}",
    )


def delivery(event_type: str, data: dict[str, Any], at: datetime, *, ascii_only: bool) -> str:
    customer = data.get("customer")
    document = envelope(
        f"evcus_{uuid.uuid4().hex}", event_type, data, iso(at),
        entity_id=customer.get("id") if isinstance(customer, dict) else None,
    )
    return json.dumps(document, ensure_ascii=ascii_only)


def forms(value: str) -> set[str]:
    """A value as it may appear in a column: raw, and as JSON writes it with or without
    ASCII escapes (and with an escaped slash, as some JSON writers do)."""
    escaped = {json.dumps(value, ensure_ascii=flag)[1:-1] for flag in (True, False)}
    return {value, *escaped, *(e.replace("/", "\\/") for e in escaped)}


def column_texts(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bytes | bytearray | memoryview):
        return [bytes(value).decode("utf-8", errors="replace")]
    if isinstance(value, dict | list):
        return [json.dumps(value, ensure_ascii=flag) for flag in (True, False)]
    return [str(value)]


def reflect(engine: Engine) -> MetaData:
    """Every table as the database has it (not as the models say)."""
    metadata = MetaData()
    with warnings.catch_warnings():
        # SQLite: expression indexes are not reflected; only the columns matter here.
        warnings.simplefilter("ignore", SAWarning)
        metadata.reflect(engine)
    return metadata


def every_value(engine: Engine) -> Iterator[tuple[str, str, str]]:
    """(table, column, text) for every non-null value of every table in the database."""
    metadata = reflect(engine)
    assert "customers" in metadata.tables and "webhook_events" in metadata.tables
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            for row in connection.execute(select(table)).mappings():
                for column, value in row.items():
                    for text in column_texts(value):
                        yield table.name, column, text


def occurrences(engine: Engine, person: Person) -> list[tuple[str, str, str]]:
    needles = {(field, form) for field, value in person.personal().items()
               for form in forms(value)}
    return [
        (table, column, field)
        for table, column, text in every_value(engine)
        for field, form in needles
        if form in text
    ]


@dataclass
class Store:
    url: str
    engine: Engine
    cwd: Path

    def cli(self, *args: str) -> Run:
        return cli(["--database-url", self.url, *args], cwd=self.cwd)

    def write_lines(self, name: str, lines: list[str]) -> str:
        (self.cwd / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        return name

    def customer(self, customer_id: str) -> dict[str, Any] | None:
        with Session(self.engine) as session:
            found = CustomerRepository(session).get(customer_id)
            return None if found is None else found.to_dict()

    def tombstone(self, customer_id: str) -> datetime | None:
        with Session(self.engine) as session:
            return CustomerRepository(session).deleted_at(customer_id)

    def tombstone_rows(self) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(
                select(reflect(self.engine).tables["customer_tombstones"])
            ).mappings()]

    def events(self) -> dict[str, Any]:
        with Session(self.engine) as session:
            return {row.event_id: (row.customer_id, row.outcome, bytes(row.body))
                    for row in list_events(session, limit=10_000)}

    def events_bodies(self) -> list[str]:
        return [body.decode("utf-8") for _, _, body in self.events().values()]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, make_database: Any, tmp_path: Path) -> Iterator[Store]:
    url = make_database(request.param)
    upgrade_to_head(url)
    engine = make_engine(url)
    yield Store(url, engine, tmp_path)
    engine.dispose()


def test_forget_leaves_nothing_personal_and_keeps_the_other_customer(store: Store) -> None:
    person, other = make_person("forget"), make_person("keep")
    imported = store.cli("import", store.write_lines("customers.jsonl", [
        json.dumps(person.customer(T0 + timedelta(hours=1))),
        json.dumps(other.customer(T0 + timedelta(hours=1))),
    ]))
    assert imported.returncode == 0, str(imported)
    updated = person.customer(T0 + timedelta(hours=3), description="updated by webhook")
    lines = [
        delivery("customer.created", {"customer": person.customer(None)}, T0, ascii_only=False),
        delivery("customer.updated", {"customer": updated}, T0 + timedelta(hours=3),
                 ascii_only=True),
        # Noise that names the customer only by email (and name), not by id.
        delivery("voucher.published", {"voucher": {"code": "GIFT-1"}, "publication": {
            "customer": {"email": person.email, "name": person.name}}},
            T0 + timedelta(hours=4), ascii_only=True),
        delivery("customer.updated", {"customer": other.customer(T0 + timedelta(hours=5))},
                 T0 + timedelta(hours=5), ascii_only=False),
    ]
    ingested = store.cli("ingest", store.write_lines("events.jsonl", lines))
    assert ingested.returncode == 0, str(ingested)
    assert store.customer(person.id) == updated
    other_before = store.customer(other.id)
    events_before = store.events()
    other_events = {k: v for k, v in events_before.items() if v[0] == other.id}
    assert len(other_events) == 1
    # Before: the values to be erased are there to be found (the search works).
    found_before = {field for _, _, field in occurrences(store.engine, person)}
    assert found_before == set(person.personal())

    forgotten = store.cli("forget", person.id)

    assert forgotten.returncode == 0, str(forgotten)
    assert len(forgotten.output.strip().splitlines()) == 1, str(forgotten)
    for value in person.personal().values():
        assert value not in forgotten.output
    assert occurrences(store.engine, person) == []
    assert store.customer(person.id) is None
    assert store.customer(other.id) == other_before
    events_after = store.events()
    assert {k: v for k, v in events_after.items() if v[0] == other.id} == other_events
    assert set(events_after) == set(other_events)
    tombstone = store.tombstone(person.id)
    assert tombstone is not None
    assert datetime.now(UTC) - timedelta(minutes=5) < tombstone <= datetime.now(UTC)
    (row,) = store.tombstone_rows()
    assert set(row) == {"customer_id", "deleted_at", "forgotten", "swept"}
    assert row["customer_id"] == person.id and row["forgotten"] in (True, 1)
    assert row["swept"] in (False, 0)

    # A late delivery (sent before the erasure, newer than any stored version) is counted and
    # recorded as forgotten, not stale.
    late = delivery("customer.updated", {"customer": person.customer(T0 + timedelta(days=1))},
                    T0 + timedelta(days=1), ascii_only=False)
    late_run = store.cli("ingest", store.write_lines("late.jsonl", [late]))
    assert late_run.returncode == 0 and "1 forgotten" in late_run.output, str(late_run)
    assert "stale" not in late_run.output.replace("0 stale", ""), str(late_run)
    assert store.customer(person.id) is None
    assert store.tombstone(person.id) == tombstone
    # ... recorded (its event id is known, so a redelivery is a duplicate) without its body.
    assert occurrences(store.engine, person) == []
    assert len(store.events()) == len(other_events) + 1
    # Not even a payload newer than the erasure stores the customer again.
    newer = store.cli("import", store.write_lines("newer.jsonl", [
        json.dumps(person.customer(datetime.now(UTC) + timedelta(days=1))),
    ]))
    assert newer.returncode == 0 and "1 forgotten" in newer.output, str(newer)
    assert store.customer(person.id) is None
    assert occurrences(store.engine, person) == []
    with Session(store.engine) as session:
        assert CustomerRepository(session).get_by_source_id(person.source_id) is None


def test_forgetting_a_customer_never_stored_removes_its_events_and_succeeds(
    store: Store,
) -> None:
    person, other = make_person("never"), make_person("bystander")
    lines = [
        # Only events that do not store the customer: a rejected one and a noise one.
        delivery("customer.updated", {"customer": {**person.customer(T0), "birthdate": "x"}},
                 T0, ascii_only=False),
        delivery("customer.order.paid", {"customer": {"id": person.id, "email": person.email},
                                         "order": {"amount": 100}}, T0, ascii_only=False),
        delivery("customer.created", {"customer": other.customer(T0)}, T0, ascii_only=False),
    ]
    store.cli("ingest", store.write_lines("events.jsonl", lines))
    assert store.customer(person.id) is None
    assert len(store.events()) == 3

    forgotten = store.cli("forget", person.id)

    assert forgotten.returncode == 0, str(forgotten)
    assert "not stored" in forgotten.output and "2 webhook events removed" in forgotten.output
    assert occurrences(store.engine, person) == []
    assert [v[0] for v in store.events().values()] == [other.id]
    assert store.customer(other.id) is not None
    assert store.tombstone(person.id) is not None


# --- regressions: whole values only, nothing stored again, errors and replay ---------------


def customer_of(customer_id: str, **fields: Any) -> dict[str, Any]:
    """The example customer as another person: identifiers of its own, none shared."""
    customer = copy.deepcopy(example_customer())
    unique = customer_id.removeprefix("cust_").lower()
    customer.update(
        id=customer_id, created_at=iso(T0), updated_at=iso(T0), name=f"Person {unique}",
        email=f"{unique}@people.example", phone=None, source_id=f"src-{unique}",
    )
    customer.update(fields)
    return customer


def test_forget_matches_whole_values_and_keeps_events_that_only_contain_them(
    store: Store,
) -> None:
    ann = customer_of("cust_Ann", source_id="10000", email="ann.lee@forget.example")
    joann = customer_of(
        "cust_JoAnn", source_id="src-joann", email="jo.ann.lee@forget.example",
        # Substrings of Ann's identifiers, and her source_id as a number: not her.
        metadata={"note": "met cust_Ann at the fair", "mail": "x.ann.lee@forget.example.org"},
    )
    joann["summary"]["orders"]["total_amount"] = 10000
    mentions = customer_of("cust_Mentions", metadata={"referrer": "cust_Ann"})
    lines = [
        delivery("customer.created", {"customer": ann}, T0, ascii_only=False),
        delivery("customer.created", {"customer": joann}, T0, ascii_only=False),
        # A whole value of hers in another customer's event (escaped: the same value).
        delivery("customer.created", {"customer": mentions}, T0, ascii_only=True).replace(
            '"cust_Ann"', '"cust_\\u0041nn"'
        ),
    ]
    assert store.cli("ingest", store.write_lines("events.jsonl", lines)).returncode == 0
    before = store.events()

    forgotten = store.cli("forget", "cust_Ann")

    assert forgotten.returncode == 0, str(forgotten)
    assert "2 webhook events removed" in forgotten.output, str(forgotten)
    after = store.events()
    kept = {k: v for k, v in before.items() if v[0] == "cust_JoAnn"}
    assert after == kept
    assert store.customer("cust_JoAnn") == joann


def test_forget_erases_an_email_in_any_case_from_other_customers_events(store: Store) -> None:
    zelda = customer_of("cust_ZeldaQuinn01", email="zelda.q@forget.example")
    other = customer_of("cust_OtherPerson01", metadata={"contact": "ZELDA.Q@FORGET.EXAMPLE"})
    bystander = customer_of("cust_Bystander0001", metadata={"contact": "zelda.q@forget.exampl"})
    lines = [delivery("customer.created", {"customer": c}, T0, ascii_only=False)
             for c in (zelda, other, bystander)]
    assert store.cli("ingest", store.write_lines("events.jsonl", lines)).returncode == 0

    forgotten = store.cli("forget", zelda["id"])

    assert forgotten.returncode == 0, str(forgotten)
    assert [v[0] for v in store.events().values()] == [bystander["id"]]
    assert "zelda.q@forget.example" not in json.dumps(store.events_bodies()).casefold()


# Ids no customer can be stored with (models.ids): forget refuses them as import does.
@pytest.mark.parametrize(
    "customer_id", ["", "c" * 256, "\U0001d11e" * 251, "cust_\udcffAnn"],
)
def test_forget_refuses_an_id_that_does_not_look_like_one_and_changes_nothing(
    store: Store, customer_id: str
) -> None:
    ann = customer_of("cust_Ann", email="ann.lee@forget.example")
    line = delivery("customer.created", {"customer": ann}, T0, ascii_only=False)
    assert store.cli("ingest", store.write_lines("events.jsonl", [line])).returncode == 0
    before = store.events()

    refused = store.cli("forget", customer_id)

    assert refused.returncode == 2, str(refused)
    assert len(refused.output.strip().splitlines()) == 1, str(refused)
    assert "argument ID" in refused.output and "Traceback" not in refused.output
    assert store.events() == before
    assert store.customer("cust_Ann") == ann


def test_every_delivery_after_erasure_is_recorded_without_body_or_error_and_not_replayed(
    store: Store,
) -> None:
    person = make_person("later")
    assert store.cli("import", store.write_lines("customers.jsonl", [
        json.dumps(person.customer(T0)),
    ])).returncode == 0
    assert store.cli("forget", person.id).returncode == 0
    later = datetime.now(UTC) + timedelta(minutes=1)
    lines = [
        # Newer than the erasure: applied (the tombstone moves on), yet nothing kept.
        delivery("customer.deleted", {"customer": person.customer(later)}, later,
                 ascii_only=False),
        delivery("customer.rewarded", {"customer": {"id": person.id, "email": person.email,
                                                    "name": person.name}}, later,
                 ascii_only=False),
        # Rejected, with an error that quotes the offending (personal) value.
        delivery("customer.updated",
                 {"customer": {**person.customer(later), "birthdate": person.phone}}, later,
                 ascii_only=False),
    ]

    ingested = store.cli("ingest", store.write_lines("later.jsonl", lines))

    assert ingested.returncode == 1, str(ingested)  # the rejected one
    assert "1 applied" in ingested.output and "1 ignored" in ingested.output, str(ingested)
    assert "1 rejected" in ingested.output, str(ingested)
    assert person.phone not in ingested.output
    events = store.events()
    assert sorted(v[1] for v in events.values()) == ["applied", "ignored", "rejected"]
    assert all(v[0] == person.id and v[2] == b"" for v in events.values())
    assert occurrences(store.engine, person) == []
    assert store.customer(person.id) is None

    replayed = store.cli("replay")

    assert replayed.returncode == 0, str(replayed)
    assert "replayed 0 events" in replayed.output, str(replayed)
    assert occurrences(store.engine, person) == []


# Ids Voucherify's documentation allows (a string it assigns) and import stores, though
# unlike its own: what can be stored can be read and forgotten.
UNUSUAL_IDS = ["q", "plainid", "cust_z", "  cust_padded2  ", "cust_\ttabbed", " ", "-"]


def test_every_id_import_stores_can_be_got_and_forgotten(store: Store) -> None:
    customers = [customer_of(customer_id) for customer_id in UNUSUAL_IDS]
    imported = store.cli("import", store.write_lines(
        "customers.jsonl", [json.dumps(c) for c in customers]
    ))
    assert imported.returncode == 0, str(imported)
    assert f"{len(UNUSUAL_IDS)} applied" in imported.output, str(imported)

    for customer in customers:
        got = store.cli("get", customer["id"])
        assert got.returncode == 0, str(got)
        assert json.loads(got.output) == customer

        forgotten = store.cli("forget", customer["id"])

        assert forgotten.returncode == 0, str(forgotten)
        assert "customer removed" in forgotten.output, str(forgotten)
        assert store.customer(customer["id"]) is None
        assert store.cli("get", customer["id"]).returncode == 1


def test_an_id_no_customer_can_have_is_refused_by_get_as_by_import(store: Store) -> None:
    too_long = "g" * 256
    imported = store.cli("import", store.write_lines(
        "customers.jsonl", [json.dumps(customer_of(too_long))]
    ))
    assert imported.returncode == 1 and "1 rejected" in imported.output, str(imported)

    refused = store.cli("get", too_long)

    assert refused.returncode == 2, str(refused)
    assert "argument ID: not a customer id" in refused.output, str(refused)
    assert len(refused.output.strip().splitlines()) == 1, str(refused)


def test_a_webhook_stores_and_deletes_any_id_import_stores(store: Store) -> None:
    created = [
        delivery("customer.created", {"customer": customer_of(customer_id)}, T0,
                 ascii_only=False)
        for customer_id in UNUSUAL_IDS
    ]
    later = T0 + timedelta(hours=1)
    deleted = [
        delivery("customer.deleted", {"customer": customer_of(customer_id, updated_at=iso(later))},
                 later, ascii_only=False)
        for customer_id in UNUSUAL_IDS[:3]
    ]
    ingested = store.cli("ingest", store.write_lines("events.jsonl", created + deleted))

    assert ingested.returncode == 0, str(ingested)
    assert f"{len(created) + len(deleted)} applied" in ingested.output, str(ingested)
    assert {v[0] for v in store.events().values()} == set(UNUSUAL_IDS)
    for customer_id in UNUSUAL_IDS[:3]:
        assert store.customer(customer_id) is None
        assert store.tombstone(customer_id) is not None
    for customer_id in UNUSUAL_IDS[3:]:
        assert store.customer(customer_id) is not None


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16", "utf-32-be"])
def test_forget_erases_a_body_recorded_in_utf16_or_utf32_before_they_were_refused(
    store: Store, codec: str
) -> None:
    person, other = make_person("wide"), make_person("narrow")
    noise = delivery("voucher.published", {"voucher": {"code": "GIFT-W"}, "publication": {
        "customer": {"email": person.email.upper(), "name": person.name}}}, T0,
        ascii_only=False)
    kept = delivery("customer.created", {"customer": other.customer(T0)}, T0, ascii_only=False)
    assert store.cli("import", store.write_lines(
        "customers.jsonl", [json.dumps(person.customer(T0))]
    )).returncode == 0
    assert store.cli("ingest", store.write_lines("events.jsonl", [noise, kept])).returncode == 0
    noise_id = json.loads(noise)["event"]["id"]
    # As a receiver that took UTF-16 and UTF-32 bodies recorded them.
    with store.engine.begin() as connection:
        connection.execute(
            update(events).where(events.c.event_id == noise_id)
            .values(body=noise.encode(codec))
        )

    forgotten = store.cli("forget", person.id)

    assert forgotten.returncode == 0, str(forgotten)
    assert "1 webhook events removed" in forgotten.output, str(forgotten)
    assert [v[0] for v in store.events().values()] == [other.id]
