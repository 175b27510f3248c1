"""What the command-line modules share: errors with exit codes, files, safe messages."""

from __future__ import annotations

import argparse
import io
import math
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, TextIO

from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from repository import make_engine
from repository.db import (
    DEFAULT_MAX_LAG,
    NoDatabaseFile,
    ReadRouter,
    backend_of,
    current_revision,
    first_line,
    head_revision,
    parse_database_url,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "READ_URL_VARIABLE",
    "CommandError",
    "CountingReader",
    "InputFile",
    "add_read_options",
    "check_replica",
    "checked",
    "int_between",
    "mask_passwords",
    "open_binary_input",
    "open_engine",
    "open_input",
    "open_output",
    "read_router",
    "read_secret",
    "read_url",
    "require_schema",
    "require_text_arguments",
    "safe_url",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A failure to report in one line, with its exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


#: Arguments that name files: any bytes the file system allows are fine there.
_PATH_ARGUMENTS = frozenset({"path"})
#: How positional arguments are named in messages (options by their flag).
_POSITIONAL_NAMES = {"id": "ID", "role": "NAME"}


def require_text_arguments(args: argparse.Namespace) -> None:
    """Refuse text arguments that no column or message can hold: bytes that are not UTF-8
    (Python hands them over as lone surrogates) and NUL characters."""
    for dest, value in vars(args).items():
        if dest in _PATH_ARGUMENTS or not isinstance(value, str):
            continue
        name = _POSITIONAL_NAMES.get(dest) or "--" + dest.replace("_", "-")
        if "\x00" in value:
            raise CommandError(f"argument {name}: contains a NUL character", EXIT_USAGE)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise CommandError(f"argument {name}: not valid UTF-8 text", EXIT_USAGE) from None


#: What a key or token may hold once stripped: printable ASCII without spaces, as an HTTP
#: header can carry it and a client can type it.
_SECRET_TEXT = re.compile(r"[\x21-\x7e]+")


def read_secret(variable: str) -> str:
    """A key or token from the environment variable ``variable``, surrounding whitespace
    stripped (one read from a file or a Kubernetes secret ends in a newline); ``""`` when
    unset or empty. Anything else that is still no usable key (only whitespace; inner
    whitespace, control or non-ASCII characters) is a usage error naming the variable,
    never its value."""
    raw = os.environ.get(variable, "")
    value = raw.strip()
    if raw and not value:
        raise CommandError(f"{variable} holds only whitespace: expected a key", EXIT_USAGE)
    if value and not _SECRET_TEXT.fullmatch(value):
        raise CommandError(
            f"{variable} holds whitespace, control or non-ASCII characters: expected "
            "printable ASCII without spaces", EXIT_USAGE,
        )
    return value


def checked(check: Callable[[str], None]) -> Callable[[str], str]:
    """An argparse type from one of the library's checks (which raise ValueError)."""

    def parse(text: str) -> str:
        try:
            check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return parse


def int_between(minimum: int, maximum: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``minimum`` to ``maximum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number, got {text[:40]!r}"
            ) from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be from {minimum:,} to {maximum:,}")
        return value

    return parse


def number_between(minimum: float, maximum: float, *, unit: str = "") -> Callable[[str], float]:
    """An argparse type: a number from ``minimum`` to ``maximum`` (``unit``, e.g.
    ``" seconds"``, said in the message); NaN and infinities are refused."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not minimum <= value <= maximum:  # NaN fails every comparison
            raise argparse.ArgumentTypeError(
                f"expected a number from {minimum:g} to {maximum:g}{unit}, got {text[:40]!r}"
            )
        return value

    return parse


def open_engine(url: str, *, create: bool = False) -> Engine:
    """The engine of a command. Only ``migrate`` passes ``create=True``: every other
    command needs a migrated database, and never creates a SQLite file."""
    try:
        return make_engine(url, must_exist=not create)
    except NoDatabaseFile as exc:
        raise CommandError(
            f"no database at {exc.path}: run `customer-store migrate` to create one there "
            "(or give --database-url)"
        ) from None
    except (ValueError, ArgumentError) as exc:
        raise CommandError(f"bad database URL: {exc}", EXIT_USAGE) from None


#: The environment variable naming the read replica, when ``--read-database-url`` is not given.
READ_URL_VARIABLE = "DATABASE_READ_URL"
#: The largest --max-replica-lag: a day.
MAX_REPLICA_LAG = 86_400.0


def add_read_options(parser: argparse.ArgumentParser) -> None:
    """``--read-database-url`` and ``--max-replica-lag``, for the commands that only read."""
    parser.add_argument(
        "--read-database-url", default=None, metavar="URL",
        help="a streaming standby (or several: a multi-host URL with "
        "target_session_attrs=prefer-standby) to read from while it is not too far behind "
        f"(default: ${READ_URL_VARIABLE}, else none: read from the primary)",
    )
    parser.add_argument(
        "--max-replica-lag", type=number_between(0, MAX_REPLICA_LAG, unit=" seconds"),
        default=DEFAULT_MAX_LAG, metavar="SECONDS",
        help="read from the primary while the standby is further behind than this "
        "(measured from its replay position; default %(default)g)",
    )


def read_url(args: argparse.Namespace, primary: Engine) -> str | None:
    """The read replica's URL (the option, else :data:`READ_URL_VARIABLE`), or None.
    A replica is a PostgreSQL standby of a PostgreSQL primary. Only the commands that
    read (:func:`add_read_options`) have one."""
    if not hasattr(args, "read_database_url"):
        return None
    url = args.read_database_url or os.environ.get(READ_URL_VARIABLE) or None
    if url is None:
        return None
    try:
        backend = parse_database_url(url).get_backend_name()
    except ValueError as exc:
        raise CommandError(f"bad read database URL: {exc}", EXIT_USAGE) from None
    if backend not in ("postgres", "postgresql") or not backend_of(primary).has_standbys:
        raise CommandError(
            "a read replica is a PostgreSQL standby of a PostgreSQL database: "
            f"{safe_url(url)} cannot serve reads for this one", EXIT_USAGE,
        )
    return url


def check_replica(url: str) -> None:
    """Refuse a replica whose schema is not at head (it replicates the primary, and is not
    migrated itself: a standby cannot be written). One that cannot be reached is only
    warned about: reads go to the primary until it answers."""
    engine = open_engine(url)
    try:
        current = current_revision(engine)
    except SQLAlchemyError as exc:
        print(f"customer-store: warning: the read replica {safe_url(url)} cannot be reached "
              f"({mask_passwords(first_line(exc))}): reading from the primary until it "
              "can", file=sys.stderr)
        return
    finally:
        engine.dispose()
    head = head_revision()
    if current != head:
        raise CommandError(
            f"the schema of the read replica {safe_url(url)} is at revision "
            f"{current or 'none'}, not {head}: migrate the primary, and check that this is "
            "its standby (it is not migrated itself)"
        )


@contextmanager
def read_router(primary: Engine, args: argparse.Namespace) -> Iterator[ReadRouter]:
    """Where the reads of a read command go: a replica given by ``--read-database-url`` or
    :data:`READ_URL_VARIABLE` (its schema checked), else the primary alone."""
    url = read_url(args, primary)
    if url is None:
        yield ReadRouter(primary)
        return
    check_replica(url)
    try:
        replica = make_engine(url, read_only=True)
    except (ValueError, ArgumentError) as exc:
        raise CommandError(f"bad read database URL: {exc}", EXIT_USAGE) from None
    try:
        yield ReadRouter(primary, replica, max_lag=args.max_replica_lag)
    finally:
        replica.dispose()


def require_schema(engine: Engine, url: str) -> None:
    """Refuse a database whose schema is not at head (``url``: as the user gave it)."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise CommandError(
            f"the schema of {safe_url(url)} is at revision {current or 'none'}, "
            f"not {head}: run `customer-store migrate` first"
        )


