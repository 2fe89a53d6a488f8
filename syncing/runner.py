"""Run one sync job: start, fetch from the provider outside any transaction, persist, finish.

Used by the Celery task and by `manage.py sync_now --inline`. Errors are turned into the
connection's state here; only RetryLater escapes, for the caller to schedule the retry.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.db import connection as db
from django.utils import timezone

from syncing.meter import CallMeter, release_connection
from syncing.models import SyncOutcome
from syncing.providers import provider_for
from syncing.providers.base import (
    PermanentError,
    ProviderError,
    SyncCancelled,
    ThrottledError,
    TransientProviderError,
)
from syncing.scopes import connection_scopes
from syncing.services import (
    StartedSync,
    backfill_budgets,
    sync_cancel,
    sync_cancel_requested,
    sync_defer,
    sync_fail,
    sync_finish,
    sync_requeue_for_retry,
    sync_start,
)

logger = logging.getLogger(__name__)

DEFAULT_THROTTLE_PAUSE = timedelta(minutes=5)
T = TypeVar("T")


class RetryLater(Exception):
    def __init__(self, countdown: float):
        super().__init__(f"retry in {countdown:.0f} s")
        self.countdown = countdown


DATABASE_ERRORS = (OperationalError, InterfaceError)


def database_retry_delay(retries: int) -> float | None:
    """1, 2, 4 ... 30 s between tries to reach the database for a job not started yet, while the
    waits add up to less than the queued-job deadline (past it recovery takes the job over)."""
    waited = sum(min(30.0, 2.0**n) for n in range(retries))
    delay = min(30.0, 2.0**retries)
    return delay if waited + delay < settings.SYNC_QUEUED_TIMEOUT else None


def _with_database(write: Callable[[], T]) -> T:
    """Run a state write, waiting out a database outage (a restart, a failover) with backoff.

    The platform has answered and its rows are in memory: giving up now would waste the calls
    and leave the row "syncing" until recovery. Bounded by the task's soft time limit.
    """
    deadline = time.monotonic() + settings.SYNC_DATABASE_WAIT
    delay = 0.5
    while True:
        try:
            return write()
        except DATABASE_ERRORS as exc:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("Database unavailable, retrying the write in %.1f s: %s", delay, exc)
            # The connection is broken: drop it so the next try opens a new one.
            db.close()
            time.sleep(delay)
            delay = min(delay * 2, 8.0)


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
    # The sync's own deadline (see CallMeter): Celery's time limits do not apply on the threads pool.
    deadline = time.monotonic() + settings.SYNC_TASK_SOFT_TIME_LIMIT
    # No database connection is held while the platform answers: with a pool (DB_POOL_MAX_SIZE)
    # tens of syncs in flight share a few connections, each taken only for a write.
    release_connection()
    meter: CallMeter | None = None
    try:
        provider = provider_for(connection.provider)
        budgets = provider.budgets(external_account_id=connection.external_account_id)
        if started.backfill is not None:
            # A backfill's chunk stops short of the share its regular syncs keep in each budget.
            budgets = backfill_budgets(budgets=budgets)
        meter = CallMeter(
            budgets,
            clock=timezone.now,
            deadline=deadline,
            allowed_seconds=settings.SYNC_TASK_SOFT_TIME_LIMIT,
            scopes=connection_scopes(
                provider=connection.provider,
                external_account_id=connection.external_account_id,
                learned=connection.throttle_scopes or (),
            ),
            usage_window=provider.usage_window,
            connection_id=connection.pk,
            cancelled=lambda: sync_cancel_requested(started=started),
        )
        result = provider.fetch(
            connection=connection, since=started.since, until=started.until, now=started.started_at, meter=meter
        )
    except SyncCancelled:
        return _cancelled(started, meter)
    except TransientProviderError as exc:
        if meter is not None and meter.past_deadline():
            # A call that timed out at the deadline: the sync is out of time, not worth a retry now.
            return _failed(started, meter.deadline_error(), meter)
        # A backfill's chunk is not retried here: the backfill tries it again after a backoff
        # (sync_fail), without holding the connection queued, and its regular syncs back, meanwhile.
        if attempt < max_retries and started.backfill is None:
            if not _retry_later(started, exc, meter):
                # Not requeued: cancelled meanwhile.
                return _cancelled(started, meter)
            raise RetryLater(retry_backoff(attempt)) from exc
        return _failed(started, exc, meter)
    except ThrottledError as exc:
        until, throttle = exc.until or timezone.now() + DEFAULT_THROTTLE_PAUSE, exc
        _with_database(
            lambda: sync_defer(
                started=started, until=until, error=throttle, now=timezone.now(), api_calls=_calls(meter)
            )
        )
        return SyncOutcome.RATE_LIMITED
    except DATABASE_ERRORS as exc:
        # The rate budget could not be read or written: no call was made without it. Not the
        # platform's fault, so the job is retried like a transient failure, once the database
        # answers again.
        logger.warning("Database unavailable while syncing connection %s (job %s): %s", connection_id, job_id, exc)
        unavailable = TransientProviderError("The database was unavailable; retrying.")
        if started.backfill is not None:
            # A chunk is not retried through Celery: its backfill tries again after a backoff.
            return _failed(started, unavailable, meter)
        if not _retry_later(started, unavailable, meter):
            return _cancelled(started, meter)
        raise RetryLater(retry_backoff(attempt)) from exc
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
        written = _with_database(
            lambda: sync_finish(
                started=started,
                rows=result.rows,
                api_calls=meter.calls,
                now=timezone.now(),
                slow_down_until=result.slow_down_until,
                throttle=meter.pending_throttle,
            )
        )
    except Exception:
        # The rows could not be stored (a value the table refuses, the database went away):
        # the transaction rolled back, so say so now rather than leave the row syncing until
        # recovery calls it an interrupted worker.
        logger.exception("Could not store the metrics of connection %s (job %s)", connection_id, job_id)
        error = PermanentError("Could not store the fetched metrics; the operators have the details.")
        return _failed(started, error, meter)
    if written is None:
        if _with_database(lambda: sync_cancel_requested(started=started)):
            # Cancelled after the last call: the rows fetched are dropped, as promised.
            return _cancelled(started, meter)
        logger.warning("Job %s for connection %s was recovered while running; discarded", job_id, connection_id)
        return None
    return SyncOutcome.SUCCESS


def _calls(meter: CallMeter | None) -> int:
    return 0 if meter is None else meter.calls


def _failed(started: StartedSync, error: ProviderError, meter: CallMeter | None) -> str:
    # (The outcome is logged with the run, by syncing.services.)
    _with_database(lambda: sync_fail(started=started, error=error, now=timezone.now(), api_calls=_calls(meter)))
    return SyncOutcome.ERROR


def _retry_later(started: StartedSync, error: ProviderError, meter: CallMeter | None) -> bool:
    return _with_database(
        lambda: sync_requeue_for_retry(started=started, error=error, now=timezone.now(), api_calls=_calls(meter))
    )


def _cancelled(started: StartedSync, meter: CallMeter | None) -> str:
    _with_database(lambda: sync_cancel(started=started, now=timezone.now(), api_calls=_calls(meter)))
    return SyncOutcome.CANCELLED
