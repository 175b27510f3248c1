"""Realistic streams of Voucherify webhook deliveries, and the state they must end in.

A stream holds, for each generated customer, a ``customer.created`` event, several
``customer.updated`` events with increasing ``updated_at``, for some a
``customer.deleted`` (whose payload carries the renamed ``source_id``
``<original>_deleted<ISO timestamp>``, as Voucherify sends it), events of other types that
carry a smaller customer (these must change nothing), events about customers that are
never created, and source_id handovers (a deleted customer's ``source_id`` taken by a new
customer). A share of the envelopes is in the retired v2018-08-01 form.

The expected final state is worked out here from the generated payloads alone, without
the product's code: for each customer, the newest ``customer.created``/``customer.updated``
payload by ``updated_at`` (else ``created_at``), unless the customer was deleted.

Used by the ingestion tests and by ``bench/ingest_rate.py``.
"""

from __future__ import annotations

import copy
import json
import random
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from repository import CustomerRepository

__all__ = [
    "CHANGE_TYPES",
    "NOISE_TYPES",
    "StreamEvent",
    "WebhookStream",
    "build_stream",
    "customers_for_deliveries",
    "envelope",
    "iso",
    "legacy_envelope",
    "split_round_robin",
]

CUSTOMER_EXAMPLES = Path(__file__).parent / "fixtures" / "voucherify" / "customers"
#: Examples outside the documented types (see tests/test_repository.py): not templates.
_INVALID_EXAMPLES = frozenset({
    "07-ariana-patel-customer-updated.json",
    "59-firstname-lastname-examine-vouchers-qualification.json",
})

CHANGE_TYPES = ("customer.created", "customer.updated", "customer.deleted")
#: Event types that carry a smaller customer and must not change the stored one.
NOISE_TYPES = (
    "customer.order.paid",
    "customer.rewarded",
    "customer.rewarded.loyalty_points",
    "customer.confirmed",
    "customer.loyalty.tier.upgraded",
    "customer.redemption.succeeded",
    "voucher.published",
    "redemption.succeeded",
)
PROJECT_ID = "proj_streamTest01"
_BASE_TIME = datetime(2024, 3, 1, 8, 0, 0, tzinfo=UTC)
_ALNUM = string.ascii_letters + string.digits


