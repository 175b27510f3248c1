"""find and count: every filter on both databases against a reference computed in Python,
keyset pages, one statement per page, and the PostgreSQL plans using each filter's index."""

from __future__ import annotations

import base64
import contextlib
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, event, select, text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import ClauseElement, Executable

from models.tables import CustomerRow
from repository import CustomerFilter, CustomerRepository, InvalidCursor, Page
from repository.db.backends import backend_of
from repository.db.schema import upgrade_to_head
from repository.store.mapping import FOLD_LIMIT, email_key, fold
from repository.store.queries import (
    MAX_METADATA_DEPTH,
    MAX_METADATA_TERMS,
    MAX_PAGE_SIZE,
    InvalidArgument,
    cursor_after,
    customer_select_for,
)

EPOCH = datetime(2023, 1, 1, tzinfo=UTC)
CAMPAIGNS = ["Summer Campaign", "Winter Campaign", "VIP Club"]
NAMES = ["Ann Smith", "anna Jones", "Bob Stone", "Zoë Müller", "Łukasz Nowak", "ann_underscore"]


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def make_customers(count: int, seed: int = 11) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        created = EPOCH + timedelta(days=rng.randrange(400), seconds=rng.randrange(86400))
        updated = created + timedelta(days=rng.randrange(30))
        campaigns = {
            name: {"points": rng.randrange(0, 1000), "loyalty_tier": f"ltr_{rng.randrange(3)}"}
            for name in rng.sample(CAMPAIGNS, rng.randrange(0, 3))
        }
        customer: dict[str, Any] = {
            "id": f"cust_{i:05d}",
            "source_id": f"src-{i % 97}",
            "name": rng.choice(NAMES) if rng.random() < 0.9 else None,
            "email": rng.choice(["A@Example.com", "a@example.COM", "b@example.com", None]),
            "metadata": {
                "tier": rng.choice(["gold", "silver"]),
                "tags": rng.sample(["x", "y", "z"], rng.randrange(0, 3)),
                "n": rng.randrange(5),
                "nested": {"flag": rng.random() < 0.5},
            },
            "loyalty": {"campaigns": campaigns},
            "referrals": {"campaigns": [
                {"referrer_id": f"cust_ref{rng.randrange(4)}"} for _ in range(rng.randrange(0, 3))
            ]},
            "created_at": _iso(created),
            "updated_at": _iso(updated),
        }
        if rng.random() < 0.7:
            customer["summary"] = {"orders": {"last_order_date": _iso(updated)}}
        out.append(customer)
    return out


