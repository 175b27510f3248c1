"""Bad input is refused with the JSON path and what was expected, and leaves nothing behind.

Every case starts from a database holding two valid customers: the one the bad payload
would replace (same id, older) and another one. After the refused upsert both read back
exactly as before, ``count()`` is unchanged and no table gained, lost or changed a row,
in the same session and in a fresh one after commit, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Engine, Table, select
from sqlalchemy.orm import Session

from models import (
    CustomerAddressRow,
    CustomerRow,
    CustomerTombstoneRow,
    CustomerValidationError,
    LoyaltyCampaignRow,
    ReferralEntryRow,
)
from repository import CustomerRepository, UpsertOutcome

SAME_ID = "cust_same"
OTHER_ID = "cust_other"

#: The documented nesting limit: a JSON value may sit inside at most this many objects
#: or arrays, counting the customer object itself.
NESTING_LIMIT = 64


def _customer(customer_id: str, updated_at: str, name: str) -> dict[str, Any]:
    """A valid customer with every object level present, so that any path can be set."""
    return {
        "id": customer_id,
        "source_id": f"{customer_id}@example.com",
        "name": name,
        "email": "shared@example.com",
        "phone": "+48 600 000 000",
        "birthday": "1990-12-31",
        "birthdate": "1990-12-31",
        "address": {"city": "Kraków", "state": None, "line_1": "Rynek 1", "country": "PL"},
        "metadata": {"tier": "gold", "big": 2**70, "nested": {"list": [1, "two", None, 1.5]}},
        "summary": {
            "redemptions": {
                "total_redeemed": 3,
                "total_failed": 0,
                "gift": {"redeemed_amount": 100, "amount_to_go": 0},
                "loyalty_card": {"redeemed_points": 5, "points_to_go": 20},
            },
            "orders": {
                "total_amount": 5_000_000_000,
                "total_count": 3,
                "last_order_date": "2024-01-05T10:00:00.000Z",
            },
        },
        "loyalty": {
            "points": 10,
            "referred_customers": 1,
            "campaigns": {
                "Summer Campaign": {"points": 10, "loyalty_tier": "ltr_1"},
                "Winter Campaign": {"points": 0, "referred_customers": 1},
            },
        },
        "referrals": {
            "total": 2,
            "campaigns": [
                {"campaign_id": "camp_1", "referrer_id": "cust_a",
                 "related_object_type": "redemption", "date": "2024-01-02T03:04:05.678Z"},
                {"campaign_id": "camp_2", "date": "2024-01-03T03:04:05.678Z"},
            ],
        },
        "system_metadata": {"source": "test"},
        "assets": {"cockpit_url": "https://example.com/c", "cockpit_preference_center_url": None},
        "created_at": "2024-01-01T00:00:00.000Z",
        "updated_at": updated_at,
        "object": "customer",
    }


STORED_SAME = _customer(SAME_ID, "2024-02-01T00:00:00.000Z", "Stored Same")
STORED_OTHER = _customer(OTHER_ID, "2024-02-01T00:00:00.000Z", "Stored Other")
#: What the bad payloads are made from: valid, newer than STORED_SAME and different from
#: it, so that any part of it reaching the database would show.
NEWER_SAME = _customer(SAME_ID, "2025-06-01T00:00:00.000Z", "Newer Same")

_MISSING = object()
_WHOLE: tuple[str | int, ...] = ()


def _nest(keys: int, leaf: Any) -> Any:
    """``{"a": {"a": ... leaf}}`` with ``keys`` keys on the way to ``leaf``."""
    value = leaf
    for _ in range(keys):
        value = {"a": value}
    return value


def _nest_arrays(arrays: int) -> Any:
    """``[[... 1]]`` with ``arrays`` arrays around ``1``."""
    value: Any = 1
    for _ in range(arrays):
        value = [value]
    return value


def _with(at: Sequence[str | int], value: Any) -> Any:
    """NEWER_SAME with ``value`` at ``at`` (created as needed); the whole payload for ``()``."""
    if not at:
        return copy.deepcopy(value)
    payload = copy.deepcopy(NEWER_SAME)
    target: Any = payload
    for part in at[:-1]:
        target = target.setdefault(part, {}) if isinstance(target, dict) else target[part]
    if value is _MISSING:
        del target[at[-1]]
    else:
        target[at[-1]] = value
    return payload


@dataclass(frozen=True)
class Bad:
    at: tuple[str | int, ...]
    value: Any
    path: str
    #: Fragments the message must contain: what was expected and what was got.
    says: tuple[str, ...]
    marks: tuple[Any, ...] = field(default=())


BAD_INPUT = {
    # strings
    "name-given-an-integer": Bad(("name",), 42, "$.name", ("expected a string", "integer 42")),
    "email-given-a-boolean": Bad(
        ("email",), False, "$.email", ("expected a string", "boolean false")
    ),
    "phone-given-an-array": Bad(("phone",), ["1"], "$.phone", ("expected a string", "array")),
    # integers
    "counter-given-string-12": Bad(
        ("summary", "orders", "total_amount"), "12",
        "$.summary.orders.total_amount", ("expected an integer", 'string "12"'),
    ),
    "counter-given-fraction-1.5": Bad(
        ("summary", "redemptions", "total_failed"), 1.5,
        "$.summary.redemptions.total_failed", ("expected an integer", "number 1.5"),
    ),
    "counter-given-whole-float-2.0": Bad(
        ("summary", "orders", "total_count"), 2.0,
        "$.summary.orders.total_count", ("expected an integer", "number 2.0"),
    ),
    "counter-given-true": Bad(
        ("summary", "redemptions", "total_redeemed"), True,
        "$.summary.redemptions.total_redeemed", ("expected an integer", "boolean true"),
    ),
    "counter-given-2**63": Bad(
        ("summary", "redemptions", "gift", "amount_to_go"), 2**63,
        "$.summary.redemptions.gift.amount_to_go",
        ("expected an integer that fits in 64 bits", "integer 9223372036854775808"),
    ),
    "counter-given-minus-2**63-minus-1": Bad(
        ("loyalty", "points"), -(2**63) - 1, "$.loyalty.points",
        ("expected an integer that fits in 64 bits", "integer -9223372036854775809"),
    ),
    "loyalty-card-points-given-null-string": Bad(
        ("summary", "redemptions", "loyalty_card", "points_to_go"), "null",
        "$.summary.redemptions.loyalty_card.points_to_go",
        ("expected an integer", 'string "null"'),
    ),
    "referrals-total-given-string": Bad(
        ("referrals", "total"), "2", "$.referrals.total", ("expected an integer", 'string "2"'),
    ),
    # dates
    "date-that-does-not-exist": Bad(
        ("birthdate",), "2021-02-30", "$.birthdate", ("expected a real date", "2021-02-30")
    ),
    "date-without-zero-padding": Bad(
        ("birthdate",), "2021-2-3", "$.birthdate", ("expected a date like", "2021-2-3")
    ),
    "date-placeholder-YYYY-MM-DD": Bad(
        ("birthdate",), "YYYY-MM-DD", "$.birthdate", ("expected a date like", "YYYY-MM-DD")
    ),
    "date-given-an-integer": Bad(
        ("birthday",), 20210101, "$.birthday", ("expected a date string", "integer 20210101")
    ),
    "date-given-a-date-time": Bad(
        ("birthday",), "2021-01-01T00:00:00.000Z", "$.birthday",
        ("expected a date like", "2021-01-01T00:00:00.000Z"),
    ),
    # date-times
    "date-time-with-month-13": Bad(
        ("created_at",), "2024-13-01T00:00:00.000Z", "$.created_at",
        ("expected a real date-time", "2024-13-01T00:00:00.000Z"),
    ),
    "date-time-without-time-zone": Bad(
        ("updated_at",), "2024-01-01T00:00:00", "$.updated_at",
        ("expected a date-time like", "2024-01-01T00:00:00"),
    ),
    "date-time-finer-than-a-millisecond": Bad(
        ("updated_at",), "2024-01-01T00:00:00.0001Z", "$.updated_at",
        ("at most millisecond precision", "2024-01-01T00:00:00.0001Z"),
    ),
    "date-time-given-a-date-only": Bad(
        ("updated_at",), "2024-01-01", "$.updated_at", ("expected a date-time like", "2024-01-01")
    ),
    "date-time-given-an-integer": Bad(
        ("summary", "orders", "last_order_date"), 1704067200000,
        "$.summary.orders.last_order_date",
        ("expected a date-time string", "integer 1704067200000"),
    ),
    # address
    "address-given-a-string": Bad(
        ("address",), "Rynek 1, Kraków", "$.address", ("expected an object", "string")
    ),
    "address-given-an-array": Bad(
        ("address",), ["Rynek 1"], "$.address", ("expected an object", "array")
    ),
    "address-city-given-an-integer": Bad(
        ("address", "city"), 31000, "$.address.city", ("expected a string", "integer 31000")
    ),
    # metadata and other objects
    "metadata-given-an-array": Bad(
        ("metadata",), [1, 2], "$.metadata", ("expected an object", "array")
    ),
    "metadata-given-a-string": Bad(
        ("metadata",), "{}", "$.metadata", ("expected an object", 'string "{}"')
    ),
    "system-metadata-given-an-integer": Bad(
        ("system_metadata",), 1, "$.system_metadata", ("expected an object", "integer 1")
    ),
    "summary-given-an-array": Bad(
        ("summary",), [], "$.summary", ("expected an object", "array")
    ),
    "gift-summary-given-a-string": Bad(
        ("summary", "redemptions", "gift"), "0", "$.summary.redemptions.gift",
        ("expected an object", 'string "0"'),
    ),
    "assets-given-a-string": Bad(
        ("assets",), "https://example.com", "$.assets", ("expected an object", "string")
    ),
    "assets-url-given-an-integer": Bad(
        ("assets", "cockpit_url"), 1, "$.assets.cockpit_url", ("expected a string", "integer 1")
    ),
    "object-given-cust": Bad(
        ("object",), "cust", "$.object", ('the string "customer"', 'string "cust"')
    ),
    # loyalty campaigns
    "loyalty-campaigns-given-an-array": Bad(
        ("loyalty", "campaigns"), [{"points": 1}], "$.loyalty.campaigns",
        ("expected an object", "array"),
    ),
    "campaign-entry-given-an-integer": Bad(
        ("loyalty", "campaigns", "Summer Campaign"), 5,
        '$.loyalty.campaigns["Summer Campaign"]', ("expected an object", "integer 5"),
    ),
    "campaign-entry-given-null": Bad(
        ("loyalty", "campaigns", "Summer Campaign"), None,
        '$.loyalty.campaigns["Summer Campaign"]', ("expected an object", "null"),
    ),
    "campaign-points-given-string-5": Bad(
        ("loyalty", "campaigns", "Summer Campaign", "points"), "5",
        '$.loyalty.campaigns["Summer Campaign"].points', ("expected an integer", 'string "5"'),
    ),
    "campaign-tier-given-an-integer": Bad(
        ("loyalty", "campaigns", "Winter Campaign", "loyalty_tier"), 2,
        '$.loyalty.campaigns["Winter Campaign"].loyalty_tier',
        ("expected a string", "integer 2"),
    ),
    # referrals
    "referral-campaigns-given-an-object": Bad(
        ("referrals", "campaigns"), {"camp_1": {}}, "$.referrals.campaigns",
        ("expected an array", "object"),
    ),
    "referral-campaigns-given-strings": Bad(
        ("referrals", "campaigns"), ["camp_1", "camp_2"], "$.referrals.campaigns[0]",
        ("expected an object", 'string "camp_1"'),
    ),
    "referral-entry-with-a-bad-date": Bad(
        ("referrals", "campaigns", 1, "date"), "2024-01-03 03:04:05",
        "$.referrals.campaigns[1].date", ("expected a date-time like", "2024-01-03 03:04:05"),
    ),
    "referral-entry-referrer-given-an-integer": Bad(
        ("referrals", "campaigns", 0, "referrer_id"), 7,
        "$.referrals.campaigns[0].referrer_id", ("expected a string", "integer 7"),
    ),
    # id
    "id-missing": Bad(("id",), _MISSING, "$.id", ("required", "absent")),
    "id-given-an-integer": Bad(("id",), 17, "$.id", ("expected a string", "integer 17")),
    "id-empty": Bad(("id",), "", "$.id", ("at least 1 character", 'string ""')),
    "id-of-256-characters": Bad(
        ("id",), "c" * 256, "$.id", ("at most 255 characters", "string")
    ),
    # not an object at all
    "top-level-array": Bad(
        _WHOLE, [copy.deepcopy(NEWER_SAME)], "$", ("expected a customer object", "array")
    ),
    "top-level-string": Bad(_WHOLE, SAME_ID, "$", ("expected a customer object", "string")),
    "top-level-null": Bad(_WHOLE, None, "$", ("expected a customer object", "null")),
    # text no database column holds
    "nul-in-name": Bad(("name",), "Jane\x00Doe", "$.name", ("U+0000",)),
    "nul-in-metadata-value": Bad(
        ("metadata", "nested", "list"), ["ok", "bad\x00"], "$.metadata.nested.list[1]",
        ("U+0000",),
    ),
    "nul-in-metadata-key": Bad(
        ("metadata", "bad\x00key"), 1, '$.metadata["bad\\u0000key"]', ("key", "U+0000")
    ),
    "nul-in-unknown-extra-key": Bad(
        ("summary", "new\x00field"), 1, '$.summary["new\\u0000field"]', ("key", "U+0000")
    ),
    "nul-in-unknown-extra-value": Bad(
        ("new_field",), {"note": "\x00"}, "$.new_field.note", ("U+0000",)
    ),
    "nul-in-campaign-key": Bad(
        ("loyalty", "campaigns", "Autumn\x00"), {}, '$.loyalty.campaigns["Autumn\\u0000"]',
        ("key", "U+0000"),
    ),
    "lone-surrogate-in-name": Bad(("name",), "Jane\ud800", "$.name", ("lone surrogate",)),
    "lone-surrogate-in-metadata-key": Bad(
        ("metadata", "k\udfff"), 1, '$.metadata["k\udfff"]', ("key", "lone surrogate")
    ),
    # numbers JSON cannot carry, nesting too deep
    "nan-in-metadata": Bad(
        ("metadata", "score"), float("nan"), "$.metadata.score",
        ("expected a finite number", "nan"),
    ),
    "infinity-in-metadata": Bad(
        ("metadata", "nested", "list"), [float("inf")], "$.metadata.nested.list[0]",
        ("expected a finite number", "inf"),
    ),
    "minus-infinity-in-unknown-key": Bad(
        ("assets", "ratio"), float("-inf"), "$.assets.ratio", ("expected a finite number", "-inf")
    ),
    "metadata-nested-65-deep": Bad(
        ("metadata",), _nest(NESTING_LIMIT + 5, 1), "$.metadata" + ".a" * NESTING_LIMIT,
        ("nested deeper than 64",),
    ),
    "metadata-arrays-nested-65-deep": Bad(
        ("metadata", "list"), _nest_arrays(NESTING_LIMIT), "$.metadata.list" + "[0]" * 63,
        ("nested deeper than 64",),
    ),
}


_TABLES: list[Table] = [
    row_type.__table__  # type: ignore[misc]
    for row_type in (
        CustomerRow, CustomerAddressRow, LoyaltyCampaignRow, ReferralEntryRow,
        CustomerTombstoneRow,
    )
]


def _all_rows(session: Session) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every customer table, in primary key order."""
    return {
        table.name: [
            tuple(row)
            for row in session.execute(select(table).order_by(*table.primary_key.columns))
        ]
        for table in _TABLES
    }


