"""The per-database backend: picked once, the only place that looks at the database's
name, and the one writer of child rows."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from repository import CustomerRepository
from repository.db.backends import backend_of, column_names
from repository.db.keyset import keyset_pages, keyset_pages_async
from repository.db.tables import child_tables
from repository.store.mapping import ADDRESS_COLUMNS, CAMPAIGN_COLUMNS, REFERRAL_COLUMNS
from repository.store.pg_copy import CHILD_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
#: Code that may look at which database it runs on: the backends alone.
DIALECT_BRANCH = re.compile(r"dialect\.name|dialect_of\b")


def test_no_module_but_the_backends_looks_at_the_database_name() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in ("repository", "customer_store", "models")
        for path in sorted((ROOT / package).rglob("*.py"))
        if "backends" not in path.relative_to(ROOT).parts
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if DIALECT_BRANCH.search(line)
    ]
    assert offenders == []


def test_one_backend_per_database_whatever_the_bind(engine: Engine) -> None:
    backend = backend_of(engine)
    assert backend.name == engine.dialect.name
    with Session(engine) as session, engine.connect() as connection:
        assert backend_of(session) is backend
        assert backend_of(connection) is backend


def test_the_child_tables_columns_are_the_rows_layout() -> None:
    assert [column_names(table) for table in child_tables] == [
        ADDRESS_COLUMNS, CAMPAIGN_COLUMNS, REFERRAL_COLUMNS
    ]
    assert tuple(column_names(table) for table in child_tables) == CHILD_COLUMNS


def _referrals(count: int) -> dict[str, Any]:
    return {"total": count, "campaigns": [{
        "campaign_id": f"camp_{i}", "referrer_id": "cust_ref", "related_object_id": f"r_{i}",
        "related_object_type": "redemption", "date": "2024-01-02T03:04:05.678Z",
    } for i in range(count)]}


def test_many_child_rows_are_written_and_replaced(repo: CustomerRepository) -> None:
    customer = {
        "id": "cust_many", "object": "customer", "name": "Many",
        "address": {"city": "Kraków", "country": "PL"},
        "loyalty": {"points": 1, "campaigns": {f"C{i}": {"points": i} for i in range(80)}},
        "referrals": _referrals(120),
        "created_at": "2024-01-01T00:00:00.000Z", "updated_at": "2024-02-01T00:00:00.000Z",
    }
    repo.upsert(customer)
    assert _child_counts(repo) == (80, 120)
    newer = {**customer, "updated_at": "2024-03-01T00:00:00.000Z", "referrals": _referrals(2)}
    repo.upsert(newer)
    assert _child_counts(repo) == (80, 2)


def _child_counts(repo: CustomerRepository) -> tuple[int, int]:
    stored = repo.get("cust_many")
    assert stored is not None and stored.loyalty is not None and stored.referrals is not None
    return len(stored.loyalty.campaigns or {}), len(stored.referrals.campaigns or [])


def test_keyset_pages_sync_and_async_walk_alike() -> None:
    items = list(range(10))

    def fetch(after: int | None) -> list[int]:
        start = 0 if after is None else after + 1
        return items[start:start + 4]

    async def fetch_async(after: int | None) -> list[int]:
        return fetch(after)

    async def walk() -> list[list[int]]:
        return [list(page) async for page in keyset_pages_async(fetch_async, int, size=4)]

    pages = [list(page) for page in keyset_pages(fetch, int, size=4)]
    assert pages == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert asyncio.run(walk()) == pages
