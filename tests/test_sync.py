"""Sync from Voucherify's list API, against a local server that follows the documented API
(tests/voucherify_api.py), on both databases."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from repository import CustomerRepository, make_session_factory
from repository.admin.erasure import forget_customer
from repository.db.tables import tombstones
from repository.voucherify import (
    ApiUnavailable,
    AuthenticationFailed,
    BudgetExhausted,
    MirrorReport,
    SweepRefused,
    VoucherifyClient,
    mirror_customers,
)
from repository.voucherify.mirror_state import load_mirror_state
from tests.voucherify_api import FakeVoucherify, make_customers

# make test-slow: runs the Voucherify mirror end to end through CLI processes (docs/testing.md).
pytestmark = pytest.mark.slow

APP_ID, APP_TOKEN = "app-id", "app-token"


@pytest.fixture
def sessions(engine: Engine, session: Session) -> sessionmaker[Session]:
    """Sessions on the test database (the ``session`` fixture empties it afterwards)."""
    del session
    return make_session_factory(engine)


@pytest.fixture
def fake() -> Iterator[FakeVoucherify]:
    with FakeVoucherify(app_id=APP_ID, app_token=APP_TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def many_customers() -> list[dict[str, Any]]:
    """More than the 9,900 customers page numbers reach, with 150 sharing one created_at."""
    return make_customers(10_050, tie_block=150, seed=11)


def sync(
    sessions: sessionmaker[Session], fake: FakeVoucherify, **options: Any
) -> MirrorReport:
    client_options = {k: options.pop(k) for k in ("max_requests", "reserve") if k in options}
    with VoucherifyClient(
        app_id=APP_ID, app_token=APP_TOKEN, api_url=fake.url, **client_options
    ) as client:
        return mirror_customers(sessions, client, **options)


def stored(sessions: sessionmaker[Session]) -> dict[str, Any]:
    with sessions() as session:
        return {c.id: c.to_dict() for c in CustomerRepository(session).iter_all()}


def listed(fake: FakeVoucherify) -> dict[str, Any]:
    return {c["id"]: c for c in fake.customers()}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def later(stamp: str, **delta: float) -> str:
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")) + timedelta(**delta)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_a_first_sync_stores_every_listed_customer_without_skipping_ties_or_tripping_limits(
    sessions: sessionmaker[Session], many_customers: list[dict[str, Any]]
) -> None:
    with FakeVoucherify(
        app_id=APP_ID, app_token=APP_TOKEN, requests_per_window=40, window_seconds=1.0
    ) as fake:
        fake.put_many(many_customers)
        started = time.monotonic()
        report = sync(sessions, fake)
        seconds = time.monotonic() - started
        assert report.complete and report.mode == "backfill"
        assert (report.listed, report.applied, report.rejected) == (10_050, 10_050, 0)
        assert stored(sessions) == listed(fake)
        assert fake.violations == 0
        per_thousand = report.requests * 1000 / report.listed
        # 100 per page, plus a page or two for the block of ties.
        assert per_thousand < 10.6
        print(f"sync: {report.listed / seconds:.0f} customers/s, "
              f"{per_thousand:.2f} requests per 1,000 customers")


def test_an_incremental_sync_finds_new_and_updated_customers_and_same_millisecond_updates(
    sessions: sessionmaker[Session], fake: FakeVoucherify
) -> None:
    customers = make_customers(300, seed=3)
    fake.put_many(customers)
    assert sync(sessions, fake).applied == 300
    # Three customers updated in one millisecond, after the first run (as real changes are).
    moment = later(now(), seconds=1)
    for customer in customers[10:13]:
        fake.update(customer["id"], at=moment, name=f"Renamed {customer['id']}")
    arrival = {**make_customers(1, seed=99)[0], "id": "cust_NewArrivalAfterTheSync01"}
    fake.put({**arrival, "created_at": later(now(), seconds=2), "updated_at": None})
    report = sync(sessions, fake)
    assert report.mode == "incremental"
    assert report.applied == 4
    assert report.requests <= 4
    assert stored(sessions) == listed(fake)
    # A later update in the same millisecond as the checkpoint is still found.
    fake.update(customers[20]["id"], at=moment, name="Same millisecond")
    assert sync(sessions, fake).applied >= 1
    assert stored(sessions) == listed(fake)


def test_a_full_sync_deletes_customers_voucherify_no_longer_lists_but_keeps_newer_ones(
    sessions: sessionmaker[Session], fake: FakeVoucherify
) -> None:
    customers = make_customers(250, seed=5)
    fake.put_many(customers)
    sync(sessions, fake)
    gone = [c["id"] for c in customers[:7]]
    for customer_id in gone:
        fake.delete(customer_id)
    # Stored by a webhook for a customer created after the listing starts (it is not listed).
    fresh = {**make_customers(1, seed=77)[0], "id": "cust_CreatedDuringTheListing01"}
    fresh["created_at"] = fresh["updated_at"] = later(now(), seconds=30)
    with sessions.begin() as session:
        CustomerRepository(session).upsert(fresh)

    check = sync(sessions, fake, full=True, dry_run=True)
    assert (check.missing, check.new, check.newer) == (7, 0, 0) and check.drifted
    assert len(stored(sessions)) == 251  # a dry run writes nothing

    report = sync(sessions, fake, full=True)
    assert report.mode == "full" and report.deleted == 7
    assert stored(sessions) == {**listed(fake), fresh["id"]: fresh}
    with sessions() as session:
        repo = CustomerRepository(session)
        assert all(repo.deleted_at(customer_id) is not None for customer_id in gone)
    assert not sync(sessions, fake, full=True, dry_run=True).drifted


def test_an_interrupted_sync_resumes_from_the_last_committed_page(
    sessions: sessionmaker[Session], fake: FakeVoucherify
) -> None:
    customers = make_customers(1_050, tie_block=120, tie_at=300, seed=8)
    fake.put_many(customers)
    first = sync(sessions, fake, max_requests=3)
    assert not first.complete and "max-requests" in (first.stopped or "")
    assert 0 < len(stored(sessions)) < 1_050
    rest = sync(sessions, fake)
    assert rest.complete and rest.mode == "backfill"
    assert stored(sessions) == listed(fake)
    # Resuming re-reads at most the page it stopped on.
    assert first.requests + rest.requests <= 14


def test_server_errors_dropped_connections_and_stray_429s_are_retried(
    sessions: sessionmaker[Session],
) -> None:
    with FakeVoucherify(
        app_id=APP_ID, app_token=APP_TOKEN, random_429_rate=0.2, seed=4
    ) as fake:
        fake.put_many(make_customers(600, seed=9))
        fake.fail_next(2, status=503)
        fake.drop_next(1)
        report = sync(sessions, fake)
        assert report.complete
        assert stored(sessions) == listed(fake)


def test_refused_keys_stop_at_once_and_store_nothing(
    sessions: sessionmaker[Session], fake: FakeVoucherify
) -> None:
    fake.put_many(make_customers(20, seed=1))
    with VoucherifyClient(app_id=APP_ID, app_token="wrong", api_url=fake.url) as client:
        with pytest.raises(AuthenticationFailed, match="VOUCHERIFY_APP_TOKEN"):
            mirror_customers(sessions, client)
        assert client.requests == 1
    assert stored(sessions) == {}


def test_a_spent_billing_cycle_stops_the_run_and_keeps_its_checkpoint(
    sessions: sessionmaker[Session],
) -> None:
    customers = make_customers(450, seed=12)
    with FakeVoucherify(app_id=APP_ID, app_token=APP_TOKEN, cycle_limit=2) as fake:
        fake.put_many(customers)
        with pytest.raises(BudgetExhausted, match="billing cycle"):
            sync(sessions, fake)
        kept = len(stored(sessions))
        assert 190 <= kept <= 200  # two pages, the second overlapping the first by a tie
        fake.cycle_limit = None  # the cycle renews
        report = sync(sessions, fake)
        assert report.complete and report.listed <= 450 - kept + 1
        assert stored(sessions) == listed(fake)


def test_a_newer_webhook_wins_over_the_sync_and_the_sync_repairs_an_older_one(
    sessions: sessionmaker[Session], fake: FakeVoucherify
) -> None:
    customers = make_customers(30, seed=21)
    fake.put_many(customers)
    ahead = {**customers[0], "name": "From a newer webhook",
             "updated_at": later(customers[0]["created_at"], days=3650)}
    behind = {**customers[1], "name": "From an old webhook",
              "updated_at": later(customers[1]["created_at"], milliseconds=-1)}
    with sessions.begin() as session:
        repo = CustomerRepository(session)
        repo.upsert(ahead)
        repo.upsert(behind)
    report = sync(sessions, fake)
    assert (report.applied, report.stale) == (29, 1)
    result = stored(sessions)
    assert result[ahead["id"]] == ahead
    assert result[behind["id"]] == listed(fake)[behind["id"]]


def test_a_page_with_an_invalid_customer_stores_the_rest_and_names_the_bad_one(
    sessions: sessionmaker[Session], fake: FakeVoucherify
) -> None:
    customers = make_customers(40, seed=31)
    customers[7] = {**customers[7], "birthdate": "YYYY-MM-DD"}
    fake.put_many(customers)
    report = sync(sessions, fake)
    assert (report.applied, report.rejected) == (39, 1)
    (rejection,) = report.rejections
    assert rejection.location.startswith("customers[7] on page 1")
    assert "$.birthdate" in rejection.reason
    assert customers[7]["id"] not in stored(sessions)


def test_the_cli_syncs_with_keys_from_the_environment_and_stats_show_the_last_sync(
    sessions: sessionmaker[Session], fake: FakeVoucherify, database_url: str, tmp_path: Path
) -> None:
    fake.put_many(make_customers(120, seed=41))
    env = {"DATABASE_URL": database_url, "VOUCHERIFY_API_URL": fake.url,
           "VOUCHERIFY_APP_ID": APP_ID, "VOUCHERIFY_APP_TOKEN": APP_TOKEN, "PATH": ""}

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "customer_store", *args], env={**env, **extra},
            cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
        )

    missing = run("sync", VOUCHERIFY_APP_TOKEN="")
    assert missing.returncode == 2 and "VOUCHERIFY_APP_TOKEN" in missing.stderr
    drifted = run("sync", "--dry-run")
    assert drifted.returncode == 1 and "120 new" in drifted.stdout
    done = run("sync")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("synced 120 customers in ")
    assert "120 applied, 0 unchanged, 0 stale, 0 forgotten, 0 rejected, 0 deleted" in done.stdout
    assert APP_TOKEN not in done.stdout + done.stderr
    assert run("sync", "--dry-run").returncode == 0
    stats = json.loads(run("stats").stdout)
    (state,) = stats["syncs"]
    assert state["api_url"] == fake.url and state["last_repaired"] == 120
    assert state["last_success_at"] is not None
    refused = run("sync", VOUCHERIFY_APP_TOKEN="wrong")
    assert refused.returncode == 1 and "refused the application keys" in refused.stderr
    assert "wrong" not in refused.stderr


def test_webhooks_racing_a_sync_end_in_the_newest_version_of_each_customer(
    sessions: sessionmaker[Session],
) -> None:
    customers = make_customers(2_000, seed=51)
    with FakeVoucherify(
        app_id=APP_ID, app_token=APP_TOKEN, requests_per_window=10, window_seconds=0.5
    ) as fake:
        fake.put_many(customers)
        with ThreadPoolExecutor(max_workers=1) as pool:
            running = pool.submit(sync, sessions, fake)
            newer, older = {}, {}
            for index, customer in enumerate(customers[::7]):
                stamp = customer["updated_at"] or customer["created_at"]
                if index % 2:
                    version = {**customer, "name": "webhook, newer",
                               "updated_at": later(stamp, days=1)}
                    newer[customer["id"]] = version
                else:
                    version = {**customer, "name": "webhook, older",
                               "updated_at": later(stamp, milliseconds=-1)}
                    older[customer["id"]] = version
                with sessions.begin() as session:
                    CustomerRepository(session).upsert(version)
            report = running.result()
        assert report.complete and not running.exception()
        result = stored(sessions)
        assert {cid: result[cid] for cid in newer} == newer
        api = listed(fake)
        assert {cid: result[cid] for cid in older} == {cid: api[cid] for cid in older}
        untouched = set(api) - set(newer) - set(older)
        assert {cid: result[cid] for cid in untouched} == {cid: api[cid] for cid in untouched}


# -- a broken upstream: the sweep deletes nothing it cannot vouch for -----------------------


def tombstone_rows(sessions: sessionmaker[Session]) -> dict[str, tuple[bool, bool]]:
    """Each tombstone's (swept, forgotten), by customer id."""
    with sessions() as session:
        rows = session.execute(
            select(tombstones.c.customer_id, tombstones.c.swept, tombstones.c.forgotten)
        )
        return {cid: (bool(swept), bool(forgotten)) for cid, swept, forgotten in rows}


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        ("end_early", SweepRefused, "incomplete: 100 customers listed, the API reported a total"),
        ("empty_object", ApiUnavailable, "not a list object"),
        ("malformed", ApiUnavailable, "no customers array"),
        ("ignore_cursor", ApiUnavailable, "went backwards on page 2"),
        ("backwards", ApiUnavailable, "went backwards on page 1"),
    ],
)
def test_a_full_sync_against_a_broken_listing_stops_and_deletes_nothing(
    sessions: sessionmaker[Session], fake: FakeVoucherify, fault: str, error: type[Exception],
    message: str,
) -> None:
    customers = make_customers(230, seed=61)
    fake.put_many(customers)
    sync(sessions, fake)
    before = stored(sessions)
    fake.list_fault = fault
    with pytest.raises(error, match=message):
        sync(sessions, fake, full=True)
    assert stored(sessions) == before and tombstone_rows(sessions) == {}
    # It ended at once: no page read again and again.
    assert fake.requests <= 3 + 3
    # Mended upstream, the next full sync (resuming a listing stopped midway) deletes what
    # it really should.
    fake.list_fault = None
    fake.delete(customers[-1]["id"])
    report = sync(sessions, fake, full=True)
    assert report.mode == "full" and report.deleted == 1
    assert stored(sessions) == listed(fake)


