"""Reads of sync history and jobs: scoped to the user's workspaces for the API, or to the
connections an operator command names."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable
from datetime import date, datetime

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Count, Exists, IntegerField, OuterRef, Q, QuerySet, Subquery, TextChoices, Value
from django.db.models.functions import Coalesce
from django.http import Http404

from connections.models import BUSY_STATUSES, Connection, SyncStatus
from connections.selectors import connections_for_user
from syncing.models import BACKFILL_ACTIVE, Backfill, JobStatus, SyncChange, SyncOutcome, SyncRun
from syncing.persist import VALUE_COLUMNS

# How a job reads once its connection has moved on, from its last attempt's outcome.
_JOB_STATUS_BY_OUTCOME: dict[str, JobStatus] = {
    SyncOutcome.SUCCESS: JobStatus.SUCCEEDED,
    SyncOutcome.ERROR: JobStatus.FAILED,
    SyncOutcome.RATE_LIMITED: JobStatus.RATE_LIMITED,
    SyncOutcome.INTERRUPTED: JobStatus.INTERRUPTED,
    SyncOutcome.CANCELLED: JobStatus.CANCELLED,
    SyncOutcome.RUNNING: JobStatus.SYNCING,
    SyncOutcome.RETRYING: JobStatus.QUEUED,
}
JOB_FINISHED = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.RATE_LIMITED, JobStatus.INTERRUPTED, JobStatus.CANCELLED}
)
# Attempts that ended their job; a running or retrying one did not (yet).
_ENDED = frozenset(
    {SyncOutcome.SUCCESS, SyncOutcome.ERROR, SyncOutcome.RATE_LIMITED, SyncOutcome.INTERRUPTED, SyncOutcome.CANCELLED}
)


@dataclasses.dataclass(frozen=True)
class JobState:
    job_id: uuid.UUID
    connection_id: uuid.UUID
    status: str
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    rows_fetched: int | None
    rows_written: int | None
    error: str | None

    @property
    def finished(self) -> bool:
        return self.status in JOB_FINISHED


def sync_runs_for_connection(*, connection: Connection) -> QuerySet[SyncRun]:
    return SyncRun.objects.filter(connection=connection).order_by("-started_at", "-id")


def job_state(*, job_id: uuid.UUID, connections: QuerySet[Connection]) -> JobState | None:
    """What became of a job of one of these connections; None when none of them has it.

    From its connection while queued or syncing, from its runs (one per attempt) afterwards.
    Not scoped to a user: the API asks through job_get_for_user, manage.py sync_now directly.
    """
    runs = list(SyncRun.objects.filter(job_id=job_id, connection__in=connections).order_by("started_at", "id"))
    connection = connections.filter(job_id=job_id).first()
    if connection is None and runs:
        connection = connections.get(pk=runs[-1].connection_id)
    if connection is None:
        return None

    current = connection.job_id == job_id
    last = runs[-1] if runs else None
    # Held in error with no attempt that ended it: lost in the queue (before it started, or
    # before its retry did) and given up by recovery, whose message is on the connection.
    lost = current and connection.sync_status == SyncStatus.ERROR and (last is None or last.outcome not in _ENDED)
    # The attempt that says how the job went.
    told = None if lost else last
    if current and connection.sync_status in BUSY_STATUSES:
        status = JobStatus(connection.sync_status)
    elif lost:
        status = JobStatus.FAILED
    elif last is not None:
        status = _JOB_STATUS_BY_OUTCOME[last.outcome]
    else:
        status = JobStatus.QUEUED
    error = told.error_message if told is not None and told.error_message else None
    if error is None and status == JobStatus.FAILED and current:
        error = connection.last_sync_error
    return JobState(
        job_id=job_id,
        connection_id=connection.public_id,
        status=status,
        queued_at=connection.queued_at if current else None,
        started_at=runs[0].started_at if runs else None,
        finished_at=told.finished_at if told is not None and status in JOB_FINISHED else None,
        attempts=len(runs),
        rows_fetched=told.rows_fetched if told is not None and status == JobStatus.SUCCEEDED else None,
        rows_written=told.rows_written if told is not None and status == JobStatus.SUCCEEDED else None,
        error=error,
    )


def job_get_for_user(*, user: User | AnonymousUser, job_id: uuid.UUID | str) -> JobState:
    """A job of the user's workspaces (job_state), or Http404, whether it does not exist or belongs
    to another workspace."""
    try:
        job_id = uuid.UUID(str(job_id))
    except ValueError:
        raise Http404("No job with that id") from None
    state = job_state(job_id=job_id, connections=connections_for_user(user=user))
    if state is None:
        raise Http404("No job with that id")
    return state


# --- the change ledger: what each run changed ------------------------------------------------------

# How a field reads in a summary line ("conversion value 10 → 12.5").
FIELD_LABELS: dict[str, str] = {
    "entity_name": "name",
    "spend": "spend",
    "impressions": "impressions",
    "clicks": "clicks",
    "conversions": "conversions",
    "conversion_value": "conversion value",
    "currency": "currency",
}
CHANGE_FIELDS = VALUE_COLUMNS


class ChangeKind(TextChoices):
    ADDED = "added", "Added"
    CHANGED = "changed", "Changed"


def day_label(day: date) -> str:
    """ "Nov 27": the ledger's days are the account's own, so no time zone and, within a
    lookback window, no year."""
    return f"{day:%b} {day.day}"


@dataclasses.dataclass(frozen=True)
class FieldChange:
    field: str
    old: str | None
    new: str | None


@dataclasses.dataclass(frozen=True)
class MetricChange:
    """One metric row a run added or changed; `values` holds only the fields that changed, in
    the order of CHANGE_FIELDS."""

    level: str
    entity_id: str
    entity_name: str
    date: date
    added: bool
    restated: bool
    values: tuple[FieldChange, ...]

    @property
    def summary(self) -> str:
        """ "restated Nov 27: conversions 41 → 44", "Nov 28: spend 10 → 10.5, clicks 50 → 51",
        "added Nov 28: spend 12.34, impressions 1000, ..." (an added row's name is its own)."""
        if self.added:
            values = ", ".join(
                f"{FIELD_LABELS[change.field]} {change.new}" for change in self.values if change.field != "entity_name"
            )
            return f"added {day_label(self.date)}: {values}"
        values = ", ".join(f"{FIELD_LABELS[change.field]} {change.old} → {change.new}" for change in self.values)
        prefix = "restated " if self.restated else ""
        return f"{prefix}{day_label(self.date)}: {values}"


@dataclasses.dataclass(frozen=True)
class RunChanges:
    """What one run changed, counted (for a run's page and the changes endpoint)."""

    changed: int
    added: int
    # Changed rows of days before yesterday, and those days, oldest first.
    restated: int
    restated_days: tuple[date, ...]

    @property
    def total(self) -> int:
        return self.changed + self.added

    @property
    def summary(self) -> str:
        """ "3 rows changed, 1 added; restated Nov 26, Nov 27" or "no changes"."""
        if not self.total:
            return "no changes"
        parts = []
        if self.changed:
            parts.append(f"{self.changed} row{'s' if self.changed != 1 else ''} changed")
        if self.added:
            parts.append(
                f"{self.added} added" if self.changed else f"{self.added} row{'s' if self.added != 1 else ''} added"
            )
        text = ", ".join(parts)
        if self.restated_days:
            text += "; restated " + ", ".join(day_label(day) for day in self.restated_days)
        return text


def sync_run_for_connection(*, connection: Connection, public_id: uuid.UUID | str) -> SyncRun:
    """One run of a connection the caller may see (connection_get_for_user), by its public id;
    Http404 for a malformed id or a run of another connection, like one that does not exist."""
    try:
        public_id = uuid.UUID(str(public_id))
    except ValueError:
        raise Http404("No sync run with that id") from None
    run = SyncRun.objects.filter(connection=connection, public_id=public_id).first()
    if run is None:
        raise Http404("No sync run with that id")
    return run


def sync_runs_with_changes_for_connection(
    *,
    connection: Connection,
    outcome: str | None = None,
    since: datetime | None = None,
    trigger: str | None = None,
) -> QuerySet[SyncRun]:
    """sync_runs_for_connection, each run with `changes_count` (its ledger rows) and
    `has_restatements`: two subqueries that read only the page's runs, on the ledger's
    (run, ...) unique index. Optionally only runs of one outcome or trigger, or started since
    a time (all on the (connection, -started_at) index's range)."""
    of_run = SyncChange.objects.filter(run=OuterRef("pk"))
    count = of_run.order_by().values("run").annotate(n=Count("*")).values("n")
    runs = sync_runs_for_connection(connection=connection)
    if outcome is not None:
        runs = runs.filter(outcome=outcome)
    if since is not None:
        runs = runs.filter(started_at__gte=since)
    if trigger is not None:
        runs = runs.filter(trigger=trigger)
    return runs.annotate(
        changes_count=Coalesce(Subquery(count, output_field=IntegerField()), Value(0)),
        has_restatements=Exists(of_run.filter(restated=True)),
    )


def sync_changes_for_run(
    *, run: SyncRun, restated: bool | None = None, kind: str | None = None, field: str | None = None
) -> QuerySet[SyncChange]:
    """The ledger rows of one run the caller may see, by day, then level and entity (the order
    of the ledger's unique index), optionally only restated ones, only added or changed ones,
    or only those where one field changed. Describe them with sync_changes_describe."""
    changes = SyncChange.objects.filter(run=run)
    if restated is not None:
        changes = changes.filter(restated=restated)
    if kind is not None:
        changes = changes.filter(added=kind == ChangeKind.ADDED)
    if field is not None:
        changes = changes.filter(diff__has_key=field)
    return changes.order_by("date", "level", "entity_id")


def sync_changes_describe(*, changes: Iterable[SyncChange]) -> list[MetricChange]:
    return [
        MetricChange(
            level=change.level,
            entity_id=change.entity_id,
            entity_name=change.entity_name,
            date=change.date,
            added=change.added,
            restated=change.restated,
            values=tuple(
                FieldChange(field=name, old=change.diff[name][0], new=change.diff[name][1])
                for name in CHANGE_FIELDS
                if name in change.diff
            ),
        )
        for change in changes
    ]


def sync_run_changes_summary(*, run: SyncRun) -> RunChanges:
    """Counts of one run's changes and the days it restated: one query, grouped by day."""
    by_day = (
        SyncChange.objects.filter(run=run)
        .values("date")
        .annotate(
            n_added=Count("pk", filter=Q(added=True)),
            n_changed=Count("pk", filter=Q(added=False)),
            n_restated=Count("pk", filter=Q(restated=True)),
        )
        .order_by("date")
    )
    days = list(by_day)
    return RunChanges(
        changed=sum(day["n_changed"] for day in days),
        added=sum(day["n_added"] for day in days),
        restated=sum(day["n_restated"] for day in days),
        restated_days=tuple(day["date"] for day in days if day["n_restated"]),
    )


# --- backfills -------------------------------------------------------------------------------------


def backfills_for_connection(*, connection: Connection) -> QuerySet[Backfill]:
    """The connection's backfills, newest first (syncing_backfill_conn_idx); the one in progress,
    if any, is the first."""
    return Backfill.objects.filter(connection=connection).order_by("-created_at", "-id")


def backfill_get(*, connections: QuerySet[Connection], public_id: uuid.UUID | str) -> Backfill:
    """A backfill of one of these connections (the user's: connections_for_user), by its public
    id, with its connection; Http404 for a malformed id or anyone else's backfill, like one that
    does not exist."""
    try:
        public_id = uuid.UUID(str(public_id))
    except ValueError:
        raise Http404("No backfill with that id") from None
    backfill = (
        Backfill.objects.filter(public_id=public_id, connection__in=connections)
        .select_related("connection")
        .defer("connection__credentials")
        .first()
    )
    if backfill is None:
        raise Http404("No backfill with that id")
    return backfill


def backfills_active_by_connection(*, connection_ids: Iterable[int]) -> dict[int, Backfill]:
    """The backfill in progress of each of these connections that has one, by connection id: one
    query for a whole page of connections (the one-active unique index serves it)."""
    return {
        backfill.connection_id: backfill
        for backfill in Backfill.objects.filter(connection_id__in=list(connection_ids), status__in=BACKFILL_ACTIVE)
    }
