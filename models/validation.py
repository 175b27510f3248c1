"""Turning untrusted JSON into a :class:`Customer`, with errors that name the JSON path."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from models.customer import Customer

__all__ = [
    "FINITE_JSON_DECODER",
    "MAX_NESTING",
    "CustomerValidationError",
    "FieldError",
    "NonFiniteNumber",
    "describe_value",
    "json_path",
    "loads_json",
    "parse_customer",
    "text_problem",
]

#: How deep metadata (or any unknown key) may nest; deeper input is refused.
MAX_NESTING = 64

#: Longest map key shown whole in a JSON path (every key the shape allows, campaign names
#: of up to 500 characters included); longer ones are cut short.
_KEY_PREVIEW = 1000

_EXPECTED = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "string_type": "a string",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dict_type": "an object",
    "list_type": "an array",
    "literal_error": 'the string "customer"',
    "less_than_equal": "an integer that fits in 64 bits",
    "greater_than_equal": "an integer that fits in 64 bits",
}


@dataclass(frozen=True)
class FieldError:
    """One problem at one JSON path (``$.summary.orders.total_amount``)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class CustomerValidationError(ValueError):
    """The input is not a customer of the documented shape; ``errors`` says where and why."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def parse_customer(raw: Customer | Mapping[str, Any], *, source: str | None = None) -> Customer:
    """Validate ``raw`` (a JSON object as Python values, or a model) into a :class:`Customer`.

    ``source``, the JSON text ``raw`` was parsed from with :func:`loads_json`, lets a quick
    look at the text stand in for walking every value, when the text shows none of what
    could not be stored.
    """
    if isinstance(raw, Customer):
        return raw
    if not isinstance(raw, Mapping):
        raise CustomerValidationError(
            [FieldError("$", f"expected a customer object, got {describe_value(raw)}")]
        )
    if source is None or not _plainly_storable(source):
        problems = list(_unstorable_values(raw, ("$",), 0))
        if problems:
            raise CustomerValidationError(problems[:20])
    try:
        return Customer.model_validate(raw)
    except ValidationError as exc:
        raise CustomerValidationError([_field_error(e) for e in exc.errors()]) from None


def json_path(parts: tuple[Any, ...] | list[Any]) -> str:
    """Render a location as a JSON path: ``$.loyalty.campaigns["Summer Campaign"].points``."""
    out = "$"
    for part in parts:
        if part == "$":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and len(part) <= _KEY_PREVIEW and part.isidentifier():
            out += f".{part}"
        else:
            # A key can be megabytes long: the path shows its start, as values are shown.
            key = str(part)
            if len(key) > _KEY_PREVIEW:
                key = key[: _KEY_PREVIEW - 3] + "..."
            out += f"[{json.dumps(key, ensure_ascii=False)}]"
    return out


def describe_value(value: Any) -> str:
    """A short description of a JSON value for an error message: its type and a preview."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        text = str(value)
        if len(text) > 30:
            text = f"{text[:12]}... ({len(text)} digits)"
        return f"integer {text}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        preview = value if len(value) <= 40 else value[:37] + "..."
        return f"string {json.dumps(preview, ensure_ascii=False)}"
    if isinstance(value, list):
        return f"array of {len(value)}"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _field_error(error: Any) -> FieldError:
    loc = tuple(error["loc"])
    if loc and loc[-1] == "[key]":
        # pydantic marks an error in a map's key (not its value) this way.
        return FieldError(json_path(loc[:-1]), f"key: {_field_error({**error, 'loc': ()}).message}")
    path = json_path(loc)
    kind = error["type"]
    value = error.get("input")
    if kind == "missing":
        return FieldError(path, "required, but absent")
    if kind in ("string_too_long", "string_too_short"):
        return FieldError(path, f"{error['msg'].lower()}, got {describe_value(value)}")
    if kind == "value_error":
        message = str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
        return FieldError(path, f"{message}, got {describe_value(value)}"
                          if "got" not in message else message)
    expected = _EXPECTED.get(kind)
    if expected is None:
        return FieldError(path, f"{error['msg']}, got {describe_value(value)}")
    return FieldError(path, f"expected {expected}, got {describe_value(value)}")


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


def loads_json(text: str | bytes) -> Any:
    """``json.loads`` that refuses non-finite numbers (:class:`NonFiniteNumber`), which no
    JSON column can hold; text read with it can be passed to :func:`parse_customer` as
    ``source``."""
    if isinstance(text, bytes):
        return json.loads(
        text, parse_float=_finite_float, parse_int=_bounded_int, parse_constant=_no_constant
    )
    return FINITE_JSON_DECODER.decode(text)


# In JSON text read by loads_json, what _unstorable_values looks for can only hide behind
# these: a NUL or a surrogate escape, brackets enough to nest too deep, or a surrogate
# character (from undecodable input).
_ESCAPES = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def _plainly_storable(source: str) -> bool:
    if source.count("{") + source.count("[") > MAX_NESTING:
        return False
    if "\\u" in source and _ESCAPES.search(source):
        return False
    if not source.isascii():
        try:
            source.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


def _unstorable_values(value: Any, path: tuple[Any, ...], depth: int) -> Any:
    """Yield what no database column can hold: NUL, lone surrogates, NaN, deep nesting."""
    if depth > MAX_NESTING:
        yield FieldError(json_path(path), f"nested deeper than {MAX_NESTING} levels")
        return
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            yield FieldError(json_path(path), problem)
    elif isinstance(value, float):
        if not math.isfinite(value):
            yield FieldError(json_path(path), f"expected a finite number, got {value!r}")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            problem = text_problem(key) if isinstance(key, str) else "expected a string key"
            if problem:
                yield FieldError(json_path((*path, key)), f"key {problem}")
            yield from _unstorable_values(item, (*path, key), depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _unstorable_values(item, (*path, index), depth + 1)


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored in a text column, or ``None`` if it can."""
    if "\x00" in text:
        return "contains U+0000, which PostgreSQL cannot store"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate, which is not valid Unicode"
    return None
