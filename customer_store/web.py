"""The HTTP receiver for Voucherify webhooks: a small Starlette app, served by uvicorn.

``POST /webhooks/voucherify`` answers 401 for a missing or wrong signature, 413 for a body
over the limit, 400 for a body that is not an envelope, 2xx once the delivery is recorded
(applied, stale, duplicate or ignored), 422 for a recorded rejection, and 503 with
``Retry-After`` when the database cannot be reached or the delivery cannot be recorded
within its time bound, so that Voucherify delivers it again later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import anyio
import anyio.to_thread
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from models import (
    SIGNATURE_HEADER,
    EventOutcome,
    MalformedDelivery,
    SignatureMatch,
    verify_signature,
)
from repository import (
    DEFAULT_DELIVERY_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DeadlineExceeded,
    IngestResult,
    ingest_delivery_async,
)

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app"]

RETRY_AFTER_SECONDS = "30"
# Past the bound plus this, the answer is 503 even if the database work has not returned
# (a connection that never opens, a pool with no free connection).
_HARD_STOP_GRACE = 1.0
# Bodies up to this size are verified on the event loop (about 3 ms at worst).
_VERIFY_INLINE_BYTES = 256 * 1024

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
) -> Starlette:
    """The receiver, on async sessions. A delivery is accepted when signed with any of
    ``secrets`` (several while a secret is rotated); ``secrets=None`` turns signature checks
    off (the caller must mean it). Each delivery is answered within about
    ``delivery_timeout`` seconds. ``extra_routes`` are served beside it (the read API)."""
    if secrets is not None and not secrets:
        raise ValueError("no webhook secret given; pass secrets=None to accept unsigned bodies")

    async def receive(request: Request) -> JSONResponse:
        started = time.monotonic()
        match = None
        try:
            body = await _read_body(request, max_body_bytes)
            if secrets is not None:
                match = await _check_signature(
                    body, request.headers.get(SIGNATURE_HEADER), secrets
                )
            remaining = delivery_timeout - (time.monotonic() - started)
            if remaining <= 0:
                raise DeadlineExceeded(delivery_timeout)
            # The database bounds its own waits; this stops what it cannot bound (a
            # connection that never opens). Cancelled work rolls back whole.
            with anyio.fail_after(remaining + _HARD_STOP_GRACE):
                result = await ingest_delivery_async(sessions, body, timeout=remaining)
        except ClientDisconnect:
            # Nobody is left to answer; 499 as nginx logs it ("client closed request").
            _log_delivery(499, started, reason="the client disconnected before the body ended")
            return JSONResponse({"error": "client disconnected"}, status_code=400)
        except _Refused as refused:
            _log_delivery(refused.status, started, reason=refused.reason)
            return JSONResponse({"error": refused.reason}, status_code=refused.status)
        except MalformedDelivery as exc:
            _log_delivery(400, started, reason=str(exc))
            return JSONResponse({"error": str(exc)}, status_code=400)
        except (DeadlineExceeded, TimeoutError):
            _log_delivery(503, started, reason=f"not recorded within {delivery_timeout:g} s")
            return _retry_later("the delivery could not be recorded in time; deliver it again")
        except SQLAlchemyError as exc:
            _log_delivery(503, started, reason=f"database unavailable: {type(exc).__name__}")
            return _retry_later("the database is unavailable; deliver again later")
        status = 422 if result.outcome is EventOutcome.REJECTED else 200
        _log_delivery(status, started, result=result, reason=result.error, match=match)
        payload = {"event_id": result.event_id, "outcome": result.outcome.value}
        if result.error:
            payload["error"] = result.error
        return JSONResponse(payload, status_code=status)

    async def healthz(_request: Request) -> JSONResponse:
        try:
            async with sessions() as session:
                await session.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            return JSONResponse(
                {"status": "unavailable", "database": type(exc).__name__}, status_code=503
            )
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/webhooks/voucherify", receive, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            *extra_routes,
        ]
    )


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
    started: float,
    *,
    result: IngestResult | None = None,
    reason: str | None = None,
    match: SignatureMatch | None = None,
) -> None:
    elapsed_ms = (time.monotonic() - started) * 1000
    if result is None:
        log.info("delivery status=%d refused=%r ms=%.1f", status, reason, elapsed_ms)
        return
    # The secret by its position in the configured list (from 1), never the secret itself.
    signed = f" secret=#{match.secret_index + 1} signed={match.signed}" if match else ""
    log.info(
        "delivery status=%d event=%s type=%s customer=%s outcome=%s ms=%.1f%s%s",
        status, result.event_id, result.event_type, result.customer_id,
        result.outcome.value, elapsed_ms, signed, f" error={reason!r}" if reason else "",
    )
