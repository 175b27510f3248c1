"""The mapping between the documented customer shape and the relational rows.

A layout says, for every documented key, where its value lives (a column, a nested
object, a JSON document column or a child table) and which bit of ``absent_mask`` /
``null_mask`` records that the key was absent or an object was ``null``. Keys the layout
does not name go to the row's ``extra`` JSON, under the dotted path of their object.

Bit numbers are stored in every row: never renumber them. A new documented key takes a
new bit (and a migration moves it out of ``extra``).

Besides the layout's columns a customer row holds search keys derived from it
(``email_folded``, ``name_folded``: see :func:`fold`); they are written with every row and
never read back into the customer.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from pydantic import BaseModel

from models.customer import (
    Address,
    Assets,
    Customer,
    GiftSummary,
    Loyalty,
    LoyaltyCampaign,
    LoyaltyCardSummary,
    OrdersSummary,
    RedemptionsSummary,
    ReferralEntry,
    Referrals,
    Summary,
)

__all__ = [
    "ADDRESS_COLUMNS",
    "CAMPAIGN_COLUMNS",
    "CAMPAIGN_KEY_BYTES",
    "CUSTOMER_COLUMNS",
    "FOLD_LIMIT",
    "REFERRAL_COLUMNS",
    "SEARCH_KEY_COLUMNS",
    "CustomerRows",
    "campaign_key",
    "campaign_name",
    "customer_from_rows",
    "customer_to_rows",
    "customer_value_from_rows",
    "email_key",
    "fold",
    "name_key",
]


@dataclass(frozen=True)
class Leaf:
    """A scalar stored in ``column``."""

    column: str
    bit: int


@dataclass(frozen=True)
class Document:
    """Arbitrary JSON stored whole in a JSON column (``null`` is SQL NULL)."""

    column: str
    bit: int


@dataclass(frozen=True)
class Child:
    """An object or array stored in a child table."""

    bit: int


@dataclass(frozen=True)
class Node:
    """A nested object whose keys are laid out in the same row."""

    bit: int
    fields: dict[str, Spec]


Spec = Leaf | Document | Child | Node


def _leaves(columns: Sequence[str], prefix: str = "", first_bit: int = 0) -> dict[str, Spec]:
    return {name: Leaf(prefix + name, first_bit + i) for i, name in enumerate(columns)}


_COUNTERS = (
    "total_redeemed", "total_failed", "total_succeeded",
    "total_rolled_back", "total_rollback_failed", "total_rollback_succeeded",
)

CUSTOMER_LAYOUT: dict[str, Spec] = {
    "id": Leaf("id", 0),
    "source_id": Leaf("source_id", 1),
    "name": Leaf("name", 2),
    "description": Leaf("description", 3),
    "email": Leaf("email", 4),
    "phone": Leaf("phone", 5),
    "birthday": Leaf("birthday", 6),
    "birthdate": Leaf("birthdate", 7),
    "address": Child(8),
    "metadata": Document("metadata", 9),
    "summary": Node(10, {
        "redemptions": Node(11, {
            **_leaves(_COUNTERS, "redemptions_", 12),
            "gift": Node(18, _leaves(("redeemed_amount", "amount_to_go"), "gift_", 19)),
            "loyalty_card": Node(21, _leaves(
                ("redeemed_points", "points_to_go"), "loyalty_card_", 22)),
        }),
        "orders": Node(24, _leaves(
            ("total_amount", "total_count", "average_amount", "last_order_amount",
             "last_order_date"), "orders_", 25)),
    }),
    "loyalty": Node(30, {
        **_leaves(("points", "referred_customers"), "loyalty_", 31),
        "campaigns": Child(33),
    }),
    "referrals": Node(34, {"total": Leaf("referrals_total", 35), "campaigns": Child(36)}),
    "system_metadata": Document("system_metadata", 37),
    "created_at": Leaf("created_at", 38),
    "updated_at": Leaf("updated_at", 39),
    "assets": Node(40, _leaves(("cockpit_url", "cockpit_preference_center_url"), "assets_", 41)),
    "object": Leaf("object", 43),
}
ADDRESS_LAYOUT = _leaves(("city", "state", "line_1", "line_2", "country", "postal_code"))
CAMPAIGN_LAYOUT = _leaves(("points", "loyalty_tier", "referred_customers"))
REFERRAL_LAYOUT = _leaves(
    ("campaign_id", "referrer_id", "related_object_id", "related_object_type", "date")
)


#: The model of each nested object laid out in its parent's row (a ``Node``), by parent.
_NODE_MODELS: dict[type[BaseModel], dict[str, type[BaseModel]]] = {
    Customer: {"summary": Summary, "loyalty": Loyalty, "referrals": Referrals,
               "assets": Assets},
    Summary: {"redemptions": RedemptionsSummary, "orders": OrdersSummary},
    RedemptionsSummary: {"gift": GiftSummary, "loyalty_card": LoyaltyCardSummary},
}


def _columns(layout: Mapping[str, Spec]) -> list[str]:
    out: list[str] = []
    for spec in layout.values():
        if isinstance(spec, (Leaf, Document)):
            out.append(spec.column)
        elif isinstance(spec, Node):
            out.extend(_columns(spec.fields))
    return out


_CUSTOMER_LEAVES = _columns(CUSTOMER_LAYOUT)
_ADDRESS_LEAVES = _columns(ADDRESS_LAYOUT)
_CAMPAIGN_LEAVES = _columns(CAMPAIGN_LAYOUT)
_REFERRAL_LEAVES = _columns(REFERRAL_LAYOUT)
_BOOKKEEPING = ["absent_mask", "extra"]
#: Search keys derived from the row (see :func:`fold`), never part of the customer's JSON.
SEARCH_KEY_COLUMNS = ("email_folded", "name_folded")
CUSTOMER_COLUMNS = [
    *_CUSTOMER_LEAVES, "version_at", "null_mask", *_BOOKKEEPING, *SEARCH_KEY_COLUMNS
]
ADDRESS_COLUMNS = ["customer_id", *_ADDRESS_LEAVES, *_BOOKKEEPING]
CAMPAIGN_COLUMNS = [
    "customer_id", "campaign", "campaign_name", *_CAMPAIGN_LEAVES, *_BOOKKEEPING
]
REFERRAL_COLUMNS = ["customer_id", "position", *_REFERRAL_LEAVES, *_BOOKKEEPING]


@dataclass
class CustomerRows:
    """One customer as rows of each table, ready for ``insert().values(...)``."""

    customer: dict[str, Any]
    address: dict[str, Any] | None = None
    campaigns: list[dict[str, Any]] = field(default_factory=list)
    referrals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.customer["id"])

    @property
    def version_at(self) -> datetime | None:
        value: datetime | None = self.customer["version_at"]
        return value


class _Encoding:
    """What laying out one row collects: the row, its masks, unknown keys, child values."""

    __slots__ = ("absent", "children", "extra", "null", "row")

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row
        self.absent = 0
        self.null = 0
        self.extra: dict[str, Any] = {}
        self.children: dict[str, Any] = {}


def customer_to_rows(customer: Customer) -> CustomerRows:
    """Lay a validated customer out as rows."""
    enc = _Encoding(dict.fromkeys(_CUSTOMER_LEAVES))
    _encode(_CUSTOMER_LEVEL, customer, enc)
    row = enc.row
    row["version_at"] = row["updated_at"] if row["updated_at"] is not None else row["created_at"]
    row.update(absent_mask=enc.absent, null_mask=enc.null, extra=enc.extra or None)
    row.update(email_folded=email_key(row["email"]), name_folded=name_key(row["name"]))
    customer_id = row["id"]

    rows = CustomerRows(customer=row)
    address = enc.children.get("address")
    if address is not None:
        rows.address = _flat_row(_ADDRESS_LEVEL, _ADDRESS_LEAVES, address, customer_id=customer_id)
    campaigns = enc.children.get("loyalty.campaigns") or {}
    rows.campaigns = [
        _flat_row(
            _CAMPAIGN_LEVEL, _CAMPAIGN_LEAVES, entry, customer_id=customer_id,
            **_campaign_columns(name),
        )
        for name, entry in campaigns.items()
    ]
    referrals = enc.children.get("referrals.campaigns") or []
    rows.referrals = [
        _flat_row(_REFERRAL_LEVEL, _REFERRAL_LEAVES, entry, customer_id=customer_id, position=index)
        for index, entry in enumerate(referrals)
    ]
    return rows


#: Longest search key, in characters: at four bytes a character a key stays within
#: PostgreSQL's B-tree entry limit (2,704 bytes) however much folding lengthened the text
#: (one character can fold to 18, U+FDFA).
FOLD_LIMIT = 600


def fold(text: str) -> str:
    """``text`` as search compares it, ignoring case and width, the same in any database.

    Unicode full case folding (``ß`` is ``ss``, a final sigma is a sigma) between two NFKC
    normalisations: the first makes canonically equal spellings (``é`` composed or as ``e``
    and an accent) and compatibility forms (full-width letters, U+FF21 on; ligatures such as
    U+FB01) the same letters, which casefold alone does not; the second puts casefold's
    output, which can change under normalisation, back into NFKC, so that
    ``fold(fold(x)) == fold(x)``. The databases' own ``lower()`` is not used: SQLite's folds
    only ASCII, PostgreSQL's follows the database's locale, neither does full case folding.
    The fold is language-neutral: Turkish dotted and dotless i stay distinct letters.
    """
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def email_key(email: str | None) -> str | None:
    """``customers.email_folded``: the fold of ``email``, for equality. A fold longer than
    :data:`FOLD_LIMIT` keeps its start and gains a digest of the whole, so equal keys still
    mean equal folds."""
    if email is None:
        return None
    folded = fold(email)
    if len(folded) <= FOLD_LIMIT:
        return folded
    return _with_digest(folded[:FOLD_LIMIT], folded)


#: Longest campaign name, in UTF-8 bytes, that is its own key: beside a customer id (at most
#: 1,000 bytes) a key stays within PostgreSQL's B-tree entry limit (2,704 bytes).
CAMPAIGN_KEY_BYTES = 1200


def campaign_key(name: str) -> str:
    """``customer_loyalty_campaigns.campaign``: the campaign name (a key of
    ``loyalty.campaigns``) as the primary key holds it. A name of up to
    :data:`CAMPAIGN_KEY_BYTES` is its own key; a longer one keeps its start within that
    many bytes and gains a digest of the whole, which makes its key longer than any name
    that is its own key, so distinct names keep distinct keys."""
    if len(name) <= CAMPAIGN_KEY_BYTES // 4:
        return name
    encoded = name.encode("utf-8")
    if len(encoded) <= CAMPAIGN_KEY_BYTES:
        return name
    return _with_digest(encoded[:CAMPAIGN_KEY_BYTES].decode("utf-8", "ignore"), name)


def _campaign_columns(name: str) -> dict[str, str | None]:
    key = campaign_key(name)
    return {"campaign": key, "campaign_name": None if key == name else name}


def campaign_name(row: Mapping[str, Any]) -> str:
    """The campaign name of a ``customer_loyalty_campaigns`` row (see :func:`campaign_key`)."""
    name: str = row["campaign_name"] if row["campaign_name"] is not None else row["campaign"]
    return name


def _with_digest(start: str, whole: str) -> str:
    """``start`` of a text too long for an index, and the SHA-256 digest of ``whole``."""
    return f"{start}#{hashlib.sha256(whole.encode('utf-8')).hexdigest()}"


def name_key(name: str | None) -> str | None:
    """``customers.name_folded``: the fold of ``name`` cut at :data:`FOLD_LIMIT`, for
    prefixes of up to that many characters."""
    return None if name is None else fold(name)[:FOLD_LIMIT]


def customer_from_rows(
    customer: Mapping[Any, Any],
    address: Mapping[Any, Any] | None,
    campaigns: Sequence[Mapping[Any, Any]],
    referrals: Sequence[Mapping[Any, Any]],
) -> Customer:
    """Reassemble the documented shape from a customer's rows."""
    # What was stored was validated on the way in: build the models without checking again.
    return cast(Customer, _rebuild(_as_model, customer, address, campaigns, referrals))


