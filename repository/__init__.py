"""Reading and writing customers: the mapping between the shape and the rows, the
queries, bulk import, webhook ingestion, sync from Voucherify's API, administration and
the migrations. All SQL of the project lives here.

This is the public surface: a service, an operator script and the project's own entry
points (the CLI, the receiver) import from here only. Names are grouped by concern.
"""

from repository.admin.erasure import (
    ErasureReport,
    InvalidCustomerId,
    forget_customer,
    require_customer_id,
)
from repository.admin.privileges import (
    GrantReport,
    InvalidRoleName,
    MissingPrivilege,
    grant_app_role,
    require_role_name,
)
from repository.admin.stats import StoreStats, estimate_customer_count, last_applied_at, store_stats
from repository.db.database_urls import CONNECTION_DEFAULTS, parse_database_url
from repository.db.engine import (
    DEFAULT_DATABASE_URL,
    POOLER_PARAMETER,
    NoDatabaseFile,
    behind_pooler,
    make_async_engine,
    make_async_session_factory,
    make_engine,
    make_session_factory,
)
from repository.db.errors import POOLER_HINT, first_line, is_pooler_clash, with_pooler_hint
from repository.db.replicas import (
    DEFAULT_MAX_LAG,
    AsyncReadRouter,
    FallbackReason,
    ReadRouter,
    commit_position,
    require_position,
)
from repository.db.retry import (
    DeadlineExceeded,
    NotReplicated,
    RetryListener,
    is_lost_connection,
    is_retryable,
    read_in_session,
    read_in_session_async,
    run_in_transaction,
    run_in_transaction_async,
)
from repository.db.schema import alembic_config, current_revision, head_revision, upgrade_to_head
from repository.importing.importer import (
    DEFAULT_BATCH_SIZE,
    ImportReport,
    Rejection,
    import_records,
)
from repository.importing.records import Record, read_records
from repository.store.async_customers import AsyncCustomerRepository
from repository.store.customers import (
    CustomerRepository,
    DeleteOutcome,
    UpsertOutcome,
    UpsertSummary,
    iter_customers,
)
from repository.store.lookups import CustomerReader
from repository.store.mapping import FOLD_LIMIT, fold
from repository.store.queries import (
    MAX_METADATA_DEPTH,
    MAX_METADATA_TERMS,
    MAX_PAGE_SIZE,
    CustomerFilter,
    InvalidArgument,
    InvalidCursor,
    Page,
)
from repository.store.reads import decode_customer_value
from repository.voucherify.client import (
    DEFAULT_API_URL,
    DEFAULT_MAX_WAIT,
    DEFAULT_RESERVE,
    DEFAULT_TIMEOUT,
    ApiUnavailable,
    AuthenticationFailed,
    BudgetExhausted,
    CustomerPage,
    RequestLimitReached,
    VoucherifyClient,
    VoucherifyError,
)
from repository.voucherify.list_semantics import (
    CustomerList,
    InvalidListParameter,
    ListQuery,
    TotalCache,
    count_listed,
    list_customers,
    parse_list_query,
)
from repository.voucherify.mirror import DEFAULT_OVERLAP, SyncReport, TieOverflow, sync_customers
from repository.voucherify.mirror_state import SyncState, sync_states
from repository.voucherify.sweep import SweepRefused, default_max_deletions
from repository.webhooks.event_log import (
    count_events,
    iter_events,
    list_events,
    prune_events,
    replay_rejected,
)
from repository.webhooks.ingest import (
    DEFAULT_DELIVERY_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    IngestResult,
    ingest_delivery,
    ingest_delivery_async,
    ingest_or_record_refusal,
)

__all__ = [  # noqa: RUF022 (grouped by concern, not sorted)
    # engines and sessions
    "DEFAULT_DATABASE_URL",
    "make_async_engine",
    "make_async_session_factory",
    "make_engine",
    "make_session_factory",
    # database URLs (libpq's multi-host spelling too) and connection defaults
    "CONNECTION_DEFAULTS",
    "parse_database_url",
    # behind a transaction pooler (?pgbouncer=true)
    "POOLER_HINT",
    "POOLER_PARAMETER",
    "NoDatabaseFile",
    "behind_pooler",
    "is_pooler_clash",
    # what a person reads of a database error: one line, the pooler hint where it applies
    "first_line",
    "with_pooler_hint",
    # reads on a streaming standby (read replicas)
    "DEFAULT_MAX_LAG",
    "AsyncReadRouter",
    "FallbackReason",
    "ReadRouter",
    "commit_position",
    "require_position",
    # customers
    "AsyncCustomerRepository",
    "CustomerReader",
    "CustomerRepository",
    "iter_customers",
    "DeleteOutcome",
    "UpsertOutcome",
    "UpsertSummary",
    # search
    "FOLD_LIMIT",
    "MAX_METADATA_DEPTH",
    "MAX_METADATA_TERMS",
    "MAX_PAGE_SIZE",
    "CustomerFilter",
    "InvalidArgument",
    "InvalidCursor",
    "Page",
    "fold",
    # import
    "DEFAULT_BATCH_SIZE",
    "ImportReport",
    "Record",
    "Rejection",
    "import_records",
    "read_records",
    # webhooks
    "DEFAULT_DELIVERY_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "IngestResult",
    "count_events",
    "ingest_delivery",
    "ingest_or_record_refusal",
    "ingest_delivery_async",
    "iter_events",
    "list_events",
    "prune_events",
    "replay_rejected",
    # sync from Voucherify's API
    "DEFAULT_API_URL",
    "DEFAULT_MAX_WAIT",
    "DEFAULT_OVERLAP",
    "DEFAULT_RESERVE",
    "DEFAULT_TIMEOUT",
    "ApiUnavailable",
    "AuthenticationFailed",
    "BudgetExhausted",
    "CustomerPage",
    "RequestLimitReached",
    "SweepRefused",
    "SyncReport",
    "SyncState",
    "TieOverflow",
    "VoucherifyClient",
    "VoucherifyError",
    "default_max_deletions",
    "sync_customers",
    "sync_states",
    # the Voucherify-compatible read API
    "CustomerList",
    "decode_customer_value",
    "InvalidListParameter",
    "ListQuery",
    "TotalCache",
    "count_listed",
    "list_customers",
    "parse_list_query",
    # transactions
    "DeadlineExceeded",
    "NotReplicated",
    "RetryListener",
    "is_retryable",
    "is_lost_connection",
    "read_in_session",
    "read_in_session_async",
    "run_in_transaction",
    "run_in_transaction_async",
    # administration
    "ErasureReport",
    "GrantReport",
    "InvalidCustomerId",
    "InvalidRoleName",
    "MissingPrivilege",
    "StoreStats",
    "estimate_customer_count",
    "forget_customer",
    "grant_app_role",
    "last_applied_at",
    "require_customer_id",
    "require_role_name",
    "store_stats",
    # migrations
    "alembic_config",
    "current_revision",
    "head_revision",
    "upgrade_to_head",
]