def test_a_listing_that_ends_early_keeps_the_checkpoint_where_it_was(
    sessions: sessionmaker[Session], fake: FakeVoucherify
) -> None:
    fake.put_many(make_customers(40, seed=62))
    sync(sessions, fake)
    with sessions() as session:
        checkpoint = load_mirror_state(session, fake.url)
    # Created after that run.
    fake.put_many(make_customers(110, start=datetime.now(UTC) + timedelta(seconds=2), seed=69))
    fake.list_fault = "end_early"
    with pytest.raises(SweepRefused, match="total of 150"):
        sync(sessions, fake, full=True)
    with sessions() as session:
        after = load_mirror_state(session, fake.url)
    assert checkpoint is not None and after is not None
    assert (after.created_cursor, after.listing_started_at) == (checkpoint.created_cursor, None)
    # The customers after the early end are found by the next run, not skipped.
    fake.list_fault = None
    sync(sessions, fake)
    assert stored(sessions) == listed(fake)


def test_a_listing_within_the_margin_of_its_total_sweeps(
    sessions: sessionmaker[Session], fake: FakeVoucherify
) -> None:
    # Customers deleted while a listing runs make it see more than the last total says.
    customers = make_customers(120, seed=63)
    fake.put_many(customers)
    sync(sessions, fake)
    fake.delete(customers[0]["id"])
    report = sync(sessions, fake, full=True)
    assert report.deleted == 1 and report.total == 119