def customer_value_from_rows(
    customer: Mapping[Any, Any],
    address: Mapping[Any, Any] | None,
    campaigns: Sequence[Mapping[Any, Any]],
    referrals: Sequence[Mapping[Any, Any]],
) -> dict[str, Any]:
    """The documented shape as JSON values (date-times and dates as Python objects, for
    :func:`models.wire.json_text`), keys in the models' order: what ``to_dict`` of
    :func:`customer_from_rows` gives, without building the models."""
    value: dict[str, Any] = _rebuild(_as_value, customer, address, campaigns, referrals)
    return value


#: Makes one object of the shape from its documented keys' values (in the layout's order)
#: and its unknown keys: a model, or the JSON values.
_Build = Callable[[type[BaseModel], dict[str, Any], Mapping[str, Any] | None], Any]


def _rebuild(
    build: _Build,
    customer: Mapping[Any, Any],
    address: Mapping[Any, Any] | None,
    campaigns: Sequence[Mapping[Any, Any]],
    referrals: Sequence[Mapping[Any, Any]],
) -> Any:
    children = {
        "address": _flat_value(build, _ADDRESS_LEVEL, address)
        if address is not None else None,
        "loyalty.campaigns": {
            campaign_name(row): _flat_value(build, _CAMPAIGN_LEVEL, row)
            for row in campaigns
        },
        "referrals.campaigns": [
            _flat_value(build, _REFERRAL_LEVEL, row)
            for row in sorted(referrals, key=lambda r: r["position"])
        ],
    }
    return _decode(
        build, _CUSTOMER_LEVEL, customer, customer["absent_mask"], customer["null_mask"],
        customer["extra"] or {}, children,
    )


