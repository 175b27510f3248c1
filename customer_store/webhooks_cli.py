"""Webhook commands: ``ingest``, ``serve``, ``events`` (and ``events prune``) and
``replay``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import re
import signal
import sys
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import islice
from types import FrameType
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from customer_store.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    add_read_options,
    check_replica,
    int_between,
    number_between,
    open_binary_input,
    read_secret,
    read_url,
    safe_url,
)
from customer_store.progress import print_message, progress_bar
from models import EventOutcome, MalformedDelivery, parse_secrets
from repository import (
    IngestResult,
    make_async_engine,
    make_async_session_factory,
    make_session_factory,
)
from repository.db import AsyncReadRouter
from repository.webhooks import (
    DEFAULT_DELIVERY_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    count_events,
    ingest_or_record_refusal,
    iter_events,
    prune_events,
    replay_rejected,
)

__all__ = ["SECRET_ENV", "add_commands"]

SECRET_ENV = "VOUCHERIFY_WEBHOOK_SECRET"  # noqa: S105 (the variable name, not a secret)
#: The largest --max-body-bytes: bodies are held in memory whole.
MAX_BODY_LIMIT = 64 * 1024 * 1024
#: Events per transaction of ``events prune``, at most.
MAX_PRUNE_BATCH = 100_000
#: The longest --older-than: a century.
_MAX_AGE = timedelta(days=36_500)
_DURATION = re.compile(r"([0-9]{1,12})([dhms])")
_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
#: Seconds a stopping receiver gives the deliveries in flight beyond their own time bound.
_SHUTDOWN_GRACE = 5
#: The range of --delivery-timeout, in seconds. Below a tenth of a second nothing is
#: recorded in time; above five minutes the sender (Voucherify waits 10 s) and the stop
#: (the bound plus the grace) have long given up. Far inside what PostgreSQL's
#: ``lock_timeout`` accepts (2,147,483,647 ms).
MIN_DELIVERY_TIMEOUT = 0.1
MAX_DELIVERY_TIMEOUT = 300.0


def add_commands(commands: Any) -> None:
    """Register the webhook subcommands on the main parser's subparsers."""
    ingest = commands.add_parser(
        "ingest", help="ingest Voucherify webhook envelopes, one JSON object per line"
    )
    ingest.add_argument("path", nargs="?", default="-", help="input file, or - for stdin")
    ingest.set_defaults(run=_ingest)

    serve = commands.add_parser("serve", help="receive Voucherify webhooks over HTTP")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument(
        "--port", type=int_between(0, 65535), default=8000, help="port to listen on"
    )
    serve.add_argument(
        "--max-body-bytes", type=int_between(1, MAX_BODY_LIMIT), default=DEFAULT_MAX_BODY_BYTES,
        help=f"largest body accepted, at most {MAX_BODY_LIMIT:,} (default %(default)s)",
    )
    serve.add_argument(
        "--delivery-timeout",
        type=number_between(MIN_DELIVERY_TIMEOUT, MAX_DELIVERY_TIMEOUT, unit=" seconds"),
        default=DEFAULT_DELIVERY_TIMEOUT,
        metavar="SECONDS",
        help="answer each delivery within this time, lock waits and retries included, with "
        "503 and Retry-After when it cannot be recorded by then (Voucherify gives up at 10 s; "
        f"{MIN_DELIVERY_TIMEOUT:g} to {MAX_DELIVERY_TIMEOUT:g}, default %(default)s)",
    )
    serve.add_argument(
        "--no-signature-check",
        action="store_true",
        help=f"accept unsigned deliveries (only for tests; without it {SECRET_ENV} is required)",
    )
    serve.add_argument(
        "--log-format", choices=["text", "json"], default="text",
        help="text lines, or one JSON object per line (default %(default)s)",
    )
    add_read_options(serve)
    serve.set_defaults(run=_serve)

    events = commands.add_parser(
        "events",
        help="list recorded webhook events as JSON Lines; `events prune` deletes old ones",
        usage="%(prog)s [-h] [--outcome OUTCOME] [--limit LIMIT]\n"
        "       %(prog)s prune --older-than AGE [--include-rejected] [--batch-size N]",
        description="List recorded webhook events as JSON Lines, or, with `prune`, delete "
        "old ones (`customer-store events prune --help`).",
    )
    events.add_argument("--outcome", choices=[o.value for o in EventOutcome])
    events.add_argument(
        "--limit", type=int_between(1, sys.maxsize), default=None, help="at most this many events"
    )
    events.set_defaults(run=_events)
    # A sub-action that may be left out: `events --limit 5` lists as it always did.
    actions = events.add_subparsers(dest="events_action", metavar="ACTION")
    prune = actions.add_parser(
        "prune",
        prog=f"{events.prog} prune",
        help="delete events last received longer ago than --older-than",
        description="Delete the recorded events last received before now minus "
        "--older-than, in batches (one transaction each), keeping rejected ones unless "
        "--include-rejected. An event delivered again after it was pruned is processed "
        "again (harmless: newest wins); Voucherify retries for about 24 hours, so keep "
        "a few days at least.",
    )
    prune.add_argument(
        "--older-than", type=_duration, required=True, metavar="AGE",
        help="how old an event must be: a whole number of days, hours, minutes or seconds "
        "(30d, 12h, 90m, 3600s)",
    )
    prune.add_argument(
        "--include-rejected", action="store_true",
        help="delete old rejected events too (replay can no longer process them)",
    )
    prune.add_argument(
        "--batch-size", type=int_between(1, MAX_PRUNE_BATCH), default=1000, metavar="N",
        help=f"events per transaction, 1 to {MAX_PRUNE_BATCH:,} (default %(default)s)",
    )
    prune.set_defaults(run=_prune)

    replay = commands.add_parser("replay", help="process recorded rejected events again")
    replay.set_defaults(run=_replay)


