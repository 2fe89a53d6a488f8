"""One row of Meta's campaign insights as a MetricRow, or a PermanentError naming the value AdSync
cannot read (logged with the row, which holds no secret).

Meta sends numbers as decimal strings ("12.34"), money in the ad account's currency. A row must
carry what the fetch asks for: campaign_id, date_start, spend, impressions and clicks. actions
and action_values are left out when there are none; the chosen type's value must be a number.
Each value is checked against its column (syncing.providers.values), so a row the table would
refuse ends the fetch before anything is written.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import date
from decimal import Decimal

from syncing.providers import values
from syncing.providers.base import MetricRow
from syncing.providers.values import UnreadableValue

logger = logging.getLogger(__name__)

PLATFORM = "Meta"


def metric_row(data: dict, preferred: list[str], fallback_currency: str) -> MetricRow:
    try:
        return _parse_row(data, preferred, fallback_currency)
    except UnreadableValue as exc:
        problem = exc
    campaign_id, day = _identity(data)
    logger.warning("Unexpected insights row from Meta (%s): %.500r", problem, data)
    # Raised outside the except block: nothing to chain, and the row holds no secret.
    raise values.unreadable_value_error(platform=PLATFORM, problem=problem, campaign_id=campaign_id, day=day)


def _parse_row(data: dict, preferred: list[str], fallback_currency: str) -> MetricRow:
    campaign_id = values.entity_id(data.get("campaign_id"), field="campaign_id")
    day = values.day(data.get("date_start"), field="date_start")
    actions = _by_type(data.get("actions"), field="actions")
    action_values = _by_type(data.get("action_values"), field="action_values")
    # The first preferred type Meta reports for this row, for both the count and the value.
    chosen = next((t for t in preferred if t in actions or t in action_values), None)
    return MetricRow(
        level="campaign",
        entity_id=campaign_id,
        date=day,
        entity_name=str(data.get("campaign_name") or ""),
        spend=values.money(data.get("spend"), field="spend"),
        impressions=values.count(data.get("impressions"), field="impressions"),
        clicks=values.count(data.get("clicks"), field="clicks"),
        conversions=_reported(actions, chosen, field="actions"),
        conversion_value=_reported(action_values, chosen, field="action_values"),
        currency=values.currency(data.get("account_currency") or fallback_currency, field="account_currency"),
    )


def _by_type(actions: object, *, field: str) -> dict[object, object]:
    """Meta's [{"action_type": "purchase", "value": "3"}, ...] as {"purchase": "3", ...}."""
    if not actions:
        return {}
    # The SDK hands a field it types as a list over as one (a bare value wrapped in a list).
    if not isinstance(actions, list):
        raise UnreadableValue(field=field, value=actions, reason="not a list")
    return {a.get("action_type"): a.get("value") for a in actions if isinstance(a, dict)}


def _reported(by_type: dict[object, object], chosen: str | None, *, field: str) -> Decimal:
    """The chosen type's number, 0 when Meta reports none of it (a lead has no value)."""
    if chosen is None or chosen not in by_type:
        return Decimal(0)
    # Signed: the table takes conversions below zero (its check holds spend, impressions and clicks).
    return values.money(by_type[chosen], field=f"{field}.{chosen}", signed=True)


def _identity(data: dict) -> tuple[str | None, date | None]:
    """The row's campaign and day as far as they can be read, to name the row in a message."""
    campaign_id: str | None = None
    day: date | None = None
    with contextlib.suppress(UnreadableValue):
        campaign_id = values.entity_id(data.get("campaign_id"), field="campaign_id")
    with contextlib.suppress(UnreadableValue):
        day = values.day(data.get("date_start"), field="date_start")
    return campaign_id, day
