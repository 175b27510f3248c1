"""Reading and writing customers: the face a service needs.

Engines and sessions, the repository and its async face, the reader, the outcomes of a
write, search filters and pages, webhook ingestion, the transaction runners, and
:class:`~models.Customer` with its errors. Operators' tools live in
:mod:`repository.admin`; Voucherify's API (client, mirror, list semantics) in
:mod:`repository.voucherify`. All SQL of the project lives in this package.
"""

from models.customer import Customer
from models.deprecation import deprecated_names
from models.errors import CustomerValidationError
from models.ids import InvalidCustomerId
from repository.db.engine import (
    make_async_engine,
    make_async_session_factory,
    make_engine,
    make_session_factory,
)
from repository.db.retry import (
    DeadlineExceeded,
    read_in_session,
    read_in_session_async,
    run_in_transaction,
    run_in_transaction_async,
)
from repository.store.async_customers import AsyncCustomerRepository
from repository.store.customers import (
    CustomerRepository,
    DeleteOutcome,
    UpsertOutcome,
    UpsertSummary,
)
from repository.store.lookups import CustomerReader
from repository.store.queries import CustomerFilter, InvalidArgument, InvalidCursor, Page
from repository.webhooks.ingest import IngestResult, ingest_delivery, ingest_delivery_async

__all__ = [  # noqa: RUF022 (grouped by concern, not sorted)
    # engines and sessions
    "make_async_engine",
    "make_async_session_factory",
    "make_engine",
    "make_session_factory",
    # customers
    "AsyncCustomerRepository",
    "CustomerReader",
    "CustomerRepository",
    "DeleteOutcome",
    "UpsertOutcome",
    "UpsertSummary",
    # search: filters and pages
    "CustomerFilter",
    "InvalidArgument",
    "InvalidCursor",
    "Page",
    # webhooks
    "IngestResult",
    "ingest_delivery",
    "ingest_delivery_async",
    # transactions
    "DeadlineExceeded",
    "read_in_session",
    "read_in_session_async",
    "run_in_transaction",
    "run_in_transaction_async",
    # the customer and its errors
    "Customer",
    "CustomerValidationError",
    "InvalidCustomerId",
]

_ADMIN = "repository.admin"
_VOUCHERIFY = "repository.voucherify"

#: Names this package exported before it became the service's face: each still resolves
#: for one release, with a DeprecationWarning, to (the face that holds it, its name there).
_MOVED: dict[str, tuple[str, str]] = {
    name: (_ADMIN, name)
    for name in (
        "AsyncReadRouter", "CONNECTION_DEFAULTS", "DEFAULT_BATCH_SIZE", "DEFAULT_DATABASE_URL",
        "DEFAULT_DELIVERY_TIMEOUT", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_LAG", "ErasureReport",
        "FOLD_LIMIT", "FallbackReason", "GrantReport", "ImportReport", "InvalidRoleName",
        "MAX_METADATA_DEPTH", "MAX_METADATA_TERMS", "MAX_PAGE_SIZE", "MissingPrivilege",
        "NoDatabaseFile", "NotReplicated", "POOLER_HINT", "POOLER_PARAMETER", "ReadRouter",
        "Record", "Rejection", "RetryListener", "StoreStats", "alembic_config",
        "behind_pooler", "commit_position", "count_events", "current_revision",
        "estimate_customer_count", "fold", "forget_customer", "grant_app_role", "head_revision",
        "import_records", "ingest_or_record_refusal", "is_lost_connection", "is_pooler_clash",
        "is_retryable", "iter_customers", "iter_events", "last_applied_at", "list_events",
        "parse_database_url", "prune_events", "read_records", "replay_rejected",
        "require_customer_id", "require_position", "require_role_name", "store_stats",
        "upgrade_to_head",
    )
} | {
    name: (_VOUCHERIFY, name)
    for name in (
        "CustomerList", "DEFAULT_API_URL", "DEFAULT_MAX_WAIT", "DEFAULT_OVERLAP",
        "DEFAULT_RESERVE", "DEFAULT_TIMEOUT", "ApiUnavailable", "AuthenticationFailed",
        "BudgetExhausted", "InvalidListParameter", "ListQuery", "RequestLimitReached",
        "SweepRefused", "TieOverflow", "TotalCache", "VoucherifyClient", "VoucherifyError",
        "count_listed", "decode_customer_value", "default_max_deletions", "list_customers",
        "parse_list_query",
    )
} | {
    "CustomerPage": (_VOUCHERIFY, "CustomerList"),
    "SyncReport": (_VOUCHERIFY, "MirrorReport"),
    "SyncState": (_VOUCHERIFY, "MirrorState"),
    "sync_customers": (_VOUCHERIFY, "mirror_customers"),
    "sync_states": (_VOUCHERIFY, "mirror_states"),
}


__getattr__ = deprecated_names(__name__, _MOVED)