def _ingest(engine: Engine, args: argparse.Namespace) -> int:
    sessions = make_session_factory(engine)
    counts: Counter[str] = Counter()
    with open_binary_input(args.path) as stream, progress_bar(total=None, unit="events") as bar:
        for number, line in enumerate(stream, start=1):
            body = line.rstrip(b"\r\n")
            if not body.strip():
                continue
            try:
                result = ingest_or_record_refusal(sessions, body)
            except MalformedDelivery as exc:
                counts["malformed"] += 1
                print_message(f"malformed line {number}: {exc}")
            else:
                counts[result.outcome.value] += 1
                if result.outcome is EventOutcome.REJECTED:
                    print_message(
                        f"rejected line {number} (event {result.event_id}): {result.error}"
                    )
            bar.set_postfix_str(_summary(counts), refresh=False)
            bar.update()
    print(f"ingested {sum(counts.values())} events: {_summary(counts)}", file=sys.stderr)
    return EXIT_FAILED if counts["rejected"] or counts["malformed"] else EXIT_OK


def _serve(engine: Engine, args: argparse.Namespace) -> int:
    import uvicorn

    from customer_store.logs import use_log_format
    from customer_store.metrics import ReceiverMetrics
    from customer_store.read_api import APP_ID_VARIABLE as READ_APP_ID_VARIABLE
    from customer_store.read_api import APP_TOKEN_VARIABLE as READ_APP_TOKEN_VARIABLE
    from customer_store.read_api import read_routes
    from customer_store.web import create_app

    use_log_format(args.log_format)
    secrets = parse_secrets(os.environ.get(SECRET_ENV, ""))
    if not secrets and not args.no_signature_check:
        raise CommandError(
            f"set {SECRET_ENV} to the webhook secret of the Voucherify project (while "
            "rotating, the new and the previous one, comma separated), or pass "
            "--no-signature-check to accept unsigned deliveries", EXIT_USAGE,
        )
    # The receiver runs on the async API; the sync engine only checked the schema. The URL
    # as given: the engine's lacks ?pgbouncer=.
    async_engine = make_async_engine(args.database_url)
    app_id = read_secret(READ_APP_ID_VARIABLE)
    app_token = read_secret(READ_APP_TOKEN_VARIABLE)
    if bool(app_id) != bool(app_token):
        raise CommandError(
            f"set both {READ_APP_ID_VARIABLE} and {READ_APP_TOKEN_VARIABLE} to serve the "
            "read API, or neither", EXIT_USAGE,
        )
    # The read API reads on the replica, if any, while it is not too far behind; webhooks,
    # /healthz and the store's figures on the primary.
    replica_url = read_url(args, engine)
    if replica_url is not None:
        check_replica(replica_url)
    replica = make_async_engine(replica_url, read_only=True) if replica_url else None
    reads = AsyncReadRouter(async_engine, replica, max_lag=args.max_replica_lag)
    writes = make_async_session_factory(async_engine)
    app = create_app(
        writes,
        metrics=ReceiverMetrics(writes, replicas=reads),
        secrets=secrets or None,
        max_body_bytes=args.max_body_bytes,
        delivery_timeout=args.delivery_timeout,
        extra_routes=(
            read_routes(reads, app_id=app_id, app_token=app_token) if app_id else ()
        ),
    )
    checked = f"checked with {len(secrets)} secret(s)" if secrets else "NOT checked"
    announce = _announcer(args.log_format)
    announce(f"listening on http://{args.host}:{args.port}/webhooks/voucherify "
             f"(signatures {checked})")
    if app_id:
        announce(f"serving the read API on http://{args.host}:{args.port}/v1/customers"
                 + (f" (reads on {safe_url(replica_url)} while at most "
                    f"{args.max_replica_lag:g} s behind)" if replica_url else ""))
    # On SIGTERM uvicorn stops accepting, lets the deliveries in flight finish (their own
    # time bound, plus a margin), then raises the signal again once its handler is gone:
    # this handler makes that the normal end (exit 0), not a death by signal.
    previous = signal.signal(signal.SIGTERM, _stop_requested)
    try:
        uvicorn.run(
            app, host=args.host, port=args.port, access_log=False, log_config=None,
            timeout_graceful_shutdown=math.ceil(args.delivery_timeout) + _SHUTDOWN_GRACE,
        )
    except _StopRequested:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        asyncio.run(_dispose(async_engine, replica))
    return EXIT_OK


