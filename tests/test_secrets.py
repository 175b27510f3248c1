"""Secrets stay secret: database passwords and the webhook secret never reach the output.

Every command runs as a real ``customer-store`` process: with an unreachable database
whose URL carries a password (as ``--database-url``, as ``DATABASE_URL``, and as a
``?password=`` query parameter, which libpq accepts too), ``--help`` of each command, and
with a reachable database through ``migrate``, ``import``, ``stats`` and a ``serve`` run
that receives good and wrongly signed deliveries.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from customer_store.cli import build_parser, main
from models.signature import SIGNATURE_HEADER, sign
from tests.conftest import load_example_customers
from tests.servers import SECRET_ENV, WEBHOOK_PATH, child_env, running_server, signed_headers
from tests.webhook_streams import envelope, iso

DB_PASSWORD = "SeCrEt-pw-123"
#: A password in the query string: libpq reads ``?password=`` like the user part's.
QUERY_PASSWORD = "QuErY-pw-456"
WEBHOOK_SECRET = f"whsec-{uuid.uuid4().hex}"
UNREACHABLE_URLS = (
    f"postgresql://u:{DB_PASSWORD}@127.0.0.1:1/db",
    f"postgresql://u@127.0.0.1:1/db?password={QUERY_PASSWORD}",
)
#: Every command, with arguments that would be valid against a migrated store.
COMMANDS: tuple[tuple[str, ...], ...] = (
    ("migrate",),
    ("import", "customers.jsonl"),
    ("get", "cust_x"),
    ("get", "--source-id", "src_x"),
    ("export",),
    ("find", "--email", "a@example.com"),
    ("stats",),
    ("grant-app-role", "some_role", "--create", "--password-env", "APP_PW"),
    ("forget", "cust_xyz"),
    ("ingest", "events.jsonl"),
    ("serve", "--port", "1"),
    ("events",),
    ("events", "prune", "--older-than", "30d"),
    ("replay",),
    ("sync", "--dry-run"),
)


# --- running the CLI ----------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    returncode: int
    output: str

    def __str__(self) -> str:
        return f"customer-store {' '.join(self.args)} -> {self.returncode}\n{self.output[:3000]}"


def cli(args: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None) -> Run:
    completed = subprocess.run(
        [sys.executable, "-m", "customer_store", *args],
        cwd=cwd,
        env=child_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )
    output = (completed.stdout + completed.stderr).decode("utf-8", errors="replace")
    return Run(tuple(args), completed.returncode, output)


def cli_many(
    calls: Sequence[tuple[Sequence[str], Mapping[str, str] | None]], *, cwd: Path
) -> list[Run]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda call: cli(call[0], cwd=cwd, env=call[1]), calls))


def assert_no_secret(run: Run, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in run.output, f"{secret!r} leaked:\n{run}"
    assert "Traceback" not in run.output, str(run)


def write_inputs(directory: Path) -> None:
    valid = next(raw for name, raw in load_example_customers() if name.startswith("03-"))
    lines = [json.dumps(valid), json.dumps({**valid, "id": "cust_rejected", "birthdate": "x"})]
    (directory / "customers.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    event = envelope(
        f"evcus_{uuid.uuid4().hex}", "customer.created", {"customer": valid},
        iso(datetime.now(UTC)), entity_id=valid["id"],
    )
    (directory / "events.jsonl").write_text(json.dumps(event) + "\n", encoding="utf-8")


# --- tests --------------------------------------------------------------------------------


def run_in_process(
    args: Sequence[str],
    env: Mapping[str, str],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> Run:
    """``customer-store ARGS`` through its entry point in this process (a process start per
    call would cost a second each): what it prints and what it logs."""
    with monkeypatch.context() as patch:
        for name in ("DATABASE_URL", SECRET_ENV):
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        caplog.clear()
        try:
            status = main(list(args))
        except SystemExit as exit_:  # --help
            status = int(exit_.code or 0)
    captured = capsys.readouterr()
    return Run(tuple(args), status, captured.out + captured.err + caplog.text)


def test_no_command_prints_the_database_password_when_the_database_is_unreachable(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    env = {"APP_PW": "app-role-pw-789", SECRET_ENV: WEBHOOK_SECRET}
    runs = []
    for url in UNREACHABLE_URLS:
        for command in COMMANDS:
            runs.append(run_in_process(
                ("--database-url", url, *command), env, capsys, caplog, monkeypatch))
            runs.append(run_in_process(
                command, {**env, "DATABASE_URL": url}, capsys, caplog, monkeypatch))
    # And as real processes, the way an operator runs them.
    runs += cli_many([
        (("--database-url", UNREACHABLE_URLS[0], "migrate"), env),
        (("serve",), {**env, "DATABASE_URL": UNREACHABLE_URLS[1]}),
    ], cwd=tmp_path)
    for run in runs:
        # Every command needs the database, so each fails (exit 1) and says why.
        assert run.returncode == 1, str(run)
        assert "database error" in run.output, str(run)
        assert_no_secret(run, DB_PASSWORD, QUERY_PASSWORD, "app-role-pw-789", WEBHOOK_SECRET)


def test_help_of_every_command_shows_no_password_or_webhook_secret(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = UNREACHABLE_URLS[0]
    env = {"DATABASE_URL": url, SECRET_ENV: WEBHOOK_SECRET, "APP_PW": "app-role-pw-789"}
    names = sorted({command[0] for command in COMMANDS})
    runs = [run_in_process(("--help",), env, capsys, caplog, monkeypatch)]
    runs += [
        run_in_process(("--database-url", url, name, "--help"), env, capsys, caplog, monkeypatch)
        for name in names
    ]
    runs += cli_many([(("--database-url", url, "serve", "--help"), env)], cwd=tmp_path)
    for run in runs:
        assert run.returncode == 0, str(run)
        assert "usage: customer-store" in run.output, str(run)
        assert_no_secret(run, DB_PASSWORD, WEBHOOK_SECRET, "app-role-pw-789")
    # The main help lists every command: none is missing from this test.
    listed = runs[0].output
    assert all(name in listed for name in names), listed
    subcommands = next(
        action for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    assert set(subcommands.choices) == set(names)


@pytest.fixture
def reachable_urls(make_database: Any) -> dict[str, str]:
    """A fresh PostgreSQL database, by URL form: password in the user part or the query.

    The test server trusts 127.0.0.1, so it accepts the made-up password.
    """
    url = make_url(make_database("postgresql"))
    return {
        "user part": url.set(password=DB_PASSWORD).render_as_string(hide_password=False),
        "query": url.set(query={"password": QUERY_PASSWORD}).render_as_string(
            hide_password=False
        ),
    }


def test_migrate_import_stats_and_messages_of_a_reachable_database_hide_the_password(
    reachable_urls: dict[str, str], tmp_path: Path
) -> None:
    write_inputs(tmp_path)
    by_query, by_user = reachable_urls["query"], reachable_urls["user part"]
    # Before migrate: the "run migrate first" message names the database.
    early = cli(["--database-url", by_query, "stats"], cwd=tmp_path)
    assert early.returncode == 1 and "run `customer-store migrate` first" in early.output, str(
        early
    )
    assert "127.0.0.1" in early.output
    assert_no_secret(early, QUERY_PASSWORD)
    for url in (by_user, by_query):
        runs = [
            cli(["--database-url", url, "migrate"], cwd=tmp_path),
            cli(["import", "customers.jsonl"], cwd=tmp_path, env={"DATABASE_URL": url}),
            cli(["--database-url", url, "stats"], cwd=tmp_path),
            cli(["--database-url", url, "get", "cust_unknown"], cwd=tmp_path),
        ]
        migrate, imported, stats, missing = runs
        assert migrate.returncode == 0 and "is at revision" in migrate.output, str(migrate)
        assert imported.returncode == 1 and "rejected line 2" in imported.output, str(imported)
        assert stats.returncode == 0 and json.loads(stats.output.strip())["customers"] == 1, str(
            stats
        )
        assert missing.returncode == 1 and "no customer" in missing.output, str(missing)
        for run in runs:
            assert_no_secret(run, DB_PASSWORD, QUERY_PASSWORD)


def test_serve_logs_hide_the_database_password_and_the_webhook_secret(
    reachable_urls: dict[str, str], tmp_path: Path
) -> None:
    url = reachable_urls["user part"]
    assert cli(["--database-url", url, "migrate"], cwd=tmp_path).returncode == 0
    customer = next(raw for name, raw in load_example_customers() if name.startswith("03-"))
    event = envelope(
        f"evcus_{uuid.uuid4().hex}", "customer.created", {"customer": customer},
        iso(datetime.now(UTC)), entity_id=customer["id"],
    )
    body = json.dumps(event).encode()
    log_path = tmp_path / "serve.log"
    with running_server(url, log_path=log_path, secret=WEBHOOK_SECRET) as server:
        # Wrongly signed: with another secret, one that differs in one character, none.
        near_miss = WEBHOOK_SECRET[:-1] + ("0" if WEBHOOK_SECRET[-1] != "0" else "1")
        assert server.post(WEBHOOK_PATH, body, signed_headers(body, "not-the-secret")).status == 401
        assert server.post(WEBHOOK_PATH, body, signed_headers(body, near_miss)).status == 401
        assert server.post(WEBHOOK_PATH, body).status == 401
        assert server.post(WEBHOOK_PATH, b"{", {
            SIGNATURE_HEADER: sign(b"{", WEBHOOK_SECRET.encode())}).status == 400
        reply = server.post(WEBHOOK_PATH, body, signed_headers(body, WEBHOOK_SECRET))
        assert reply.status == 200, reply.data
    log = log_path.read_text(encoding="utf-8", errors="replace")
    assert "signatures checked" in log, log
    assert log.count("delivery status=401") == 3, log
    assert "delivery status=200" in log, log
    for secret in (DB_PASSWORD, WEBHOOK_SECRET, near_miss):
        assert secret not in log, f"{secret!r} leaked:\n{log}"


def test_a_database_url_typed_where_a_command_belongs_is_not_echoed_with_its_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["postgresql://u:SeCrEt-pw-123@127.0.0.1:1/db", "stats"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err
    assert "SeCrEt-pw-123" not in err
    assert "postgresql://u:***@127.0.0.1:1/db" in err
