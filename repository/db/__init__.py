"""Database plumbing: engines, URLs, the per-database backend, the one error seam, retries,
the PostgreSQL driver path, read replicas, locks and the schema (Alembic).

This is the face of the sub-package for operators' code and the command line: database
URLs and the pooler, the backend (what the database behind an engine can do), what a
person reads of an error, what a failed transaction means, reads on a standby, and the
schema. Engines and sessions are on :mod:`repository`.
"""

from repository.db.backends import Backend, backend_of
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

__all__ = [  # noqa: RUF022 (grouped by concern, not sorted)
    # what the database behind an engine can do (roles, standbys...), decided once
    "Backend",
    "backend_of",
    # database URLs (libpq's multi-host spelling too), connection defaults, the pooler
    "CONNECTION_DEFAULTS",
    "DEFAULT_DATABASE_URL",
    "NoDatabaseFile",
    "POOLER_PARAMETER",
    "behind_pooler",
    "parse_database_url",
    # what a person reads of a database error: one line, the pooler hint where it applies
    "POOLER_HINT",
    "first_line",
    "is_pooler_clash",
    "with_pooler_hint",
    # what a failed transaction means
    "NotReplicated",
    "RetryListener",
    "is_lost_connection",
    "is_retryable",
    # reads on a streaming standby (read replicas)
    "DEFAULT_MAX_LAG",
    "AsyncReadRouter",
    "FallbackReason",
    "ReadRouter",
    "commit_position",
    "require_position",
    # the schema (Alembic migrations)
    "alembic_config",
    "current_revision",
    "head_revision",
    "upgrade_to_head",
]
