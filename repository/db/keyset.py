"""Keyset pagination: walk a table a page at a time, each page after the last key seen.

Late pages cost what the first one does (an index range scan, no ``OFFSET``), and rows
written meanwhile are seen at most once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Generic, TypeVar

__all__ = ["check_page_size", "keyset_pages", "keyset_pages_async"]

K = TypeVar("K")
T = TypeVar("T")


def check_page_size(name: str, value: int) -> None:
    """ValueError naming the caller's argument ``name`` unless ``value`` is at least 1."""
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")


class _Walk(Generic[K, T]):
    """Where a walk is: the key to read after, and whether the last page was the end."""

    def __init__(self, key: Callable[[T], K], size: int) -> None:
        check_page_size("size", size)
        self.key, self.size = key, size
        self.after: K | None = None
        self.done = False

    def went_past(self, page: Sequence[T]) -> None:
        """Move past ``page``: a page shorter than asked for is the last."""
        if len(page) < self.size:
            self.done = True
        else:
            self.after = self.key(page[-1])


def keyset_pages(
    fetch: Callable[[K | None], Sequence[T]], key: Callable[[T], K], *, size: int
) -> Iterator[Sequence[T]]:
    """Pages from ``fetch(after)`` (``None`` first, then ``key`` of the last item), until
    one comes back with fewer than ``size`` items. ``fetch`` must order by the key and
    return at most ``size`` items."""
    walk = _Walk(key, size)
    while not walk.done:
        page = fetch(walk.after)
        if page:
            yield page
        walk.went_past(page)


async def keyset_pages_async(
    fetch: Callable[[K | None], Awaitable[Sequence[T]]], key: Callable[[T], K], *, size: int
) -> AsyncIterator[Sequence[T]]:
    """:func:`keyset_pages` for a ``fetch`` to await."""
    walk = _Walk(key, size)
    while not walk.done:
        page = await fetch(walk.after)
        if page:
            yield page
        walk.went_past(page)