def _at(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


def _contains(document: Any, wanted: Any) -> bool:
    """PostgreSQL's @> on JSON values (the reference the SQLite spelling must agree with)."""
    if isinstance(wanted, dict):
        return isinstance(document, dict) and all(
            k in document and _contains(document[k], v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return isinstance(document, list) and all(
            any(_contains(d, w) for d in document) for w in wanted
        )
    if isinstance(wanted, bool) or isinstance(document, bool):
        return type(wanted) is type(document) and wanted == document
    return bool(document == wanted)


FILTERS: dict[str, tuple[CustomerFilter, Callable[[dict[str, Any]], bool]]] = {
    "email ignoring case": (
        CustomerFilter(email="a@EXAMPLE.com"),
        lambda c: (c.get("email") or "").lower() == "a@example.com",
    ),
    "source_id": (CustomerFilter(source_id="src-5"), lambda c: c["source_id"] == "src-5"),
    "name prefix ignoring case": (
        CustomerFilter(name_prefix="ANN"),
        lambda c: (c.get("name") or "").lower().startswith("ann"),
    ),
    "name prefix with a LIKE wildcard": (
        CustomerFilter(name_prefix="ann_"),
        lambda c: (c.get("name") or "").lower().startswith("ann_"),
    ),
    "created range": (
        CustomerFilter(created_from=EPOCH + timedelta(days=100),
                       created_before=EPOCH + timedelta(days=130)),
        lambda c: EPOCH + timedelta(days=100) <= _at(c["created_at"]) < EPOCH + timedelta(days=130),  # type: ignore[operator]
    ),
    "updated from": (
        CustomerFilter(updated_from=EPOCH + timedelta(days=380)),
        lambda c: _at(c["updated_at"]) >= EPOCH + timedelta(days=380),  # type: ignore[operator]
    ),
    "metadata scalar": (
        CustomerFilter(metadata_contains={"tier": "gold"}),
        lambda c: _contains(c["metadata"], {"tier": "gold"}),
    ),
    "metadata nested and array": (
        CustomerFilter(metadata_contains={"nested": {"flag": True}, "tags": ["x"]}),
        lambda c: _contains(c["metadata"], {"nested": {"flag": True}, "tags": ["x"]}),
    ),
    "metadata number": (
        CustomerFilter(metadata_contains={"n": 3}),
        lambda c: _contains(c["metadata"], {"n": 3}),
    ),
    "points in a campaign": (
        CustomerFilter(campaign="VIP Club", min_points=900),
        lambda c: c["loyalty"]["campaigns"].get("VIP Club", {}).get("points", -1) >= 900,
    ),
    "tier in a campaign": (
        CustomerFilter(campaign="Summer Campaign", loyalty_tier="ltr_2"),
        lambda c: c["loyalty"]["campaigns"].get("Summer Campaign", {}).get("loyalty_tier")
        == "ltr_2",
    ),
    "referred by": (
        CustomerFilter(referred_by="cust_ref1"),
        lambda c: any(e["referrer_id"] == "cust_ref1" for e in c["referrals"]["campaigns"]),
    ),
    "orders since": (
        CustomerFilter(orders_since=EPOCH + timedelta(days=300)),
        lambda c: "summary" in c
        and _at(c["summary"]["orders"]["last_order_date"]) >= EPOCH + timedelta(days=300),  # type: ignore[operator]
    ),
    "several at once": (
        CustomerFilter(metadata_contains={"tier": "silver"}, campaign="Winter Campaign",
                       min_points=300, name_prefix="a"),
        lambda c: _contains(c["metadata"], {"tier": "silver"})
        and c["loyalty"]["campaigns"].get("Winter Campaign", {}).get("points", -1) >= 300
        and (c.get("name") or "").lower().startswith("a"),
    ),
}

CUSTOMERS = make_customers(600)


@pytest.fixture(scope="module")
def stored(engine: Engine) -> Iterator[Engine]:
    with Session(engine) as session:
        CustomerRepository(session).upsert_many(CUSTOMERS)
        session.commit()
    yield engine
    with engine.begin() as connection:
        for table in ("customer_referral_entries", "customer_loyalty_campaigns",
                      "customer_addresses", "customers"):
            connection.execute(text(f"DELETE FROM {table}"))  # noqa: S608


def _all_pages(repo: CustomerRepository, filters: CustomerFilter, limit: int) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = repo.find(filters, cursor=cursor, limit=limit)
        assert len(page.customers) <= limit
        ids += [c.id for c in page.customers]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_each_filter_finds_exactly_the_matching_customers_page_by_page(
    stored: Engine, name: str
) -> None:
    filters, matches = FILTERS[name]
    expected = sorted(c["id"] for c in CUSTOMERS if matches(c))
    assert expected, "the data should give every filter something to find"
    with Session(stored) as session:
        repo = CustomerRepository(session)
        assert _all_pages(repo, filters, limit=7) == expected
        assert repo.count(filters) == len(expected)


def test_pages_return_the_whole_customers(stored: Engine) -> None:
    by_id = {c["id"]: c for c in CUSTOMERS}
    with Session(stored) as session:
        page = CustomerRepository(session).find(CustomerFilter(source_id="src-5"), limit=50)
    assert page.customers
    for customer in page.customers:
        assert customer.to_dict() == by_id[customer.id]


def test_a_page_is_one_statement_whatever_the_filters(stored: Engine) -> None:
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    with Session(stored) as session:
        repo = CustomerRepository(session)
        repo.find(limit=5)  # connect and warm up outside the count
        event.listen(stored, "before_cursor_execute", count)
        try:
            for filters, _ in FILTERS.values():
                statements.clear()
                page = repo.find(filters, limit=5)
                assert len(statements) == 1
                if page.next_cursor:
                    statements.clear()
                    repo.find(filters, cursor=page.next_cursor, limit=5)
                    assert len(statements) == 1
        finally:
            event.remove(stored, "before_cursor_execute", count)


@pytest.mark.parametrize("cursor", ["not-a-cursor", "eyJmb28iOjF9", "", "e30"])
def test_a_cursor_that_find_did_not_make_is_refused(stored: Engine, cursor: str) -> None:
    with Session(stored) as session, pytest.raises(InvalidCursor):
        CustomerRepository(session).find(cursor=cursor)


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE_SIZE + 1])
def test_page_sizes_outside_1_to_1000_are_refused(stored: Engine, limit: int) -> None:
    with Session(stored) as session, pytest.raises(ValueError, match="limit"):
        CustomerRepository(session).find(limit=limit)


def test_filters_on_a_campaign_need_the_campaign() -> None:
    with pytest.raises(ValueError, match="campaign"):
        CustomerFilter(min_points=5)


def test_time_filters_need_a_time_zone() -> None:
    with pytest.raises(ValueError, match="time zone"):
        CustomerFilter(created_from=datetime(2024, 1, 1))


# -- ignoring case beyond ASCII ----------------------------------------------------------


def _plain_customer(customer_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": customer_id, "updated_at": "2024-01-01T00:00:00.000Z", **fields}


def _ids(page: Page) -> list[str]:
    return [c.id for c in page.customers]


GREEK_STREET = "\u039f\u0394\u039f\u03a3"  # capital omicron, delta, omicron, sigma
#: (stored email, searched email, found): the same answer on both databases.
FOLDED_EMAILS = [
    ("ÄBC@Example.com", "ÄBC@Example.com", True),
    ("ÄBC@Example.com", "äbc@EXAMPLE.COM", True),
    ("ÄBC@Example.com", "ABC@example.com", False),
    (f"{GREEK_STREET}@x.gr", f"{GREEK_STREET}@x.gr", True),
    (f"{GREEK_STREET}@x.gr", "\u03bf\u03b4\u03bf\u03c2@x.gr", True),  # small, final sigma
    ("STRASSE@x.de", "straße@X.de", True),
    ("\uff21\uff22\uff23@example.com", "abc@example.com", True),  # full-width letters
    ("E\u0301lodie@x.fr", "élodie@x.fr", True),  # an accent apart, and composed
    ("İstanbul@x.tr", "İSTANBUL@x.tr", True),
    ("a@example.com", "a@example.com ", False),
]
#: (stored name, searched prefix, found).
FOLDED_NAMES = [
    ("İstanbul Kebab", "İ", True),
    ("İstanbul Kebab", "İstanbul k", True),
    ("Élodie", "É", True),
    ("Élodie", "é", True),
    ("Élodie", "E\u0301L", True),
    ("Élodie", "E", False),
    ("\u01c5emal", "\u01c6", True),  # the title-case digraph Dž, searched as dž
    ("Straße", "STRASS", True),
    (GREEK_STREET, "\u03bf\u03b4\u03bf\u03c2", True),
    # LIKE's and GLOB's wildcards are plain characters in a prefix.
    ("Ann_Smith", "ann_", True),
    ("Annxsmith", "ann_", False),
    ("100% Real", "100%", True),
    ("1000 Real", "100%", False),
    ("A*b", "a*", True),
    ("Ab", "a*", False),
    ("A?b", "a?", True),
    ("Ab", "a?", False),
    ("A[b]", "a[b", True),
    ("A\\b", "a\\", True),
]


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_folding_is_stable_and_email_keys_are_equal_exactly_when_the_folds_are(
    first: str, second: str
) -> None:
    assert fold(fold(first)) == fold(first)
    long_first, long_second = "\ufdfa" * 40 + first, "\ufdfa" * 40 + second
    for a, b in ((first, second), (long_first, long_second), (first, first.upper())):
        assert (email_key(a) == email_key(b)) == (fold(a) == fold(b))
    assert len(email_key(long_first) or "") <= FOLD_LIMIT + 65


@pytest.mark.parametrize(("stored", "searched", "found"), FOLDED_EMAILS)
def test_email_matches_by_its_case_fold_on_both_databases(
    repo: CustomerRepository, stored: str, searched: str, found: bool
) -> None:
    repo.upsert(_plain_customer("cust_fold", email=stored))
    repo.upsert(_plain_customer("cust_other", email="someone@else.example"))
    filters = CustomerFilter(email=searched)
    assert _ids(repo.find(filters)) == (["cust_fold"] if found else [])
    assert repo.count(filters) == int(found)


@pytest.mark.parametrize(("stored", "prefix", "found"), FOLDED_NAMES)
def test_name_prefix_matches_by_its_case_fold_on_both_databases(
    repo: CustomerRepository, stored: str, prefix: str, found: bool
) -> None:
    repo.upsert(_plain_customer("cust_fold", name=stored))
    repo.upsert(_plain_customer("cust_other", name="Zed"))
    filters = CustomerFilter(name_prefix=prefix)
    assert _ids(repo.find(filters)) == (["cust_fold"] if found else [])
    assert repo.count(filters) == int(found)


def test_the_folded_keys_follow_every_write_and_stay_out_of_the_json(
    repo: CustomerRepository, session: Session
) -> None:
    sent = _plain_customer("cust_fold", email="ÄBC@Example.com", name="Élodie")
    repo.upsert_many([sent])  # COPY on PostgreSQL, multi-row upserts on SQLite
    assert _ids(repo.find(CustomerFilter(email="äbc@example.com"))) == ["cust_fold"]
    renamed = {**sent, "email": "Ωmega@x.gr", "updated_at": "2024-02-01T00:00:00.000Z"}
    del renamed["name"]
    repo.upsert(renamed)
    assert _ids(repo.find(CustomerFilter(email="äbc@example.com"))) == []
    assert _ids(repo.find(CustomerFilter(email="ωMEGA@x.gr"))) == ["cust_fold"]
    assert _ids(repo.find(CustomerFilter(name_prefix=""))) == []
    stored = repo.get("cust_fold")
    assert stored is not None and stored.to_dict() == renamed
    assert session.scalars(select(CustomerRow.name_folded)).all() == [None]


def test_text_that_folding_lengthens_past_an_index_entry_is_stored_and_found(
    repo: CustomerRepository,
) -> None:
    # U+FDFA is one character of three bytes that folds to 18 characters: 400 of them make
    # a valid name whose fold would not fit in a PostgreSQL B-tree entry.
    long_name = "\ufdfa" * 400
    repo.upsert(_plain_customer("cust_long", name=long_name, email=long_name[:300] + "@x"))
    repo.upsert(_plain_customer("cust_near", email=long_name[:300] + "@y"))
    assert _ids(repo.find(CustomerFilter(email=long_name[:300] + "@X"))) == ["cust_long"]
    assert _ids(repo.find(CustomerFilter(email=long_name[:300] + "@y"))) == ["cust_near"]
    assert _ids(repo.find(CustomerFilter(name_prefix=long_name[:33]))) == ["cust_long"]
    with pytest.raises(InvalidArgument, match="name_prefix"):
        CustomerFilter(name_prefix=long_name[:34])


# -- metadata containment: the same answers on both databases ----------------------------

#: Keys a JSON path would have to quote, one of them a quote itself.
AWKWARD_KEYS = ['a"b', "a.b", "$", "a[0]", "", "\\", '\\"', "é", "'", " x "]


def test_metadata_keys_that_a_json_path_cannot_spell_are_found(
    repo: CustomerRepository,
) -> None:
    for i, key in enumerate(AWKWARD_KEYS):
        repo.upsert(_plain_customer(f"cust_key{i}", metadata={key: 1, "in": [{key: [key]}]}))
    for i, key in enumerate(AWKWARD_KEYS):
        for wanted in ({key: 1}, {"in": [{key: [key]}]}, {"in": [{}], key: 1.0}):
            filters = CustomerFilter(metadata_contains=wanted)
            assert _ids(repo.find(filters)) == [f"cust_key{i}"], wanted
            assert repo.count(filters) == 1, wanted


_VOCABULARY_KEYS = ['a', 'b"c', 'd.e', ""]
_SCALARS: list[Any] = [None, True, False, 0, 1, 1.5, "x", "1", 'q"']


def _random_json(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth == 0 or roll < 0.4:
        return rng.choice(_SCALARS)
    if roll < 0.75:
        keys = rng.sample(_VOCABULARY_KEYS, rng.randrange(0, 4))
        return {k: _random_json(rng, depth - 1) for k in keys}
    return [_random_json(rng, depth - 1) for _ in range(rng.randrange(0, 3))]


def _part_of(rng: random.Random, value: Any) -> Any:
    """Something ``value`` contains: some of its keys and elements, each cut down too."""
    if isinstance(value, dict):
        keys = [k for k in value if rng.random() < 0.6]
        return {k: _part_of(rng, value[k]) for k in keys}
    if isinstance(value, list):
        return [_part_of(rng, v) for v in value if rng.random() < 0.6]
    return value


def test_metadata_containment_agrees_with_postgresqls_rules_on_random_documents(
    repo: CustomerRepository,
) -> None:
    rng = random.Random(5)
    documents: dict[str, dict[str, Any]] = {}
    for i in range(80):
        keys = rng.sample(_VOCABULARY_KEYS, rng.randrange(1, 5))
        documents[f"cust_m{i:03d}"] = {k: _random_json(rng, 3) for k in keys}
        repo.upsert(_plain_customer(f"cust_m{i:03d}", metadata=documents[f"cust_m{i:03d}"]))
    wanted_list = [_part_of(rng, rng.choice(list(documents.values()))) for _ in range(120)]
    wanted_list += [_random_json(rng, 2) for _ in range(60)]
    checked = 0
    for wanted in wanted_list:
        if not isinstance(wanted, dict):
            continue
        expected = sorted(i for i, d in documents.items() if _contains(d, wanted))
        found = _ids(repo.find(CustomerFilter(metadata_contains=wanted), limit=1000))
        assert found == expected, wanted
        checked += 1
    assert checked > 100


def test_objects_inside_arrays_are_found_by_find_and_count_alike(
    repo: CustomerRepository,
) -> None:
    repo.upsert(_plain_customer("cust_arr", metadata={"arr": [{"k": 1, "j": 2}, 3]}))
    repo.upsert(_plain_customer("cust_not", metadata={"arr": [{"k": 2}], "k": 1}))
    filters = CustomerFilter(metadata_contains={"arr": [{"k": 1}]})
    assert _ids(repo.find(filters)) == ["cust_arr"]
    assert repo.count(filters) == 1


# -- arguments refused before any SQL ------------------------------------------------------


def _nested(depth: int) -> dict[str, Any]:
    """``{"a": {"a": ... {}}}``, ``depth`` levels."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def _nested_lists(depth: int) -> dict[str, Any]:
    """``{"a": [[... [1]]]}``, ``depth`` levels: the costliest nesting on SQLite."""
    value: list[Any] = [1]
    for _ in range(depth - 2):
        value = [value]
    return {"a": value}


EAST_OF_UTC = timezone(timedelta(hours=1))
WEST_OF_UTC = timezone(timedelta(hours=-1))
#: (CustomerFilter arguments, the field the error must name)
HOSTILE_FILTERS: list[tuple[dict[str, Any], str]] = [
    ({"email": "a\x00b"}, "email"),
    ({"email": "\udcff@example.com"}, "email"),
    ({"email": 5}, "email"),
    ({"source_id": "\x00"}, "source_id"),
    ({"name_prefix": "\ud800"}, "name_prefix"),
    ({"referred_by": "cust_\x00"}, "referred_by"),
    ({"campaign": "\udc80", "min_points": 1}, "campaign"),
    ({"campaign": "c", "loyalty_tier": "\x00"}, "loyalty_tier"),
    ({"campaign": "c", "min_points": 2**63}, "min_points"),
    ({"campaign": "c", "min_points": -(2**63) - 1}, "min_points"),
    ({"campaign": "c", "min_points": 99999999999999999999999}, "min_points"),
    ({"campaign": "c", "min_points": True}, "min_points"),
    ({"campaign": "c", "min_points": 1.5}, "min_points"),
    ({"min_points": 5}, "campaign"),
    ({"created_from": datetime(2024, 1, 1)}, "created_from"),
    ({"created_before": datetime.min.replace(tzinfo=EAST_OF_UTC)}, "created_before"),
    ({"updated_from": datetime.max.replace(tzinfo=WEST_OF_UTC)}, "updated_from"),
    ({"updated_before": "2024-01-01T00:00:00Z"}, "updated_before"),
    ({"orders_since": datetime(2024, 1, 1)}, "orders_since"),
    ({"orders_since": datetime.max.replace(tzinfo=WEST_OF_UTC)}, "orders_since"),
    ({"metadata_contains": _nested(900)}, "metadata_contains"),
    ({"metadata_contains": _nested(MAX_METADATA_DEPTH + 1)}, "metadata_contains"),
    ({"metadata_contains": _nested_lists(MAX_METADATA_DEPTH + 1)}, "metadata_contains"),
    ({"metadata_contains": {f"k{i}": i for i in range(3000)}}, "metadata_contains"),
    ({"metadata_contains": {"x": list(range(MAX_METADATA_TERMS))}}, "metadata_contains"),
    ({"metadata_contains": {"x": {f"k{i}": i for i in range(MAX_METADATA_TERMS)}}},
     "metadata_contains"),
    ({"metadata_contains": {"x": 2**64}}, "metadata_contains"),
    ({"metadata_contains": {"x": -(2**63) - 1}}, "metadata_contains"),
    ({"metadata_contains": {"x": float("inf")}}, "metadata_contains"),
    ({"metadata_contains": {"x": float("nan")}}, "metadata_contains"),
    ({"metadata_contains": {"x": "\x00"}}, "metadata_contains"),
    ({"metadata_contains": {"x": ["\udc80"]}}, "metadata_contains"),
    ({"metadata_contains": {"\x00": 1}}, "metadata_contains"),
    ({"metadata_contains": {"a": {"\ud800": 1}}}, "metadata_contains"),
    ({"metadata_contains": {1: "x"}}, "metadata_contains"),
    ({"metadata_contains": {"x": {1, 2}}}, "metadata_contains"),
    ({"metadata_contains": {"x": (1, 2)}}, "metadata_contains"),
    ({"metadata_contains": ["x"]}, "metadata_contains"),
]


@pytest.mark.parametrize(
    ("arguments", "field"), HOSTILE_FILTERS,
    ids=[f"{i}-{field}" for i, (_, field) in enumerate(HOSTILE_FILTERS)],
)
def test_hostile_filter_arguments_are_refused_naming_the_field(
    arguments: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        CustomerFilter(**arguments)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert "\n" not in str(caught.value)


def test_filters_at_the_limits_are_taken_on_both_databases(repo: CustomerRepository) -> None:
    deep = _nested(MAX_METADATA_DEPTH)
    deep_lists = _nested_lists(MAX_METADATA_DEPTH)
    wide = {"x": list(range(MAX_METADATA_TERMS - 1))}
    wide_object = {"x": {f"k{i}": i for i in range(MAX_METADATA_TERMS - 1)}}
    for i, metadata in enumerate((deep, deep_lists, wide, wide_object)):
        repo.upsert(_plain_customer(f"cust_limit{i}", metadata={**metadata, "other": 1}))
    for i, metadata in enumerate((deep, deep_lists, wide, wide_object)):
        filters = CustomerFilter(metadata_contains=metadata)
        assert _ids(repo.find(filters, cursor=cursor_after(""))) == [f"cust_limit{i}"]
    extremes = CustomerFilter(
        campaign="c", min_points=-(2**63), email="e" * 6000,
        metadata_contains={"big": 2**63 - 1, "small": -(2**63), "tiny": 5e-324, "huge": 1e308},
        created_from=datetime.min.replace(tzinfo=UTC),
        created_before=datetime.max.replace(tzinfo=UTC),
    )
    assert repo.count(extremes) == 0


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


BAD_CURSORS = [
    _b64(b"[" * 5000 + b"]" * 5000),
    _b64(b'{"after": ' + b"[" * 3000 + b"]" * 3000 + b"}"),
    _b64(b'{"after": "\\u0000"}'),
    _b64(b'{"after": "\\ud800"}'),
    _b64(b'{"after": 1e400}'),
    _b64(b'{"after": NaN}'),
    _b64(b"\xff\xfe"),
    "A" * 100_000,
    "é",
    "\udcff",
]


@pytest.mark.parametrize("cursor", BAD_CURSORS, ids=[str(i) for i in range(len(BAD_CURSORS))])
def test_hostile_cursors_are_refused_before_any_sql(engine: Engine, cursor: str) -> None:
    with _statements(engine) as statements, Session(engine) as session:
        with pytest.raises(InvalidCursor) as caught:
            CustomerRepository(session).find(cursor=cursor)
        assert caught.value.field == "cursor"
    assert statements == []


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE_SIZE + 1, 10**30, True])
def test_hostile_limits_are_refused_before_any_sql(engine: Engine, limit: int) -> None:
    with _statements(engine) as statements, Session(engine) as session:
        with pytest.raises(InvalidArgument) as caught:
            CustomerRepository(session).find(limit=limit)
        assert caught.value.field == "limit"
    assert statements == []


@contextlib.contextmanager
def _statements(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


# -- PostgreSQL plans ------------------------------------------------------------------


class Explain(Executable, ClauseElement):
    inherit_cache = False

    def __init__(self, statement: Any) -> None:
        self.statement = statement


@compiles(Explain, "postgresql")
def _compile_explain(element: Explain, compiler: Any, **kw: Any) -> str:
    return "EXPLAIN " + str(compiler.process(element.statement, **kw))


PLAN_INDEXES = {
    "email ignoring case": "ix_customers_email_folded",
    "source_id": "ix_customers_source_id_prefix_id",
    "name prefix ignoring case": "ix_customers_name_folded",
    "created range": "ix_customers_created_at_id",
    "updated from": "ix_customers_updated_at_id",
    "metadata scalar": "ix_customers_metadata_gin",
    "points in a campaign": "ix_customer_loyalty_campaigns_campaign_points",
    "tier in a campaign": "ix_customer_loyalty_campaigns_campaign_tier_prefix",
    "referred by": "ix_customer_referral_entries_referrer_id_prefix",
    "orders since": "ix_customers_orders_last_order_date",
}
SELECTIVE = {
    "email ignoring case": CustomerFilter(email="someone.rare@example.com"),
    "source_id": CustomerFilter(source_id="src-rare"),
    "name prefix ignoring case": CustomerFilter(name_prefix="zzrare"),
    "created range": CustomerFilter(created_from=datetime(2030, 1, 1, tzinfo=UTC),
                                    created_before=datetime(2030, 1, 2, tzinfo=UTC)),
    "updated from": CustomerFilter(updated_from=datetime(2030, 1, 1, tzinfo=UTC)),
    "metadata scalar": CustomerFilter(metadata_contains={"tier": "platinum"}),
    "points in a campaign": CustomerFilter(campaign="Summer Campaign", min_points=999),
    "tier in a campaign": CustomerFilter(campaign="Summer Campaign", loyalty_tier="ltr_9"),
    "referred by": CustomerFilter(referred_by="cust_rare_referrer"),
    "orders since": CustomerFilter(orders_since=datetime(2030, 1, 1, tzinfo=UTC)),
}


@pytest.fixture(scope="module")
def large_postgres(make_database: Any) -> Iterator[Engine]:
    """100,000 customers made by SQL (the repository is not what is measured here); their
    names and emails are ASCII, so lower() gives the folded search keys."""
    from repository import make_engine

    url = make_database("postgresql")
    upgrade_to_head(url)
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("""
            INSERT INTO customers (id, source_id, name, email, metadata, created_at,
                                   updated_at, version_at, orders_last_order_date)
            SELECT 'cust_' || lpad(i::text, 7, '0'), 'src-' || (i % 5000),
                   (ARRAY['Ann','Bob','Cid','Dee'])[1 + i % 4] || ' ' || i,
                   'user' || (i % 20000) || '@example.com',
                   jsonb_build_object('tier', (ARRAY['gold','silver','bronze'])[1 + i % 3],
                                      'n', i % 100),
                   timestamptz '2023-01-01' + (i % 700) * interval '1 day',
                   timestamptz '2023-01-01' + (i % 700) * interval '1 day',
                   timestamptz '2023-01-01' + (i % 700) * interval '1 day',
                   timestamptz '2023-01-01' + (i % 650) * interval '1 day'
            FROM generate_series(1, 100000) AS i"""))
        connection.execute(
            text("UPDATE customers SET email_folded = lower(email), name_folded = lower(name)")
        )
        connection.execute(text("""
            INSERT INTO customer_loyalty_campaigns (customer_id, campaign, points, loyalty_tier)
            SELECT 'cust_' || lpad(i::text, 7, '0'), c, (i * 7) % 1000, 'ltr_' || (i % 3)
            FROM generate_series(1, 100000) AS i,
                 unnest(ARRAY['Summer Campaign', 'Winter Campaign']) AS c"""))
        connection.execute(text("""
            INSERT INTO customer_referral_entries (customer_id, position, referrer_id)
            SELECT 'cust_' || lpad(i::text, 7, '0'), 0, 'cust_' || lpad((i % 1000)::text, 7, '0')
            FROM generate_series(1, 100000, 2) AS i"""))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))
    yield engine
    engine.dispose()


@pytest.mark.parametrize("name", sorted(PLAN_INDEXES))
def test_each_filter_uses_its_index_on_postgresql(large_postgres: Engine, name: str) -> None:
    backend = backend_of(large_postgres)
    statement = customer_select_for(backend, SELECTIVE[name], cursor=None, limit=100)
    with large_postgres.connect() as connection:
        plan = "\n".join(row[0] for row in connection.execute(Explain(statement)))
    assert PLAN_INDEXES[name] in plan, plan


# -- SQLite plans ----------------------------------------------------------------------


@compiles(Explain, "sqlite")
def _compile_explain_sqlite(element: Explain, compiler: Any, **kw: Any) -> str:
    return "EXPLAIN QUERY PLAN " + str(compiler.process(element.statement, **kw))


@pytest.mark.parametrize(
    ("filters", "index"),
    [(CustomerFilter(email="Ann@Example.com"), "ix_customers_email_folded"),
     (CustomerFilter(name_prefix="An*"), "ix_customers_name_folded")],
    ids=["email", "name prefix"],
)
def test_the_folded_filters_use_their_index_on_sqlite(
    make_database: Any, filters: CustomerFilter, index: str
) -> None:
    from repository import make_engine

    url = make_database("sqlite")
    upgrade_to_head(url)
    engine = make_engine(url)
    try:
        statement = customer_select_for(backend_of(engine), filters, cursor=None, limit=100)
        with engine.connect() as connection:
            plan = "\n".join(str(row[-1]) for row in connection.execute(Explain(statement)))
    finally:
        engine.dispose()
    assert index in plan, plan
