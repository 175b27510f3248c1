"""``customer-store ingest FILE``: a line that cannot be stored is recorded as rejected and
the lines after it are processed, with a summary at the end (as ``import`` does).

The database refuses one customer through a trigger, so that the refusal comes from the
database itself whatever the store's own limits are.
"""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import text

from tests.test_forget import T0, Store, customer_of, delivery
from tests.test_forget import store as store  # the fixture, for this module

REFUSED_NAME = "Refused By The Database"

SQLITE_TRIGGER = [
    "CREATE TRIGGER test_refuse_name BEFORE INSERT ON customers "
    f"WHEN NEW.name = '{REFUSED_NAME}' "
    "BEGIN SELECT RAISE(ABORT, 'customer name refused by a test trigger'); END",
]
POSTGRES_TRIGGER = [
    "CREATE FUNCTION test_refuse_name() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    f"IF NEW.name = '{REFUSED_NAME}' THEN RAISE EXCEPTION "
    "'customer name refused by a test trigger' USING ERRCODE = 'check_violation'; "
    "END IF; RETURN NEW; END $$",
    "CREATE TRIGGER test_refuse_name BEFORE INSERT ON customers "
    "FOR EACH ROW EXECUTE FUNCTION test_refuse_name()",
]


def refuse_a_name(store: Store) -> None:
    sqlite = store.engine.dialect.name == "sqlite"
    with store.engine.begin() as connection:
        for statement in SQLITE_TRIGGER if sqlite else POSTGRES_TRIGGER:
            connection.execute(text(statement))


def stop_refusing(store: Store) -> None:
    with store.engine.begin() as connection:
        connection.execute(text(
            "DROP TRIGGER test_refuse_name" if store.engine.dialect.name == "sqlite"
            else "DROP TRIGGER test_refuse_name ON customers"
        ))


def test_ingest_records_a_line_the_database_refuses_as_rejected_and_goes_on(
    store: Store,
) -> None:
    refuse_a_name(store)
    first, refused, invalid, last = (
        customer_of("cust_IngestFirst01"),
        customer_of("cust_IngestRefused1", name=REFUSED_NAME),
        customer_of("cust_IngestInvalid1", birthdate="31/12/1990"),
        customer_of("cust_IngestLast0001"),
    )
    lines = [delivery("customer.created", {"customer": c}, T0, ascii_only=False)
             for c in (first, refused, invalid, last)]
    refused_event = json.loads(lines[1])["event"]["id"]

    ingested = store.cli("ingest", store.write_lines("events.jsonl", lines))

    assert ingested.returncode == 1, str(ingested)
    assert "Traceback" not in ingested.output, str(ingested)
    assert f"rejected line 2 (event {refused_event}): the database refused it: " \
        in ingested.output, str(ingested)
    assert "rejected line 3 " in ingested.output, str(ingested)
    summary = ingested.output.strip().splitlines()[-1]
    assert summary == "ingested 4 events: 2 applied, 2 rejected", str(ingested)
    assert store.customer(first["id"]) == first
    assert store.customer(last["id"]) == last
    assert store.customer(refused["id"]) is None
    outcome, body = store.events()[refused_event][1:]
    assert (outcome, body) == ("rejected", lines[1].encode())

    # Once the database takes the value, replay stores the customer.
    stop_refusing(store)
    replayed = store.cli("replay")

    assert "2 events: 1 applied, 1 rejected" in replayed.output, str(replayed)
    assert store.customer(refused["id"]) == refused


def test_ingest_goes_on_after_a_malformed_line_and_a_refused_update(store: Store) -> None:
    refuse_a_name(store)
    later = T0 + timedelta(hours=1)
    kept = customer_of("cust_IngestKept0001")
    lines = [
        "{not json",
        delivery("customer.updated",
                 {"customer": customer_of("cust_IngestNamed001", name=REFUSED_NAME)},
                 T0, ascii_only=True),
        delivery("customer.created", {"customer": kept}, later, ascii_only=False),
    ]

    ingested = store.cli("ingest", store.write_lines("events.jsonl", lines))

    assert ingested.returncode == 1, str(ingested)
    assert ingested.output.strip().splitlines()[-1] == (
        "ingested 3 events: 1 applied, 1 rejected, 1 malformed"
    ), str(ingested)
    assert store.customer(kept["id"]) == kept


def test_stats_keeps_duplicate_deliveries_apart_from_the_events_outcomes(store: Store) -> None:
    once, thrice = customer_of("cust_StatsOnce0001"), customer_of("cust_StatsThrice01")
    first = delivery("customer.created", {"customer": once}, T0, ascii_only=False)
    second = delivery("customer.created", {"customer": thrice}, T0, ascii_only=False)
    ingested = store.cli("ingest", store.write_lines(
        "events.jsonl", [first, second, second, first, second]
    ))
    assert ingested.returncode == 0, str(ingested)

    stats = store.cli("stats")

    assert stats.returncode == 0, str(stats)
    figures = json.loads(stats.output)
    assert figures["events"] == {"applied": 2}, str(stats)
    assert figures["duplicate_deliveries"] == 3, str(stats)
