"""Turning untrusted JSON into a :class:`Customer`, with errors that name the JSON path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from models.customer import Customer
from models.errors import CustomerValidationError, FieldError, describe_value, field_error
from models.storability import plainly_storable, unstorable_values

__all__ = ["parse_customer"]


def parse_customer(raw: Customer | Mapping[str, Any], *, source: str | None = None) -> Customer:
    """Validate ``raw`` (a JSON object as Python values, or a model) into a :class:`Customer`.

    ``source``, the JSON text ``raw`` was parsed from with :func:`loads_json` (or that of a
    document it was part of), lets a quick look at the text stand in for walking every
    value, when the text shows none of what could not be stored.
    """
    if isinstance(raw, Customer):
        return raw
    if not isinstance(raw, Mapping):
        raise CustomerValidationError(
            [FieldError("$", f"expected a customer object, got {describe_value(raw)}")]
        )
    if source is None or not plainly_storable(source):
        problems = list(unstorable_values(raw, ("$",), 0))
        if problems:
            raise CustomerValidationError(problems[:20])
    try:
        return Customer.model_validate(raw)
    except ValidationError as exc:
        raise CustomerValidationError([field_error(e) for e in exc.errors()]) from None
