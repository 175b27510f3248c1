"""Hostile input through every entry point: ``import``, ``ingest`` and the HTTP receiver.

A corpus of nasty lines is built in code (nothing large is committed): truncated JSON,
byte order marks, NUL bytes, lone surrogates, invalid UTF-8, 10,000 levels of nesting,
10 MB strings, numbers no column or float can hold, duplicate keys, values that are not
customers, blank lines of every size. Each line declares what the documented rules make
of it (stored, rejected or skipped; wrapped in a webhook envelope: applied, rejected or
malformed). The CLI runs as a real process and the receiver as a real ``serve`` process
on SQLite and PostgreSQL, every call with a timeout; after each run
:mod:`tests.invariants` checks the database. Hypothesis then mutates valid customers and
envelopes in-process, and the limits of the store are pinned at their edges.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from customer_store.web import DEFAULT_MAX_BODY_BYTES
from models import Base
from models.events import EventOutcome, WebhookEventRow
from models.storability import MAX_NESTING
from repository import CustomerRepository, make_session_factory
from repository.importing import import_records, read_records
from repository.webhooks.ingest import MalformedDelivery, ingest_delivery
from tests.invariants import assert_invariants
from tests.servers import Server, cli_command, running_server

# make test-slow: property and fuzz tests through real processes (docs/testing.md).
pytestmark = pytest.mark.slow

#: Every subprocess and HTTP call is bounded: a hang fails the test instead of the run (the
#: HTTP calls and the server's start by tests.servers).
CLI_TIMEOUT = 90.0
SECRET = f"whsec-fuzz-{uuid.uuid4().hex}"
TEN_MB = 10 * 1024 * 1024
NOW = "2024-05-01T10:00:00.000Z"
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


# --- the corpus ----------------------------------------------------------------------------


def base_customer(customer_id: str) -> dict[str, Any]:
    """A valid customer using every documented part: address, loyalty, referrals."""
    return {
        "id": customer_id,
        "source_id": f"{customer_id}@example.test",
        "name": "Fuzz Target",
        "email": "fuzz@example.test",
        "address": {"city": "Kraków", "line_1": None},
        "metadata": {"tier": "gold", "list": [1, 2.5, None, {"x": True}]},
        "summary": {"orders": {"total_amount": 12_00, "total_count": 1}},
        "loyalty": {"points": -5, "campaigns": {"Summer Campaign": {"points": 5}}},
        "referrals": {
            "total": 1,
            "campaigns": [{"campaign_id": "camp_1", "referrer_id": "cust_ref",
                           "date": "2024-01-02T03:04:05.006Z"}],
        },
        "created_at": "2024-01-01T00:00:00.000Z",
        "updated_at": "2024-02-01T00:00:00.000Z",
        "object": "customer",
    }


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def with_field(customer_id: str, raw_field: bytes) -> bytes:
    """A valid customer's line with ``raw_field`` (JSON text: ``"key":value``) added."""
    return dumps(base_customer(customer_id))[:-1] + b"," + raw_field + b"}"


@dataclass(frozen=True)
class Nasty:
    """One hostile line and what each entry point must make of it."""

    label: str
    data: bytes
    #: Through ``import``: "stored", "rejected", or "skipped" (blank, or an empty array).
    imported: str
    #: The reason's expected wording when rejected (a regular expression).
    reason: str = ""
    #: As ``data.customer`` of a customer.created envelope: "applied", "rejected" (a 422,
    #: recorded), "malformed" (a 400, nothing recorded), or "" when not wrapped.
    wrapped: str = ""

    @property
    def customer_id(self) -> str:
        value = json.loads(self.data)
        assert isinstance(value, dict)
        customer_id: str = value["id"]
        return customer_id