def test_the_mass_deletion_guard_deletes_nothing_beyond_its_bound(
    sessions: sessionmaker[Session], fake: FakeVoucherify
) -> None:
    customers = make_customers(170, seed=64)
    fake.put_many(customers)
    sync(sessions, fake)
    gone = [c["id"] for c in customers[100:118]]  # 18 > 10 % of 170
    for customer_id in gone:
        fake.delete(customer_id)
    with pytest.raises(SweepRefused, match="would delete 18 of 170 stored customers, more than "
                                            "--max-deletions 17"):
        sync(sessions, fake, full=True)
    assert len(stored(sessions)) == 170 and tombstone_rows(sessions) == {}
    with pytest.raises(SweepRefused, match=r"would delete 18 .* --max-deletions 12"):
        sync(sessions, fake, full=True, max_deletions=12)
    # The listing was complete: the incremental runs in between go on from it.
    assert sync(sessions, fake).mode == "incremental"
    report = sync(sessions, fake, full=True, max_deletions=18)
    assert report.deleted == 18 and stored(sessions) == listed(fake)
    # Few stored customers: the bound is ten.
    fake.delete(customers[0]["id"])
    assert sync(sessions, fake, full=True, max_deletions=None).deleted == 1


def test_a_swept_customer_comes_back_when_voucherify_shows_it_again(
    sessions: sessionmaker[Session], fake: FakeVoucherify
) -> None:
    customers = make_customers(90, seed=65)
    fake.put_many(customers)
    sync(sessions, fake)
    listed_again, delivered_again = customers[3], customers[4]
    for customer in (listed_again, delivered_again):
        fake.delete(customer["id"])  # missing from a listing, for whatever reason
    assert sync(sessions, fake, full=True).deleted == 2
    assert tombstone_rows(sessions) == {
        listed_again["id"]: (True, False), delivered_again["id"]: (True, False)
    }
    # Listed again with the very timestamps it had, older than the sweep's tombstone.
    fake.put(listed_again)
    report = sync(sessions, fake, full=True)
    assert (report.applied, report.deleted) == (1, 0)
    # A webhook's payload, as old, brings the other back too.
    with sessions.begin() as session:
        assert CustomerRepository(session).upsert(delivered_again) == "applied"
    result = stored(sessions)
    assert result[listed_again["id"]] == listed_again
    assert result[delivered_again["id"]] == delivered_again
    assert tombstone_rows(sessions) == {}


