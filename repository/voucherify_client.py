"""A client for Voucherify's customer list API that spends the rate-limit budget on purpose.

Voucherify blocks a whole project once it exceeds its request limit, the customer service's
own calls included. So the client reads ``X-Rate-Limit-Remaining`` from every response and,
when only the reserve (a share of ``X-Rate-Limit-Limit``) is left, waits until
``X-Rate-Limit-Retry`` instead of causing a ``429``. Server errors, dropped connections and
an occasional ``429`` are retried with backoff (``Retry-After`` honoured); a refused key or
an exhausted billing cycle stops at once.

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
from typing import TYPE_CHECKING, Any

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
    "DEFAULT_RESERVE",
    "ApiUnavailable",
    "AuthenticationFailed",
    "BudgetExhausted",
    "CustomerPage",
    "RequestLimitReached",
    "VoucherifyClient",
    "VoucherifyError",
]

DEFAULT_API_URL = "https://api.voucherify.io"
#: Share of the per-window limit left to the service's own calls.
DEFAULT_RESERVE = 0.25
#: The longest a single wait for the rate-limit window may be (a sandbox's window is an hour).
_MAX_WAIT = 3600.0


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
class CustomerPage:
    """One answer of ``GET /v1/customers``: the customers as decoded JSON, untouched."""

    customers: list[dict[str, Any]]
    total: int
    has_more: bool
    #: The server's clock (``Date`` header), whole seconds.
    server_time: datetime | None


class VoucherifyClient:
    """``GET /v1/customers`` with pacing, retries and a request cap. Use as a context manager.

    ``reserve`` is the share of ``X-Rate-Limit-Limit`` never used (at least one request);
    ``max_requests`` caps the requests of this client (:class:`RequestLimitReached` after).
    """

    def __init__(
        self,
        *,
        app_id: str,
        app_token: str,
        api_url: str = DEFAULT_API_URL,
        reserve: float = DEFAULT_RESERVE,
        max_requests: int | None = None,
        timeout: float = 30.0,
        attempts: int = 6,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 0 <= reserve < 1:
            raise ValueError("reserve must be a share from 0 to below 1")
        self.api_url = api_url.rstrip("/")
        self.reserve = reserve
        self.max_requests = max_requests
        self.requests = 0
        #: The server's clock at the last answer (its ``Date`` header, whole seconds).
        self.last_server_time: datetime | None = None
        self._sleep = sleep
        self._limit: int | None = None
        self._remaining: int | None = None
        self._retry_at: float | None = None
        self._probe_wait = 1.0
        # Imported here: every command loads this module, few talk to Voucherify, and httpx
        # is a tenth of a second of everyone's start-up.
        import httpx

        self._transport_error = httpx.TransportError
        self._http = httpx.Client(
            base_url=self.api_url,
            headers={"X-App-Id": app_id, "X-App-Token": app_token, "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )
        self._retrying = Retrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(attempts),
            wait=_wait_for(wait_exponential(multiplier=0.5, max=30.0) + wait_random(0, 0.5)),
            sleep=sleep,
            reraise=True,
        )

    def __enter__(self) -> VoucherifyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def list_customers(self, params: Mapping[str, str]) -> CustomerPage:
        """One page of ``GET /v1/customers`` with these query parameters."""
        try:
            return self._retrying(self._list_once, params)
        except _Transient as exc:
            raise ApiUnavailable(f"{self.api_url} did not answer: {exc}") from None

    # -- one request -------------------------------------------------------------------

    def _list_once(self, params: Mapping[str, str]) -> CustomerPage:
        if self.max_requests is not None and self.requests >= self.max_requests:
            raise RequestLimitReached(f"stopped after {self.requests} requests (--max-requests)")
        self._pace()
        self.requests += 1
        try:
            response = self._http.get("/v1/customers", params=dict(params))
        except self._transport_error as exc:  # connection refused or dropped, timeouts
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
            raise _Transient(f"HTTP {status}", _seconds(response.headers.get("Retry-After")))
        if status != 200:
            raise ApiUnavailable(f"{self.api_url} answered {status}: {_error_text(response)}")
        return _page(response)

    def _refused(self, response: httpx.Response) -> CustomerPage:
        kind = response.headers.get("X-Rate-Limit-Type", "")
        if kind == "api_calls_cycle":
            raise BudgetExhausted(
                "Voucherify's request budget for this billing cycle is spent "
                "(429, api_calls_cycle): sync again when the cycle renews"
            )
        retry_after = _seconds(response.headers.get("Retry-After"))
        raise _Transient(f"HTTP 429 {kind}".rstrip(), retry_after)

    def _learn_budget(self, headers: httpx.Headers) -> None:
        limit = _integer(headers.get("X-Rate-Limit-Limit"))
        remaining = _integer(headers.get("X-Rate-Limit-Remaining"))
        if limit is not None:
            self._limit = limit
        if remaining is not None:
            self._remaining = remaining
        retry = _seconds(headers.get("X-Rate-Limit-Retry"))
        self._retry_at = retry

    def _pace(self) -> None:
        """Wait, when the next request would dip into the reserve, until the window renews."""
        if self._remaining is None:
            return
        reserve = max(1, math.ceil((self._limit or 0) * self.reserve))
        if self._remaining > reserve:
            self._probe_wait = 1.0
            return
        now = time.time()
        if self._retry_at is not None and self._retry_at - now > _MAX_WAIT:
            renews = datetime.fromtimestamp(self._retry_at, UTC).isoformat(timespec="seconds")
            raise BudgetExhausted(
                f"the request budget is spent until {renews} (X-Rate-Limit-Retry), beyond any "
                "rate-limit window: the billing cycle's budget; sync again when it renews"
            )
        if self._retry_at is not None and self._retry_at > now:
            self._sleep(self._retry_at - now + 0.5)
        else:
            # The header says "now" although the budget is low: the window's end is unknown,
            # so wait longer each time before spending one more request to find out.
            self._sleep(self._probe_wait)
            self._probe_wait = min(self._probe_wait * 2, 60.0)
        self._remaining = None


def _wait_for(backoff: Any) -> Callable[[RetryCallState], float]:
    """Tenacity wait: the server's ``Retry-After`` where it gave one, else ``backoff``."""

    def wait(state: RetryCallState) -> float:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, _Transient) and error.retry_after is not None:
            return min(max(error.retry_after, 0.0), _MAX_WAIT)
        return float(backoff(state))

    return wait


def _page(response: httpx.Response) -> CustomerPage:
    try:
        body = loads_json(response.content)
    except (ValueError, RecursionError) as exc:
        raise ApiUnavailable(f"the list answer is not JSON: {exc}") from None
    # Only a well-formed list object is read: a sync's sweep deletes by what it lists.
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
    return CustomerPage(
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


def _integer(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).astimezone(UTC)
    except (TypeError, ValueError):
        return None