@pytest.fixture
def stored(repo: CustomerRepository) -> dict[str, list[tuple[Any, ...]]]:
    """Two valid customers, committed; returns the rows as they are."""
    assert repo.upsert(STORED_SAME) is UpsertOutcome.APPLIED
    assert repo.upsert(STORED_OTHER) is UpsertOutcome.APPLIED
    repo.session.commit()
    return _all_rows(repo.session)


def _assert_unchanged(session: Session, rows_before: dict[str, list[tuple[Any, ...]]]) -> None:
    repo = CustomerRepository(session)
    same, other = repo.get(SAME_ID), repo.get(OTHER_ID)
    assert same is not None and same.to_dict() == STORED_SAME
    assert other is not None and other.to_dict() == STORED_OTHER
    assert repo.count() == 2
    assert _all_rows(session) == rows_before


def _assert_nothing_written(
    repo: CustomerRepository, engine: Engine, rows_before: dict[str, list[tuple[Any, ...]]]
) -> None:
    """Unchanged in the writer's own transaction, and for a new session after commit."""
    _assert_unchanged(repo.session, rows_before)
    repo.session.commit()
    with Session(engine) as fresh:
        _assert_unchanged(fresh, rows_before)


def _error_at(caught: CustomerValidationError, path: str) -> str:
    """The message of the error at exactly ``path``; fails listing the paths there are."""
    messages = [error.message for error in caught.errors if error.path == path]
    assert messages, f"no error at {path}; errors: {[str(e) for e in caught.errors]}"
    return messages[0]


