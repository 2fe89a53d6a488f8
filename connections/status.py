"""How a connection's sync state reads to a person: labels, relative times, stats, freshness.

Pure functions of a connection and `now`, shared by the Settings page, the API, the admin and
the management commands so they always say the same thing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal

from django.db import models
from django.db.models import Q
from django.urls import reverse

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
    """Judged against the schedule: on time, delayed (older than one interval), stale (two).

    Never "on time" while the last attempt failed: the data may be recent, but the refresh that
    was due did not happen, and "Error" beside "On time" reads as a contradiction (issue 14).
    """
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
    if age > interval + grace or connection.sync_status == SyncStatus.ERROR:
        return Freshness.DELAYED
    return Freshness.ON_TIME


def freshness_filters(now: datetime) -> dict[str, Q]:
    """connection_freshness as one Q per value, for counting and filtering in the database (the
    Settings page's overview, and syncing.metrics' counts). Exactly one matches each row."""
    completed = Q(last_sync_completed_at__isnull=False, paused_at__isnull=True)
    unscheduled = [f for f, interval in SYNC_INTERVALS.items() if interval is None]
    on_time, delayed, stale = Q(pk__in=[]), Q(pk__in=[]), Q(pk__in=[])
    for frequency, interval in SYNC_INTERVALS.items():
        if interval is None:
            continue
        grace = max(FRESHNESS_GRACE_MIN, interval / 10)
        one, two = now - (interval + grace), now - (2 * interval + grace)
        this = completed & Q(sync_frequency=frequency)
        recent = this & Q(last_sync_completed_at__gte=one)
        on_time |= recent & ~Q(sync_status=SyncStatus.ERROR)
        delayed |= (recent & Q(sync_status=SyncStatus.ERROR)) | (
            this & Q(last_sync_completed_at__lt=one, last_sync_completed_at__gte=two)
        )
        stale |= this & Q(last_sync_completed_at__lt=two)
    return {
        Freshness.NEVER: Q(last_sync_completed_at__isnull=True),
        Freshness.PAUSED: Q(last_sync_completed_at__isnull=False, paused_at__isnull=False),
        Freshness.UNSCHEDULED: completed & Q(sync_frequency__in=unscheduled),
        Freshness.ON_TIME: on_time,
        Freshness.DELAYED: delayed,
        Freshness.STALE: stale,
    }


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


def zone_abbreviation(moment: datetime) -> str:
    """ "UTC", "CET", "EST"; zones without a common abbreviation give their offset ("+03")."""
    return moment.tzname() or "UTC"


def rate_limited_message(until: datetime, now: datetime, tz: tzinfo = UTC) -> str:
    """ "Rate limited — resumes 14:32 UTC": what the Settings page, Sync Now's answers, the admin
    and manage.py sync_now say of a throttled connection. The page passes the viewer's zone."""
    resumes = until.astimezone(tz)
    # A Google budget wait can run into tomorrow: then the date is part of the answer.
    when = f"{resumes:%H:%M}" if resumes.date() == now.astimezone(tz).date() else f"{resumes:%b %d, %H:%M}"
    return f"Rate limited — resumes {when} {zone_abbreviation(resumes)}"


def needs_reconnect(connection: Connection) -> bool:
    """Failing on expired or revoked access: unscheduled until someone reconnects the account."""
    return connection.sync_status == SyncStatus.ERROR and connection.last_sync_error_kind == AUTH_ERROR_KIND


def schedule_label(connection: Connection) -> str:
    """The frequency as it actually runs: a connection that is not syncing on its schedule says
    so instead of its frequency ("Realtime" on an expired connection was a promise not kept)."""
    frequency = FREQUENCY_LABELS[connection.sync_frequency]
    if connection.sync_frequency != SyncFrequency.MANUAL and needs_reconnect(connection):
        return "Paused — reconnect"
    if connection.paused_at is not None:
        return f"{PauseReason(connection.pause_reason).label} — resumes as {frequency}"
    return frequency


