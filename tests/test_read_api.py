"""The Voucherify-compatible read API, driven by the official ``voucherify`` SDK from PyPI
against a real ``customer-store serve``, on both databases. The stand-in for Voucherify
(tests/voucherify_api.py), holding the same customers, is the oracle for list answers."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete
from voucherify.api.customers_api import CustomersApi
from voucherify.api_client import ApiClient
from voucherify.configuration import Configuration
from voucherify.exceptions import NotFoundException, UnauthorizedException
from voucherify.models.customers_get_response_body import CustomersGetResponseBody
from voucherify.models.customers_list_response_body import CustomersListResponseBody
from voucherify.models.parameter_order_list_customers import ParameterOrderListCustomers

from repository import CustomerRepository, make_session_factory
from repository.tables import customers as customers_table
from tests.servers import Server, child_env, cli_command, request, running_server
from tests.voucherify_api import FakeVoucherify, make_customers, share_filter_values

APP_ID, APP_TOKEN = "store-reader", "store-reader-token-0123456789"
READ_ENV = {"CUSTOMER_STORE_APP_ID": APP_ID, "CUSTOMER_STORE_APP_TOKEN": APP_TOKEN}
ASCENDING = ParameterOrderListCustomers.CREATED_AT
ORDERS = ["created_at", "-created_at", "updated_at", "-updated_at", "source_id", "-source_id"]


@pytest.fixture(scope="module")
def customers() -> list[dict[str, Any]]:
    return share_filter_values(
        make_customers(230, seed=23), email="team@example.com", name="Team Account",
        every=7, city="Gdańsk", city_every=4,
    )


@pytest.fixture(scope="module")
def oracle(customers: list[dict[str, Any]]) -> Iterator[FakeVoucherify]:
    with FakeVoucherify(app_id=APP_ID, app_token=APP_TOKEN) as fake:
        fake.put_many(customers)
        yield fake


@pytest.fixture
def store(
    engine: Engine, database_url: str, customers: list[dict[str, Any]], tmp_path: Path
) -> Iterator[Server]:
    with make_session_factory(engine).begin() as session:
        CustomerRepository(session).upsert_many(customers)
    try:
        with running_server(database_url, log_path=tmp_path / "serve.log", secret="whsec",
                            env=READ_ENV) as server:
            yield server
    finally:
        with engine.begin() as connection:  # the next test starts from an empty store
            connection.execute(delete(customers_table))


def sdk(url: str, token: str = APP_TOKEN) -> CustomersApi:
    configuration = Configuration(
        host=url, api_key={"X-App-Id": APP_ID, "X-App-Token": token}
    )
    return CustomersApi(ApiClient(configuration))


def url(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


def cli_get(database_url: str, key: str, *by: str) -> bytes:
    run = subprocess.run(cli_command(database_url, "get", *by, key), env=child_env(),
                         capture_output=True, check=True, timeout=120)
    return json.dumps(json.loads(run.stdout), ensure_ascii=False,
                      separators=(",", ":")).encode()


def test_get_customer_by_id_and_by_source_id_answers_what_get_prints(
    store: Server, database_url: str, customers: list[dict[str, Any]]
) -> None:
    api = sdk(url(store))
    for customer in customers[:: 40]:
        printed = cli_get(database_url, customer["id"])
        raw = api.get_customer_without_preload_content(customer["id"])
        assert raw.status == 200 and raw.data == printed
        parsed = api.get_customer(customer["id"])
        assert parsed == CustomersGetResponseBody.from_json(printed.decode())
        by_source = api.get_customer_without_preload_content(customer["source_id"])
        assert by_source.data == cli_get(database_url, customer["source_id"], "--source-id")


def test_listing_through_every_page_by_page_number_and_by_cursor_finds_every_customer(
    store: Server, customers: list[dict[str, Any]]
) -> None:
    api = sdk(url(store))
    by_page: list[str] = []
    for page in range(1, 4):
        answer = api.list_customers(limit=100, page=page, order=ASCENDING)
        assert answer.total == len(customers)
        by_page += [str(c.id) for c in answer.customers or []]
        assert answer.has_more == (page < 3)
    expected = [c["id"] for c in sorted(customers, key=lambda c: (c["created_at"], c["id"]))]
    assert by_page == expected
    by_cursor: list[str] = []
    cursor: datetime | None = None
    while True:
        answer = api.list_customers(limit=37, order=ASCENDING, starting_after=cursor)
        page_customers = answer.customers or []
        by_cursor += [str(c.id) for c in page_customers]
        if not answer.has_more:
            break
        cursor = page_customers[-1].created_at
    assert by_cursor == expected


@pytest.mark.parametrize("order", ORDERS)
def test_each_order_and_filter_answers_as_the_documented_api_does(
    store: Server, oracle: FakeVoucherify, customers: list[dict[str, Any]], order: str
) -> None:
    api, reference = sdk(url(store)), sdk(oracle.url)
    stamp = datetime.fromisoformat(sorted(c["created_at"] for c in customers)[60])
    for filters in (
        {}, {"email": "team@example.com"}, {"name": "Team Account"}, {"city": "Gdańsk"},
        {"created_at_after": stamp}, {"created_at_before": stamp},
        {"updated_at_after": stamp}, {"starting_after": stamp}, {"page": 2, "limit": 15},
    ):
        options: dict[str, Any] = {"limit": 100, "order": order, **filters}
        got = api.list_customers_without_preload_content(**options)
        want = reference.list_customers_without_preload_content(**options)
        assert got.status == want.status == 200
        assert json.loads(got.data) == json.loads(want.data), (order, filters)
        assert (api.list_customers(**options)
                == CustomersListResponseBody.from_json(got.data.decode()))


def test_a_wrong_token_an_unknown_id_a_bad_parameter_and_a_write_are_refused(
    store: Server,
) -> None:
    with pytest.raises(UnauthorizedException):
        sdk(url(store), token="wrong").list_customers()
    with pytest.raises(NotFoundException) as missing:
        sdk(url(store)).get_customer("cust_NoSuchCustomer0000000")
    assert json.loads(missing.value.body or "{}")["key"] == "not_found"
    headers = {"X-App-Id": APP_ID, "X-App-Token": APP_TOKEN}
    bad = request(store.port, "GET", "/v1/customers?limit=500", headers=headers)
    assert bad.status == 400 and "limit" in json.loads(bad.body)["details"]
    write = request(store.port, "POST", "/v1/customers", b"{}", headers=headers)
    assert write.status == 405 and json.loads(write.body)["code"] == 405


def test_without_read_credentials_the_routes_are_not_served(
    database_url: str, tmp_path: Path
) -> None:
    with running_server(database_url, log_path=tmp_path / "serve.log", secret="whsec") as server:
        headers = {"X-App-Id": APP_ID, "X-App-Token": APP_TOKEN}
        assert request(server.port, "GET", "/v1/customers", headers=headers).status == 404
        assert server.get("/healthz").status == 200
