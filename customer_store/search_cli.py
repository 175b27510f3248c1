"""Search and figures: ``find`` and ``stats``."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from customer_store.common import (
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    add_read_options,
    int_between,
    read_router,
)
from models import INT64_MAX, INT64_MIN, loads_json, parse_datetime
from repository import CustomerFilter, CustomerRepository, InvalidArgument, Page, read_in_session
from repository.admin import store_stats
from repository.store import FOLD_LIMIT, MAX_METADATA_DEPTH, MAX_METADATA_TERMS, MAX_PAGE_SIZE

__all__ = ["add_commands"]

#: The option behind each field of CustomerFilter (and of find), for messages.
_OPTIONS = {
    "email": "--email", "source_id": "--source-id", "name_prefix": "--name-prefix",
    "created_from": "--created-from", "created_before": "--created-before",
    "updated_from": "--updated-from", "updated_before": "--updated-before",
    "metadata_contains": "--metadata", "campaign": "--campaign", "min_points": "--min-points",
    "loyalty_tier": "--tier", "referred_by": "--referred-by", "orders_since": "--orders-since",
    "limit": "--limit", "cursor": "--cursor",
}


def add_commands(commands: Any) -> None:
    find = commands.add_parser(
        "find", help="search customers; prints matches as JSON Lines, ordered by id",
        description="Search customers. Text options take values of any length. --email "
        "and --name-prefix ignore case: both sides "
        "are compared after Unicode NFKC normalisation and full case folding (ß matches ss, "
        "a full-width \uff21 matches A), the same on SQLite and PostgreSQL.",
    )
    find.add_argument("--email", help="equal, ignoring case")
    find.add_argument("--source-id")
    find.add_argument(
        "--name-prefix",
        help=f"the name starts with this, ignoring case (at most {FOLD_LIMIT} characters "
        "once case-folded)",
    )
    for name in ("created-from", "created-before", "updated-from", "updated-before",
                 "orders-since"):
        find.add_argument(f"--{name}", type=_datetime, metavar="DATETIME",
                          help="ISO 8601 with an offset, e.g. 2024-01-31T00:00:00Z")
    find.add_argument(
        "--metadata", type=_json_object, metavar="JSON",
        help='metadata contains this, e.g. \'{"tier": "gold"}\' (JSON containment, as '
        f"PostgreSQL's @>; at most {MAX_METADATA_DEPTH} levels deep and "
        f"{MAX_METADATA_TERMS} keys and array elements in all)",
    )
    find.add_argument("--campaign", help="loyalty campaign for --min-points and --tier")
    find.add_argument("--min-points", type=int_between(INT64_MIN, INT64_MAX), metavar="N",
                      help="at least this many points in --campaign (a 64-bit integer)")
    find.add_argument("--tier", help="loyalty tier id (ltr_...) in --campaign")
    find.add_argument("--referred-by", metavar="CUSTOMER_ID")
    find.add_argument("--limit", type=int_between(1, MAX_PAGE_SIZE), default=100,
                      metavar="N", help=f"page size, 1 to {MAX_PAGE_SIZE:,} (default 100)")
    find.add_argument("--cursor", help="continue after the page that printed this cursor")
    find.add_argument("--all", action="store_true", help="print every page")
    find.add_argument("--count", action="store_true", help="print only how many match")
    add_read_options(find)
    find.set_defaults(run=_find)

    stats = commands.add_parser("stats", help="customers, deletions, events and table sizes")
    add_read_options(stats)
    stats.set_defaults(run=_stats)


def _find(engine: Engine, args: argparse.Namespace) -> int:
    if (args.min_points is not None or args.tier is not None) and not args.campaign:
        raise CommandError("argument --campaign: needed by --min-points and --tier", EXIT_USAGE)
    # Every argument is checked here, before any SQL runs; the repository's own checks
    # (InvalidArgument) name the field, reported as its option.
    try:
        filters = CustomerFilter(
            email=args.email, source_id=args.source_id, name_prefix=args.name_prefix,
            created_from=args.created_from, created_before=args.created_before,
            updated_from=args.updated_from, updated_before=args.updated_before,
            metadata_contains=args.metadata, campaign=args.campaign,
            min_points=args.min_points, loyalty_tier=args.tier,
            referred_by=args.referred_by, orders_since=args.orders_since,
        )
        with read_router(engine, args) as reads:
            sessions = reads.sessions()
            if args.count:
                print(read_in_session(sessions, lambda s: CustomerRepository(s).count(filters)))
                return EXIT_OK
            cursor = args.cursor
            while True:
                # Each page on a session of its own: one that meets a lost connection is read
                # again on a new one.
                page = read_in_session(sessions, partial(_find_page, filters=filters,
                                                         cursor=cursor, limit=args.limit))
                for customer in page.customers:
                    print(json.dumps(customer.to_dict(), ensure_ascii=False,
                                     separators=(",", ":")))
                cursor = page.next_cursor
                if cursor is None or not args.all:
                    break
    except InvalidArgument as exc:
        option = _OPTIONS.get(exc.field, exc.field)
        raise CommandError(f"argument {option}: {exc.reason}", EXIT_USAGE) from None
    if cursor is not None:
        print(f"more: --cursor {cursor}", file=sys.stderr)
    return EXIT_OK


def _find_page(
    session: Session, *, filters: CustomerFilter, cursor: str | None, limit: int
) -> Page:
    return CustomerRepository(session).find(filters, cursor=cursor, limit=limit)


def _stats(engine: Engine, args: argparse.Namespace) -> int:
    with read_router(engine, args) as reads:
        figures = reads.run(store_stats)
    json.dump(asdict(figures), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


def _datetime(text: str) -> datetime:
    try:
        return parse_datetime(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _json_object(text: str) -> dict[str, Any]:
    """A JSON object; NaN, infinities and numbers too large for a float are not JSON."""
    try:
        value = loads_json(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc.msg} at character {exc.pos}") from None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    except RecursionError:
        raise argparse.ArgumentTypeError(
            f"nested deeper than {MAX_METADATA_DEPTH} levels"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value
