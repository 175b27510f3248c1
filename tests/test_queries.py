"""find and count: every filter on both databases against a reference computed in Python,
keyset pages, one statement per page, and the PostgreSQL plans using each filter's index."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import ClauseElement, Executable

from repository import CustomerFilter, CustomerRepository, InvalidCursor
from repository.queries import MAX_PAGE_SIZE, customer_select_for
from repository.schema import upgrade_to_head

EPOCH = datetime(2023, 1, 1, tzinfo=UTC)
CAMPAIGNS = ["Summer Campaign", "Winter Campaign", "VIP Club"]
NAMES = ["Ann Smith", "anna Jones", "Bob Stone", "Zoë Müller", "Łukasz Nowak", "ann_underscore"]


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def make_customers(count: int, seed: int = 11) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        created = EPOCH + timedelta(days=rng.randrange(400), seconds=rng.randrange(86400))
        updated = created + timedelta(days=rng.randrange(30))
        campaigns = {
            name: {"points": rng.randrange(0, 1000), "loyalty_tier": f"ltr_{rng.randrange(3)}"}
            for name in rng.sample(CAMPAIGNS, rng.randrange(0, 3))
        }
        customer: dict[str, Any] = {
            "id": f"cust_{i:05d}",
            "source_id": f"src-{i % 97}",
            "name": rng.choice(NAMES) if rng.random() < 0.9 else None,
            "email": rng.choice(["A@Example.com", "a@example.COM", "b@example.com", None]),
            "metadata": {
                "tier": rng.choice(["gold", "silver"]),
                "tags": rng.sample(["x", "y", "z"], rng.randrange(0, 3)),
                "n": rng.randrange(5),
                "nested": {"flag": rng.random() < 0.5},
            },
            "loyalty": {"campaigns": campaigns},
            "referrals": {"campaigns": [
                {"referrer_id": f"cust_ref{rng.randrange(4)}"} for _ in range(rng.randrange(0, 3))
            ]},
            "created_at": _iso(created),
            "updated_at": _iso(updated),
        }
        if rng.random() < 0.7:
            customer["summary"] = {"orders": {"last_order_date": _iso(updated)}}
        out.append(customer)
    return out


def _at(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


def _contains(document: Any, wanted: Any) -> bool:
    """PostgreSQL's @> on JSON values (the reference the SQLite spelling must agree with)."""
    if isinstance(wanted, dict):
        return isinstance(document, dict) and all(
            k in document and _contains(document[k], v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return isinstance(document, list) and all(
            any(_contains(d, w) for d in document) for w in wanted
        )
    if isinstance(wanted, bool) or isinstance(document, bool):
        return type(wanted) is type(document) and wanted == document
    return bool(document == wanted)


FILTERS: dict[str, tuple[CustomerFilter, Callable[[dict[str, Any]], bool]]] = {
    "email ignoring case": (
        CustomerFilter(email="a@EXAMPLE.com"),
        lambda c: (c.get("email") or "").lower() == "a@example.com",
    ),
    "source_id": (CustomerFilter(source_id="src-5"), lambda c: c["source_id"] == "src-5"),
    "name prefix ignoring case": (
        CustomerFilter(name_prefix="ANN"),
        lambda c: (c.get("name") or "").lower().startswith("ann"),
    ),
    "name prefix with a LIKE wildcard": (
        CustomerFilter(name_prefix="ann_"),
        lambda c: (c.get("name") or "").lower().startswith("ann_"),
    ),
    "created range": (
        CustomerFilter(created_from=EPOCH + timedelta(days=100),
                       created_before=EPOCH + timedelta(days=130)),
        lambda c: EPOCH + timedelta(days=100) <= _at(c["created_at"]) < EPOCH + timedelta(days=130),  # type: ignore[operator]
    ),
    "updated from": (
        CustomerFilter(updated_from=EPOCH + timedelta(days=380)),
        lambda c: _at(c["updated_at"]) >= EPOCH + timedelta(days=380),  # type: ignore[operator]
    ),
    "metadata scalar": (
        CustomerFilter(metadata_contains={"tier": "gold"}),
        lambda c: _contains(c["metadata"], {"tier": "gold"}),
    ),
    "metadata nested and array": (
        CustomerFilter(metadata_contains={"nested": {"flag": True}, "tags": ["x"]}),
        lambda c: _contains(c["metadata"], {"nested": {"flag": True}, "tags": ["x"]}),
    ),
    "metadata number": (
        CustomerFilter(metadata_contains={"n": 3}),
        lambda c: _contains(c["metadata"], {"n": 3}),
    ),
    "points in a campaign": (
        CustomerFilter(campaign="VIP Club", min_points=900),
        lambda c: c["loyalty"]["campaigns"].get("VIP Club", {}).get("points", -1) >= 900,
    ),
    "tier in a campaign": (
        CustomerFilter(campaign="Summer Campaign", loyalty_tier="ltr_2"),
        lambda c: c["loyalty"]["campaigns"].get("Summer Campaign", {}).get("loyalty_tier")
        == "ltr_2",
    ),
    "referred by": (
        CustomerFilter(referred_by="cust_ref1"),
        lambda c: any(e["referrer_id"] == "cust_ref1" for e in c["referrals"]["campaigns"]),
    ),
    "orders since": (
        CustomerFilter(orders_since=EPOCH + timedelta(days=300)),
        lambda c: "summary" in c
        and _at(c["summary"]["orders"]["last_order_date"]) >= EPOCH + timedelta(days=300),  # type: ignore[operator]
    ),
    "several at once": (
        CustomerFilter(metadata_contains={"tier": "silver"}, campaign="Winter Campaign",
                       min_points=300, name_prefix="a"),
        lambda c: _contains(c["metadata"], {"tier": "silver"})
        and c["loyalty"]["campaigns"].get("Winter Campaign", {}).get("points", -1) >= 300
        and (c.get("name") or "").lower().startswith("a"),
    ),
}

CUSTOMERS = make_customers(600)


@pytest.fixture(scope="module")
def stored(engine: Engine) -> Iterator[Engine]:
    with Session(engine) as session:
        CustomerRepository(session).upsert_many(CUSTOMERS)
        session.commit()
    yield engine
    with engine.begin() as connection:
        for table in ("customer_referral_entries", "customer_loyalty_campaigns",
                      "customer_addresses", "customers"):
            connection.execute(text(f"DELETE FROM {table}"))  # noqa: S608


def _all_pages(repo: CustomerRepository, filters: CustomerFilter, limit: int) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = repo.find(filters, cursor=cursor, limit=limit)
        assert len(page.customers) <= limit
        ids += [c.id for c in page.customers]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_each_filter_finds_exactly_the_matching_customers_page_by_page(
    stored: Engine, name: str
) -> None:
    filters, matches = FILTERS[name]
    expected = sorted(c["id"] for c in CUSTOMERS if matches(c))
    assert expected, "the data should give every filter something to find"
    with Session(stored) as session:
        repo = CustomerRepository(session)
        assert _all_pages(repo, filters, limit=7) == expected
        assert repo.count(filters) == len(expected)


def test_pages_return_the_whole_customers(stored: Engine) -> None:
    by_id = {c["id"]: c for c in CUSTOMERS}
    with Session(stored) as session:
        page = CustomerRepository(session).find(CustomerFilter(source_id="src-5"), limit=50)
    assert page.customers
    for customer in page.customers:
        assert customer.to_json() == by_id[customer.id]


def test_a_page_is_one_statement_whatever_the_filters(stored: Engine) -> None:
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    with Session(stored) as session:
        repo = CustomerRepository(session)
        repo.find(limit=5)  # connect and warm up outside the count
        event.listen(stored, "before_cursor_execute", count)
        try:
            for filters, _ in FILTERS.values():
                statements.clear()
                page = repo.find(filters, limit=5)
                assert len(statements) == 1
                if page.next_cursor:
                    statements.clear()
                    repo.find(filters, cursor=page.next_cursor, limit=5)
                    assert len(statements) == 1
        finally:
            event.remove(stored, "before_cursor_execute", count)


@pytest.mark.parametrize("cursor", ["not-a-cursor", "eyJmb28iOjF9", "", "e30"])
def test_a_cursor_that_find_did_not_make_is_refused(stored: Engine, cursor: str) -> None:
    with Session(stored) as session, pytest.raises(InvalidCursor):
        CustomerRepository(session).find(cursor=cursor)


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE_SIZE + 1])
def test_page_sizes_outside_1_to_1000_are_refused(stored: Engine, limit: int) -> None:
    with Session(stored) as session, pytest.raises(ValueError, match="limit"):
        CustomerRepository(session).find(limit=limit)


