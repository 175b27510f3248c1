"""Voucherify's API: the HTTP client, the mirror that heals what webhooks miss (the CLI's
``sync``), its saved state and sweep, and the list semantics the read API follows.

This is the face of the sub-package: import from here, not from its modules.
"""

from repository.importing.importer import Rejection
from repository.store.reads import decode_customer_value
from repository.voucherify.client import (
    DEFAULT_API_URL,
    DEFAULT_MAX_WAIT,
    DEFAULT_RESERVE,
    DEFAULT_TIMEOUT,
    ApiUnavailable,
    AuthenticationFailed,
    BudgetExhausted,
    CustomerList,
    RequestLimitReached,
    VoucherifyClient,
    VoucherifyError,
)
from repository.voucherify.list_semantics import (
    InvalidListParameter,
    ListQuery,
    TotalCache,
    count_listed,
    list_customers,
    parse_list_query,
)
from repository.voucherify.mirror import (
    DEFAULT_OVERLAP,
    MirrorReport,
    TieOverflow,
    mirror_customers,
)
from repository.voucherify.mirror_state import MirrorState, mirror_states
from repository.voucherify.sweep import SweepRefused, default_max_deletions

__all__ = [  # noqa: RUF022 (grouped by concern, not sorted)
    # the API client
    "DEFAULT_API_URL",
    "DEFAULT_MAX_WAIT",
    "DEFAULT_RESERVE",
    "DEFAULT_TIMEOUT",
    "ApiUnavailable",
    "AuthenticationFailed",
    "BudgetExhausted",
    "CustomerList",
    "RequestLimitReached",
    "VoucherifyClient",
    "VoucherifyError",
    # the mirror, its state and its sweep
    "DEFAULT_OVERLAP",
    "MirrorReport",
    "MirrorState",
    "Rejection",
    "SweepRefused",
    "TieOverflow",
    "default_max_deletions",
    "mirror_customers",
    "mirror_states",
    # the Voucherify-compatible read API
    "InvalidListParameter",
    "ListQuery",
    "TotalCache",
    "count_listed",
    "decode_customer_value",
    "list_customers",
    "parse_list_query",
]
