"""The mapped classes' tables, typed as Core ``Table``\\ s, for the statements built on them.

``DeclarativeBase.__table__`` is typed as a ``FromClause``; the cast is made here once.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table

from models.events import WebhookEventRow
from models.mirror import MirrorListedRow, MirrorStateRow
from models.tables import (
    CustomerAddressRow,
    CustomerRow,
    CustomerTombstoneRow,
    LoyaltyCampaignRow,
    ReferralEntryRow,
)

__all__ = [
    "addresses",
    "campaigns",
    "child_tables",
    "customers",
    "events",
    "mirror_listed_table",
    "mirror_state_table",
    "referrals",
    "tombstones",
]

customers = cast(Table, CustomerRow.__table__)
addresses = cast(Table, CustomerAddressRow.__table__)
campaigns = cast(Table, LoyaltyCampaignRow.__table__)
referrals = cast(Table, ReferralEntryRow.__table__)
tombstones = cast(Table, CustomerTombstoneRow.__table__)
events = cast(Table, WebhookEventRow.__table__)
mirror_state_table = cast(Table, MirrorStateRow.__table__)
mirror_listed_table = cast(Table, MirrorListedRow.__table__)

#: A customer's child tables, in the order their rows are written and deleted.
child_tables = (addresses, campaigns, referrals)