@pytest.mark.parametrize(
    "case", [pytest.param(case, id=name, marks=case.marks) for name, case in BAD_INPUT.items()]
)
def test_bad_input_is_refused_with_its_path_and_changes_nothing(
    repo: CustomerRepository,
    engine: Engine,
    stored: dict[str, list[tuple[Any, ...]]],
    case: Bad,
) -> None:
    payload = _with(case.at, case.value)

    with pytest.raises(CustomerValidationError) as caught:
        repo.upsert(payload)

    message = _error_at(caught.value, case.path)
    for fragment in case.says:
        assert fragment in message
    assert f"{case.path}: {message}" in str(caught.value)
    _assert_nothing_written(repo, engine, stored)


def _newcomer() -> dict[str, Any]:
    return _customer("cust_new", "2025-01-01T00:00:00.000Z", "Newcomer")


@pytest.mark.parametrize(
    "order", ["good-first", "bad-first"], ids=["good-then-bad", "bad-then-good"]
)
@pytest.mark.parametrize(
    "bad_case", ["counter-given-string-12", "referral-campaigns-given-strings", "nul-in-name",
                 "id-missing", "top-level-null"],
)
def test_a_batch_with_one_bad_customer_writes_none_of_them(
    repo: CustomerRepository,
    engine: Engine,
    stored: dict[str, list[tuple[Any, ...]]],
    order: str,
    bad_case: str,
) -> None:
    case = BAD_INPUT[bad_case]
    # Valid on their own: a new customer, and a newer version of a stored one.
    good = [_newcomer(), _customer(OTHER_ID, "2025-01-01T00:00:00.000Z", "Newer Other")]
    bad = _with(case.at, case.value)
    batch = [*good, bad] if order == "good-first" else [bad, *good]

    with pytest.raises(CustomerValidationError) as caught:
        repo.upsert_many(batch)

    _error_at(caught.value, case.path)
    assert repo.get("cust_new") is None
    _assert_nothing_written(repo, engine, stored)


