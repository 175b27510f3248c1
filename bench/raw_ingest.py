"""The ingest baseline: the same work per delivery as the store's, in plain psycopg.

Per delivery, in one transaction committed with the server's default durability
(``synchronous_commit`` on): parse the body, claim the event row (insert it, or count a
redelivery and stop), and for a customer change upsert the customer row newest-wins and
replace its child rows (a deletion deletes the row). Left out, which the store does: a
verified envelope shape, the customer's validation with path-named errors, lossless
bookkeeping, tombstones, search keys, outcomes other than "applied", retries.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg

from bench.raw_rows import CHILD_TABLES, CUSTOMER_COLUMNS, customer_row

_CLAIM = (
    "INSERT INTO webhook_events (event_id, event_type, project_id, customer_id,"
    " event_created_at, first_received_at, last_received_at, deliveries, outcome, body)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, 1, 'applied', %s)"
    " ON CONFLICT (event_id) DO UPDATE SET deliveries = webhook_events.deliveries + 1,"
    " last_received_at = excluded.last_received_at"
    " RETURNING xmax = 0"
)
_UPSERT = (
    f"INSERT INTO customers ({', '.join(CUSTOMER_COLUMNS)})"
    f" VALUES ({', '.join(['%s'] * len(CUSTOMER_COLUMNS))})"
    " ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in CUSTOMER_COLUMNS if c != "id")
    + " WHERE customers.version_at IS NULL OR excluded.version_at >= customers.version_at"
    " RETURNING id"
)
_CHANGES = ("customer.created", "customer.updated")


def raw_ingest(libpq_url: str, deliveries: Sequence[bytes]) -> float:
    """Seconds to ingest ``deliveries`` one after the other on one connection."""
    started = time.perf_counter()
    with psycopg.connect(libpq_url) as conn:
        for body in deliveries:
            with conn.transaction():
                _one(conn, body)
    return time.perf_counter() - started


def _one(conn: psycopg.Connection[Any], body: bytes) -> None:
    document = json.loads(body)
    event = document.get("event") if isinstance(document.get("event"), dict) else document
    customer = (document.get("data") or {}).get("customer")
    now = datetime.now(UTC)
    claimed = conn.execute(_CLAIM, (
        event["id"], document["type"], document.get("project_id"),
        customer.get("id") if isinstance(customer, dict) else None,
        event.get("created_at"), now, now, body,
    )).fetchone()
    if not (claimed and claimed[0]) or not isinstance(customer, dict):
        return
    if document["type"] == "customer.deleted":
        conn.execute("DELETE FROM customers WHERE id = %s", (customer["id"],))
        return
    if document["type"] not in _CHANGES:
        return
    if conn.execute(_UPSERT, customer_row(customer)).fetchone() is None:
        return  # an older version than the stored one
    with conn.cursor() as cursor:
        for table, columns, rows in CHILD_TABLES:
            cursor.execute(f"DELETE FROM {table} WHERE customer_id = %s", (customer["id"],))
            values = list(rows(customer))
            if values:
                cursor.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)})"
                    f" VALUES ({', '.join(['%s'] * len(columns))})",
                    values,
                )
