"""A local stand-in for Voucherify's customer list API (``GET /v1/customers``), for tests.

:class:`FakeVoucherify` is an HTTP server on 127.0.0.1 (a free port, its own daemon thread)
that answers as Voucherify documents it; :func:`make_customers` makes realistic customers
to put in it. Nothing here touches a database.

Requests
--------
``GET /v1/customers`` with the headers ``X-App-Id`` and ``X-App-Token`` (wrong or missing:
401). The answer is ``{"object": "list", "data_ref": "customers", "customers": [...],
"total": N, "has_more": bool}``. Query parameters (each at most once; an unknown or repeated
parameter, a value out of range or not parsable is a 400 whose ``details`` names it):

- ``limit`` 1..100 (default 10), ``page`` 1..99 (default 1): the page is the slice at
  offset ``(page - 1) * limit`` of the filtered, cursor-restricted, ordered list.
- ``order``: absent (``created_at`` newest first), ``created_at``, ``-created_at``,
  ``updated_at``, ``-updated_at``, ``source_id``, ``-source_id``. Ties (and customers whose
  sort value is null) are ordered by ``id``, in the same direction, so paging is stable: a
  descending order is exactly the reverse of the ascending one.
- ``starting_after``: an ISO 8601 date-time with ``Z`` or an offset (``2022-08-30T06:32:07.380Z``,
  ``...+00:00``; up to microseconds; a date-time without an offset is refused). It keeps the
  customers whose ``created_at`` is strictly before it, for an absent order, ``-created_at``,
  ``source_id`` and ``-source_id`` (source_id orders have no date of their own, so the cursor
  keeps its documented default meaning); strictly after it for ``order=created_at``. With
  ``updated_at`` / ``-updated_at`` the cursor compares ``updated_at`` instead (strictly after /
  strictly before).
- Filters, all strict comparisons or exact matches: ``created_at[before]``,
  ``created_at[after]``, ``updated_at[before]``, ``updated_at[after]``, ``email``, ``city``
  (``address.city``), ``name``. ``segment_id`` is documented by Voucherify but not supported
  here (400).

Nulls (a choice, Voucherify does not document it): a customer whose ``updated_at`` is null
or absent never matches an ``updated_at`` filter nor an ``updated_at`` cursor; in
``order=updated_at`` without either it sorts last (ascending), in ``-updated_at`` first, as
nulls do in PostgreSQL's indexes.
The same holds for a missing ``created_at`` (only hand-made customers lack one) and for a
null ``source_id`` in the ``source_id`` orders.

``total`` counts the customers that match the filters (not the cursor, not the page);
``has_more`` says whether the cursor-restricted list goes on after this page. Deleted
customers are not listed. Customers are stored as the JSON they were given and returned
byte for byte as ``json.dumps(customer, ensure_ascii=False)``, unknown keys included.

Other paths answer 404, other methods on ``/v1/customers`` 405, in Voucherify's error shape
``{"code", "key", "message", "details"}``.

Rate limits
-----------
Every response (errors too) has ``X-Rate-Limit-Limit``, ``X-Rate-Limit-Remaining`` (after
this request) and ``X-Rate-Limit-Retry``: the Unix time, in whole seconds, at which the next
request may be made; the current second (rounded down) while requests remain, otherwise the
end of the window, of the block or of the billing cycle (rounded up).

A window opens with the first counted request and lasts ``window_seconds``; the next counted
request after its end opens a new one. Counted are the requests that pass authentication
and are not refused for a rate limit (a 400, 404 or 405 is counted, a 401 is not). With
``requests_per_window`` requests used, the next request is refused (429, ``Retry-After``,
``X-Rate-Limit-Type: api_calls``) and the project is blocked: every authenticated request
gets that 429 until ``block_seconds`` have passed ("exceeding this limit will block your
access to the API immediately"); then a fresh window starts. :attr:`FakeVoucherify.violations`
counts every request refused that way (the one that overflowed and every one made during the
block); a well-behaved client keeps it at 0. Requests during a block do not extend it.
``requests_per_window=None`` means no window limit (``X-Rate-Limit-Limit`` then reports
:data:`UNLIMITED`). ``cycle_limit`` caps the counted requests of the billing cycle: beyond it
every request gets 429 with ``X-Rate-Limit-Type: api_calls_cycle`` and a ``Retry-After`` of
:data:`CYCLE_RETRY_SECONDS`; these are not violations.

Faults
------
In the order they apply to a request: :meth:`FakeVoucherify.drop_next` closes the connection
without an answer (not counted anywhere but :attr:`FakeVoucherify.dropped`);
:meth:`FakeVoucherify.fail_next` answers with the given status and a JSON error body before
authentication, without counting the request against the limits (a 429 made this way carries
``Retry-After: 1`` and ``X-Rate-Limit-Type: api_calls``); ``random_429_rate`` turns a
request that would have been answered 200, with that probability (a seeded
:class:`random.Random`), into a 429 ``api_calls`` with ``Retry-After: 1``, which is counted
against the window like the 200 would have been, but is no violation and blocks nothing.

A broken upstream, for the answers of ``GET /v1/customers`` that would be 200s:
:attr:`FakeVoucherify.list_fault`, one of :data:`LIST_FAULTS` (or ``None``, the default),
may be set at any time:

- ``"end_early"``: every page says ``has_more: false`` (``total`` stays right);
- ``"empty_object"``: the body is ``{"customers": []}``, nothing else;
- ``"malformed"``: ``customers`` is an object, not an array;
- ``"ignore_cursor"``: ``starting_after`` is ignored (the same page whatever the cursor);
- ``"backwards"``: the last two customers of a page are swapped, so that the last one is
  older than the one before it.

:attr:`FakeVoucherify.requests` counts answered requests (every status);
:attr:`FakeVoucherify.request_log` holds ``(path, query parameters, status)`` for each,
never a header.
"""