def iso(moment: datetime) -> str:
    """Voucherify's wire form: UTC, milliseconds, a literal Z."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def envelope(
    event_id: str,
    event_type: str,
    data: dict[str, Any],
    created_at: str,
    *,
    entity_id: str | None = None,
    sendout_id: str = "whs_0000000000000000",
    sent_at: str | None = None,
) -> dict[str, Any]:
    """A v2024-01-01 envelope around ``data``."""
    return {
        "id": sendout_id,
        "project_id": PROJECT_ID,
        "created_at": sent_at or created_at,
        "type": event_type,
        "data": data,
        "source": {
            "id": "wh_streamTest01",
            "object": "webhook",
            "target_url": "https://shop.example/webhooks/voucherify",
        },
        "event": {
            "id": event_id,
            "type": event_type,
            "created_at": created_at,
            "entity_id": entity_id,
            "group_id": f"v-{event_id[-18:]}",
            "event_source": {
                "channel": "API",
                "api_key": {"name": "backend", "app_id": "app-stream-test"},
            },
        },
    }


def legacy_envelope(
    event_id: str, event_type: str, data: dict[str, Any], created_at: str
) -> dict[str, Any]:
    """A retired v2018-08-01 envelope: the event id at the top, ``object: "event"``."""
    return {
        "id": event_id,
        "object": "event",
        "webhook_id": "wh_streamLegacy01",
        "project_id": PROJECT_ID,
        "created_at": created_at,
        "type": event_type,
        "data": data,
        "metadata": {"source": "API"},
    }


def _encode(document: dict[str, Any]) -> bytes:
    # One line per document (JSON Lines), UTF-8 as Voucherify sends it.
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class StreamEvent:
    event_id: str
    event_type: str
    customer_id: str
    legacy: bool
    body: bytes


@dataclass
class WebhookStream:
    """Events (one body each), and what ingesting all of them in any order must leave."""

    events: list[StreamEvent]
    #: Live customer id -> the JSON that must be stored for it.
    expected: dict[str, dict[str, Any]]
    #: Customers that were deleted: absent at the end.
    deleted_ids: set[str]
    #: source_id -> the id ``get_by_source_id`` must answer (``None``: no customer).
    source_id_answers: dict[str, str | None]
    #: (source_id, old holder id, new holder id) for each handover.
    handovers: list[tuple[str, str, str]]
    #: Customers that only appear in events of other types: never stored.
    noise_only_ids: set[str]
    #: Every customer payload by customer id, in generation (time) order.
    versions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def bodies(self) -> list[bytes]:
        return [event.body for event in self.events]

    def source_id_answers_of(self, repo: CustomerRepository) -> dict[str, str | None]:
        """What ``repo.get_by_source_id`` answers for each source_id of
        :attr:`source_id_answers` (to be compared with it)."""
        answers: dict[str, str | None] = {}
        for source_id in self.source_id_answers:
            found = repo.get_by_source_id(source_id)
            answers[source_id] = None if found is None else found.id
        return answers

    def deliveries(self, seed: int, *, max_copies: int = 3) -> list[bytes]:
        """Every event delivered 1 to ``max_copies`` times, all shuffled together."""
        rng = random.Random(seed)
        out = [
            event.body for event in self.events for _ in range(rng.randint(1, max_copies))
        ]
        rng.shuffle(out)
        return out

    def shards(self, count: int, seed: int, *, max_copies: int = 3) -> list[list[bytes]]:
        """The stream split for ``count`` concurrent consumers, with cross-shard copies.

        Each event lands in 1 to ``max_copies`` different shards at about the same
        relative position, so that consumers running side by side meet its copies at
        about the same moment (concurrent duplicates).
        """
        rng = random.Random(seed)
        order = list(self.events)
        rng.shuffle(order)
        shards: list[list[bytes]] = [[] for _ in range(count)]
        for event in order:
            copies = rng.randint(1, min(max_copies, count))
            for index in rng.sample(range(count), copies):
                shards[index].append(event.body)
        for shard in shards:  # a little local disorder, so the shards differ in order
            for start in range(0, len(shard), 8):
                window = shard[start : start + 8]
                rng.shuffle(window)
                shard[start : start + 8] = window
        return shards


def split_round_robin(deliveries: Sequence[bytes], count: int) -> list[list[bytes]]:
    """Deliveries dealt to ``count`` consumers in turn (every delivery exactly once)."""
    return [list(deliveries[index::count]) for index in range(count)]


def customers_for_deliveries(deliveries: int, *, seed: int = 0) -> int:
    """About how many customers make a stream of ``deliveries`` deliveries (1-3 copies)."""
    pilot = build_stream(200, seed=seed)
    per_customer = len(pilot.deliveries(seed)) / 200
    return max(1, round(deliveries / per_customer))


# -- generation ----------------------------------------------------------------------


def _templates() -> list[dict[str, Any]]:
    """Full customers from Voucherify's examples (summary, loyalty and referrals)."""
    found = []
    for path in sorted(CUSTOMER_EXAMPLES.glob("*.json")):
        if path.name in _INVALID_EXAMPLES:
            continue
        raw = json.loads(path.read_text(encoding="utf-8"))
        if (
            isinstance(raw, dict)
            and raw.get("object") == "customer"
            and {"summary", "loyalty", "referrals", "created_at", "email"} <= raw.keys()
        ):
            found.append(raw)
    if not found:
        raise RuntimeError(f"no full customer examples in {CUSTOMER_EXAMPLES}")
    return found