def a_second_after(customer: dict[str, Any]) -> datetime:
    """A second after the customer's version: when a webhook would date its deletion."""
    stamp = later(customer["updated_at"] or customer["created_at"], seconds=1)
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_a_webhook_deletion_stays_final_whatever_a_listing_shows(
    sessions: sessionmaker[Session], fake: FakeVoucherify
) -> None:
    customers = make_customers(80, seed=66)
    fake.put_many(customers)
    sync(sessions, fake)
    deleted, swept_then_deleted = customers[7], customers[8]
    with sessions.begin() as session:
        CustomerRepository(session).delete(deleted["id"], deleted_at=a_second_after(deleted))
    fake.delete(swept_then_deleted["id"])
    assert sync(sessions, fake, full=True).deleted == 1
    # The webhook's deletion arrives after the sweep, dated before it: it is final now.
    with sessions.begin() as session:
        CustomerRepository(session).delete(
            swept_then_deleted["id"], deleted_at=a_second_after(swept_then_deleted)
        )
    assert tombstone_rows(sessions) == {
        deleted["id"]: (False, False), swept_then_deleted["id"]: (False, False)
    }
    # Voucherify (a lagging replica, say) lists both with their old versions.
    fake.put(swept_then_deleted)
    report = sync(sessions, fake, full=True)
    assert (report.applied, report.stale) == (0, 2)
    result = stored(sessions)
    assert deleted["id"] not in result and swept_then_deleted["id"] not in result


