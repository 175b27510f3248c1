"""The async API behind a blocking face, so that one test body checks both APIs.

:class:`Blocking` wraps an object of the async API (``AsyncCustomerRepository``,
``AsyncSession``) and runs what its methods return on one event loop: a coroutine is
awaited, an async iterator is drained item by item. The tests then call ``repo.upsert(...)``
whichever API is behind ``repo``; the fixtures in ``conftest.py`` choose.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

__all__ = ["APIS", "Blocking"]

#: The two ways in to the repository that every repository and ingestion test runs through.
APIS = ["sync", "async"]


class Blocking:
    """``target``'s methods, run to completion on ``runner``'s event loop."""

    def __init__(self, target: Any, runner: asyncio.Runner) -> None:
        self._target = target
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name == "session":
            return Blocking(value, self._runner)
        if not callable(value):
            return value
        return self._blocking(value)

    def _blocking(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if inspect.isawaitable(result):
                return self._runner.run(_awaited(result))
            if isinstance(result, AsyncIterator):
                return self._drain(result)
            return result

        return call

    def _drain(self, iterator: AsyncIterator[Any]) -> Iterator[Any]:
        while True:
            try:
                yield self._runner.run(_next(iterator))
            except StopAsyncIteration:
                return


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


async def _next(iterator: AsyncIterator[Any]) -> Any:
    return await iterator.__anext__()
