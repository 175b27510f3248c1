"""The fake Voucherify customer list API (tests/voucherify_api.py) against its documented
semantics: fast, no database."""

from __future__ import annotations

import http.client
import itertools
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import Message
from typing import Any
from urllib.parse import urlencode

import pytest

from models import parse_customer
from tests.conftest import load_example_customers
from tests.voucherify_api import (
    CYCLE_RETRY_SECONDS,
    UNLIMITED,
    FakeVoucherify,
    format_instant,
    make_customers,
    parse_instant,
)

AUTH = {"X-App-Id": "app-id", "X-App-Token": "app-token"}
RATE_HEADERS = ("X-Rate-Limit-Limit", "X-Rate-Limit-Remaining", "X-Rate-Limit-Retry")
Params = Sequence[tuple[str, str | int]] | Mapping[str, str | int]


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def ids(self) -> list[str]:
        return [customer["id"] for customer in self.json()["customers"]]


def call(
    fake: FakeVoucherify,
    params: Params = (),
    *,
    path: str = "/v1/customers",
    method: str = "GET",
    headers: Mapping[str, str] = AUTH,
) -> Reply:
    query = urlencode(list(params.items()) if isinstance(params, Mapping) else list(params))
    url = fake.url + path + (f"?{query}" if query else "")
    request = urllib.request.Request(url, method=method, headers=dict(headers))  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.headers, error.read())


def get_ok(fake: FakeVoucherify, params: Params = ()) -> dict[str, Any]:
    reply = call(fake, params)
    assert reply.status == 200, reply.body
    body: dict[str, Any] = reply.json()
    return body


def collect(fake: FakeVoucherify, params: Mapping[str, str | int]) -> list[str]:
    """Every id that ``params`` selects, page after page (limit 100)."""
    ids: list[str] = []
    for page in range(1, 100):
        body = get_ok(fake, {**params, "limit": 100, "page": page})
        ids += [customer["id"] for customer in body["customers"]]
        if not body["has_more"]:
            return ids
    raise AssertionError("more than 99 pages")


def assert_error(reply: Reply, status: int, *, mentions: str | None = None) -> dict[str, Any]:
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = reply.json()
    assert body["code"] == status
    assert set(body) == {"code", "key", "message", "details"}
    assert isinstance(body["key"], str) and body["key"]
    if mentions is not None:
        assert mentions in body["details"]
    return body