from __future__ import annotations

import contextlib
import hmac
import http
import http.server
import json
import math
import random
import re
import socket
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "CYCLE_RETRY_SECONDS",
    "LIST_FAULTS",
    "UNLIMITED",
    "FakeVoucherify",
    "format_instant",
    "make_customers",
    "parse_instant",
]

#: What ``X-Rate-Limit-Limit`` reports when there is no window limit.
UNLIMITED = 1_000_000
#: The ways :attr:`FakeVoucherify.list_fault` can break a list answer (module docstring).
LIST_FAULTS = ("end_early", "empty_object", "malformed", "ignore_cursor", "backwards")
#: ``Retry-After`` once the billing cycle's requests are used up (30 days).
CYCLE_RETRY_SECONDS = 30 * 24 * 3600

CUSTOMERS_PATH = "/v1/customers"
MAX_LIMIT = 100
MAX_PAGE = 99
DEFAULT_LIMIT = 10

_FILTERS = ("created_at[before]", "created_at[after]", "updated_at[before]", "updated_at[after]")
_MATCHES = ("email", "city", "name")
_KNOWN_PARAMS = frozenset(
    {"limit", "page", "order", "starting_after", *_FILTERS, *_MATCHES, "segment_id"}
)
# order -> (sort field, descending)
_ORDERS: dict[str | None, tuple[str, bool]] = {
    None: ("created_at", True),
    "created_at": ("created_at", False),
    "-created_at": ("created_at", True),
    "updated_at": ("updated_at", False),
    "-updated_at": ("updated_at", True),
    "source_id": ("source_id", False),
    "-source_id": ("source_id", True),
}
_INSTANT_RE = re.compile(
    # The official SDKs send ``+0000`` (strftime's %z): an offset with or without a colon.
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:?\d{2})"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_instant(text: str) -> datetime:
    """An ISO 8601 date-time with ``Z`` or an offset, as an aware UTC datetime.

    Raises :class:`ValueError` for anything else (no offset, a date alone, nonsense).
    """
    if not _INSTANT_RE.fullmatch(text):
        raise ValueError(f"expected an ISO 8601 date-time with a time zone, got {text!r}")
    return datetime.fromisoformat(text).astimezone(UTC)


def format_instant(value: datetime) -> str:
    """Voucherify's wire form: UTC, three fractional digits, a literal ``Z``."""
    utc = value.astimezone(UTC)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
        f"{utc.second:02d}.{utc.microsecond // 1000:03d}Z"
    )


# --- the store ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Stored:
    id: str
    body: bytes  # json.dumps(customer, ensure_ascii=False), UTF-8
    created_at: datetime | None
    updated_at: datetime | None
    source_id: str | None
    email: Any
    city: Any
    name: Any


def _instant_field(customer: Mapping[str, Any], key: str) -> datetime | None:
    value = customer.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"customer {key} must be a date-time string or null, got {value!r}")
    return parse_instant(value)


