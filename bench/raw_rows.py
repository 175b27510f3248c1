"""The baselines' hand-written flattening: a customer's JSON into rows of the project's
tables, with no validation, no lossless bookkeeping (absent keys, unknown keys) and no
search keys. What the store does beyond this is what the benchmarks' ratios price."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from psycopg.types.json import Jsonb

CUSTOMER_COLUMNS = (
    "id", "source_id", "name", "description", "email", "phone", "birthdate", "metadata",
    "system_metadata", "created_at", "updated_at", "object", "redemptions_total_redeemed",
    "redemptions_total_failed", "redemptions_total_succeeded", "redemptions_total_rolled_back",
    "redemptions_total_rollback_failed", "redemptions_total_rollback_succeeded",
    "gift_redeemed_amount", "gift_amount_to_go", "loyalty_card_redeemed_points",
    "loyalty_card_points_to_go", "orders_total_amount", "orders_total_count",
    "orders_average_amount", "orders_last_order_amount", "orders_last_order_date",
    "loyalty_points", "loyalty_referred_customers", "referrals_total", "assets_cockpit_url",
    "version_at",
)
ADDRESS_COLUMNS = ("customer_id", "city", "state", "line_1", "line_2", "country",
                   "postal_code")
CAMPAIGN_COLUMNS = ("customer_id", "campaign", "points", "loyalty_tier", "referred_customers")
REFERRAL_COLUMNS = ("customer_id", "position", "campaign_id", "referrer_id",
                    "related_object_id", "related_object_type", "date")


def _at(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def customer_row(c: dict[str, Any]) -> tuple[Any, ...]:
    redemptions = _at(c, "summary", "redemptions")
    orders = _at(c, "summary", "orders")
    return (
        c["id"], c.get("source_id"), c.get("name"), c.get("description"), c.get("email"),
        c.get("phone"), c.get("birthdate"), Jsonb(c.get("metadata")),
        Jsonb(c.get("system_metadata")), c.get("created_at"), c.get("updated_at"),
        c.get("object"), _at(redemptions, "total_redeemed"), _at(redemptions, "total_failed"),
        _at(redemptions, "total_succeeded"), _at(redemptions, "total_rolled_back"),
        _at(redemptions, "total_rollback_failed"), _at(redemptions, "total_rollback_succeeded"),
        _at(redemptions, "gift", "redeemed_amount"), _at(redemptions, "gift", "amount_to_go"),
        _at(redemptions, "loyalty_card", "redeemed_points"),
        _at(redemptions, "loyalty_card", "points_to_go"), _at(orders, "total_amount"),
        _at(orders, "total_count"), _at(orders, "average_amount"),
        _at(orders, "last_order_amount"), _at(orders, "last_order_date"),
        _at(c, "loyalty", "points"), _at(c, "loyalty", "referred_customers"),
        _at(c, "referrals", "total"), _at(c, "assets", "cockpit_url"),
        c.get("updated_at") or c.get("created_at"),
    )


def address_rows(c: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    a = c.get("address")
    if isinstance(a, dict):
        yield (c["id"], a.get("city"), a.get("state"), a.get("line_1"), a.get("line_2"),
               a.get("country"), a.get("postal_code"))


def campaign_rows(c: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    for key, entry in (_at(c, "loyalty", "campaigns") or {}).items():
        yield (c["id"], key, entry.get("points"), entry.get("loyalty_tier"),
               entry.get("referred_customers"))


def referral_rows(c: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    for i, e in enumerate(_at(c, "referrals", "campaigns") or ()):
        yield (c["id"], i, e.get("campaign_id"), e.get("referrer_id"),
               e.get("related_object_id"), e.get("related_object_type"), e.get("date"))


#: (table, its columns, the rows of one customer), for each child table.
CHILD_TABLES = (
    ("customer_addresses", ADDRESS_COLUMNS, address_rows),
    ("customer_loyalty_campaigns", CAMPAIGN_COLUMNS, campaign_rows),
    ("customer_referral_entries", REFERRAL_COLUMNS, referral_rows),
)
