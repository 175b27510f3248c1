"""Least privilege on PostgreSQL: the role the service runs as.

The migrations run as the owner of the schema; the service (``import``, ``ingest``,
``serve``, reads) needs only to read and write rows. :func:`grant_app_role`, run by the
owner, gives a role exactly that: CONNECT and TEMPORARY on the database (the bulk import
stages rows in temporary tables), USAGE on the schema, SELECT/INSERT/UPDATE/DELETE on the
store's tables, SELECT on ``alembic_version`` (commands check the schema revision), and
the same by default on tables and sequences that later migrations create. Never CREATE on
the schema, ownership, TRUNCATE, REFERENCES or TRIGGER: the role cannot change the schema.

Role names are quoted as identifiers. A password is turned into a SCRAM-SHA-256 verifier
on the client (as ``psql``'s ``\\password`` does), so the clear text goes neither over the
wire nor into the server's statement log; the verifier is composed in as a literal.

The statements are composed with the driver's SQL composition (identifiers and literals
quoted by the driver) and run on its cursor, with their errors handed to SQLAlchemy
(:mod:`repository.db.errors`): they arrive as SQLAlchemy's ``DBAPIError``, as any other
statement's, without the statement in them (so never the password's verifier).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg
from psycopg import errors, sql
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from models.base import Base
from repository.db.backends import backend_of
from repository.db.errors import driver_errors

__all__ = [
    "APP_TABLE_PRIVILEGES",
    "VERSION_TABLE",
    "GrantReport",
    "InvalidRoleName",
    "MissingPrivilege",
    "grant_app_role",
    "require_role_name",
]

#: What the service does with the rows of the store's tables.
APP_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
#: Alembic's table: the service only reads it.
VERSION_TABLE = "alembic_version"


#: Names that do not denote one role: PUBLIC is every role on the server; the others are
#: the current and session roles, whatever they happen to be.
_NOT_A_ROLE = frozenset({"public", "current_user", "session_user", "current_role", "none"})
#: PostgreSQL cuts longer identifiers short, silently: the grant would go to another name.
_MAX_ROLE_BYTES = 63


class InvalidRoleName(ValueError):
    """The name cannot be given the service's privileges safely."""


class MissingPrivilege(ValueError):
    """The role running the grant lacks a privilege it needs (the message names it)."""


def require_role_name(role: str) -> None:
    """Refuse names that are not one ordinary role: empty, PUBLIC (in any case), the
    current/session role keywords, reserved ``pg_`` names, or longer than PostgreSQL keeps."""
    folded = role.casefold()
    if not role.strip():
        problem = "the role name is empty"
    elif folded in _NOT_A_ROLE:
        meaning = "every role" if folded == "public" else "whichever role runs the statement"
        problem = f"{role!r} is not one role: it stands for {meaning}"
    elif folded.startswith("pg_"):
        problem = f"{role!r} is reserved: role names starting with pg_ belong to PostgreSQL"
    elif not role.isprintable():
        problem = f"{role!r} holds control characters"
    elif len(role.encode("utf-8", "surrogatepass")) > _MAX_ROLE_BYTES:
        problem = f"the role name is longer than {_MAX_ROLE_BYTES} bytes"
    else:
        return
    raise InvalidRoleName(problem)


@dataclass(frozen=True)
class GrantReport:
    role: str
    database: str
    schema: str
    created: bool
    #: ``create`` was asked for, and the role was there already (it is left as it is).
    existed: bool = False
    #: Tables the role may read and write, and those it may only read.
    read_write: list[str] = field(default_factory=list)
    read_only: list[str] = field(default_factory=list)
    #: Privileges the role holds anyway, through PUBLIC, that least privilege would not give.
    warnings: list[str] = field(default_factory=list)


