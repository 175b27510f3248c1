"""Log lines as text (the default) or as one JSON object per line (``serve --log-format json``).

A record may carry structured fields (``extra={"fields": {...}}``): a JSON line holds them
as they are, beside the time, level and logger; a text line shows the message only, as
formatted by its own arguments. Whoever logs decides what the fields hold: the receiver's
per-delivery fields never include a secret, a signature, the body or a personal value.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ["FIELDS", "LOG_FORMATS", "JsonFormatter", "use_log_format"]

LOG_FORMATS = ("text", "json")
#: The attribute of a log record (``extra={FIELDS: {...}}``) that holds its fields.
FIELDS = "fields"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``, then the
    record's fields if it has any, else its ``message``; ``exception`` with a traceback."""

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


def use_log_format(log_format: str) -> None:
    """Format what the root logger's stream handlers write (set up by the command line's
    ``logging.basicConfig``) as ``log_format``: ``"text"`` leaves them as they are."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}")
    if log_format == "text":
        return
    for handler in logging.getLogger().handlers:
        # Only plain stream handlers: those of a test harness keep their own format.
        if type(handler) is logging.StreamHandler:
            handler.setFormatter(JsonFormatter())
