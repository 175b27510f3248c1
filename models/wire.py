"""Wire formats of Voucherify JSON: date-times, dates, 64-bit integers.

Voucherify writes date-times as ``YYYY-MM-DDTHH:MM:SS.mmmZ``. Input with another
offset is accepted and normalised to UTC; input finer than a millisecond is refused,
because the canonical form could not give it back.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Annotated, Any

from pydantic import AfterValidator, Field, PlainSerializer, PlainValidator

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "Int64",
    "MaxBytes",
    "WireDate",
    "WireDateTime",
    "format_datetime",
    "json_text",
    "parse_date",
    "parse_datetime",
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_DATETIME_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})"
)
_CANONICAL_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_datetime(value: Any) -> datetime:
    """Parse an ISO 8601 date-time with an offset into an aware UTC datetime."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("expected a date-time with a time zone, got a naive datetime")
        return value.astimezone(UTC)
    if not isinstance(value, str):
        raise TypeError
    if _CANONICAL_RE.fullmatch(value):
        # The wire form itself (nearly every input): the C parser, valid days checked.
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"expected a real date-time, got {_quote(value)}") from None
    match = _DATETIME_RE.fullmatch(value)
    if match is None:
        raise ValueError(
            f"expected a date-time like 2024-02-01T11:16:41.002Z, got {_quote(value)}"
        )
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    fraction = (fraction or "").ljust(9, "0")
    if fraction[3:].strip("0"):
        raise ValueError(
            f"expected a date-time with at most millisecond precision, got {_quote(value)}"
        )
    try:
        tz = UTC
        if offset != "Z":
            sign = 1 if offset[0] == "+" else -1
            tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
        parsed = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second),
            int(fraction[:3]) * 1000, tzinfo=tz,
        )
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(f"expected a real date-time, got {_quote(value)}") from None


def parse_date(value: Any) -> date:
    """Parse a ``YYYY-MM-DD`` calendar date that exists."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise TypeError
    if _DATE_RE.fullmatch(value) is None:
        raise ValueError(f"expected a date like 1990-12-31, got {_quote(value)}")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"expected a real date, got {_quote(value)}") from None


def format_datetime(value: datetime) -> str:
    """Format as Voucherify does: UTC, three fractional digits, a literal ``Z``."""
    utc = value.astimezone(UTC)
    # Not strftime: "%Y" does not pad years before 1000 to four digits on every platform.
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
        f"{utc.second:02d}.{utc.microsecond // 1000:03d}Z"
    )


def _quote(value: str) -> str:
    preview = value if len(value) <= 40 else value[:37] + "..."
    return f"string {json.dumps(preview, ensure_ascii=False)}"


def _validate_datetime(value: Any) -> datetime:
    try:
        return parse_datetime(value)
    except TypeError:
        raise ValueError("expected a date-time string") from None


def _validate_date(value: Any) -> date:
    try:
        return parse_date(value)
    except TypeError:
        raise ValueError("expected a date string") from None


WireDateTime = Annotated[
    datetime,
    PlainValidator(_validate_datetime),
    PlainSerializer(format_datetime, return_type=str, when_used="json"),
]
WireDate = Annotated[
    date,
    PlainValidator(_validate_date),
    PlainSerializer(date.isoformat, return_type=str, when_used="json"),
]
Int64 = Annotated[int, Field(strict=True, ge=INT64_MIN, le=INT64_MAX)]


def MaxBytes(limit: int) -> AfterValidator:
    """Refuse text longer than ``limit`` bytes of UTF-8: B-tree index entries are limited
    in bytes (2,704 on PostgreSQL), and one character can take four."""

    def check(value: str) -> str:
        if len(value) * 4 > limit and len(value.encode("utf-8", "surrogatepass")) > limit:
            raise ValueError(f"expected at most {limit} bytes of UTF-8 text, got {_quote(value)}")
        return value

    return AfterValidator(check)


def _wire_value(value: Any) -> str:
    """``json.dumps``'s ``default``: date-times and dates in their wire forms."""
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def json_text(value: Any) -> str:
    """Compact JSON text of JSON-shaped ``value`` whose date-times and dates may still be
    Python objects: written in the wire forms the models' ``to_dict`` uses."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_wire_value)