#: Bytes read from the input at a time.
_INPUT_BUFFER = 64 * 1024


class CountingReader(io.RawIOBase):
    """A binary file read through this counts its bytes: how far the reading has got."""

    def __init__(self, raw: io.RawIOBase) -> None:
        super().__init__()
        self._raw = raw
        #: Bytes read so far.
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int | None:
        read = self._raw.readinto(buffer)
        if read:
            self.count += read
        return read

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


@dataclass(frozen=True)
class InputFile:
    """Text to read, and how much of the input has been read."""

    text: TextIO
    #: Bytes from where reading starts to the end, when the input is a regular file (not a
    #: pipe or a terminal).
    size: int | None
    counter: CountingReader

    @property
    def bytes_read(self) -> int:
        """Bytes taken from the input so far: ahead of what ``text`` has handed out by what
        is buffered (some 64 KiB), and all of them once ``text`` has been read to the end."""
        return self.counter.count


@contextmanager
def open_input(path: str) -> Iterator[InputFile]:
    """Text input (a file, or standard input for ``-``), with its size and the bytes read
    so far, for a progress bar. Undecodable bytes become lone surrogates, which validation
    rejects per record instead of the whole file failing at the first bad byte."""
    try:
        if path == "-":
            raw = io.FileIO(sys.stdin.fileno(), "rb", closefd=False)
        else:
            raw = io.FileIO(path, "rb")
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None
    counter = CountingReader(raw)
    text = io.TextIOWrapper(
        io.BufferedReader(counter, buffer_size=_INPUT_BUFFER),
        encoding="utf-8-sig",
        errors="surrogateescape",
    )
    with text:
        yield InputFile(text, _size_left(raw), counter)


