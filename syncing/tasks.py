"""Thin Celery tasks: take ids, delegate to the runner or a service, return quietly."""

import uuid

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from syncing.budget import api_call_buckets_prune
from syncing.dispatcher import syncs_dispatch_due
from syncing.runner import RetryLater, connection_sync_run
from syncing.services import sync_runs_prune


@shared_task(name="syncing.sync_connection", bind=True, ignore_result=True)
def sync_connection(self, connection_id: int, job_id: str) -> str | None:
    try:
        return connection_sync_run(
            connection_id=connection_id,
            job_id=uuid.UUID(job_id),
            attempt=self.request.retries,
            max_retries=settings.SYNC_TRANSIENT_RETRIES,
        )
    except RetryLater as retry:
        raise self.retry(countdown=retry.countdown, max_retries=None) from None


@shared_task(name="syncing.dispatch_due_syncs", ignore_result=True)
def dispatch_due_syncs() -> None:
    syncs_dispatch_due(now=timezone.now())


@shared_task(name="syncing.prune_sync_runs", ignore_result=True)
def prune_sync_runs() -> None:
    now = timezone.now()
    sync_runs_prune(now=now)
    api_call_buckets_prune(now=now)
