"""Reads of connections, always scoped to what the user may see."""

from __future__ import annotations

import dataclasses
import uuid
from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import (
    Case,
    Count,
    F,
    FilteredRelation,
    IntegerField,
    Q,
    QuerySet,
    Sum,
    TextChoices,
    Value,
    When,
)
from django.db.models.functions import TruncHour
from django.http import Http404

from connections.models import AUTH_ERROR_KIND, BUSY_STATUSES, Connection, PauseReason, SyncStatus, Workspace
from connections.status import Freshness, freshness_filters
from syncing.budget import budgets_used
from syncing.models import BACKFILL_ACTIVE, Backfill, DailyMetric, MetricLevel, SyncChange, SyncRun
from syncing.providers import PROVIDERS


def connections_for_user(*, user: User | AnonymousUser) -> QuerySet[Connection]:
    if not user.is_authenticated:
        return Connection.objects.none()
    # Credentials are decrypted only where a provider needs them, not on every page and poll.
    return Connection.objects.filter(workspace__memberships__user=user).select_related("workspace").defer("credentials")


def connection_get_for_user(*, user: User | AnonymousUser, public_id: uuid.UUID | str) -> Connection:
    """The connection, or Http404 whether it does not exist or belongs to another workspace."""
    try:
        public_id = uuid.UUID(str(public_id))
        return connections_for_user(user=user).get(public_id=public_id)
    except (Connection.DoesNotExist, ValueError):
        # A malformed id is just another id that names nothing you may see.
        raise Http404("No connection with that id") from None


def workspaces_for_user(*, user: User | AnonymousUser) -> QuerySet[Workspace]:
    """The user's workspaces by name, each with `stopped` (connections its "Stop all automated
    syncs" paused) and `scheduled` (connections not paused), for the page's workspace bar."""
    if not user.is_authenticated:
        return Workspace.objects.none()
    return (
        Workspace.objects.filter(memberships__user=user)
        .annotate(
            stopped=Count("connections", filter=Q(connections__pause_reason=PauseReason.WORKSPACE)),
            scheduled=Count("connections", filter=Q(connections__paused_at__isnull=True)),
        )
        .order_by("name", "id")
    )


def workspace_get_for_user(*, user: User | AnonymousUser, public_id: uuid.UUID | str) -> Workspace:
    """The workspace, or Http404 whether it does not exist or the user is not a member."""
    try:
        return workspaces_for_user(user=user).get(public_id=uuid.UUID(str(public_id)))
    except (Workspace.DoesNotExist, ValueError):
        raise Http404("No workspace with that id") from None


def workspace_pause_counts(*, workspace: Workspace) -> dict[str, int]:
    """Which of a workspace's two buttons to show: `stopped` (connections its "Stop all
    automated syncs" paused) and `scheduled` (connections not paused)."""
    return Connection.objects.filter(workspace=workspace).aggregate(
        stopped=Count("pk", filter=Q(pause_reason=PauseReason.WORKSPACE)),
        scheduled=Count("pk", filter=Q(paused_at__isnull=True)),
    )


# --- the Settings page's overview: counts, filters, sort --------------------------------------------


class StatusFilter(TextChoices):
    """The overview's counters, each also a filter (?status=...)."""

    SYNCING = "syncing", "Syncing"
    ERROR = "error", "Errors"
    STALE = "stale", "Stale"
    RECONNECT = "reconnect", "Need reconnecting"
    PAUSED = "paused", "Paused"


class Sort(TextChoices):
    NAME = "name", "Name"
    PROBLEMS = "problems", "Problems first"
    OLDEST = "oldest", "Least recently synced"
    RECENT = "recent", "Most recently synced"


def status_filters(now: datetime) -> dict[str, Q]:
    return {
        StatusFilter.SYNCING: Q(sync_status__in=BUSY_STATUSES),
        StatusFilter.ERROR: Q(sync_status=SyncStatus.ERROR),
        StatusFilter.STALE: freshness_filters(now)[Freshness.STALE],
        StatusFilter.RECONNECT: Q(sync_status=SyncStatus.ERROR, last_sync_error_kind=AUTH_ERROR_KIND),
        StatusFilter.PAUSED: Q(paused_at__isnull=False),
    }


@dataclasses.dataclass(frozen=True)
class ConnectionFilters:
    """What the page was asked to show; every value already valid (views.py checks them)."""

    workspace: Workspace | None = None
    search: str = ""
    provider: str = ""
    frequency: str = ""
    status: str = ""
    sort: str = Sort.NAME


def connections_in_scope(*, user: User | AnonymousUser, workspace: Workspace | None) -> QuerySet[Connection]:
    """The user's connections, in one workspace when one is chosen: what the counters count."""
    connections = connections_for_user(user=user)
    return connections if workspace is None else connections.filter(workspace=workspace)


def connections_filtered(
    *, user: User | AnonymousUser, filters: ConnectionFilters, now: datetime
) -> QuerySet[Connection]:
    connections = connections_in_scope(user=user, workspace=filters.workspace)
    if filters.search:
        connections = connections.filter(
            Q(name__icontains=filters.search) | Q(external_account_id__icontains=filters.search)
        )
    if filters.provider:
        connections = connections.filter(provider=filters.provider)
    if filters.frequency:
        connections = connections.filter(sync_frequency=filters.frequency)
    if filters.status:
        connections = connections.filter(status_filters(now)[filters.status])
    if filters.sort == Sort.PROBLEMS:
        # Needs reconnecting, then other errors, then stale, then the rest; by name within each.
        rank = Case(
            When(status_filters(now)[StatusFilter.RECONNECT], then=Value(0)),
            When(sync_status=SyncStatus.ERROR, then=Value(1)),
            When(status_filters(now)[StatusFilter.STALE], then=Value(2)),
            default=Value(3),
            output_field=IntegerField(),
        )
        return connections.order_by(rank, "name", "id")
    if filters.sort == Sort.OLDEST:
        # Never synced first, then the longest ago (explicit: PostgreSQL and SQLite differ).
        return connections.order_by(F("last_sync_completed_at").asc(nulls_first=True), "name", "id")
    if filters.sort == Sort.RECENT:
        return connections.order_by(F("last_sync_completed_at").desc(nulls_last=True), "name", "id")
    return connections.order_by("workspace__name", "name", "id")


