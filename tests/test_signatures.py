"""Webhook signatures as Voucherify documents them, and the receiver's time bound.

Voucherify signs a JSON payload with every whitespace character outside strings removed
(``../spec/webhooks.md``, "Signature"); the bytes on the wire may be indented. The first
part checks the rule itself with the documentation's test vectors and generated JSON; the
second sends real deliveries to a ``customer-store serve`` process on each database, with
two secrets configured (a rotation under way) and a short delivery time bound.
"""

from __future__ import annotations

import copy
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session

from models import Base
from models.events import WebhookEventRow
from models.signature import compact_json, parse_secrets, sign, verify_signature
from repository import CustomerRepository, make_engine
from repository.db.schema import upgrade_to_head
from tests.conftest import EXAMPLES
from tests.servers import Server, running_server
from tests.webhook_streams import envelope, iso

# --- the documented rule ----------------------------------------------------------------------

DOC_SECRET = b"secretKey"
#: Voucherify's test vectors: (signed text, signature) for the secret ``secretKey``.
DOC_VECTORS: dict[str, tuple[bytes, str]] = {
    "object": (
        b'{"a":1}', "a17d2ac229d1ebbb5f10e839c7985c4818e5986eab297f7e5979196d4d7d3ed2"
    ),
    "escaped-quote": (
        b'{"a\\"b":1}', "f7cf97814a03146abedb9793f56e1dec34f618f82d10395310d053f749483ffb"
    ),
}
PLAIN_STRING = b"  message  "
PLAIN_STRING_SIGNATURE = "53ff92957e1427ce23ad5bda9d0c5f2f4ff384d0806b83eeacb510c842d3a358"


def pretty(compact: bytes) -> bytes:
    """The same JSON, indented as a proxy or a dashboard resend might send it."""
    return json.dumps(json.loads(compact), indent=2, ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize(("signed", "signature"), DOC_VECTORS.values(), ids=DOC_VECTORS)
def test_documented_vectors_verify_compact_and_pretty_printed(
    signed: bytes, signature: str
) -> None:
    assert sign(signed, DOC_SECRET) == signature
    indented = pretty(signed)
    assert indented != signed and b"\n" in indented

    compact_match = verify_signature(signed, signature, [DOC_SECRET])
    pretty_match = verify_signature(indented, signature, [DOC_SECRET])

    assert compact_match is not None and compact_match.signed == "raw"
    assert pretty_match is not None and pretty_match.signed == "compact"


def test_documented_plain_string_is_signed_as_it_is_spaces_kept() -> None:
    assert sign(PLAIN_STRING, DOC_SECRET) == PLAIN_STRING_SIGNATURE
    match = verify_signature(PLAIN_STRING, PLAIN_STRING_SIGNATURE, [DOC_SECRET])
    assert match is not None and match.signed == "raw"
    # Not JSON, so its spaces are part of what is signed: without them it is another text.
    assert verify_signature(b"message", PLAIN_STRING_SIGNATURE, [DOC_SECRET]) is None
    assert verify_signature(b"  message ", PLAIN_STRING_SIGNATURE, [DOC_SECRET]) is None


@pytest.mark.parametrize(
    "tampered",
    [
        pytest.param(b'{"a\\"b": 2}', id="changed-value"),
        pytest.param(b'{"a\\"b ": 1}', id="whitespace-moved-into-the-key"),
        pytest.param(b'{"a\\\\b": 1}', id="escaped-quote-became-escaped-backslash"),
        pytest.param(b'{"a\\u0022b": 1}', id="same-character-other-escape"),
        pytest.param(b'{"a\\"B": 1}', id="changed-case-in-a-string"),
    ],
)
def test_tampered_variants_of_a_documented_vector_are_refused(tampered: bytes) -> None:
    _, signature = DOC_VECTORS["escaped-quote"]
    assert verify_signature(tampered, signature, [DOC_SECRET]) is None


def test_whitespace_inside_strings_escapes_and_non_ascii_are_kept_exactly() -> None:
    body = '{ "name" : "Zoë  \\"Q\\"\\t\\\\ x\\u00e9" ,\n\t"tags": [ "a b" , "" ] }'.encode()
    expected = '{"name":"Zoë  \\"Q\\"\\t\\\\ x\\u00e9","tags":["a b",""]}'.encode()
    assert compact_json(body) == expected


def test_hostile_bodies_compact_without_error() -> None:
    # Unterminated strings, lone escapes, runs of quotes: still linear, still bytes out.
    for body in (b'"' * 10_001, b'"\\' * 5_000, b'["\\"' * 3_000, b'{"a": "x', b"\\"):
        assert isinstance(compact_json(body), bytes)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    value=JSON_VALUES,
    indent=st.sampled_from([None, 0, 1, 2, "\t", " \r\n "]),
    ascii_only=st.booleans(),
)
def test_compacting_any_formatting_of_json_gives_its_compact_text(
    value: Any, indent: Any, ascii_only: bool
) -> None:
    """What ``JSON.stringify`` would produce (the signed text) from any indentation."""
    compact = json.dumps(value, separators=(",", ":"), ensure_ascii=ascii_only).encode()
    spaced = json.dumps(value, indent=indent, ensure_ascii=ascii_only).encode()
    assert compact_json(spaced) == compact
    assert compact_json(compact) == compact