def test_filters_on_a_campaign_need_the_campaign() -> None:
    with pytest.raises(ValueError, match="campaign"):
        CustomerFilter(min_points=5)


def test_time_filters_need_a_time_zone() -> None:
    with pytest.raises(ValueError, match="time zone"):
        CustomerFilter(created_from=datetime(2024, 1, 1))


# -- PostgreSQL plans ------------------------------------------------------------------


class Explain(Executable, ClauseElement):
    inherit_cache = False

    def __init__(self, statement: Any) -> None:
        self.statement = statement


@compiles(Explain, "postgresql")
def _compile_explain(element: Explain, compiler: Any, **kw: Any) -> str:
    return "EXPLAIN " + str(compiler.process(element.statement, **kw))


PLAN_INDEXES = {
    "email ignoring case": "ix_customers_email_lower",
    "source_id": "ix_customers_source_id",
    "name prefix ignoring case": "ix_customers_name_lower_prefix",
    "created range": "ix_customers_created_at",
    "updated from": "ix_customers_updated_at",
    "metadata scalar": "ix_customers_metadata_gin",
    "points in a campaign": "ix_customer_loyalty_campaigns_campaign_points",
    "tier in a campaign": "ix_customer_loyalty_campaigns_campaign_tier",
    "referred by": "ix_customer_referral_entries_referrer_id",
    "orders since": "ix_customers_orders_last_order_date",
}
SELECTIVE = {
    "email ignoring case": CustomerFilter(email="someone.rare@example.com"),
    "source_id": CustomerFilter(source_id="src-rare"),
    "name prefix ignoring case": CustomerFilter(name_prefix="zzrare"),
    "created range": CustomerFilter(created_from=datetime(2030, 1, 1, tzinfo=UTC),
                                    created_before=datetime(2030, 1, 2, tzinfo=UTC)),
    "updated from": CustomerFilter(updated_from=datetime(2030, 1, 1, tzinfo=UTC)),
    "metadata scalar": CustomerFilter(metadata_contains={"tier": "platinum"}),
    "points in a campaign": CustomerFilter(campaign="Summer Campaign", min_points=999),
    "tier in a campaign": CustomerFilter(campaign="Summer Campaign", loyalty_tier="ltr_9"),
    "referred by": CustomerFilter(referred_by="cust_rare_referrer"),
    "orders since": CustomerFilter(orders_since=datetime(2030, 1, 1, tzinfo=UTC)),
}


