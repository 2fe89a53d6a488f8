"""How a connection's sync state reads to a person: labels, relative times, stats, freshness.

Pure functions of a connection and `now`, shared by the Settings page, the API, the admin and
the management commands so they always say the same thing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta

from django.db import models

from connections.models import (
    AUTH_ERROR_KIND,
    BUSY_STATUSES,
    SYNC_INTERVALS,
    Connection,
    PauseReason,
    SyncFrequency,
    SyncStatus,
)
from syncing.providers import OAUTH_PROVIDERS

# By the stored value (a str, as a model's field gives it), like SYNC_INTERVALS.
FREQUENCY_LABELS: dict[str, str] = {
    SyncFrequency.MANUAL: "Manual",
    SyncFrequency.REALTIME: "Realtime (every 30s)",
    SyncFrequency.EVERY_30_MIN: "Every 30 min",
    SyncFrequency.HOURLY: "Hourly",
    SyncFrequency.DAILY: "Daily",
}


class Freshness(models.TextChoices):
    ON_TIME = "on_time", "On time"
    DELAYED = "delayed", "Delayed"
    STALE = "stale", "Stale"
    NEVER = "never", "Never synced"
    UNSCHEDULED = "unscheduled", "Manual"
    PAUSED = "paused", "Paused"


# Slack for the time a sync itself takes, so a realtime connection that completes every 30 s
# does not flicker to "delayed" while its next attempt is running.
FRESHNESS_GRACE_MIN = timedelta(seconds=15)


def connection_freshness(connection: Connection, now: datetime) -> str:
    """Judged against the schedule: on time, delayed (older than one interval), stale (two)."""
    interval = SYNC_INTERVALS[connection.sync_frequency]
    if connection.last_sync_completed_at is None:
        return Freshness.NEVER
    if connection.paused_at is not None:
        return Freshness.PAUSED  # no schedule to be late against while paused
    if interval is None:
        return Freshness.UNSCHEDULED
    grace = max(FRESHNESS_GRACE_MIN, interval / 10)
    age = now - connection.last_sync_completed_at
    if age > 2 * interval + grace:
        return Freshness.STALE
    if age > interval + grace:
        return Freshness.DELAYED
    return Freshness.ON_TIME


def relative_time(moment: datetime | None, now: datetime) -> str:
    """ "just now", "2 min ago", "3 h ago", "4 days ago", "never"; future times as "in 12 s"."""
    if moment is None:
        return "never"
    seconds = (now - moment).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 10 and not future:
        return "just now"
    if seconds < 60:
        text = f"{int(seconds)} s"
    elif seconds < 3600:
        text = f"{int(seconds // 60)} min"
    elif seconds < 86400:
        text = f"{int(seconds // 3600)} h"
    else:
        days = int(seconds // 86400)
        text = f"{days} day" if days == 1 else f"{days} days"
    return f"in {text}" if future else f"{text} ago"


def access_expiry_text(expires_at: datetime | None, now: datetime) -> str:
    """ "access expires in 5 days" / "access expired 2 h ago"; "" for access that does not expire."""
    if expires_at is None:
        return ""
    if expires_at > now:
        return f"access expires {relative_time(expires_at, now)}"
    return f"access expired {relative_time(expires_at, now)}"


def stats_line(attempts: int, changes: int) -> str:
    """The spec's "45 attempts | 12 changes (26.7%)"; "0 attempts" before the first sync."""
    if attempts == 0:
        return "0 attempts"
    attempt_word = "attempt" if attempts == 1 else "attempts"
    change_word = "change" if changes == 1 else "changes"
    return f"{attempts} {attempt_word} | {changes} {change_word} ({changes / attempts * 100:.1f}%)"


def rate_limited_message(until: datetime, now: datetime) -> str:
    """ "Rate limited — resumes 14:32 UTC": what the Settings page, Sync Now's answers, the admin
    and manage.py sync_now say of a throttled connection."""
    resumes = until.astimezone(UTC)
    # A Google budget wait can run into tomorrow: then the date is part of the answer.
    when = f"{resumes:%H:%M}" if resumes.date() == now.astimezone(UTC).date() else f"{resumes:%b %d, %H:%M}"
    return f"Rate limited — resumes {when} UTC"


