"""Webhook deliveries: ingesting one (claim, apply, record) and the event log it leaves.

:mod:`repository` exports ingestion itself; this face adds the receiver's limits, the
recording of a refused delivery, and the event log (list, count, replay, prune).
"""

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
    # ingesting a delivery
    "DEFAULT_DELIVERY_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "IngestResult",
    "ingest_delivery",
    "ingest_delivery_async",
    "ingest_or_record_refusal",
    # the event log
    "count_events",
    "iter_events",
    "list_events",
    "prune_events",
    "replay_rejected",
]
