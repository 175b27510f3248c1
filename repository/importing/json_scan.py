"""Finding where one JSON value ends in a stream of text, without decoding it first.

:class:`Window` reads the stream in chunks and knows the line, column and byte of what it
reads next. :func:`read_value` takes the text of one value up to a delimiter (the ``,`` or
``]`` after an array element) and decodes that text alone, so that a malformed value costs
that value only. Both are linear in the input: every character is scanned once, whatever
the chunks, and only the current value's text is held.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from models.json_decoding import FINITE_JSON_DECODER, NonFiniteNumber, loads_json

__all__ = ["Piece", "Position", "ValueScanner", "Window", "read_value"]

_CHUNK = 1 << 16
_BLANK = re.compile(r"[ \t\n\r]*")
# What a string holds up to its closing quote, a line break, or a backslash that ends the
# text: escapes are taken two characters at a time.
_STRING_BODY = r'[^"\\\n\r]*+(?:\\[^\n\r][^"\\\n\r]*+)*+'
_STRING_REST = re.compile(_STRING_BODY)


@functools.cache
def _skipping(stops: str) -> re.Pattern[str]:
    """Text up to the next of ``stops`` outside strings, or the next unfinished string."""
    return re.compile(f'(?:[^"{stops}]++|"{_STRING_BODY}")*+')


_NESTED = _skipping(r"\]\[{}")
_CLOSER = {"[": "]", "{": "}"}


@dataclass(frozen=True)
class Position:
    """Where a character is: 1-based line and column (in characters), 0-based byte."""

    byte: int = 0
    line: int = 1
    column: int = 1

    def after(self, text: str) -> Position:
        """The position just after ``text``, read from here."""
        newlines = text.count("\n")
        column = len(text) - text.rfind("\n") if newlines else self.column + len(text)
        return Position(self.byte + _utf8_length(text), self.line + newlines, column)


def _utf8_length(text: str) -> int:
    if text.isascii():
        return len(text)
    try:
        # Undecodable input bytes were read as U+DC80..U+DCFF: this counts them as one byte.
        return len(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return len(text.encode("utf-8", "surrogatepass"))


class Window:
    """The unread part of a stream: ``text[pos:]``, with the position of ``text[pos]``.

    Callers consume (:meth:`take`) before they ask for :meth:`more`, so that ``text`` holds
    about one chunk; only :meth:`peek_line` lets it grow, up to the limit it is given.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.text = ""
        self.pos = 0
        self.at = Position()
        self.eof = False

    def more(self) -> bool:
        """Read the next chunk; ``False`` at the end of the input."""
        chunk = "" if self.eof else self.stream.read(_CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.text = self.text[self.pos:] + chunk
        self.pos = 0
        return True

    def take(self, end: int) -> str:
        """Consume ``text[pos:end]`` and return it."""
        taken = self.text[self.pos:end]
        self.at = self.at.after(taken)
        self.pos = end
        return taken

    def skip_blank(self, pattern: re.Pattern[str] = _BLANK) -> str:
        """Consume blanks; the next character, or "" at the end of the input."""
        while True:
            end = pattern.match(self.text, self.pos).end()  # type: ignore[union-attr]
            self.take(end)
            if end < len(self.text):
                return self.text[end]
            if not self.more():
                return ""

    def peek_line(self, start: int, limit: int) -> str | None:
        """``text[start:]`` up to and with its first "\\n", reading more as needed but
        consuming nothing; ``None`` if that is longer than ``limit``."""
        searched = start
        while True:
            newline = self.text.find("\n", searched)
            if newline >= 0:
                return self.text[start:newline + 1] if newline + 1 - start <= limit else None
            searched = len(self.text)
            if searched - start > limit:
                return None
            if self.eof or not self._grow():
                return self.text[start:]

    def peek_nonblank(self, start: int, limit: int) -> int | None:
        """The index of the first non-blank character from ``start`` on, reading more as
        needed but consuming nothing: ``len(text)`` at the end of the input, ``None`` when
        more than ``limit`` blanks come first."""
        end = start
        while True:
            end = _BLANK.match(self.text, end).end()  # type: ignore[union-attr]
            if end < len(self.text) or self.eof or not self._grow():
                return end
            if end - start > limit:
                return None

    def lines(self) -> Iterator[str]:
        """The rest of the input, line by line, each with its "\\n"; the window is done."""
        rest, self.text, self.pos = self.text[self.pos:], "", 0
        *whole, partial = rest.split("\n")
        for line in whole:
            yield line + "\n"
        if not self.eof:
            partial += self.stream.readline()
        if partial:
            yield partial
        if not self.eof:
            yield from self.stream

    def _grow(self) -> bool:
        chunk = self.stream.read(_CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.text += chunk
        return True

    def describe(self, position: Position) -> str:
        """``byte B (line L, column C)``: where to look in the file."""
        byte = position.byte
        # Text streams turn "\r\n" into "\n"; when every line break was "\r\n", count both.
        if getattr(self.stream, "newlines", None) == "\r\n":
            byte += position.line - 1
        return f"byte {byte} (line {position.line}, column {position.column})"


class ValueScanner:
    """Follows strings and brackets to find the delimiter that ends a value.

    It is resumable: :meth:`scan` may be given the text in pieces. Strings end at their
    closing quote, or at a line break (which no JSON string holds, so the quote is missing:
    one line is lost, not the rest of the input). A closing bracket that does not match
    closes the innermost bracket of its kind and those opened inside it, or all that are
    open if none is of its kind: the value then ends at the next delimiter, and what
    follows it is read again.
    """

    def __init__(self, delimiters: str) -> None:
        self.delimiters = delimiters
        self._top = _skipping(r"\]\[{}" + re.escape(delimiters))
        self.expected: list[str] = []  # closing brackets, innermost last
        self.in_string = False
        self._escape = False
        #: Something was wrong on the way: a string cut by a line break, a bracket mismatch.
        self.broken = False

    def scan(self, text: str, start: int) -> int:
        """The index of the delimiter that ends the value, or -1 if it goes on past text."""
        i, n = start, len(text)
        while i < n:
            if self.in_string:
                i = self._string(text, i)
                continue
            i = (self._top if not self.expected else _NESTED).match(text, i).end()  # type: ignore[union-attr]
            if i == n:
                return -1
            char = text[i]
            if char == '"':
                self.in_string = True
            elif char in "[{":
                self.expected.append(_CLOSER[char])
            elif self.expected and char == self.expected[-1]:
                self.expected.pop()
            elif self.expected:
                self.broken = True
                cut = _last(self.expected, char) if char in self.expected else 0
                del self.expected[cut:]
            elif char in self.delimiters:
                return i
            else:
                self.broken = True  # a closing bracket nothing opened
            i += 1
        return -1

    def _string(self, text: str, i: int) -> int:
        if self._escape:
            self._escape = False
            if text[i] not in "\r\n":
                i += 1
        i = _STRING_REST.match(text, i).end()  # type: ignore[union-attr]
        if i == len(text):
            return i
        char = text[i]
        if char == "\\" and i + 1 == len(text):
            self._escape = True  # the escaped character is in the next piece
            return i + 1
        self.in_string = False
        if char == '"':
            return i + 1
        self.broken = True  # a line break (perhaps after a backslash): the quote is missing
        return i + 1 if char == "\\" else i

    def unclosed(self) -> str:
        """What is left open, for a message."""
        if self.in_string:
            return "a string is not closed"
        count = len(self.expected)
        return f"{count} bracket{'s' if count > 1 else ''} not closed" if count else ""


def _last(items: list[str], item: str) -> int:
    return len(items) - 1 - items[::-1].index(item)


@dataclass(frozen=True)
class Piece:
    """One value read by :func:`read_value`: its value, or why it is not one."""

    start: Position
    #: The delimiter that ended it, not yet consumed; "" when the input ended first.
    delimiter: str
    value: Any = None
    #: Why the text is not one JSON value (with where, in the message).
    error: str | None = None
    #: No text at all before the delimiter.
    empty: bool = False
    #: The input ended inside it (a string or brackets left open): what was left open.
    unclosed: str = ""
    #: Where its text ends, when it is not a value.
    end: Position | None = None


def read_value(window: Window, delimiters: str) -> Piece:
    """Read one value up to (not through) the next of ``delimiters`` outside it."""
    if not window.skip_blank():
        return Piece(window.at, "", empty=True)
    start, text, pos = window.at, window.text, window.pos
    if text[pos] in delimiters:
        return Piece(start, text[pos], empty=True)
    # Mostly the value is whole in the chunk: decode it in place, and scan nothing.
    try:
        value, end = FINITE_JSON_DECODER.raw_decode(text, pos)
    except (ValueError, RecursionError):
        pass
    else:
        after = _BLANK.match(text, end).end()  # type: ignore[union-attr]
        if after < len(text) and text[after] in delimiters:
            window.take(after)
            return Piece(start, text[after], value)
    scanner = ValueScanner(delimiters)
    pieces: list[str] = []
    while True:
        end = scanner.scan(window.text, window.pos)
        if end >= 0:
            pieces.append(window.take(end))
            delimiter = window.text[end]
            break
        pieces.append(window.take(len(window.text)))
        if not window.more():
            delimiter = ""
            if scanner.unclosed():
                return Piece(start, "", unclosed=scanner.unclosed())
            break
    source = "".join(pieces)
    pieces.clear()  # one copy of a large value, not two, while it is decoded
    return _decoded(source, start, delimiter, window)


def _decoded(source: str, start: Position, delimiter: str, window: Window) -> Piece:
    try:
        return Piece(start, delimiter, loads_json(source))
    except NonFiniteNumber as exc:
        message, position = str(exc), start
    except RecursionError:
        message, position = "nested too deeply", start
    except ValueError as exc:
        message = getattr(exc, "msg", str(exc))
        position = start.after(source[: getattr(exc, "pos", 0)])
    error = f"{message} at {window.describe(position)}"
    return Piece(start, delimiter, error=error, end=start.after(source.rstrip()))
