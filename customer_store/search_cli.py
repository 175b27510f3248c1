"""Search and figures: ``find`` and ``stats``."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from customer_store.common import EXIT_OK, EXIT_USAGE, CommandError
from models.wire import parse_datetime
from repository import CustomerFilter, CustomerRepository, InvalidCursor, make_session_factory
from repository.queries import MAX_PAGE_SIZE
from repository.stats import store_stats

__all__ = ["add_commands"]


def add_commands(commands: Any) -> None:
    find = commands.add_parser(
        "find", help="search customers; prints matches as JSON Lines, ordered by id"
    )
    find.add_argument("--email", help="equal, ignoring case")
    find.add_argument("--source-id")
    find.add_argument("--name-prefix", help="the name starts with this, ignoring case")
    for name in ("created-from", "created-before", "updated-from", "updated-before",
                 "orders-since"):
        find.add_argument(f"--{name}", type=_datetime, metavar="DATETIME",
                          help="ISO 8601 with an offset, e.g. 2024-01-31T00:00:00Z")
    find.add_argument("--metadata", type=_json_object, metavar="JSON",
                      help='metadata contains this, e.g. \'{"tier": "gold"}\'')
    find.add_argument("--campaign", help="loyalty campaign for --min-points and --tier")
    find.add_argument("--min-points", type=int)
    find.add_argument("--tier", help="loyalty tier id (ltr_...) in --campaign")
    find.add_argument("--referred-by", metavar="CUSTOMER_ID")
    find.add_argument("--limit", type=int, default=100, help=f"page size, 1 to {MAX_PAGE_SIZE}")
    find.add_argument("--cursor", help="continue after the page that printed this cursor")
    find.add_argument("--all", action="store_true", help="print every page")
    find.add_argument("--count", action="store_true", help="print only how many match")
    find.set_defaults(run=_find)

    stats = commands.add_parser("stats", help="customers, deletions, events and table sizes")
    stats.set_defaults(run=_stats)


def _find(engine: Engine, args: argparse.Namespace) -> int:
    try:
        filters = CustomerFilter(
            email=args.email, source_id=args.source_id, name_prefix=args.name_prefix,
            created_from=args.created_from, created_before=args.created_before,
            updated_from=args.updated_from, updated_before=args.updated_before,
            metadata_contains=args.metadata, campaign=args.campaign,
            min_points=args.min_points, loyalty_tier=args.tier,
            referred_by=args.referred_by, orders_since=args.orders_since,
        )
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    with make_session_factory(engine)() as session:
        repo = CustomerRepository(session)
        if args.count:
            print(repo.count(filters))
            return EXIT_OK
        cursor = args.cursor
        while True:
            try:
                page = repo.find(filters, cursor=cursor, limit=args.limit)
            except (InvalidCursor, ValueError) as exc:
                raise CommandError(str(exc), EXIT_USAGE) from None
            for customer in page.customers:
                print(json.dumps(customer.to_json(), ensure_ascii=False, separators=(",", ":")))
            cursor = page.next_cursor
            if cursor is None or not args.all:
                break
    if cursor is not None:
        print(f"more: --cursor {cursor}", file=sys.stderr)
    return EXIT_OK


def _stats(engine: Engine, args: argparse.Namespace) -> int:
    with make_session_factory(engine)() as session:
        figures = store_stats(session)
    json.dump(asdict(figures), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


def _datetime(text: str) -> datetime:
    try:
        return parse_datetime(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value
