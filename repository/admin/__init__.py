"""Operators' tools: erasure on request, the service's least-privilege role, and the
store's figures. Imports, the event log, the schema and database URLs have faces of their
own (:mod:`repository.importing`, :mod:`repository.webhooks`, :mod:`repository.db`).
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
]