async def _dispose(*engines: AsyncEngine | None) -> None:
    for engine in engines:
        if engine is not None:
            await engine.dispose()


class _StopRequested(Exception):
    """SIGTERM: the receiver has been asked to stop."""


def _stop_requested(_signum: int, _frame: FrameType | None) -> None:
    raise _StopRequested


def _announcer(log_format: str) -> Callable[[str], None]:
    """How ``serve`` says where it listens: a plain line, or a JSON log line."""
    if log_format == "json":
        logger = logging.getLogger("customer_store.serve")
        return lambda message: logger.info("%s", message)
    return lambda message: print(message, file=sys.stderr)


def _events(engine: Engine, args: argparse.Namespace) -> int:
    sessions = make_session_factory(engine)
    outcome = EventOutcome(args.outcome) if args.outcome else None
    with sessions() as session:
        for row in islice(iter_events(session, outcome=outcome), args.limit):
            print(json.dumps({
                "event_id": row.event_id,
                "type": row.event_type,
                "customer_id": row.customer_id,
                "outcome": row.outcome,
                "deliveries": row.deliveries,
                "first_received_at": row.first_received_at.isoformat(),
                "last_received_at": row.last_received_at.isoformat(),
                "error": row.error,
            }, ensure_ascii=False))
    return EXIT_OK


def _prune(engine: Engine, args: argparse.Namespace) -> int:
    sessions = make_session_factory(engine)
    cutoff = datetime.now(UTC) - args.older_than
    with sessions() as session:
        old = count_events(session, received_before=cutoff)
    to_prune = sum(
        n for outcome, n in old.items()
        if outcome != EventOutcome.DUPLICATE.value
        and (args.include_rejected or outcome != EventOutcome.REJECTED.value)
    )
    with progress_bar(total=to_prune, unit="events") as bar:

        def on_progress(done: int) -> None:
            bar.update(done - bar.n)

        pruned = prune_events(
            sessions,
            older_than=cutoff,
            include_rejected=args.include_rejected,
            batch_size=args.batch_size,
            on_progress=on_progress,
        )
    kept = ""
    if not args.include_rejected:
        with sessions() as session:
            rejected = count_events(session, received_before=cutoff).get(
                EventOutcome.REJECTED.value, 0
            )
        kept = f" (rejected kept: {rejected})"
    print(
        f"pruned {pruned} events last received before "
        f"{cutoff.isoformat(timespec='seconds')}{kept}",
        file=sys.stderr,
    )
    return EXIT_OK


def _duration(value: str) -> timedelta:
    """An argparse type: ``30d``, ``12h``, ``90m`` or ``3600s``, positive, at most a century."""
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of days, hours, minutes or seconds such as 30d, 12h, "
            f"90m or 3600s, got {value[:40]!r}"
        )
    seconds = int(match[1]) * _UNIT_SECONDS[match[2]]
    if not 0 < seconds <= _MAX_AGE.total_seconds():
        raise argparse.ArgumentTypeError(f"must be from 1s to {_MAX_AGE.days}d, got {value!r}")
    return timedelta(seconds=seconds)


def _replay(engine: Engine, args: argparse.Namespace) -> int:
    counts: Counter[str] = Counter()

    def on_result(result: IngestResult) -> None:
        counts[result.outcome.value] += 1
        if result.outcome is EventOutcome.REJECTED:
            print(f"still rejected: event {result.event_id}: {result.error}", file=sys.stderr)

    replay_rejected(make_session_factory(engine), on_result=on_result)
    print(f"replayed {sum(counts.values())} events: {_summary(counts)}", file=sys.stderr)
    return EXIT_FAILED if counts["rejected"] else EXIT_OK



def _summary(counts: Counter[str]) -> str:
    order = [o.value for o in EventOutcome] + ["malformed"]
    return ", ".join(f"{counts[name]} {name}" for name in order if counts[name]) or "nothing"
