"""Reading customer records from files: JSON Lines, a JSON array, or Voucherify list pages.

Parsing never raises for bad data. A line that is not JSON becomes a :class:`Record` with
an ``error``, so that one bad line costs one record, not the whole file; so does an array
element, which is found by its brackets and decoded alone (:mod:`repository.importing.json_scan`).
Where the input cannot be followed any further (a string or bracket still open at the end,
more input after a multi-line document), the last record is an error with ``stopped`` set,
saying where reading stopped. Memory holds about one chunk and the current record, however
large the file; a list page over several lines has its customers read one at a time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from models.json_decoding import FINITE_JSON_DECODER, NonFiniteNumber, loads_json
from repository.importing.json_scan import Piece, Position, ValueScanner, Window, read_value

__all__ = ["Record", "decode_line", "read_records"]

#: The first line (in characters) is read whole to tell the forms apart when it is at most
#: this long; a longer one is read as a document or an array, piece by piece.
_PEEK_LIMIT = 1 << 20
_LEADING_BLANK = re.compile(r"[\s\ufeff]*")
_SPACES = re.compile(r"[ \t\r]*")
_NOT_JSON = object()


@dataclass(frozen=True)
class Record:
    """One input record: where it came from, and its value or why it could not be read."""

    location: str
    value: Any = None
    error: str | None = None
    #: The JSON text ``value`` was parsed from, when it is exactly one line of input.
    text: str | None = None
    #: Reading stopped at this error: nothing after it was read, let alone imported.
    stopped: bool = False
    #: A line of JSON Lines not decoded yet (``read_records(..., decode_lines=False)``):
    #: :func:`decode_line` gives the records it holds.
    undecoded: bool = False


def read_records(stream: TextIO, *, decode_lines: bool = True) -> Iterator[Record]:
    """Yield the customer records in ``stream``, whichever of the three forms it has.

    ``decode_lines=False`` leaves each line of JSON Lines as its text (``undecoded``), for
    a consumer that decodes them elsewhere (another process) with :func:`decode_line`.
    """
    window = Window(stream)
    first = window.skip_blank(_LEADING_BLANK)
    lines = _line_records if decode_lines else _undecoded_lines
    if first not in ("[", "{"):
        if first:
            yield from lines(window.lines(), start=window.at.line)
        return
    line = window.peek_line(window.pos, _PEEK_LIMIT)
    if line is not None:
        value = _decoded_or_not(line)
        if value is not _NOT_JSON:
            after = window.peek_nonblank(window.pos + len(line), _PEEK_LIMIT)
            if first == "[" and after == len(window.text):
                yield from _expand(value, "document", "")  # an array on one line
            else:
                yield from lines(window.lines(), start=window.at.line)
            return
        if first == "{" and not _opens_document(window, line):
            yield from lines(window.lines(), start=window.at.line)
            return
    yield from _array(window) if first == "[" else _document(window)


def _decoded_or_not(line: str) -> Any:
    try:
        return loads_json(line)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _opens_document(window: Window, line: str) -> bool:
    """Whether a first line that is not JSON begins one document over several lines.

    It must leave brackets open with every string closed (a JSON string never spans lines),
    and the second line must go on with it: in JSON Lines whose first line is cut short or
    mangled, the second line starts a value right where the first expects a ``,`` or ``}``.
    """
    scanner = ValueScanner("}")
    if scanner.scan(line.rstrip("\r\n"), 1) >= 0 or scanner.in_string or scanner.broken:
        return False
    second = window.peek_nonblank(window.pos + len(line), _PEEK_LIMIT)
    if second is None or second == len(window.text):
        return True
    second_line = window.peek_line(second, _PEEK_LIMIT)
    if second_line is None:
        return True
    text = window.text[window.pos:second + len(second_line)]
    try:
        FINITE_JSON_DECODER.raw_decode(text)
    except json.JSONDecodeError as exc:
        return exc.pos > second - window.pos
    except (ValueError, RecursionError):
        pass  # a number out of range or deep nesting: the syntax holds so far
    return True


def _line_records(lines: Iterable[str], *, start: int) -> Iterator[Record]:
    for record in _undecoded_lines(lines, start=start):
        yield from decode_line(record)


def _undecoded_lines(lines: Iterable[str], *, start: int) -> Iterator[Record]:
    for number, line in enumerate(lines, start=start):
        if line.strip():
            yield Record(f"line {number}", text=line, undecoded=True)


def decode_line(record: Record) -> Iterator[Record]:
    """The records a line of JSON Lines holds (an ``undecoded`` record): its customer, the
    customers of a list page or an array, or why it cannot be read; any other record as is."""
    if not record.undecoded:
        yield record
        return
    location, line = record.location, record.text or ""
    try:
        value = loads_json(line)
    except json.JSONDecodeError as exc:
        yield Record(location, error=f"invalid JSON: {exc.msg} at column {exc.colno}")
        return
    except NonFiniteNumber as exc:
        yield Record(location, error=f"invalid JSON: {exc}")
        return
    except RecursionError:
        yield Record(location, error="invalid JSON: nested too deeply")
        return
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


def _array(window: Window) -> Iterator[Record]:
    """``[v0, v1, ...]``, the window at its ``[``: each element read and decoded alone."""
    start = window.at
    window.take(window.pos + 1)
    closed = yield from _elements(window, lambda index: f"index {index}")
    if closed:
        yield from _after(window, start, "array's closing ]")


def _elements(window: Window, name: Callable[[int], str]) -> Generator[Record, None, bool]:
    """The records of an array whose ``[`` was just read; whether it was closed (if not,
    the last record says where reading stopped)."""
    index = 0
    while True:
        piece = read_value(window, ",]")
        if piece.unclosed:
            why = f"the input ends inside this element ({piece.unclosed})"
            yield _stop(window, name(index), piece.start, why, index)
            return False
        if piece.error is not None:
            # Where brackets were mended, the text skipped can hold more than one element.
            skipped = f"skipped up to {window.describe(piece.end or piece.start)}"
            yield Record(name(index), error=f"invalid JSON: {piece.error}; {skipped}")
        elif not piece.empty:
            yield Record(name(index), piece.value)
        elif piece.delimiter == "," or (piece.delimiter == "]" and index > 0):
            where = window.describe(piece.start)
            yield Record(name(index), error=f"invalid JSON: expected a value at {where}")
        if piece.delimiter == "":
            why = "the input ends before the array's closing ]"
            if piece.empty:
                yield _stop(window, name(index), window.at, why, index)
            else:
                yield _stop(window, f"after {name(index)}", window.at, why, index + 1)
            return False
        window.take(window.pos + 1)
        if piece.delimiter == "]":
            return True
        index += 1


def _document(window: Window) -> Iterator[Record]:
    """One object over several lines (or one very long line), the window at its ``{``.

    A list page's customers are read one by one when ``"object": "list"`` comes before
    them, as in Voucherify's responses; the other members are small, and held.
    """
    start = window.at
    window.take(window.pos + 1)
    members: dict[str, Any] = {}
    streamed = False
    while True:
        key = read_value(window, ":,}")
        if key.empty and key.delimiter == "}" and not members and not streamed:
            window.take(window.pos + 1)
            break
        if key.unclosed or not key.delimiter:
            yield _stop(window, "document", key.start, "the input ends inside the document")
            return
        if key.delimiter != ":" or not isinstance(key.value, str):
            yield _stop(window, "document", key.start, "expected a member name and ':' here")
            return
        window.take(window.pos + 1)
        if key.value == "customers" and members.get("object") == "list" and (
            window.skip_blank() == "["
        ):
            window.take(window.pos + 1)
            if not (yield from _elements(window, lambda index: f"customers[{index}]")):
                return
            streamed = True
            value = read_value(window, ",}")
            if not value.empty or not value.delimiter:
                why = "expected ',' or '}' here" if value.delimiter else (
                    "the input ends inside the document")
                yield _stop(window, "document", value.start, why)
                return
        else:
            value = read_value(window, ",}")
            problem = _problem(window, value)
            if problem:
                yield _stop(window, "document", value.start, problem)
                return
            members[key.value] = value.value
        window.take(window.pos + 1)
        if value.delimiter == "}":
            break
    if not streamed:
        on_one_line = window.at.line == start.line
        location = f"line {start.line}" if on_one_line else "document"
        yield from _expand(members, location, f"{location} " if on_one_line else "")
    yield from _after(window, start, "document's closing }")


def _after(window: Window, start: Position, what: str) -> Iterator[Record]:
    """What may follow an array or a document: nothing, unless it was all on one line;
    then it was the first of JSON Lines, and the next lines are read as such."""
    if window.at.line != start.line:
        if window.skip_blank():
            why = f"more input after the {what}; give one JSON document, or JSON Lines"
            yield _stop(window, f"line {window.at.line}", window.at, why)
        return
    if window.skip_blank(_SPACES) not in ("\n", ""):
        yield Record(f"line {start.line}", error=f"invalid JSON: more input after the {what} "
                     f"at {window.describe(window.at)}")
    while (newline := window.text.find("\n", window.pos)) < 0:
        window.take(len(window.text))
        if not window.more():
            break
    else:
        window.take(newline + 1)
    yield from _line_records(window.lines(), start=window.at.line)


def _problem(window: Window, value: Piece) -> str | None:
    """Why a member of a document is not a value, if it is not."""
    if value.error is not None:
        return f"invalid JSON: {value.error}"
    if value.unclosed or not value.delimiter:
        return "the input ends inside the document"
    if value.empty:
        return f"expected a value at {window.describe(value.start)}"
    return None


def _stop(
    window: Window, location: str, position: Position, why: str, index: int | None = None
) -> Record:
    """The last record: why reading could go no further, and where it stopped."""
    where = window.describe(position)
    if index is not None:
        where += f", element index {index}"
    prefix = "" if why.startswith("invalid JSON") else "invalid JSON: "
    return Record(
        location,
        error=f"{prefix}{why}; reading stopped at {where}: the rest of the input was not imported",
        stopped=True,
    )