# What the page shows of a backfill in progress ("Re-syncing Nov 1 – Nov 30: 12 of 30 days").
ACTIVE_BACKFILL_FIELDS = ("public_id", "since", "until", "status", "days_done", "days_total", "last_error")


def with_active_backfill(connections: QuerySet[Connection]) -> QuerySet[Connection]:
    """Each connection with its backfill in progress, if any, as `active_backfill_<field>`: a LEFT
    JOIN in the page's own query (and its poll's) rather than one more. At most one row joins
    each connection (the syncing_backfill_one_active_per_connection index), so none repeats."""
    return connections.annotate(
        active_backfill=FilteredRelation("backfills", condition=Q(backfills__status__in=BACKFILL_ACTIVE)),
        **{f"active_backfill_{name}": F(f"active_backfill__{name}") for name in ACTIVE_BACKFILL_FIELDS},
    )


def active_backfill_of(connection: Connection) -> Backfill | None:
    """The backfill in progress that with_active_backfill read along with the connection, as an
    unsaved Backfill (for its progress_text); None without one, or when it was not read."""
    if getattr(connection, "active_backfill_public_id", None) is None:
        return None
    fields = {name: getattr(connection, f"active_backfill_{name}") for name in ACTIVE_BACKFILL_FIELDS}
    return Backfill(connection=connection, **fields)


def connection_counts(*, connections: QuerySet[Connection], now: datetime) -> dict[str, int]:
    """The overview's counters in one aggregate query: the total and each StatusFilter."""
    aggregates = {key: Count("pk", filter=q) for key, q in status_filters(now).items()}
    return connections.order_by().aggregate(total=Count("pk"), **aggregates)


# --- the pictures: attempts, spend, restatements, budgets -----------------------------------------------


STRIP_HOURS = 24
SPARK_DAYS = 28


def attempts_by_hour(*, connection_ids: list[int], now: datetime) -> dict[int, dict[int, dict[str, int]]]:
    """Each connection's attempts of the last 24 clock hours, {connection: {hour: {outcome: n}}},
    hour 0 the oldest and 23 the current one; counted in the database (a realtime connection
    makes 2,880 attempts a day). Reads syncing_run_conn_started_idx."""
    first = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=STRIP_HOURS - 1)
    rows = (
        SyncRun.objects.filter(connection_id__in=connection_ids, started_at__gte=first)
        .annotate(hour=TruncHour("started_at"))
        .values_list("connection_id", "hour", "outcome")
        .annotate(n=Count("pk"))
        .order_by()
    )
    hours: dict[int, dict[int, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for connection_id, hour, outcome, n in rows:
        index = int((hour - first).total_seconds() // 3600)
        if 0 <= index < STRIP_HOURS:
            hours[connection_id][index][outcome] = n
    return hours


def spend_by_day(*, connection_ids: list[int], since: date) -> dict[int, dict[date, Decimal]]:
    """Each connection's campaign spend per day (the account's own days) from `since`. Campaign
    rows only: a provider that also stored ad sets would count the same spend twice."""
    rows = (
        DailyMetric.objects.filter(connection_id__in=connection_ids, level=MetricLevel.CAMPAIGN, date__gte=since)
        .values_list("connection_id", "date")
        .annotate(spend=Sum("spend"))
        .order_by()
    )
    spend: dict[int, dict[date, Decimal]] = defaultdict(dict)
    for connection_id, day, total in rows:
        spend[connection_id][day] = total
    return spend


def restated_days(*, connection_ids: list[int], since: date) -> dict[int, set[date]]:
    """Days whose stored values a later run changed when they were over a day old (the change
    ledger's `restated`). The ledger goes with its runs, so only restatements made within
    SYNC_RUN_RETENTION_DAYS are known."""
    rows = (
        SyncChange.objects.filter(run__connection_id__in=connection_ids, restated=True, date__gte=since)
        .values_list("run__connection_id", "date")
        .distinct()
        .order_by()
    )
    days: dict[int, set[date]] = defaultdict(set)
    for connection_id, day in rows:
        days[connection_id].add(day)
    return days


@dataclasses.dataclass(frozen=True)
class BudgetUse:
    label: str
    used: int
    limit: int
    window: timedelta


def budgets_in_use(*, connections: list[Connection], now: datetime) -> dict[int, list[BudgetUse]]:
    """Each connection's platform budgets (syncing.budget, keyed as the provider names them) with
    the calls used in their window, read in one query for the whole page."""
    by_connection = {
        c.pk: [b for b in PROVIDERS[c.provider].budgets(external_account_id=c.external_account_id) if b.limit]
        for c in connections
        if c.provider in PROVIDERS
    }
    unique = {b.key: b for budgets in by_connection.values() for b in budgets}
    used = budgets_used(budgets=list(unique.values()), now=now)
    return {
        pk: [BudgetUse(label=b.label, used=used[b.key], limit=b.limit or 0, window=b.window) for b in budgets]
        for pk, budgets in by_connection.items()
    }
