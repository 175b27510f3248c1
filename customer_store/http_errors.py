"""How the HTTP app answers what no endpoint answered: Voucherify's error shape.

- :func:`error_response`: ``{"code", "key", "message", "details"}``, as Voucherify's API
  answers errors (the read API's own refusals use it too);
- :func:`http_exception`: Starlette's routing errors (404 for an unknown path, 405 for a
  method a route does not serve, TRACE and unknown methods included) in that shape rather
  than as plain text;
- :func:`database_unavailable`: a read that met a database that is gone (a failover, a
  restart: its one retry on a fresh connection failed too) is a 503 with ``Retry-After``,
  as the receiver answers deliveries then, not a 500;
- :class:`UnexpectedErrors`: an exception no endpoint handled becomes a 500 in that shape
  with a ``request_id`` (also in ``X-Request-Id``). The log line says the exception's type
  and that request id, with a traceback of frames and types only
  (:func:`customer_store.logs.safe_traceback`): never an exception's message, which for a
  database error quotes the SQL and may quote bound values such as a client's filter.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from http import HTTPStatus

from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from customer_store.logs import FIELDS, safe_traceback
from models import json_text
from repository.db import is_retryable

__all__ = [
    "REQUEST_ID_HEADER",
    "RETRY_AFTER_SECONDS",
    "UnexpectedErrors",
    "database_unavailable",
    "error_response",
    "http_exception",
]

REQUEST_ID_HEADER = "X-Request-Id"
#: What a 503 asks the client to wait, in seconds (``Retry-After``).
RETRY_AFTER_SECONDS = "30"
log = logging.getLogger("customer_store.http")


def error_response(
    status: int,
    key: str,
    message: str,
    details: str,
    *,
    request_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An error answered as Voucherify answers them."""
    body: dict[str, object] = {"code": status, "key": key, "message": message, "details": details}
    if request_id is not None:
        body["request_id"] = request_id
    return Response(
        json_text(body).encode(), status_code=status, headers=headers,
        media_type="application/json",
    )


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's ``HTTPException`` (a path no route serves, a method a route does not
    allow) in :func:`error_response`'s shape; for ``exception_handlers``."""
    if not isinstance(exc, HTTPException):  # pragma: no cover - registered for it alone
        raise exc
    status = HTTPStatus(exc.status_code)
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        details = f"{request.method} is not allowed here (allowed: {allowed})"
    elif exc.status_code == 404:
        details = f"{request.url.path} is not served here"
    else:
        details = status.description
    return error_response(
        exc.status_code, status.phrase.lower().replace(" ", "_").replace("-", "_"),
        status.phrase, details, headers=exc.headers,
    )


async def database_unavailable(request: Request, exc: Exception) -> Response:
    """A database error that running the same work again may get past (the connection or
    the primary gone, a lock timeout) as 503 with ``Retry-After``; any other database error
    is unexpected (500, :class:`UnexpectedErrors`). For ``exception_handlers``."""
    if not isinstance(exc, DBAPIError) or not is_retryable(exc):
        raise exc
    log.warning(
        "database unavailable for %s %s: %s", request.method, request.url.path,
        type(exc.orig or exc).__name__,
    )
    return error_response(
        503, "service_unavailable", "Service unavailable",
        "The database is unavailable (a failover or restart); retry shortly",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


class UnexpectedErrors:
    """ASGI middleware: an exception that escapes the app is answered 500 (when no answer
    has started yet) and logged without its message, under a request id the answer
    carries. Nothing is raised further, so the server does not log it again."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            request_id = secrets.token_hex(8)
            _log_unexpected(exc, request_id)
            if started:  # too late for a status; the server ends the connection
                return
            response = error_response(
                500, "internal_error", "Internal server error",
                f"An unexpected error occurred; quote request id {request_id}",
                request_id=request_id, headers={REQUEST_ID_HEADER: request_id},
            )
            await response(scope, receive, send)


def _log_unexpected(exc: BaseException, request_id: str) -> None:
    kind = type(exc).__name__
    trace = safe_traceback(exc)
    log.error(
        "unexpected error %s request_id=%s\n%s", kind, request_id, trace,
        extra={FIELDS: {"message": "unexpected error", "error": kind,
                        "request_id": request_id, "traceback": trace}},
    )