def next_sync_text(connection: Connection, now: datetime) -> str:
    if connection.paused_at is not None:
        return PauseReason(connection.pause_reason).label.lower()
    if connection.sync_frequency == SyncFrequency.MANUAL:
        return "manual"
    if connection.next_sync_at is None:
        if needs_reconnect(connection):
            return "paused until reconnected"
        return "not scheduled"
    if connection.next_sync_at <= now:
        return "due now"
    return relative_time(connection.next_sync_at, now)


class _ReconnectUrls(Mapping[str, str]):
    """Where "Reconnect" posts for a person whose access expired, by provider: the start of the
    provider's connect flow (POST, as it writes the OAuth state to the session), which gives the
    existing connection the new credentials. Reversed by the flow's URL name
    ("<slug>-connect-start", connections/connect_urls.py) when asked: the URLconf is not loaded
    when this imports, and importing connections.connect here would pull the services layer
    under every reader of this module (selectors included)."""

    def __getitem__(self, provider: str) -> str:
        if provider not in OAUTH_PROVIDERS:
            raise KeyError(provider)  # a provider without a connect flow
        return reverse(f"{provider}-connect-start")

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
    exact_human: str  # in the viewer's time zone, named ("2026-11-28 13:57:55 CET")


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
    # What the page shows as the frequency: "Paused — reconnect", "Paused — resumes as Hourly".
    schedule_label: str = ""
    # The next scheduled sync as a moment (the page's script keeps "in 12 s" counting down).
    next_sync_moment: Moment | None = None

    @property
    def paused(self) -> bool:
        return self.paused_label is not None

    @property
    def state_key(self) -> str:
        """Changes exactly when the state a message describes is over (queued -> syncing, a new
        error, paused -> resumed): the page's script clears a row's message then."""
        return "|".join([self.status, self.schedule_label, self.error or "", self.rate_limited_text or ""])


def _moment(moment: datetime | None, now: datetime, tz: tzinfo = UTC) -> Moment:
    if moment is None:
        return Moment(text="never", exact="", exact_human="")
    local = moment.astimezone(tz)
    return Moment(
        text=relative_time(moment, now),
        exact=moment.astimezone(UTC).replace(microsecond=0).isoformat(),
        exact_human=f"{local:%Y-%m-%d %H:%M:%S} {zone_abbreviation(local)}",
    )


def connection_status_view(connection: Connection, now: datetime, tz: tzinfo = UTC) -> ConnectionStatusView:
    """Everything the Settings page's status block says about one connection, as text; exact
    times in `tz`, the viewer's zone (UTC for the API, the admin and the commands)."""
    freshness = connection_freshness(connection, now)
    reconnect = needs_reconnect(connection)
    rate_limited_text = None
    if connection.rate_limited_until is not None and connection.rate_limited_until > now:
        rate_limited_text = rate_limited_message(connection.rate_limited_until, now, tz)
    next_sync = next_sync_text(connection, now)
    next_moment = None
    if connection.next_sync_at is not None and connection.paused_at is None and connection.next_sync_at > now:
        next_moment = dataclasses.replace(_moment(connection.next_sync_at, now, tz), text=next_sync)
    return ConnectionStatusView(
        frequency_label=FREQUENCY_LABELS[connection.sync_frequency],
        status=connection.sync_status,
        status_label=SyncStatus(connection.sync_status).label,
        busy=connection.sync_status in BUSY_STATUSES,
        last_attempted=_moment(connection.last_sync_attempted_at, now, tz),
        last_completed=_moment(connection.last_sync_completed_at, now, tz),
        last_change=_moment(connection.last_metrics_changed_at, now, tz),
        stats=stats_line(connection.total_syncs_attempted, connection.total_syncs_with_changes),
        next_sync=next_sync,
        error=connection.last_sync_error if connection.sync_status == SyncStatus.ERROR else None,
        reconnect=reconnect,
        reconnect_url=RECONNECT_URLS.get(connection.provider) if reconnect else None,
        access_expiry=access_expiry_text(connection.credentials_expires_at, now),
        rate_limited_text=rate_limited_text,
        freshness=freshness,
        freshness_label=Freshness(freshness).label,
        paused_label=PauseReason(connection.pause_reason).label if connection.paused_at is not None else None,
        schedule_label=schedule_label(connection),
        next_sync_moment=next_moment,
    )


