"""The operators' face: what the CLI, the receiver and operator scripts use beyond the
service's face (:mod:`repository`).

Erasure, privileges and statistics; the schema (migrations); database URLs, the pooler
hint and read replicas; retries' classification; imports from files; the webhook event log;
the search limits the CLI checks against.
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
from repository.db.retry import NotReplicated, RetryListener, is_lost_connection, is_retryable
from repository.db.schema import alembic_config, current_revision, head_revision, upgrade_to_head
from repository.importing.importer import (
    DEFAULT_BATCH_SIZE,
    ImportReport,
    Rejection,
    import_records,
)
from repository.importing.records import Record, read_records
from repository.store.customers import iter_customers
from repository.store.mapping import FOLD_LIMIT, fold
from repository.store.queries import MAX_METADATA_DEPTH, MAX_METADATA_TERMS, MAX_PAGE_SIZE
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
    ingest_or_record_refusal,
)

__all__ = [  # noqa: RUF022 (grouped by concern, not sorted)
    # erasure
    "ErasureReport",
    "InvalidCustomerId",
    "forget_customer",
    "require_customer_id",
    # privileges
    "GrantReport",
    "InvalidRoleName",
    "MissingPrivilege",
    "grant_app_role",
    "require_role_name",
    # statistics
    "StoreStats",
    "estimate_customer_count",
    "last_applied_at",
    "store_stats",
    # the schema (migrations)
    "alembic_config",
    "current_revision",
    "head_revision",
    "upgrade_to_head",
    # database URLs, connection defaults, a transaction pooler (?pgbouncer=true)
    "CONNECTION_DEFAULTS",
    "DEFAULT_DATABASE_URL",
    "NoDatabaseFile",
    "POOLER_HINT",
    "POOLER_PARAMETER",
    "behind_pooler",
    "is_pooler_clash",
    "parse_database_url",
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
    # what a failed transaction means
    "NotReplicated",
    "RetryListener",
    "is_lost_connection",
    "is_retryable",
    # imports and exports
    "DEFAULT_BATCH_SIZE",
    "ImportReport",
    "Record",
    "Rejection",
    "import_records",
    "iter_customers",
    "read_records",
    # the webhook event log
    "DEFAULT_DELIVERY_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "count_events",
    "ingest_or_record_refusal",
    "iter_events",
    "list_events",
    "prune_events",
    "replay_rejected",
    # the limits of a search
    "FOLD_LIMIT",
    "MAX_METADATA_DEPTH",
    "MAX_METADATA_TERMS",
    "MAX_PAGE_SIZE",
    "fold",
]
