"""Database URLs: parsing, checking and normalising what operators write.

Two spellings of a PostgreSQL URL with several hosts are accepted:

- libpq's, ``postgresql://app@10.0.0.1:5432,10.0.0.2:5432/customers?target_session_attrs=read-write``
  (what ``pg_autoctl show uri`` prints; IPv6 hosts in brackets, each port optional), which
  SQLAlchemy's own parser refuses;
- SQLAlchemy's, ``postgresql+psycopg://app@/customers?host=10.0.0.1:5432&host=10.0.0.2:5432``
  (or ``?host=h1,h2&port=p1,p2``).

The first is rewritten into the second (``?host=h1,h2&port=p1,p2``, the spelling that also
holds IPv6 addresses); psycopg then tries the hosts in turn, as libpq does, honouring
``target_session_attrs`` and ``load_balance_hosts``. Those two are checked here, before
anything connects, as are the timeouts: a typo would otherwise surface as a refused
connection on every host.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = [
    "CONNECTION_DEFAULTS",
    "LOAD_BALANCE_HOSTS",
    "POOLER_PARAMETER",
    "TARGET_SESSION_ATTRS",
    "behind_pooler",
    "connection_defaults",
    "normalize_url",
    "parse_database_url",
    "without_pooler_flag",
]

#: The query parameter of a PostgreSQL URL saying that a transaction pooler (PgBouncer in
#: ``pool_mode = transaction``, and the like) sits between the store and the server:
#: ``postgresql://user@pgbouncer:6432/db?pgbouncer=true``. Connections then prepare no
#: statements on the server (psycopg's ``prepare_threshold=None``), since the pooler hands
#: each transaction whichever server connection is free.
POOLER_PARAMETER = "pgbouncer"
_POOLER_VALUES = {"true": True, "1": True, "false": False, "0": False}
# The parameter with no value, which URL parsing drops as if it were not there.
_BLANK_POOLER_FLAG = re.compile(rf"[?&]{POOLER_PARAMETER}(?:=)?(?:&|$)")

#: libpq's values of ``target_session_attrs``: which of the hosts a connection may use.
TARGET_SESSION_ATTRS = (
    "any", "read-write", "read-only", "primary", "standby", "prefer-standby",
)
#: libpq's values of ``load_balance_hosts``: the hosts in the given order, or shuffled.
LOAD_BALANCE_HOSTS = ("disable", "random")

#: What every PostgreSQL connection gets unless its URL says otherwise. ``connect_timeout``
#: bounds each host's attempt (psycopg tries the hosts one by one, each with the whole
#: timeout); without it, an unreachable host holds a connect for about two minutes. The
#: keepalives make the kernel notice a silent peer (a dead host, a dropped route) after
#: 10 s idle plus 3 probes 5 s apart: about 25 s, where the system default is over two hours.
#: ``tcp_user_timeout`` (milliseconds) covers what keepalives don't: a statement sent to a
#: server that vanished, whose bytes are never acknowledged, which the kernel would
#: otherwise retransmit for about 15 minutes.
CONNECTION_DEFAULTS: dict[str, int] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}

# What the numbers of CONNECTION_DEFAULTS count, for messages.
_NUMBER_UNITS = {
    "connect_timeout": "a whole number of seconds",
    "keepalives": "0 or 1",
    "keepalives_idle": "a whole number of seconds",
    "keepalives_interval": "a whole number of seconds",
    "keepalives_count": "a whole number of probes",
    "tcp_user_timeout": "a whole number of milliseconds",
}

# libpq's URI: scheme://[user[:password]@]host[:port][,host[:port]...][/dbname][?params].
# The user part ends at the first "@" before any "/", as libpq reads it.
_LIBPQ_URI = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://"
    r"(?:(?P<userinfo>[^@/]*)@)?"
    r"(?P<hosts>[^/?]*)"
    r"(?P<rest>[/?].*)?$",
    re.DOTALL,
)
_HOST_AND_PORT = re.compile(r"^(?:\[(?P<ipv6>[^\]]*)\]|(?P<host>[^\[\]:]*))(?::(?P<port>.*))?$")


def parse_database_url(url: str | URL) -> URL:
    """``url`` as SQLAlchemy's URL, libpq's multi-host form rewritten into SQLAlchemy's
    (``?host=h1,h2&port=p1,p2``), its driver as given. ``ValueError`` for a URL that
    cannot be read, or a bad ``target_session_attrs``, ``load_balance_hosts``, timeout or
    keepalive setting (the message names the parameter and what it accepts, never the
    password)."""
    if isinstance(url, URL):
        parsed = url
    else:
        multi_host = _from_libpq_multi_host(url)
        try:
            parsed = multi_host if multi_host is not None else make_url(url)
        except ArgumentError as exc:
            raise ValueError(str(exc)) from None
    if parsed.get_backend_name() in ("postgres", "postgresql"):
        _check_parameters(parsed)
    return parsed


def normalize_url(url: str | URL, *, asynchronous: bool = False) -> str:
    """Map ``postgres://`` and ``postgresql://`` to the psycopg 3 driver (which serves sync
    and async engines alike) and ``sqlite://`` to pysqlite or, for async engines,
    aiosqlite; refuse other databases and drivers. libpq's multi-host form comes back in
    SQLAlchemy's (:func:`parse_database_url`).

    A ``?pgbouncer=`` flag is checked and kept: engines take it off (see
    :func:`without_pooler_flag`) before the URL reaches the driver.
    """
    behind_pooler(url)  # a bad value is refused here, before anything connects
    parsed = parse_database_url(url)
    backend = parsed.get_backend_name()
    if backend in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend == "sqlite":
        driver = "sqlite+aiosqlite" if asynchronous else "sqlite+pysqlite"
        if parsed.drivername not in ("sqlite", driver):
            raise ValueError(f"unsupported SQLite driver {parsed.drivername!r}")
        if asynchronous:
            parsed = parsed.set(drivername=driver)
    else:
        raise ValueError(
            f"unsupported database {backend!r}: use postgresql://… or sqlite:///path"
        )
    return parsed.render_as_string(hide_password=False)


def behind_pooler(url: str | URL) -> bool:
    """Whether ``url`` says a transaction pooler sits in between (``?pgbouncer=true`` or
    ``=1``; ``false``, ``0`` or no parameter: a direct connection). Raises ``ValueError``
    for another value, or for the parameter on a SQLite URL."""
    parsed = parse_database_url(url)
    if POOLER_PARAMETER not in parsed.query:
        if isinstance(url, str) and _BLANK_POOLER_FLAG.search(url):
            raise ValueError(f"?{POOLER_PARAMETER}= must be true, false, 1 or 0, not empty")
        return False
    value = parsed.query[POOLER_PARAMETER]
    if parsed.get_backend_name() == "sqlite":
        raise ValueError(f"?{POOLER_PARAMETER}= is for PostgreSQL URLs, not SQLite ones")
    flag = _POOLER_VALUES.get(value.lower()) if isinstance(value, str) else None
    if flag is None:
        raise ValueError(
            f"?{POOLER_PARAMETER}= must be true, false, 1 or 0 (once), not {value!r}"
        )
    return flag


def without_pooler_flag(url: str) -> tuple[str, bool]:
    """``url`` without its ``?pgbouncer=`` parameter, which no driver knows, and whether
    the parameter said a transaction pooler sits in between (:func:`behind_pooler`).
    A URL holding the parameter, or in libpq's multi-host spelling, comes back in
    SQLAlchemy's; any other as given."""
    pooled = behind_pooler(url)
    parsed = parse_database_url(url)
    if POOLER_PARAMETER in parsed.query or _from_libpq_multi_host(url) is not None:
        url = parsed.difference_update_query([POOLER_PARAMETER]).render_as_string(
            hide_password=False
        )
    return url, pooled


