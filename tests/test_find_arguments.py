"""``customer-store find`` with hostile arguments: every one is a usage error (exit 2) in one
line that names the option, never a traceback nor a "database error".

Each value runs the real CLI (``python -m customer_store``) against a migrated PostgreSQL
database: the values are refused before any SQL, by rules no backend changes, so one backend
suffices. Non-UTF-8 bytes reach Python as lone surrogates, which is how they are passed
here; no process can be given a NUL on its command line, so NUL is tried through the
in-process entry point and through JSON escapes.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session

from customer_store.cli import main
from models.tables import CustomerRow
from repository import CustomerRepository, make_engine
from repository.store.queries import MAX_METADATA_DEPTH
from tests.servers import child_env, cli_command

HUGE = "99999999999999999999999"
NOT_UTF8 = "\udcff\udcfe"  # the bytes FF FE on the command line


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _nested_json(depth: int) -> str:
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


#: (arguments after ``find``, the option the message must name)
HOSTILE: list[tuple[tuple[str, ...], str]] = [
    # cursors
    (("--cursor", _cursor(b"[" * 20_000 + b"]" * 20_000)), "--cursor"),
    (("--cursor", _cursor(b'{"after":' + b"[" * 5000 + b"]" * 5000 + b"}")), "--cursor"),
    (("--cursor", _cursor(b'{"after":"\\u0000"}')), "--cursor"),
    (("--cursor", _cursor(b'{"after":"\\udc80"}')), "--cursor"),
    (("--cursor", "A" * 100_000), "--cursor"),
    (("--cursor", NOT_UTF8), "--cursor"),
    # metadata
    (("--metadata", _nested_json(900)), "--metadata"),
    (("--metadata", _nested_json(MAX_METADATA_DEPTH + 1)), "--metadata"),
    (("--metadata", '{"x":99999999999999999999}'), "--metadata"),
    (("--metadata", '{"x":' + "9" * 5000 + "}"), "--metadata"),
    (("--metadata", '{"x":1e400}'), "--metadata"),
    (("--metadata", '{"x":NaN}'), "--metadata"),
    (("--metadata", '{"x":"\\u0000"}'), "--metadata"),
    (("--metadata", '{"\\u0000":1}'), "--metadata"),
    (("--metadata", '{"x":["\\ud800"]}'), "--metadata"),
    (("--metadata", json.dumps({f"k{i}": i for i in range(3000)})), "--metadata"),
    (("--metadata", "[1]"), "--metadata"),
    (("--metadata", '{"x":'), "--metadata"),
    (("--metadata", NOT_UTF8), "--metadata"),
    # points
    (("--campaign", "c", "--min-points", HUGE), "--min-points"),
    (("--campaign", "c", "--min-points", str(-(2**63) - 1)), "--min-points"),
    (("--min-points", "5"), "--campaign"),
    # page size
    (("--limit", "0"), "--limit"),
    (("--limit", HUGE), "--limit"),
    (("--limit", "ten"), "--limit"),
    (("--count", "--limit", "0"), "--limit"),
    # dates
    (("--created-from", "garbage"), "--created-from"),
    (("--created-from", "0000-01-01T00:00:00Z"), "--created-from"),
    (("--created-before", "0001-01-01T00:00:00+01:00"), "--created-before"),
    (("--updated-from", "9999-12-31T23:59:59-01:00"), "--updated-from"),
    (("--orders-since", "2024-01-01T00:00:00"), "--orders-since"),
    # text
    (("--email", NOT_UTF8), "--email"),
    (("--name-prefix", "a" + NOT_UTF8), "--name-prefix"),
    (("--source-id", NOT_UTF8), "--source-id"),
    (("--name-prefix", "\ufdfa" * 34), "--name-prefix"),  # folds to 612 characters
]


def _case_id(args: tuple[str, ...]) -> str:
    text = " ".join(args)
    text = text.encode("utf-8", "backslashreplace").decode()
    return text if len(text) <= 48 else f"{text[:40]}...({len(text)})"


@pytest.fixture(scope="module")
def hostile_runs(any_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    list[subprocess.CompletedProcess[bytes]]
]:
    """Every hostile ``find`` against a migrated database, side by side (the arguments are
    checked before any SQL, so one backend suffices)."""
    cwd = tmp_path_factory.mktemp("find")

    def run(args: tuple[str, ...]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            cli_command(any_database_url, "find", *args), cwd=cwd, env=child_env(),
            stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=False,
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        yield list(pool.map(run, (args for args, _ in HOSTILE)))


def assert_usage_error(returncode: int, stdout: bytes, stderr: bytes, option: str) -> None:
    shown = stderr.decode("utf-8", "backslashreplace")
    assert returncode == 2, f"exit {returncode}: {shown[:3000]}"
    assert b"Traceback" not in stderr and b"Traceback" not in stdout, shown[:3000]
    assert stdout == b"", stdout[:1000]
    lines = stderr.splitlines()
    assert len(lines) == 1, shown[:3000]
    assert f"argument {option}:".encode() in lines[0], shown
    assert b"database error" not in lines[0], shown


@pytest.mark.parametrize(
    "case", range(len(HOSTILE)), ids=[_case_id(args) for args, _ in HOSTILE]
)
def test_a_hostile_find_argument_is_a_one_line_usage_error(
    hostile_runs: list[subprocess.CompletedProcess[bytes]], case: int
) -> None:
    run = hostile_runs[case]
    assert_usage_error(run.returncode, run.stdout, run.stderr, HOSTILE[case][1])


@pytest.mark.parametrize("option", ["--email", "--name-prefix", "--source-id", "--referred-by"])
def test_nul_in_a_find_option_is_a_usage_error(
    database_url: str, capfdbinary: pytest.CaptureFixture[bytes], option: str
) -> None:
    # No process can be given a NUL on its command line: this is the in-process entry.
    try:
        status = main(["--database-url", database_url, "find", option, "a\x00b"])
    except SystemExit as exit_:
        status = int(exit_.code or 0)
    captured = capfdbinary.readouterr()
    assert_usage_error(status, captured.out, captured.err, option)


def test_find_and_count_agree_on_an_object_inside_an_array(
    database_url: str, tmp_path: Path
) -> None:
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            CustomerRepository(session).upsert_many([
                {"id": "cust_arr_yes", "metadata": {"arr": [{"k": 1, "j": 2}]}},
                {"id": "cust_arr_no", "metadata": {"arr": [{"k": 2}], "k": 1}},
            ])
            session.commit()
        wanted = '{"arr":[{"k":1}]}'
        runs = [
            subprocess.run(
                cli_command(database_url, "find", "--metadata", wanted, *extra), cwd=tmp_path,
                env=child_env(), stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
                check=False,
            )
            for extra in ((), ("--count",))
        ]
    finally:
        with engine.begin() as connection:
            connection.execute(
                delete(CustomerRow).where(CustomerRow.id.in_(["cust_arr_yes", "cust_arr_no"]))
            )
        engine.dispose()
    found, counted = runs
    assert found.returncode == 0 and counted.returncode == 0, (found.stderr, counted.stderr)
    assert [json.loads(line)["id"] for line in found.stdout.splitlines()] == ["cust_arr_yes"]
    assert counted.stdout.strip() == b"1"
