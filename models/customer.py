"""The documented shape: Voucherify's "Customer With Summary Loyalty Referrals".

Every model keeps unknown keys (Voucherify adds fields over time) and remembers which
keys were sent, so that :meth:`Customer.to_dict` gives back exactly the JSON that came
in: absent keys stay absent, ``null`` stays ``null``. Types are strict: no string to
integer coercion, no fractions in integer fields.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from models.deprecation import warn_renamed
from models.ids import CustomerId
from models.wire import Int64, WireDate, WireDateTime

__all__ = [
    "Address",
    "Assets",
    "Customer",
    "GiftSummary",
    "Loyalty",
    "LoyaltyCampaign",
    "LoyaltyCardSummary",
    "OrdersSummary",
    "RedemptionsSummary",
    "ReferralEntry",
    "Referrals",
    "Summary",
]

# The customer id's rule (a capped length: it is stored whole in every table's primary key)
# lives in models.ids. Every other text is kept whatever its length: indexes hold a prefix or
# a key of it (``models.long_text``, ``repository.store.mapping.campaign_key``).


class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=False)


class Address(_Shape):
    city: str | None = None
    state: str | None = None
    line_1: str | None = None
    line_2: str | None = None
    country: str | None = None
    postal_code: str | None = None


class GiftSummary(_Shape):
    redeemed_amount: Int64 | None = None
    amount_to_go: Int64 | None = None


class LoyaltyCardSummary(_Shape):
    redeemed_points: Int64 | None = None
    points_to_go: Int64 | None = None


class RedemptionsSummary(_Shape):
    total_redeemed: Int64 | None = None
    total_failed: Int64 | None = None
    total_succeeded: Int64 | None = None
    total_rolled_back: Int64 | None = None
    total_rollback_failed: Int64 | None = None
    total_rollback_succeeded: Int64 | None = None
    gift: GiftSummary | None = None
    loyalty_card: LoyaltyCardSummary | None = None


class OrdersSummary(_Shape):
    total_amount: Int64 | None = None
    total_count: Int64 | None = None
    average_amount: Int64 | None = None
    last_order_amount: Int64 | None = None
    last_order_date: WireDateTime | None = None


class Summary(_Shape):
    redemptions: RedemptionsSummary | None = None
    orders: OrdersSummary | None = None


class LoyaltyCampaign(_Shape):
    points: Int64 | None = None
    loyalty_tier: str | None = None
    referred_customers: Int64 | None = None


class Loyalty(_Shape):
    points: Int64 | None = None
    referred_customers: Int64 | None = None
    campaigns: dict[str, LoyaltyCampaign] | None = None


class ReferralEntry(_Shape):
    campaign_id: str | None = None
    referrer_id: str | None = None
    related_object_id: str | None = None
    related_object_type: str | None = None
    date: WireDateTime | None = None


class Referrals(_Shape):
    total: Int64 | None = None
    campaigns: list[ReferralEntry] | None = None


class Assets(_Shape):
    cockpit_url: str | None = None
    cockpit_preference_center_url: str | None = None


class Customer(_Shape):
    id: CustomerId
    source_id: str | None = None
    name: str | None = None
    description: str | None = None
    email: str | None = None
    phone: str | None = None
    birthday: WireDate | None = None
    birthdate: WireDate | None = None
    address: Address | None = None
    metadata: dict[str, Any] | None = None
    summary: Summary | None = None
    loyalty: Loyalty | None = None
    referrals: Referrals | None = None
    system_metadata: dict[str, Any] | None = None
    created_at: WireDateTime | None = None
    updated_at: WireDateTime | None = None
    assets: Assets | None = None
    object: Literal["customer"] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The customer as JSON values, exactly the keys that were given."""
        return self.model_dump(mode="json", exclude_unset=True)

    def to_json(self) -> dict[str, Any]:
        """Deprecated: :meth:`to_dict` (the name said text; it returns a dict)."""
        warn_renamed("Customer.to_json()", "Customer.to_dict()")
        return self.to_dict()