def connection_defaults(url: str | URL) -> dict[str, int]:
    """The :data:`CONNECTION_DEFAULTS` that ``url`` (a PostgreSQL URL) does not set
    itself: a value in the URL wins."""
    query = parse_database_url(url).query
    return {name: value for name, value in CONNECTION_DEFAULTS.items() if name not in query}


def _from_libpq_multi_host(url: str) -> URL | None:
    """libpq's multi-host URL as SQLAlchemy's; None for any other URL (one host, SQLite,
    SQLAlchemy's own spelling), which SQLAlchemy reads as it is."""
    match = _LIBPQ_URI.match(url)
    if match is None or "," not in match["hosts"]:
        return None
    scheme = match["scheme"]
    if not scheme.lower().startswith("postgres"):
        return None
    hosts: list[str] = []
    ports: list[str] = []
    for entry in match["hosts"].split(","):
        host, port = _host_and_port(entry)
        hosts.append(host)
        ports.append(port)
    # Everything but the hosts, read by SQLAlchemy itself: user, password, database and
    # query decoded exactly as in a one-host URL.
    userinfo = f"{match['userinfo']}@" if match["userinfo"] is not None else ""
    try:
        parsed = make_url(f"{scheme}://{userinfo}{match['rest'] or ''}")
    except ArgumentError as exc:
        raise ValueError(str(exc)) from None
    if "host" in parsed.query or "port" in parsed.query:
        raise ValueError(
            "the database URL lists hosts both before the database name and in ?host= "
            "or ?port=: use one or the other"
        )
    hosts_and_ports = {"host": ",".join(hosts)}
    if any(ports):
        hosts_and_ports["port"] = ",".join(ports)
    return parsed.update_query_dict(hosts_and_ports)


def _host_and_port(entry: str) -> tuple[str, str]:
    """One ``host[:port]`` of a libpq host list (``[IPv6]:port`` too), decoded."""
    match = _HOST_AND_PORT.match(entry)
    host = match and (match["ipv6"] if match["ipv6"] is not None else match["host"])
    if not host:
        raise ValueError(
            f"bad host {entry!r} in the database URL's host list: "
            "expected host, host:port or [IPv6 address]:port, separated by commas"
        )
    port = (match["port"] if match else None) or ""
    if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(
            f"bad port {port!r} of host {host!r} in the database URL: "
            "expected a number from 1 to 65535"
        )
    return unquote(host), port


def _check_parameters(parsed: URL) -> None:
    """Refuse libpq settings that would fail at every connection attempt, naming the
    parameter and what it accepts."""
    for name, accepted in (
        ("target_session_attrs", TARGET_SESSION_ATTRS),
        ("load_balance_hosts", LOAD_BALANCE_HOSTS),
    ):
        value = parsed.query.get(name)
        if value is not None and value not in accepted:
            raise ValueError(
                f"?{name}= must be one of {', '.join(accepted)} (once), not {_shown(value)}"
            )
    for name, unit in _NUMBER_UNITS.items():
        value = parsed.query.get(name)
        if value is not None and not (
            isinstance(value, str) and value.isascii() and value.isdigit()
            and (name != "keepalives" or value in ("0", "1"))
        ):
            raise ValueError(f"?{name}= must be {unit} (once), not {_shown(value)}")

def _shown(value: str | tuple[str, ...]) -> str:
    return repr(value) if isinstance(value, str) else f"{len(value)} values"
