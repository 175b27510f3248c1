"""The Alembic migrations: pytest-alembic's built-in checks on PostgreSQL, a round trip on
SQLite, offline DDL for ops, and the models matching the migrated schema on both."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from pytest_alembic.tests import (
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
from sqlalchemy import Engine, inspect

from migrations import SCRIPT_LOCATION, include_object_for
from models import Base
from repository import make_engine
from repository.db.schema import alembic_config as shipped_alembic_config
from repository.db.schema import current_revision, head_revision

__all__ = [
    "test_model_definitions_match_ddl",
    "test_single_head_revision",
    "test_up_down_consistency",
    "test_upgrade",
]

ROOT = Path(__file__).resolve().parent.parent
TABLES = {
    "customers", "customer_addresses", "customer_loyalty_campaigns",
    "customer_referral_entries", "customer_tombstones", "webhook_events",
}
CUSTOMER_CHILD_TABLES = TABLES - {"customers", "webhook_events"}


@pytest.fixture
def alembic_engine(make_database: Any) -> Iterator[Engine]:
    """pytest-alembic's built-in tests run against an empty PostgreSQL database."""
    engine = make_engine(make_database("postgresql"))
    yield engine
    engine.dispose()


@pytest.fixture
def alembic_config(alembic_engine: Engine) -> Any:
    return alembic_config_for(alembic_engine)


def alembic_config_for(engine: Engine) -> Any:
    return shipped_alembic_config(engine.url.render_as_string(hide_password=False))


def test_the_head_the_commands_check_against_is_alembics_head() -> None:
    assert head_revision() == ScriptDirectory(SCRIPT_LOCATION).get_current_head()


@pytest.fixture(params=["sqlite", "postgresql"])
def unmigrated(make_database: Any, request: pytest.FixtureRequest) -> Iterator[tuple[str, Engine]]:
    """An empty database of each backend: its URL and an engine on it."""
    url: str = make_database(request.param)
    engine = make_engine(url)
    yield url, engine
    engine.dispose()


def test_current_revision_follows_each_migration_step_and_is_none_before_any(
    unmigrated: tuple[str, Engine],
) -> None:
    url, engine = unmigrated
    assert current_revision(engine) is None
    steps = reversed(list(ScriptDirectory(SCRIPT_LOCATION).walk_revisions("base", "heads")))
    for step in steps:
        command.upgrade(shipped_alembic_config(url), step.revision)
        with engine.connect() as connection:  # an engine or a connection alike
            assert current_revision(connection) == current_revision(engine) == step.revision
    command.downgrade(shipped_alembic_config(url), "base")
    assert current_revision(engine) is None


def test_upgrade_creates_every_table_and_downgrade_removes_them(
    unmigrated: tuple[str, Engine],
) -> None:
    url, engine = unmigrated
    command.upgrade(shipped_alembic_config(url), "head")
    assert set(inspect(engine).get_table_names()) >= TABLES
    assert current_revision(engine) == head_revision()
    command.downgrade(shipped_alembic_config(url), "base")
    assert set(inspect(engine).get_table_names()) & TABLES == set()
    command.upgrade(shipped_alembic_config(url), "head")
    assert set(inspect(engine).get_table_names()) >= TABLES


# SQLite cannot reflect expression indexes (lower(email), lower(name)): SQLAlchemy and
# Alembic say so and skip comparing them; PostgreSQL compares them.
@pytest.mark.filterwarnings("ignore:.*expression-based index")
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrated_schema_matches_the_models(make_database: Any, backend: str) -> None:
    url = make_database(backend)
    command.upgrade(shipped_alembic_config(url), "head")
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "compare_server_default": True,
                    "include_object": include_object_for(engine.dialect.name),
                },
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_offline_mode_prints_the_ddl_for_review() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head", "--sql"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env={"DATABASE_URL": "postgresql://reviewer@db.invalid/customers", "PATH": ""},
    )
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE customers" in result.stdout
    assert 'COLLATE "C"' in result.stdout
    assert "JSONB" in result.stdout
    assert "ON DELETE CASCADE" in result.stdout


@pytest.mark.parametrize("name", sorted(CUSTOMER_CHILD_TABLES))
def test_every_customer_child_table_key_starts_with_the_customer_id(name: str) -> None:
    table = Base.metadata.tables[name]
    assert table.primary_key.columns.values()[0].name == "customer_id"
