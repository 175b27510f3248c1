"""A full mirror run's sweep: the evidence it needs before deleting, and the deletions it makes.

A sweep deletes the stored customers a full listing did not show. An upstream that ends a
listing early or lists an empty page must not empty the mirror, so a sweep deletes only
when the listing saw as many customers as the API reported (give or take
:func:`listing_margin`, for customers created or deleted while it ran), and no more than
``max_deletions`` (by default :func:`default_max_deletions`). Its tombstones are ``swept``:
any later payload of the customer brings it back.
"""

from __future__ import annotations

from collections.abc import Set
from datetime import datetime
from functools import partial

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from repository.db.keyset import keyset_pages
from repository.db.retry import run_in_transaction
from repository.db.tables import customers
from repository.store.customers import CustomerRepository, DeleteOutcome
from repository.voucherify.client import VoucherifyError
from repository.voucherify.mirror_state import count_unlisted, unlisted_customers

__all__ = [
    "SweepRefused",
    "default_max_deletions",
    "delete_unlisted",
    "excess_deletions",
    "incomplete_listing",
    "listing_margin",
    "missing_from",
]

#: How far the customers a full listing saw may be from the ``total`` the API reported
#: (customers deleted or created while it ran): this many, or this share of the total.
LISTING_MARGIN = 10
LISTING_MARGIN_SHARE = 0.001
#: The sweep's default bound: this share of the stored customers, at least the minimum.
MAX_DELETIONS_SHARE = 0.1
MIN_MAX_DELETIONS = 10
_PAGE = 500


class SweepRefused(VoucherifyError):
    """A full mirror run's sweep deleted nothing: its listing was not complete by every sign, or
    it would have deleted more than ``max_deletions``. The customers it listed are stored;
    the next full run lists again."""


def listing_margin(total: int) -> int:
    """How far a full listing's count may be from the ``total`` reported for a sweep."""
    return max(LISTING_MARGIN, int(total * LISTING_MARGIN_SHARE))


def default_max_deletions(stored: int) -> int:
    """The most customers a sweep deletes by default: 10 % of those stored, at least 10."""
    return max(MIN_MAX_DELETIONS, int(stored * MAX_DELETIONS_SHARE))


def incomplete_listing(seen: int, total: int | None) -> str | None:
    """Why a listing that saw ``seen`` customers, the API reporting ``total``, is no ground
    for a sweep; None when it is."""
    if total is None:
        return "the listing ended with no answer read: deleted nothing"
    margin = listing_margin(total)
    if abs(seen - total) > margin:
        return (
            f"the listing is incomplete: {seen} customers listed, the API reported a "
            f"total of {total} (at most {margin} apart): deleted nothing"
        )
    return None


def excess_deletions(
    session: Session, api_url: str, started: datetime, max_deletions: int | None
) -> str | None:
    """Why the sweep of the listing started at ``started`` would delete too many customers
    (more than ``max_deletions``, None for the default); None when it would not."""
    doomed = count_unlisted(session, api_url, started)
    held = int(session.scalar(select(func.count()).select_from(customers)) or 0)
    bound = default_max_deletions(held) if max_deletions is None else max_deletions
    if doomed <= bound:
        return None
    return (
        f"the sweep would delete {doomed} of {held} stored customers, more than "
        f"--max-deletions {bound}: deleted nothing (raise --max-deletions if "
        "Voucherify really lost them)"
    )


def missing_from(session: Session, started: datetime, listed: Set[str]) -> int:
    """A dry run's sweep: how many stored customers older than ``started`` are not among
    the ``listed`` ids (held in memory, not recorded)."""
    fetch = partial(unlisted_customers, session, None, started, limit=_PAGE)
    return sum(
        sum(cid not in listed for cid in page) for page in keyset_pages(fetch, str, size=_PAGE)
    )


def delete_unlisted(sessions: sessionmaker[Session], api_url: str, started: datetime) -> int:
    """Delete the stored customers older than ``started`` that the listing did not record,
    a page per transaction; how many were removed."""
    deleted = 0

    def delete_after(after: str | None) -> list[str]:
        nonlocal deleted
        ids, removed = run_in_transaction(
            sessions, partial(_delete_page, api_url=api_url, started=started, after=after)
        )
        deleted += removed
        return ids

    for _ in keyset_pages(delete_after, str, size=_PAGE):
        pass
    return deleted


def _delete_page(
    session: Session, *, api_url: str, started: datetime, after: str | None
) -> tuple[list[str], int]:
    ids = unlisted_customers(session, api_url, started, after=after, limit=_PAGE)
    repo = CustomerRepository(session)
    # Swept: any later payload of the customer brings it back (a webhook's deletion stays).
    removed = sum(
        repo.delete(cid, deleted_at=started, swept=True) is DeleteOutcome.REMOVED for cid in ids
    )
    return ids, removed
