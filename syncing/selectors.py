"""Reads of sync history and jobs, scoped to the user's workspaces."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet
from django.http import Http404

from connections.models import BUSY_STATUSES, Connection, SyncStatus
from connections.selectors import connections_for_user
from syncing.models import SyncOutcome, SyncRun

# How a job reads once its connection has moved on, from its last attempt's outcome.
_JOB_STATUS_BY_OUTCOME = {
    SyncOutcome.SUCCESS: "succeeded",
    SyncOutcome.ERROR: "failed",
    SyncOutcome.RATE_LIMITED: "rate_limited",
    SyncOutcome.INTERRUPTED: "interrupted",
    SyncOutcome.RUNNING: "syncing",
    SyncOutcome.RETRYING: "queued",
}
JOB_FINISHED = {"succeeded", "failed", "rate_limited", "interrupted"}


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


def job_get_for_user(*, user: AbstractBaseUser, job_id: uuid.UUID | str) -> JobState:
    """A job's state: from its connection while queued or syncing, from its runs afterwards."""
    try:
        job_id = uuid.UUID(str(job_id))
    except ValueError:
        raise Http404("No job with that id") from None
    visible = connections_for_user(user=user)
    runs = list(SyncRun.objects.filter(job_id=job_id, connection__in=visible).order_by("started_at", "id"))
    connection = visible.filter(job_id=job_id).first()
    if connection is None and runs:
        connection = visible.get(pk=runs[-1].connection_id)
    if connection is None:
        raise Http404("No job with that id")

    last = runs[-1] if runs else None
    current = connection.job_id == job_id
    if current and connection.sync_status in BUSY_STATUSES:
        status = connection.sync_status
    elif last is not None:
        status = _JOB_STATUS_BY_OUTCOME[last.outcome]
    else:
        # Never started: recovered as lost in the queue.
        status = "failed" if connection.sync_status == SyncStatus.ERROR else "queued"
    error = last.error_message if last is not None and last.error_message else None
    if error is None and status == "failed" and current:
        error = connection.last_sync_error
    return JobState(
        job_id=job_id,
        connection_id=connection.public_id,
        status=status,
        queued_at=connection.queued_at if current else None,
        started_at=runs[0].started_at if runs else None,
        finished_at=last.finished_at if last is not None and status in JOB_FINISHED else None,
        attempts=len(runs),
        rows_fetched=last.rows_fetched if last is not None and status == "succeeded" else None,
        rows_written=last.rows_written if last is not None and status == "succeeded" else None,
        error=error,
    )
