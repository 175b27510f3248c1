"""A Voucherify-compatible read API: ``GET /v1/customers`` and ``GET /v1/customers/{id}``.

Any official Voucherify SDK pointed at the store (its base URL changed) reads customers
from here instead of over the internet: the same paths, parameters, authentication headers
(``X-App-Id``, ``X-App-Token``) and error shape. Read-only: other methods answer 405. A
read that meets a lost connection (a failover, a restarted pooler) is retried once on a
new one (:func:`repository.read_in_session_async`).

Everything under ``/v1`` (``/v1`` itself included, never redirected) asks for the
credentials first; each header given once: two ``X-App-Token`` (or ``X-App-Id``) headers
answer 400 rather than one of them being picked.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from customer_store.http_errors import error_response
from models import json_text
from repository import CustomerRepository, read_in_session_async
from repository.db import AsyncReadRouter
from repository.voucherify import (
    CustomerList,
    InvalidListParameter,
    ListQuery,
    TotalCache,
    count_listed,
    decode_customer_value,
    list_customers,
    parse_list_query,
)

__all__ = ["APP_ID_VARIABLE", "APP_TOKEN_VARIABLE", "read_routes"]

APP_ID_VARIABLE = "CUSTOMER_STORE_APP_ID"
APP_TOKEN_VARIABLE = "CUSTOMER_STORE_APP_TOKEN"  # noqa: S105 - the variable's name
_CREDENTIALS = ("X-App-Id", "X-App-Token")
#: Other methods are refused by the router: 405 in the same shape (http_errors).
_METHODS = ["GET", "HEAD"]
T = TypeVar("T")


def read_routes(
    sessions: async_sessionmaker[AsyncSession] | AsyncReadRouter,
    *,
    app_id: str,
    app_token: str,
) -> list[BaseRoute]:
    """The routes, reading through ``sessions`` (read-only ones), or through a router that
    sends each read to a read replica while it is not too far behind."""
    if not app_id or not app_token:
        raise ValueError("the read API needs both an application id and a token")

    async def run(work: Callable[[Session], T]) -> T:
        if isinstance(sessions, AsyncReadRouter):
            return await sessions.run(work)
        return await read_in_session_async(sessions, work)

    expected = (app_id.encode(), app_token.encode())
    totals = TotalCache()

    def refused(request: Request) -> Response | None:
        for name in _CREDENTIALS:
            if len(request.headers.getlist(name)) > 1:
                return error_response(400, "duplicate_header", "Bad request",
                                      f"{name} given more than once: send it once")
        given = (request.headers.get(_CREDENTIALS[0], "").encode(),
                 request.headers.get(_CREDENTIALS[1], "").encode())
        # Both compared, always, in constant time: a timing difference tells nothing.
        same_id = hmac.compare_digest(given[0], expected[0])
        same_token = hmac.compare_digest(given[1], expected[1])
        if not (same_id and same_token):
            return error_response(401, "unauthorized", "Unauthorized",
                                  "Missing or invalid X-App-Id / X-App-Token")
        return None

    async def one(request: Request) -> Response:
        problem = refused(request)
        if problem is not None:
            return problem
        key = request.path_params["customer_id"]
        text = await run(partial(_get_json, key=key))
        if text is None:
            return error_response(404, "not_found", "Resource not found",
                                  f"Cannot find customer with id {key}")
        return Response(text.encode(), media_type="application/json")

    async def many(request: Request) -> Response:
        problem = refused(request)
        if problem is not None:
            return problem
        try:
            query = parse_list_query(request.query_params)
        except InvalidListParameter as exc:
            return error_response(400, "invalid_query_params", "Invalid query params",
                                  str(exc))
        page = await run(partial(_page, query=query, totals=totals))
        return _json({
            "object": "list",
            "data_ref": "customers",
            "customers": page.customers,
            "total": page.total,
            "has_more": page.has_more,
        })

    async def other(request: Request) -> Response:
        problem = refused(request)
        return problem if problem is not None else error_response(
            404, "not_found", "Resource not found", f"{request.url.path} is not served here"
        )

    return [
        Route("/v1/customers", many, methods=_METHODS),
        Route("/v1/customers/{customer_id:path}", one, methods=_METHODS),
        # "/v1" as well: the router would otherwise redirect it to "/v1/", unauthenticated.
        Route("/v1", other, methods=_METHODS),
        Route("/v1/{rest:path}", other, methods=_METHODS),
    ]


def _get_json(session: Session, *, key: str) -> str | None:
    # Voucherify takes an id or a source_id in the same place.
    return CustomerRepository(session).get_json(key, or_source_id=True)


def _page(
    session: Session, *, query: ListQuery, totals: TotalCache
) -> CustomerList[dict[str, Any]]:
    # JSON values rather than models: they are only serialised (``json_text``).
    return list_customers(
        session, query,
        total=lambda: totals.get(query.filter_key(), lambda: count_listed(session, query)),
        decode=decode_customer_value,
    )


def _json(value: dict[str, Any]) -> Response:
    return Response(json_text(value).encode(), media_type="application/json")
