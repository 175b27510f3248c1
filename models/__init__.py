"""The documented customer shape (pydantic) and the relational tables (SQLAlchemy).

No I/O happens here: the repository package reads and writes these.
"""

from models.base import Base
from models.customer import Customer
from models.events import EventOutcome, WebhookEventRow
from models.tables import (
    CustomerAddressRow,
    CustomerRow,
    CustomerTombstoneRow,
    LoyaltyCampaignRow,
    ReferralEntryRow,
)
from models.validation import CustomerValidationError, FieldError, parse_customer

__all__ = [
    "Base",
    "Customer",
    "CustomerAddressRow",
    "CustomerRow",
    "CustomerTombstoneRow",
    "CustomerValidationError",
    "EventOutcome",
    "FieldError",
    "LoyaltyCampaignRow",
    "ReferralEntryRow",
    "WebhookEventRow",
    "parse_customer",
]
