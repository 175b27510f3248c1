"""The repository on both databases: lossless storage, newest wins, tombstones, reads."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool

from models import (
    CustomerAddressRow,
    CustomerRow,
    CustomerValidationError,
    LoyaltyCampaignRow,
    ReferralEntryRow,
    parse_customer,
)
from repository import CustomerReader, CustomerRepository, UpsertOutcome, make_engine
from repository.admin.erasure import forget_customer
from repository.store.customers import DeleteOutcome
from repository.store.mapping import customer_to_rows
from tests.conftest import load_example_customers

VALID_EXAMPLE_REJECTIONS = {
    "07-ariana-patel-customer-updated.json": "$.referrals.campaigns[0]",
    "59-firstname-lastname-examine-vouchers-qualification.json": "$.birthdate",
}


def _customer(customer_id: str = "cust_test0001", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": customer_id,
        "source_id": "jane@example.com",
        "name": "Jane Doe",
        "email": "jane@example.com",
        "address": {"city": "Kraków", "country": "PL", "postal_code": None},
        "metadata": {"tier": "gold", "big": 2**70, "nested": {"list": [1, "two", None]}},
        "summary": {"orders": {"total_amount": 5_000_000_000, "total_count": 3}},
        "loyalty": {"points": 10, "campaigns": {"Summer Campaign": {"points": 10}}},
        "referrals": {"total": 1, "campaigns": [{
            "campaign_id": "camp_1", "referrer_id": "cust_ref", "related_object_id": "r_1",
            "related_object_type": "redemption", "date": "2024-01-02T03:04:05.678Z",
        }]},
        "created_at": "2024-01-01T00:00:00.000Z",
        "updated_at": "2024-02-01T00:00:00.000Z",
        "object": "customer",
    }
    base.update(fields)
    return base


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def repo(api_repo: CustomerRepository) -> CustomerRepository:
    """Every test here runs through the sync and the async API."""
    return api_repo


def _stored(repo: CustomerRepository, customer_id: str) -> dict[str, Any] | None:
    found = repo.get(customer_id)
    return None if found is None else found.to_dict()


@pytest.mark.parametrize(
    ("name", "payload"),
    [pytest.param(name, raw, id=name[:40]) for name, raw in load_example_customers()
     if name not in VALID_EXAMPLE_REJECTIONS],
)
def test_every_valid_voucherify_example_reads_back_identical(
    repo: CustomerRepository, name: str, payload: dict[str, Any]
) -> None:
    assert repo.upsert(payload) is UpsertOutcome.APPLIED
    repo.session.commit()
    assert _stored(repo, payload["id"]) == payload
    # The models read back are those validation builds, value for value and key for key.
    stored = repo.get(payload["id"])
    validated = parse_customer(copy.deepcopy(payload))
    assert stored == validated
    assert stored is not None and stored.model_fields_set == validated.model_fields_set
    # The text path, without models, gives the same JSON in the same key order.
    text = json.dumps(_stored(repo, payload["id"]), ensure_ascii=False, separators=(",", ":"))
    assert repo.get_json(payload["id"]) == text
    assert repo.get_json(payload["id"], or_source_id=True) == text
    if payload.get("source_id") is not None:
        assert repo.get_json_by_source_id(payload["source_id"]) == text
        assert repo.get_json(payload["source_id"], or_source_id=True) == text


@pytest.mark.parametrize(("name", "path"), sorted(VALID_EXAMPLE_REJECTIONS.items()))
def test_examples_outside_the_documented_types_are_rejected_with_their_path(
    repo: CustomerRepository, example_customers: list[tuple[str, Any]], name: str, path: str
) -> None:
    payload = dict(example_customers)[name]
    with pytest.raises(CustomerValidationError) as caught:
        repo.upsert(payload)
    assert [e.path for e in caught.value.errors] == [path]
    assert repo.count() == 0


def test_all_examples_stored_together_keep_the_newest_version_of_each_id(
    repo: CustomerRepository, example_customers: list[tuple[str, Any]]
) -> None:
    expected: dict[str, dict[str, Any]] = {}
    for name, payload in example_customers:
        if name in VALID_EXAMPLE_REJECTIONS:
            continue
        repo.upsert(payload)
        version = payload.get("updated_at") or payload.get("created_at")
        current = expected.get(payload["id"])
        current_version = current and (current.get("updated_at") or current.get("created_at"))
        if current is None or current_version is None or (
            version is not None and version >= current_version
        ):
            expected[payload["id"]] = payload
    repo.session.commit()
    stored = [c.to_dict() for c in repo.iter_all(batch_size=7)]
    assert [c["id"] for c in stored] == sorted(expected)
    assert stored == [expected[i] for i in sorted(expected)]


def test_a_datetime_with_an_offset_comes_back_as_the_same_instant_in_utc(
    repo: CustomerRepository,
) -> None:
    repo.upsert(_customer(updated_at="2024-02-01T02:30:00.5+02:00"))
    assert _stored(repo, "cust_test0001")["updated_at"] == "2024-02-01T00:30:00.500Z"  # type: ignore[index]


def test_null_absent_and_empty_objects_are_told_apart(repo: CustomerRepository) -> None:
    variants: dict[str, dict[str, Any]] = {
        "cust_addr_null": {"address": None},
        "cust_addr_empty": {"address": {}},
        "cust_addr_nulls": {"address": dict.fromkeys(
            ["city", "state", "line_1", "line_2", "country", "postal_code"])},
        "cust_addr_absent": {},
    }
    for customer_id, fields in variants.items():
        payload = {"id": customer_id, **fields}
        repo.upsert(payload)
        assert _stored(repo, customer_id) == payload


def test_unknown_keys_are_kept_at_every_level(repo: CustomerRepository) -> None:
    payload = _customer(
        future_field={"x": [1, 2]},
        summary={"orders": {"total_count": 1, "new_counter": 7}, "vouchers": {"n": 1}},
        loyalty={"campaigns": {"A": {"points": 1, "redeemed_points": 5}}},
        referrals={"campaigns": [{"campaign_id": "camp_1", "channel": "web"}], "extra": True},
        assets={"cockpit_url": "https://x", "new_url": "https://y"},
    )
    payload["address"] = {"city": "X", "building": "B"}
    repo.upsert(payload)
    assert _stored(repo, "cust_test0001") == payload


def test_an_older_payload_after_a_newer_one_changes_nothing(repo: CustomerRepository) -> None:
    newer = _customer(name="New Name", updated_at="2024-03-01T00:00:00.000Z")
    older = _customer(name="Old Name", updated_at="2024-02-01T00:00:00.000Z",
                      loyalty={"campaigns": {}})
    assert repo.upsert(newer) is UpsertOutcome.APPLIED
    assert repo.upsert(older) is UpsertOutcome.STALE
    assert _stored(repo, "cust_test0001") == newer


def test_created_at_is_the_version_when_updated_at_is_missing(repo: CustomerRepository) -> None:
    created = _customer(created_at="2024-01-05T00:00:00.000Z")
    del created["updated_at"]
    updated = _customer(updated_at="2024-01-04T00:00:00.000Z", name="Earlier")
    assert repo.upsert(created) is UpsertOutcome.APPLIED
    assert repo.upsert(updated) is UpsertOutcome.STALE
    assert _stored(repo, "cust_test0001") == created


def test_a_payload_without_timestamps_does_not_replace_a_dated_one(
    repo: CustomerRepository,
) -> None:
    dated = _customer()
    stub = {"id": "cust_test0001", "name": "Stub", "summary": None}
    assert repo.upsert(dated) is UpsertOutcome.APPLIED
    assert repo.upsert(stub) is UpsertOutcome.STALE
    assert _stored(repo, "cust_test0001") == dated


def test_the_same_payload_twice_is_idempotent(repo: CustomerRepository) -> None:
    session = repo.session
    payload = _customer()
    assert repo.upsert(payload) is UpsertOutcome.APPLIED
    assert repo.upsert(copy.deepcopy(payload)) is UpsertOutcome.UNCHANGED
    assert _stored(repo, "cust_test0001") == payload
    assert session.scalar(select(func.count()).select_from(LoyaltyCampaignRow)) == 1
    assert session.scalar(select(func.count()).select_from(ReferralEntryRow)) == 1
    assert session.scalar(select(func.count()).select_from(CustomerAddressRow)) == 1


def test_a_newer_payload_replaces_child_rows_entirely(repo: CustomerRepository) -> None:
    repo.upsert(_customer())
    newer = _customer(
        updated_at="2024-05-01T00:00:00.000Z",
        address=None,
        loyalty={"campaigns": {"Winter": {"points": 3, "loyalty_tier": "ltr_1"}}},
        referrals={"campaigns": []},
    )
    assert repo.upsert(newer) is UpsertOutcome.APPLIED
    assert _stored(repo, "cust_test0001") == newer


def test_a_deleted_customer_is_not_brought_back_by_an_older_update(
    repo: CustomerRepository,
) -> None:
    repo.upsert(_customer())
    removed = repo.delete("cust_test0001", deleted_at=_at("2024-03-01T00:00:00Z"))
    assert removed is DeleteOutcome.REMOVED
    assert repo.get("cust_test0001") is None
    late_update = _customer(updated_at="2024-02-15T00:00:00.000Z", name="Late")
    assert repo.upsert(late_update) is UpsertOutcome.STALE
    same_instant = _customer(updated_at="2024-03-01T00:00:00.000Z")
    assert repo.upsert(same_instant) is UpsertOutcome.STALE
    assert repo.get("cust_test0001") is None
    assert repo.deleted_at("cust_test0001") == _at("2024-03-01T00:00:00Z")


def test_a_deletion_before_the_creation_arrives_still_wins(repo: CustomerRepository) -> None:
    recorded = repo.delete("cust_test0001", deleted_at=_at("2024-03-01T00:00:00Z"))
    assert recorded is DeleteOutcome.RECORDED
    assert repo.upsert(_customer()) is UpsertOutcome.STALE
    assert repo.count() == 0


def test_a_payload_newer_than_the_deletion_is_stored_and_clears_the_tombstone(
    repo: CustomerRepository,
) -> None:
    repo.delete("cust_test0001", deleted_at=_at("2024-01-15T00:00:00Z"))
    payload = _customer()
    assert repo.upsert(payload) is UpsertOutcome.APPLIED
    assert _stored(repo, "cust_test0001") == payload
    assert repo.deleted_at("cust_test0001") is None


def test_deleting_removes_every_child_row(repo: CustomerRepository) -> None:
    session = repo.session
    repo.upsert(_customer())
    repo.delete("cust_test0001", deleted_at=_at("2024-03-01T00:00:00Z"))
    for table in (CustomerRow, CustomerAddressRow, LoyaltyCampaignRow, ReferralEntryRow):
        assert session.scalar(select(func.count()).select_from(table)) == 0


def test_an_earlier_deletion_does_not_move_the_tombstone_back(repo: CustomerRepository) -> None:
    repo.delete("cust_test0001", deleted_at=_at("2024-03-01T00:00:00Z"))
    earlier = repo.delete("cust_test0001", deleted_at=_at("2024-01-01T00:00:00Z"))
    assert earlier is DeleteOutcome.STALE
    assert repo.deleted_at("cust_test0001") == _at("2024-03-01T00:00:00Z")


def test_delete_refuses_a_naive_time(repo: CustomerRepository) -> None:
    with pytest.raises(ValueError, match="time zone"):
        repo.delete("cust_test0001", deleted_at=datetime(2024, 1, 1))


def test_source_id_lookup_returns_the_newest_live_holder(repo: CustomerRepository) -> None:
    old = _customer("cust_old", source_id="shared@example.com",
                    updated_at="2024-01-01T00:00:00.000Z")
    new = _customer("cust_new", source_id="shared@example.com",
                    updated_at="2024-06-01T00:00:00.000Z")
    repo.upsert(new)
    repo.upsert(old)
    assert repo.get_by_source_id("shared@example.com").id == "cust_new"  # type: ignore[union-attr]
    repo.delete("cust_new", deleted_at=_at("2024-07-01T00:00:00Z"))
    assert repo.get_by_source_id("shared@example.com").id == "cust_old"  # type: ignore[union-attr]
    assert repo.get_by_source_id("nobody@example.com") is None


def test_get_json_of_an_unknown_customer_is_none(repo: CustomerRepository) -> None:
    repo.upsert(_customer())
    assert repo.get_json("cust_unknown") is None
    assert repo.get_json_by_source_id("nobody@example.com") is None


def test_a_key_no_column_can_hold_is_no_customer(api_repo: CustomerRepository) -> None:
    """NUL (which PostgreSQL text refuses) or a lone surrogate in a key: no customer, not
    a driver error, through every lookup and on both databases."""
    stored = _customer()
    api_repo.upsert(stored)
    for key in (stored["id"] + "\x00", "\x00" + stored["source_id"], "cust_\udc80"):
        assert api_repo.get(key) is None
        assert api_repo.get_json(key) is None
        assert api_repo.get_json(key, or_source_id=True) is None
        assert api_repo.get_by_source_id(key) is None
        assert api_repo.get_json_by_source_id(key) is None
    assert api_repo.get(stored["id"]) is not None


def test_get_json_or_source_id_prefers_the_id_then_the_newest_source_id_holder(
    repo: CustomerRepository,
) -> None:
    repo.upsert(_customer("cust_old", updated_at="2024-02-01T00:00:00.000Z"))
    repo.upsert(_customer("cust_new", updated_at="2024-03-01T00:00:00.000Z"))
    # A customer whose id is another one's source_id: the id wins.
    repo.upsert(_customer("jane@example.com", source_id="someone-else"))
    by_key = repo.get_json("jane@example.com", or_source_id=True)
    assert by_key is not None and json.loads(by_key)["id"] == "jane@example.com"
    repo.delete("jane@example.com", deleted_at=_at("2025-01-01T00:00:00.000Z"))
    by_key = repo.get_json("jane@example.com", or_source_id=True)
    assert by_key is not None and json.loads(by_key)["id"] == "cust_new"
    assert repo.get_json("jane@example.com") is None
    assert repo.get_json("nobody", or_source_id=True) is None


def test_get_json_by_source_id_answers_the_newest_live_holder_like_get_by_source_id(
    repo: CustomerRepository,
) -> None:
    repo.upsert(_customer("cust_old", updated_at="2024-02-01T00:00:00.000Z"))
    repo.upsert(_customer("cust_new", updated_at="2024-03-01T00:00:00.000Z"))
    newest = repo.get_by_source_id("jane@example.com")
    assert newest is not None and newest.id == "cust_new"
    text = repo.get_json_by_source_id("jane@example.com")
    assert text is not None and json.loads(text) == newest.to_dict()


def test_a_reader_on_an_engine_reads_every_example_as_the_repository_does(
    session: Session, engine: Engine, database_url: str, example_customers: list[tuple[str, Any]]
) -> None:
    repo = CustomerRepository(session)
    repo.upsert_many(p for name, p in example_customers if name not in VALID_EXAMPLE_REJECTIONS)
    session.commit()
    read_only = make_engine(database_url, read_only=True)
    try:
        for reader in (CustomerReader(read_only), CustomerReader(engine)):
            for name, payload in example_customers:
                if name in VALID_EXAMPLE_REJECTIONS:
                    continue
                key = payload["id"]
                assert reader.get(key) == repo.get(key)
                assert reader.get_one_or_none(key) == repo.get(key)
                assert reader.get_json(key) == repo.get_json(key)
                assert reader.get_json(key, or_source_id=True) == repo.get_json(key)
                if payload.get("source_id") is not None:
                    source_id = payload["source_id"]
                    assert reader.get_by_source_id(source_id) == repo.get_by_source_id(source_id)
                    assert reader.get_json_by_source_id(source_id) == repo.get_json_by_source_id(
                        source_id
                    )
            assert reader.get("cust_unknown") is None
            assert reader.get_json("cust_unknown", or_source_id=True) is None
            assert reader.get_by_source_id("nobody@example.com") is None
    finally:
        read_only.dispose()


def test_a_reader_sees_each_commit_and_leaves_its_engine_transactional(
    session: Session, engine: Engine
) -> None:
    reader = CustomerReader(engine)  # not a read-only engine: switched for its reads only
    assert reader.get("cust_test0001") is None
    repo = CustomerRepository(session)
    repo.upsert(_customer())
    assert reader.get("cust_test0001") is None  # not committed yet
    session.commit()
    found = reader.get("cust_test0001")
    assert found is not None and found.to_dict() == _customer()
    # The engine's own connections still run transactions after the reader's checkouts.
    for _ in range(3):
        reader.get_json("cust_test0001")
    with Session(engine) as other:
        CustomerRepository(other).upsert(_customer("cust_rolled_back"))
        other.rollback()
    assert reader.get("cust_rolled_back") is None


def _checked_out(engine: Engine) -> int:
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    return pool.checkedout()


@pytest.fixture
def read_only(session: Session, database_url: str) -> Iterator[Engine]:
    """A read-only engine of one pooled connection, on a database holding ``_customer()``."""
    CustomerRepository(session).upsert(_customer())
    session.commit()
    engine = make_engine(database_url, read_only=True, pool_size=1)
    yield engine
    engine.dispose()


def test_a_reader_on_a_read_only_engine_gives_each_connection_back_to_the_pool(
    read_only: Engine,
) -> None:
    reader = CustomerReader(read_only)
    for _ in range(5):
        assert reader.get("cust_test0001") is not None
        assert reader.get_json("cust_unknown") is None
    assert _checked_out(read_only) == 0


def test_a_reader_shows_its_statements_to_listeners_added_after_it_was_made(
    read_only: Engine,
) -> None:
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])

    reader = CustomerReader(read_only)
    assert reader.get("cust_test0001") is not None
    event.listen(read_only, "before_cursor_execute", record)
    found = reader.get("cust_test0001")
    assert found is not None and found.to_dict() == _customer()
    assert len(seen) == 1 and "customers" in seen[0]


def test_a_reader_whose_connection_was_lost_reads_again_on_a_new_one(
    session: Session, read_only: Engine, backend: str
) -> None:
    if backend != "postgresql":
        pytest.skip("a server closes connections; SQLite has none")
    reader = CustomerReader(read_only)
    assert reader.get("cust_test0001") is not None
    with read_only.connect() as connection:  # the pool's one connection
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    session.execute(select(func.pg_terminate_backend(pid)))
    session.commit()

    # The lost connection is invalidated (with the pool) and the read retried once.
    assert reader.get("cust_test0001") is not None
    with read_only.connect() as connection:
        assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar() != pid
    assert _checked_out(read_only) == 0


def test_upsert_many_counts_applied_and_stale(repo: CustomerRepository) -> None:
    newer = _customer("cust_a", updated_at="2024-06-01T00:00:00.000Z")
    older = _customer("cust_a", updated_at="2024-01-01T00:00:00.000Z", name="Older")
    summary = repo.upsert_many([newer, older, _customer("cust_b")])
    assert (summary.applied, summary.stale) == (2, 1)
    assert _stored(repo, "cust_a") == newer


def test_upsert_rows_writes_validated_rows_with_the_rule_of_upsert_many(
    repo: CustomerRepository,
) -> None:
    newer = _customer("cust_a", updated_at="2024-06-01T00:00:00.000Z")
    older = _customer("cust_a", updated_at="2024-01-01T00:00:00.000Z", name="Older")
    batch = [customer_to_rows(parse_customer(c)) for c in (older, newer, _customer("cust_b"))]
    applied, stale = UpsertOutcome.APPLIED, UpsertOutcome.STALE
    assert repo.upsert_rows(batch) == [stale, applied, applied]
    assert repo.upsert_rows([customer_to_rows(parse_customer(older))]) == [stale]
    assert _stored(repo, "cust_a") == newer


def test_a_stored_version_written_again_is_unchanged_and_an_erased_customer_forgotten(
    session: Session,
) -> None:
    repo = CustomerRepository(session)
    first = _customer("cust_same0001", updated_at="2024-03-01T00:00:00.000Z")
    second = _customer("cust_same0002", updated_at="2024-03-02T00:00:00.000Z")
    erased = _customer("cust_gone0001", updated_at="2024-03-03T00:00:00.000Z")
    repo.upsert_many([first, second, erased])
    forget_customer(repo.session, "cust_gone0001", forgotten_at=datetime(2024, 4, 1, tzinfo=UTC))
    newer = {**second, "name": "Renamed", "updated_at": "2024-03-09T00:00:00.000Z"}
    # One by one, and in a batch: the same version, a newer one, an erased customer's.
    assert repo.upsert(first) is UpsertOutcome.UNCHANGED
    assert repo.upsert(erased) is UpsertOutcome.FORGOTTEN
    summary = repo.upsert_many([first, newer, erased, {**erased, "updated_at": None}])
    assert (summary.unchanged, summary.applied, summary.forgotten, summary.stale) == (1, 1, 2, 0)
    assert repo.upsert(newer) is UpsertOutcome.UNCHANGED
    assert repo.upsert(second) is UpsertOutcome.STALE


def test_iter_all_streams_every_customer_in_id_order(repo: CustomerRepository) -> None:
    ids = [f"cust_{i:04d}" for i in range(0, 230, 3)] + ["CUST_upper", "cust_zz", "cust_Ä"]
    for customer_id in reversed(ids):
        repo.upsert(_customer(customer_id))
    streamed = [c.id for c in repo.iter_all(batch_size=10)]
    assert streamed == sorted(ids, key=lambda s: s.encode("utf-8"))


def test_to_dict_gives_the_json_values_and_to_json_is_its_deprecated_alias() -> None:
    customer = parse_customer(_customer(metadata={"n": 1}))
    assert customer.to_dict() == _customer(metadata={"n": 1})
    with pytest.warns(DeprecationWarning, match=r"Customer\.to_json\(\) is deprecated.*to_dict"):
        assert customer.to_json() == customer.to_dict()


def test_deleted_at_tells_when_and_is_deleted_is_its_deprecated_alias(
    repo: CustomerRepository,
) -> None:
    at = _at("2024-05-01T10:00:00Z")
    repo.delete("cust_gone", deleted_at=at)
    assert repo.deleted_at("cust_gone") == at
    assert repo.deleted_at("cust_never_seen") is None
    with pytest.warns(DeprecationWarning, match=r"is_deleted\(\) is deprecated.*deleted_at"):
        assert repo.is_deleted("cust_gone") == at


def test_a_page_size_below_one_is_refused_by_the_name_the_caller_passed(
    repo: CustomerRepository, session: Session
) -> None:
    with pytest.raises(ValueError, match=r"^limit must be at least 1, got 0$"):
        CustomerRepository(session).page_after(None, limit=0)
    with pytest.raises(ValueError, match=r"^batch_size must be at least 1, got 0$"):
        next(iter(repo.iter_all(batch_size=0)))


def test_get_costs_the_same_statements_for_one_campaign_and_for_sixty(
    repo: CustomerRepository,
) -> None:
    engine = repo.session.get_bind()
    small = _customer("cust_small")
    large = _customer(
        "cust_large",
        loyalty={"campaigns": {f"Campaign {i}": {"points": i, "loyalty_tier": f"ltr_{i}"}
                               for i in range(60)}},
        referrals={"total": 60, "campaigns": [
            {"campaign_id": f"camp_{i}", "referrer_id": "cust_x", "related_object_id": f"r_{i}",
             "related_object_type": "redemption", "date": "2024-01-01T00:00:00.000Z"}
            for i in range(60)]},
    )
    repo.upsert(small)
    repo.upsert(large)
    repo.session.commit()

    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine, "before_cursor_execute", count)
    try:
        assert repo.get("cust_small").to_dict() == small  # type: ignore[union-attr]
        small_count = len(statements)
        statements.clear()
        assert repo.get("cust_large").to_dict() == large  # type: ignore[union-attr]
        large_count = len(statements)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert small_count == large_count
    assert large_count == 1


def test_a_rejected_upsert_leaves_the_stored_customer_as_it_was(
    repo: CustomerRepository,
) -> None:
    good = _customer()
    repo.upsert(good)
    bad = _customer(updated_at="2025-01-01T00:00:00.000Z",
                    summary={"orders": {"total_amount": "lots"}})
    with pytest.raises(CustomerValidationError) as caught:
        repo.upsert(bad)
    assert caught.value.errors[0].path == "$.summary.orders.total_amount"
    assert _stored(repo, "cust_test0001") == good


def test_large_metadata_numbers_and_floats_keep_their_json_type(
    repo: CustomerRepository,
) -> None:
    payload = _customer(metadata={
        "huge": 2**100, "negative": -(2**80), "float": 1e300, "tiny": 1e-300,
        "one_point_zero": 1.0, "exact": 0.1, "flag": True, "unicode_ключ": "値 🎉",
    })
    repo.upsert(payload)
    back = _stored(repo, "cust_test0001")
    assert json.dumps(back, sort_keys=True) == json.dumps(payload, sort_keys=True)


@pytest.mark.parametrize("url", ["mysql://u@localhost/x", "sqlite+aiosqlite:///x.db"])
def test_make_engine_refuses_unsupported_databases(url: str) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        make_engine(url)


@pytest.mark.parametrize(
    "url", ["postgresql://u@h/db", "postgres://u@h/db", "postgresql+psycopg://u@h/db"]
)
def test_make_engine_uses_psycopg_for_every_postgresql_spelling(url: str) -> None:
    assert make_engine(url).dialect.driver == "psycopg"


def test_stored_times_are_utc(repo: CustomerRepository) -> None:
    session = repo.session
    repo.upsert(_customer(updated_at="2024-02-01T05:00:00.000+05:00"))
    row = session.scalars(select(CustomerRow)).one()
    assert row.version_at == datetime(2024, 2, 1, 0, 0, tzinfo=UTC)


def test_several_batches_in_one_transaction_apply_like_one_after_the_other(
    repo: CustomerRepository,
) -> None:
    first = _customer("cust_batch", updated_at="2024-01-01T00:00:00.000Z", name="First")
    second = _customer("cust_batch", updated_at="2024-06-01T00:00:00.000Z", name="Second")
    other = _customer("cust_batch_other")
    assert repo.upsert_many([first, other]).applied == 2
    assert (repo.upsert_many([second]).applied, repo.upsert_many([first]).stale) == (1, 1)
    assert _stored(repo, "cust_batch") == second
    assert _stored(repo, "cust_batch_other") == other


def test_a_batch_of_new_stored_and_deleted_customers_applies_each_as_upsert_would(
    repo: CustomerRepository,
) -> None:
    # On PostgreSQL new customers take a path of their own (copied straight in): a batch
    # mixing them with stored and deleted ones must still follow every rule.
    stored_older = _customer("cust_stored_older", updated_at="2024-01-01T00:00:00.000Z",
                             loyalty={"campaigns": {"Old Campaign": {"points": 1}}})
    stored_newer = _customer("cust_stored_newer", updated_at="2025-01-01T00:00:00.000Z")
    repo.upsert_many([stored_older, stored_newer, _customer("cust_deleted_early"),
                      _customer("cust_deleted_late")])
    repo.delete("cust_deleted_early", deleted_at=_at("2024-03-01T00:00:00.000Z"))
    repo.delete("cust_deleted_late", deleted_at=_at("2024-09-01T00:00:00.000Z"))

    june = "2024-06-01T00:00:00.000Z"
    batch = [
        _customer("cust_new_a", updated_at=june, address=None),
        _customer("cust_stored_older", updated_at=june, name="Replaced"),
        _customer("cust_stored_newer", updated_at=june, name="Too old"),
        _customer("cust_deleted_early", updated_at=june, name="Back again"),
        _customer("cust_deleted_late", updated_at=june, name="Still deleted"),
        _customer("cust_new_b", updated_at="2024-05-01T00:00:00.000Z", name="Older twin"),
        _customer("cust_new_b", updated_at=june, name="Newer twin"),
    ]
    summary = repo.upsert_many(batch)

    assert (summary.applied, summary.stale) == (4, 3)
    for expected in (batch[0], batch[1], batch[3], batch[6]):
        assert _stored(repo, expected["id"]) == expected
    assert _stored(repo, "cust_stored_newer") == stored_newer
    assert _stored(repo, "cust_deleted_late") is None
    assert repo.deleted_at("cust_deleted_early") is None
    assert repo.deleted_at("cust_deleted_late") == _at("2024-09-01T00:00:00.000Z")
