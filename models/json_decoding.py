"""Decoding JSON text into Python values, refusing numbers no JSON column can hold."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["FINITE_JSON_DECODER", "NonFiniteNumber", "NotUtf8", "loads_json", "utf8_json_text"]


class NonFiniteNumber(ValueError):
    """JSON text with NaN, Infinity, a number too large for a float, or an integer with
    more digits than Python converts (``sys.get_int_max_str_digits()``, 4,300 by default)."""


class NotUtf8(ValueError):
    """JSON bytes in UTF-16 or UTF-32 (a BOM or not): JSON exchanged between systems is
    UTF-8 (RFC 8259, section 8.1), and only UTF-8 bodies can be searched and erased."""


def utf8_json_text(data: bytes) -> str:
    """The text of JSON received as bytes: UTF-8, a leading UTF-8 BOM ignored (RFC 8259
    allows a parser to). Raises :class:`NotUtf8` for UTF-16 and UTF-32, and
    ``UnicodeDecodeError`` for bytes that are not UTF-8. UTF-8-encoded surrogates are
    let through as lone surrogates, which validation then names."""
    encoding = json.detect_encoding(data)
    if encoding not in ("utf-8", "utf-8-sig"):
        raise NotUtf8(f"the body is {encoding.upper()}, not UTF-8 (RFC 8259)")
    return data.decode(encoding, "surrogatepass")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise NonFiniteNumber(f"the number {text[:24]} is too large for a float")
    return value


def _bounded_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        # Only the digit limit makes int() fail on what the JSON scanner calls an integer.
        raise NonFiniteNumber(
            f"the integer {text[:12]}... has {len(text.lstrip('-'))} digits, too many to read"
        ) from None


def _no_constant(name: str) -> float:
    raise NonFiniteNumber(f"{name} is not a JSON number")


#: A decoder that refuses non-finite numbers, for incremental decoding (``raw_decode``).
FINITE_JSON_DECODER = json.JSONDecoder(
    parse_float=_finite_float, parse_int=_bounded_int, parse_constant=_no_constant
)


# Integers read by the scanner itself (a hook per integer costs a tenth of the decoding):
# one with too many digits makes it raise ValueError, and FINITE_JSON_DECODER says why.
_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_no_constant)


def loads_json(text: str | bytes) -> Any:
    """``json.loads`` that refuses non-finite numbers (:class:`NonFiniteNumber`), which no
    JSON column can hold; text read with it can be passed to :func:`parse_customer` as
    ``source``. Bytes are read by :func:`utf8_json_text`: UTF-8 only."""
    if isinstance(text, bytes):
        text = utf8_json_text(text)
    try:
        return _DECODER.decode(text)
    except (json.JSONDecodeError, NonFiniteNumber):
        raise
    except ValueError:
        return FINITE_JSON_DECODER.decode(text)
