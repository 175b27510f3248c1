"""Sync against an upstream that stalls or lies, and keys as operators hand them over.

A misbehaving HTTP server (:class:`Upstream`) sits in front of the local stand-in for
Voucherify (tests/voucherify_api.py): it passes each request on and then trickles the
answer, rewrites its ``Date``, or replaces its rate-limit headers. In each case the command
ends by itself with one line, no customer is lost, and no key shows in the output.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import http.server
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from repository import CustomerRepository, make_session_factory
from repository.voucherify import (
    ApiUnavailable,
    AuthenticationFailed,
    VoucherifyClient,
    mirror_customers,
    mirror_states,
)
from repository.voucherify.mirror_state import save_mirror_state
from tests.servers import Reply, child_env, cli_command, free_port, request, serve_command, stop
from tests.voucherify_api import FakeVoucherify, format_instant, make_customers

# make test-slow: the Voucherify mirror against a misbehaving upstream, through processes.
pytestmark = pytest.mark.slow

APP_ID, APP_TOKEN = "upstream-app-7f3c", "upstream-token-5d0e91"
#: How often a stalling answer sends its next byte, and for how long at most.
TRICKLE_EVERY, TRICKLE_FOR = 0.1, 30.0


class Upstream:
    """An HTTP server on 127.0.0.1 that forwards ``GET`` to ``fake`` and misbehaves in its
    answers as told: :attr:`stall` answers trickle a byte every :data:`TRICKLE_EVERY` s (from
    the status line when :attr:`stall_headers`, else from the body; :attr:`stall` of -1:
    every answer); :attr:`date` replaces every ``Date``; :attr:`headers` are set on every
    answer; each entry of :attr:`once` (a status, or None to pass the fake's on, and
    headers) replaces one answer, in turn."""

    def __init__(self, fake: FakeVoucherify) -> None:
        self.fake = fake
        self.stall = 0
        self.stall_headers = False
        self.date: str | None = None
        self.headers: dict[str, str] = {}
        self.once: list[tuple[int | None, dict[str, str]]] = []
        self.requests = 0
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Forward)
        self._server.daemon_threads = True
        cast(Any, self._server).upstream = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Upstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def plan(self) -> tuple[bool, int | None, dict[str, str]]:
        """For the next answer: whether it stalls, the status to give, headers to set."""
        with self._lock:
            self.requests += 1
            stalls = self.stall != 0
            if self.stall > 0:
                self.stall -= 1
            status, headers = self.once.pop(0) if self.once else (None, {})
            headers = {**self.headers, **headers}
            if self.date is not None:
                headers["Date"] = self.date
            return stalls, status, headers


class _Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        upstream: Upstream = cast(Any, self.server).upstream
        stalls, status, extra = upstream.plan()
        target = urlsplit(upstream.fake.url)
        connection = http.client.HTTPConnection(target.hostname or "", target.port, timeout=10)
        try:
            connection.request("GET", self.path, headers={
                name: value for name, value in self.headers.items()
                if name.lower() in ("x-app-id", "x-app-token", "accept")
            })
            answer = connection.getresponse()
            body = answer.read()
            headers = {name: value for name, value in answer.getheaders()
                       if name.lower() not in ("date", "server", "content-length", "connection")}
            code = answer.status
        finally:
            connection.close()
        if status is not None:
            code, body = status, b'{"code": %d, "message": "injected"}' % status
        headers.update({"Date": email.utils.formatdate(usegmt=True), **extra,
                        "Content-Length": str(len(body))})
        head = f"HTTP/1.1 {code} {http.HTTPStatus(code).phrase}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()
        ) + "\r\n"
        with contextlib.suppress(OSError):
            if not stalls:
                self.wfile.write(head.encode("latin-1") + body)
                return
            self.close_connection = True
            sent = b"" if upstream.stall_headers else head.encode("latin-1")
            self.wfile.write(sent)
            rest = (b"" if sent else head.encode("latin-1")) + body
            ends = time.monotonic() + TRICKLE_FOR
            for index in range(len(rest)):
                if time.monotonic() > ends:
                    return
                self.wfile.write(rest[index : index + 1])
                self.wfile.flush()
                time.sleep(TRICKLE_EVERY)


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def sessions(engine: Engine, session: Session) -> sessionmaker[Session]:
    del session  # empties the database afterwards
    return make_session_factory(engine)


@pytest.fixture
def fake() -> Iterator[FakeVoucherify]:
    with FakeVoucherify(app_id=APP_ID, app_token=APP_TOKEN) as server:
        server.put_many(make_customers(230, seed=1723))
        yield server


@pytest.fixture
def upstream(fake: FakeVoucherify) -> Iterator[Upstream]:
    with Upstream(fake) as server:
        yield server


def stored(sessions: sessionmaker[Session]) -> dict[str, Any]:
    with sessions() as session:
        return {c.id: c.to_dict() for c in CustomerRepository(session).iter_all()}


def listed(fake: FakeVoucherify) -> dict[str, Any]:
    return {c["id"]: c for c in fake.customers()}


def mirror_cli(
    database_url: str, api_url: str, *args: str, env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    keys = {"VOUCHERIFY_APP_ID": APP_ID, "VOUCHERIFY_APP_TOKEN": APP_TOKEN,
            "VOUCHERIFY_API_URL": api_url}
    return subprocess.run(
        cli_command(database_url, "sync", *args), env=child_env({**keys, **(env or {})}),
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def assert_told_in_one_line(result: subprocess.CompletedProcess[str], *secrets: str) -> str:
    """No traceback, no secret, and the last line of stderr (the command's message)."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    for secret in (APP_TOKEN, *secrets):
        assert not secret.strip() or secret.strip() not in output
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def as_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --- item 5: a deadline for each whole request ------------------------------------------------


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_trickling_answer_is_cut_at_the_deadline_and_retried_without_losing_anyone(
    sessions: sessionmaker[Session], database_url: str, fake: FakeVoucherify,
    upstream: Upstream, where: str,
) -> None:
    upstream.stall, upstream.stall_headers = 1, where == "headers"
    started = time.monotonic()
    result = mirror_cli(database_url, upstream.url, "--timeout", "1.5")
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert_told_in_one_line(result)
    assert result.stdout.startswith("synced 230 customers")
    # A byte every 0.1 s kept the old per-read timeout alive for the whole 30 s.
    assert seconds < 15
    assert stored(sessions) == listed(fake)
    assert upstream.requests >= 4  # the stalled page was asked again


def test_an_upstream_that_always_stalls_ends_the_run_and_the_next_run_goes_on(
    sessions: sessionmaker[Session], fake: FakeVoucherify, upstream: Upstream
) -> None:
    with VoucherifyClient(app_id=APP_ID, app_token=APP_TOKEN, api_url=upstream.url,
                          timeout=0.5, attempts=2, max_requests=2) as client:
        mirror_customers(sessions, client)  # two pages, then stopped by max_requests
    kept = stored(sessions)
    assert 190 <= len(kept) <= 200  # the second page re-reads the first one's last tie
    upstream.stall = -1
    started = time.monotonic()
    with (
        VoucherifyClient(app_id=APP_ID, app_token=APP_TOKEN, api_url=upstream.url,
                         timeout=0.5, attempts=2) as client,
        pytest.raises(ApiUnavailable, match=r"no complete answer within 0\.5 s"),
    ):
        mirror_customers(sessions, client)
    assert time.monotonic() - started < 5
    assert stored(sessions) == kept
    upstream.stall = 0
    with VoucherifyClient(app_id=APP_ID, app_token=APP_TOKEN, api_url=upstream.url) as client:
        assert mirror_customers(sessions, client).complete
    assert stored(sessions) == listed(fake)


def test_a_proxy_named_by_the_environment_is_used_under_the_same_deadline(
    fake: FakeVoucherify, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The upstream forwards absolute-form requests too: a forward proxy for http:// URLs.
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", upstream.url)
    upstream.stall = 1
    started = time.monotonic()
    with VoucherifyClient(app_id=APP_ID, app_token=APP_TOKEN, api_url=fake.url,
                          timeout=0.5) as client:
        page = client.list_customers({"limit": "5"})
    assert len(page.customers) == 5 and upstream.requests == 2
    assert time.monotonic() - started < 5


def test_the_timeout_option_is_checked(upstream: Upstream, tmp_path: Path) -> None:
    for wrong in ("0", "nan", "soon"):
        result = mirror_cli(f"sqlite:///{tmp_path}/none.db", upstream.url, "--timeout", wrong)
        assert result.returncode == 2
        assert "--timeout" in assert_told_in_one_line(result)
    assert upstream.requests == 0


# --- item 6: a Date in the future --------------------------------------------------------------


def test_a_date_in_the_future_does_not_become_the_checkpoint(
    sessions: sessionmaker[Session], database_url: str, fake: FakeVoucherify,
    upstream: Upstream,
) -> None:
    upstream.date = "Tue, 14 Mar 2079 09:26:53 GMT"
    first = mirror_cli(database_url, upstream.url)
    assert first.returncode == 0, first.stderr
    with sessions() as session:
        (state,) = mirror_states(session)
    assert state.created_cursor is not None
    assert as_utc(state.created_cursor) <= datetime.now(UTC)
    # A customer created after the first run is found by the next, incremental one.
    arrival = {**make_customers(1, seed=4242)[0], "id": "cust_ArrivedAfterTheFirstRun7",
               "created_at": format_instant(datetime.now(UTC)), "updated_at": None}
    fake.put(arrival)
    second = mirror_cli(database_url, upstream.url)
    assert second.returncode == 0, second.stderr
    assert "1 applied" in second.stdout
    assert stored(sessions) == listed(fake)


def _sync_once(sessions: sessionmaker[Session], fake: FakeVoucherify) -> Any:
    with VoucherifyClient(app_id=APP_ID, app_token=APP_TOKEN, api_url=fake.url) as client:
        return mirror_customers(sessions, client)


def test_a_customer_stamped_in_the_future_does_not_become_the_checkpoint(
    sessions: sessionmaker[Session], fake: FakeVoucherify
) -> None:
    assert _sync_once(sessions, fake).mode == "backfill"
    now = datetime.now(UTC)
    ahead = {**make_customers(1, seed=9090)[0], "id": "cust_StampedInTheYear2311xyz",
             "created_at": format_instant(now), "updated_at": "2311-05-17T08:00:00.000Z"}
    fake.put(ahead)
    report = _sync_once(sessions, fake)
    assert (report.mode, report.applied) == ("incremental", 1)
    with sessions() as session:
        (state,) = mirror_states(session)
    for cursor in (state.created_cursor, state.updated_cursor):
        assert cursor is not None and as_utc(cursor) <= datetime.now(UTC)
    # A customer changed afterwards (found only by its updated_at) is not skipped.
    changed = {**next(iter(listed(fake).values())), "name": "Changed After The Future One",
               "updated_at": format_instant(datetime.now(UTC))}
    fake.put(changed)
    later = _sync_once(sessions, fake)
    assert later.applied == 1
    assert stored(sessions) == listed(fake)


def test_a_checkpoint_already_in_the_future_is_not_gone_on_from(
    sessions: sessionmaker[Session], fake: FakeVoucherify
) -> None:
    _sync_once(sessions, fake)
    with sessions() as session, session.begin():
        (state,) = mirror_states(session)
        state.created_cursor = state.updated_cursor = datetime(2290, 1, 1, tzinfo=UTC)
        save_mirror_state(session, state)
    changed = {**next(iter(listed(fake).values())), "name": "Changed Under A Bad Checkpoint",
               "updated_at": format_instant(datetime.now(UTC))}
    fake.put(changed)
    report = _sync_once(sessions, fake)
    assert report.mode == "backfill"  # listed again from the start, as a first run is
    assert stored(sessions) == listed(fake)
    with sessions() as session:
        (state,) = mirror_states(session)
    assert state.updated_cursor is not None and as_utc(state.updated_cursor) <= datetime.now(UTC)


# --- item 7: headers that make no sense ----------------------------------------------------------

Answers = tuple[dict[str, str], list[tuple[int | None, dict[str, str]]]]
#: Headers set on every answer, and answers replaced once.
ABSURD: dict[str, Answers] = {
    "huge numbers": ({"X-Rate-Limit-Limit": "3" + "0" * 450,
                      "X-Rate-Limit-Remaining": "8" * 380,
                      "X-Rate-Limit-Retry": "Infinity"}, []),
    "negative numbers": ({"X-Rate-Limit-Remaining": "-12",
                          "X-Rate-Limit-Retry": "-86400"}, []),
    "nothing left until never": ({}, [(None, {"X-Rate-Limit-Remaining": "0",
                                              "X-Rate-Limit-Retry": "1e400"})]),
    "refusals asking nonsense": ({}, [
        (429, {"Retry-After": "NaN"}),
        (503, {"Retry-After": "-30"}),
        (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
    ]),
}


@pytest.mark.parametrize("case", list(ABSURD))
def test_absurd_rate_limit_headers_are_ignored_or_clamped(
    sessions: sessionmaker[Session], database_url: str, fake: FakeVoucherify,
    upstream: Upstream, case: str,
) -> None:
    upstream.headers, upstream.once = ABSURD[case][0], list(ABSURD[case][1])
    result = mirror_cli(database_url, upstream.url, timeout=30)
    assert result.returncode == 0, result.stderr
    assert_told_in_one_line(result)
    assert stored(sessions) == listed(fake)


def test_a_wait_longer_than_the_cap_is_capped_and_told(
    fake: FakeVoucherify, upstream: Upstream
) -> None:
    upstream.once = [(503, {"Retry-After": "4e9"}), (429, {"Retry-After": "25"})]
    told: list[str] = []
    started = time.monotonic()
    with VoucherifyClient(app_id=APP_ID, app_token=APP_TOKEN, api_url=upstream.url,
                          max_wait=0.2, on_wait=told.append) as client:
        page = client.list_customers({"limit": "10"})
    assert len(page.customers) == 10
    assert time.monotonic() - started < 3
    assert told == [
        "waiting 0 s to retry after HTTP 503 (Retry-After) (capped: 4000000000 s asked)",
        "waiting 0 s to retry after HTTP 429 (Retry-After) (capped: 25 s asked)",
    ]


def test_a_rate_limit_window_renewing_after_the_cap_stops_the_run_cleanly(
    sessions: sessionmaker[Session], database_url: str, fake: FakeVoucherify,
    upstream: Upstream,
) -> None:
    renews = int(time.time()) + 1_200  # 20 minutes: longer than a wait may last
    upstream.once = [(None, {"X-Rate-Limit-Remaining": "0",
                             "X-Rate-Limit-Retry": str(renews)})]
    started = time.monotonic()
    stopped = mirror_cli(database_url, upstream.url)
    assert time.monotonic() - started < 20
    assert stopped.returncode == 0, stopped.stderr
    last = assert_told_in_one_line(stopped)
    assert "rate-limit window renews at" in last and last.endswith("run sync again to go on")
    assert len(stored(sessions)) == 100
    rest = mirror_cli(database_url, upstream.url)
    assert rest.returncode == 0, rest.stderr
    assert stored(sessions) == listed(fake)


# --- item 8: keys as operators hand them over ---------------------------------------------------


def test_keys_read_from_files_with_a_trailing_newline_are_used_stripped(
    sessions: sessionmaker[Session], database_url: str, fake: FakeVoucherify,
    upstream: Upstream, tmp_path: Path,
) -> None:
    (tmp_path / "app-id").write_text(f"  {APP_ID}\t\n", encoding="utf-8")
    (tmp_path / "app-token").write_text(f"{APP_TOKEN}\r\n", encoding="utf-8")
    result = mirror_cli(
        database_url, upstream.url, env={
            "VOUCHERIFY_APP_ID": (tmp_path / "app-id").read_text(encoding="utf-8"),
            "VOUCHERIFY_APP_TOKEN": (tmp_path / "app-token").read_text(encoding="utf-8"),
        },
    )
    assert result.returncode == 0, result.stderr
    assert_told_in_one_line(result)
    assert stored(sessions) == listed(fake)


UNUSABLE = {
    "non-ASCII token": ("VOUCHERIFY_APP_TOKEN", "p4ss-wörd-91"),
    "token with inner space": ("VOUCHERIFY_APP_TOKEN", "half one"),
    "id with a control character": ("VOUCHERIFY_APP_ID", "app\x1bid-77"),
    "token of whitespace only": ("VOUCHERIFY_APP_TOKEN", " \t\n"),
}


@pytest.mark.parametrize("case", list(UNUSABLE))
def test_an_unusable_key_names_its_variable_but_not_its_value(
    sessions: sessionmaker[Session], database_url: str, upstream: Upstream, case: str
) -> None:
    variable, value = UNUSABLE[case]
    result = mirror_cli(database_url, upstream.url, env={variable: value})
    assert result.returncode == 2
    message = assert_told_in_one_line(result, value)
    assert result.stderr.strip() == message and variable in message
    assert upstream.requests == 0 and stored(sessions) == {}


def test_the_client_refuses_a_non_ascii_key_without_quoting_it() -> None:
    with pytest.raises(AuthenticationFailed) as refused:
        VoucherifyClient(app_id=APP_ID, app_token="clé-9137", api_url="http://127.0.0.1:9")
    assert "clé" not in str(refused.value) and "VOUCHERIFY_APP_TOKEN" in str(refused.value)


def test_serve_takes_its_read_token_stripped_and_refuses_a_blank_one(
    database_url: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "read-token"
    token_file.write_text("reader-secret-3e8a\n", encoding="utf-8")
    env = {"CUSTOMER_STORE_APP_ID": "reader-9",
           "CUSTOMER_STORE_APP_TOKEN": token_file.read_text(encoding="utf-8")}
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            serve_command(database_url, port, "--no-signature-check"),
            env=child_env(env), stdout=output, stderr=subprocess.STDOUT,
        )
        try:
            reply = wait_for_read_api(port, {"X-App-Id": "reader-9",
                                             "X-App-Token": "reader-secret-3e8a"})
            assert reply.status == 200, reply.body
        finally:
            stop(process)
    assert "reader-secret-3e8a" not in log.read_text(encoding="utf-8")

    blank = subprocess.run(
        serve_command(database_url, free_port(), "--no-signature-check"),
        env=child_env({**env, "CUSTOMER_STORE_APP_TOKEN": "  \n"}),
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert blank.returncode == 2
    assert len(blank.stderr.strip().splitlines()) == 1
    assert "CUSTOMER_STORE_APP_TOKEN" in blank.stderr


def wait_for_read_api(port: int, headers: Mapping[str, str]) -> Reply:
    """The first answer of ``GET /v1/customers`` once ``serve`` listens."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return request(port, "GET", "/v1/customers?limit=1", headers=headers)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)