def next_sync_text(connection: Connection, now: datetime) -> str:
    if connection.paused_at is not None:
        return PauseReason(connection.pause_reason).label.lower()
    if connection.sync_frequency == SyncFrequency.MANUAL:
        return "manual"
    if connection.next_sync_at is None:
        if connection.sync_status == SyncStatus.ERROR and connection.last_sync_error_kind == AUTH_ERROR_KIND:
            return "paused until reconnected"
        return "not scheduled"
    if connection.next_sync_at <= now:
        return "due now"
    return relative_time(connection.next_sync_at, now)


class _ReconnectUrls(Mapping[str, str]):
    """Where "Reconnect" posts for a person whose access expired, by provider: the start of the
    provider's connect flow (POST, as it writes the OAuth state to the session), which gives the
    existing connection the new credentials. Each is the flow's own start_url (a reverse() of
    connections/connect_urls.py), read when asked: the URLconf is not loaded when this imports."""

    def __getitem__(self, provider: str) -> str:
        from connections.connect import flow_for  # connect.py imports this module

        return flow_for(provider).start_url  # KeyError for a provider without a connect flow

    def __iter__(self) -> Iterator[str]:
        return iter(OAUTH_PROVIDERS)

    def __len__(self) -> int:
        return len(OAUTH_PROVIDERS)


RECONNECT_URLS: Mapping[str, str] = _ReconnectUrls()


@dataclasses.dataclass(frozen=True)
class Moment:
    """A point in time as the page shows it: relative text, exact time on hover."""

    text: str
    exact: str  # ISO 8601, for <time datetime> and the title tooltip
    exact_human: str


@dataclasses.dataclass(frozen=True)
class ConnectionStatusView:
    frequency_label: str
    status: str
    status_label: str
    busy: bool
    last_attempted: Moment
    last_completed: Moment
    last_change: Moment
    stats: str
    next_sync: str
    error: str | None
    reconnect: bool
    reconnect_url: str | None
    # "access expires in 5 days" for access that runs out (Meta user tokens); "" otherwise.
    access_expiry: str
    rate_limited_text: str | None
    freshness: str
    freshness_label: str
    # Automated syncs paused (the frequency is kept for the resume): "Paused", "All automated
    # syncs stopped", "Paused after repeated failures"; None while not paused.
    paused_label: str | None = None


def _moment(moment: datetime | None, now: datetime) -> Moment:
    if moment is None:
        return Moment(text="never", exact="", exact_human="")
    utc = moment.astimezone(UTC)
    return Moment(text=relative_time(moment, now), exact=utc.isoformat(), exact_human=f"{utc:%Y-%m-%d %H:%M:%S} UTC")


def connection_status_view(connection: Connection, now: datetime) -> ConnectionStatusView:
    """Everything the Settings page's status block says about one connection, as text."""
    freshness = connection_freshness(connection, now)
    reconnect = connection.sync_status == SyncStatus.ERROR and connection.last_sync_error_kind == AUTH_ERROR_KIND
    rate_limited_text = None
    if connection.rate_limited_until is not None and connection.rate_limited_until > now:
        rate_limited_text = rate_limited_message(connection.rate_limited_until, now)
    return ConnectionStatusView(
        frequency_label=FREQUENCY_LABELS[connection.sync_frequency],
        status=connection.sync_status,
        status_label=SyncStatus(connection.sync_status).label,
        busy=connection.sync_status in BUSY_STATUSES,
        last_attempted=_moment(connection.last_sync_attempted_at, now),
        last_completed=_moment(connection.last_sync_completed_at, now),
        last_change=_moment(connection.last_metrics_changed_at, now),
        stats=stats_line(connection.total_syncs_attempted, connection.total_syncs_with_changes),
        next_sync=next_sync_text(connection, now),
        error=connection.last_sync_error if connection.sync_status == SyncStatus.ERROR else None,
        reconnect=reconnect,
        reconnect_url=RECONNECT_URLS.get(connection.provider) if reconnect else None,
        access_expiry=access_expiry_text(connection.credentials_expires_at, now),
        rate_limited_text=rate_limited_text,
        freshness=freshness,
        freshness_label=Freshness(freshness).label,
        paused_label=PauseReason(connection.pause_reason).label if connection.paused_at is not None else None,
    )