def grant_app_role(
    session_or_connection: Session | Connection,
    role: str,
    *,
    create: bool = False,
    password: str | None = None,
) -> GrantReport:
    """Give ``role`` what the service needs on the current database and schema.

    Runs in the caller's transaction (the caller commits). With ``create=True`` the role
    is created (LOGIN, NOINHERIT, no superuser, CREATEDB, CREATEROLE, replication or RLS
    bypass) unless it exists already, so that a deploy script can run it again; otherwise it
    must exist. A given password replaces the role's password. Creating a role or setting
    its password needs CREATEROLE: :class:`MissingPrivilege` says so when it is lacking.
    """
    require_role_name(role)
    connection = _connection(session_or_connection)
    pg = cast(psycopg.Connection[Any], connection.connection.driver_connection)
    ident = sql.Identifier(role)
    with pg.cursor() as cursor, driver_errors(connection, cursor):
        cursor.execute("SELECT current_database(), current_schema()")
        database, schema = cursor.fetchone() or (None, None)
        if database is None or schema is None:
            raise ValueError("no current schema: the search_path names no existing schema")
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        existed = cursor.fetchone() is not None
        created = create and not existed
        if created:
            with _needing("CREATEROLE", f"create the role {role!r}"):
                cursor.execute(
                    sql.SQL(
                        "CREATE ROLE {} WITH LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE"
                        " NOREPLICATION NOBYPASSRLS"
                    ).format(ident)
                )
        if password is not None:
            verifier = pg.pgconn.encrypt_password(
                password.encode("utf-8"), role.encode("utf-8"), b"scram-sha-256"
            )
            with _needing("CREATEROLE", f"set the password of {role!r}"):
                cursor.execute(
                    sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
                        ident, sql.Literal(verifier.decode("ascii"))
                    )
                )
        schema_ident = sql.Identifier(schema)
        cursor.execute(
            sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(database), ident
            )
        )
        cursor.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema_ident, ident))
        existing = _existing_tables(cursor, schema)
        read_write = [name for name in Base.metadata.tables if name in existing]
        for name in read_write:
            cursor.execute(
                sql.SQL("GRANT {} ON TABLE {} TO {}").format(
                    sql.SQL(", ").join(sql.SQL(p) for p in APP_TABLE_PRIVILEGES),
                    sql.Identifier(schema, name),
                    ident,
                )
            )
        read_only = [VERSION_TABLE] if VERSION_TABLE in existing else []
        for name in read_only:
            cursor.execute(
                sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(
                    sql.Identifier(schema, name), ident
                )
            )
        # Tables created later by this (the owner's) migrations are covered too.
        cursor.execute(
            sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT {} ON TABLES TO {}").format(
                schema_ident,
                sql.SQL(", ").join(sql.SQL(p) for p in APP_TABLE_PRIVILEGES),
                ident,
            )
        )
        cursor.execute(
            sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT USAGE ON SEQUENCES TO {}")
            .format(schema_ident, ident)
        )
        cursor.execute(
            sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(schema_ident, ident)
        )
        warnings = _excess_privileges(cursor, role, schema)
    return GrantReport(
        role=role, database=str(database), schema=str(schema), created=created,
        existed=create and existed,
        read_write=read_write, read_only=read_only, warnings=warnings,
    )


@contextmanager
def _needing(privilege: str, action: str) -> Iterator[None]:
    """Say which privilege the running role lacks when the server refuses ``action``."""
    try:
        yield
    except errors.InsufficientPrivilege:
        raise MissingPrivilege(
            f"permission denied to {action}: the role running grant-app-role needs the "
            f"{privilege} privilege (ALTER ROLE ... {privilege} as a superuser), or run "
            "it as a superuser"
        ) from None


def _connection(session_or_connection: Session | Connection) -> Connection:
    connection = (
        session_or_connection.connection()
        if isinstance(session_or_connection, Session)
        else session_or_connection
    )
    backend = backend_of(connection)
    if not backend.has_roles:
        raise ValueError(f"roles and privileges are PostgreSQL's; this is {backend.name}")
    return connection


def _existing_tables(cursor: Any, schema: str) -> set[str]:
    cursor.execute(
        "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p')",
        (schema,),
    )
    return {name for (name,) in cursor.fetchall()}


def _excess_privileges(cursor: Any, role: str, schema: str) -> list[str]:
    """Rights the role has through PUBLIC (e.g. CREATE on ``public`` before PostgreSQL 15)."""
    cursor.execute(
        "SELECT has_schema_privilege(%s, %s, 'CREATE')", (role, schema)
    )
    row = cursor.fetchone()
    if row and row[0]:
        return [
            f"the role can create objects in schema {schema!r} through PUBLIC; "
            f"run REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC as its owner"
        ]
    return []
