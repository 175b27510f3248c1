"""The store's answer to Voucherify's list parameters equals the stand-in server's
(tests/voucherify_api.py), query for query, on both databases: two independent readings of
the documented semantics that must agree."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from repository import CustomerRepository
from repository.voucherify.list_semantics import (
    InvalidListParameter,
    TotalCache,
    count_listed,
    count_statement,
    ids_statement,
    list_customers,
    parse_list_query,
)
from tests.voucherify_api import FakeVoucherify, make_customers, share_filter_values

APP_ID, APP_TOKEN = "list-id", "list-token"


@pytest.fixture(scope="module")
def customers() -> list[dict[str, Any]]:
    return share_filter_values(
        make_customers(260, tie_block=30, tie_at=100, seed=17), email="shared@example.com",
        name="Shared Name", every=9, city="Kraków", city_every=5,
    )


@pytest.fixture(scope="module")
def fake(customers: list[dict[str, Any]]) -> Iterator[FakeVoucherify]:
    with FakeVoucherify(app_id=APP_ID, app_token=APP_TOKEN) as server:
        server.put_many(customers)
        yield server


@pytest.fixture
def stored(session: Session, customers: list[dict[str, Any]]) -> Session:
    CustomerRepository(session).upsert_many(customers)
    session.commit()
    return session


def queries(customers: list[dict[str, Any]]) -> Iterator[dict[str, str]]:
    stamps = sorted(c["created_at"] for c in customers)
    updated = sorted(c["updated_at"] for c in customers if c["updated_at"])
    tie = customers[100]["created_at"]
    cursors = {
        "created_at": [None, stamps[50], tie, stamps[-1]],
        "updated_at": [None, updated[10], updated[len(updated) // 2]],
    }
    for order in ("", "created_at", "-created_at", "updated_at", "-updated_at", "source_id",
                  "-source_id"):
        field = "updated_at" if "updated_at" in order else "created_at"
        for cursor, (limit, page) in itertools.product(
            cursors[field], [("10", None), ("100", None), ("7", "3"), ("100", "3")]
        ):
            params = {"limit": limit}
            if order:
                params["order"] = order
            if cursor:
                params["starting_after"] = cursor
            if page:
                params["page"] = page
            yield params
    for extra in (
        {"email": "shared@example.com"}, {"name": "Shared Name"}, {"city": "Kraków"},
        {"created_at[after]": stamps[40], "created_at[before]": stamps[200]},
        {"created_at[after]": tie, "order": "created_at"},
        {"updated_at[after]": updated[5], "order": "-updated_at"},
        {"updated_at[before]": updated[30], "city": "Kraków"},
        {"email": "nobody@example.com"},
    ):
        yield {"limit": "100", **extra}


def test_every_list_query_answers_what_the_documented_api_answers(
    stored: Session, fake: FakeVoucherify, customers: list[dict[str, Any]]
) -> None:
    checked = 0
    with httpx.Client(
        base_url=fake.url, headers={"X-App-Id": APP_ID, "X-App-Token": APP_TOKEN}
    ) as http:
        for params in queries(customers):
            expected = http.get("/v1/customers", params=params).json()
            answer = list_customers(stored, parse_list_query(params))
            got = [c.to_dict() for c in answer.customers]
            assert [c["id"] for c in got] == [c["id"] for c in expected["customers"]], params
            assert got == expected["customers"], params
            assert (answer.total, answer.has_more) == (expected["total"], expected["has_more"])
            checked += 1
    assert checked > 80


@pytest.mark.parametrize(("params", "name"), [
    ({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"page": "100"}, "page"), ({"page": "0"}, "page"), ({"order": "name"}, "order"),
    ({"starting_after": "yesterday"}, "starting_after"),
    ({"created_at[before]": "2024-13-01T00:00:00Z"}, "created_at[before]"),
    # What no column or timestamp can hold: NUL, a lone surrogate, a year 0 or 10000 in UTC.
    ({"email": "a\x00@example.com"}, "email"), ({"name": "Ann \udcff"}, "name"),
    ({"city": "\ud800"}, "city"),
    ({"updated_at[after]": "0001-01-01T03:00:00+05:00"}, "updated_at[after]"),
    ({"starting_after": "9999-12-31T23:30:00-00:45"}, "starting_after"),
])
def test_parameters_out_of_the_documented_range_are_refused_by_name(
    params: dict[str, str], name: str
) -> None:
    with pytest.raises(InvalidListParameter) as caught:
        parse_list_query(params)
    assert caught.value.name == name


def test_the_sdk_spelling_of_date_times_is_read(stored: Session) -> None:
    # The official SDK formats datetimes with microseconds and a +0000 offset.
    query = parse_list_query({"created_at[after]": "2020-01-01T00:00:00.000000+0000"})
    assert list_customers(stored, query).total == count_listed(stored, parse_list_query({}))


def test_a_total_is_counted_once_per_filter_set_while_it_is_fresh() -> None:
    counted: list[int] = []
    cache = TotalCache(seconds=60)

    def count() -> int:
        counted.append(1)
        return 42

    assert [cache.get(("a",), count) for _ in range(5)] == [42] * 5
    cache.get(("b",), count)
    assert len(counted) == 2
    assert TotalCache(seconds=0).get(("a",), count) == 42 and len(counted) == 3


@pytest.mark.parametrize("params", [
    {"order": "created_at"}, {"order": "-created_at"}, {"order": "updated_at"},
    {"order": "-updated_at"}, {"order": "source_id"}, {"order": "-source_id"},
    {"email": "shared@example.com"}, {"name": "Shared Name"}, {"city": "Kraków"},
    {"created_at[after]": "2022-01-01T00:00:00Z"}, {"created_at[before]": "2022-01-01T00:00:00Z"},
    {"updated_at[after]": "2022-01-01T00:00:00Z"}, {"updated_at[before]": "2022-01-01T00:00:00Z"},
    {"starting_after": "2022-01-01T00:00:00Z"},
])
def test_every_filter_and_order_is_served_by_an_index_on_postgresql(
    stored: Session, backend: str, params: dict[str, str]
) -> None:
    if backend != "postgresql":
        pytest.skip("the plans are PostgreSQL's")
    query = parse_list_query(params)
    stored.execute(text("SET LOCAL enable_seqscan = off"))
    # The statements list_customers runs, as the database would plan them.
    for statement in (ids_statement(query), count_statement(query)):
        compiled = statement.compile(stored.get_bind(), compile_kwargs={"literal_binds": True})
        plan = "\n".join(stored.execute(text(f"EXPLAIN {compiled}")).scalars())
        assert "Seq Scan" not in plan, plan
    stored.rollback()
