"""Hypothesis strategies for customers of the documented shape.

Every documented key is independently present, absent or ``null``; unknown keys with
arbitrary JSON values appear at several levels; strings are unicode (emoji, right-to-left
text, no-break spaces), integers span the signed 64-bit range, metadata is arbitrary
nested JSON. Date-times are generated in the canonical wire form
``YYYY-MM-DDTHH:MM:SS.mmmZ``, because the canonical form is what comes back.

Sizes are bounded so that generation stays fast.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

__all__ = [
    "ADDRESS_KEYS",
    "CUSTOMER_KEYS",
    "customer_ids",
    "customers",
    "customers_with_offset_datetimes",
    "dates",
    "json_values",
    "unicode_text",
    "wire_datetimes",
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# Pieces that single-character generation rarely produces: a multi-code-point emoji,
# right-to-left text and marks, no-break and zero-width spaces, combining accents.
_SPECIAL_PIECES = (
    "😀",
    "👩‍👩‍👧",
    "🇵🇱",
    "שלום",
    "مرحبا",
    "\u200f",
    "\u202e",
    "\u00a0",
    "\u200b",
    "e\u0301",
    "ß",
    "\r\n",
    "\t",
    '"',
    "\\",
    "'",
    " ",
)

# Every code point except U+0000 (PostgreSQL cannot store it) and surrogates (not
# valid Unicode on their own); both are refused by validation, see test_validation.
_CHARACTERS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
_PIECES = st.one_of(_CHARACTERS, st.sampled_from(_SPECIAL_PIECES))


def unicode_text(*, min_size: int = 0, max_size: int = 24) -> SearchStrategy[str]:
    """Unicode strings of ``min_size`` to ``max_size`` characters (code points)."""
    return (
        st.lists(_PIECES, min_size=min_size, max_size=max_size)
        .map(lambda pieces: "".join(pieces)[:max_size])
        .filter(lambda text: len(text) >= min_size)
    )


def customer_ids() -> SearchStrategy[str]:
    """Non-empty ids of at most 255 characters: mostly short, sometimes the longest."""
    short = st.one_of(
        st.from_regex(r"cust_[A-Za-z0-9]{1,24}", fullmatch=True),
        unicode_text(min_size=1, max_size=40),
    )
    longest = st.text(_CHARACTERS, min_size=255, max_size=255)
    # One id in ten is as long as allowed (not the one shrinking leads to).
    return st.integers(min_value=0, max_value=9).flatmap(
        lambda pick: longest if pick == 9 else short
    )


def _canonical_datetime(value: datetime) -> str:
    utc = value.astimezone(UTC)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond // 1000:03d}Z"
    )


# Years before 1000 are left out on purpose: they are not written back in the four-digit
# wire form (see test_roundtrip_property.test_a_date_time_before_year_1000_...).
_INSTANTS = st.datetimes(
    min_value=datetime(1000, 1, 1),
    max_value=datetime(9999, 12, 31, 23, 59, 59, 999_999),
    timezones=st.just(UTC),
).map(lambda value: value.replace(microsecond=value.microsecond // 1000 * 1000))


def wire_datetimes() -> SearchStrategy[str]:
    """Date-times in the canonical wire form, millisecond precision, UTC."""
    return _INSTANTS.map(_canonical_datetime)


def dates() -> SearchStrategy[str]:
    """Calendar dates as ``YYYY-MM-DD``."""
    return st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)).map(
        lambda value: f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
    )


_INT_EDGES = (
    INT64_MIN, INT64_MIN + 1, -(2**53) - 1, -(2**31) - 1, -1, 0, 1, 2**31, 2**53 + 1,
    INT64_MAX - 1, INT64_MAX,
)


def _int64() -> SearchStrategy[int]:
    return st.one_of(
        st.integers(min_value=INT64_MIN, max_value=INT64_MAX), st.sampled_from(_INT_EDGES)
    )


def _json_keys() -> SearchStrategy[str]:
    return st.one_of(unicode_text(max_size=12), st.sampled_from(["", "a.b", "$", "[0]", "null"]))


def json_values(*, max_leaves: int = 10) -> SearchStrategy[Any]:
    """Arbitrary JSON: objects with unicode keys, arrays, booleans, null, strings, finite
    floats, and integers well past 64 bits."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**200), max_value=2**200),
        st.sampled_from([2**70, -(2**100), 2**63, -(2**63) - 1, 2**64, 0, 1, -1]),
        # -0.0 is left out on purpose: PostgreSQL gives it back as 0.0 (see
        # test_roundtrip_property.test_negative_zero_in_metadata_...).
        st.floats(allow_nan=False, allow_infinity=False).filter(
            lambda number: number != 0 or math.copysign(1.0, number) > 0
        ),
        unicode_text(max_size=16),
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(_json_keys(), children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


def _json_objects(*, max_size: int = 5) -> SearchStrategy[dict[str, Any]]:
    return st.dictionaries(_json_keys(), json_values(), max_size=max_size)


# Unknown key names that look like the storage's own bookkeeping or like pydantic's
# attributes; they must be kept like any other unknown key.
_TRICKY_UNKNOWN_KEYS = (
    "extra",
    "absent_mask",
    "null_mask",
    "version_at",
    "customer_id",
    "campaign",
    "position",
    "metadata_",
    "model_config",
    "model_fields_set",
    "_private",
    "__class__",
    "",
    "summary.redemptions",
    "new_field",
)


def _unknown_keys(
    documented: frozenset[str], *, lean: bool = False
) -> SearchStrategy[dict[str, Any]]:
    """Keys the documentation does not name at this level, with arbitrary JSON values
    (small ones if ``lean``: for the entries of long collections)."""
    names = st.one_of(st.sampled_from(_TRICKY_UNKNOWN_KEYS), unicode_text(max_size=12)).filter(
        lambda name: name not in documented
    )
    values = json_values(max_leaves=1 if lean else 4)
    return st.one_of(
        st.just({}),
        st.dictionaries(names, values, min_size=1, max_size=1 if lean else 3),
    )


def _nullable(strategy: SearchStrategy[Any]) -> SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def _object(
    documented: dict[str, SearchStrategy[Any]],
    nested: dict[str, SearchStrategy[Any]] | None = None,
    *,
    dense: bool = False,
    lean: bool = False,
    reserved: frozenset[str] = frozenset(),
) -> SearchStrategy[dict[str, Any]]:
    """An object whose documented keys are each present, absent or ``null``, plus
    unknown keys (never named as a documented or ``reserved`` key). With ``dense``, the
    ``nested`` objects and collections are always present and not null, so that the deep
    levels are reached often."""
    nested = nested or {}
    optional = {key: _nullable(value) for key, value in documented.items()}
    required: dict[str, SearchStrategy[Any]] = {}
    for key, value in nested.items():
        if dense:
            required[key] = value
        else:
            optional[key] = _nullable(value)
    known = st.fixed_dictionaries(required, optional=optional)
    unknown = _unknown_keys(frozenset(documented) | frozenset(nested) | reserved, lean=lean)
    return st.tuples(known, unknown).map(lambda parts: {**parts[0], **parts[1]})


ADDRESS_KEYS = ("city", "state", "line_1", "line_2", "country", "postal_code")


def _addresses() -> SearchStrategy[dict[str, Any]]:
    # null (from the parent), {} and all-six-null are three different payloads.
    return st.one_of(
        st.just({}),
        st.just(dict.fromkeys(ADDRESS_KEYS)),
        _object({key: unicode_text() for key in ADDRESS_KEYS}),
    )


def _summaries(date_times: SearchStrategy[Any], *, dense: bool) -> SearchStrategy[dict[str, Any]]:
    counters = (
        "total_redeemed",
        "total_failed",
        "total_succeeded",
        "total_rolled_back",
        "total_rollback_failed",
        "total_rollback_succeeded",
    )
    gift = _object({"redeemed_amount": _int64(), "amount_to_go": _int64()})
    loyalty_card = _object({"redeemed_points": _int64(), "points_to_go": _int64()})
    redemptions = _object(
        {name: _int64() for name in counters},
        {"gift": gift, "loyalty_card": loyalty_card},
        dense=dense,
    )
    orders = _object(
        {
            "total_amount": _int64(),
            "total_count": _int64(),
            "average_amount": _int64(),
            "last_order_amount": _int64(),
            "last_order_date": date_times,
        }
    )
    return _object({}, {"redemptions": redemptions, "orders": orders}, dense=dense)


# Campaign keys have no length limit. 400 characters, of four-byte characters up to 1,600
# bytes, reach past the 1,200 bytes beyond which the stored key is a digest
# (repository.store.mapping.campaign_key).
_CAMPAIGN_KEY_MAX = 400


def _campaign_keys() -> SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["Summer Campaign", "Christmas Campaign", "", " ", "Été 2024 🎄"]),
        unicode_text(max_size=30),
        st.text(_CHARACTERS, min_size=_CAMPAIGN_KEY_MAX, max_size=_CAMPAIGN_KEY_MAX),
    )