def by_created(customers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(customers, key=lambda c: (c["created_at"], c["id"]))


def shift(instant: str, milliseconds: int) -> str:
    return format_instant(parse_instant(instant) + timedelta(milliseconds=milliseconds))


@pytest.fixture
def fake() -> Iterator[FakeVoucherify]:
    with FakeVoucherify() as server:
        yield server


@pytest.fixture(scope="module")
def sample() -> list[dict[str, Any]]:
    return make_customers(60, seed=1)


@pytest.fixture
def loaded(fake: FakeVoucherify, sample: list[dict[str, Any]]) -> FakeVoucherify:
    fake.put_many(sample)
    return fake


# --- the data generator ---------------------------------------------------------------------


def test_generated_customers_are_valid_and_shaped_like_voucherify() -> None:
    customers = make_customers(600, tie_block=40, tie_at=10, seed=3)
    for customer in customers:
        parse_customer(customer)
    assert all(re.fullmatch(r"cust_[A-Za-z0-9]{24}", c["id"]) for c in customers)
    assert len({c["id"] for c in customers}) == 600
    assert len({c["source_id"] for c in customers}) == 600
    assert all(c["object"] == "customer" for c in customers)
    wire = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
    created = [c["created_at"] for c in customers]
    assert all(wire.fullmatch(value) for value in created)
    assert created[10:50] == [created[10]] * 40
    outside = created[:11] + created[50:]
    assert all(a < b for a, b in itertools.pairwise(outside))
    assert all(
        parse_instant(b) - parse_instant(a) <= timedelta(milliseconds=5)
        for a, b in itertools.pairwise(created)
    )
    updated = [c for c in customers if c["updated_at"] is not None]
    assert 0.2 < 1 - len(updated) / len(customers) < 0.45
    assert all(wire.fullmatch(c["updated_at"]) for c in updated)
    assert all(c["updated_at"] >= c["created_at"] for c in updated)
    assert 0 < sum("x_extra" in c for c in customers) < len(customers)
    for key in ("summary", "loyalty", "referrals", "metadata", "system_metadata", "address"):
        assert all(key in c for c in customers)
    assert any(c["referrals"]["campaigns"] for c in customers)
    assert any(
        "loyalty_tier" in entry for c in customers for entry in c["loyalty"]["campaigns"].values()
    )
    assert make_customers(50, seed=3) == make_customers(50, seed=3)
    assert make_customers(50, seed=3) != make_customers(50, seed=4)


@pytest.mark.slow  # asserts on elapsed time
def test_default_tie_block_is_in_the_middle_and_generation_is_fast() -> None:
    started = time.perf_counter()
    customers = make_customers(10_000, tie_block=150)
    assert time.perf_counter() - started < 4
    created = [c["created_at"] for c in customers]
    assert created[4925:5075] == [created[4925]] * 150
    assert created[4924] < created[4925] < created[5075]
    start = datetime(2023, 5, 1, 12, tzinfo=UTC)
    assert make_customers(3, start=start)[0]["created_at"] == "2023-05-01T12:00:00.000Z"
    with pytest.raises(ValueError):
        make_customers(5, tie_block=6)


# --- authentication, routing, parameters ----------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-App-Id": "app-id"},
        {"X-App-Token": "app-token"},
        {"X-App-Id": "app-id", "X-App-Token": "wrong"},
        {"X-App-Id": "other", "X-App-Token": "app-token"},
        {"X-App-Id": "app-id", "X-App-Token": "app-tökén"},
    ],
)
def test_wrong_or_missing_credentials_are_refused(
    loaded: FakeVoucherify, headers: dict[str, str]
) -> None:
    reply = call(loaded, headers=headers)
    body = assert_error(reply, 401)
    assert body["key"] == "unauthorized" and body["message"] == "Unauthorized"
    assert all(name in reply.headers for name in RATE_HEADERS)
    assert "app-token" not in repr(loaded.request_log)
    assert loaded.request_log == [("/v1/customers", {}, 401)]


def test_custom_credentials() -> None:
    with FakeVoucherify(app_id="id-2", app_token="secret-2") as fake:
        assert call(fake).status == 401
        assert call(fake, headers={"X-App-Id": "id-2", "X-App-Token": "secret-2"}).status == 200


def test_other_paths_and_methods(fake: FakeVoucherify) -> None:
    assert_error(call(fake, path="/v1/vouchers"), 404)
    assert_error(call(fake, path="/v1/customers/cust_x"), 404)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert_error(call(fake, method=method), 405)
    assert call(fake, path="/v1/vouchers", headers={}).status == 401


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("limit", 0),
        ("limit", 101),
        ("limit", "abc"),
        ("limit", ""),
        ("limit", "1.5"),
        ("limit", -1),
        ("page", 0),
        ("page", 100),
        ("page", "x"),
        ("order", "name"),
        ("order", ""),
        ("starting_after", "yesterday"),
        ("starting_after", "2022-08-30T06:32:07.380"),
        ("starting_after", "2022-08-30"),
        ("created_at[before]", "2022-13-01T00:00:00Z"),
        ("created_at[after]", "x"),
        ("updated_at[before]", ""),
        ("updated_at[after]", "1661841127"),
        ("segment_id", "seg_1"),
        ("colour", "red"),
    ],
)
def test_bad_parameters_give_400_naming_the_parameter(
    loaded: FakeVoucherify, name: str, value: str | int
) -> None:
    assert_error(call(loaded, {name: value}), 400, mentions=name)


def test_repeated_parameter_is_refused(loaded: FakeVoucherify) -> None:
    assert_error(call(loaded, [("limit", 5), ("limit", 6)]), 400, mentions="limit")


def test_limit_and_page_bounds_are_accepted(loaded: FakeVoucherify) -> None:
    assert len(get_ok(loaded)["customers"]) == 10
    assert len(get_ok(loaded, {"limit": 1})["customers"]) == 1
    assert len(get_ok(loaded, {"limit": 100})["customers"]) == 60
    body = get_ok(loaded, {"limit": 100, "page": 99})
    assert body["customers"] == [] and body["has_more"] is False and body["total"] == 60


