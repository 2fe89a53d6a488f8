"""Meta's usage headers: how close each shared limit is to being throttled, and when access is
regained once it is, read after every answer (syncing.meter.CallMeter.observe paces or stops).

- `X-App-Usage`: the app's usage over the rolling hour (call_count, total_time, total_cputime,
  in percent): the scope of every connection of this installation (code 4 when it is full).
- `X-Business-Use-Case-Usage`: per business object id, a list of use cases (`type`:
  ads_insights, ads_management...) with the same percentages and, once throttled,
  `estimated_time_to_regain_access` in minutes (codes 80000-80014).
- `X-Ad-Account-Usage`: the ad account's `acc_id_util_pct` and `reset_time_duration` (seconds).
- `X-FB-Ads-Insights-Throttle`: `app_id_util_pct` and `acc_id_util_pct` for insights calls.

Throttling starts at 100 %.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import timedelta

from django.conf import settings

from syncing.providers.base import ScopeUsage
from syncing.scopes import META_APP, meta_account_scope, meta_business_scope

logger = logging.getLogger(__name__)

_PERCENT_KEYS = ("call_count", "total_cputime", "total_time")


def scope_usages(headers: Mapping[str, str], *, account: str) -> list[ScopeUsage]:
    """Every scope's usage one answer reports; the highest per scope. `account` is the ad
    account's number (the one the request was for)."""
    lowered = {str(k).lower(): v for k, v in headers.items()}
    found: dict[str, ScopeUsage] = {}

    def add(scope: str, percent: float, *, throttled: bool = False, regain: timedelta | None = None) -> None:
        throttled = throttled or percent >= 100
        previous = found.get(scope)
        if previous is not None:
            percent = max(percent, previous.percent)
            throttled = throttled or previous.throttled
            regain = max((r for r in (regain, previous.regain) if r), default=None)
        found[scope] = ScopeUsage(scope=scope, percent=percent, throttled=throttled, regain=regain)

    app = _json(lowered, "x-app-usage")
    if isinstance(app, dict):
        add(META_APP, _highest(app, _PERCENT_KEYS))
    business = _json(lowered, "x-business-use-case-usage")
    if isinstance(business, dict):
        for object_id, entries in business.items():
            for entry in entries if isinstance(entries, list) else []:
                if not isinstance(entry, dict):
                    continue
                regain = timedelta(minutes=_number(entry.get("estimated_time_to_regain_access")))
                add(
                    meta_business_scope(str(object_id).removeprefix("act_"), str(entry.get("type") or "")),
                    _highest(entry, _PERCENT_KEYS),
                    throttled=regain > timedelta(0),
                    regain=regain or None,
                )
    account_usage = _json(lowered, "x-ad-account-usage")
    if isinstance(account_usage, dict):
        # reset_time_duration is how long until the score is back to 0, sent at any usage: a
        # wait only once the account is throttled.
        reset = timedelta(seconds=_number(account_usage.get("reset_time_duration")))
        add(meta_account_scope(account), _number(account_usage.get("acc_id_util_pct")), regain=reset or None)
    insights = _json(lowered, "x-fb-ads-insights-throttle")
    if isinstance(insights, dict):
        add(META_APP, _number(insights.get("app_id_util_pct")))
        add(meta_account_scope(account), _number(insights.get("acc_id_util_pct")))
    # regain matters only for a throttled scope (it is the wait).
    return [u if u.throttled else ScopeUsage(u.scope, u.percent) for u in found.values()]


def _json(lowered: Mapping[str, str], name: str) -> object:
    raw = lowered.get(name)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        logger.warning("Ignoring an unreadable %s header from Meta", name)
        return None


def _highest(entry: dict, keys: tuple[str, ...]) -> float:
    return max((_number(entry.get(key)) for key in keys), default=0.0)


def _number(value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return number if 0.0 <= number < float("inf") else 0.0


def wait(regain: timedelta | None) -> timedelta:
    """Meta's own estimate when it gives one (it does once throttling is near), else our pause."""
    return regain if regain else timedelta(minutes=settings.META_PAUSE_MINUTES)
