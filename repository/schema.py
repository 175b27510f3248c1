"""Running the Alembic migrations from code (``customer-store migrate``), checkout or installed."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from migrations import SCRIPT_LOCATION

__all__ = ["alembic_config", "current_revision", "head_revision", "upgrade_to_head"]


def alembic_config(database_url: str) -> Config:
    """An Alembic config for the shipped migrations, without needing ``alembic.ini``."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    # Passed as an attribute, not an option: ConfigParser would read a % in a password.
    config.attributes["database_url"] = database_url
    return config


def upgrade_to_head(database_url: str) -> None:
    """Bring the schema to the newest revision."""
    command.upgrade(alembic_config(database_url), "head")


def head_revision() -> str | None:
    return ScriptDirectory(SCRIPT_LOCATION).get_current_head()


def current_revision(bind: Engine | Connection) -> str | None:
    """The revision the database's schema is at (None: not migrated); ``bind`` is an engine
    or an open connection (``AsyncConnection.run_sync(current_revision)`` for asyncio)."""
    if isinstance(bind, Connection):
        return MigrationContext.configure(bind).get_current_revision()
    with bind.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
