"""Demo provider: deterministic, offline, slowly changing metrics.

It lets the app run, be shown and be benchmarked with no credentials and no network. Each
account has a few campaigns; each campaign's spend for a day grows in steps of two minutes
through that day (in the account's time zone) towards a daily total derived from a hash, so a
realtime connection (every 30 s) sees a change on about one sync in four, and past days never
change. The same inputs always give the same rows.

provider_options understood (all optional, for demos and tests of the engine):
- "campaigns": how many campaigns (1-50, default 4)
- "latency_ms": simulated API latency per call
- "simulate_error": "transient" | "throttled" | "auth" | "permanent" makes every fetch fail so
  the error states can be seen without a real platform.
"""

from __future__ import annotations

import hashlib
import time
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from syncing.providers.base import (
    AuthError,
    FetchResult,
    MetricRow,
    PermanentError,
    ThrottledError,
    TransientProviderError,
)
from syncing.schedule import account_zone

STEP_SECONDS = 120
# A real platform call's timeout (syncing.providers.meta.client reads for 60 s at most).
CALL_TIMEOUT = 60.0
STEPS_PER_DAY = 86400 // STEP_SECONDS
CENTS = Decimal("0.01")
CAMPAIGN_NAMES = [
    "Brand Search",
    "Prospecting - Lookalike 1%",
    "Retargeting 30d",
    "Seasonal Sale",
    "Video Awareness",
    "Catalog - Dynamic Ads",
    "Competitor Keywords",
    "App Installs",
]


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class DemoProvider:
    slug = "demo"
    label = "Demo"
    default_lookback_days = 7
    # A year of made-up history; a week per chunk, like Meta's.
    history_days = 365
    backfill_chunk_days = 7

    def budgets(self, *, external_account_id: str) -> list:
        return []

    usage_window = None

    def throttle_scopes(self, *, external_account_id: str) -> tuple[str, ...]:
        return ()

    def fetch(self, *, connection, since: date, until: date, now: datetime, meter) -> FetchResult:
        options = connection.provider_options or {}
        meter.spend()
        latency_ms = int(options.get("latency_ms", 0))
        if latency_ms > 0:
            # The simulated call has a real call's timeout: a latency past it (or past the sync's
            # deadline) is a platform that does not answer in time.
            timeout = meter.call_timeout(CALL_TIMEOUT)
            time.sleep(min(latency_ms / 1000, timeout))
            if latency_ms / 1000 > timeout:
                raise TransientProviderError(f"The demo platform did not answer within {timeout:.0f} s (simulated).")
        self._maybe_fail(options.get("simulate_error"), now)

        tz = account_zone(connection.timezone)
        local_now = now.astimezone(tz)
        today = local_now.date()
        seconds_today = local_now.hour * 3600 + local_now.minute * 60 + local_now.second
        progress_today = Decimal(seconds_today // STEP_SECONDS + 1) / STEPS_PER_DAY

        account = connection.external_account_id
        campaigns = max(1, min(50, int(options.get("campaigns", 4))))
        rows: list[MetricRow] = []
        day = since
        while day <= min(until, today):
            progress = progress_today if day == today else Decimal(1)
            for index in range(campaigns):
                rows.append(self._row(account, index, day, progress, connection.currency))
            day += timedelta(days=1)
        return FetchResult(rows=rows)

    def _row(self, account: str, index: int, day: date, progress: Decimal, currency: str) -> MetricRow:
        entity_id = f"{account}-c{index + 1}"
        daily_budget = Decimal(50 + int(_unit(account, index, "budget") * 450))
        day_factor = Decimal(str(round(0.8 + 0.4 * _unit(account, index, day), 4)))
        spend = (daily_budget * day_factor * progress).quantize(CENTS, ROUND_HALF_UP)
        cpm = Decimal(str(round(4 + 8 * _unit(account, index, "cpm"), 2)))
        impressions = int(spend / cpm * 1000)
        clicks = int(impressions * (0.005 + 0.02 * _unit(account, index, "ctr")))
        conversions = Decimal(int(clicks * (0.02 + 0.05 * _unit(account, index, "cvr"))))
        order_value = Decimal(str(round(20 + 80 * _unit(account, index, "aov"), 2)))
        return MetricRow(
            level="campaign",
            entity_id=entity_id,
            date=day,
            entity_name=CAMPAIGN_NAMES[index % len(CAMPAIGN_NAMES)],
            spend=spend,
            impressions=impressions,
            clicks=clicks,
            conversions=conversions,
            conversion_value=(conversions * order_value).quantize(CENTS, ROUND_HALF_UP),
            currency=currency,
        )

    @staticmethod
    def _maybe_fail(kind: str | None, now: datetime) -> None:
        if not kind:
            return
        if kind == "transient":
            raise TransientProviderError("Demo platform is temporarily unavailable (simulated)")
        if kind == "throttled":
            raise ThrottledError("Demo platform rate limit reached (simulated)", until=now + timedelta(minutes=5))
        if kind == "auth":
            raise AuthError("Demo access expired — reconnect the account (simulated)")
        raise PermanentError("Demo platform rejected the request (simulated)")
