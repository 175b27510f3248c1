"""Voucherify webhook envelopes (v2024-01-01, and the retired v2018-08-01), parsed from bytes.

Parsing tells three things apart: a body that cannot be recorded at all (not JSON, no
event id: :class:`MalformedDelivery`), an envelope that can be recorded but not processed
(``Envelope.problem``), and a good envelope.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from models.ids import customer_id_problem
from models.json_decoding import NotUtf8, loads_json, utf8_json_text
from models.storability import text_problem
from models.wire import parse_datetime

__all__ = [
    "CUSTOMER_CHANGE_EVENTS",
    "Envelope",
    "MalformedDelivery",
    "UnsupportedEncoding",
    "parse_envelope",
]

#: The events whose ``data.customer`` is a full customer that replaces the stored one.
CUSTOMER_CHANGE_EVENTS = frozenset({"customer.created", "customer.updated", "customer.deleted"})

#: Longest event id kept; a longer one is treated as malformed.
MAX_EVENT_ID = 255


class MalformedDelivery(ValueError):
    """The body cannot be recorded: it is not a JSON object with an event id."""


class UnsupportedEncoding(MalformedDelivery):
    """The body is JSON in UTF-16 or UTF-32, not UTF-8: refused before anything is stored,
    since erasure could not find a customer's data in it (the receiver answers 415)."""


@dataclass(frozen=True)
class Envelope:
    event_id: str
    envelope_id: str | None
    event_type: str | None
    project_id: str | None
    created_at: datetime | None
    data: Any
    legacy: bool
    #: Why the envelope cannot be processed (recorded as a rejection), or ``None``.
    problem: str | None = None
    #: The body as text: the customer's validation looks at it instead of walking every
    #: value (``source`` of :func:`models.validation.parse_customer`).
    text: str | None = None

    @property
    def customer(self) -> Any:
        return self.data.get("customer") if isinstance(self.data, dict) else None

    @property
    def customer_id(self) -> str | None:
        customer = self.customer
        value = customer.get("id") if isinstance(customer, dict) else None
        return value if customer_id_problem(value) is None else None


def parse_envelope(body: bytes) -> Envelope:
    """Read a delivery's raw body."""
    try:
        # Decoded once: the customer's validation reads the text.
        text = utf8_json_text(body)
        document = loads_json(text)
    except NotUtf8 as exc:
        raise UnsupportedEncoding(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise MalformedDelivery(f"the body is not JSON: {exc.msg}") from None
    except UnicodeDecodeError:
        raise MalformedDelivery("the body is not UTF-8 text") from None
    except RecursionError:
        raise MalformedDelivery("the body is nested too deeply") from None
    except ValueError as exc:
        raise MalformedDelivery(f"the body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise MalformedDelivery("the body is not a JSON object")
    legacy = document.get("object") == "event"
    event = document.get("event")
    if legacy:
        event_id, event_type, created = document.get("id"), document.get("type"), "created_at"
        source = document
    elif isinstance(event, dict):
        event_id, event_type, created = event.get("id"), event.get("type"), "created_at"
        source = event
        if event_id is None:
            event_id = document.get("id")
    else:
        raise MalformedDelivery("no event: $.event is missing and $.object is not \"event\"")
    if not isinstance(event_id, str) or not event_id or len(event_id) > MAX_EVENT_ID:
        raise MalformedDelivery(f"no usable event id (a string of 1 to {MAX_EVENT_ID} chars)")
    if text_problem(event_id):
        raise MalformedDelivery(f"the event id {text_problem(event_id)}")

    envelope_id = document.get("webhook_id") if legacy else document.get("id")
    project_id = document.get("project_id")
    problems: list[str] = []
    prefix = "$" if legacy else "$.event"
    if not isinstance(event_type, str) or text_problem(event_type):
        problems.append(f"{prefix}.type: expected a string")
        event_type = None
    created_at = None
    try:
        created_at = parse_datetime(source.get(created))
    except (TypeError, ValueError) as exc:
        problems.append(f"{prefix}.created_at: {str(exc) or 'expected a date-time string'}")
    data = document.get("data")
    if not isinstance(data, dict):
        problems.append("$.data: expected an object")
    return Envelope(
        event_id=event_id,
        envelope_id=_storable(envelope_id),
        event_type=event_type,
        project_id=_storable(project_id),
        created_at=created_at,
        data=data,
        legacy=legacy,
        problem="; ".join(problems) or None,
        text=text,
    )


def _storable(value: Any) -> str | None:
    """``value`` if it is text a column can hold; bookkeeping fields are dropped otherwise."""
    return value if isinstance(value, str) and text_problem(value) is None else None
