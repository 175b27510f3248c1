"""``customer-store``: the command line of the customer store.

Customer commands (migrate, import, get, export) live here; search (find, stats) in
:mod:`customer_store.search_cli`; webhook commands (ingest, serve, events, replay) in
:mod:`customer_store.webhooks_cli`. Exit status: 0 success,
1 when records were rejected, a customer was not found or the database failed, 2 for
usage errors, 130 after Ctrl-C (:mod:`customer_store.__main__`, the entry point).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from customer_store import admin_cli, mirror_cli, search_cli, webhooks_cli
from customer_store.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    add_read_options,
    checked,
    int_between,
    mask_passwords,
    open_engine,
    open_input,
    open_output,
    read_router,
    read_url,
    require_schema,
    require_text_arguments,
    safe_url,
)
from customer_store.progress import print_message, progress_bar
from models import Customer
from repository import CustomerRepository, make_session_factory, read_in_session
from repository.admin import require_customer_id
from repository.db import DEFAULT_DATABASE_URL, current_revision, first_line, upgrade_to_head
from repository.importing import (
    DEFAULT_BATCH_SIZE,
    ImportReport,
    Rejection,
    import_records,
    read_records,
)
from repository.store import iter_customers

__all__ = ["MAX_BATCH_SIZE", "MAX_WORKERS", "build_parser", "main"]

#: Records per import transaction, at most: a batch is held in memory and in one transaction.
MAX_BATCH_SIZE = 100_000
#: Seconds a thread runs before another may take the interpreter, while importing.
_IMPORT_SWITCH_INTERVAL = 0.0005
#: Most validating processes ``import --workers`` takes.
MAX_WORKERS = 64
#: Input size from which ``import`` validates in a process of its own by default: smaller
#: inputs are over before the process pays for itself.
_DEFAULT_WORKERS = 2
_WORKERS_FROM_BYTES = 4 << 20


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line that names the argument (``--help`` has the usage). They
    repeat what was typed: a database URL given in the wrong place must not show its
    password there."""

    def error(self, message: str) -> NoReturn:
        self.exit(
            EXIT_USAGE,
            f"{self.prog}: error: {mask_passwords(message)} (see {self.prog} --help)\n",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="customer-store",
        description="Store Voucherify customers in PostgreSQL or SQLite and read them back.",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        metavar="URL",
        help="postgresql://user@host/db or sqlite:///path "
        f"(default: $DATABASE_URL, else {DEFAULT_DATABASE_URL})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    migrate = commands.add_parser(
        "migrate", help="upgrade the database schema to the newest revision"
    )
    migrate.set_defaults(run=None)

    imp = commands.add_parser(
        "import", help="import customers: JSON Lines, a JSON array, or Voucherify list pages"
    )
    imp.add_argument("path", nargs="?", default="-", help="input file, or - for stdin")
    imp.add_argument(
        "--batch-size", type=int_between(1, MAX_BATCH_SIZE), default=DEFAULT_BATCH_SIZE,
        help=f"records per transaction, 1 to {MAX_BATCH_SIZE:,} (default {DEFAULT_BATCH_SIZE})",
    )
    imp.add_argument(
        "--workers", type=int_between(0, MAX_WORKERS), default=None,
        help="processes validating the records beside the one writing them, 0 to "
        f"{MAX_WORKERS} (default: {_DEFAULT_WORKERS} for an input over "
        f"{_WORKERS_FROM_BYTES >> 20} MB, or of unknown size, on two CPUs or more; else 0)",
    )
    imp.set_defaults(run=_import)

    get = commands.add_parser("get", help="print one customer as JSON")
    which = get.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "id", nargs="?", metavar="ID", type=checked(require_customer_id),
        help="the Voucherify customer id (cust_...)",
    )
    which.add_argument("--source-id", help="look the customer up by source_id instead")
    add_read_options(get)
    get.set_defaults(run=_get)

    exp = commands.add_parser("export", help="write every customer as JSON Lines, ordered by id")
    exp.add_argument("path", nargs="?", default="-", help="output file, or - for stdout")
    add_read_options(exp)
    exp.set_defaults(run=_export)

    search_cli.add_commands(commands)
    admin_cli.add_commands(commands)
    webhooks_cli.add_commands(commands)
    mirror_cli.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    url = args.database_url or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    # As given, ?pgbouncer= included (an engine's URL has it taken off): for commands that
    # make engines of their own.
    args.database_url = url
    try:
        require_text_arguments(args)
        if args.run is None:
            return _migrate(url)
        engine = open_engine(url)
        try:
            _require_schema(engine, url, args)
            status: int = args.run(engine, args)
            return status
        finally:
            engine.dispose()
    except CommandError as exc:
        print(f"customer-store: {exc}", file=sys.stderr)
        return exc.status
    except SQLAlchemyError as exc:
        print(f"customer-store: database error: {first_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (`customer-store export | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


def _require_schema(engine: Engine, url: str, args: argparse.Namespace) -> None:
    """The primary's schema at head; a read command with a read replica goes on without
    the primary when it cannot be reached (the replica's schema is checked instead)."""
    try:
        require_schema(engine, url)
    except OperationalError as exc:
        if read_url(args, engine) is None:
            raise
        print(f"customer-store: warning: the database cannot be reached "
              f"({mask_passwords(first_line(exc))}): reading from the read replica",
              file=sys.stderr)


def _migrate(url: str) -> int:
    engine = open_engine(url, create=True)
    try:
        upgrade_to_head(url)
        revision = current_revision(engine)
    finally:
        engine.dispose()
    print(f"schema of {safe_url(url)} is at revision {revision} (head)", file=sys.stderr)
    return EXIT_OK


def _import(engine: Engine, args: argparse.Namespace) -> int:
    started = time.monotonic()
    with open_input(args.path) as source:
        # The bar counts bytes of the input read: a percentage and time left for a file.
        bar = progress_bar(total=source.size, unit="B", unit_scale=True)

        def on_reject(rejection: Rejection) -> None:
            print_message(f"rejected {rejection.location}: {rejection.reason}")

        def on_progress(report: ImportReport) -> None:
            bar.set_postfix_str(_import_counts(report), refresh=False)
            bar.update(source.bytes_read - bar.n)

        # The writer thread waits on the database and the reading thread keeps the
        # interpreter busy: a shorter switch interval hands the writer each reply sooner
        # (about a tenth faster on two CPUs; docs/benchmarks.md).
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(_IMPORT_SWITCH_INTERVAL)
        try:
            workers = args.workers if args.workers is not None else _default_workers(source.size)
            report = import_records(
                make_session_factory(engine),
                # Lines are decoded where they are validated: in the workers, if any.
                read_records(source.text, decode_lines=workers == 0),
                batch_size=args.batch_size,
                on_reject=on_reject,
                on_progress=on_progress,
                workers=workers,
                # This process is the import's own: its garbage collector can run
                # sparsely, and be kept off the objects forked workers share.
                tune_gc=True,
            )
            on_progress(report)
        finally:
            sys.setswitchinterval(switch_interval)
            bar.close()
    print(
        f"imported {report.total} records in {time.monotonic() - started:.1f}s: "
        f"{_import_counts(report)}",
        file=sys.stderr,
    )
    if report.stopped is not None:
        # Last, where it is seen: the counts above are not the whole input.
        print(
            f"customer-store: import incomplete: {report.stopped.location}: "
            f"{report.stopped.reason}",
            file=sys.stderr,
        )
    return EXIT_FAILED if report.rejected else EXIT_OK


def _import_counts(report: ImportReport) -> str:
    return (f"{report.applied} applied, {report.unchanged} unchanged, {report.stale} stale, "
            f"{report.forgotten} forgotten, {report.rejected} rejected")


def _default_workers(size: int | None) -> int:
    """Two validating processes beside the writing one, which mostly waits for the
    database, when there are CPUs for them and the input is large (or of unknown size: a
    pipe). Two keep a writer busy (docs/benchmarks.md)."""
    if (os.cpu_count() or 1) < 2:
        return 0
    return _DEFAULT_WORKERS if size is None or size >= _WORKERS_FROM_BYTES else 0


def _get(engine: Engine, args: argparse.Namespace) -> int:
    def read(session: Session) -> Customer | None:
        repo = CustomerRepository(session)
        if args.source_id is not None:
            return repo.get_by_source_id(args.source_id)
        return repo.get(args.id)

    with read_router(engine, args) as reads:
        customer = reads.run(read)
    key = f"source_id {args.source_id!r}" if args.source_id is not None else f"id {args.id!r}"
    if customer is None:
        raise CommandError(f"no customer with {key}")
    json.dump(customer.to_dict(), sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


def _export(engine: Engine, args: argparse.Namespace) -> int:
    bar = progress_bar(total=None, unit="customers")
    count = 0
    try:
        with read_router(engine, args) as reads, open_output(args.path) as out:
            sessions = reads.sessions()
            if not bar.disable:  # a count(*), only for a bar that is drawn
                bar.reset(total=read_in_session(sessions, lambda s: CustomerRepository(s).count()))
            for customer in iter_customers(sessions):
                out.write(
                    json.dumps(customer.to_dict(), ensure_ascii=False, separators=(",", ":"))
                )
                out.write("\n")
                count += 1
                bar.update()
    finally:
        bar.close()
    print(f"exported {count} customers", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    from customer_store.__main__ import run

    sys.exit(run())
