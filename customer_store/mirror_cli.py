"""``customer-store sync``: bring the store level with Voucherify's customer list API."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine

from customer_store.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    int_between,
    number_between,
    read_secret,
)
from customer_store.progress import print_message, progress_bar
from repository import make_session_factory
from repository.importing import Rejection
from repository.voucherify import (
    DEFAULT_API_URL,
    DEFAULT_MAX_WAIT,
    DEFAULT_OVERLAP,
    DEFAULT_RESERVE,
    DEFAULT_TIMEOUT,
    MirrorReport,
    SweepRefused,
    VoucherifyClient,
    VoucherifyError,
    mirror_customers,
)

__all__ = ["add_commands"]

APP_ID_VARIABLE = "VOUCHERIFY_APP_ID"
APP_TOKEN_VARIABLE = "VOUCHERIFY_APP_TOKEN"  # noqa: S105 - the variable's name, not a secret
API_URL_VARIABLE = "VOUCHERIFY_API_URL"


def add_commands(commands: Any) -> None:
    """Register ``sync`` on the main parser's subparsers."""
    sync = commands.add_parser(
        "sync",
        help="store every customer Voucherify lists (the first run: all of them; then what "
        "changed since the last run); keys from $VOUCHERIFY_APP_ID and $VOUCHERIFY_APP_TOKEN",
    )
    sync.add_argument(
        "--api-url", metavar="URL",
        help=f"Voucherify's API (default: ${API_URL_VARIABLE}, else {DEFAULT_API_URL})",
    )
    sync.add_argument(
        "--full", action="store_true",
        help="list every customer again, then delete the stored ones Voucherify no longer "
        "lists (older than the listing's start)",
    )
    sync.add_argument(
        "--dry-run", action="store_true",
        help="write nothing: print how many customers are new, newer or missing (missing "
        "needs --full); exit 1 when the store has drifted",
    )
    sync.add_argument(
        "--reserve", type=number_between(0, 0.9), default=DEFAULT_RESERVE, metavar="SHARE",
        help="share of the API's per-window request limit left to other callers, 0 to 0.9 "
        f"(default {DEFAULT_RESERVE})",
    )
    sync.add_argument(
        "--max-requests", type=int_between(1, 10_000_000), metavar="N",
        help="stop cleanly after N requests; the next run goes on from there",
    )
    sync.add_argument(
        "--overlap", type=int_between(0, 86_400), default=int(DEFAULT_OVERLAP.total_seconds()),
        metavar="SECONDS",
        help="how far an incremental run reaches back before its checkpoint (default "
        f"{int(DEFAULT_OVERLAP.total_seconds())})",
    )
    sync.add_argument(
        "--timeout", type=number_between(0.1, 3600, unit=" seconds"), default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="the most one request may take, from connecting to its last byte, before it "
        f"is retried (default {DEFAULT_TIMEOUT:g}); no wait between requests lasts longer "
        f"than {DEFAULT_MAX_WAIT:g} s",
    )
    sync.add_argument(
        "--max-deletions", type=int_between(0, 100_000_000), metavar="N",
        help="with --full: delete nothing when more than N stored customers would go "
        "(default: 10%% of the stored customers, at least 10)",
    )
    sync.set_defaults(run=_mirror)


def _mirror(engine: Engine, args: argparse.Namespace) -> int:
    app_id = read_secret(APP_ID_VARIABLE)
    app_token = read_secret(APP_TOKEN_VARIABLE)
    if not app_id or not app_token:
        raise CommandError(
            f"set {APP_ID_VARIABLE} and {APP_TOKEN_VARIABLE} to the project's application keys",
            EXIT_USAGE,
        )
    api_url = args.api_url or os.environ.get(API_URL_VARIABLE) or DEFAULT_API_URL
    if not api_url.startswith(("https://", "http://")):
        raise CommandError(f"argument --api-url: expected an http(s) URL, got {api_url!r}",
                           EXIT_USAGE)
    # httpx logs every request at INFO: a line per page is noise beside the bar.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    started = time.monotonic()
    bar = progress_bar(total=None, unit="customers")

    def on_progress(report: MirrorReport) -> None:
        if bar.total is None and report.total is not None:
            bar.total = report.total
        bar.update(report.listed - bar.n)
        bar.set_postfix_str(_counts(report), refresh=False)

    def on_reject(rejection: Rejection) -> None:
        print_message(f"rejected {rejection.location}: {rejection.reason}")

    try:
        with VoucherifyClient(
            app_id=app_id, app_token=app_token, api_url=api_url, reserve=args.reserve,
            max_requests=args.max_requests, timeout=args.timeout, on_wait=print_message,
        ) as client:
            report = mirror_customers(
                make_session_factory(engine), client, full=args.full, dry_run=args.dry_run,
                overlap=timedelta(seconds=args.overlap), max_deletions=args.max_deletions,
                on_progress=on_progress, on_reject=on_reject,
            )
    except SweepRefused as exc:
        bar.close()
        raise CommandError(f"sync --full stopped: {exc}; the next --full lists again") from None
    except VoucherifyError as exc:
        bar.close()
        raise CommandError(f"sync stopped: {exc}; the next run goes on from the last page "
                           "stored") from None
    bar.close()
    seconds = time.monotonic() - started
    if report.dry_run:
        print(f"dry run ({report.mode}): {report.listed} listed in {seconds:.1f} s, "
              f"{report.new} new, {report.newer} newer, {report.missing} missing, "
              f"{report.rejected} rejected; {report.requests} requests")
        return EXIT_FAILED if report.drifted or report.rejected else EXIT_OK
    print(f"synced {report.listed} customers in {seconds:.1f} s ({report.mode}): "
          f"{_counts(report)}; {report.requests} requests")
    if not report.complete:
        print(f"{report.stopped}: run sync again to go on", file=sys.stderr)
    return EXIT_FAILED if report.rejected else EXIT_OK


def _counts(report: MirrorReport) -> str:
    return (f"{report.applied} applied, {report.unchanged} unchanged, {report.stale} stale, "
            f"{report.forgotten} forgotten, {report.rejected} rejected, {report.deleted} deleted")