def _as_value(
    model: type[BaseModel], values: dict[str, Any], unknown: Mapping[str, Any] | None
) -> dict[str, Any]:
    if unknown:
        values.update(unknown)
    return values


def _as_model(
    model: type[BaseModel], values: dict[str, Any], unknown: Mapping[str, Any] | None
) -> BaseModel:
    """What ``model.model_construct(**values, **unknown)`` makes (the given keys marked as
    set, so that ``to_dict`` leaves the others out; unknown keys kept), without its loop
    over aliases and defaults, which none of the shape's models has but ``None``."""
    instance = model.__new__(model)
    _set_attribute(instance, "__dict__", {**_FIELDS_UNSET[model], **values})
    _set_attribute(instance, "__pydantic_fields_set__", set(values))
    _set_attribute(instance, "__pydantic_extra__", dict(unknown) if unknown else {})
    _set_attribute(instance, "__pydantic_private__", None)
    return instance


def _unset_fields(model: type[BaseModel]) -> dict[str, Any]:
    """Each field of ``model`` at its default, in the model's order; refuses a model that
    :func:`_as_model` would build wrong."""
    if model.__pydantic_post_init__ or model.__private_attributes__:
        raise TypeError(f"{model.__name__} needs model_construct")
    fields = {}
    for name, info in model.__pydantic_fields__.items():
        if info.alias not in (None, name) or info.validation_alias not in (None, name):
            raise TypeError(f"{model.__name__}.{name} has an alias: it needs model_construct")
        # A required field (the id) is always stored; it keeps its place in the order.
        fields[name] = None if info.is_required() else info.get_default()
    if any(value is not None for value in fields.values()):
        raise TypeError(f"{model.__name__} has a default other than None")
    return fields