def _stored(customer: Mapping[str, Any]) -> _Stored:
    if not isinstance(customer, Mapping):
        raise TypeError(f"a customer is a JSON object, got {type(customer).__name__}")
    customer_id = customer.get("id")
    if not isinstance(customer_id, str) or not customer_id:
        raise ValueError(f"a customer needs a string id, got {customer_id!r}")
    text = json.dumps(customer, ensure_ascii=False, allow_nan=False)
    address = customer.get("address")
    source_id = customer.get("source_id")
    return _Stored(
        id=customer_id,
        body=text.encode("utf-8"),
        created_at=_instant_field(customer, "created_at"),
        updated_at=_instant_field(customer, "updated_at"),
        source_id=source_id if isinstance(source_id, str) else None,
        email=customer.get("email"),
        city=address.get("city") if isinstance(address, Mapping) else None,
        name=customer.get("name"),
    )


def _sort_key(entry: _Stored, field_name: str) -> tuple[bool, Any, str]:
    value: Any = getattr(entry, field_name)
    if value is None:  # after every value, as PostgreSQL's indexes order nulls
        return (True, "" if field_name == "source_id" else _EPOCH, entry.id)
    return (False, value, entry.id)


# --- answers --------------------------------------------------------------------------------


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class _BadParameter(Exception):
    def __init__(self, name: str, details: str) -> None:
        super().__init__(details)
        self.name = name
        self.details = details


def _error_body(status: int, key: str, message: str, details: str) -> bytes:
    payload = {"code": status, "key": key, "message": message, "details": details}
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def _error(status: int, key: str, message: str, details: str) -> _Reply:
    return _Reply(status, _error_body(status, key, message, details))


def _status_key(status: int) -> tuple[str, str]:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_") or "error", phrase


@dataclass(frozen=True)
class _Query:
    limit: int
    page: int
    order: str | None
    starting_after: datetime | None
    created_before: datetime | None
    created_after: datetime | None
    updated_before: datetime | None
    updated_after: datetime | None
    matches: tuple[tuple[str, str], ...]