# -- Just inside the limits: accepted and stored as sent ---------------------------------

GOOD_EDGES = {
    "counter-at-int64-max": (("summary", "orders", "total_amount"), 2**63 - 1),
    "counter-at-int64-min": (("loyalty", "points"), -(2**63)),
    "leap-day": (("birthdate",), "2024-02-29"),
    "id-of-255-characters": (("id",), "c" * 255),
    "source-id-of-500-characters": (("source_id",), "s" * 500),
    "campaign-key-of-500-characters": (("loyalty", "campaigns", "k " * 250), {"points": 1}),
    "metadata-nested-to-the-limit": (("metadata",), _nest(NESTING_LIMIT - 1, 1)),
    "metadata-arrays-nested-to-the-limit": (("metadata", "list"), _nest_arrays(62)),
    "integers-past-64-bits-in-metadata": (("metadata", "big"), [2**70, -(2**100)]),
    "emoji-rtl-and-nbsp-in-name": (("name",), "Zoë 😀 \u05e9\u05dc\u05d5\u05dd\u00a0x"),
    "date-time-at-the-millisecond": (("updated_at",), "2025-06-01T00:00:00.001Z"),
}


@pytest.mark.parametrize(
    ("at", "value"), [pytest.param(*edge, id=name) for name, edge in GOOD_EDGES.items()]
)
def test_values_just_inside_the_limits_are_stored_as_sent(
    repo: CustomerRepository, at: tuple[str | int, ...], value: Any
) -> None:
    payload = _with(at, value)

    assert repo.upsert(payload) is UpsertOutcome.APPLIED
    repo.session.commit()

    stored = repo.get(payload["id"])
    assert stored is not None
    assert stored.to_dict() == payload