class _Ids:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._seen: set[str] = set()

    def make(self, prefix: str, length: int, alphabet: str = _ALNUM) -> str:
        while True:
            value = prefix + "".join(self._rng.choices(alphabet, k=length))
            if value not in self._seen:
                self._seen.add(value)
                return value


@dataclass
class _Draft:
    at: datetime
    event_id: str
    event_type: str
    customer_id: str
    data: dict[str, Any]


class _Generator:
    def __init__(self, seed: int, legacy_share: float) -> None:
        self.rng = random.Random(seed)
        self.ids = _Ids(self.rng)
        self.templates = _templates()
        self.legacy_share = legacy_share
        self.drafts: list[_Draft] = []
        self.versions: dict[str, list[dict[str, Any]]] = {}
        self.deleted: dict[str, str] = {}  # id -> renamed source_id
        self.source_ids: dict[str, str] = {}  # id -> original source_id

    def ms(self, low: int, high: int) -> timedelta:
        return timedelta(milliseconds=self.rng.randint(low, high))

    def event_id(self, event_type: str) -> str:
        prefix = "evvou_" if event_type.startswith("voucher.") else (
            "evred_" if event_type.startswith("redemption.") else "evcus_"
        )
        return self.ids.make(prefix, 18, "0123456789abcdef")

    def add(self, at: datetime, event_type: str, customer_id: str, data: dict[str, Any]) -> None:
        self.drafts.append(_Draft(at, self.event_id(event_type), event_type, customer_id, data))

    # A customer's life: created, updated a few times, perhaps deleted.
    def customer_life(
        self, number: int, start: datetime, *, source_id: str | None = None,
        delete: bool = False,
    ) -> tuple[str, datetime]:
        rng = self.rng
        template = self.templates[number % len(self.templates)]
        customer_id = self.ids.make("cust_", 24)
        first = rng.choice(["Ada", "Bob", "Zoë", "Łukasz", "Mei", "Jan", "Ana", "Omar"])
        last = rng.choice(["Smith", "Kowalski", "García", "Müller", "Nguyen", "O'Brien"])
        name = f"{first} {last} {number}"
        source_id = source_id or f"{first.lower()}.{number:05d}@shop.example"
        email = f"{first.lower()}.{last.lower()}@example.com"  # shared by several customers
        self.source_ids[customer_id] = source_id
        created_at = start
        created = self.payload(template, customer_id, source_id, name, email, created_at,
                               None, 0)
        self.versions[customer_id] = [created]
        self.add(created_at + self.ms(1, 40), "customer.created", customer_id,
                 {"customer": created})
        moment = created_at
        for version in range(1, rng.randint(2, 5)):
            moment = moment + self.ms(1_000, 6 * 3_600_000)
            updated = self.payload(template, customer_id, source_id, name, email, created_at,
                                   moment, version)
            self.versions[customer_id].append(updated)
            self.add(moment + self.ms(1, 40), "customer.updated", customer_id,
                     {"customer": updated})
        self.noise(customer_id, source_id, name, email, created_at, moment)
        if delete:
            renamed_at = moment + self.ms(1_000, 3_600_000)
            renamed = f"{source_id}_deleted{iso(renamed_at)}"
            last_version = copy.deepcopy(self.versions[customer_id][-1])
            last_version["source_id"] = renamed
            moment = renamed_at + self.ms(5, 30)
            last_version["updated_at"] = iso(moment)
            self.deleted[customer_id] = renamed
            self.add(moment + self.ms(20, 900), "customer.deleted", customer_id,
                     {"customer": last_version})
        return customer_id, moment

    def payload(
        self, template: dict[str, Any], customer_id: str, source_id: str, name: str,
        email: str, created_at: datetime, updated_at: datetime | None, version: int,
    ) -> dict[str, Any]:
        rng = self.rng
        customer = copy.deepcopy(template)
        customer.update(id=customer_id, source_id=source_id, name=name, email=email,
                        created_at=iso(created_at), object="customer")
        customer.pop("updated_at", None)
        customer.pop("metadata", None)
        if updated_at is not None:  # a customer.created payload has neither of these
            customer["updated_at"] = iso(updated_at)
            customer["metadata"] = {
                "version": version,
                "tier": rng.choice(["bronze", "silver", "gold", None]),
                "tags": rng.sample(["vip", "newsletter", "b2b", "app", "ünïcode ✓"], 2),
                "lifetime_micros": 2**66 + rng.randint(0, 10**6),
                "nested": {"consents": {"sms": rng.random() < 0.5}, "score": version / 4},
            }
        orders = rng.randint(0, 40) * version
        total = orders * rng.randint(1_000, 90_000_000)
        summary = customer.setdefault("summary", {})
        summary["orders"] = {
            "total_amount": total,
            "total_count": orders,
            "average_amount": total // orders if orders else 0,
            "last_order_amount": rng.randint(0, 10**6) if orders else 0,
            **({"last_order_date": iso(updated_at)} if updated_at and orders else {}),
        }
        points = rng.randint(-50, 50_000)
        campaigns: dict[str, dict[str, Any]] = {
            "Summer Campaign": {"points": points, "loyalty_tier": None,
                                "referred_customers": version},
        }
        if version % 2:
            campaigns["Programa de fidelización ☕"] = {
                "points": rng.randint(0, 900), "loyalty_tier": f"ltr_{version:04d}xx",
            }
        customer["loyalty"] = {"points": points, "referred_customers": version,
                               "campaigns": campaigns}
        customer["referrals"] = {
            "total": version,
            "campaigns": [
                {
                    "campaign_id": f"camp_ref{n:03d}",
                    "referrer_id": f"cust_referrer{n:03d}",
                    "related_object_id": f"r_{customer_id[-8:]}{n}",
                    "related_object_type": "redemption",
                    "date": iso(created_at + timedelta(minutes=n)),
                }
                for n in range(version)
            ],
        }
        return customer

    def noise(
        self, customer_id: str, source_id: str, name: str, email: str,
        start: datetime, end: datetime,
    ) -> None:
        """Events of other types, carrying a smaller customer that differs from the full one."""
        for _ in range(self.rng.choice([0, 1, 1, 2])):
            at = start + (end - start) * self.rng.random() + self.ms(1, 999)
            event_type = self.rng.choice(NOISE_TYPES)
            small = {
                "id": customer_id,
                "name": f"{name} (from {event_type})",
                "email": email,
                "source_id": source_id,
                "metadata": {"acquisition_channel": "Website", "noise": True},
                "object": "customer",
            }
            data: dict[str, Any] = {"customer": small}
            if "order" in event_type or "redemption" in event_type:
                data["order"] = {"id": self.ids.make("ord_", 16), "status": "PAID",
                                 "amount": self.rng.randint(100, 99_999), "object": "order",
                                 "customer_id": customer_id}
            if "voucher" in event_type or "rewarded" in event_type:
                data["voucher"] = {"code": self.ids.make("", 8), "object": "voucher"}
            if "tier" in event_type:
                data["loyalty_tier_from"] = {"id": "ltr_silver", "object": "loyalty_tier"}
                data["loyalty_tier_to"] = {"id": "ltr_gold", "object": "loyalty_tier"}
            self.add(at, event_type, customer_id, data)

    def finish(self) -> list[StreamEvent]:
        events = []
        for draft in sorted(self.drafts, key=lambda d: (d.at, d.event_id)):
            created_at = iso(draft.at)
            legacy = self.rng.random() < self.legacy_share
            if legacy:
                document = legacy_envelope(draft.event_id, draft.event_type, draft.data,
                                           created_at)
            else:
                document = envelope(
                    draft.event_id, draft.event_type, draft.data, created_at,
                    entity_id=draft.customer_id,
                    sendout_id=self.ids.make("whs_", 18, "0123456789abcdef"),
                    sent_at=iso(draft.at + self.ms(1, 250)),
                )
            events.append(StreamEvent(draft.event_id, draft.event_type, draft.customer_id,
                                      legacy, _encode(document)))
        return events


