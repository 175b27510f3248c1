"""Validation errors that name the JSON path of each problem, and how they are rendered."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CustomerValidationError",
    "FieldError",
    "describe_value",
    "field_error",
    "json_path",
]

#: Longest map key shown whole in a JSON path; longer ones (a campaign name can have any
#: length) are cut short.
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


def field_error(error: Any) -> FieldError:
    """Render one of pydantic's ``ValidationError.errors()`` as a :class:`FieldError`."""
    loc = tuple(error["loc"])
    if loc and loc[-1] == "[key]":
        # pydantic marks an error in a map's key (not its value) this way.
        return FieldError(json_path(loc[:-1]), f"key: {field_error({**error, 'loc': ()}).message}")
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