def _size_left(raw: io.FileIO) -> int | None:
    """Bytes from the current position to the end of a regular file; None for others."""
    try:
        status = os.fstat(raw.fileno())
        if not stat.S_ISREG(status.st_mode):
            return None
        return max(status.st_size - raw.tell(), 0)
    except OSError:
        return None


@contextmanager
def open_binary_input(path: str) -> Iterator[BinaryIO]:
    """Raw bytes, for webhook bodies that must be kept exactly as received."""
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        stream = open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None
    with stream:
        yield stream


@contextmanager
def open_output(path: str) -> Iterator[TextIO]:
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


#: Query parameters of a database URL that hold secrets (libpq takes ``?password=``).
_SECRET_QUERY_WORDS = ("password", "passwd", "secret", "token")


def safe_url(url: str | URL) -> str:
    """The URL with its password masked, fit for messages and logs: the password of the
    user part and secret query parameters (``?password=…``, ``?sslpassword=…``), in libpq's
    multi-host spelling too."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        try:
            parse_database_url(url)
        except ValueError:
            return "<unparseable URL>"
        # libpq's multi-host spelling, which SQLAlchemy's parser refuses: shown as given.
        return mask_passwords(str(url))
    if any(_is_secret_parameter(name) for name in parsed.query):
        parsed = parsed.set(query={
            name: "***" if _is_secret_parameter(name) else value
            for name, value in parsed.query.items()
        })
    return parsed.render_as_string(hide_password=True)


_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]*@")
# A secret query parameter of a URL (``?password=…``, ``&sslpassword=…``).
_QUERY_SECRET = re.compile(
    rf"([?&][^=&\s]*(?:{'|'.join(_SECRET_QUERY_WORDS)})[^=&\s]*=)[^&\s]*", re.IGNORECASE
)


def mask_passwords(text: str) -> str:
    """``text`` with the password of any URL in it replaced by ``***``: the user part's
    (one host or libpq's list of hosts) and secret query parameters."""
    return _QUERY_SECRET.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


def _is_secret_parameter(name: str) -> bool:
    return any(word in name.lower() for word in _SECRET_QUERY_WORDS)

