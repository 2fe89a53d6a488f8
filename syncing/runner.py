"""Run one sync job: start, fetch from the provider outside any transaction, persist, finish.

Used by the Celery task and by `manage.py sync_now --inline`. Errors are turned into the
connection's state here; only RetryLater escapes, for the caller to schedule the retry.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.utils import timezone

from syncing.budget import CallMeter
from syncing.models import SyncOutcome
from syncing.providers import provider_for
from syncing.providers.base import (
    PermanentError,
    ProviderError,
    ThrottledError,
    TransientProviderError,
)
from syncing.services import (
    StartedSync,
    sync_defer,
    sync_fail,
    sync_finish,
    sync_requeue_for_retry,
    sync_start,
)

logger = logging.getLogger(__name__)

DEFAULT_THROTTLE_PAUSE = timedelta(minutes=5)


class RetryLater(Exception):
    def __init__(self, countdown: float):
        super().__init__(f"retry in {countdown:.0f} s")
        self.countdown = countdown


def retry_backoff(attempt: int) -> float:
    """5 s, 10 s, 20 s, ... (SYNC_RETRY_BACKOFF doubling) capped at a minute, which keeps a
    retrying job well inside the queued-job recovery deadline."""
    return float(min(60.0, settings.SYNC_RETRY_BACKOFF * 2**attempt))


def connection_sync_run(*, connection_id: int, job_id: uuid.UUID, attempt: int = 0, max_retries: int = 0) -> str | None:
    """Run the job if it is ours. Returns the outcome, or None when there was nothing to do."""
    started = sync_start(connection_id=connection_id, job_id=job_id, now=timezone.now())
    if started is None:
        logger.info("Job %s for connection %s is not queued any more; nothing to do", job_id, connection_id)
        return None
    connection = started.connection
    meter: CallMeter | None = None
    try:
        provider = provider_for(connection.provider)
        meter = CallMeter(provider.budgets(external_account_id=connection.external_account_id), clock=timezone.now)
        result = provider.fetch(
            connection=connection, since=started.since, until=started.until, now=started.started_at, meter=meter
        )
    except TransientProviderError as exc:
        if attempt < max_retries:
            sync_requeue_for_retry(started=started, error=exc, now=timezone.now(), api_calls=_calls(meter))
            raise RetryLater(retry_backoff(attempt)) from exc
        return _failed(started, exc, meter)
    except ThrottledError as exc:
        until = exc.until or timezone.now() + DEFAULT_THROTTLE_PAUSE
        sync_defer(started=started, until=until, error=exc, now=timezone.now(), api_calls=_calls(meter))
        return SyncOutcome.RATE_LIMITED
    except ProviderError as exc:
        return _failed(started, exc, meter)
    except SoftTimeLimitExceeded:
        error = PermanentError("The sync took too long and was stopped; it will be tried again.")
        return _failed(started, error, meter)
    except Exception:
        # A bug or an unexpected library error: the details go to the log (providers never put
        # secrets in exceptions), the user sees a short message.
        logger.exception("Unexpected error syncing connection %s (job %s)", connection_id, job_id)
        error = PermanentError("Unexpected error while syncing; the operators have the details.")
        return _failed(started, error, meter)

    try:
        written = sync_finish(
            started=started,
            rows=result.rows,
            api_calls=meter.calls,
            now=timezone.now(),
            slow_down_until=result.slow_down_until,
        )
    except Exception:
        # The rows could not be stored (a value the table refuses, the database went away):
        # the transaction rolled back, so say so now rather than leave the row syncing until
        # recovery calls it an interrupted worker.
        logger.exception("Could not store the metrics of connection %s (job %s)", connection_id, job_id)
        error = PermanentError("Could not store the fetched metrics; the operators have the details.")
        return _failed(started, error, meter)
    if written is None:
        logger.warning("Job %s for connection %s was recovered while running; discarded", job_id, connection_id)
        return None
    return SyncOutcome.SUCCESS


def _calls(meter: CallMeter | None) -> int:
    return 0 if meter is None else meter.calls


def _failed(started: StartedSync, error: ProviderError, meter: CallMeter | None) -> str:
    logger.info("Sync of connection %s failed (%s): %s", started.connection.pk, error.error_class, error.message)
    sync_fail(started=started, error=error, now=timezone.now(), api_calls=_calls(meter))
    return SyncOutcome.ERROR