def _parse_int(params: Mapping[str, str], name: str, default: int, high: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    if not re.fullmatch(r"[+-]?\d{1,9}", text) or not 1 <= int(text) <= high:
        raise _BadParameter(
            name, f"Query parameter '{name}' must be an integer from 1 to {high}, got {text!r}"
        )
    return int(text)


def _parse_date_param(params: Mapping[str, str], name: str) -> datetime | None:
    text = params.get(name)
    if text is None:
        return None
    try:
        return parse_instant(text)
    except ValueError:
        raise _BadParameter(
            name,
            f"Query parameter '{name}' must be an ISO 8601 date-time with a time zone "
            f"(like 2022-08-30T06:32:07.380Z), got {text!r}",
        ) from None


def _parse_query(raw: Mapping[str, list[str]]) -> _Query:
    for name, values in raw.items():
        if name not in _KNOWN_PARAMS:
            raise _BadParameter(name, f"Query parameter '{name}' is not allowed")
        if len(values) > 1:
            raise _BadParameter(name, f"Query parameter '{name}' is given more than once")
    if "segment_id" in raw:
        raise _BadParameter("segment_id", "Query parameter 'segment_id' is not supported")
    params = {name: values[0] for name, values in raw.items()}
    order = params.get("order")
    if order is not None and order not in _ORDERS:
        allowed = ", ".join(o for o in _ORDERS if o is not None)
        raise _BadParameter(
            "order", f"Query parameter 'order' must be one of {allowed}, got {order!r}"
        )
    return _Query(
        limit=_parse_int(params, "limit", DEFAULT_LIMIT, MAX_LIMIT),
        page=_parse_int(params, "page", 1, MAX_PAGE),
        order=order,
        starting_after=_parse_date_param(params, "starting_after"),
        created_before=_parse_date_param(params, "created_at[before]"),
        created_after=_parse_date_param(params, "created_at[after]"),
        updated_before=_parse_date_param(params, "updated_at[before]"),
        updated_after=_parse_date_param(params, "updated_at[after]"),
        matches=tuple((name, params[name]) for name in _MATCHES if name in params),
    )


def _matches_filters(entry: _Stored, query: _Query) -> bool:
    created, updated = entry.created_at, entry.updated_at
    if query.created_before is not None and (created is None or created >= query.created_before):
        return False
    if query.created_after is not None and (created is None or created <= query.created_after):
        return False
    if query.updated_before is not None and (updated is None or updated >= query.updated_before):
        return False
    if query.updated_after is not None and (updated is None or updated <= query.updated_after):
        return False
    return all(getattr(entry, name) == value for name, value in query.matches)


def _after_cursor(entry: _Stored, query: _Query) -> bool:
    cursor = query.starting_after
    if cursor is None:
        return True
    field_name, descending = _ORDERS[query.order]
    if field_name == "source_id":
        value, descending = entry.created_at, True
    else:
        value = getattr(entry, field_name)
    if value is None:
        return False
    return bool(value < cursor) if descending else bool(value > cursor)


# --- the fake -------------------------------------------------------------------------------


class FakeVoucherify:
    """Voucherify's ``GET /v1/customers`` on ``127.0.0.1``; see the module docstring.

    Thread-safe: every method and every request holds one lock.
    """

    def __init__(
        self,
        *,
        app_id: str = "app-id",
        app_token: str = "app-token",  # noqa: S107 (a test credential)
        requests_per_window: int | None = None,
        window_seconds: float = 1.0,
        block_seconds: float = 2.0,
        cycle_limit: int | None = None,
        random_429_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        if requests_per_window is not None and requests_per_window < 1:
            raise ValueError("requests_per_window must be at least 1 (or None)")
        if window_seconds <= 0 or block_seconds < 0:
            raise ValueError("window_seconds must be positive and block_seconds not negative")
        self._app_id = app_id.encode("utf-8")
        self._app_token = app_token.encode("utf-8")
        self.requests_per_window = requests_per_window
        self.window_seconds = window_seconds
        self.block_seconds = block_seconds
        self.cycle_limit = cycle_limit
        #: Probability of a 429 in place of a 200 (may be changed at any time).
        self.random_429_rate = random_429_rate
        #: How list answers are broken, one of :data:`LIST_FAULTS` (may be changed at any time).
        self.list_fault: str | None = None
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._store: dict[str, _Stored] = {}
        self._sorted: dict[str | None, list[_Stored]] = {}
        self._requests = 0
        self._dropped = 0
        self._violations = 0
        self._cycle_used = 0
        self._log: list[tuple[str, dict[str, str], int]] = []
        self._window_start: float | None = None
        self._window_used = 0
        self._blocked_until: float | None = None
        self._fail: list[int] = []
        self._drop = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # --- lifecycle ---

    def start(self) -> FakeVoucherify:
        if self._server is not None:
            raise RuntimeError("already started")
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        host, port = server.server_address[:2]
        self._server = server
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-voucherify-{port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeVoucherify:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- data ---

    def put(self, customer: Mapping[str, Any]) -> None:
        """Add a customer, or replace the one with the same ``id``."""
        entry = _stored(customer)
        with self._lock:
            self._store[entry.id] = entry
            self._sorted.clear()

    def put_many(self, customers: Iterable[Mapping[str, Any]]) -> None:
        entries = [_stored(customer) for customer in customers]
        with self._lock:
            for entry in entries:
                self._store[entry.id] = entry
            self._sorted.clear()

    def update(self, customer_id: str, *, at: str, **changes: Any) -> dict[str, Any]:
        """Merge ``changes`` into the top level of a live customer, set ``updated_at`` to
        ``at`` and return the new JSON. :class:`KeyError` if there is no such customer."""
        parse_instant(at)
        with self._lock:
            current = json.loads(self._store[customer_id].body)
            current.update(changes)
            current["updated_at"] = at
            entry = _stored(current)
            if entry.id != customer_id:
                raise ValueError("update cannot change a customer's id")
            self._store[customer_id] = entry
            self._sorted.clear()
        return cast(dict[str, Any], json.loads(entry.body))

    def delete(self, customer_id: str) -> None:
        """Delete a live customer (:class:`KeyError` if there is none)."""
        with self._lock:
            del self._store[customer_id]
            self._sorted.clear()

    def customers(self) -> list[dict[str, Any]]:
        """Copies of the live customers, as stored, in the order they were first put."""
        with self._lock:
            bodies = [entry.body for entry in self._store.values()]
        return [cast(dict[str, Any], json.loads(body)) for body in bodies]

    # --- observation and faults ---

    @property
    def requests(self) -> int:
        """Requests answered, whatever the status (dropped ones are not)."""
        with self._lock:
            return self._requests

    @property
    def request_log(self) -> list[tuple[str, dict[str, str], int]]:
        """``(path, query parameters, status)`` of each answered request, oldest first."""
        with self._lock:
            return [(path, dict(params), status) for path, params, status in self._log]

    @property
    def violations(self) -> int:
        """Requests refused for the window limit: the one that overflowed a window and
        every one during the block that followed."""
        with self._lock:
            return self._violations

    @property
    def dropped(self) -> int:
        """Connections closed without an answer by :meth:`drop_next`."""
        with self._lock:
            return self._dropped

    @property
    def blocked(self) -> bool:
        with self._lock:
            return self._blocked_until is not None and time.time() < self._blocked_until

    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer the next ``n`` requests with ``status`` and a JSON error body."""
        if not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status")
        with self._lock:
            self._fail.extend([status] * n)

    def drop_next(self, n: int) -> None:
        """Close the connection of the next ``n`` requests without answering."""
        with self._lock:
            self._drop += n

    # --- answering (called by the handler threads) ---

    def _answer(self, method: str, target: str, headers: Mapping[str, str]) -> _Reply | None:
        """The reply to one request, or ``None`` to drop the connection."""
        split = urlsplit(target)
        path = split.path
        raw_query = parse_qs(split.query, keep_blank_values=True)
        logged = {name: values[-1] for name, values in raw_query.items()}
        with self._lock:
            if self._drop > 0:
                self._drop -= 1
                self._dropped += 1
                return None
            now = time.time()
            reply = self._reply(method, path, raw_query, headers, now)
            reply.headers.update(self._rate_headers(now))
            self._requests += 1
            self._log.append((path, logged, reply.status))
        return reply

    def _reply(
        self,
        method: str,
        path: str,
        raw_query: Mapping[str, list[str]],
        headers: Mapping[str, str],
        now: float,
    ) -> _Reply:
        if self._fail:
            status = self._fail.pop(0)
            key, phrase = _status_key(status)
            reply = _error(status, key, phrase, "Injected failure (FakeVoucherify.fail_next)")
            if status == 429:
                reply.headers.update({"Retry-After": "1", "X-Rate-Limit-Type": "api_calls"})
            return reply
        if not self._authenticated(headers):
            return _error(
                401,
                "unauthorized",
                "Unauthorized",
                "Missing or invalid X-App-Id and X-App-Token headers",
            )
        refusal = self._admit(now)
        if refusal is not None:
            return refusal
        if path != CUSTOMERS_PATH:
            return _error(404, "not_found", "Resource not found", f"Cannot find {path}")
        if method != "GET":
            reply = _error(
                405,
                "method_not_allowed",
                "Method not allowed",
                f"{method} is not allowed on {CUSTOMERS_PATH} in this fake",
            )
            reply.headers["Allow"] = "GET"
            return reply
        try:
            query = _parse_query(raw_query)
        except _BadParameter as exc:
            return _error(400, "invalid_payload", "Invalid query parameters", exc.details)
        if self.random_429_rate > 0 and self._random.random() < self.random_429_rate:
            return self._too_many(
                "api_calls", 1, "Too many requests (injected at random by FakeVoucherify)"
            )
        return _Reply(200, self._list(query))

    def _authenticated(self, headers: Mapping[str, str]) -> bool:
        given_id = (headers.get("x-app-id") or "").encode("utf-8", "surrogateescape")
        given_token = (headers.get("x-app-token") or "").encode("utf-8", "surrogateescape")
        id_ok = hmac.compare_digest(given_id, self._app_id)
        token_ok = hmac.compare_digest(given_token, self._app_token)
        return id_ok and token_ok

    def _too_many(self, kind: str, retry_after: int, details: str) -> _Reply:
        reply = _error(429, "too_many_requests", "Too many requests", details)
        reply.headers.update({"Retry-After": str(retry_after), "X-Rate-Limit-Type": kind})
        return reply

    def _admit(self, now: float) -> _Reply | None:
        """Count a request against the limits, or the 429 that refuses it."""
        if self._blocked_until is not None:
            if now < self._blocked_until:
                self._violations += 1
                wait = max(1, math.ceil(self._blocked_until - now))
                return self._too_many("api_calls", wait, "API calls limit exceeded: access blocked")
            self._blocked_until = None
            self._window_start = None
        if self.cycle_limit is not None and self._cycle_used >= self.cycle_limit:
            return self._too_many(
                "api_calls_cycle",
                CYCLE_RETRY_SECONDS,
                f"API calls limit of the billing cycle ({self.cycle_limit}) exceeded",
            )
        limit = self.requests_per_window
        if limit is not None:
            if self._window_start is None or now >= self._window_start + self.window_seconds:
                self._window_start = now
                self._window_used = 0
            if self._window_used >= limit:
                self._violations += 1
                self._blocked_until = now + self.block_seconds
                return self._too_many(
                    "api_calls",
                    max(1, math.ceil(self.block_seconds)),
                    f"API calls limit ({limit} per {self.window_seconds:g} s) exceeded: "
                    "access blocked",
                )
            self._window_used += 1
        self._cycle_used += 1
        return None

    def _rate_headers(self, now: float) -> dict[str, str]:
        limit = self.requests_per_window
        retry = math.floor(now)
        if self.cycle_limit is not None and self._cycle_used >= self.cycle_limit:
            remaining, retry = 0, math.ceil(now + CYCLE_RETRY_SECONDS)
        elif self._blocked_until is not None and now < self._blocked_until:
            remaining, retry = 0, math.ceil(self._blocked_until)
        elif limit is None:
            remaining = UNLIMITED
        else:
            window_open = (
                self._window_start is not None and now < self._window_start + self.window_seconds
            )
            remaining = limit - self._window_used if window_open else limit
            if remaining <= 0 and self._window_start is not None:
                remaining, retry = 0, math.ceil(self._window_start + self.window_seconds)
        return {
            "X-Rate-Limit-Limit": str(UNLIMITED if limit is None else limit),
            "X-Rate-Limit-Remaining": str(remaining),
            "X-Rate-Limit-Retry": str(retry),
        }

    def _ordered(self, order: str | None) -> list[_Stored]:
        cached = self._sorted.get(order)
        if cached is None:
            field_name, descending = _ORDERS[order]
            cached = sorted(
                self._store.values(),
                key=lambda entry: _sort_key(entry, field_name),
                reverse=descending,
            )
            self._sorted[order] = cached
        return cached

    def _list(self, query: _Query) -> bytes:
        fault = self.list_fault
        if fault is not None and fault not in LIST_FAULTS:
            raise ValueError(f"list_fault must be one of {LIST_FAULTS} or None, got {fault!r}")
        if fault == "empty_object":
            return b'{"customers": []}'
        if fault == "malformed":
            return b'{"object": "list", "customers": {"0": null}, "total": 1, "has_more": false}'
        if fault == "ignore_cursor":
            query = replace(query, starting_after=None)
        matching = [entry for entry in self._ordered(query.order) if _matches_filters(entry, query)]
        remaining = [entry for entry in matching if _after_cursor(entry, query)]
        offset = (query.page - 1) * query.limit
        page = remaining[offset : offset + query.limit]
        has_more = offset + query.limit < len(remaining) and fault != "end_early"
        if fault == "backwards" and len(page) >= 2:
            page = [*page[:-2], page[-1], page[-2]]
        return b"".join(
            (
                b'{"object": "list", "data_ref": "customers", "customers": [',
                b", ".join(entry.body for entry in page),
                b'], "total": ',
                str(len(matching)).encode(),
                b', "has_more": ',
                b"true" if has_more else b"false",
                b"}",
            )
        )


# --- HTTP -----------------------------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeVoucherify

    def __init__(self, address: tuple[str, int], handler: type[_Handler]) -> None:
        super().__init__(address, handler)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away (or a connection ended by stop()) is no error of the fake.
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """End kept-alive connections, so that nothing is answered after :meth:`stop`."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeVoucherify/1.0"
    sys_version = ""
    timeout = 30

    def setup(self) -> None:
        super().setup()
        self._fake_server().track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._fake_server().track(self.connection, add=False)

    def _fake_server(self) -> _Server:
        return cast(_Server, self.server)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        self._discard_body()
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = self._fake_server().fake._answer(self.command, self.path, headers)
        if reply is None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _discard_body(self) -> None:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or (length and not length.isdigit()):
            self.close_connection = True
        elif length and int(length) > 0:
            if int(length) > 1_000_000:
                self.close_connection = True
            else:
                self.rfile.read(int(length))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve


# --- data -----------------------------------------------------------------------------------

_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_HEX = "0123456789abcdef"
_FIRST = (
    "Bob", "Jane", "Alice", "Lionel", "Ariana", "John", "Alex", "Jean", "Maria", "Piotr",
    "Zoë", "Łukasz", "Chloé", "Hiroshi", "Amara", "Mateo", "Ingrid", "Noah", "Sofía", "Wei",
)  # fmt: skip
_LAST = (
    "Smith", "Morgan", "Johnson", "Patel", "Doe", "Genie", "Kowalski", "Müller", "García",
    "Nakamura", "Okafor", "Rossi", "Dubois", "Larsen", "Chen", "O'Brien", "Nowak", "Silva",
)  # fmt: skip
_PLACES = (
    ("New York", "NY", "United States", "10001"),
    ("Toronto", "Ontario", "Canada", "M4B 2L1"),
    ("Kraków", "małopolskie", "Poland", "30-001"),
    ("Berlin", "Berlin", "Germany", "10115"),
    ("São Paulo", "SP", "Brazil", "01000-000"),
    ("London", None, "United Kingdom", "SW1A 1AA"),
    ("Tokyo", "Tokyo", "Japan", "100-0001"),
    ("Lagos", "Lagos", "Nigeria", "100001"),
)
_STREETS = ("Main St.", "Maple Leaf Road", "ul. Floriańska", "Unter den Linden", "Rua Augusta")
_CAMPAIGNS = ("Summer Campaign", "Winter Campaign", "Christmas Campaign", "Spring Campaign")
_DESCRIPTIONS = ("A frequent customer", "Subscribed newsletter user", "VIP", "Imported from CRM")
_DAY_MS = 86_400_000


def _token(rng: random.Random, alphabet: str, k: int) -> str:
    return "".join(rng.choices(alphabet, k=k))


def _when(start_ms: int, offset_ms: int) -> str:
    return format_instant(_EPOCH + timedelta(milliseconds=start_ms + offset_ms))


def make_customers(
    n: int,
    *,
    start: datetime = datetime(2022, 1, 1, tzinfo=UTC),
    tie_block: int = 0,
    tie_at: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """``n`` realistic "Customer With Summary Loyalty Referrals" objects, deterministic for a
    ``seed``.

    ``created_at`` starts at ``start`` and grows by 1 to 5 ms per customer, except that the
    ``tie_block`` customers from index ``tie_at`` (default: the block in the middle) share
    one ``created_at``. About a third have ``updated_at: null``, the others an ``updated_at``
    at or after ``created_at``. Every seventh customer carries an undocumented top-level key
    ``x_extra``. Ids (``cust_`` + 24 alphanumerics) and ``source_id`` values are unique.
    """
    if n < 0 or tie_block < 0 or tie_block > n:
        raise ValueError("need 0 <= tie_block <= n")
    if tie_at is None:
        tie_at = (n - tie_block) // 2
    if tie_block and not 0 <= tie_at <= n - tie_block:
        raise ValueError("the tie block must lie within the n customers")
    if start.tzinfo is None:
        raise ValueError("start must be an aware datetime")
    rng = random.Random(seed)
    base_ms = round((start - _EPOCH).total_seconds() * 1000)
    project = _token(rng, _HEX, 10)
    ids: set[str] = set()
    customers: list[dict[str, Any]] = []
    offset = 0
    for i in range(n):
        if i and not (tie_block and tie_at < i < tie_at + tie_block):
            offset += rng.randint(1, 5)
        customer_id = "cust_" + _token(rng, _ALNUM, 24)
        while customer_id in ids:
            customer_id = "cust_" + _token(rng, _ALNUM, 24)
        ids.add(customer_id)
        customers.append(_customer(rng, i, customer_id, base_ms, offset, customers, project))
    return customers


def _customer(
    rng: random.Random,
    i: int,
    customer_id: str,
    base_ms: int,
    offset: int,
    earlier: list[dict[str, Any]],
    project: str,
) -> dict[str, Any]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    name = f"{first} {last}"
    email = f"{first}.{last}{i}@example.com".lower().replace("'", "")
    city, state, country, postal_code = rng.choice(_PLACES)
    address: dict[str, Any] | None = {
        "city": city,
        "state": state,
        "line_1": f"{rng.randint(1, 999)} {rng.choice(_STREETS)}",
        "line_2": f"APT {rng.randint(1, 40)}" if rng.random() < 0.4 else None,
        "country": country,
        "postal_code": postal_code,
    }
    if rng.random() < 0.05:
        address = None
    birth = date(1950, 1, 1) + timedelta(days=rng.randint(0, 20_000))
    orders = rng.choice((0, 0, 1, 2, 3, 7, 25))
    amounts = [rng.randint(500, 250_000) for _ in range(orders)]
    total_amount = sum(amounts)
    updated: int | None = None
    if rng.random() >= 1 / 3:
        updated = 0 if rng.random() < 0.05 else rng.randint(1, 200 * _DAY_MS)
    orders_summary: dict[str, Any] = {
        "total_amount": total_amount,
        "total_count": orders,
        "average_amount": total_amount // orders if orders else 0,
        "last_order_amount": amounts[-1] if orders else 0,
    }
    if orders:
        orders_summary["last_order_date"] = _when(base_ms, offset + rng.randint(1, 90 * _DAY_MS))
    redeemed = rng.randint(0, 4)
    campaigns: dict[str, Any] = {}
    for campaign in rng.sample(_CAMPAIGNS, rng.randint(0, 3)):
        entry: dict[str, Any] = {"points": rng.randint(0, 5000), "referred_customers": 0}
        if rng.random() < 0.3:
            entry["loyalty_tier"] = "ltr_" + _token(rng, _HEX, 18)
        campaigns[campaign] = entry
    referral_entries = []
    if earlier and rng.random() < 0.15:
        referral_entries.append(
            {
                "campaign_id": "camp_" + _token(rng, _ALNUM, 24),
                "referrer_id": rng.choice(earlier)["id"],
                "related_object_id": "r_" + _token(rng, _HEX, 18),
                "related_object_type": "redemption",
                "date": _when(base_ms, offset + rng.randint(0, 10 * _DAY_MS)),
            }
        )
    metadata: dict[str, Any] = {
        "lang": rng.choice(("en", "de", "pl", "pt", "ja")),
        "test": i % 2 == 0,
    }
    if rng.random() < 0.2:
        metadata["tags"] = rng.sample(["vip", "newsletter", "b2b", "beta"], 2)
    if rng.random() < 0.1:
        metadata["ulubione_miasto"] = "Łódź"
    customer: dict[str, Any] = {
        "id": customer_id,
        "source_id": email if i % 3 else f"src-{i:07d}-{_token(rng, _HEX, 6)}",
        "name": name,
        "description": rng.choice(_DESCRIPTIONS) if rng.random() < 0.6 else None,
        "email": email,
        "phone": f"+1 {rng.randint(200, 999)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
        "birthdate": birth.isoformat(),
    }
    if rng.random() < 0.2:
        customer["birthday"] = birth.isoformat()
    customer.update(
        {
            "address": address,
            "summary": {
                "redemptions": {
                    "total_redeemed": redeemed,
                    "total_failed": 0,
                    "total_succeeded": redeemed,
                    "total_rolled_back": 0,
                    "total_rollback_failed": 0,
                    "total_rollback_succeeded": 0,
                    "gift": {"redeemed_amount": rng.randint(0, 3) * 1000, "amount_to_go": 0},
                    "loyalty_card": {
                        "redeemed_points": rng.randint(0, 100),
                        "points_to_go": rng.randint(0, 5000),
                    },
                },
                "orders": orders_summary,
            },
            "loyalty": {
                "points": sum(c["points"] for c in campaigns.values()),
                "referred_customers": 0,
                "campaigns": campaigns,
            },
            "referrals": {"total": len(referral_entries), "campaigns": referral_entries},
            "metadata": metadata,
            "system_metadata": {},
            "created_at": _when(base_ms, offset),
            "updated_at": None if updated is None else _when(base_ms, offset + updated),
        }
    )
    if rng.random() < 0.5:
        customer["assets"] = {
            "cockpit_url": f"https://cockpits.voucherify.io/{project}/{customer_id}",
            "cockpit_preference_center_url": (
                f"https://cockpits.voucherify.io/{project}/{customer_id}/preferences"
            ),
        }
    customer["object"] = "customer"
    if i % 7 == 3:
        customer["x_extra"] = {"note": f"undocumented #{i}: ünïcödé ✓", "flags": [True, None, 1]}
    return customer


def share_filter_values(
    customers: list[dict[str, Any]],
    *,
    email: str,
    name: str,
    every: int,
    city: str,
    city_every: int,
) -> list[dict[str, Any]]:
    """Give every ``every``-th customer the same ``email`` and ``name`` and every
    ``city_every``-th one with an address the same ``city``, so that each text filter of the
    list matches more than one customer; ``customers``, changed in place."""
    for index, customer in enumerate(customers):
        if index % every == 0:
            customer["email"] = email
            customer["name"] = name
        if index % city_every == 0 and isinstance(customer.get("address"), dict):
            customer["address"]["city"] = city
    return customers
