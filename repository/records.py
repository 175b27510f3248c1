"""Reading customer records from files: JSON Lines, a JSON array, or Voucherify list pages.

Parsing never raises for bad data: a line that is not JSON becomes a :class:`Record`
with an ``error``, so that one bad line costs one record, not the whole file. Large
JSON arrays and JSON Lines are read incrementally; memory does not grow with the file.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from models.validation import FINITE_JSON_DECODER, NonFiniteNumber, loads_json

__all__ = ["Record", "read_records"]

_CHUNK = 1 << 16
_decoder = FINITE_JSON_DECODER


@dataclass(frozen=True)
class Record:
    """One input record: where it came from, and its value or why it could not be read."""

    location: str
    value: Any = None
    error: str | None = None
    #: The JSON text ``value`` was parsed from, when it is exactly one line of input.
    text: str | None = None


def read_records(stream: TextIO) -> Iterator[Record]:
    """Yield the customer records in ``stream``, whichever of the three forms it has."""
    head, _ = _skip_blank(stream)
    if head == "":
        return
    first_line = head + stream.readline()
    if head == "[":
        yield from _array_or_lines(stream, first_line)
        return
    try:
        value = loads_json(first_line)
    except (ValueError, RecursionError):
        # Not one JSON value per line: perhaps one pretty-printed document.
        rest = first_line + stream.read()
        try:
            document = loads_json(rest)
        except (ValueError, RecursionError):
            # Lines end at "\n", "\r\n" or "\r" only: str.splitlines would also split at
            # U+2028, U+0085 and other characters that JSON strings may hold as they are.
            yield from _line_records(io.StringIO(rest, newline=None), start=1)
            return
        yield from _expand(document, "document", "")
        return
    yield from _expand(value, "line 1", "line 1 ", first_line)
    yield from _line_records(stream, start=2)


def _array_or_lines(stream: TextIO, first_line: str) -> Iterator[Record]:
    """Input that starts with ``[``: one JSON array, or JSON Lines whose first is an array."""
    try:
        value = loads_json(first_line)
    except (ValueError, RecursionError):
        yield from _array_records(stream, first_line)  # an array over several lines
        return
    after, blank_lines = _skip_blank(stream)
    if after == "":
        yield from _expand(value, "document", "")  # an array on one line
        return
    # More follows: JSON Lines, the first of which is an array (of customers, one hopes).
    yield from _expand(value, "line 1", "line 1 ", first_line)
    yield from _line_records(
        _prepend(after + stream.readline(), stream), start=2 + blank_lines
    )


def _prepend(first: str, rest: TextIO) -> Iterator[str]:
    yield first
    yield from rest


def _line_records(lines: Any, *, start: int) -> Iterator[Record]:
    for number, line in enumerate(lines, start=start):
        if not line.strip():
            continue
        location = f"line {number}"
        try:
            value = loads_json(line)
        except json.JSONDecodeError as exc:
            yield Record(location, error=f"invalid JSON: {exc.msg} at column {exc.colno}")
            continue
        except NonFiniteNumber as exc:
            yield Record(location, error=f"invalid JSON: {exc}")
            continue
        except RecursionError:
            yield Record(location, error="invalid JSON: nested too deeply")
            continue
        yield from _expand(value, location, location + " ", line)


def _expand(value: Any, location: str, prefix: str, text: str | None = None) -> Iterator[Record]:
    """A list page or an array stands for its customers; anything else for itself."""
    if isinstance(value, dict) and value.get("object") == "list" and "customers" in value:
        customers = value["customers"]
        if not isinstance(customers, list):
            yield Record(location, error="$.customers: expected an array of customers")
            return
        for index, item in enumerate(customers):
            yield Record(f"{prefix}customers[{index}]", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield Record(f"index {index}" if location == "document" else f"{location} [{index}]",
                         item)
    else:
        yield Record(location, value, text=text)


def _array_records(stream: TextIO, head: str) -> Iterator[Record]:
    """Decode ``[v0, v1, ...]`` element by element, holding one chunk at a time."""
    buffer = ""
    position = 0
    index = 0
    expect_value = True
    eof = False

    def fill() -> bool:
        nonlocal buffer, position, eof
        chunk = stream.read(_CHUNK)
        if not chunk:
            eof = True
            return False
        buffer = buffer[position:] + chunk
        position = 0
        return True

    buffer = head[1:]
    while True:
        while position < len(buffer) and buffer[position] in " \t\r\n":
            position += 1
        if position >= len(buffer):
            if fill():
                continue
            yield Record(f"index {index}", error="invalid JSON: the array is not closed")
            return
        char = buffer[position]
        if char == "]" and (not expect_value or index == 0):
            if buffer[position + 1:].strip() or _skip_blank(stream)[0]:
                yield Record(
                    f"after index {index - 1}",
                    error="invalid JSON: more input after the array's closing ]; give one "
                    "JSON array, or JSON Lines (one customer per line)",
                )
            return
        if char == "," and not expect_value:
            position += 1
            expect_value = True
            continue
        if not expect_value:
            yield Record(f"index {index}", error=f"invalid JSON: expected ',' or ']', got {char!r}")
            return
        try:
            value, end = _decoder.raw_decode(buffer, position)
        except json.JSONDecodeError as exc:
            # The value may continue in the next chunk; only at the end is it truly bad.
            if not eof and fill():
                continue
            yield Record(f"index {index}", error=f"invalid JSON: {exc.msg}")
            return
        except NonFiniteNumber as exc:
            yield Record(f"index {index}", error=f"invalid JSON: {exc}")
            return
        except RecursionError:
            yield Record(f"index {index}", error="invalid JSON: nested too deeply")
            return
        if end == len(buffer) and not eof and fill():
            # A number at the very end of the chunk might be cut short: decode it again.
            continue
        position = end
        yield Record(f"index {index}", value)
        index += 1
        expect_value = False


def _skip_blank(stream: TextIO) -> tuple[str, int]:
    """The first character that is not blank (or "" at the end), and the newlines skipped."""
    newlines = 0
    while True:
        char = stream.read(1)
        if char == "" or not (char.isspace() or char == "\ufeff"):
            return char, newlines
        newlines += char == "\n"