_set_attribute = object.__setattr__


def _encode(level: _Level, value: Mapping[str, Any] | BaseModel, enc: _Encoding) -> None:
    fields: Mapping[str, Any]
    present: Collection[str]
    if isinstance(value, BaseModel):
        # Validated input: its fields' values, which of them were given, its unknown keys.
        fields, present = value.__dict__, value.__pydantic_fields_set__
        unknown = value.__pydantic_extra__
    else:
        fields = present = value
        unknown = {k: v for k, v in value.items() if k not in level.keys}
    row = enc.row
    absent = null = 0
    for key, kind, column, mask, nested, child in level.entries:
        if key not in present:
            absent |= mask
            continue
        item = fields[key]
        if kind is _LEAF:
            row[column] = item
        elif item is None:
            null |= mask
        elif kind is _NODE:
            _encode(nested, item, enc)
        else:
            enc.children[child] = item
    enc.absent |= absent
    enc.null |= null
    if unknown:
        enc.extra[level.path] = dict(unknown)


def _decode(
    build: _Build, level: _Level, row: Mapping[Any, Any], absent: int, null: int,
    extra: Mapping[str, Any], children: Mapping[str, Any],
) -> Any:
    out: dict[str, Any] = {}
    for key, kind, column, mask, nested, child in level.entries:
        if absent & mask:
            continue
        if kind is _LEAF:
            out[key] = row[column]
        elif null & mask:
            out[key] = None
        elif kind is _NODE:
            out[key] = _decode(build, nested, row, absent, null, extra, children)
        else:
            out[key] = children[child]
    return build(level.model, out, extra.get(level.path))