def build_stream(
    customers: int,
    *,
    seed: int = 0,
    deleted_share: float = 0.2,
    handovers: int | None = None,
    legacy_share: float = 0.1,
    unknown_customers: int | None = None,
) -> WebhookStream:
    """A stream about ``customers`` customers (plus the new holders of handed-over ids)."""
    if customers < 2:
        raise ValueError("a stream needs at least 2 customers (one handover)")
    gen = _Generator(seed, legacy_share)
    handovers = max(1, customers // 30) if handovers is None else handovers
    handovers = min(handovers, customers)
    deleted_count = max(handovers, round(customers * deleted_share))
    handover_pairs: list[tuple[str, str, str]] = []
    for number in range(customers):
        start = _BASE_TIME + timedelta(seconds=37 * number) + gen.ms(0, 999)
        delete = number < deleted_count
        customer_id, end = gen.customer_life(number, start, delete=delete)
        if number < handovers:
            source_id = gen.source_ids[customer_id]
            new_id, _ = gen.customer_life(
                customers + number, end + gen.ms(50, 60_000), source_id=source_id
            )
            handover_pairs.append((source_id, customer_id, new_id))
    unknown = set()
    count = max(1, customers // 20) if unknown_customers is None else unknown_customers
    for number in range(count):
        customer_id = gen.ids.make("cust_", 24)
        unknown.add(customer_id)
        moment = _BASE_TIME + timedelta(minutes=number)
        gen.noise(customer_id, f"ghost.{number}@shop.example", f"Ghost {number}",
                  "ghost@example.com", moment, moment + timedelta(hours=1))
    events = gen.finish()
    if len({event.event_id for event in events}) != len(events):
        raise AssertionError("event ids must be unique")
    return WebhookStream(
        events=events,
        expected=_expected_state(gen.versions, set(gen.deleted)),
        deleted_ids=set(gen.deleted),
        source_id_answers=_expected_source_ids(
            gen.versions, gen.source_ids, gen.deleted, handover_pairs, unknown, events
        ),
        handovers=handover_pairs,
        noise_only_ids=unknown,
        versions=gen.versions,
    )


def _version_key(customer: dict[str, Any]) -> str:
    # Canonical wire strings sort as the instants they name.
    value = customer.get("updated_at") or customer["created_at"]
    assert isinstance(value, str)
    return value


def _expected_state(
    versions: dict[str, list[dict[str, Any]]], deleted: set[str]
) -> dict[str, dict[str, Any]]:
    expected = {}
    for customer_id, payloads in versions.items():
        if customer_id in deleted:
            continue
        keys = [_version_key(p) for p in payloads]
        if len(set(keys)) != len(keys):
            raise AssertionError(f"{customer_id}: two versions share a time; newest is ambiguous")
        expected[customer_id] = copy.deepcopy(max(payloads, key=_version_key))
    return expected


def _expected_source_ids(
    versions: dict[str, list[dict[str, Any]]],
    source_ids: dict[str, str],
    deleted: dict[str, str],
    handovers: Iterable[tuple[str, str, str]],
    unknown: set[str],
    events: list[StreamEvent],
) -> dict[str, str | None]:
    answers: dict[str, str | None] = {}
    for customer_id in versions:
        original = source_ids[customer_id]
        if customer_id in deleted:
            answers.setdefault(original, None)
            answers[deleted[customer_id]] = None
        else:
            if answers.get(original) is not None:
                raise AssertionError(f"two live customers hold {original!r}")
            answers[original] = customer_id
    for source_id, _old, new in handovers:
        if answers[source_id] != new:
            raise AssertionError(f"handover of {source_id!r} not reflected")
    for event in events:
        if event.customer_id in unknown:
            customer = json.loads(event.body)["data"]["customer"]
            answers[customer["source_id"]] = None
    return answers
