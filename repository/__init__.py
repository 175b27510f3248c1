"""Reading and writing customers: the face a service needs.

Engines and sessions, the repository and its async face, the reader, the outcomes of a
write, search filters and pages, webhook ingestion, the transaction runners, and
:class:`~models.Customer` with its errors. Each sub-package has a face of its own for the
rest: :mod:`repository.db` (URLs, errors, replicas, the schema), :mod:`repository.store`,
:mod:`repository.webhooks` (the event log), :mod:`repository.importing`,
:mod:`repository.voucherify` (client, mirror, list semantics) and :mod:`repository.admin`
(erasure, privileges, statistics). All SQL of the project lives in this package.
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

#: Names this package exported before it became the service's face: each still resolves
#: for one release, with a DeprecationWarning, to (the face that holds it, its name there).
_MOVED_TO: dict[str, tuple[str, ...]] = {
    "repository.admin": (
        "ErasureReport", "GrantReport", "InvalidRoleName", "MissingPrivilege",
        "StoreStats", "estimate_customer_count", "forget_customer", "grant_app_role",
        "last_applied_at", "require_customer_id", "require_role_name", "store_stats",
    ),
    "repository.db": (
        "AsyncReadRouter", "CONNECTION_DEFAULTS", "DEFAULT_DATABASE_URL",
        "DEFAULT_MAX_LAG", "FallbackReason", "NoDatabaseFile", "NotReplicated",
        "POOLER_HINT", "POOLER_PARAMETER", "ReadRouter", "RetryListener",
        "alembic_config", "behind_pooler", "commit_position", "current_revision",
        "head_revision", "is_lost_connection", "is_pooler_clash", "is_retryable",
        "parse_database_url", "require_position", "upgrade_to_head",
    ),
    "repository.store": (
        "FOLD_LIMIT", "MAX_METADATA_DEPTH", "MAX_METADATA_TERMS", "MAX_PAGE_SIZE",
        "fold", "iter_customers",
    ),
    "repository.importing": (
        "DEFAULT_BATCH_SIZE", "ImportReport", "Record", "Rejection", "import_records",
        "read_records",
    ),
    "repository.webhooks": (
        "DEFAULT_DELIVERY_TIMEOUT", "DEFAULT_MAX_BODY_BYTES", "count_events",
        "ingest_or_record_refusal", "iter_events", "list_events", "prune_events",
        "replay_rejected",
    ),
    "repository.voucherify": (
        "CustomerList", "DEFAULT_API_URL", "DEFAULT_MAX_WAIT", "DEFAULT_OVERLAP",
        "DEFAULT_RESERVE", "DEFAULT_TIMEOUT", "ApiUnavailable", "AuthenticationFailed",
        "BudgetExhausted", "InvalidListParameter", "ListQuery", "RequestLimitReached",
        "SweepRefused", "TieOverflow", "TotalCache", "VoucherifyClient",
        "VoucherifyError", "count_listed", "decode_customer_value",
        "default_max_deletions", "list_customers", "parse_list_query",
    ),
}
_MOVED: dict[str, tuple[str, str]] = {
    name: (face, name) for face, names in _MOVED_TO.items() for name in names
} | {
    "CustomerPage": ("repository.voucherify", "CustomerList"),
    "SyncReport": ("repository.voucherify", "MirrorReport"),
    "SyncState": ("repository.voucherify", "MirrorState"),
    "sync_customers": ("repository.voucherify", "mirror_customers"),
    "sync_states": ("repository.voucherify", "mirror_states"),
}


__getattr__ = deprecated_names(__name__, _MOVED)
