"""The documented customer shape (pydantic) and the relational tables (SQLAlchemy).

No I/O happens here: the repository package reads and writes these.
"""

from models.base import Base
from models.customer import Customer
from models.deprecation import deprecated_names
from models.errors import CustomerValidationError, FieldError
from models.events import EventOutcome, WebhookEventRow
from models.ids import InvalidCustomerId, customer_id_problem, require_customer_id
from models.json_decoding import loads_json
from models.mirror import MirrorListedRow, MirrorStateRow
from models.signature import (
    SIGNATURE_HEADER,
    SignatureMatch,
    compact_json,
    parse_secrets,
    sign,
    verify_signature,
)
from models.tables import (
    CustomerAddressRow,
    CustomerRow,
    CustomerTombstoneRow,
    LoyaltyCampaignRow,
    ReferralEntryRow,
)
from models.validation import parse_customer
from models.webhook import (
    CUSTOMER_CHANGE_EVENTS,
    Envelope,
    MalformedDelivery,
    UnsupportedEncoding,
    parse_envelope,
)
from models.wire import INT64_MAX, INT64_MIN, format_datetime, json_text, parse_datetime

__all__ = [
    "CUSTOMER_CHANGE_EVENTS",
    "INT64_MAX",
    "INT64_MIN",
    "SIGNATURE_HEADER",
    "Base",
    "Customer",
    "CustomerAddressRow",
    "CustomerRow",
    "CustomerTombstoneRow",
    "CustomerValidationError",
    "Envelope",
    "EventOutcome",
    "FieldError",
    "InvalidCustomerId",
    "LoyaltyCampaignRow",
    "MalformedDelivery",
    "MirrorListedRow",
    "MirrorStateRow",
    "ReferralEntryRow",
    "SignatureMatch",
    "UnsupportedEncoding",
    "WebhookEventRow",
    "compact_json",
    "customer_id_problem",
    "format_datetime",
    "json_text",
    "loads_json",
    "parse_customer",
    "parse_datetime",
    "parse_envelope",
    "parse_secrets",
    "require_customer_id",
    "sign",
    "verify_signature",
]

#: Renamed: the Voucherify mirror's tables are no longer called "sync" in the code.
__getattr__ = deprecated_names(__name__, {
    "SyncListedRow": ("models.mirror", "MirrorListedRow"),
    "SyncStateRow": ("models.mirror", "MirrorStateRow"),
})