def test_secrets_are_read_from_a_comma_separated_list() -> None:
    assert parse_secrets(" new-secret , old-secret ,") == [b"new-secret", b"old-secret"]
    assert parse_secrets("") == []
    assert parse_secrets(" , ") == []


def test_a_signature_by_any_configured_secret_is_matched_by_its_position() -> None:
    body = b'{\n  "a": 1\n}'
    secrets = [b"current", b"previous"]
    match = verify_signature(body, sign(b'{"a":1}', b"previous"), secrets)
    assert match is not None and (match.secret_index, match.signed) == (1, "compact")
    match = verify_signature(body, sign(body, b"current").upper(), secrets)
    assert match is not None and (match.secret_index, match.signed) == (0, "raw")
    assert verify_signature(body, sign(b'{"a":1}', b"retired"), secrets) is None


# --- a receiver in the middle of a secret rotation --------------------------------------------

CURRENT = f"whsec-current-{uuid.uuid4().hex}"
PREVIOUS = f"whsec-previous-{uuid.uuid4().hex}"
DELIVERY_TIMEOUT = 2.0


@dataclass(frozen=True)
class Receiving:
    server: Server
    engine: Engine

    def deliver(self, body: bytes, signed_text: bytes | None = None, *, secret: str = CURRENT):
        """POST ``body`` signed over ``signed_text`` (the body itself by default)."""
        signature = sign(body if signed_text is None else signed_text, secret.encode())
        return self.server.deliver(body, signature=signature)

    def events(self) -> dict[str, WebhookEventRow]:
        with Session(self.engine, expire_on_commit=False) as session:
            rows = session.scalars(select(WebhookEventRow)).all()
            session.expunge_all()
            return {row.event_id: row for row in rows}

    def event_count(self) -> int:
        with Session(self.engine) as session:
            return session.scalar(select(func.count()).select_from(WebhookEventRow)) or 0

    def customer_json(self, customer_id: str) -> Any:
        with Session(self.engine) as session:
            customer = CustomerRepository(session).get(customer_id)
            return None if customer is None else customer.to_dict()


@pytest.fixture(scope="class", params=["sqlite", "postgresql"])
def rotating_server(
    request: pytest.FixtureRequest, make_database: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Receiving]:
    url: str = make_database(request.param)
    upgrade_to_head(url)
    engine = make_engine(url)
    log_path = tmp_path_factory.mktemp(f"rotation-{request.param}") / "server.log"
    try:
        with running_server(
            url, log_path=log_path, secret=f" {CURRENT} , {PREVIOUS} ",
            extra_args=["--delivery-timeout", str(DELIVERY_TIMEOUT)],
        ) as server:
            yield Receiving(server, engine)
    finally:
        engine.dispose()


@pytest.fixture
def receiving(rotating_server: Receiving) -> Receiving:
    """The server of the class, its database emptied."""
    with rotating_server.engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(delete(table))
    return rotating_server


def example_customer(name: str = "03-customer.created-data.json") -> dict[str, Any]:
    customer: dict[str, Any] = json.loads(
        (EXAMPLES / "events" / name).read_text(encoding="utf-8")
    )["customer"]
    return customer


def delivery(customer: dict[str, Any], event_type: str = "customer.created") -> dict[str, Any]:
    return envelope(
        f"evcus_{uuid.uuid4().hex}", event_type, {"customer": customer}, iso_now(),
        entity_id=customer["id"],
    )


def iso_now() -> str:
    return iso(datetime.now(UTC))


