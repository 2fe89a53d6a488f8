"""One row of Meta's campaign insights as a MetricRow, or a PermanentError saying what is wrong
with it (logged with the row, which holds no secret)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import date
from decimal import Decimal, InvalidOperation

from syncing.providers.base import MetricRow, PermanentError, decimal_exact

logger = logging.getLogger(__name__)


class _UnexpectedRow(ValueError):
    pass


def _decimal(value: object) -> Decimal:
    if value is None or value == "":
        return Decimal(0)
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise _UnexpectedRow(f"a number AdSync cannot read: {str(value)[:40]!r}")
    try:
        return decimal_exact(value)
    except InvalidOperation:
        raise _UnexpectedRow(f"a number AdSync cannot read: {str(value)[:40]!r}") from None


def _by_type(actions: object) -> dict[object, object]:
    """Meta's [{"action_type": "purchase", "value": "3"}, ...] as {"purchase": "3", ...}."""
    if not actions:
        return {}
    if not isinstance(actions, Iterable):  # a bare number: as iterating it would raise
        raise TypeError(f"{type(actions).__name__!r} object is not iterable")
    return {a.get("action_type"): a.get("value") for a in actions if isinstance(a, dict)}


def metric_row(data: dict, preferred: list[str], fallback_currency: str) -> MetricRow:
    try:
        return _parse_row(data, preferred, fallback_currency)
    except _UnexpectedRow as exc:
        problem = str(exc)
    # Raised outside the except block: nothing of the SDK's to chain, and the row holds no secret.
    logger.warning("Unexpected insights row from Meta (%s): %.500r", problem, data)
    raise PermanentError(f"Meta sent an unexpected insights row ({problem})")


def _parse_row(data: dict, preferred: list[str], fallback_currency: str) -> MetricRow:
    campaign_id = data.get("campaign_id")
    if campaign_id in (None, ""):
        raise _UnexpectedRow("no campaign_id")
    date_start = data.get("date_start")
    try:
        day = date.fromisoformat(date_start) if isinstance(date_start, str) else None
    except ValueError:
        day = None
    if day is None:
        raise _UnexpectedRow(f"date_start {str(date_start)[:40]!r} is not a date")
    actions = _by_type(data.get("actions"))
    values = _by_type(data.get("action_values"))
    # The first preferred type Meta reports for this row, for both the count and the value.
    chosen = next((t for t in preferred if t in actions or t in values), None)
    return MetricRow(
        level="campaign",
        entity_id=str(campaign_id),
        date=day,
        entity_name=str(data.get("campaign_name") or ""),
        spend=_decimal(data.get("spend")),
        impressions=int(_decimal(data.get("impressions"))),
        clicks=int(_decimal(data.get("clicks"))),
        conversions=_decimal(actions.get(chosen)) if chosen else Decimal(0),
        conversion_value=_decimal(values.get(chosen)) if chosen else Decimal(0),
        currency=str(data.get("account_currency") or fallback_currency),
    )