# --- the answer, order and cursor -----------------------------------------------------------


def test_response_shape_and_default_order_newest_first(
    loaded: FakeVoucherify, sample: list[dict[str, Any]]
) -> None:
    reply = call(loaded, {"limit": 100})
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.json()
    assert list(body) == ["object", "data_ref", "customers", "total", "has_more"]
    assert body["object"] == "list" and body["data_ref"] == "customers"
    assert body["total"] == 60 and body["has_more"] is False
    expected = list(reversed(by_created(sample)))
    assert body["customers"] == expected


def test_starting_after_without_order_gives_older_customers(
    loaded: FakeVoucherify, sample: list[dict[str, Any]]
) -> None:
    ordered = by_created(sample)
    cursor = ordered[30]["created_at"]
    expected = [c["id"] for c in reversed(ordered) if c["created_at"] < cursor]
    assert len(expected) == 30
    assert call(loaded, {"limit": 100, "starting_after": cursor}).ids() == expected
    with_offset = cursor.replace("Z", "+00:00")
    assert call(loaded, {"limit": 100, "starting_after": with_offset}).ids() == expected
    local = parse_instant(cursor).replace(tzinfo=None) + timedelta(hours=2)
    shifted = local.isoformat(timespec="microseconds") + "+02:00"
    assert call(loaded, {"limit": 100, "starting_after": shifted}).ids() == expected
    assert call(loaded, {"limit": 100, "order": "-created_at", "starting_after": cursor}).ids() == (
        expected
    )


def test_ascending_created_at_with_starting_after_is_strictly_after(
    loaded: FakeVoucherify, sample: list[dict[str, Any]]
) -> None:
    ordered = by_created(sample)
    assert call(loaded, {"limit": 100, "order": "created_at"}).ids() == [c["id"] for c in ordered]
    cursor = ordered[20]["created_at"]
    reply = call(loaded, {"limit": 5, "order": "created_at", "starting_after": cursor})
    assert reply.ids() == [c["id"] for c in ordered[21:26]]
    body = reply.json()
    assert body["total"] == 60 and body["has_more"] is True
    last = ordered[-1]["created_at"]
    body = get_ok(loaded, {"order": "created_at", "starting_after": last})
    assert body["customers"] == [] and body["has_more"] is False and body["total"] == 60


def test_order_by_updated_at_puts_nulls_last_and_cursor_skips_them(
    loaded: FakeVoucherify, sample: list[dict[str, Any]]
) -> None:
    nulls = sorted(c["id"] for c in sample if c["updated_at"] is None)
    dated = sorted(
        (c for c in sample if c["updated_at"] is not None), key=lambda c: (c["updated_at"], c["id"])
    )
    assert nulls and dated
    ascending = [c["id"] for c in dated] + nulls
    assert call(loaded, {"limit": 100, "order": "updated_at"}).ids() == ascending
    assert call(loaded, {"limit": 100, "order": "-updated_at"}).ids() == ascending[::-1]
    cursor = dated[10]["updated_at"]
    after = [c["id"] for c in dated if c["updated_at"] > cursor]
    assert call(loaded, {"limit": 100, "order": "updated_at", "starting_after": cursor}).ids() == (
        after
    )
    before = [c["id"] for c in reversed(dated) if c["updated_at"] < cursor]
    assert len(before) == 10
    assert (
        call(loaded, {"limit": 100, "order": "-updated_at", "starting_after": cursor}).ids()
        == before
    )


def test_order_by_source_id(loaded: FakeVoucherify, sample: list[dict[str, Any]]) -> None:
    ascending = [c["id"] for c in sorted(sample, key=lambda c: (c["source_id"], c["id"]))]
    assert call(loaded, {"limit": 100, "order": "source_id"}).ids() == ascending
    assert call(loaded, {"limit": 100, "order": "-source_id"}).ids() == ascending[::-1]
    cursor = by_created(sample)[30]["created_at"]
    older = {c["id"] for c in sample if c["created_at"] < cursor}
    ids = call(loaded, {"limit": 100, "order": "source_id", "starting_after": cursor}).ids()
    assert ids == [i for i in ascending if i in older]


