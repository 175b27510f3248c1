"""The HTTP receiver for Voucherify webhooks: a small Starlette app, served by uvicorn.

``POST /webhooks/voucherify`` answers 401 for a missing or wrong signature, 413 for a body
over the limit, 415 for a body that is not UTF-8 JSON (UTF-16 or UTF-32, or a
``Content-Type`` charset other than utf-8: RFC 8259), 400 for a body that is not an
envelope, 2xx once the delivery is recorded
(applied, stale, duplicate or ignored), 422 for a recorded rejection, and 503 with
``Retry-After`` when the database cannot be reached or the delivery cannot be recorded
(replicated to a synchronous standby included) within its time bound, so that
Voucherify delivers it again later.

An unknown path or method answers 404 or 405, and an unexpected error 500 with a request id,
as JSON in Voucherify's error shape (:mod:`customer_store.http_errors`).

``GET /healthz`` answers 200 when the database answers and its schema is at head, else 503
saying which (for readiness probes); ``GET /metrics`` answers Prometheus' text format (see
:mod:`customer_store.metrics`). Each delivery is logged once, as a text line or, with
``--log-format json``, as a JSON object of fields that hold no secret, body or personal
value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.to_thread
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from customer_store.common import mask_passwords
from customer_store.http_errors import (
    RETRY_AFTER_SECONDS,
    UnexpectedErrors,
    database_unavailable,
    http_exception,
)
from customer_store.logs import FIELDS
from customer_store.metrics import ReceiverMetrics
from models import (
    SIGNATURE_HEADER,
    EventOutcome,
    MalformedDelivery,
    SignatureMatch,
    UnsupportedEncoding,
    verify_signature,
)
from repository import DeadlineExceeded, IngestResult, ingest_delivery_async
from repository.db import (
    NotReplicated,
    current_revision,
    first_line,
    head_revision,
    with_pooler_hint,
)
from repository.webhooks import DEFAULT_DELIVERY_TIMEOUT, DEFAULT_MAX_BODY_BYTES

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app"]

# Past the bound plus this, the answer is 503 even if the database work has not returned
# (a connection that never opens, a pool with no free connection).
_HARD_STOP_GRACE = 1.0
# Bodies up to this size are verified on the event loop (about 3 ms at worst).
_VERIFY_INLINE_BYTES = 256 * 1024
#: Seconds /healthz waits for the database before answering 503.
HEALTH_TIMEOUT = 2.5

log = logging.getLogger("customer_store.web")


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def create_app(
    sessions: async_sessionmaker[AsyncSession],
    *,
    secrets: Sequence[bytes] | None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT,
    extra_routes: Sequence[BaseRoute] = (),
    metrics: ReceiverMetrics | None = None,
) -> Starlette:
    """The receiver, on async sessions. A delivery is accepted when signed with any of
    ``secrets`` (several while a secret is rotated); ``secrets=None`` turns signature checks
    off (the caller must mean it). Each delivery is answered within about
    ``delivery_timeout`` seconds. ``extra_routes`` are served beside it (the read API).
    ``metrics`` (a registry of its own per app by default) is served on ``/metrics``."""
    if secrets is not None and not secrets:
        raise ValueError("no webhook secret given; pass secrets=None to accept unsigned bodies")
    metrics = metrics or ReceiverMetrics(sessions)
    head = head_revision()

    def answered(status: int, outcome: str, started: float, **details: Any) -> None:
        seconds = time.monotonic() - started
        metrics.delivery(outcome, status, seconds)
        _log_delivery(status, outcome, seconds, **details)

    async def receive(request: Request) -> JSONResponse:
        started = time.monotonic()
        match = None
        try:
            body = await _read_body(request, max_body_bytes)
            if secrets is not None:
                match = await _check_signature(
                    body, request.headers.get(SIGNATURE_HEADER), secrets
                )
            _check_charset(request.headers.get("content-type"))
            remaining = delivery_timeout - (time.monotonic() - started)
            if remaining <= 0:
                raise DeadlineExceeded(delivery_timeout)
            # The database bounds its own waits; this stops what it cannot bound (a
            # connection that never opens). Cancelled work rolls back whole.
            with anyio.fail_after(remaining + _HARD_STOP_GRACE):
                result = await ingest_delivery_async(
                    sessions, body, timeout=remaining, on_retry=metrics.retry
                )
        except ClientDisconnect:
            # Nobody is left to answer; 499 as nginx logs it ("client closed request").
            answered(499, "disconnected", started,
                     reason="the client disconnected before the body ended")
            return JSONResponse({"error": "client disconnected"}, status_code=400)
        except _Refused as refused:
            answered(refused.status, "refused", started, reason=refused.reason)
            return JSONResponse({"error": refused.reason}, status_code=refused.status)
        except UnsupportedEncoding as exc:
            answered(415, "refused", started, reason=str(exc))
            return JSONResponse({"error": str(exc)}, status_code=415)
        except MalformedDelivery as exc:
            answered(400, "malformed", started, reason=str(exc))
            return JSONResponse({"error": str(exc)}, status_code=400)
        except (DeadlineExceeded, TimeoutError):
            answered(503, "timeout", started,
                     reason=f"not recorded within {delivery_timeout:g} s")
            return _retry_later("the delivery could not be recorded in time; deliver it again")
        except NotReplicated:
            # Committed on the primary alone: not acknowledged, so that Voucherify delivers
            # it again (the redelivery finds the event stored once it is replicated).
            answered(503, "unreplicated", started,
                     reason="committed locally, not confirmed by the synchronous standby")
            return _retry_later("the delivery could not be replicated in time; deliver it again")
        except SQLAlchemyError as exc:
            metrics.database_error()
            answered(503, "unavailable", started,
                     reason=with_pooler_hint(f"database unavailable: {type(exc).__name__}", exc))
            return _retry_later("the database is unavailable; deliver again later")
        status = 422 if result.outcome is EventOutcome.REJECTED else 200
        answered(status, result.outcome.value, started,
                 result=result, reason=result.error, match=match)
        payload = {"event_id": result.event_id, "outcome": result.outcome.value}
        if result.error:
            payload["error"] = result.error
        return JSONResponse(payload, status_code=status)

    async def healthz(_request: Request) -> JSONResponse:
        """Ready when the database answers and its schema is at head."""
        try:
            with anyio.fail_after(HEALTH_TIMEOUT):
                async with sessions() as session:
                    current = await session.run_sync(_schema_revision)
        except TimeoutError:
            metrics.database_error()
            return _unavailable(f"database unreachable: no answer within {HEALTH_TIMEOUT:g} s")
        except SQLAlchemyError as exc:
            metrics.database_error()
            # The driver's first line (never a statement), any URL in it without password.
            return _unavailable(f"database unreachable: {mask_passwords(first_line(exc))}")
        if current != head:
            return _unavailable(f"schema at revision {current or 'none'}, not head {head}")
        return JSONResponse({"status": "ok"})

    async def scrape(request: Request) -> Response:
        content, content_type = await metrics.exposition(request.headers.get("accept"))
        return Response(content, media_type=content_type)

    return Starlette(
        routes=[
            Route("/webhooks/voucherify", receive, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", scrape, methods=["GET"]),
            *extra_routes,
        ],
        # An unknown path or method and an unexpected error are answered in JSON, the
        # error logged without its message (customer_store.http_errors).
        middleware=[Middleware(UnexpectedErrors)],
        exception_handlers={HTTPException: http_exception, DBAPIError: database_unavailable},
    )


def _schema_revision(session: Session) -> str | None:
    return current_revision(session.connection())


def _unavailable(reason: str) -> JSONResponse:
    return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _Refused(400, "bad Content-Length")
        if int(declared) > limit:
            raise _Refused(413, f"body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _Refused(413, f"body over {limit} bytes")
    return bytes(body)


def _check_charset(content_type: str | None) -> None:
    """Refuse a body declared in a charset other than UTF-8 (a body in UTF-16 or UTF-32
    without one is refused where it is decoded: models.json_decoding)."""
    for parameter in (content_type or "").split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() != "charset":
            continue
        charset = value.strip().strip('"').lower()
        if charset not in ("utf-8", "utf8"):
            raise _Refused(415, f"charset {charset[:40]!r} is not utf-8: JSON is UTF-8 (RFC 8259)")


async def _check_signature(
    body: bytes, signature: str | None, secrets: Sequence[bytes]
) -> SignatureMatch:
    if not signature:
        raise _Refused(401, f"missing {SIGNATURE_HEADER}")
    if len(body) <= _VERIFY_INLINE_BYTES:
        match = verify_signature(body, signature, secrets)
    else:  # linear, yet a large hostile body would hold the event loop for a while
        match = await anyio.to_thread.run_sync(verify_signature, body, signature, secrets)
    if match is None:
        raise _Refused(401, "wrong signature")
    return match


def _retry_later(message: str) -> JSONResponse:
    return JSONResponse(
        {"error": message}, status_code=503, headers={"Retry-After": RETRY_AFTER_SECONDS}
    )


def _log_delivery(
    status: int,
    outcome: str,
    seconds: float,
    *,
    result: IngestResult | None = None,
    reason: str | None = None,
    match: SignatureMatch | None = None,
) -> None:
    """One line per delivery. Its fields (what a JSON line holds) are ids, the outcome,
    the status, the time and, for a delivery not recorded, why: never the error of a
    rejected one, which may quote a value of the payload (``events --outcome rejected``
    has it)."""
    elapsed_ms = seconds * 1000
    fields: dict[str, Any] = {
        "message": "delivery",
        "event": result.event_id if result else None,
        "type": result.event_type if result else None,
        "customer": result.customer_id if result else None,
        "outcome": outcome,
        "status": status,
        "ms": round(elapsed_ms, 1),
    }
    if result is None:
        fields["reason"] = reason
        log.info("delivery status=%d refused=%r ms=%.1f", status, reason, elapsed_ms,
                 extra={FIELDS: fields})
        return
    # The secret by its position in the configured list (from 1), never the secret itself.
    signed = f" secret=#{match.secret_index + 1} signed={match.signed}" if match else ""
    if match:
        fields["secret"] = f"#{match.secret_index + 1}"
        fields["signed"] = str(match.signed)
    log.info(
        "delivery status=%d event=%s type=%s customer=%s outcome=%s ms=%.1f%s%s",
        status, result.event_id, result.event_type, result.customer_id,
        result.outcome.value, elapsed_ms, signed, f" error={reason!r}" if reason else "",
        extra={FIELDS: fields},
    )
