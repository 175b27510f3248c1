"""The Voucherify-compatible read API, driven by the official ``voucherify`` SDK from PyPI
against a real ``customer-store serve``, on both databases. The stand-in for Voucherify
(tests/voucherify_api.py), holding the same customers, is the oracle for list answers."""

from __future__ import annotations

import http.client
import json
import subprocess
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, text
from voucherify.api.customers_api import CustomersApi
from voucherify.api_client import ApiClient
from voucherify.configuration import Configuration
from voucherify.exceptions import NotFoundException, UnauthorizedException
from voucherify.models.customers_get_response_body import CustomersGetResponseBody
from voucherify.models.customers_list_response_body import CustomersListResponseBody
from voucherify.models.parameter_order_list_customers import ParameterOrderListCustomers

from repository import CustomerRepository, make_engine, make_session_factory
from repository.db.schema import upgrade_to_head
from repository.db.tables import customers as customers_table
from tests.servers import Reply, Server, child_env, cli_command, request, running_server
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


@pytest.fixture(scope="module")
def store(
    engine: Engine, database_url: str, customers: list[dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """The customers, served by one ``serve`` process for the tests of a backend (they only
    read)."""
    with make_session_factory(engine).begin() as session:
        CustomerRepository(session).upsert_many(customers)
    try:
        log_path = tmp_path_factory.mktemp("serve") / "serve.log"
        with running_server(database_url, log_path=log_path, secret="whsec",
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


# --- hostile requests -----------------------------------------------------------------------

AUTH = {"X-App-Id": APP_ID, "X-App-Token": APP_TOKEN}
#: Date-times that exist where they are written but not in UTC (year 0 and year 10000).
OVERFLOWING = ["0001-01-01T00:59:59%2B02:00", "9999-12-31T22:30:00-02:00"]
DATE_PARAMETERS = ["starting_after", "created_at[before]", "created_at[after]",
                   "updated_at[before]", "updated_at[after]"]


def raw_request(port: int, method: str, path: str, headers: list[tuple[str, str]]) -> Reply:
    """One exchange whose headers may repeat (``request`` takes a mapping)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                     response.read())
    finally:
        connection.close()


def assert_error(reply: Reply, status: int, key: str) -> dict[str, Any]:
    assert reply.status == status, reply
    assert reply.headers["content-type"] == "application/json", reply
    body: dict[str, Any] = json.loads(reply.body)
    assert body["code"] == status and body["key"] == key, body
    assert isinstance(body["message"], str) and isinstance(body["details"], str), body
    return body


@pytest.mark.parametrize(
    ("query", "parameter"),
    [("email=team%00@example.com", "email"), ("name=Team%00Account", "name"),
     ("city=%00Gda%C5%84sk", "city"), ("email=team@example.com&city=x%00", "city")]
    + [(f"{name}={value}", name) for name in DATE_PARAMETERS for value in OVERFLOWING],
)
def test_a_filter_no_column_can_hold_or_a_date_beyond_utc_is_a_400_naming_it(
    store: Server, query: str, parameter: str
) -> None:
    reply = request(store.port, "GET", f"/v1/customers?{query}", headers=AUTH)
    body = assert_error(reply, 400, "invalid_query_params")
    assert body["details"].startswith(f"{parameter}: "), body
    assert "Traceback" not in store.log()


def test_an_id_no_column_can_hold_is_not_found(
    store: Server, customers: list[dict[str, Any]]
) -> None:
    stored = customers[5]
    for key in (f"{stored['id']}\x00", f"\x00{stored['source_id']}", "cust_\x00"):
        path = "/v1/customers/" + urllib.parse.quote(key, safe="")
        reply = request(store.port, "GET", path, headers=AUTH)
        assert_error(reply, 404, "not_found")
    assert request(store.port, "GET", f"/v1/customers/{stored['id']}",
                   headers=AUTH).status == 200
    assert "Traceback" not in store.log()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_an_unexpected_error_answers_a_request_id_and_logs_no_sql_or_value(
    make_database: Any, tmp_path: Path, backend: str, log_format: str
) -> None:
    """The database fails a list (its email column renamed under the running server): the
    answer is a JSON 500 with a request id, and the log has the error's type and that id,
    but no SQL, no bound value and no filter value."""
    url: str = make_database(backend)
    upgrade_to_head(url)
    filter_value = f"leak.{uuid.uuid4().hex[:12]}@private.example"
    engine = make_engine(url)
    try:
        with running_server(url, log_path=tmp_path / "serve.log", secret="whsec", env=READ_ENV,
                            extra_args=["--log-format", log_format]) as server:
            with engine.begin() as connection:
                connection.execute(text("ALTER TABLE customers RENAME COLUMN email TO email_gone"))
            reply = request(server.port, "GET", f"/v1/customers?email={filter_value}",
                            headers=AUTH)
            assert server.get("/healthz").status == 200  # still serving
            log = server.log()
    finally:
        engine.dispose()
    body = assert_error(reply, 500, "internal_error")
    request_id = body["request_id"]
    assert reply.headers["x-request-id"] == request_id and request_id in body["details"]
    assert filter_value not in json.dumps(body)
    assert request_id in log
    assert "Error" in log  # the exception's type, e.g. ProgrammingError
    for leaked in (filter_value, filter_value.split("@")[0], "SELECT", "[SQL", "parameters:",
                   "email_folded", "FROM customers", "no such column", "does not exist"):
        assert leaked not in log, f"{leaked!r} is in the log:\n{log}"
    if log_format == "json":
        entries = [json.loads(line) for line in log.splitlines() if line.strip()]
        [entry] = [e for e in entries if e.get("request_id") == request_id]
        assert entry["level"] == "error" and entry["error"].endswith("Error")


@pytest.mark.parametrize(
    ("method", "path"),
    [("TRACE", "/v1/customers"), ("BREW", "/v1/customers/cust_any"), ("DELETE", "/v1"),
     ("TRACE", "/webhooks/voucherify"), ("PUT", "/healthz")],
)
def test_a_method_not_served_gets_the_json_error_shape(
    store: Server, method: str, path: str
) -> None:
    reply = raw_request(store.port, method, path, list(AUTH.items()))
    assert_error(reply, 405, "method_not_allowed")
    assert "allow" in reply.headers and method not in reply.headers["allow"]


def test_an_unknown_path_gets_the_json_error_shape(store: Server) -> None:
    assert_error(store.get("/v2/customers"), 404, "not_found")


def test_v1_itself_asks_for_credentials_and_is_not_redirected(store: Server) -> None:
    for path in ("/v1", "/v1/"):
        anonymous = request(store.port, "GET", path)
        assert_error(anonymous, 401, "unauthorized")
        assert "location" not in anonymous.headers
        assert_error(request(store.port, "GET", path, headers=AUTH), 404, "not_found")


@pytest.mark.parametrize(
    "headers",
    [
        [("X-App-Id", APP_ID), ("X-App-Token", APP_TOKEN), ("X-App-Token", "guess")],
        [("X-App-Id", APP_ID), ("X-App-Token", "guess"), ("X-App-Token", APP_TOKEN)],
        [("X-App-Id", APP_ID), ("x-app-token", APP_TOKEN), ("X-APP-TOKEN", APP_TOKEN)],
        [("X-App-Id", APP_ID), ("X-App-Id", APP_ID), ("X-App-Token", APP_TOKEN)],
    ],
    ids=["right-then-wrong", "wrong-then-right", "right-twice", "id-twice"],
)
def test_a_repeated_credential_header_is_refused(
    store: Server, headers: list[tuple[str, str]]
) -> None:
    for path in ("/v1/customers", "/v1/customers/cust_any"):
        body = assert_error(raw_request(store.port, "GET", path, headers), 400,
                            "duplicate_header")
        assert "more than once" in body["details"]
