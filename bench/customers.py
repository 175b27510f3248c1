"""Realistic generated customers for benchmarks, shaped like Voucherify's own examples."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["generate_customers", "write_jsonl"]

_FIRST = ["Alice", "Bob", "Jane", "John", "Ariana", "Lionel", "Jan", "Zoë", "Łukasz", "Nana"]
_LAST = ["Smith", "Morgan", "Doe", "Patel", "Johnson", "Kowalski", "Lemon", "Müller"]
_CITIES = [
    ("New York", "NY", "United States"),
    ("Kraków", None, "Poland"),
    ("Nottingham", "England", "United Kingdom"),
    ("Berlin", None, "Germany"),
]
_CAMPAIGNS = [
    "Summer Campaign",
    "Winter Campaign",
    "Spring Campaign",
    "Fall Campaign",
    "Christmas Campaign",
    "Loyalty Program",
    "VIP Club",
    "Referral Program",
]
_EPOCH = datetime(2022, 1, 1, tzinfo=UTC)


def _time(rng: random.Random, days: int = 900) -> str:
    moment = _EPOCH + timedelta(
        seconds=rng.randrange(days * 86400), milliseconds=rng.randrange(1000)
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def customer(index: int, rng: random.Random) -> dict[str, Any]:
    """One customer like those of GET /v1/customers: address, summary, loyalty, referrals."""
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    city, state, country = rng.choice(_CITIES)
    created = _time(rng)
    email = f"{first.lower()}.{last.lower()}{index}@example.com"
    campaigns = rng.sample(_CAMPAIGNS, rng.choice([0, 1, 2, 2, 3, 3, 4, 5]))
    referrals = [
        {
            "campaign_id": f"camp_{rng.getrandbits(64):016x}",
            "referrer_id": f"cust_{rng.randrange(max(index, 1)):024d}",
            "related_object_id": f"r_{rng.getrandbits(64):016x}",
            "related_object_type": "redemption",
            "date": _time(rng),
        }
        for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 3]))
    ]
    total_orders = rng.randrange(0, 30)
    amount = rng.randrange(0, 5_000_000)
    return {
        "id": f"cust_{index:024d}",
        "source_id": email,
        "name": f"{first} {last}",
        "description": rng.choice([None, "A frequent customer", "Famous"]),
        "email": email,
        "phone": f"+1 {rng.randrange(200, 999)} {rng.randrange(100, 999)} "
        f"{rng.randrange(1000, 9999)}",
        "birthdate": f"{rng.randrange(1950, 2005)}-{rng.randrange(1, 13):02d}-"
        f"{rng.randrange(1, 29):02d}",
        "address": {
            "city": city,
            "state": state,
            "line_1": f"{rng.randrange(1, 999)} Main St.",
            "line_2": None,
            "country": country,
            "postal_code": f"{rng.randrange(10000, 99999)}",
        },
        "summary": {
            "redemptions": {
                "total_redeemed": total_orders,
                "total_failed": 0,
                "total_succeeded": total_orders,
                "total_rolled_back": 0,
                "total_rollback_failed": 0,
                "total_rollback_succeeded": 0,
                "gift": {"redeemed_amount": 0, "amount_to_go": 0},
                "loyalty_card": {
                    "redeemed_points": rng.randrange(1000),
                    "points_to_go": rng.randrange(5000),
                },
            },
            "orders": {
                "total_amount": amount,
                "total_count": total_orders,
                "average_amount": amount // max(total_orders, 1),
                "last_order_amount": rng.randrange(10000),
                **({"last_order_date": _time(rng)} if total_orders else {}),
            },
        },
        "loyalty": {
            "points": rng.randrange(-100, 10000),
            "referred_customers": rng.randrange(5),
            "campaigns": {
                name: {
                    "points": rng.randrange(5000),
                    "loyalty_tier": f"ltr_{rng.randrange(4)}",
                    "referred_customers": rng.randrange(3),
                }
                for name in campaigns
            },
        },
        "referrals": {"total": len(referrals), "campaigns": referrals},
        "metadata": {
            "lang": rng.choice(["en", "pl", "de"]),
            "tier": rng.choice(["gold", "silver", "bronze"]),
            "newsletter": rng.random() < 0.5,
            "acquisition_channel": rng.choice(["Website", "App", "Store"]),
            "favourite_ids": [rng.randrange(10**6) for _ in range(rng.randrange(4))],
        },
        "system_metadata": {},
        "created_at": created,
        "updated_at": max(created, _time(rng)),
        "assets": {"cockpit_url": f"https://cockpit.example.com/{index}"},
        "object": "customer",
    }


def generate_customers(count: int, *, seed: int = 7, start: int = 0) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    for index in range(start, start + count):
        yield customer(index, rng)


def write_jsonl(path: str, count: int, *, seed: int = 7) -> int:
    """Write ``count`` customers as JSON Lines; returns the file size in bytes."""
    size = 0
    with open(path, "w", encoding="utf-8") as out:
        for item in generate_customers(count, seed=seed):
            line = json.dumps(item, ensure_ascii=False) + "\n"
            out.write(line)
            size += len(line.encode())
    return size
