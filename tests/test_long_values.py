"""Long values never stall the store: a customer whose indexed fields (source_id, name,
email, city, campaign keys, loyalty tier, referrer id) hold thousands of characters is kept
exactly through import, webhook ingest and sync, and is found by search (revision 0009)."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from models import parse_customer
from repository import (
    CustomerFilter,
    CustomerRepository,
    ingest_delivery,
    make_engine,
    make_session_factory,
)
from repository.db.schema import alembic_config
from repository.importing import import_records, read_records
from repository.store.mapping import FOLD_LIMIT, campaign_key
from repository.store.queries import InvalidArgument
from repository.voucherify import VoucherifyClient, mirror_customers
from repository.voucherify.list_semantics import list_customers, parse_list_query
from tests.test_cli import cli
from tests.voucherify_api import FakeVoucherify, make_customers
from tests.webhook_streams import envelope

LENGTH = 6000
#: One, two, three and four bytes of UTF-8; drawn at random, so the text does not compress
#: (PostgreSQL compresses an index entry before measuring it).
ALPHABET = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789éøßΩЖ€中文\U00020001\U0002a6a0"
)


def long_text(rng: random.Random, start: str = "", length: int = LENGTH) -> str:
    return start + "".join(rng.choice(ALPHABET) for _ in range(length - len(start)))


def long_customer(customer_id: str, seed: int, *, updated_at: str | None = None) -> dict[str, Any]:
    """A customer with ``LENGTH`` characters in every indexed field, and two campaign keys
    that differ only past the part a campaign key keeps of a long name."""
    rng = random.Random(seed)
    shared = long_text(rng, length=LENGTH - 1)
    campaigns = {
        shared + "A": {"points": 10, "loyalty_tier": long_text(rng)},
        shared + "B": {"points": 20, "loyalty_tier": long_text(rng)},
        # A short name spelled as the key a long one is stored under: still another name.
        campaign_key(shared + "A"): {"points": 30},
    }
    customer: dict[str, Any] = {
        "id": customer_id,
        "source_id": long_text(rng, "src-"),
        "name": long_text(rng, "Name "),
        "email": long_text(rng, "mail-") + "@example.com",
        "address": {"city": long_text(rng, "City "), "country": "PL"},
        "loyalty": {"points": 60, "campaigns": campaigns},
        "referrals": {"total": 1, "campaigns": [
            {"campaign_id": "camp_1", "referrer_id": long_text(rng, "cust_"),
             "date": "2024-01-02T03:04:05.678Z"},
        ]},
        "created_at": "2024-01-01T00:00:00.000Z",
        "object": "customer",
    }
    if updated_at is not None:
        customer["updated_at"] = updated_at
    return customer


@pytest.fixture
def sessions(engine: Engine, session: Session) -> sessionmaker[Session]:
    """Sessions on the test database (the ``session`` fixture empties it afterwards)."""
    del session
    return make_session_factory(engine)


def stored_json(sessions: sessionmaker[Session], customer_id: str) -> Any:
    with sessions() as session:
        found = CustomerRepository(session).get(customer_id)
        return None if found is None else found.to_dict()


def assert_found_by_every_search(sessions: sessionmaker[Session], raw: dict[str, Any]) -> None:
    """Every filter on an indexed field finds ``raw`` by its whole long value."""
    (campaign, entry), *_ = raw["loyalty"]["campaigns"].items()
    filters = [
        CustomerFilter(email=raw["email"]),
        CustomerFilter(email=raw["email"].upper()),
        CustomerFilter(source_id=raw["source_id"]),
        CustomerFilter(name_prefix=raw["name"][:300]),
        CustomerFilter(campaign=campaign, loyalty_tier=entry["loyalty_tier"]),
        CustomerFilter(campaign=campaign, min_points=entry["points"]),
        CustomerFilter(referred_by=raw["referrals"]["campaigns"][0]["referrer_id"]),
    ]
    lists = [{"email": raw["email"]}, {"name": raw["name"]}, {"city": raw["address"]["city"]}]
    with sessions() as session:
        repo = CustomerRepository(session)
        for customer_filter in filters:
            assert [c.id for c in repo.find(customer_filter).customers] == [raw["id"]]
        for params in lists:
            page = list_customers(session, parse_list_query(params))
            assert [c.id for c in page.customers] == [raw["id"]], list(params)
        assert repo.get_by_source_id(raw["source_id"]) is not None
        # One character off, at the very end: nothing.
        assert repo.count(CustomerFilter(source_id=raw["source_id"][:-1] + "?")) == 0
        city = raw["address"]["city"][:-1] + "?"
        assert list_customers(session, parse_list_query({"city": city})).total == 0


# --- the 500-character refusal is gone --------------------------------------------------


@pytest.mark.parametrize("path", [
    ("source_id",), ("name",), ("email",), ("loyalty", "campaigns", "KEY", "loyalty_tier"),
    ("referrals", "campaigns", 0, "referrer_id"),
])
def test_indexed_fields_past_the_old_500_character_cap_are_accepted(path: tuple[Any, ...]) -> None:
    value = "v" * 501 + "é" * 700  # past 500 characters and past the old 1,200 bytes
    raw: dict[str, Any] = {"id": "cust_cap", "loyalty": {"campaigns": {"KEY": {}}},
                           "referrals": {"campaigns": [{}]}}
    target: Any = raw
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert parse_customer(raw).to_dict() == raw
    long_key = {"id": "cust_cap", "loyalty": {"campaigns": {value: {"points": 1}}}}
    assert parse_customer(long_key).to_dict() == long_key


# --- every way in -----------------------------------------------------------------------


def test_a_long_customer_imports_exactly_and_is_found(
    sessions: sessionmaker[Session], backend: str
) -> None:
    raw = long_customer("cust_long_import", seed=1)
    others = make_customers(3, seed=5)
    lines = "\n".join(json.dumps(c, ensure_ascii=False) for c in [raw, *others]) + "\n"
    report = import_records(sessions, read_records(io.StringIO(lines)))
    assert (report.applied, report.rejected) == (4, 0), report.rejections
    assert stored_json(sessions, raw["id"]) == raw
    assert_found_by_every_search(sessions, raw)


def test_a_long_customer_arrives_exactly_by_webhook_and_replaces_itself(
    sessions: sessionmaker[Session], backend: str
) -> None:
    first = long_customer("cust_long_hook", seed=2)
    second = long_customer("cust_long_hook", seed=3, updated_at="2024-02-01T00:00:00.000Z")
    for number, customer in enumerate((first, second)):
        body = json.dumps(envelope(
            f"evcus_long{number:014d}", "customer.updated", {"customer": customer},
            customer.get("updated_at", customer["created_at"]),
        ), ensure_ascii=False).encode()
        assert ingest_delivery(sessions, body).outcome == "applied"
        assert stored_json(sessions, customer["id"]) == customer
    assert_found_by_every_search(sessions, second)


def test_a_long_customer_in_a_listing_is_synced_exactly_with_the_customers_after_it(
    sessions: sessionmaker[Session], backend: str
) -> None:
    raw = long_customer("cust_long_sync", seed=4)
    raw["created_at"] = "2021-06-01T00:00:00.000Z"  # listed before the others
    others = make_customers(149, seed=6)
    with FakeVoucherify(app_id="app", app_token="token") as fake:
        fake.put_many([raw, *others])
        with VoucherifyClient(app_id="app", app_token="token", api_url=fake.url) as client:
            report = mirror_customers(sessions, client)
    assert report.complete and (report.applied, report.rejected) == (150, 0)
    assert stored_json(sessions, raw["id"]) == raw
    assert all(stored_json(sessions, c["id"]) == c for c in others)
    assert_found_by_every_search(sessions, raw)


def test_the_receiver_answers_a_long_customer_200_and_stores_it(
    make_database: Any, tmp_path: Any, backend: str
) -> None:
    from repository.db.schema import upgrade_to_head
    from tests.servers import running_server

    url = make_database(backend)
    upgrade_to_head(url)
    raw = long_customer("cust_long_http", seed=7)
    body = json.dumps(envelope(
        "evcus_longhttp0000000001", "customer.created", {"customer": raw}, raw["created_at"]
    ), ensure_ascii=False).encode()
    with running_server(url, log_path=tmp_path / "serve.log", secret="whsec-long") as server:
        reply = server.deliver(body)
    assert (reply.status, reply.json()["outcome"]) == (200, "applied")
    engine = make_engine(url)
    try:
        assert stored_json(make_session_factory(engine), raw["id"]) == raw
    finally:
        engine.dispose()


# --- search arguments -------------------------------------------------------------------


def test_find_takes_long_arguments_and_refuses_a_name_prefix_past_its_limit_with_exit_2(
    database_url: str, sessions: sessionmaker[Session], tmp_path: Any
) -> None:
    raw = long_customer("cust_long_find", seed=8)
    with sessions() as session:
        CustomerRepository(session).upsert(raw)
        session.commit()
    found = cli("find", "--source-id", raw["source_id"], url=database_url, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    assert [json.loads(line)["id"] for line in found.stdout.splitlines()] == [raw["id"]]
    counted = cli("find", "--count", "--email", raw["email"], url=database_url, cwd=tmp_path)
    assert (counted.returncode, counted.stdout.strip()) == (0, "1")

    refused = cli("find", "--name-prefix", raw["name"], url=database_url, cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith(
        f"argument --name-prefix: longer than {FOLD_LIMIT} characters once case-folded"
    )
    assert raw["name"][:50] not in refused.stderr
    with pytest.raises(InvalidArgument) as caught:
        CustomerFilter(name_prefix=raw["name"])
    assert caught.value.field == "name_prefix"


def test_the_source_id_order_keeps_long_values_in_place(
    sessions: sessionmaker[Session], backend: str
) -> None:
    rng = random.Random(9)
    shared = long_text(rng, "m", 250)
    source_ids = {"cust_o1": "b", "cust_o2": shared + "z", "cust_o3": shared + "a",
                  "cust_o4": "a" + long_text(rng), "cust_o5": "c"}
    with sessions() as session:
        repo = CustomerRepository(session)
        for customer_id, source_id in source_ids.items():
            repo.upsert({"id": customer_id, "source_id": source_id,
                         "created_at": "2024-01-01T00:00:00.000Z"})
        session.commit()
        ascending = list_customers(session, parse_list_query({"order": "source_id"}))
        descending = list_customers(session, parse_list_query({"order": "-source_id"}))
    # The two that share their first 200 characters follow each other by id.
    expected = ["cust_o4", "cust_o1", "cust_o5", "cust_o2", "cust_o3"]
    assert [c.id for c in ascending.customers] == expected
    assert [c.id for c in descending.customers] == expected[::-1]


# --- the migration ----------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def at_0008(make_database: Any, request: pytest.FixtureRequest) -> Iterator[tuple[str, Engine]]:
    url: str = make_database(request.param)
    command.upgrade(alembic_config(url), "0008")
    engine = make_engine(url)
    yield url, engine
    engine.dispose()


def test_0009_keeps_stored_campaigns_and_downgrade_refuses_while_a_long_name_is_stored(
    at_0008: tuple[str, Engine],
) -> None:
    url, engine = at_0008
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO customers (id) VALUES ('cust_m1')"))
        connection.execute(text(
            "INSERT INTO customer_loyalty_campaigns (customer_id, campaign, points) "
            "VALUES ('cust_m1', 'Summer Campaign', 5)"
        ))
    command.upgrade(alembic_config(url), "head")
    sessions = make_session_factory(engine)
    campaigns = stored_json(sessions, "cust_m1")["loyalty"]["campaigns"]
    assert list(campaigns) == ["Summer Campaign"] and campaigns["Summer Campaign"]["points"] == 5
    raw = long_customer("cust_m2", seed=10)
    with sessions() as session:
        CustomerRepository(session).upsert(raw)
        session.commit()
    with pytest.raises(RuntimeError, match="longer than 1,200 bytes"):
        command.downgrade(alembic_config(url), "0008")
    assert stored_json(sessions, "cust_m2") == raw


def test_0009_runs_again_after_an_interruption_on_postgresql(make_database: Any) -> None:
    url = make_database("postgresql")
    command.upgrade(alembic_config(url), "head")
    engine = make_engine(url)
    try:
        # As if interrupted after its work, before Alembic recorded it: it runs again.
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = '0008'"))
            connection.execute(text("DROP INDEX ix_customer_addresses_city_prefix"))
        command.upgrade(alembic_config(url), "head")
        with engine.connect() as connection:
            names = set(connection.execute(text(
                "SELECT indexrelid::regclass::text FROM pg_index WHERE indisvalid"
            )).scalars())
        assert {"ix_customer_addresses_city_prefix", "ix_customers_source_id_prefix_id"} <= names
        assert not names & {"ix_customer_addresses_city", "ix_customers_source_id_id"}
    finally:
        engine.dispose()