def compact(document: Any) -> bytes:
    """The text Voucherify signs: ``JSON.stringify`` of the payload."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def indented(document: Any) -> bytes:
    return json.dumps(document, indent=4, ensure_ascii=False).encode("utf-8")


class TestReceiverSignatures:
    @pytest.mark.parametrize(("signed", "signature"), DOC_VECTORS.values(), ids=DOC_VECTORS)
    def test_documented_vectors_pass_the_signature_check_compact_and_pretty(
        self, receiving: Receiving, signed: bytes, signature: str
    ) -> None:
        # Signed with the documentation's secret, these are checked against it by a server
        # of its own below; here, signed with the configured secret over the same text.
        for body in (signed, pretty(signed)):
            reply = receiving.deliver(body, signed)
            # Authentic, but not an envelope: refused as a bad body (400), not as forged (401).
            assert reply.status == 400, (body, reply)
        assert receiving.event_count() == 0

    def test_pretty_printed_delivery_with_whitespace_in_strings_is_stored_as_it_arrived(
        self, receiving: Receiving
    ) -> None:
        customer = example_customer()
        customer["name"] = "Lionel \t Johnson  "
        customer["address"]["line_1"] = 'Hammer Street 123\n"Flat"  B, \\ Zoë'
        document = delivery(customer)
        body = indented(document)
        assert compact(document) != body

        reply = receiving.deliver(body, compact(document))

        assert reply.status == 200, reply
        assert reply.json()["outcome"] == "applied"
        row = receiving.events()[document["event"]["id"]]
        assert bytes(row.body) == body
        assert receiving.customer_json(customer["id"]) == customer
        assert f"event={document['event']['id']}" in receiving.server.log()

    @pytest.mark.parametrize(
        "tamper",
        [
            pytest.param(
                lambda body: body.replace(b'"Lionel Johnson"', b'"Lionel  Johnson"'),
                id="whitespace-moved-into-a-string",
            ),
            pytest.param(
                lambda body: body.replace(b"Hammer Street 123\\n", b"Hammer Street 123\\t"),
                id="changed-escape",
            ),
            pytest.param(
                lambda body: body.replace("Zoë".encode(), b"Zo\\u00eb"),
                id="non-ascii-re-escaped",
            ),
            pytest.param(
                lambda body: body.replace(b'"Nottingham"', b'"London"'),
                id="changed-value",
            ),
        ],
    )
    def test_tampered_delivery_is_refused_with_401_and_nothing_stored(
        self, receiving: Receiving, tamper: Any
    ) -> None:
        customer = example_customer()
        customer["address"]["line_1"] = "Hammer Street 123\nZoë"
        document = delivery(customer)
        body = indented(document)
        tampered = tamper(body)
        assert tampered != body

        reply = receiving.deliver(tampered, compact(document))

        assert reply.status == 401, reply
        assert receiving.event_count() == 0
        # The untampered body with the same signature is accepted.
        assert receiving.deliver(body, compact(document)).status == 200

    def test_previous_secret_is_accepted_during_rotation_and_logged_by_position(
        self, receiving: Receiving
    ) -> None:
        first, second = delivery(example_customer()), delivery(example_customer())
        customer = copy.deepcopy(example_customer())
        customer["id"] = "cust_rotationThird0000001"
        third = delivery(customer)

        by_previous = receiving.deliver(indented(first), compact(first), secret=PREVIOUS)
        by_current = receiving.deliver(indented(second), secret=CURRENT)
        by_retired = receiving.deliver(compact(third), secret="whsec-retired")

        assert (by_previous.status, by_current.status, by_retired.status) == (200, 200, 401)
        log = receiving.server.log()
        assert re.search(
            rf"event={first['event']['id']} .* secret=#2 signed=compact", log
        ), log
        assert re.search(rf"event={second['event']['id']} .* secret=#1 signed=raw", log), log
        for secret in (CURRENT, PREVIOUS):
            assert secret not in log

    def test_delivery_blocked_by_a_held_customer_lock_gets_503_in_time_then_applies(
        self, receiving: Receiving
    ) -> None:
        customer = example_customer()
        assert receiving.deliver(compact(delivery(customer))).status == 200
        updated = copy.deepcopy(customer)
        updated["name"] = "Lionel Updated"
        updated["updated_at"] = iso_now()
        document = delivery(updated, "customer.updated")
        body = compact(document)
        events_before = receiving.event_count()

        with Session(receiving.engine) as holder:
            # Another writer of the same customer, in a transaction that stays open.
            competing = copy.deepcopy(customer)
            competing["name"] = "Lionel Competing"
            competing["updated_at"] = iso_now()
            CustomerRepository(holder).upsert(competing)
            started = time.monotonic()
            reply = receiving.deliver(body)
            waited = time.monotonic() - started
            stored_meanwhile = receiving.event_count()
            holder.rollback()

        assert reply.status == 503, reply
        assert int(reply.headers["retry-after"]) > 0
        # Bounded by the time bound (plus the hard stop's grace), far under Voucherify's 10 s.
        assert DELIVERY_TIMEOUT * 0.5 <= waited < DELIVERY_TIMEOUT + 2.0, waited
        assert stored_meanwhile == events_before
        assert f"not recorded within {DELIVERY_TIMEOUT:g} s" in receiving.server.log()

        redelivered = receiving.deliver(body)

        assert redelivered.status == 200, redelivered
        assert redelivered.json()["outcome"] == "applied"
        assert receiving.customer_json(customer["id"])["name"] == "Lionel Updated"
        assert receiving.events()[document["event"]["id"]].deliveries == 1


def test_documented_vectors_are_accepted_by_a_server_keyed_with_the_documented_secret(
    make_database: Any, tmp_path: Path
) -> None:
    url: str = make_database("sqlite")
    upgrade_to_head(url)
    with running_server(url, log_path=tmp_path / "server.log", secret="secretKey") as server:
        for signed, signature in DOC_VECTORS.values():
            for body in (signed, pretty(signed)):
                assert server.deliver(body, signature=signature).status == 400, body
                assert server.deliver(body, signature=signature[::-1]).status == 401, body
        plain = server.deliver(PLAIN_STRING, signature=PLAIN_STRING_SIGNATURE)
        assert plain.status == 400, plain
        assert server.deliver(b"message", signature=PLAIN_STRING_SIGNATURE).status == 401
