"""What no database column can hold (NUL, lone surrogates, NaN, deep nesting), found before
any row is written."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from models.errors import FieldError, json_path

__all__ = ["MAX_NESTING", "plainly_storable", "text_problem", "unstorable_values"]

#: How deep metadata (or any unknown key) may nest; deeper input is refused.
MAX_NESTING = 64


# In JSON text read by loads_json, what _unstorable_values looks for can only hide behind
# these: a NUL or a surrogate escape, brackets enough to nest too deep, or a surrogate
# character (from undecodable input).
_ESCAPES = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def plainly_storable(source: str) -> bool:
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


def unstorable_values(value: Any, path: tuple[Any, ...], depth: int) -> Any:
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
            yield from unstorable_values(item, (*path, key), depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from unstorable_values(item, (*path, index), depth + 1)


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored in a text column, or ``None`` if it can."""
    if "\x00" in text:
        return "contains U+0000, which PostgreSQL cannot store"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate, which is not valid Unicode"
    return None
