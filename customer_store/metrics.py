"""The receiver's Prometheus metrics, in a registry of its own (one per app).

Counted as deliveries are answered:

- ``customer_store_deliveries_total{outcome,status}``: deliveries answered, by outcome
  (``applied``, ``stale``, ``forgotten``, ``duplicate``, ``ignored``, ``rejected`` for
  recorded ones; ``refused`` for a missing or wrong signature or a body over the limit,
  ``malformed`` for a body that is not an envelope, ``disconnected`` for a client gone
  before its body ended, ``unavailable`` for a database error, ``timeout`` for a delivery
  not recorded in time) and HTTP status;
- ``customer_store_delivery_seconds``: the time to answer each delivery;
- ``customer_store_database_errors_total``: database errors the receiver met (a delivery
  answered 503, a readiness check or a scrape that could not read); errors a retry
  overcame are not counted here but in
- ``customer_store_retries_total``: transactions run again (deadlock, serialization
  failure, lost connection, SQLite busy);
- ``customer_store_last_delivery_applied_timestamp_seconds``: when this process last
  applied a delivery; until it has, the latest recorded in the database (read once).

Read from the database at scrape time, at most every :data:`REFRESH_INTERVAL` seconds
(cached in between, so frequent or concurrent scrapes cost one read):

- ``customer_store_customers``: the stored customers; on PostgreSQL the planner's estimate
  (``pg_class.reltuples``, kept by autovacuum, free to read), on SQLite an exact count;
- ``customer_store_last_sync_success_timestamp_seconds{api_url}``: the last completed sync
  from each API.

With a read replica (``serve --read-database-url``), measured at scrape time (its lag
check is cached for about a second):

- ``customer_store_replica_lag_seconds``: how far the replica's replay is behind (0 when
  it has replayed all there is; no sample before the first check);
- ``customer_store_replica_up``: 1 when the replica answered its last check, else 0;
- ``customer_store_replica_fallbacks_total{reason}``: reads of the read API meant for the
  replica that went to the primary: ``lag`` (too far behind), ``unreachable``,
  ``read_your_writes`` (a position not replayed in time).

A gauge the store cannot tell yet (no applied delivery, no completed sync) has no sample.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import anyio
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from repository.admin import estimate_customer_count, last_applied_at
from repository.db import AsyncReadRouter
from repository.voucherify import mirror_states

__all__ = ["REFRESH_INTERVAL", "ReceiverMetrics"]

#: Seconds between two reads of the store's figures, at least.
REFRESH_INTERVAL = 15.0
#: Seconds one read of the figures may take before the scrape answers without it.
READ_TIMEOUT = 5.0

_CUSTOMERS = "customer_store_customers"
_LAST_SYNC = "customer_store_last_sync_success_timestamp_seconds"
_LAST_APPLIED = "customer_store_last_delivery_applied_timestamp_seconds"
_REPLICA_LAG = "customer_store_replica_lag_seconds"
_REPLICA_UP = "customer_store_replica_up"
_REPLICA_FALLBACKS = "customer_store_replica_fallbacks"

log = logging.getLogger("customer_store.metrics")
T = TypeVar("T")


@dataclass(frozen=True)
class _Figures:
    customers: int
    #: (API URL, Unix time of its last completed sync), for APIs that completed one.
    syncs: list[tuple[str, float]]


class ReceiverMetrics:
    """The metrics of one receiver app: what :mod:`customer_store.web` counts, and what is
    read from the store (through ``sessions``) when they are scraped; with ``replicas``
    (a router with a replica), the replica's lag and the reads that fell back."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        refresh_interval: float = REFRESH_INTERVAL,
        read_timeout: float = READ_TIMEOUT,
        replicas: AsyncReadRouter | None = None,
    ) -> None:
        self._sessions = sessions
        self.replicas = replicas if replicas is not None and replicas.has_replica else None
        self._refresh_interval = refresh_interval
        self._read_timeout = read_timeout
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "customer_store_deliveries",
            "Webhook deliveries answered, by outcome and HTTP status.",
            ["outcome", "status"],
            registry=self.registry,
        )
        self.delivery_seconds = Histogram(
            "customer_store_delivery_seconds",
            "Seconds taken to answer a webhook delivery.",
            registry=self.registry,
        )
        self.database_errors = Counter(
            "customer_store_database_errors",
            "Database errors met by deliveries, readiness checks and scrapes (not retried "
            "away).",
            registry=self.registry,
        )
        self.retries = Counter(
            "customer_store_retries",
            "Transactions run again after a retryable database error.",
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        self.registry.register(_StoreCollector(self))
        self._figures: _Figures | None = None
        self._refreshed_at = -math.inf
        self._last_applied: float | None = None
        self._seeded = False
        self._lock = anyio.Lock()

    # --- what the receiver reports ----------------------------------------------------

    def delivery(self, outcome: str, status: int, seconds: float) -> None:
        """A delivery was answered with ``status``."""
        self.deliveries.labels(outcome=outcome, status=str(status)).inc()
        self.delivery_seconds.observe(seconds)
        if outcome == "applied":
            self._last_applied = time.time()

    def retry(self, _error: BaseException | None) -> None:
        """A transaction is about to run again (a :data:`repository.admin.RetryListener`)."""
        self.retries.inc()

    def database_error(self) -> None:
        self.database_errors.inc()

    @property
    def last_applied(self) -> float | None:
        """Unix time of the last applied delivery known (None: none yet)."""
        return self._last_applied

    # --- scraping -----------------------------------------------------------------------

    async def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The metrics in the format ``accept`` asks for (Prometheus' text format unless it
        asks for OpenMetrics), and its content type; the store's figures refreshed first."""
        await self.refresh()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    async def refresh(self) -> None:
        """Read the store's figures again if the last read is older than the refresh
        interval. A failed read is counted and logged; the scrape goes on with the figures
        it had (the failure also shows on ``/healthz``)."""
        if self.replicas is not None:
            # Bounded by the router's own check timeout; a failure is a replica "down".
            await self.replicas.refresh()
        async with self._lock:
            if time.monotonic() - self._refreshed_at < self._refresh_interval:
                return
            self._refreshed_at = time.monotonic()
            read, figures = await self._read(_read_figures, "the store's figures")
            if read:
                self._figures = figures
            if read and not self._seeded:
                # Once: after a restart, the last applied delivery is the store's.
                read, found = await self._read(last_applied_at, "the last applied delivery")
                self._seeded = read
                if found is not None:
                    seed = found.timestamp()
                    self._last_applied = max(self._last_applied or seed, seed)

    async def _read(self, read: Callable[[Session], T], what: str) -> tuple[bool, T | None]:
        """``read(session)`` in a session of its own, within the read timeout: whether it
        succeeded, and what it gave."""
        try:
            with anyio.fail_after(self._read_timeout):
                async with self._sessions() as session:
                    value = await session.run_sync(read)
        except (SQLAlchemyError, TimeoutError) as exc:
            self.database_error()
            log.warning("metrics: could not read %s: %s", what, type(exc).__name__)
            return False, None
        return True, value

    def samples(self) -> Iterator[Metric]:
        figures = self._figures
        if figures is not None:
            yield GaugeMetricFamily(
                _CUSTOMERS, "Customers stored (an estimate on PostgreSQL).",
                value=figures.customers,
            )
            syncs = GaugeMetricFamily(
                _LAST_SYNC, "Unix time of the last completed sync from Voucherify's API.",
                labels=["api_url"],
            )
            for api_url, moment in figures.syncs:
                syncs.add_metric([api_url], moment)
            yield syncs
        if self._last_applied is not None:
            yield GaugeMetricFamily(
                _LAST_APPLIED, "Unix time of the last webhook delivery applied.",
                value=self._last_applied,
            )
        if self.replicas is not None:
            yield from _replica_samples(self.replicas)


def _replica_samples(router: AsyncReadRouter) -> Iterator[Metric]:
    lag = router.lag
    if lag is not None:
        yield GaugeMetricFamily(
            _REPLICA_LAG, "Seconds the read replica's replay is behind, when last checked.",
            value=lag,
        )
    yield GaugeMetricFamily(
        _REPLICA_UP, "Whether the read replica answered its last check (1) or not (0).",
        value=1 if router.replica_reachable else 0,
    )
    fallbacks = CounterMetricFamily(
        _REPLICA_FALLBACKS, "Reads meant for the read replica that went to the primary.",
        labels=["reason"],
    )
    for reason, count in router.fallbacks.items():
        fallbacks.add_metric([reason.value], count)
    yield fallbacks


class _StoreCollector:
    """The gauges read from the store, as last refreshed."""

    def __init__(self, metrics: ReceiverMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        # Names only, so that the registry can check clashes without a database read.
        return [
            GaugeMetricFamily(_CUSTOMERS, ""),
            GaugeMetricFamily(_LAST_SYNC, "", labels=["api_url"]),
            GaugeMetricFamily(_LAST_APPLIED, ""),
            GaugeMetricFamily(_REPLICA_LAG, ""),
            GaugeMetricFamily(_REPLICA_UP, ""),
            CounterMetricFamily(_REPLICA_FALLBACKS, "", labels=["reason"]),
        ]

    def collect(self) -> Iterable[Metric]:
        return list(self._metrics.samples())


def _read_figures(session: Session) -> _Figures:
    return _Figures(
        customers=estimate_customer_count(session),
        syncs=[
            (state.api_url, state.last_success_at.timestamp())
            for state in mirror_states(session)
            if state.last_success_at is not None
        ],
    )
