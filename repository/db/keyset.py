"""Keyset pagination: walk a table a page at a time, each page after the last key seen.

Late pages cost what the first one does (an index range scan, no ``OFFSET``), and rows
written meanwhile are seen at most once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

__all__ = ["check_page_size", "keyset_pages"]

K = TypeVar("K")
T = TypeVar("T")


def check_page_size(name: str, value: int) -> None:
    """ValueError naming the caller's argument ``name`` unless ``value`` is at least 1."""
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")


def keyset_pages(
    fetch: Callable[[K | None], Sequence[T]], key: Callable[[T], K], *, size: int
) -> Iterator[Sequence[T]]:
    """Pages from ``fetch(after)`` (``None`` first, then ``key`` of the last item), until
    one comes back with fewer than ``size`` items. ``fetch`` must order by the key and
    return at most ``size`` items."""
    check_page_size("size", size)
    after: K | None = None
    while True:
        page = fetch(after)
        if page:
            yield page
        if len(page) < size:
            return
        after = key(page[-1])
