"""The one rule for customer ids, for every way in and out: import, webhooks, sync and the
library's payloads store an id only if it keeps this rule, and ``get`` and ``forget`` take
any id that keeps it (what can be stored can be read and forgotten).

Voucherify documents a customer's ``id`` as a string it assigns (``cust_…`` in every
example, with no published grammar), so the store takes any id a key column can hold, as
sent: 1 to 255 characters, at most 1,000 bytes of UTF-8 (a B-tree entry's bound, with room
for the keys it is part of), no U+0000 and no lone surrogate. It does not trim or reshape
it: an id with blanks around it is another id.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, StringConstraints, TypeAdapter, ValidationError

from models.errors import field_error
from models.storability import text_problem
from models.wire import MaxBytes

__all__ = [
    "MAX_CUSTOMER_ID_BYTES",
    "MAX_CUSTOMER_ID_LENGTH",
    "CustomerId",
    "InvalidCustomerId",
    "customer_id_problem",
    "require_customer_id",
]

#: The longest id kept, in characters and in bytes of UTF-8.
MAX_CUSTOMER_ID_LENGTH = 255
MAX_CUSTOMER_ID_BYTES = 1000


def _storable(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


#: A customer id, as the customer model declares it.
CustomerId = Annotated[
    str,
    StringConstraints(strict=True, min_length=1, max_length=MAX_CUSTOMER_ID_LENGTH),
    MaxBytes(MAX_CUSTOMER_ID_BYTES),
    AfterValidator(_storable),
]

_ADAPTER: TypeAdapter[str] = TypeAdapter(CustomerId)


class InvalidCustomerId(ValueError):
    """A value that no stored customer can have as its id."""


def customer_id_problem(value: object) -> str | None:
    """Why ``value`` cannot be a customer's id, or ``None`` if it can."""
    try:
        _ADAPTER.validate_python(value)
    except ValidationError as exc:
        return field_error({**exc.errors()[0], "loc": ()}).message
    return None


def require_customer_id(value: str) -> None:
    """Raise :class:`InvalidCustomerId` (naming what is wrong, not the whole value) unless
    ``value`` can be a customer's id."""
    problem = customer_id_problem(value)
    if problem is not None:
        raise InvalidCustomerId(f"not a customer id: {problem}")
