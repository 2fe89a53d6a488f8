"""Meta's usage headers: how close the app and the ad account are to being throttled, and when
access is regained once they are.

A sync whose answers say usage is above settings.META_USAGE_SLOWDOWN_PCT keeps its rows and
defers the next sync (FetchResult.slow_down_until); a throttle waits as long as Meta estimates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta

from django.conf import settings

logger = logging.getLogger(__name__)

USAGE_HEADERS = ("x-business-use-case-usage", "x-ad-account-usage", "x-fb-ads-insights-throttle")
_PERCENT_KEYS = ("call_count", "total_cputime", "total_time", "acc_id_util_pct", "app_id_util_pct")


class Usage:
    def __init__(self, percent: float = 0.0, regain: timedelta = timedelta(0)):
        self.percent = percent
        self.regain = regain


def usage(headers: Mapping[str, str]) -> Usage:
    """The highest usage percentage in Meta's usage headers, and when access is regained."""
    lowered = {str(k).lower(): v for k, v in headers.items()}
    percent, regain = 0.0, timedelta(0)
    for name in USAGE_HEADERS:
        raw = lowered.get(name)
        if not raw:
            continue
        try:
            parsed = json.loads(raw)
        except ValueError:
            logger.warning("Ignoring an unreadable %s header from Meta", name)
            continue
        for entry in _entries(parsed):
            for key in _PERCENT_KEYS:
                percent = max(percent, _number(entry.get(key)))
            regain = max(regain, timedelta(minutes=_number(entry.get("estimated_time_to_regain_access"))))
            regain = max(regain, timedelta(seconds=_number(entry.get("reset_time_duration"))))
    return Usage(percent, regain)


def _entries(parsed: object) -> list[dict]:
    """X-Business-Use-Case-Usage maps ids to lists of entries; the other two are one object."""
    if isinstance(parsed, dict) and any(isinstance(v, list) for v in parsed.values()):
        return [e for v in parsed.values() if isinstance(v, list) for e in v if isinstance(e, dict)]
    return [parsed] if isinstance(parsed, dict) else []


def _number(value: object) -> float:
    try:
        return max(0.0, float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def slow_down_until(responses: list[Mapping[str, str]], now: datetime) -> datetime | None:
    usages = [usage(headers) for headers in responses]
    percent = max((u.percent for u in usages), default=0.0)
    if percent < settings.META_USAGE_SLOWDOWN_PCT:
        return None
    return now + wait(max(u.regain for u in usages))


def wait(regain: timedelta) -> timedelta:
    """Meta's own estimate when it gives one (it does once throttling is near), else our pause."""
    return regain if regain > timedelta(0) else timedelta(minutes=settings.META_PAUSE_MINUTES)
