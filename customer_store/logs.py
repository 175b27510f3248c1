"""Log lines as text (the default) or as one JSON object per line (``serve --log-format json``).

A record may carry structured fields (``extra={"fields": {...}}``): a JSON line holds them
as they are, beside the time, level and logger; a text line shows the message only, as
formatted by its own arguments. Whoever logs decides what the fields hold: the receiver's
per-delivery fields never include a secret, a signature, the body or a personal value.

Tracebacks, in either format, name each exception's type and where it was raised, never
its message: a database error's message quotes the SQL and may quote bound values (a
client's filter, a customer's email), and other messages may quote input as well.
"""

from __future__ import annotations

import json
import logging
import traceback
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

__all__ = [
    "FIELDS",
    "LOG_FORMATS",
    "JsonFormatter",
    "TextFormatter",
    "safe_traceback",
    "use_log_format",
]

LOG_FORMATS = ("text", "json")
#: The attribute of a log record (``extra={FIELDS: {...}}``) that holds its fields.
FIELDS = "fields"
_ExcInfo = (
    tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
)


def safe_traceback(error: BaseException) -> str:
    """The traceback of ``error`` and of the exceptions it was raised from, as Python
    prints it, with each exception's message left out: frames and types only."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and not any(current is seen for seen in chain):
        chain.append(current)
        cause = current.__cause__
        current = cause if cause is not None or current.__suppress_context__ else (
            current.__context__
        )
    lines: list[str] = []
    for item in reversed(chain):
        if lines:
            lines.append("\nwhich led to:\n\n")
        lines.append("Traceback (most recent call last):\n")
        lines.extend(traceback.format_list(traceback.extract_tb(item.__traceback__)))
        kind = type(item)
        lines.append(f"{kind.__module__}.{kind.__qualname__} (message not logged)\n")
    return "".join(lines).rstrip("\n")


class TextFormatter(logging.Formatter):
    """``logging.Formatter`` whose tracebacks are :func:`safe_traceback`'s."""

    def formatException(self, ei: _ExcInfo) -> str:
        return _safe_exc_info(ei)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``, then the
    record's fields if it has any, else its ``message``; ``exception`` with a traceback
    (:func:`safe_traceback`)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            entry.update(fields)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Anything that is not JSON (a datetime, an exception) as its text.
        return json.dumps(entry, ensure_ascii=False, default=str)

    def formatException(self, ei: _ExcInfo) -> str:
        return _safe_exc_info(ei)


def _safe_exc_info(ei: _ExcInfo) -> str:
    return safe_traceback(ei[1]) if ei[1] is not None else "NoneType: None"


def use_log_format(log_format: str) -> None:
    """Format what the root logger's stream handlers write (set up by the command line's
    ``logging.basicConfig``) as ``log_format``: ``"text"`` keeps their line format, with
    tracebacks made safe (:func:`safe_traceback`) either way."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}")
    for handler in logging.getLogger().handlers:
        # Only plain stream handlers: those of a test harness keep their own format.
        if type(handler) is not logging.StreamHandler:
            continue
        if log_format == "json":
            handler.setFormatter(JsonFormatter())
        else:
            current = handler.formatter
            handler.setFormatter(TextFormatter(
                current._fmt if current else None, current.datefmt if current else None
            ))
