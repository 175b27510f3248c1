"""A client for Voucherify's customer list API that spends the rate-limit budget on purpose.

Voucherify blocks a whole project once it exceeds its request limit, the customer service's
own calls included. So the client reads ``X-Rate-Limit-Remaining`` from every response and,
when only the reserve (a share of ``X-Rate-Limit-Limit``) is left, waits until
``X-Rate-Limit-Retry`` instead of causing a ``429``. Server errors, dropped connections,
answers that miss their deadline and an occasional ``429`` are retried with backoff
(``Retry-After`` honoured); a refused key or an exhausted billing cycle stops at once.

An upstream may stall or lie, so nothing it sends can hold the client for long: each
request has one deadline from connecting to its last byte
(:mod:`repository.voucherify.http_deadline`), headers that make no sense (not finite,
negative, absurdly large) are ignored or clamped,
and no single wait lasts longer than ``max_wait``; a long or capped wait is told through
``on_wait``. A rate-limit window that renews later than that stops the run cleanly
(:class:`RequestLimitReached`): the next run goes on from its checkpoint.

httpx does the HTTP: the official SDK's models drop unknown keys and re-format dates, and
the store keeps the API's JSON exactly as it was sent.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import urlsplit

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from models.json_decoding import loads_json

if TYPE_CHECKING:
    import httpx

__all__ = [
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
]

T = TypeVar("T")

DEFAULT_API_URL = "https://api.voucherify.io"
#: Share of the per-window limit left to the service's own calls.
DEFAULT_RESERVE = 0.25
#: Seconds a whole request may take, from connecting to its last byte.
DEFAULT_TIMEOUT = 60.0
#: The longest any single wait may be (Retry-After, a rate-limit window, backoff).
DEFAULT_MAX_WAIT = 300.0
#: A wait at least this long is told through ``on_wait``.
_LONG_WAIT = 10.0
#: The longest rate-limit window (a sandbox's is an hour): a budget spent until later than
#: this is the billing cycle's.
_LONGEST_WINDOW = 3600.0
#: Header numbers beyond this are clamped to it (a count of requests, seconds).
_LARGEST_COUNT = 10**9
#: ``X-Rate-Limit-Retry`` is a Unix time; later than this (year 9999) it means nothing.
_LATEST_UNIX_TIME = 253_402_300_799.0


class VoucherifyError(Exception):
    """The API could not be listed; the message says why and what to do."""


class AuthenticationFailed(VoucherifyError):
    """401/403: the application keys are wrong or lack the permission."""


class BudgetExhausted(VoucherifyError):
    """The billing cycle's request budget is spent (``X-Rate-Limit-Type: api_calls_cycle``)."""


class RequestLimitReached(VoucherifyError):
    """The run's own ``max_requests`` is reached: stop cleanly, resume next time."""


class ApiUnavailable(VoucherifyError):
    """Server errors, timeouts or refusals went on past the retries, or an answer was not
    the documented list."""


