"""Hostile command-line arguments: every one is a usage error (exit 2) in one line that
names the argument, never a traceback, and nothing is read or written.

Each command's options get values that are huge, negative, zero, not numbers, not UTF-8
(Python hands such bytes to the program as lone surrogates, which is how they are passed
here), NUL, or simply not what the option means. ``find``'s filters have their own table in
``test_find_arguments.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from customer_store.cli import main
from tests.test_secrets import cli

HUGE = "99999999999999999999999"
NOT_UTF8 = "\udcff\udcfe"  # the bytes FF FE on the command line

#: (arguments after the database URL, the argument the message must name)
HOSTILE: list[tuple[tuple[str, ...], str]] = [
    (("import", "--batch-size", "0"), "--batch-size"),
    (("import", "--batch-size", "-1"), "--batch-size"),
    (("import", "--batch-size", HUGE), "--batch-size"),
    (("import", "--batch-size", "1e3"), "--batch-size"),
    (("get", NOT_UTF8), "ID"),
    (("get", "--source-id", NOT_UTF8), "--source-id"),
    (("forget", NOT_UTF8), "ID"),
    (("forget", ""), "ID"),
    # "e" is an id a customer can be stored with (models.ids), so forget takes it now.
    (("forget", "\U0001d11e" * 251), "ID"),  # over the 1,000 bytes an id may take
    (("get", "g" * 256), "ID"),
    (("forget", "cust_" + "x" * 300), "ID"),
    (("grant-app-role", ""), "NAME"),
    (("grant-app-role", "public"), "NAME"),
    (("grant-app-role", "pg_signal_backend"), "NAME"),
    (("grant-app-role", NOT_UTF8), "NAME"),
    (("grant-app-role", "app", "--password-env", NOT_UTF8), "--password-env"),
    (("events", "--limit", "0"), "--limit"),
    (("events", "--limit", "-5"), "--limit"),
    (("events", "--limit", HUGE), "--limit"),
    (("events", "--limit", "ten"), "--limit"),
    (("events", "--outcome", "lost"), "--outcome"),
    (("serve", "--port", "-1"), "--port"),
    (("serve", "--port", "65536"), "--port"),
    (("serve", "--port", HUGE), "--port"),
    (("serve", "--max-body-bytes", "0"), "--max-body-bytes"),
    (("serve", "--max-body-bytes", "-1"), "--max-body-bytes"),
    (("serve", "--max-body-bytes", HUGE), "--max-body-bytes"),
    (("serve", "--delivery-timeout", "0"), "--delivery-timeout"),
    (("serve", "--delivery-timeout", "-1"), "--delivery-timeout"),
    (("serve", "--delivery-timeout", "nan"), "--delivery-timeout"),
    (("serve", "--delivery-timeout", "inf"), "--delivery-timeout"),
    (("serve", "--delivery-timeout", "1e400"), "--delivery-timeout"),
    # Beyond what a delivery can use (and, for the largest, PostgreSQL's lock_timeout).
    (("serve", "--delivery-timeout", "86400"), "--delivery-timeout"),
    (("serve", "--delivery-timeout", "2147484"), "--delivery-timeout"),
    (("serve", "--delivery-timeout", "0.001"), "--delivery-timeout"),
    (("serve", "--delivery-timeout", "1e-300"), "--delivery-timeout"),
    (("serve", "--host", NOT_UTF8), "--host"),
]


def assert_usage_error(returncode: int, output: str, argument: str) -> None:
    lines = output.strip().splitlines()
    assert returncode == 2, output
    assert len(lines) == 1, output
    assert f"argument {argument}" in lines[0], output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("args", "argument"), HOSTILE, ids=[" ".join(a).encode("utf-8", "replace").decode()[:40]
                                       for a, _ in HOSTILE]
)
def test_hostile_argument_is_a_one_line_usage_error(
    any_database_url: str, tmp_path: Path, args: tuple[str, ...], argument: str
) -> None:
    # Arguments are checked before the database is opened: one backend suffices.
    run = cli(["--database-url", any_database_url, *args], cwd=tmp_path)
    assert_usage_error(run.returncode, run.output, argument)


def test_database_url_that_is_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    run = cli(["--database-url", f"sqlite:///{NOT_UTF8}.db", "get", "cust_ID"], cwd=tmp_path)
    assert_usage_error(run.returncode, run.output, "--database-url")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "argument"),
    [
        (("get", "cust_\x00ID"), "ID"),
        (("get", "--source-id", "a\x00"), "--source-id"),
        (("forget", "cust_\x00ID"), "ID"),
        (("grant-app-role", "app\x00"), "NAME"),
        (("serve", "--host", "127.0.0.1\x00"), "--host"),
    ],
)
def test_nul_in_an_argument_is_a_usage_error(
    database_url: str, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], argument: str
) -> None:
    # No process can be given a NUL on its command line: this is the in-process entry.
    try:
        status = main(["--database-url", database_url, *args])
    except SystemExit as exit_:
        status = int(exit_.code or 0)
    captured = capsys.readouterr()
    assert_usage_error(status, captured.out + captured.err, argument)