# --- pictures: server-rendered SVG geometry (templates/settings/_pictures.html draws it) --------------

# An hour's cell takes the colour of its worst attempt: one failure in 120 attempts must show.
_OUTCOME_CLASS = {
    "success": "ok",
    "running": "run",
    "retrying": "warn",
    "rate_limited": "warn",
    "interrupted": "bad",
    "error": "bad",
}
_SEVERITY = ["none", "ok", "run", "warn", "bad"]
STRIP_CELL = 10  # px per hour in the viewBox; 24 of them


@dataclasses.dataclass(frozen=True)
class AttemptStrip:
    paths: list[tuple[str, str]]  # (css class, path data): one path per colour keeps it small
    label: str
    empty: bool


def attempt_strip(hours: Mapping[int, Mapping[str, int]], hours_total: int = 24) -> AttemptStrip:
    """The last 24 hours' attempts, an hour per cell coloured by its worst outcome."""
    cells: dict[str, list[str]] = {}
    totals = {"ok": 0, "warn": 0, "bad": 0, "run": 0}
    for hour in range(hours_total):
        outcomes = hours.get(hour, {})
        worst = "none"
        for outcome, n in outcomes.items():
            css = _OUTCOME_CLASS.get(outcome, "warn")
            totals[css] += n
            if _SEVERITY.index(css) > _SEVERITY.index(worst):
                worst = css
        cells.setdefault(worst, []).append(f"M{hour * STRIP_CELL} 0h{STRIP_CELL - 1}v14h-{STRIP_CELL - 1}z")
    attempts = sum(totals.values())
    parts = [f"{totals['ok']} succeeded"]
    if totals["bad"]:
        parts.append(f"{totals['bad']} failed")
    if totals["warn"]:
        parts.append(f"{totals['warn']} rate limited or retried")
    label = f"Last 24 hours: {attempts} attempt{'s' if attempts != 1 else ''}"
    label += f" ({', '.join(parts)})" if attempts else ""
    return AttemptStrip(paths=sorted((css, "".join(d)) for css, d in cells.items()), label=label, empty=not attempts)


@dataclasses.dataclass(frozen=True)
class Sparkline:
    points: str  # <polyline points>
    restated: list[tuple[int, int]]  # marker centres
    label: str


def spend_sparkline(
    spend: Mapping[date, Decimal], restated: set[date], today: date, currency: str, zone: str, days: int = 28
) -> Sparkline | None:
    """Spend per day of the account's last 28 days (its own calendar), restated days marked;
    None before there is any spend to draw."""
    series = [(today - timedelta(days=days - 1 - i)) for i in range(days)]
    values = [spend.get(day, Decimal(0)) for day in series]
    if not any(day in spend for day in series):
        return None
    top = max(values) or Decimal(1)

    def y(value: Decimal) -> int:
        return round(36 - float(value / top) * 32)

    points = " ".join(f"{i * 10 + 5},{y(v)}" for i, v in enumerate(values))
    marks = [(i * 10 + 5, y(v)) for i, (day, v) in enumerate(zip(series, values, strict=True)) if day in restated]
    label = f"Spend per day, last {days} days to {today:%b %d} ({zone} days): {sum(values):,.2f} {currency} in all"
    label += f"; {len(marks)} restated day{'s' if len(marks) != 1 else ''} marked" if marks else ""
    return Sparkline(points=points, restated=marks, label=label)


def budget_text(used: int, limit: int, window: timedelta) -> str:
    """ "120/180 calls this hour"; a daily quota says so."""
    span = "this hour" if window <= timedelta(hours=1) else "in the last 24 h"
    return f"{used:,}/{limit:,} calls {span}"
