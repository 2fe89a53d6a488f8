"""Pure scheduling rules: when a connection is next due, and which days a sync fetches.

No database access here, so the rules are easy to test with frozen time and reuse everywhere
(services, dispatcher, management commands).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
import zoneinfo
from datetime import date, datetime, timedelta

from django.conf import settings

from connections.models import SYNC_INTERVALS, SyncTrigger

logger = logging.getLogger(__name__)

# Long intervals get a deterministic per-connection offset so that many connections switched
# to "daily" at the same moment do not all fire together. Realtime gets none.
JITTER_MIN_INTERVAL = timedelta(minutes=30)
JITTER_MAX = timedelta(minutes=10)
JITTER_FRACTION = 0.05


def jitter(*, public_id: uuid.UUID, interval: timedelta) -> timedelta:
    if interval < JITTER_MIN_INTERVAL:
        return timedelta(0)
    span = min(interval * JITTER_FRACTION, JITTER_MAX)
    unit = int.from_bytes(hashlib.blake2b(public_id.bytes, digest_size=4).digest(), "big") / 2**32
    return timedelta(seconds=int(span.total_seconds() * unit))


def next_sync_after_change(
    *, frequency: str, last_attempted_at: datetime | None, public_id: uuid.UUID, now: datetime
) -> datetime | None:
    """The next due time right after the frequency was set: it takes effect immediately.

    The interval runs from the previous attempt's start; a connection never attempted, or one
    whose new interval has already elapsed, is due now.
    """
    interval = SYNC_INTERVALS[frequency]
    if interval is None:
        return None
    if last_attempted_at is None:
        return now
    return max(now, last_attempted_at + interval + jitter(public_id=public_id, interval=interval))


def next_sync_after_start(
    *, frequency: str, trigger: str, slot: datetime | None, started_at: datetime, public_id: uuid.UUID
) -> datetime | None:
    """The next due time, set when an attempt starts.

    A scheduled attempt keeps its slot: the next one is the slot plus the interval, so the time
    between a beat tick and the worker picking the job up does not add up sync after sync (a
    realtime connection syncs every 30 s, not every 30 s plus a tick). A manual attempt, one
    that ran more than a whole interval late, or one whose frequency changed while it waited
    (its next_sync_at is then in the future) restarts the interval from its own start.
    """
    interval = SYNC_INTERVALS[frequency]
    if interval is None:
        return None
    # The slot is the due time this job was claimed for, so it is not in the future; if it is,
    # the frequency was changed while the job waited and that change already set the schedule.
    if trigger == SyncTrigger.SCHEDULED and slot is not None and slot <= started_at < slot + interval:
        return slot + interval
    return started_at + interval + jitter(public_id=public_id, interval=interval)


def restatement_due(*, last_restated_at: datetime | None, now: datetime) -> bool:
    """Whether this attempt should re-fetch the whole lookback window.

    The first sync of a connection always does (backfill); afterwards at most every
    SYNC_RESTATEMENT_INTERVAL_HOURS, riding on whichever sync comes next.
    """
    if last_restated_at is None:
        return True
    return now - last_restated_at >= timedelta(hours=settings.SYNC_RESTATEMENT_INTERVAL_HOURS)


def sync_window(*, timezone: str, now: datetime, lookback_days: int | None) -> tuple[date, date]:
    """Days to fetch, in the account's own time zone: today and yesterday, or the lookback."""
    today = now.astimezone(account_zone(timezone)).date()
    days_back = 1 if lookback_days is None else max(1, lookback_days)
    return today - timedelta(days=days_back), today


def account_zone(name: str) -> zoneinfo.ZoneInfo:
    """The account's time zone; UTC (logged) if the platform sent a name we cannot load, so a
    bad value degrades the day boundaries instead of failing every sync before it starts."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        logger.warning("Unknown time zone %r; using UTC", name)
        return zoneinfo.ZoneInfo("UTC")