@pytest.fixture(scope="module")
def large_postgres(make_database: Any) -> Iterator[Engine]:
    """100,000 customers made by SQL (the repository is not what is measured here)."""
    from repository import make_engine

    url = make_database("postgresql")
    upgrade_to_head(url)
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("""
            INSERT INTO customers (id, source_id, name, email, metadata, created_at,
                                   updated_at, version_at, orders_last_order_date)
            SELECT 'cust_' || lpad(i::text, 7, '0'), 'src-' || (i % 5000),
                   (ARRAY['Ann','Bob','Cid','Dee'])[1 + i % 4] || ' ' || i,
                   'user' || (i % 20000) || '@example.com',
                   jsonb_build_object('tier', (ARRAY['gold','silver','bronze'])[1 + i % 3],
                                      'n', i % 100),
                   timestamptz '2023-01-01' + (i % 700) * interval '1 day',
                   timestamptz '2023-01-01' + (i % 700) * interval '1 day',
                   timestamptz '2023-01-01' + (i % 700) * interval '1 day',
                   timestamptz '2023-01-01' + (i % 650) * interval '1 day'
            FROM generate_series(1, 100000) AS i"""))
        connection.execute(text("""
            INSERT INTO customer_loyalty_campaigns (customer_id, campaign, points, loyalty_tier)
            SELECT 'cust_' || lpad(i::text, 7, '0'), c, (i * 7) % 1000, 'ltr_' || (i % 3)
            FROM generate_series(1, 100000) AS i,
                 unnest(ARRAY['Summer Campaign', 'Winter Campaign']) AS c"""))
        connection.execute(text("""
            INSERT INTO customer_referral_entries (customer_id, position, referrer_id)
            SELECT 'cust_' || lpad(i::text, 7, '0'), 0, 'cust_' || lpad((i % 1000)::text, 7, '0')
            FROM generate_series(1, 100000, 2) AS i"""))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))
    yield engine
    engine.dispose()


@pytest.mark.parametrize("name", sorted(PLAN_INDEXES))
def test_each_filter_uses_its_index_on_postgresql(large_postgres: Engine, name: str) -> None:
    statement = customer_select_for("postgresql", SELECTIVE[name], cursor=None, limit=100)
    with large_postgres.connect() as connection:
        plan = "\n".join(row[0] for row in connection.execute(Explain(statement)))
    assert PLAN_INDEXES[name] in plan, plan
