"""Administration: ``grant-app-role`` (least privilege on PostgreSQL) and ``forget`` (erasure)."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from customer_store.common import EXIT_OK, EXIT_USAGE, CommandError, checked
from customer_store.progress import progress_bar
from repository import make_session_factory, run_in_transaction
from repository.admin import (
    ErasureReport,
    GrantReport,
    MissingPrivilege,
    forget_customer,
    grant_app_role,
    require_customer_id,
    require_role_name,
)
from repository.db import backend_of

__all__ = ["add_commands"]


def add_commands(commands: Any) -> None:
    """Register the administration subcommands on the main parser's subparsers."""
    grant = commands.add_parser(
        "grant-app-role",
        help="PostgreSQL: let a role read and write the store, but not change its schema "
        "(run as the owner that ran the migrations)",
    )
    grant.add_argument(
        "role", metavar="NAME", type=checked(require_role_name),
        help="the role the service connects as",
    )
    grant.add_argument("--create", action="store_true", help="create the role (LOGIN)")
    grant.add_argument(
        "--password-env",
        metavar="VAR",
        help="set the role's password to the value of this environment variable",
    )
    grant.set_defaults(run=_grant_app_role)

    forget = commands.add_parser(
        "forget",
        help="erase a customer: its rows and every webhook event that mentions it "
        "(a tombstone with the id and the time remains)",
    )
    forget.add_argument(
        "id", metavar="ID", type=checked(require_customer_id),
        help="the Voucherify customer id (cust_...), as it was stored",
    )
    forget.set_defaults(run=_forget)


def _grant_app_role(engine: Engine, args: argparse.Namespace) -> int:
    if not backend_of(engine).has_roles:
        raise CommandError("grant-app-role needs a PostgreSQL database", EXIT_USAGE)
    password = None
    if args.password_env is not None:
        password = os.environ.get(args.password_env)
        if not password:
            raise CommandError(
                f"the environment variable {args.password_env} is not set or empty", EXIT_USAGE
            )

    def work(session: Any) -> GrantReport:
        return grant_app_role(session, args.role, create=args.create, password=password)

    try:
        report = run_in_transaction(make_session_factory(engine), work)
    except MissingPrivilege as exc:
        raise CommandError(str(exc)) from None
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{'created role' if report.created else 'role'} {report.role}"
        f"{' (it exists already; not created)' if report.existed else ''}"
        f"{' with a new password' if password is not None else ''}: read and write on "
        f"{len(report.read_write)} tables, read on {len(report.read_only)}, "
        f"in {report.database}.{report.schema}",
        file=sys.stderr,
    )
    return EXIT_OK


def _forget(engine: Engine, args: argparse.Namespace) -> int:
    forgotten_at = datetime.now(UTC)
    with progress_bar(total=None, unit="event bodies", desc="searched") as bar:

        def on_progress(scanned: int) -> None:
            bar.update(scanned - bar.n)

        def work(session: Any) -> ErasureReport:
            bar.reset()  # each try of the transaction searches from the start
            return forget_customer(
                session, args.id, forgotten_at=forgotten_at, on_progress=on_progress
            )

        report = run_in_transaction(make_session_factory(engine), work)
    print(
        f"forgot {args.id}: customer {'removed' if report.customer_removed else 'not stored'}, "
        f"{report.events_removed} webhook events removed, tombstone kept",
        file=sys.stderr,
    )
    return EXIT_OK