def test_an_unchanged_overlap_is_no_repair(
    sessions: sessionmaker[Session], fake: FakeVoucherify
) -> None:
    customers = make_customers(140, seed=67)
    fake.put_many(customers)
    assert sync(sessions, fake).applied == 140
    # An overlap reaching back over every customer re-reads each stored version.
    report = sync(sessions, fake, overlap=timedelta(days=3650))
    assert report.listed > 140
    assert (report.applied, report.stale, report.repaired) == (0, 0, 0)
    assert report.unchanged == report.listed
    with sessions() as session:
        state = load_mirror_state(session, fake.url)
    assert state is not None and state.last_repaired == 0
    fake.update(customers[9]["id"], at=later(now(), seconds=1), name="Changed")
    report = sync(sessions, fake, overlap=timedelta(days=3650))
    assert (report.applied, report.repaired) == (1, 1)


def test_a_forgotten_customer_listed_again_counts_as_forgotten(
    sessions: sessionmaker[Session], fake: FakeVoucherify
) -> None:
    customers = make_customers(50, seed=68)
    fake.put_many(customers)
    erased, never_stored = customers[11], customers[12]
    fake.delete(never_stored["id"])
    sync(sessions, fake)
    with sessions.begin() as session:
        for customer in (erased, never_stored):
            forget_customer(session, customer["id"], forgotten_at=datetime.now(UTC))
    fake.put(never_stored)
    fake.update(erased["id"], at=later(now(), seconds=1), name="Still there")
    report = sync(sessions, fake, full=True)
    assert (report.forgotten, report.stale, report.applied) == (2, 0, 0)
    result = stored(sessions)
    assert erased["id"] not in result and never_stored["id"] not in result
    assert tombstone_rows(sessions)[erased["id"]] == (False, True)


