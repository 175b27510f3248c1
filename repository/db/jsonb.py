"""JSON for PostgreSQL's JSONB columns, written so that every number comes back as the
same JSON value."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

__all__ = ["dumps_for_jsonb"]

_EXPONENT = re.compile(r"\d[eE]")


def dumps_for_jsonb(value: Any) -> str:
    """``json.dumps`` whose floats survive JSONB's ``numeric`` round trip as floats.

    JSONB keeps numbers as ``numeric``: ``1e+300`` comes back as 301 digits with no
    decimal point, which JSON readers take for an integer. Floats written in plain
    notation with a decimal point stay floats.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    # Most values have no exponent anywhere in their text: no need to walk them.
    if not _EXPONENT.search(text) or not _has_exponent_float(value):
        return text
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts)


def _has_exponent_float(value: Any) -> bool:
    if isinstance(value, float):
        return "e" in repr(value)
    if isinstance(value, dict):
        return any(_has_exponent_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_exponent_float(v) for v in value)
    return False


def _write(value: Any, parts: list[str]) -> None:
    if isinstance(value, float):
        text = repr(value)
        if "e" in text:
            text = format(Decimal(text), "f")
            text = text if "." in text else text + ".0"
        parts.append(text)
    elif isinstance(value, dict):
        parts.append("{")
        for i, (key, item) in enumerate(value.items()):
            parts.append(("," if i else "") + json.dumps(key, ensure_ascii=False) + ":")
            _write(item, parts)
        parts.append("}")
    elif isinstance(value, list):
        parts.append("[")
        for i, item in enumerate(value):
            if i:
                parts.append(",")
            _write(item, parts)
        parts.append("]")
    else:
        parts.append(json.dumps(value, ensure_ascii=False))
