"""Running the Alembic migrations from code (``customer-store migrate``), checkout or installed,
and checking which revision a database is at.

Alembic is imported only to migrate: every command checks the schema first, and the check
reads the revision table itself (``migrations.HEAD`` names the newest revision).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, column, inspect, select, table

from migrations import HEAD, SCRIPT_LOCATION

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["alembic_config", "current_revision", "head_revision", "upgrade_to_head"]

#: Alembic's own table of the revision a database is at (its default name).
_VERSION_TABLE = table("alembic_version", column("version_num"))


def alembic_config(database_url: str) -> Config:
    """An Alembic config for the shipped migrations, without needing ``alembic.ini``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    # Passed as an attribute, not an option: ConfigParser would read a % in a password.
    config.attributes["database_url"] = database_url
    return config


def upgrade_to_head(database_url: str) -> None:
    """Bring the schema to the newest revision."""
    from alembic import command

    command.upgrade(alembic_config(database_url), "head")


def head_revision() -> str:
    """The newest revision of the shipped migrations."""
    return HEAD


def current_revision(bind: Engine | Connection) -> str | None:
    """The revision the database's schema is at (None: not migrated); ``bind`` is an engine
    or an open connection (``AsyncConnection.run_sync(current_revision)`` for asyncio)."""
    if not isinstance(bind, Connection):
        with bind.connect() as connection:
            return current_revision(connection)
    # Looked for first: on PostgreSQL, reading a missing table would abort the transaction.
    if not inspect(bind).has_table(_VERSION_TABLE.name):
        return None
    revisions = list(bind.execute(select(_VERSION_TABLE.c.version_num)).scalars())
    if len(revisions) > 1:
        raise RuntimeError(f"the schema is at several revisions at once: {sorted(revisions)}")
    return revisions[0] if revisions else None
