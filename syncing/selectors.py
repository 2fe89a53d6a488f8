"""Reads of sync history and jobs: scoped to the user's workspaces for the API, or to the
connections an operator command names."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet
from django.http import Http404

from connections.models import BUSY_STATUSES, Connection, SyncStatus
from connections.selectors import connections_for_user
from syncing.models import JobStatus, SyncOutcome, SyncRun

# How a job reads once its connection has moved on, from its last attempt's outcome.
_JOB_STATUS_BY_OUTCOME: dict[str, JobStatus] = {
    SyncOutcome.SUCCESS: JobStatus.SUCCEEDED,
    SyncOutcome.ERROR: JobStatus.FAILED,
    SyncOutcome.RATE_LIMITED: JobStatus.RATE_LIMITED,
    SyncOutcome.INTERRUPTED: JobStatus.INTERRUPTED,
    SyncOutcome.RUNNING: JobStatus.SYNCING,
    SyncOutcome.RETRYING: JobStatus.QUEUED,
}
JOB_FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.RATE_LIMITED, JobStatus.INTERRUPTED})
# Attempts that ended their job; a running or retrying one did not (yet).
_ENDED = frozenset({SyncOutcome.SUCCESS, SyncOutcome.ERROR, SyncOutcome.RATE_LIMITED, SyncOutcome.INTERRUPTED})


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