def _campaign_entries(*, lean: bool = False) -> SearchStrategy[dict[str, Any]]:
    tier = unicode_text(max_size=6 if lean else 24)
    return _object(
        {"points": _int64(), "loyalty_tier": tier, "referred_customers": _int64()}, lean=lean
    )


def _loyalties(*, dense: bool) -> SearchStrategy[dict[str, Any]]:
    # Long maps have small entries, so that they fit in hypothesis's example budget.
    campaigns = st.one_of(
        st.just({}),
        st.dictionaries(_campaign_keys(), _campaign_entries(), max_size=4),
        st.dictionaries(
            unicode_text(min_size=1, max_size=8), _campaign_entries(lean=True),
            min_size=40, max_size=60,
        ),
    )
    return _object(
        {"points": _int64(), "referred_customers": _int64()},
        {"campaigns": campaigns},
        dense=dense,
    )


def _referral_entries(
    date_times: SearchStrategy[Any], *, lean: bool = False
) -> SearchStrategy[dict[str, Any]]:
    text = unicode_text(max_size=6 if lean else 24)
    return _object(
        {
            "campaign_id": text,
            "referrer_id": text,
            "related_object_id": text,
            "related_object_type": text,
            "date": date_times,
        },
        lean=lean,
    )


def _referrals(date_times: SearchStrategy[Any], *, dense: bool) -> SearchStrategy[dict[str, Any]]:
    campaigns = st.one_of(
        st.just([]),
        st.lists(_referral_entries(date_times), max_size=4),
        st.lists(_referral_entries(date_times, lean=True), min_size=40, max_size=60),
    )
    return _object({"total": _int64()}, {"campaigns": campaigns}, dense=dense)