def nasty_customer_lines() -> list[Nasty]:
    """Lines for ``import``, none holding a raw line break (line numbers stay exact)."""
    deep_arrays = b"[" * 10_000 + b"]" * 10_000
    deep_objects = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    lines = [
        Nasty("truncated", dumps(base_customer("cust_trunc"))[:-7], "rejected",
              "invalid JSON", "malformed"),
        Nasty("truncated to a brace", b"{", "rejected", "invalid JSON", "malformed"),
        Nasty("BOM before a line in the middle", b"\xef\xbb\xbf" + dumps(base_customer("c_bom")),
              "rejected", "invalid JSON", "malformed"),
        Nasty("BOM inside a value", dumps({**base_customer("cust_bom_value"),
                                           "name": "\ufeffBob"}), "stored", wrapped="applied"),
        Nasty("raw NUL byte in a value", with_field("cust_nul_raw", b'"description":"a\x00b"'),
              "rejected", "invalid JSON", "malformed"),
        Nasty("escaped NUL in a value", with_field("cust_nul_value", rb'"description":"a\u0000b"'),
              "rejected", r"\$\.description: contains U\+0000", "rejected"),
        Nasty("escaped NUL in a metadata key",
              with_field("cust_nul_key", rb'"metadata":{"k\u0000":1}'),
              "rejected", r"\$\.metadata\[.*\]: key contains U\+0000", "rejected"),
        Nasty("escaped NUL in an unknown key", with_field("cust_nul_key2", rb'"x\u0000y":1'),
              "rejected", "key contains U\\+0000", "rejected"),
        Nasty("lone surrogate escape in a value",
              with_field("cust_surrogate", rb'"email":"\ud800"'),
              "rejected", r"\$\.email: contains a lone surrogate", "rejected"),
        Nasty("lone surrogate escape in a key",
              with_field("cust_surrogate_key", rb'"metadata":{"\udfff":"x"}'),
              "rejected", "key contains a lone surrogate", "rejected"),
        Nasty("invalid UTF-8 in a value", with_field("cust_bad_utf8", b'"phone":"\xff\xfe"'),
              "rejected", r"\$\.phone: contains a lone surrogate", "malformed"),
        Nasty("UTF-8-encoded surrogate (CESU) in a value",
              with_field("cust_cesu", b'"phone":"\xed\xa0\x80"'),
              "rejected", r"\$\.phone: contains a lone surrogate", "rejected"),
        Nasty("invalid UTF-8 outside a string", b"\xc3\x28" + dumps(base_customer("c_x")),
              "rejected", "invalid JSON", "malformed"),
        Nasty("10,000 levels of arrays", deep_arrays, "rejected", "nested too deeply",
              "malformed"),
        Nasty("10,000 levels of objects", deep_objects, "rejected", "nested too deeply",
              "malformed"),
        Nasty("10,000 levels of arrays in metadata",
              with_field("cust_deep_meta", b'"metadata":{"x":' + deep_arrays + b"}"),
              "rejected", "nested too deeply", "malformed"),
        Nasty("65 levels in an unknown key",
              with_field("cust_nest65", b'"x_deep":' + b"[" * 65 + b"]" * 65),
              "rejected", f"nested deeper than {MAX_NESTING} levels", "rejected"),
        Nasty("10 MB description", dumps({**base_customer("cust_10mb_desc"),
                                          "description": "d" * TEN_MB}), "stored",
              wrapped="applied"),
        Nasty("10 MB metadata string", dumps({**base_customer("cust_10mb_meta"),
                                              "metadata": {"blob": "é" * (TEN_MB // 2)}}),
              "stored", wrapped="applied"),
        # Indexed text of any length is kept (indexes hold a prefix or a key of it).
        Nasty("10 MB name", dumps({**base_customer("cust_10mb_name"), "name": "n" * TEN_MB}),
              "stored", wrapped="applied"),
        Nasty("10 MB campaign key", dumps({**base_customer("cust_10mb_key"),
                                           "loyalty": {"campaigns": {"k" * TEN_MB: {}}}}),
              "stored", wrapped="applied"),
        Nasty("1 MB metadata key with an escaped NUL",
              with_field("cust_1mb_nul_key", b'"metadata":{"' + b"k" * 2**20 + rb'\u0000":1}'),
              "rejected", r"\$\.metadata\[\"k+\.\.\.\"\]: key contains U\+0000", "rejected"),
        Nasty("1e400", with_field("cust_1e400", b'"metadata":{"n":1e400}'),
              "rejected", "too large for a float", "malformed"),
        Nasty("-1e400", with_field("cust_m1e400", b'"metadata":{"n":-1e400}'),
              "rejected", "too large for a float", "malformed"),
        Nasty("1e-400 (underflows to 0)", with_field("cust_1em400", b'"metadata":{"n":1e-400}'),
              "stored", wrapped="applied"),
        Nasty("NaN", with_field("cust_nan", b'"metadata":{"n":NaN}'),
              "rejected", "NaN is not a JSON number", "malformed"),
        Nasty("Infinity", with_field("cust_inf", b'"metadata":{"n":Infinity}'),
              "rejected", "Infinity is not a JSON number", "malformed"),
        Nasty("-Infinity in a counter", with_field("cust_minf", b'"referrals":-Infinity'),
              "rejected", "Infinity is not a JSON number", "malformed"),
        Nasty("2**64 in metadata", with_field("cust_2p64", b'"metadata":{"n":%d}' % 2**64),
              "stored", wrapped="applied"),
        Nasty("10**400 in metadata", with_field("cust_10p400",
                                                b'"metadata":{"n":%d}' % 10**400),
              "stored", wrapped="applied"),
        Nasty("2**64 in a counter", dumps({**base_customer("cust_2p64_counter"),
                                           "loyalty": {"points": 2**64}}),
              "rejected", r"\$\.loyalty\.points: expected an integer that fits in 64 bits",
              "rejected"),
        Nasty("10**400 in a counter", dumps({**base_customer("cust_10p400_counter"),
                                             "referrals": {"total": 10**400}}),
              "rejected", r"\$\.referrals\.total: expected an integer that fits in 64 bits",
              "rejected"),
        Nasty("an integer of 5,000 digits", with_field("cust_5000", b'"metadata":' + b"9" * 5000),
              "rejected", "5000 digits, too many", "malformed"),
        Nasty("duplicate keys (the last wins)", b'{"id":"cust_dup_a","id":"cust_dup_b"}',
              "stored", wrapped="applied"),
        Nasty("null", b"null", "rejected", "expected a customer object, got null", "rejected"),
        Nasty("true", b"true", "rejected", "expected a customer object, got boolean",
              "rejected"),
        Nasty("a string", b'"x"', "rejected", "expected a customer object, got string",
              "rejected"),
        Nasty("a number", b"1", "rejected", "expected a customer object, got integer",
              "rejected"),
        Nasty("an empty array", b"[]", "skipped", wrapped="rejected"),
        Nasty("an empty object", b"{}", "rejected", r"\$\.id: required, but absent",
              "rejected"),
        Nasty("no id", dumps({k: v for k, v in base_customer("x").items() if k != "id"}),
              "rejected", r"\$\.id: required, but absent", "rejected"),
        Nasty("an id that is an object", b'{"id":{"id":"cust_x"}}', "rejected",
              r"\$\.id: expected a string, got object", "rejected"),
        Nasty("an empty id", b'{"id":""}', "rejected", r"\$\.id: string should have at least",
              "rejected"),
        Nasty("whitespace only", b" \t  \t", "skipped", wrapped="malformed"),
        Nasty("2 MB of spaces", b" " * (2 * 1024 * 1024), "skipped", wrapped="malformed"),
        Nasty("valid after all that", dumps(base_customer("cust_valid_last")), "stored",
              wrapped="applied"),
    ]
    # Lines that are plainly valid, between the nasty ones: a mix, as real files are.
    return [line for i, nasty in enumerate(lines)
            for line in (nasty, Nasty(f"valid {i}", dumps(base_customer(f"cust_ok_{i:02d}")),
                                      "stored", wrapped="applied"))]


def corpus_file(lines: Sequence[Nasty], *, newline: bytes = b"\n", bom: bool = True) -> bytes:
    """A JSON Lines file: a BOM and a valid first line, then ``lines`` (numbered from 2)."""
    first = dumps(base_customer("cust_first_line"))
    body = newline.join([first, *(line.data for line in lines)]) + newline
    return (b"\xef\xbb\xbf" if bom else b"") + body


# --- running the CLI -----------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return f"exit {self.returncode}\n--- stderr ---\n{self.stderr[-4000:]}"


def cli(url: str, *args: str, cwd: Path) -> Run:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    completed = subprocess.run(
        cli_command(url, *args),
        cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
        timeout=CLI_TIMEOUT, check=False,
    )
    run = Run(completed.returncode, completed.stdout.decode("utf-8", "replace"),
              completed.stderr.decode("utf-8", "replace"))
    assert "Traceback" not in run.stderr + run.stdout, run.describe()
    return run


SUMMARY = re.compile(
    r"imported (\d+) records in [\d.]+s: (\d+) applied, (\d+) unchanged, (\d+) stale, "
    r"(\d+) forgotten, (\d+) rejected"
)
REJECTION = re.compile(r"^rejected line (\d+): (.+)$", re.MULTILINE)


def import_summary(run: Run) -> tuple[int, int, int, int]:
    match = SUMMARY.search(run.stderr)
    assert match, run.describe()
    # No customer is erased in these runs; a version already stored counts as written.
    total, applied, unchanged, stale, forgotten, rejected = (int(g) for g in match.groups())
    assert forgotten == 0, run.describe()
    return total, applied + unchanged, stale, rejected


def rejected_lines(run: Run) -> dict[int, str]:
    found: dict[int, str] = {}
    for number, reason in REJECTION.findall(run.stderr):
        assert int(number) not in found, f"line {number} rejected twice"
        found[int(number)] = reason
    return found


# --- databases -----------------------------------------------------------------------------


def empty(engine: Engine) -> None:
    with engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(delete(table))


@pytest.fixture
def store(engine: Engine) -> Iterator[Engine]:
    """The shared migrated database of the backend, empty before and after the test."""
    empty(engine)
    yield engine
    empty(engine)


def stored_ids(engine: Engine) -> set[str]:
    with Session(engine) as session:
        return {c.id for c in CustomerRepository(session).iter_all()}


def events(engine: Engine) -> dict[str, WebhookEventRow]:
    with Session(engine, expire_on_commit=False) as session:
        rows = session.scalars(select(WebhookEventRow)).all()
        session.expunge_all()
    return {row.event_id: row for row in rows}


# --- import --------------------------------------------------------------------------------


def test_import_stores_or_rejects_each_nasty_line_by_number_and_exits_1(
    store: Engine, database_url: str, tmp_path: Path
) -> None:
    lines = nasty_customer_lines()
    path = tmp_path / "nasty.jsonl"
    path.write_bytes(corpus_file(lines))

    run = cli(database_url, "import", str(path), cwd=tmp_path)

    numbered = list(enumerate(lines, start=2))
    expect_stored = {"cust_first_line"} | {n.customer_id for _, n in numbered
                                           if n.imported == "stored"}
    expect_rejected = {number: n for number, n in numbered if n.imported == "rejected"}
    total, applied, stale, rejected = import_summary(run)
    assert run.returncode == 1, run.describe()
    assert total == len(expect_stored) + len(expect_rejected), run.describe()
    assert (applied, stale, rejected) == (len(expect_stored), 0, len(expect_rejected))
    reasons = rejected_lines(run)
    assert set(reasons) == set(expect_rejected), run.describe()
    for number, nasty in expect_rejected.items():
        assert re.search(nasty.reason, reasons[number]), (nasty.label, reasons[number])
        # Values are quoted by their first characters, map keys by their first thousand.
        assert len(reasons[number]) < 2500, (nasty.label, "the reason quotes too much")
    assert stored_ids(store) == expect_stored
    assert_invariants(store)


def test_import_reads_back_the_10_mb_values_and_huge_metadata_numbers_exactly(
    store: Engine, database_url: str, tmp_path: Path
) -> None:
    kept = [n for n in nasty_customer_lines() if n.imported == "stored"
            and not n.label.startswith(("valid", "duplicate", "1e-400"))]
    path = tmp_path / "big.jsonl"
    path.write_bytes(corpus_file(kept, bom=False))

    run = cli(database_url, "import", str(path), cwd=tmp_path)

    assert run.returncode == 0, run.describe()
    with Session(store) as session:
        repo = CustomerRepository(session)
        for nasty in kept:
            customer = repo.get(nasty.customer_id)
            assert customer is not None, nasty.label
            assert customer.to_dict() == json.loads(nasty.data), nasty.label
    assert_invariants(store)


def test_import_of_cr_only_line_endings_numbers_lines_like_lf(
    store: Engine, database_url: str, tmp_path: Path
) -> None:
    small = [n for n in nasty_customer_lines() if len(n.data) < 10_000][:30]
    cr, lf = tmp_path / "cr.jsonl", tmp_path / "lf.jsonl"
    cr.write_bytes(corpus_file(small, newline=b"\r"))
    lf.write_bytes(corpus_file(small, newline=b"\n"))

    with_cr = cli(database_url, "import", str(cr), cwd=tmp_path)
    stored_after_cr = stored_ids(store)
    empty(store)
    with_lf = cli(database_url, "import", str(lf), cwd=tmp_path)

    assert with_cr.returncode == with_lf.returncode == 1, with_cr.describe()
    assert import_summary(with_cr)[0] == 1 + sum(n.imported != "skipped" for n in small)
    assert import_summary(with_cr)[1:] == import_summary(with_lf)[1:]
    assert rejected_lines(with_cr).keys() == rejected_lines(with_lf).keys()
    assert stored_after_cr == stored_ids(store)
    assert_invariants(store)


def test_import_whose_first_line_is_garbage_keeps_line_numbers_despite_unicode_separators(
    store: Engine, database_url: str, tmp_path: Path
) -> None:
    """U+2028, U+2029 and U+0085 may stand in JSON strings unescaped: they end no line."""
    tricky = {**base_customer("cust_separators"), "name": "a\u2028b\u2029c\x85d"}
    path = tmp_path / "garbage-first.jsonl"
    path.write_bytes(b"not json at all\n" + dumps(tricky) + b"\n{\"id\": 5}\n")

    run = cli(database_url, "import", str(path), cwd=tmp_path)

    assert run.returncode == 1, run.describe()
    assert import_summary(run) == (3, 1, 0, 2)
    assert set(rejected_lines(run)) == {1, 3}
    with Session(store) as session:
        customer = CustomerRepository(session).get("cust_separators")
    assert customer is not None and customer.to_dict() == tricky
    assert_invariants(store)


# --- ingest --------------------------------------------------------------------------------


def envelope(
    customer: bytes, event_id: bytes, *, event_type: bytes = b'"customer.created"'
) -> bytes:
    """A v2024-01-01 envelope around ``customer`` (raw JSON text, possibly broken)."""
    return (
        b'{"id":"whs_fuzz","project_id":"proj_fuzz","created_at":"' + NOW.encode()
        + b'","type":' + event_type + b',"data":{"customer":' + customer
        + b'},"source":{"id":"wh_fuzz"},"event":{"id":' + event_id + b',"type":' + event_type
        + b',"created_at":"' + NOW.encode() + b'","group_id":"g"}}'
    )


@dataclass(frozen=True)
class Delivery:
    label: str
    body: bytes
    #: "applied", "rejected", "ignored", "malformed", or "too large" (HTTP only).
    expected: str
    event_id: str | None = None
    #: The customer an applied delivery stores.
    customer_id: str | None = None


def nasty_deliveries(*, run: str) -> list[Delivery]:
    """Envelopes around every wrapped corpus line, then envelopes broken in themselves."""
    deliveries = []
    for i, nasty in enumerate(nasty_customer_lines()):
        if not nasty.wrapped:
            continue
        event_id = f"evcus_{run}_{i:03d}"
        deliveries.append(Delivery(
            nasty.label, envelope(nasty.data, dumps(event_id)), nasty.wrapped, event_id,
            nasty.customer_id if nasty.wrapped == "applied" else None,
        ))
    customer = dumps(base_customer(f"cust_{run}_env"))
    good = envelope(customer, dumps(f"evcus_{run}_good"))
    legacy = dumps({"id": f"evcus_{run}_legacy", "object": "event", "webhook_id": "wh",
                    "type": "customer.updated", "created_at": NOW, "data": {"customer": 5}})
    broken: list[tuple[Any, ...]] = [
        ("event id missing", envelope(customer, b"null").replace(b'"id":"whs_fuzz",', b""),
         "malformed", None),
        ("event id a number", envelope(customer, b"12"), "malformed", None),
        ("event id an object", envelope(customer, b'{"id":"x"}'), "malformed", None),
        ("event id empty", envelope(customer, b'""'), "malformed", None),
        ("event id of 256 chars", envelope(customer, dumps("e" * 256)), "malformed", None),
        ("event id of 1 MB", envelope(customer, dumps("e" * 1_000_000)), "malformed", None),
        ("event id with NUL", envelope(customer, rb'"ev\u0000x"'), "malformed", None),
        ("event id with a lone surrogate", envelope(customer, rb'"ev\ud800"'), "malformed",
         None),
        ("no event at all", dumps({"id": "whs", "data": {}}), "malformed", None),
        ("truncated envelope", good[: len(good) // 2], "malformed", None),
        ("empty object", b"{}", "malformed", None),
        ("null", b"null", "malformed", None),
        ("an array", b"[]", "malformed", None),
        ("a string", b'"x"', "malformed", None),
        ("invalid UTF-8", good.replace(b"whs_fuzz", b"\xff\xfe"), "malformed", None),
        ("BOM between tokens", good[:1] + b"\xef\xbb\xbf" + good[1:], "malformed", None),
        ("BOM before the envelope",
         b"\xef\xbb\xbf" + good.replace(b"_good", b"_bom"), "applied", f"evcus_{run}_bom",
         f"cust_{run}_env"),
        ("event type not a string", envelope(customer, dumps(f"evcus_{run}_type"),
                                             event_type=b"[1]"), "rejected", f"evcus_{run}_type"),
        ("event type with a lone surrogate", envelope(customer, dumps(f"evcus_{run}_sur"),
                                                      event_type=rb'"\udc00"'),
         "rejected", f"evcus_{run}_sur"),
        ("created_at a lone surrogate",
         good.replace(NOW.encode(), rb"\ud800").replace(b"evcus_" + run.encode() + b"_good",
                                                        b"evcus_" + run.encode() + b"_time"),
         "rejected", f"evcus_{run}_time"),
        ("data not an object", good.replace(b'"data":{"customer":' + customer + b"}",
                                            b'"data":[]').replace(b"_good", b"_data"),
         "rejected", f"evcus_{run}_data"),
        ("legacy envelope with a number for a customer", legacy, "rejected",
         f"evcus_{run}_legacy"),
        ("deletion of an object id", envelope(b'{"id":{"a":1}}', dumps(f"evcus_{run}_del"),
                                              event_type=b'"customer.deleted"'),
         "rejected", f"evcus_{run}_del"),
        ("other event with a nasty customer",
         envelope(rb'{"id":"\u0000","name":5}', dumps(f"evcus_{run}_other"),
                  event_type=b'"customer.rewarded"'), "ignored", f"evcus_{run}_other"),
        ("a good envelope", good, "applied", f"evcus_{run}_good", f"cust_{run}_env"),
        ("the good envelope again", good, "duplicate", f"evcus_{run}_good"),
    ]
    deliveries += [Delivery(*item) for item in broken]
    return deliveries


INGEST_LINE = re.compile(r"^(malformed|rejected) line (\d+)(?: \(event ([^)]*)\))?: (.+)$",
                         re.MULTILINE)
INGEST_SUMMARY = re.compile(r"ingested (\d+) events: (.+)$", re.MULTILINE)


def test_ingest_records_or_refuses_each_nasty_envelope_by_line_and_exits_1(
    store: Engine, database_url: str, tmp_path: Path
) -> None:
    deliveries = nasty_deliveries(run="ingest")
    assert not any(b"\n" in d.body for d in deliveries)
    path = tmp_path / "envelopes.jsonl"
    path.write_bytes(b"\r\n".join(d.body for d in deliveries) + b"\r\n\n  \n")

    run = cli(database_url, "ingest", str(path), cwd=tmp_path)

    assert run.returncode == 1, run.describe()
    reported = {int(n): (kind, reason) for kind, n, _, reason in INGEST_LINE.findall(run.stderr)}
    numbered = list(enumerate(deliveries, start=1))
    for number, delivery in numbered:
        if delivery.expected in ("malformed", "rejected"):
            assert number in reported, (delivery.label, run.describe())
            assert reported[number][0] == delivery.expected, (delivery.label, reported[number])
            assert reported[number][1].strip()
        else:
            assert number not in reported, (delivery.label, reported.get(number))
    assert len(reported) == sum(d.expected in ("malformed", "rejected") for d in deliveries)
    summary = INGEST_SUMMARY.search(run.stderr)
    assert summary and int(summary.group(1)) == len(deliveries), run.describe()
    rows = events(store)
    recorded = {d.event_id: d for d in deliveries if d.event_id and d.expected != "malformed"}
    assert set(rows) == set(recorded)
    for event_id, delivery in recorded.items():
        if delivery.expected != "duplicate":
            assert rows[event_id].outcome == delivery.expected, delivery.label
    assert stored_ids(store) == {d.customer_id for d in deliveries if d.expected == "applied"}
    assert_invariants(store)


# --- the HTTP receiver ---------------------------------------------------------------------


def post(server: Server, body: bytes, *, chunk_size: int | None = None) -> tuple[int, Any]:
    """Deliver ``body`` signed with SECRET (in chunks if ``chunk_size``): (status, JSON answer)."""
    reply = server.deliver(body, chunk_size=chunk_size)
    return reply.status, reply.json()


@pytest.fixture
def server(
    database_url: str, store: Engine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with running_server(database_url, log_path=log, secret=SECRET) as running:
        yield running
        assert "Traceback" not in running.log(), running.log()[-4000:]


STATUS = {"applied": 200, "duplicate": 200, "ignored": 200, "rejected": 422, "malformed": 400,
          "too large": 413}


def test_receiver_answers_every_nasty_delivery_with_its_documented_status_never_500(
    server: Server, store: Engine
) -> None:
    deliveries = [
        Delivery(d.label, d.body,
                 "too large" if len(d.body) > DEFAULT_MAX_BODY_BYTES else d.expected, d.event_id)
        for d in nasty_deliveries(run="http")
    ]
    assert {d.expected for d in deliveries} == set(STATUS)
    for delivery in deliveries:
        status, answer = post(server, delivery.body)
        assert status == STATUS[delivery.expected], (delivery.label, status, answer)
        if status >= 400:
            assert answer["error"].strip(), delivery.label
        else:
            assert answer["outcome"] == delivery.expected, delivery.label
    rows = events(store)
    assert set(rows) == {d.event_id for d in deliveries if d.expected in STATUS
                         and d.expected not in ("malformed", "too large")}
    assert_invariants(store)


def test_receiver_body_limit_is_1_mib_inclusive_with_and_without_content_length(
    server: Server, store: Engine
) -> None:
    def body_of(size: int, event_id: str) -> bytes:
        body = envelope(dumps(base_customer(f"cust_{event_id}")), dumps(event_id))
        padded = body[:-1] + b',"pad":"' + b"p" * (size - len(body) - 9) + b'"}'
        assert len(padded) == size
        return padded

    at_limit = body_of(DEFAULT_MAX_BODY_BYTES, "evcus_at_limit")
    over = body_of(DEFAULT_MAX_BODY_BYTES + 1, "evcus_over")
    over_chunked = body_of(DEFAULT_MAX_BODY_BYTES + 1, "evcus_over_chunked")

    assert post(server, at_limit) == (200, {"event_id": "evcus_at_limit", "outcome": "applied"})
    assert post(server, over) == (413, {"error": f"body over {DEFAULT_MAX_BODY_BYTES} bytes"})
    assert post(server, over_chunked, chunk_size=65536)[0] == 413
    assert set(events(store)) == {"evcus_at_limit"}
    assert_invariants(store)


# --- limits at their edges (in-process) ----------------------------------------------------


def import_lines(engine: Engine, values: Sequence[Any]) -> tuple[Any, dict[str, str]]:
    text = "\n".join(json.dumps(v) if not isinstance(v, str) else v for v in values) + "\n"
    report = import_records(make_session_factory(engine), read_records(io.StringIO(text)))
    return report, {r.location: r.reason for r in report.rejections}


def nested(levels: int) -> Any:
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


CLEF = "\U0001d11e"  # four bytes of UTF-8
LIMITS: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("id, 255 characters", {"id": "i" * 255}, {"id": "i" * 256},
     r"\$\.id: string should have at most 255 characters"),
    ("id, 1000 bytes", {"id": CLEF * 250}, {"id": CLEF * 251},
     r"\$\.id: expected at most 1000 bytes of UTF-8 text"),
    ("64-bit integers, top", {"summary": {"orders": {"total_amount": INT64_MAX}}},
     {"summary": {"orders": {"total_amount": INT64_MAX + 1}}},
     r"\$\.summary\.orders\.total_amount: expected an integer that fits in 64 bits"),
    ("64-bit integers, bottom", {"loyalty": {"points": INT64_MIN}},
     {"loyalty": {"points": INT64_MIN - 1}},
     r"\$\.loyalty\.points: expected an integer that fits in 64 bits"),
    # The customer object is level 0, the value of one of its keys level 1.
    (f"nesting, {MAX_NESTING} levels", {"x_deep": nested(MAX_NESTING)},
     {"x_deep": nested(MAX_NESTING + 1)},
     rf"\$\.x_deep(\[0\]){{{MAX_NESTING}}}: nested deeper than {MAX_NESTING} levels"),
]


@pytest.mark.parametrize(("limit", "under", "over", "reason"), LIMITS,
                         ids=[item[0] for item in LIMITS])
def test_limit_accepts_just_under_and_rejects_just_over_with_a_clear_message(
    store: Engine, limit: str, under: dict[str, Any], over: dict[str, Any], reason: str
) -> None:
    accepted = {"created_at": NOW, "id": "cust_under", **under}
    refused = {"created_at": NOW, "id": "cust_over", **over}

    report, reasons = import_lines(store, [accepted, refused])

    assert (report.applied, report.rejected) == (1, 1), reasons
    assert re.match(reason, reasons["line 2"]), reasons["line 2"][:300]
    with Session(store) as session:
        stored = CustomerRepository(session).get(accepted["id"])
    assert stored is not None and stored.to_dict() == accepted
    assert_invariants(store)


def test_metadata_integers_are_kept_up_to_pythons_digit_limit_and_refused_beyond(
    store: Engine,
) -> None:
    digits = sys.get_int_max_str_digits() or 4300
    longest = int("7" * digits)
    line_under = json.dumps({"id": "cust_digits", "metadata": {"n": longest, "m": -(2**64)}})
    line_over = '{"id": "cust_too_many", "metadata": {"n": ' + "7" * (digits + 1) + "}}"

    report, reasons = import_lines(store, [line_under, line_over])

    assert (report.applied, report.rejected) == (1, 1), reasons
    assert f"{digits + 1} digits, too many to read" in reasons["line 2"]
    with Session(store) as session:
        stored = CustomerRepository(session).get("cust_digits")
    assert stored is not None and stored.to_dict()["metadata"] == {"n": longest, "m": -(2**64)}
    assert_invariants(store)


def test_event_id_of_255_characters_is_recorded_and_256_is_malformed(store: Engine) -> None:
    sessions = make_session_factory(store)
    customer = dumps(base_customer("cust_event_id"))

    result = ingest_delivery(sessions, envelope(customer, dumps("e" * 255)))
    with pytest.raises(MalformedDelivery, match="1 to 255 chars"):
        ingest_delivery(sessions, envelope(customer, dumps("e" * 256)))

    assert result.outcome is EventOutcome.APPLIED
    assert set(events(store)) == {"e" * 255}
    assert_invariants(store)


# --- hypothesis: mutations of valid customers and envelopes --------------------------------


_PIECES = st.sampled_from([
    "\\u0000", "\\ud800", "\x00", "\ufeff", "\u2028", '"', "\\", "{", "}", "[", "]", ",", ":",
    "1e400", "NaN", "-", "9" * 30, "null", "\udcff", "é", "\n", "\r",
])
_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
    st.just([]), st.just({}), st.just("2024-01-01T00:00:00.000Z"), st.just("1990-01-01"),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _replace(document: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(document, dict):
        return {**document, head: _replace(document[head], rest, new)}
    copy = list(document)
    copy[head] = _replace(copy[head], rest, new)
    return copy


@st.composite
def mutated_lines(draw: st.DrawFn, customer_id: str) -> bytes:
    """A valid customer, its values swapped and nested at random paths, then its text cut,
    doubled and sprinkled with hostile characters."""
    document: Any = base_customer(customer_id)
    for _ in range(draw(st.integers(0, 3))):
        paths = list(_paths(document))[1:]
        path = draw(st.sampled_from(paths))
        if draw(st.booleans()):
            new: Any = draw(_VALUES)
        else:
            depth = draw(st.integers(1, 80))
            new = nested(depth) if draw(st.booleans()) else {"a": nested(depth)}
        document = _replace(document, path, new)
    text = json.dumps(document, ensure_ascii=draw(st.booleans()))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["delete", "duplicate", "insert"]))
        span = draw(st.integers(1, 12))
        if kind == "delete":
            text = text[:at] + text[at + span:]
        elif kind == "duplicate":
            text = text[:at] + text[at:at + span] * 2 + text[at + span:]
        else:
            text = text[:at] + draw(_PIECES) + text[at:]
    return text.encode("utf-8", "surrogatepass")


FAST = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FAST
@given(data=st.data())
def test_random_mutations_through_read_records_and_import_records_never_escape(
    engine: Engine, data: st.DataObject
) -> None:
    empty(engine)
    count = data.draw(st.integers(1, 5))
    lines = [data.draw(mutated_lines(f"cust_h{i % 3}")) for i in range(count)]
    text = b"\n".join(lines).decode("utf-8", "surrogateescape")

    records = list(read_records(io.StringIO(text)))
    report = import_records(make_session_factory(engine), records, batch_size=2)

    assert report.total == len(records)
    assert report.rejected == len(report.rejections)
    assert all(r.location and r.reason.strip() for r in report.rejections)
    assert len(stored_ids(engine)) <= report.applied
    assert_invariants(engine)


@st.composite
def random_bodies(draw: st.DrawFn) -> bytes:
    event_id = draw(st.sampled_from(["evcus_a", "evcus_b", "evcus_c"]))
    event_type = draw(st.sampled_from(
        ["customer.created", "customer.updated", "customer.deleted", "customer.rewarded"]))
    customer = draw(mutated_lines(draw(st.sampled_from(["cust_a", "cust_b"]))))
    body = envelope(customer, dumps(event_id), event_type=dumps(event_type))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.binary(max_size=6)) + body[at + draw(st.integers(0, 6)):]
    return body


@FAST
@given(bodies=st.lists(random_bodies(), min_size=1, max_size=4))
def test_random_bodies_through_ingest_delivery_only_raise_malformed_delivery(
    engine: Engine, bodies: list[bytes]
) -> None:
    empty(engine)
    sessions = make_session_factory(engine)
    recorded = set()
    for body in bodies:
        try:
            result = ingest_delivery(sessions, body)
        except MalformedDelivery as exc:
            assert str(exc).strip()
            continue
        recorded.add(result.event_id)
        if result.outcome is EventOutcome.REJECTED:
            assert result.error and result.error.strip()

    rows = events(engine)
    assert set(rows) == recorded
    assert all(bytes(row.body) in bodies for row in rows.values())
    assert_invariants(engine)
