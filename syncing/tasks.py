"""Thin Celery tasks: take ids, delegate to the runner or a service, return quietly."""

import logging
import uuid

from celery import shared_task
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from syncing.budget import api_call_buckets_prune
from syncing.dispatcher import syncs_dispatch_due
from syncing.runner import RetryLater, connection_sync_run, database_retry_delay
from syncing.scopes import platform_scopes_prune
from syncing.services import heartbeats_prune, sync_runs_prune
from syncing.task_names import DISPATCH_TASK_NAME, PRUNE_TASK_NAME, SYNC_TASK_NAME

logger = logging.getLogger(__name__)


@shared_task(name=SYNC_TASK_NAME, bind=True, ignore_result=True)
def sync_connection(self, connection_id: int, job_id: str, db_retries: int = 0) -> str | None:
    try:
        return connection_sync_run(
            connection_id=connection_id,
            job_id=uuid.UUID(job_id),
            # Retries spent waiting for the database are not the provider's retries.
            attempt=self.request.retries - db_retries,
            max_retries=settings.SYNC_TRANSIENT_RETRIES,
        )
    except RetryLater as retry:
        raise self.retry(countdown=retry.countdown, max_retries=None) from None
    except DatabaseError as exc:
        # The database could not be reached before the job started (a restart, an outage): the
        # row is still queued for this job, so try again with backoff rather than use up the
        # message. Past the queued-job deadline recovery has given up on the job anyway.
        delay = database_retry_delay(db_retries)
        if delay is None:
            logger.warning("Database unavailable for job %s; giving it up to recovery: %s", job_id, exc)
            return None
        logger.warning("Database unavailable for job %s, retrying in %.0f s: %s", job_id, delay, exc)
        raise self.retry(countdown=delay, max_retries=None, kwargs={"db_retries": db_retries + 1}) from None


@shared_task(name=DISPATCH_TASK_NAME, ignore_result=True)
def dispatch_due_syncs() -> None:
    now = timezone.now()
    try:
        syncs_dispatch_due(now=now)
    except DatabaseError as exc:
        # One line per tick, not a traceback: the next tick tries again, and /readyz says why.
        logger.warning("Dispatcher tick skipped, database unavailable: %s", exc)


@shared_task(name=PRUNE_TASK_NAME, ignore_result=True)
def prune_sync_runs() -> None:
    now = timezone.now()
    sync_runs_prune(now=now)
    api_call_buckets_prune(now=now)
    heartbeats_prune(now=now)
    platform_scopes_prune(now=now)
