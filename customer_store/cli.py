"""``customer-store``: migrate, import, get and export customers from the command line.

Exit status: 0 success, 1 when records were rejected or a customer was not found or the
database failed, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from customer_store.progress import Progress
from repository import (
    DEFAULT_DATABASE_URL,
    CustomerRepository,
    ImportReport,
    Rejection,
    import_records,
    make_engine,
    make_session_factory,
    read_records,
)
from repository.schema import current_revision, head_revision, upgrade_to_head

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A failure to report in one line, with its exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="customer-store",
        description="Store Voucherify customers in PostgreSQL or SQLite and read them back.",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="database URL: postgresql://user@host/db or sqlite:///path "
        f"(default: $DATABASE_URL, else {DEFAULT_DATABASE_URL})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("migrate", help="upgrade the database schema to the newest revision")

    imp = commands.add_parser(
        "import",
        help="import customers: JSON Lines, a JSON array, or Voucherify list pages",
    )
    imp.add_argument("path", nargs="?", default="-", help="input file, or - for stdin")
    imp.add_argument(
        "--batch-size", type=_positive_int, default=500, help="records per transaction"
    )

    get = commands.add_parser("get", help="print one customer as JSON")
    which = get.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="the Voucherify customer id (cust_...)")
    which.add_argument("--source-id", help="look the customer up by source_id instead")

    exp = commands.add_parser("export", help="write every customer as JSON Lines, ordered by id")
    exp.add_argument("path", nargs="?", default="-", help="output file, or - for stdout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    url = args.database_url or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    try:
        if args.command == "migrate":
            return _migrate(url)
        engine = _engine(url)
        try:
            _require_schema(engine)
            handler = {"import": _import, "get": _get, "export": _export}[args.command]
            return handler(engine, args)
        finally:
            engine.dispose()
    except CommandError as exc:
        print(f"customer-store: {exc}", file=sys.stderr)
        return exc.status
    except SQLAlchemyError as exc:
        print(f"customer-store: database error: {_db_message(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("customer-store: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`customer-store export | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


def _migrate(url: str) -> int:
    engine = _engine(url)
    try:
        upgrade_to_head(url)
        revision = current_revision(engine)
    finally:
        engine.dispose()
    print(f"schema of {_safe(url)} is at revision {revision} (head)", file=sys.stderr)
    return EXIT_OK


def _import(engine: Engine, args: argparse.Namespace) -> int:
    progress = Progress(sys.stderr, noun="records")

    def on_reject(rejection: Rejection) -> None:
        progress.clear()
        print(f"rejected {rejection.location}: {rejection.reason}", file=sys.stderr)

    def on_progress(report: ImportReport) -> None:
        progress.update(report.total, f"{report.applied} applied, {report.stale} stale, "
                        f"{report.rejected} rejected")

    started = time.monotonic()
    with _open_input(args.path) as stream:
        report = import_records(
            make_session_factory(engine),
            read_records(stream),
            batch_size=args.batch_size,
            on_reject=on_reject,
            on_progress=on_progress,
        )
    progress.finish()
    elapsed = time.monotonic() - started
    print(
        f"imported {report.total} records in {elapsed:.1f}s: {report.applied} applied, "
        f"{report.stale} stale, {report.rejected} rejected",
        file=sys.stderr,
    )
    return EXIT_FAILED if report.rejected else EXIT_OK


def _get(engine: Engine, args: argparse.Namespace) -> int:
    with make_session_factory(engine)() as session:
        repo = CustomerRepository(session)
        if args.source_id is not None:
            customer, key = repo.get_by_source_id(args.source_id), f"source_id {args.source_id!r}"
        else:
            customer, key = repo.get(args.id), f"id {args.id!r}"
    if customer is None:
        raise CommandError(f"no customer with {key}")
    json.dump(customer.to_json(), sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


def _export(engine: Engine, args: argparse.Namespace) -> int:
    progress = Progress(sys.stderr, noun="customers")
    count = 0
    with make_session_factory(engine)() as session, _open_output(args.path) as out:
        for customer in CustomerRepository(session).iter_all():
            out.write(json.dumps(customer.to_json(), ensure_ascii=False, separators=(",", ":")))
            out.write("\n")
            count += 1
            if count % 1000 == 0:
                progress.update(count)
    progress.finish()
    print(f"exported {count} customers", file=sys.stderr)
    return EXIT_OK


def _engine(url: str) -> Engine:
    try:
        return make_engine(url)
    except (ValueError, ArgumentError) as exc:
        raise CommandError(f"bad database URL: {exc}", EXIT_USAGE) from None


def _require_schema(engine: Engine) -> None:
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise CommandError(
            f"the schema of {_safe(engine.url)} is at revision {current or 'none'}, "
            f"not {head}: run `customer-store migrate` first"
        )


@contextmanager
def _open_input(path: str) -> Iterator[TextIO]:
    # Undecodable bytes become lone surrogates, which validation rejects per record
    # instead of the whole file failing at the first bad byte.
    if path == "-":
        stream = open(  # noqa: SIM115
            sys.stdin.fileno(), encoding="utf-8-sig", errors="surrogateescape", closefd=False
        )
    else:
        try:
            stream = open(path, encoding="utf-8-sig", errors="surrogateescape")  # noqa: SIM115
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None
    with stream:
        yield stream


@contextmanager
def _open_output(path: str) -> Iterator[TextIO]:
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    try:
        stream = open(path, "w", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror}", EXIT_USAGE) from None
    with stream:
        yield stream


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _safe(url: Any) -> str:
    try:
        return make_url(str(url) if not hasattr(url, "render_as_string") else url).render_as_string(
            hide_password=True
        )
    except ArgumentError:
        return "<unparseable URL>"


def _db_message(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
