"""The HTTP receiver for Voucherify webhooks: a small Starlette app, served by uvicorn.

``POST /webhooks/voucherify`` answers 401 for a missing or wrong signature, 413 for a body
over the limit, 400 for a body that is not an envelope, 2xx once the delivery is recorded
(applied, stale, duplicate or ignored), 422 for a recorded rejection, and 503 when the
database cannot be reached, so that Voucherify delivers again later.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from models.events import EventOutcome
from repository.ingest import IngestResult, MalformedDelivery, ingest_delivery

__all__ = ["DEFAULT_MAX_BODY_BYTES", "SIGNATURE_HEADER", "create_app", "sign"]

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
SIGNATURE_HEADER = "x-voucherify-signature"
RETRY_AFTER_SECONDS = "30"

log = logging.getLogger("customer_store.web")


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def sign(body: bytes, secret: bytes) -> str:
    """The signature Voucherify sends: lowercase hex HMAC-SHA256 of the raw body."""
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def create_app(
    sessions: sessionmaker[Session],
    *,
    secret: bytes | None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Starlette:
    """The receiver; ``secret=None`` turns signature checks off (the caller must mean it)."""

    async def receive(request: Request) -> JSONResponse:
        started = time.monotonic()
        result: IngestResult | None = None
        try:
            body = await _read_body(request, max_body_bytes)
            if secret is not None:
                _check_signature(request, body, secret)
            result = await run_in_threadpool(ingest_delivery, sessions, body)
        except _Refused as refused:
            _log_delivery(refused.status, None, started, refused.reason)
            return JSONResponse({"error": refused.reason}, status_code=refused.status)
        except MalformedDelivery as exc:
            _log_delivery(400, None, started, str(exc))
            return JSONResponse({"error": str(exc)}, status_code=400)
        except SQLAlchemyError as exc:
            _log_delivery(503, None, started, f"database unavailable: {type(exc).__name__}")
            return JSONResponse(
                {"error": "the database is unavailable; deliver again later"},
                status_code=503,
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            )
        status = 422 if result.outcome is EventOutcome.REJECTED else 200
        _log_delivery(status, result, started, result.error)
        payload = {"event_id": result.event_id, "outcome": result.outcome.value}
        if result.error:
            payload["error"] = result.error
        return JSONResponse(payload, status_code=status)

    async def healthz(_request: Request) -> JSONResponse:
        try:
            await run_in_threadpool(_ping, sessions)
        except SQLAlchemyError as exc:
            return JSONResponse(
                {"status": "unavailable", "database": type(exc).__name__}, status_code=503
            )
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/webhooks/voucherify", receive, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
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


def _check_signature(request: Request, body: bytes, secret: bytes) -> None:
    given = request.headers.get(SIGNATURE_HEADER)
    if not given:
        raise _Refused(401, f"missing {SIGNATURE_HEADER}")
    expected = sign(body, secret).encode("ascii")
    if not hmac.compare_digest(expected, given.strip().lower().encode("utf-8", "replace")):
        raise _Refused(401, "wrong signature")


def _ping(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        session.execute(text("SELECT 1"))


def _log_delivery(
    status: int, result: IngestResult | None, started: float, reason: str | None
) -> None:
    elapsed_ms = (time.monotonic() - started) * 1000
    if result is None:
        log.info("delivery status=%d refused=%r ms=%.1f", status, reason, elapsed_ms)
        return
    log.info(
        "delivery status=%d event=%s type=%s customer=%s outcome=%s ms=%.1f%s",
        status, result.event_id, result.event_type, result.customer_id,
        result.outcome.value, elapsed_ms, f" error={reason!r}" if reason else "",
    )