CUSTOMER_KEYS = frozenset(
    {
        "id",
        "source_id",
        "name",
        "description",
        "email",
        "phone",
        "birthday",
        "birthdate",
        "address",
        "metadata",
        "summary",
        "loyalty",
        "referrals",
        "system_metadata",
        "created_at",
        "updated_at",
        "assets",
        "object",
    }
)


def customers(
    ids: SearchStrategy[str] | None = None,
    date_times: SearchStrategy[Any] | None = None,
) -> SearchStrategy[dict[str, Any]]:
    """Customers of the documented shape, as the JSON values a parser gives: half of them
    sparse (any key may be absent or null), half dense (every object and collection
    present, so that deep levels, long collections and their unknown keys occur often)."""
    return st.one_of(
        _customers(ids, date_times, dense=False), _customers(ids, date_times, dense=True)
    )


def _customers(
    ids: SearchStrategy[str] | None,
    date_times: SearchStrategy[Any] | None,
    *,
    dense: bool,
) -> SearchStrategy[dict[str, Any]]:
    date_times = date_times if date_times is not None else wire_datetimes()
    documented: dict[str, SearchStrategy[Any]] = {
        "source_id": unicode_text(max_size=60),
        "name": unicode_text(),
        "description": unicode_text(max_size=60),
        "email": unicode_text(),
        "phone": unicode_text(),
        "birthday": dates(),
        "birthdate": dates(),
        "system_metadata": _json_objects(max_size=3),
        "created_at": date_times,
        "updated_at": date_times,
        "object": st.just("customer"),
    }
    nested: dict[str, SearchStrategy[Any]] = {
        "address": _addresses(),
        "metadata": _json_objects(),
        "summary": _summaries(date_times, dense=dense),
        "loyalty": _loyalties(dense=dense),
        "referrals": _referrals(date_times, dense=dense),
        "assets": _object(
            {"cockpit_url": unicode_text(), "cockpit_preference_center_url": unicode_text()}
        ),
    }
    assert set(documented) | set(nested) | {"id"} == CUSTOMER_KEYS
    body = _object(documented, nested, dense=dense, reserved=frozenset({"id"}))
    return st.tuples(ids if ids is not None else customer_ids(), body).map(
        lambda parts: {"id": parts[0], **parts[1]}
    )


def _offsets() -> SearchStrategy[timedelta]:
    """UTC offsets other than ``Z``: whole minutes within a day, ``+00:00`` included."""
    return st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
        lambda minutes: timedelta(minutes=minutes)
    )


def _render_with_offset(instant: datetime, offset: timedelta) -> str:
    local = instant.astimezone(timezone(offset))
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return (
        f"{local.year:04d}-{local.month:02d}-{local.day:02d}T"
        f"{local.hour:02d}:{local.minute:02d}:{local.second:02d}."
        f"{local.microsecond // 1000:03d}{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    )


def customers_with_offset_datetimes() -> SearchStrategy[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs (input, expected): the input writes every date-time with a ``±HH:MM`` offset,
    the expected customer has the same instants in the canonical ``Z`` form.

    Instants stay a day away from years 1000 and 9999 so that local time has four digits.
    """
    instants = st.datetimes(
        min_value=datetime(1000, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.just(UTC),
    ).map(lambda value: value.replace(microsecond=value.microsecond // 1000 * 1000))
    # A marker that carries both renderings through the customer strategy.
    pairs = st.tuples(instants, _offsets()).map(
        lambda pair: _OffsetDateTime(_render_with_offset(*pair), _canonical_datetime(pair[0]))
    )
    return customers(date_times=pairs).map(_split_offsets)


class _OffsetDateTime:
    __slots__ = ("canonical", "given")

    def __init__(self, given: str, canonical: str) -> None:
        self.given = given
        self.canonical = canonical

    def __repr__(self) -> str:
        return repr(self.given)


def _split_offsets(value: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    def pick(item: Any, attribute: str) -> Any:
        if isinstance(item, _OffsetDateTime):
            return getattr(item, attribute)
        if isinstance(item, dict):
            return {key: pick(inner, attribute) for key, inner in item.items()}
        if isinstance(item, list):
            return [pick(inner, attribute) for inner in item]
        return item

    return pick(value, "given"), pick(value, "canonical")
