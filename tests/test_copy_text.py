"""Bulk writes on PostgreSQL go through ``COPY``'s text format, written by the store itself
(``repository.store.pg_copy``), in an import's worker processes too. Whatever a value holds, it must
read back as it was, as a single upsert (plain ``INSERT`` statements) stores it."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from models import Base
from models.validation import parse_customer
from repository import CustomerRepository, make_session_factory
from repository.importing import import_records
from repository.importing.records import read_records
from repository.store.mapping import CUSTOMER_COLUMNS, customer_to_rows
from repository.store.pg_copy import copy_line, copy_ready, copy_text

#: Strings COPY's text format must escape or could mistake for something else.
AWKWARD = ["a\tb", "line\nbreak", "carriage\rreturn", "back\\slash", "\\N", "", "\\.", "\\t"]


def awkward_customer(number: int) -> dict[str, Any]:
    text = AWKWARD[number % len(AWKWARD)]
    return {
        "id": f"cust_copy_{number:03d}",
        "source_id": text,
        "name": f"{text} Lee",
        "description": text,
        "email": None,
        "metadata": {"note": text, text: [text, 1.5, None], "nested": {"k": "\\\t\n"}},
        "created_at": "2024-01-01T00:00:00.000Z",
        "updated_at": "2024-02-01T10:20:30.456Z",
        "address": {"city": text, "line_1": "", "line_2": None, "country": "PL"},
        "loyalty": {"points": 5, "campaigns": {f"camp\t{text}": {"points": 1, "x": text}}},
        "referrals": {"total": 1, "campaigns": [
            {"campaign_id": text, "referrer_id": "r\\1", "date": "2024-03-01T00:00:00.000Z",
             "unknown": {"t": text}},
        ]},
        "unknown_key": text,
        "object": "customer",
    }


def clear(session: Session) -> None:
    for table in reversed(Base.metadata.sorted_tables):
        session.execute(table.delete())
    session.commit()


@pytest.mark.parametrize("workers", [0, 1])
def test_awkward_text_imported_reads_back_as_a_single_upsert_stores_it(
    engine: Engine, session: Session, workers: int
) -> None:
    customers = [awkward_customer(n) for n in range(len(AWKWARD))]
    repo = CustomerRepository(session)
    for payload in customers:
        repo.upsert(payload)
    session.commit()
    upserted = {c["id"]: repo.get_json(c["id"]) for c in customers}
    clear(session)

    text = "".join(json.dumps(c) + "\n" for c in customers)
    report = import_records(
        make_session_factory(engine),
        read_records(io.StringIO(text), decode_lines=workers == 0),
        batch_size=3,
        workers=workers,
    )

    assert (report.applied, report.rejected) == (len(customers), 0)
    imported = {c["id"]: CustomerRepository(session).get_json(c["id"]) for c in customers}
    assert imported == upserted
    for payload in customers:
        stored = json.loads(imported[payload["id"]] or "null")
        assert stored["name"] == payload["name"]
        assert stored["metadata"] == payload["metadata"]
        assert stored["unknown_key"] == payload["unknown_key"]
        assert stored["referrals"]["campaigns"][0]["unknown"] == {"t": payload["unknown_key"]}
    clear(session)


def test_a_line_of_copy_text_escapes_the_characters_copy_reads_specially() -> None:
    customer = parse_customer(awkward_customer(0) | {"description": "tab\there\\N"})
    line = copy_ready(customer_to_rows(customer)).customer.decode()

    fields = line.removesuffix("\n").split("\t")
    assert len(fields) == len(CUSTOMER_COLUMNS)
    values = dict(zip(CUSTOMER_COLUMNS, fields, strict=True))
    assert values["description"] == "tab\\there\\\\N"
    assert values["email"] == "\\N"  # null
    assert "\n" not in line.removesuffix("\n")


def test_a_row_with_no_text_to_escape_is_written_as_it_is() -> None:
    line = copy_line(["a", "b", "c", "d"], {"a": "plain", "b": 12, "c": None, "d": ""})

    assert line == "plain\t12\t\\N\t\n"


def test_copy_refuses_a_schema_translate_map_rather_than_write_beside_it(
    engine: Engine,
) -> None:
    # COPY names its table as it is: the map the other statements apply would be missed.
    translated = engine.execution_options(schema_translate_map={None: "elsewhere"})
    with translated.connect() as connection, pytest.raises(ValueError, match="translate"):
        copy_text(connection, "customers", CUSTOMER_COLUMNS, [b"never sent\n"])