def _flat_row(
    level: _Level, leaves: list[str], value: Mapping[str, Any] | BaseModel, **keys: Any
) -> dict[str, Any]:
    enc = _Encoding(dict.fromkeys(leaves))
    _encode(level, value, enc)
    return {**keys, **enc.row, "absent_mask": enc.absent, "extra": enc.extra.get("") or None}


def _flat_value(build: _Build, level: _Level, row: Mapping[Any, Any]) -> Any:
    extra = {"": row["extra"]} if row["extra"] else {}
    return _decode(build, level, row, row["absent_mask"], 0, extra, {})


# -- layouts compiled for the walks ------------------------------------------------------

_LEAF, _NODE, _CHILD = "leaf", "node", "child"


@dataclass(frozen=True)
class _Level:
    """One object of a layout as the walks read it: per key, its kind, column (leaves),
    mask bit, nested level (nodes) and dotted path (children)."""

    model: type[BaseModel]
    #: Dotted path of the object: where its unknown keys are kept in ``extra``.
    path: str
    entries: tuple[tuple[str, str, str, int, _Level, str], ...]
    keys: frozenset[str]


_NOTHING = _Level(BaseModel, "", (), frozenset())  # the nested level of leaves and children


def _level(layout: Mapping[str, Spec], model: type[BaseModel], path: str = "") -> _Level:
    entries = []
    for key, spec in layout.items():
        mask, dotted = 1 << spec.bit, f"{path}.{key}".lstrip(".")
        if isinstance(spec, (Leaf, Document)):
            entries.append((key, _LEAF, spec.column, mask, _NOTHING, dotted))
        elif isinstance(spec, Node):
            nested = _level(spec.fields, _NODE_MODELS[model][key], dotted)
            entries.append((key, _NODE, "", mask, nested, dotted))
        else:
            entries.append((key, _CHILD, "", mask, _NOTHING, dotted))
    return _Level(model, path, tuple(entries), frozenset(layout))


_CUSTOMER_LEVEL = _level(CUSTOMER_LAYOUT, Customer)
_ADDRESS_LEVEL = _level(ADDRESS_LAYOUT, Address)
_CAMPAIGN_LEVEL = _level(CAMPAIGN_LAYOUT, LoyaltyCampaign)
_REFERRAL_LEVEL = _level(REFERRAL_LAYOUT, ReferralEntry)


def _models(level: _Level) -> Iterator[type[BaseModel]]:
    yield level.model
    for _, kind, _, _, nested, _ in level.entries:
        if kind is _NODE:
            yield from _models(nested)


_FIELDS_UNSET = {
    model: _unset_fields(model)
    for root in (_CUSTOMER_LEVEL, _ADDRESS_LEVEL, _CAMPAIGN_LEVEL, _REFERRAL_LEVEL)
    for model in _models(root)
}