def test_ties_are_broken_by_id(fake: FakeVoucherify) -> None:
    customers = make_customers(30, tie_block=30, seed=5)
    fake.put_many(reversed(customers))
    ids = sorted(c["id"] for c in customers)
    assert call(fake, {"limit": 100, "order": "created_at"}).ids() == ids
    assert call(fake, {"limit": 100}).ids() == ids[::-1]
    pages = [call(fake, {"limit": 7, "page": page}).ids() for page in range(1, 6)]
    assert [i for page in pages for i in page] == ids[::-1]


# --- filters, total, has_more ---------------------------------------------------------------


def test_created_at_filters_are_strict(
    loaded: FakeVoucherify, sample: list[dict[str, Any]]
) -> None:
    ordered = by_created(sample)
    low, high = ordered[10]["created_at"], ordered[40]["created_at"]
    body = get_ok(
        loaded,
        {"limit": 100, "order": "created_at", "created_at[after]": low, "created_at[before]": high},
    )
    assert [c["id"] for c in body["customers"]] == [c["id"] for c in ordered[11:40]]
    assert body["total"] == 29
    assert get_ok(loaded, {"created_at[before]": low})["total"] == 10
    assert get_ok(loaded, {"created_at[after]": high})["total"] == 19


def test_updated_at_filters_never_match_null(
    loaded: FakeVoucherify, sample: list[dict[str, Any]]
) -> None:
    dated = sorted(c["updated_at"] for c in sample if c["updated_at"] is not None)
    middle = dated[len(dated) // 2]
    before = {c["id"] for c in sample if c["updated_at"] is not None and c["updated_at"] < middle}
    after = {c["id"] for c in sample if c["updated_at"] is not None and c["updated_at"] > middle}
    assert set(collect(loaded, {"updated_at[before]": middle})) == before
    assert set(collect(loaded, {"updated_at[after]": middle})) == after
    assert get_ok(loaded, {"updated_at[after]": "1970-01-01T00:00:00.000Z"})["total"] == len(dated)


def test_email_city_and_name_filters(fake: FakeVoucherify) -> None:
    customers = make_customers(40, seed=9)
    customers[3]["email"] = customers[7]["email"] = "shared@example.com"
    customers[5]["address"] = None
    fake.put_many(customers)
    assert set(collect(fake, {"email": "shared@example.com"})) == {
        customers[3]["id"],
        customers[7]["id"],
    }
    city = customers[0]["address"]["city"]
    in_city = {c["id"] for c in customers if c["address"] and c["address"]["city"] == city}
    assert set(collect(fake, {"city": city})) == in_city
    assert get_ok(fake, {"city": city})["total"] == len(in_city)
    name = customers[1]["name"]
    assert set(collect(fake, {"name": name})) == {c["id"] for c in customers if c["name"] == name}
    assert get_ok(fake, {"email": "nobody@example.com"}) == {
        "object": "list",
        "data_ref": "customers",
        "customers": [],
        "total": 0,
        "has_more": False,
    }


def test_total_ignores_cursor_and_page_and_has_more_follows_the_pages(
    loaded: FakeVoucherify, sample: list[dict[str, Any]]
) -> None:
    pages = [get_ok(loaded, {"limit": 25, "page": page}) for page in (1, 2, 3, 4)]
    assert [len(p["customers"]) for p in pages] == [25, 25, 10, 0]
    assert [p["has_more"] for p in pages] == [True, True, False, False]
    assert all(p["total"] == 60 for p in pages)
    cursor = by_created(sample)[29]["created_at"]
    body = get_ok(loaded, {"limit": 25, "starting_after": cursor})
    assert body["total"] == 60 and len(body["customers"]) == 25 and body["has_more"] is True
    body = get_ok(loaded, {"limit": 25, "page": 2, "starting_after": cursor})
    assert len(body["customers"]) == 4 and body["has_more"] is False
    body = get_ok(loaded, {"limit": 29, "starting_after": cursor})
    assert body["has_more"] is False


def test_a_tie_block_is_recovered_with_page_and_created_at_filters(fake: FakeVoucherify) -> None:
    customers = make_customers(400, tie_block=150, tie_at=100, seed=2)
    fake.put_many(customers)
    every = {c["id"] for c in customers}

    # A cursor alone loses ties: the cursor is a date-time and the comparison is strict.
    cursor_only: list[str] = []
    params: dict[str, str | int] = {"order": "created_at", "limit": 100}
    while True:
        page = get_ok(fake, params)["customers"]
        cursor_only += [c["id"] for c in page]
        if len(page) < 100:
            break
        params["starting_after"] = page[-1]["created_at"]
    assert len(cursor_only) < 400

    # The remedy: when a page ends, take every customer created at that instant with
    # created_at[after]/[before] around it and page, then go on strictly after it.
    seen: list[str] = []
    after: str | None = None
    while True:
        params = {"order": "created_at", "limit": 100}
        if after is not None:
            params["starting_after"] = after
        body = get_ok(fake, params)
        seen += [c["id"] for c in body["customers"]]
        if not body["has_more"]:
            break
        last = body["customers"][-1]["created_at"]
        window = {
            "order": "created_at",
            "created_at[after]": shift(last, -1),
            "created_at[before]": shift(last, 1),
        }
        seen += collect(fake, window)
        after = last
    assert set(seen) == every

    tie = customers[100]["created_at"]
    window = {"created_at[after]": shift(tie, -1), "created_at[before]": shift(tie, 1)}
    first = get_ok(fake, {**window, "limit": 100, "page": 1})
    second = get_ok(fake, {**window, "limit": 100, "page": 2})
    assert first["total"] == second["total"] == 150
    assert first["has_more"] is True and second["has_more"] is False
    ids = [c["id"] for c in first["customers"] + second["customers"]]
    assert sorted(ids) == sorted(c["id"] for c in customers[100:250])


# --- stored data ----------------------------------------------------------------------------


def test_deleted_customers_are_not_listed(fake: FakeVoucherify) -> None:
    customers = make_customers(5, seed=4)
    fake.put_many(customers)
    fake.delete(customers[2]["id"])
    body = get_ok(fake)
    assert body["total"] == 4
    assert customers[2]["id"] not in [c["id"] for c in body["customers"]]
    assert [c["id"] for c in fake.customers()] == [
        c["id"] for c in customers if c is not customers[2]
    ]
    with pytest.raises(KeyError):
        fake.delete(customers[2]["id"])


def test_update_and_put_replace(fake: FakeVoucherify) -> None:
    customers = make_customers(5, seed=4)
    fake.put_many(customers)
    target = customers[1]
    at = "2030-01-01T00:00:00.000Z"
    new = fake.update(target["id"], at=at, name="Renamed", metadata={"k": 1})
    assert new == {**target, "name": "Renamed", "metadata": {"k": 1}, "updated_at": at}
    assert call(fake, {"order": "-updated_at", "limit": 1}).json()["customers"] == [new]
    assert get_ok(fake, {"name": "Renamed"})["total"] == 1
    fake.put({**target, "name": "Again"})
    assert get_ok(fake, {"name": "Again"})["customers"] == [{**target, "name": "Again"}]
    assert get_ok(fake)["total"] == 5
    with pytest.raises(KeyError):
        fake.update("cust_missing", at=at, name="x")
    target["name"] = "mutated after put"
    assert get_ok(fake, {"name": "mutated after put"})["total"] == 0


def test_customers_come_back_exactly_with_unknown_keys(fake: FakeVoucherify) -> None:
    customer = make_customers(1, seed=11)[0]
    customer["x_extra"] = {"città": "Kraków", "big": 2**70, "nested": [{"a": None}]}
    customer["metadata"]["emoji"] = "🎉"
    fake.put(customer)
    reply = call(fake)
    assert reply.json()["customers"] == [customer]
    assert "Kraków".encode() in reply.body and "🎉".encode() in reply.body
    assert json.dumps(customer, ensure_ascii=False).encode() in reply.body
    assert fake.customers() == [customer]


def test_every_voucherify_example_is_listed_as_stored(fake: FakeVoucherify) -> None:
    latest: dict[str, Any] = {}
    for _, customer in load_example_customers():
        fake.put(customer)
        latest[customer["id"]] = customer
    body = get_ok(fake, {"limit": 100})
    assert body["total"] == len(latest)
    assert sorted(body["customers"], key=lambda c: c["id"]) == sorted(
        latest.values(), key=lambda c: c["id"]
    )


# --- rate limits ----------------------------------------------------------------------------


def rate(reply: Reply) -> tuple[int, int, int]:
    return tuple(int(reply.headers[name]) for name in RATE_HEADERS)  # type: ignore[return-value]


def test_rate_limit_headers_are_on_every_response() -> None:
    with FakeVoucherify(requests_per_window=4, window_seconds=30, block_seconds=30) as fake:
        fake.put_many(make_customers(3))
        replies = [
            call(fake),
            call(fake, {"limit": 0}),
            call(fake, path="/nowhere"),
            call(fake, method="POST"),
            call(fake, headers={}),
        ]
        fake.fail_next(1)
        replies.append(call(fake))
        replies.append(call(fake))  # the fifth counted request: refused
        assert [r.status for r in replies] == [200, 400, 404, 405, 401, 503, 429]
        for reply in replies:
            assert all(re.fullmatch(r"\d+", reply.headers[name] or "") for name in RATE_HEADERS)
        now = int(time.time())
        assert [rate(r)[:2] for r in replies] == [
            (4, 3),
            (4, 2),
            (4, 1),
            (4, 0),
            (4, 0),
            (4, 0),
            (4, 0),
        ]
        assert abs(rate(replies[0])[2] - now) <= 1  # requests remained: now
        assert rate(replies[3])[2] >= now + 29  # used up: the end of the window
        assert rate(replies[6])[2] >= now + 29  # blocked: the end of the block

    with FakeVoucherify() as unlimited:
        assert rate(call(unlimited))[:2] == (UNLIMITED, UNLIMITED)


def test_exceeding_the_window_blocks_the_project() -> None:
    with FakeVoucherify(requests_per_window=3, window_seconds=0.5, block_seconds=1.5) as fake:
        assert [call(fake).status for _ in range(3)] == [200, 200, 200]
        refused_at = time.time()
        refused = call(fake)
        assert refused.status == 429
        assert refused.headers["X-Rate-Limit-Type"] == "api_calls"
        assert refused.headers["Retry-After"] == "2"
        assert refused.json()["code"] == 429
        assert fake.violations == 1 and fake.blocked
        time.sleep(0.7)  # the window is over, the block is not
        still = call(fake)
        assert still.status == 429 and still.headers["X-Rate-Limit-Type"] == "api_calls"
        assert int(still.headers["Retry-After"]) >= 1
        assert int(still.headers["X-Rate-Limit-Retry"]) >= int(refused_at + 1.5)
        assert fake.violations == 2
        time.sleep(max(0.0, refused_at + 1.6 - time.time()))
        again = call(fake)
        assert again.status == 200 and rate(again)[:2] == (3, 2)
        assert fake.violations == 2 and not fake.blocked
        assert [status for _, _, status in fake.request_log] == [200] * 3 + [429, 429, 200]


def test_a_client_that_follows_the_headers_never_violates() -> None:
    with FakeVoucherify(requests_per_window=8, window_seconds=0.4, block_seconds=5) as fake:
        fake.put_many(make_customers(110, seed=6))
        seen: list[str] = []
        params: dict[str, str | int] = {"limit": 5, "order": "created_at"}
        while True:
            reply = call(fake, params)
            assert reply.status == 200
            page = reply.json()["customers"]
            seen += [c["id"] for c in page]
            if not reply.json()["has_more"]:
                break
            params["starting_after"] = page[-1]["created_at"]
            if int(reply.headers["X-Rate-Limit-Remaining"]) == 0:
                time.sleep(max(0.0, int(reply.headers["X-Rate-Limit-Retry"]) - time.time()))
        assert len(seen) == 110 and fake.violations == 0 and fake.requests == 22


def test_a_401_is_not_counted_against_the_window() -> None:
    with FakeVoucherify(requests_per_window=2, window_seconds=30) as fake:
        for _ in range(5):
            assert call(fake, headers={}).status == 401
        assert [call(fake).status for _ in range(2)] == [200, 200]
        assert fake.violations == 0


def test_cycle_limit() -> None:
    with FakeVoucherify(cycle_limit=2) as fake:
        assert [call(fake).status for _ in range(2)] == [200, 200]
        reply = call(fake)
        assert reply.status == 429
        assert reply.headers["X-Rate-Limit-Type"] == "api_calls_cycle"
        assert int(reply.headers["Retry-After"]) == CYCLE_RETRY_SECONDS
        assert int(reply.headers["X-Rate-Limit-Retry"]) >= time.time() + CYCLE_RETRY_SECONDS - 5
        assert call(fake).status == 429
        assert fake.violations == 0


# --- faults ---------------------------------------------------------------------------------


def test_fail_next(loaded: FakeVoucherify) -> None:
    loaded.fail_next(2)
    loaded.fail_next(1, status=500)
    first, second, third = call(loaded), call(loaded), call(loaded)
    assert_error(first, 503)
    assert_error(second, 503)
    assert_error(third, 500)
    assert all(name in first.headers for name in RATE_HEADERS)
    assert call(loaded).status == 200
    loaded.fail_next(1, status=429)
    throttled = call(loaded)
    assert throttled.status == 429 and throttled.headers["Retry-After"] == "1"
    assert loaded.requests == 5 and loaded.violations == 0


def test_drop_next(loaded: FakeVoucherify) -> None:
    loaded.drop_next(2)
    for _ in range(2):
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            call(loaded)
    assert call(loaded).status == 200
    assert loaded.dropped == 2 and loaded.requests == 1
    assert loaded.request_log == [("/v1/customers", {}, 200)]


def test_random_429s_are_seeded_and_never_block() -> None:
    with FakeVoucherify(random_429_rate=1.0) as fake:
        reply = call(fake)
        assert reply.status == 429 and reply.headers["Retry-After"] == "1"
        assert reply.headers["X-Rate-Limit-Type"] == "api_calls"
        assert call(fake, {"limit": 0}).status == 400  # only otherwise fine requests
        fake.random_429_rate = 0.0
        assert call(fake).status == 200
        assert fake.violations == 0

    def statuses(seed: int) -> list[int]:
        with FakeVoucherify(random_429_rate=0.5, seed=seed) as fake:
            return [call(fake).status for _ in range(20)]

    first = statuses(7)
    assert first == statuses(7) and set(first) == {200, 429}


# --- HTTP behaviour -------------------------------------------------------------------------


def test_keep_alive_drop_and_stop(sample: list[dict[str, Any]]) -> None:
    fake = FakeVoucherify().start()
    try:
        fake.put_many(sample)
        host, port = fake.url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        for _ in range(2):
            connection.request("GET", "/v1/customers?limit=3", headers=AUTH)
            response = connection.getresponse()
            assert response.status == 200 and len(json.loads(response.read())["customers"]) == 3
        fake.drop_next(1)
        connection.request("GET", "/v1/customers", headers=AUTH)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            connection.getresponse()
        connection.close()

        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("GET", "/v1/customers", headers=AUTH)
        assert connection.getresponse().read()
    finally:
        fake.stop()
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        connection.request("GET", "/v1/customers", headers=AUTH)
        connection.getresponse()
    with pytest.raises(urllib.error.URLError):
        call(fake)


def test_concurrent_requests_and_changes(fake: FakeVoucherify) -> None:
    customers = make_customers(300, seed=8)
    fake.put_many(customers[:200])
    failures: list[int] = []

    def client() -> None:
        for _ in range(15):
            reply = call(fake, {"limit": 100, "order": "created_at"})
            if reply.status != 200 or len(reply.ids()) != len(set(reply.ids())):
                failures.append(reply.status)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for thread in threads:
        thread.start()
    for customer in customers[200:]:
        fake.put(customer)
    for customer in customers[:50]:
        fake.delete(customer["id"])
    for thread in threads:
        thread.join()
    assert failures == []
    assert fake.requests == 90
    assert get_ok(fake)["total"] == 250