class _Transient(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass(frozen=True)
class CustomerList(Generic[T]):
    """One page of Voucherify's customer list (``GET /v1/customers``), whether read from
    Voucherify (customers as decoded JSON, untouched) or answered by this store's read API
    (customers as models, or as the ``decode`` of :func:`list_customers` gives)."""

    customers: list[T]
    total: int
    has_more: bool
    #: The server's clock (``Date`` header), whole seconds; None when not read from a server.
    server_time: datetime | None = None


class VoucherifyClient:
    """``GET /v1/customers`` with pacing, retries and a request cap. Use as a context manager.

    ``reserve`` is the share of ``X-Rate-Limit-Limit`` never used (at least one request);
    ``max_requests`` caps the requests of this client (:class:`RequestLimitReached` after);
    ``timeout`` is the deadline of each whole request, in seconds; ``max_wait`` caps every
    wait, and ``on_wait`` is told, in one line, of each wait that is long or capped.
    """

    def __init__(
        self,
        *,
        app_id: str,
        app_token: str,
        api_url: str = DEFAULT_API_URL,
        reserve: float = DEFAULT_RESERVE,
        max_requests: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_wait: float = DEFAULT_MAX_WAIT,
        attempts: int = 6,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        if not 0 <= reserve < 1:
            raise ValueError("reserve must be a share from 0 to below 1")
        if not (math.isfinite(timeout) and timeout > 0 and math.isfinite(max_wait)
                and max_wait >= 0):
            raise ValueError("timeout must be positive and max_wait not negative, both finite")
        self.api_url = api_url.rstrip("/")
        self.reserve = reserve
        self.max_requests = max_requests
        self.requests = 0
        #: The server's clock at the last answer (its ``Date`` header, whole seconds).
        self.last_server_time: datetime | None = None
        self.timeout = timeout
        self.max_wait = max_wait
        self._sleep = sleep
        self._on_wait = on_wait
        self._limit: int | None = None
        self._remaining: int | None = None
        self._retry_at: float | None = None
        self._probe_wait = 1.0
        # Imported here: every command loads this module, few talk to Voucherify, and httpx
        # is a tenth of a second of everyone's start-up.
        import httpx

        from repository.voucherify.http_deadline import DeadlineTransport

        self._transport_error = httpx.TransportError
        self._unsendable = httpx.LocalProtocolError
        keys = {"X-App-Id": app_id, "X-App-Token": app_token}
        if not all(value.isascii() and value.isprintable() for value in keys.values()):
            # httpx would fail with the value in its message.
            raise AuthenticationFailed(
                "the application keys must be printable ASCII: check VOUCHERIFY_APP_ID and "
                "VOUCHERIFY_APP_TOKEN"
            )
        if transport is None:
            try:
                transport = DeadlineTransport(timeout, proxy=_environment_proxy(self.api_url))
            except ValueError as exc:
                raise VoucherifyError(f"cannot reach {self.api_url}: {exc}") from None
        self._http = httpx.Client(
            base_url=self.api_url,
            headers={**keys, "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )
        self._retrying = Retrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(attempts),
            wait=self._wait_for(
                wait_exponential(multiplier=0.5, max=30.0) + wait_random(0, 0.5)
            ),
            sleep=self._sleep_told,
            reraise=True,
        )
        #: What the next retry's wait is for, and the seconds asked before the cap.
        self._next_wait: tuple[str, float] = ("", 0.0)

    def __enter__(self) -> VoucherifyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def list_customers(self, params: Mapping[str, str]) -> CustomerList[dict[str, Any]]:
        """One page of ``GET /v1/customers`` with these query parameters."""
        try:
            return self._retrying(self._list_once, params)
        except _Transient as exc:
            raise ApiUnavailable(f"{self.api_url} did not answer: {exc}") from None

    # -- one request -------------------------------------------------------------------

    def _list_once(self, params: Mapping[str, str]) -> CustomerList[dict[str, Any]]:
        if self.max_requests is not None and self.requests >= self.max_requests:
            raise RequestLimitReached(f"stopped after {self.requests} requests (--max-requests)")
        self._pace()
        self.requests += 1
        try:
            response = self._http.get("/v1/customers", params=dict(params))
        except self._unsendable:
            # Its message quotes the offending header, which may be a key.
            raise VoucherifyError("the request could not be sent: a header value is not "
                                  "allowed (check the application keys)") from None
        except self._transport_error as exc:  # connection refused or dropped, deadlines
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        self._learn_budget(response.headers)
        self.last_server_time = _http_date(response.headers.get("Date")) or self.last_server_time
        status = response.status_code
        if status in (401, 403):
            raise AuthenticationFailed(
                f"{self.api_url} refused the application keys ({status}): check "
                "VOUCHERIFY_APP_ID and VOUCHERIFY_APP_TOKEN"
            )
        if status == 429:
            return self._refused(response)
        if status >= 500:
            raise _Transient(f"HTTP {status}", _retry_after(response.headers.get("Retry-After")))
        if status != 200:
            raise ApiUnavailable(f"{self.api_url} answered {status}: {_error_text(response)}")
        return _page(response)

    def _refused(self, response: httpx.Response) -> CustomerList[dict[str, Any]]:
        kind = response.headers.get("X-Rate-Limit-Type", "")
        if kind == "api_calls_cycle":
            raise BudgetExhausted(
                "Voucherify's request budget for this billing cycle is spent "
                "(429, api_calls_cycle): sync again when the cycle renews"
            )
        retry_after = _retry_after(response.headers.get("Retry-After"))
        raise _Transient(f"HTTP 429 {kind}".rstrip(), retry_after)

    def _learn_budget(self, headers: httpx.Headers) -> None:
        limit = _integer(headers.get("X-Rate-Limit-Limit"))
        remaining = _integer(headers.get("X-Rate-Limit-Remaining"))
        if limit is not None:
            self._limit = limit
        if remaining is not None:
            self._remaining = remaining
        self._retry_at = _unix_time(headers.get("X-Rate-Limit-Retry"))

    def _pace(self) -> None:
        """Wait, when the next request would dip into the reserve, until the window renews."""
        if self._remaining is None:
            return
        reserve = max(1, math.ceil((self._limit or 0) * self.reserve))
        if self._remaining > reserve:
            self._probe_wait = 1.0
            return
        now = time.time()
        if self._retry_at is not None and self._retry_at > now:
            renews = datetime.fromtimestamp(self._retry_at, UTC).isoformat(timespec="seconds")
            if self._retry_at - now > _LONGEST_WINDOW:
                raise BudgetExhausted(
                    f"the request budget is spent until {renews} (X-Rate-Limit-Retry), beyond "
                    "any rate-limit window: the billing cycle's budget; sync again when it "
                    "renews"
                )
            if self._retry_at - now > self.max_wait:
                raise RequestLimitReached(
                    f"the API's rate-limit window renews at {renews}, later than a wait may "
                    f"last ({self.max_wait:g} s)"
                )
            self._wait(self._retry_at - now + 0.5, "for the API's rate-limit window")
        else:
            # The header says "now" although the budget is low: the window's end is unknown,
            # so wait longer each time before spending one more request to find out.
            self._wait(self._probe_wait, "for the API's request budget")
            self._probe_wait = min(self._probe_wait * 2, 60.0)
        self._remaining = None

    def _wait(self, seconds: float, why: str) -> None:
        """Sleep ``seconds``, at most ``max_wait``; a long or capped wait is told first."""
        wait = min(seconds, self.max_wait)
        if self._on_wait is not None and (wait < seconds or wait >= _LONG_WAIT):
            capped = f" (capped: {_count(seconds)} s asked)" if wait < seconds else ""
            self._on_wait(f"waiting {wait:.0f} s {why}{capped}")
        self._sleep(wait)

    def _wait_for(self, backoff: Any) -> Callable[[RetryCallState], float]:
        """Tenacity wait: the server's ``Retry-After`` where it gave one, else ``backoff``;
        noted for :meth:`_sleep_told`, which tenacity calls only when it does retry."""

        def wait(state: RetryCallState) -> float:
            outcome = state.outcome
            error = outcome.exception() if outcome is not None else None
            if isinstance(error, _Transient) and error.retry_after is not None:
                self._next_wait = (f"to retry after {error} (Retry-After)", error.retry_after)
            else:
                self._next_wait = (f"to retry after {error}", float(backoff(state)))
            return min(self._next_wait[1], self.max_wait)

        return wait

    def _sleep_told(self, _capped: float) -> None:
        why, seconds = self._next_wait
        self._wait(seconds, why)


def _page(response: httpx.Response) -> CustomerList[dict[str, Any]]:
    try:
        body = loads_json(response.content)
    except (ValueError, RecursionError) as exc:
        raise ApiUnavailable(f"the list answer is not JSON: {exc}") from None
    # Only a well-formed list object is read: the mirror's sweep deletes by what it lists.
    if not isinstance(body, dict) or body.get("object") != "list":
        raise ApiUnavailable('the list answer is not a list object (expected "object": "list")')
    customers = body.get("customers")
    if not isinstance(customers, list) or not all(isinstance(c, dict) for c in customers):
        raise ApiUnavailable("the list answer has no customers array of objects")
    total = body.get("total")
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        raise ApiUnavailable("the list answer has no total (expected a count of customers)")
    has_more = body.get("has_more")
    if not isinstance(has_more, bool):
        raise ApiUnavailable("the list answer has no has_more (expected true or false)")
    return CustomerList(
        customers=customers,
        total=total,
        has_more=has_more,
        server_time=_http_date(response.headers.get("Date")),
    )


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("message", "details") if body.get(k)]
        if parts:
            return "; ".join(parts)[:300]
    return response.text[:200]


def _number(value: str | None) -> float | None:
    """A header's finite, non-negative number; None for anything else (absent, ``nan``,
    ``inf``, negative, not a number). Thousands of digits parse, as a float, to ``inf``."""
    if value is None or len(value) > 400:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _integer(value: str | None) -> int | None:
    """A count of requests, at most :data:`_LARGEST_COUNT`."""
    number = _number(value)
    return None if number is None else int(min(number, _LARGEST_COUNT))


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date (past: none); None when it
    means nothing. Any wait is capped later, where it is told."""
    when = _http_date(value) if value and not value.strip().isdigit() else None
    if when is not None:
        return max((when - datetime.now(UTC)).total_seconds(), 0.0)
    return _number(value)


def _unix_time(value: str | None) -> float | None:
    """``X-Rate-Limit-Retry``: a Unix time a date can stand for, else None."""
    number = _number(value)
    return number if number is not None and number <= _LATEST_UNIX_TIME else None


def _count(seconds: float) -> str:
    return f"{seconds:.0f}" if seconds < 1e15 else f"{seconds:.3g}"


def _environment_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``, ``ALL_PROXY``, ...;
    ``NO_PROXY`` honoured), as httpx's own transport would take it."""
    import urllib.request  # only here: it is slow to import, and few commands need it

    split = urlsplit(url)
    if urllib.request.proxy_bypass(split.hostname or ""):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(split.scheme) or proxies.get("all")


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).astimezone(UTC)
    except (TypeError, ValueError):
        return None
