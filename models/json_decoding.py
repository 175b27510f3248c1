"""Decoding JSON text into Python values, refusing numbers no JSON column can hold."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["FINITE_JSON_DECODER", "NonFiniteNumber", "loads_json"]


class NonFiniteNumber(ValueError):
    """JSON text with NaN, Infinity, a number too large for a float, or an integer with
    more digits than Python converts (``sys.get_int_max_str_digits()``, 4,300 by default)."""


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
    ``source``."""
    if isinstance(text, bytes):
        text = text.decode(json.detect_encoding(text), "surrogatepass")
    try:
        return _DECODER.decode(text)
    except (json.JSONDecodeError, NonFiniteNumber):
        raise
    except ValueError:
        return FINITE_JSON_DECODER.decode(text)