def test_the_cli_refuses_a_doubtful_sweep_in_one_line_and_loses_no_customer(
    sessions: sessionmaker[Session], fake: FakeVoucherify, database_url: str, tmp_path: Path
) -> None:
    customers = make_customers(210, seed=70)
    fake.put_many(customers)
    env = {"DATABASE_URL": database_url, "VOUCHERIFY_API_URL": fake.url,
           "VOUCHERIFY_APP_ID": APP_ID, "VOUCHERIFY_APP_TOKEN": APP_TOKEN, "PATH": ""}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "customer_store", "sync", *args], env=env,
            cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
        )

    assert run().returncode == 0
    bad = run("--full", "--max-deletions", "-3")
    assert bad.returncode == 2 and "--max-deletions" in bad.stderr
    for fault, says in [
        ("end_early", "the listing is incomplete: 100 customers listed, the API reported a "
                      "total of 210"),
        ("empty_object", "not a list object"),
        ("ignore_cursor", "went backwards"),
    ]:
        fake.list_fault = fault
        refused = run("--full")
        assert refused.returncode == 1, (fault, refused.stderr)
        (line,) = refused.stderr.splitlines()
        assert line.startswith("customer-store: sync") and says in line, line
        assert len(stored(sessions)) == 210
    fake.list_fault = None
    assert run("--full").returncode == 0  # ends the listing the last fault stopped midway
    for customer in customers[:30]:
        fake.delete(customer["id"])
    guarded = run("--full")
    assert guarded.returncode == 1
    (line,) = guarded.stderr.splitlines()
    assert "would delete 30 of 210 stored customers, more than --max-deletions 21" in line
    assert len(stored(sessions)) == 210
    done = run("--full", "--max-deletions", "30")
    assert done.returncode == 0, done.stderr
    assert "30 deleted" in done.stdout and stored(sessions) == listed(fake)
