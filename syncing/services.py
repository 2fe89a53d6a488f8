"""The sync state machine. Every transition is one conditional UPDATE whose row count says
whether this caller won; nothing here checks a state and then acts on it in a second statement.

    idle/error --enqueue/claim--> queued --start--> syncing --finish--> idle
                                                            --fail----> error
                                                            --defer---> idle (rate limited)
                                                            --retry---> queued (same job)
    idle/error due, no budget left --defer--> stays, next_sync_at moved on (rate limited)
    idle/error rate limited --manual enqueue--> refused, unchanged (RateLimited)
    error (access expired) --reconnect--> idle, scheduled again
    queued/syncing past their deadline --recover--> error

This is the one module that writes a connection's sync state and schedule (sync_status, job_id,
queued_at, queued_trigger, next_sync_at, rate_limited_until). The dispatcher decides what is due
and how many (syncing.dispatcher); connections.services is the entry point for frequency changes
and reconnects; both call in here for the writes.

Provider I/O never happens here: syncing.runner calls the provider between start and finish,
outside any transaction.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import operator
import uuid
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta

from django.conf import settings
from django.db import connection as db
from django.db import models, transaction
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from adsync.celery import app as celery_app
from connections.models import (
    AUTH_ERROR_KIND,
    BUSY_STATUSES,
    RUNNABLE_STATUSES,
    Connection,
    ErrorKind,
    SyncFrequency,
    SyncStatus,
    SyncTrigger,
)
from syncing import schedule
from syncing.models import Heartbeat, SyncOutcome, SyncRun, SyncWindow
from syncing.persist import metrics_persist_changed
from syncing.providers import provider_for
from syncing.providers.base import MetricRow, PermanentError, ProviderError, ThrottledError
from syncing.scopes import (
    connection_scopes,
    scope_connections,
    scope_states,
    scopes_clear_after_answer,
    scopes_probe_release,
    scopes_throttle,
)
from syncing.task_names import SYNC_QUEUE, SYNC_TASK_NAME

logger = logging.getLogger(__name__)


class BrokerUnavailable(Exception):
    """The job could not be handed to the queue; the connection was left as it was."""


class RateLimited(Exception):
    """A manual sync was asked for while the platform throttles the connection: calling it now
    would only be throttled again and push the resume time further out. Nothing was changed."""

    def __init__(self, *, until: datetime) -> None:
        super().__init__(f"rate limited until {until.isoformat()}")
        self.until = until


@dataclasses.dataclass(frozen=True)
class EnqueueResult:
    job_id: uuid.UUID
    status: str
    created: bool


@dataclasses.dataclass(frozen=True)
class Claim:
    """A connection moved to queued, with what it was before (to revert if sending fails)."""

    connection_id: int
    job_id: uuid.UUID
    previous_status: str
    previous_job_id: uuid.UUID | None
    previous_queued_at: datetime | None
    previous_trigger: str


@dataclasses.dataclass(frozen=True)
class StartedSync:
    connection: Connection
    run: SyncRun
    job_id: uuid.UUID
    started_at: datetime
    since: date
    until: date
    restatement: bool
    # next_sync_at as it was before this start moved it on: put back if the job is retried.
    slot: datetime | None
    # Which credentials this attempt runs with (their last replacement time).
    credentials_version: datetime | None = None


# --- enqueue ----------------------------------------------------------------------------------


def connection_enqueue_sync(
    *, connection: Connection, trigger: str = SyncTrigger.MANUAL, now: datetime | None = None, send: bool = True
) -> EnqueueResult:
    """Queue a sync for the connection, or return the job already queued or running.

    Single-flight: of any number of concurrent callers exactly one moves the row to queued; the
    others get that job. The message is sent after commit; if the broker refuses it, the row is
    put back as it was and BrokerUnavailable is raised. With send=False the caller runs the job
    itself (manage.py sync_now --inline).

    A manual sync of a connection the platform throttles (rate_limited_until after now) raises
    RateLimited and changes nothing; a job already queued or running is still returned. Scheduled
    claims never come here: the dispatcher holds throttled rows back through next_sync_at.
    """
    now = now or timezone.now()
    # A lost race means the row changed under us; three rounds settle it (the loser of a race
    # with another enqueue sees queued on its next read).
    for _ in range(3):
        current = (
            Connection.objects.filter(pk=connection.pk)
            .values("sync_status", "job_id", "queued_at", "queued_trigger", "rate_limited_until")
            .first()
        )
        if current is None:
            raise Connection.DoesNotExist(f"connection {connection.pk} no longer exists")
        if current["sync_status"] in BUSY_STATUSES:
            return EnqueueResult(job_id=_owning_job(current["job_id"]), status=current["sync_status"], created=False)
        as_read: dict = {"sync_status": current["sync_status"]}
        if trigger == SyncTrigger.MANUAL:
            until = current["rate_limited_until"]
            if until is not None and until > now:
                raise RateLimited(until=until)
            # A throttle on a scope the connection shares (Meta's app, Google's developer token)
            # holds it back too, even before the dispatcher has deferred it.
            shared = _scope_throttle(connection, now)
            if shared is not None:
                raise RateLimited(until=shared)
            # Judged on this read: a throttle written in between (the dispatcher's defer) makes
            # the UPDATE miss, and the next round reads it.
            as_read["rate_limited_until"] = until
        job_id = uuid.uuid4()
        won = (
            Connection.objects.filter(pk=connection.pk, **as_read).update(
                sync_status=SyncStatus.QUEUED, job_id=job_id, queued_at=now, queued_trigger=trigger
            )
            == 1
        )
        if won:
            claim = Claim(
                connection_id=connection.pk,
                job_id=job_id,
                previous_status=current["sync_status"],
                previous_job_id=current["job_id"],
                previous_queued_at=current["queued_at"],
                previous_trigger=current["queued_trigger"],
            )
            if send:
                transaction.on_commit(functools.partial(jobs_send, claims=[claim]))
            return EnqueueResult(job_id=job_id, status=SyncStatus.QUEUED, created=True)
    # Three lost races: others keep enqueueing, so the row is busy with one of their jobs.
    final = Connection.objects.filter(pk=connection.pk).values("sync_status", "job_id").get()
    return EnqueueResult(job_id=_owning_job(final["job_id"]), status=final["sync_status"], created=False)


def _scope_throttle(connection: Connection, now: datetime) -> datetime | None:
    """When the latest throttle in force on the connection's scopes ends; None if there is none."""
    states = scope_states(scopes=_scopes_of(connection))
    return max((s.throttled_until for s in states.values() if s.throttled(now) and s.throttled_until), default=None)


def _scopes_of(connection: Connection) -> tuple[str, ...]:
    return connection_scopes(
        provider=connection.provider,
        external_account_id=connection.external_account_id,
        learned=connection.throttle_scopes or (),
    )


def _owning_job(job_id: uuid.UUID | None) -> uuid.UUID:
    # connections_connection_busy_has_job: a queued or syncing row always has its job.
    if job_id is None:
        raise RuntimeError("a busy connection without a job_id (the busy_has_job constraint was bypassed)")
    return job_id


def jobs_send(*, claims: list[Claim], queue: str = SYNC_QUEUE) -> None:
    """Publish one message per claim (to sync_jobs unless told: syncing.task_names); revert the
    claims that could not be sent."""
    sent = 0
    try:
        with celery_app.producer_or_acquire() as producer:
            for claim in claims:
                celery_app.send_task(
                    SYNC_TASK_NAME, args=[claim.connection_id, str(claim.job_id)], producer=producer, queue=queue
                )
                sent += 1
    except Exception as exc:  # kombu raises OperationalError, redis-py ConnectionError, OSError...
        unsent = claims[sent:]
        claims_revert(claims=unsent)
        logger.warning("Broker unavailable, %d sync job(s) not queued: %s", len(unsent), exc)
        raise BrokerUnavailable("The job queue is unavailable; try again in a moment.") from exc


def claims_revert(*, claims: Iterable[Claim]) -> None:
    """Put claimed rows back as they were, but only those still queued for the claimed job."""
    for claim in claims:
        Connection.objects.filter(pk=claim.connection_id, sync_status=SyncStatus.QUEUED, job_id=claim.job_id).update(
            sync_status=claim.previous_status,
            job_id=claim.previous_job_id,
            queued_at=claim.previous_queued_at,
            queued_trigger=claim.previous_trigger,
        )


# --- claim and defer (the dispatcher's writes; what is due and how many is its own business) ---


class NewJobId(models.Func):
    """A fresh random UUID per row, generated by SQLite inside the claiming UPDATE (as the 32
    hex characters it stores UUIDs as; PostgreSQL uses gen_random_uuid() in _QUEUE_RETURNING)."""

    output_field = models.UUIDField()

    def as_sql(self, compiler, connection, function=None, template=None, arg_joiner=None, **extra_context):
        return "lower(hex(randomblob(16)))", ()


_QUEUE_RETURNING = f"""
UPDATE connections
SET sync_status = '{SyncStatus.QUEUED}', job_id = gen_random_uuid(), queued_at = %s,
    queued_trigger = '{SyncTrigger.SCHEDULED}'
WHERE id = ANY(%s) AND sync_status IN ('{SyncStatus.IDLE}', '{SyncStatus.ERROR}')
RETURNING id, job_id
"""


def connections_queue_claimed(*, ids: list[int], now: datetime) -> dict[int, uuid.UUID]:
    """idle/error -> queued with a new job each, for rows the caller holds locked
    (syncing.dispatcher.connections_claim_due); returns their job ids. Sends nothing.

    The rows are locked, so the condition always holds here; it stays as the state machine's
    guard (and for SQLite, which has no row locks but one writer at a time). On PostgreSQL one
    UPDATE ... RETURNING does it (bench/dispatcher.py: 47 -> 39 ms for 1,000 rows); SQLite
    updates, then reads the generated ids back.
    """
    if not ids:
        return {}
    if db.vendor == "postgresql":
        with db.cursor() as cursor:
            cursor.execute(_QUEUE_RETURNING, [now, ids])
            return dict(cursor.fetchall())
    Connection.objects.filter(pk__in=ids, sync_status__in=RUNNABLE_STATUSES).update(
        sync_status=SyncStatus.QUEUED, job_id=NewJobId(), queued_at=now, queued_trigger=SyncTrigger.SCHEDULED
    )
    queued = Connection.objects.filter(pk__in=ids, sync_status=SyncStatus.QUEUED, queued_at=now)
    # A queued row always has its job (the busy_has_job constraint).
    return {pk: job_id for pk, job_id in queued.values_list("pk", "job_id") if job_id is not None}


def connections_defer(*, deferred: Mapping[datetime, list[int]]) -> None:
    """Due connections whose provider budget has no call left wait until it has (the time is
    the key): not queued, shown as rate limited meanwhile. Only rows still runnable."""
    for until, ids in deferred.items():
        Connection.objects.filter(pk__in=ids, sync_status__in=RUNNABLE_STATUSES, paused_at__isnull=True).update(
            next_sync_at=until, rate_limited_until=until
        )
    logger.info("Deferred %d due sync(s) to stay within provider rate budgets", sum(map(len, deferred.values())))


def connections_defer_in_scopes(*, scopes: Iterable[str], until: datetime) -> int:
    """Every connection in throttled scopes waits until the throttle's end, without a call: the
    idle and errored ones now (their next sync moves to at least `until`, shown as rate limited,
    the same resume time on each); queued and running ones stop at their next call's check
    (syncing.budget.CallMeter.spend). Runs in the caller's transaction."""
    members = functools.reduce(operator.or_, (scope_connections(scope) for scope in scopes), Q(pk__in=[]))
    return (
        Connection.objects.filter(members, sync_status__in=RUNNABLE_STATUSES)
        .filter(Q(rate_limited_until__isnull=True) | Q(rate_limited_until__lt=until))
        # An unscheduled row (manual, or waiting for a reconnect) stays unscheduled.
        .update(
            rate_limited_until=until,
            next_sync_at=Case(When(next_sync_at__lt=until, then=Value(until)), default=F("next_sync_at")),
        )
    )


# --- schedule (frequency changes and reconnects, through connections.services) -----------------


def connection_reschedule(*, connection: Connection, frequency: str, now: datetime) -> datetime | None:
    """Store the frequency and the next due time it gives, at once; returns that time.

    The next due time runs from the last attempt's start. The UPDATE is conditional on the
    values it was computed from, so a worker's start that lands in between (and moves the last
    attempt) makes us compute again rather than write a stale time; and the worker's start is
    conditional on the frequency it read, so it cannot overwrite this with the old frequency.
    It never schedules earlier than a platform throttle allows, and a connection waiting for a
    reconnect stays unscheduled. A queued or running job is left alone.
    """
    fields = ("last_sync_attempted_at", "rate_limited_until", "sync_status", "last_sync_error_kind", "paused_at")
    for _ in range(5):
        current = Connection.objects.filter(pk=connection.pk).values(*fields).get()
        next_at = schedule.next_sync_after_change(
            frequency=frequency,
            last_attempted_at=current["last_sync_attempted_at"],
            public_id=connection.public_id,
            now=now,
        )
        if next_at is not None and current["rate_limited_until"] is not None:
            next_at = max(next_at, current["rate_limited_until"])
        if current["sync_status"] == SyncStatus.ERROR and current["last_sync_error_kind"] == AUTH_ERROR_KIND:
            next_at = None
        if current["paused_at"] is not None:
            next_at = None  # the new frequency applies once resumed
        if Connection.objects.filter(pk=connection.pk, **current).update(
            sync_frequency=frequency, next_sync_at=next_at
        ):
            return next_at
    raise RuntimeError(f"connection {connection.pk} kept changing while its frequency was being set")


def connections_unschedule(*, connections: models.QuerySet[Connection]) -> int:
    """Set to manual (pause): no automated syncs, a queued or running job left to finish.

    One UPDATE however many rows: nothing per row to compute.
    """
    return connections.update(sync_frequency=SyncFrequency.MANUAL, next_sync_at=None)


def connections_pause(*, connections: models.QuerySet[Connection], reason: str, now: datetime) -> int:
    """Pause automated syncs, keeping each frequency for the resume: one UPDATE for all the rows
    not paused yet. A queued or running job finishes; Sync Now still works while paused."""
    return connections.filter(paused_at__isnull=True).update(paused_at=now, pause_reason=reason, next_sync_at=None)


def connection_resume(*, connection: Connection, now: datetime) -> bool:
    """paused -> scheduled again by its kept frequency, from its last attempt (as a frequency
    change would: due now if the interval has passed). False if it was not paused.

    Conditional on the values the schedule is computed from, like connection_reschedule. It
    never schedules earlier than a platform throttle allows, and a connection waiting for a
    reconnect stays unscheduled (the reconnect schedules it).
    """
    fields = ("sync_frequency", "last_sync_attempted_at", "rate_limited_until", "sync_status", "last_sync_error_kind")
    for _ in range(5):
        current = Connection.objects.filter(pk=connection.pk, paused_at__isnull=False).values(*fields).first()
        if current is None:
            return False
        next_at = schedule.next_sync_after_change(
            frequency=current["sync_frequency"],
            last_attempted_at=current["last_sync_attempted_at"],
            public_id=connection.public_id,
            now=now,
        )
        if next_at is not None and current["rate_limited_until"] is not None:
            next_at = max(next_at, current["rate_limited_until"])
        if current["sync_status"] == SyncStatus.ERROR and current["last_sync_error_kind"] == AUTH_ERROR_KIND:
            next_at = None
        if Connection.objects.filter(pk=connection.pk, paused_at__isnull=False, **current).update(
            paused_at=None, pause_reason="", next_sync_at=next_at
        ):
            return True
    raise RuntimeError(f"connection {connection.pk} kept changing while it was being resumed")


def connection_resume_after_reconnect(*, connection: Connection, now: datetime) -> bool:
    """error (access expired) -> idle, the error cleared, scheduled again from its last attempt.

    sync_fail unschedules a connection whose access failed, so that it stops calling the
    platform with a dead token; new credentials put it back in business. Any other state is left
    as it is. Runs in the caller's transaction, the one that stores the new credentials.
    """
    with transaction.atomic(savepoint=False):
        # Locked, so the schedule is computed from values nobody changes before we write.
        current = (
            Connection.objects.select_for_update()
            .filter(pk=connection.pk)
            .values("sync_frequency", "last_sync_attempted_at", "paused_at")
            .get()
        )
        next_at = schedule.next_sync_after_change(
            frequency=current["sync_frequency"],
            last_attempted_at=current["last_sync_attempted_at"],
            public_id=connection.public_id,
            now=now,
        )
        if current["paused_at"] is not None:
            next_at = None  # reconnected, still paused
        resumed = Connection.objects.filter(
            pk=connection.pk, sync_status=SyncStatus.ERROR, last_sync_error_kind=AUTH_ERROR_KIND
        ).update(
            sync_status=SyncStatus.IDLE,
            last_sync_error=None,
            last_sync_error_kind="",
            next_sync_at=next_at,
        )
    return resumed == 1


# --- start ------------------------------------------------------------------------------------


def sync_start(*, connection_id: int, job_id: uuid.UUID, now: datetime) -> StartedSync | None:
    """Take the job: queued -> syncing for this job_id. None when it is not ours to run.

    This is the real lock. A duplicate or redelivered message, a job that recovery already gave
    up on, or a job superseded by a newer one all find the row in another state and return None.
    """
    for _ in range(3):
        conn = Connection.objects.filter(pk=connection_id).first()
        if conn is None or conn.sync_status != SyncStatus.QUEUED or conn.job_id != job_id:
            return None
        restatement = schedule.restatement_due(last_restated_at=conn.last_restated_at, now=now)
        lookback = conn.lookback_days or _default_lookback(conn.provider)
        since, until = schedule.sync_window(
            timezone=conn.timezone, now=now, lookback_days=lookback if restatement else None
        )
        next_at = schedule.next_sync_after_start(
            frequency=conn.sync_frequency,
            trigger=conn.queued_trigger,
            slot=conn.next_sync_at,
            started_at=now,
            public_id=conn.public_id,
        )
        if conn.paused_at is not None:
            next_at = None  # a Sync Now while paused: automated syncs stay paused
        with transaction.atomic():
            # Also conditional on the schedule we computed from: a frequency change in between
            # wins, and we compute again from the new values.
            won = (
                Connection.objects.filter(
                    pk=connection_id,
                    sync_status=SyncStatus.QUEUED,
                    job_id=job_id,
                    sync_frequency=conn.sync_frequency,
                    next_sync_at=conn.next_sync_at,
                    paused_at=conn.paused_at,
                ).update(
                    sync_status=SyncStatus.SYNCING,
                    last_sync_attempted_at=now,
                    total_syncs_attempted=F("total_syncs_attempted") + 1,
                    next_sync_at=next_at,
                )
                == 1
            )
            if not won:
                continue
            run = SyncRun.objects.create(
                connection_id=connection_id,
                job_id=job_id,
                trigger=conn.queued_trigger or SyncTrigger.MANUAL,
                window=SyncWindow.LOOKBACK if restatement else SyncWindow.RECENT,
                window_since=since,
                window_until=until,
                started_at=now,
            )
        slot = conn.next_sync_at
        conn.sync_status = SyncStatus.SYNCING
        conn.last_sync_attempted_at = now
        conn.total_syncs_attempted += 1
        conn.next_sync_at = next_at
        return StartedSync(
            connection=conn,
            run=run,
            job_id=job_id,
            started_at=now,
            since=since,
            until=until,
            restatement=restatement,
            slot=slot,
            credentials_version=conn.credentials_updated_at,
        )
    return None


def _default_lookback(provider: str) -> int:
    try:
        return provider_for(provider).default_lookback_days
    except ProviderError:
        return 7


def _mine(started: StartedSync) -> models.QuerySet[Connection]:
    return Connection.objects.filter(pk=started.connection.pk, sync_status=SyncStatus.SYNCING, job_id=started.job_id)


# --- finish -----------------------------------------------------------------------------------


def sync_finish(
    *,
    started: StartedSync,
    rows: list[MetricRow],
    api_calls: int,
    now: datetime,
    slow_down_until: datetime | None = None,
    throttle: ThrottledError | None = None,
) -> int | None:
    """syncing -> idle, writing only changed metric rows, in one short transaction.

    Returns the number of rows written, or None when the job was no longer ours (recovery gave
    up on it meanwhile): then nothing at all is written. With slow_down_until the connection
    also waits until then, shown as rate limited. With `throttle` (the platform's last answer
    carried data and said a scope is now throttled) the rows are kept, and the connection and
    every other one in the throttled scopes wait until the throttle's end.

    Answers without a throttle lift the throttles of the connection's scopes that are over:
    a probe's success resumes every connection in the scope.
    """
    if throttle is not None and throttle.until is not None:
        slow_down_until = max(slow_down_until or throttle.until, throttle.until)
    with transaction.atomic():
        written = metrics_persist_changed(connection_id=started.connection.pk, rows=rows, now=now)
        changes: dict = {
            "sync_status": SyncStatus.IDLE,
            "last_sync_completed_at": now,
            "last_sync_error": None,
            "last_sync_error_kind": "",
            "rate_limited_until": None,
        }
        if written:
            changes["last_metrics_changed_at"] = now
            changes["total_syncs_with_changes"] = F("total_syncs_with_changes") + 1
        if started.restatement:
            changes["last_restated_at"] = started.started_at
        if slow_down_until is not None:
            changes["rate_limited_until"] = slow_down_until
            changes["next_sync_at"] = _deferred_next_sync(slow_down_until)
        if _mine(started).update(**changes) != 1:
            transaction.set_rollback(True)
            return None
        if api_calls:
            scopes_clear_after_answer(scopes=_scopes_of(started.connection), now=now)
        if throttle is not None and throttle.scopes and slow_down_until is not None:
            _scopes_throttle(throttle, slow_down_until, now)
        _run_close(started, SyncOutcome.SUCCESS, None, now, api_calls, rows_fetched=len(rows), rows_written=written)
    return written


def _scopes_throttle(error: ThrottledError, until: datetime, now: datetime) -> None:
    scopes_throttle(scopes=error.scopes, until=until, reason=error.message, now=now)
    deferred = connections_defer_in_scopes(scopes=error.scopes, until=until)
    logger.info(
        "Throttle on %s until %s: %d other connection(s) deferred without a call",
        ", ".join(error.scopes),
        until.isoformat(),
        deferred,
    )


def sync_fail(*, started: StartedSync, error: ProviderError, now: datetime, api_calls: int = 0) -> bool:
    """syncing -> error, with a short message a person can act on.

    Expired access unschedules the connection: retrying every interval with a dead token only
    spends the platform's budget on failures. Reconnecting schedules it again
    (connections.services.connection_credentials_replace). A restatement the platform refuses
    outright is not asked for again on every following sync: ordinary syncs carry on with the
    recent days, and the lookback is tried again after the restatement interval.
    """
    changes: dict = {
        "sync_status": SyncStatus.ERROR,
        "last_sync_error": error.message,
        "last_sync_error_kind": error.error_class,
    }
    if error.error_class == AUTH_ERROR_KIND:
        changes["next_sync_at"] = None
    if started.restatement and error.error_class == PermanentError.error_class:
        changes["last_restated_at"] = started.started_at
    with transaction.atomic():
        mine = _mine(started)
        if error.error_class == AUTH_ERROR_KIND:
            # Only if nobody reconnected while this attempt ran with the old credentials; if
            # somebody did, the failure says nothing about the new ones: back to idle, on schedule.
            mine = mine.filter(credentials_updated_at=started.credentials_version)
            if not mine.update(**changes):
                if _mine(started).update(sync_status=SyncStatus.IDLE) != 1:
                    return False
                _run_close(started, SyncOutcome.ERROR, error, now, api_calls)
                return True
        elif mine.update(**changes) != 1:
            return False
        # Not an answer either way about a shared throttle: another connection probes.
        scopes_probe_release(connection_id=started.connection.pk, now=now)
        _run_close(started, SyncOutcome.ERROR, error, now, api_calls)
    return True


def _deferred_next_sync(until: datetime) -> Case:
    # Manual and paused connections stay unscheduled; scheduled ones wait until access is regained.
    return Case(
        When(Q(sync_frequency=SyncFrequency.MANUAL) | Q(paused_at__isnull=False), then=Value(None)),
        When(Q(next_sync_at__isnull=True) | Q(next_sync_at__lt=until), then=Value(until)),
        default=F("next_sync_at"),
    )


def sync_defer(
    *, started: StartedSync, until: datetime, error: ProviderError, now: datetime, api_calls: int = 0
) -> bool:
    """syncing -> idle while the platform throttles us: not a failure, resumes by itself.

    A throttle on shared scopes (error.scopes: Meta's app, Google's developer token...) is
    stored once for each, and every other connection in them waits until the same time without
    a call. A throttle of this connection alone (our own budget, a scope already throttled)
    releases its probe, if it was one, for another connection to try."""
    with transaction.atomic():
        won = _mine(started).update(
            sync_status=SyncStatus.IDLE, rate_limited_until=until, next_sync_at=_deferred_next_sync(until)
        )
        if won != 1:
            return False
        if isinstance(error, ThrottledError) and error.scopes:
            _scopes_throttle(error, until, now)
        else:
            scopes_probe_release(connection_id=started.connection.pk, now=now)
        _run_close(started, SyncOutcome.RATE_LIMITED, error, now, api_calls)
    return True


def sync_requeue_for_retry(*, started: StartedSync, error: ProviderError, now: datetime, api_calls: int = 0) -> bool:
    """syncing -> queued for the same job, so the retried task can start it again.

    The schedule is put back as it was before this attempt started, so the retried start
    serves the same slot instead of moving it on a second time. Each retry is an attempt of its
    own (total_syncs_attempted counts calls to the platform, not jobs).
    """
    with transaction.atomic():
        # A connection set to manual or paused while this attempt ran stays unscheduled.
        slot: Case | None = None
        if started.slot is not None:
            slot = Case(
                When(Q(sync_frequency=SyncFrequency.MANUAL) | Q(paused_at__isnull=False), then=Value(None)),
                default=Value(started.slot),
            )
        if _mine(started).update(sync_status=SyncStatus.QUEUED, queued_at=now, next_sync_at=slot) != 1:
            return False
        scopes_probe_release(connection_id=started.connection.pk, now=now)
        _run_close(started, SyncOutcome.RETRYING, error, now, api_calls)
    return True


def _run_close(
    started: StartedSync,
    outcome: str,
    error: ProviderError | None,
    now: datetime,
    api_calls: int,
    *,
    rows_fetched: int = 0,
    rows_written: int = 0,
) -> None:
    """Close the attempt's run and count it, inside the caller's transaction; log it after commit."""
    SyncRun.objects.filter(pk=started.run.pk).update(
        outcome=outcome,
        finished_at=now,
        api_calls=api_calls,
        rows_fetched=rows_fetched,
        rows_written=rows_written,
        error_class=error.error_class if error else "",
        error_message=error.message if error else "",
    )
    duration = max(0.0, (now - started.started_at).total_seconds())
    sync_counters_add(
        provider=started.connection.provider,
        outcome=outcome,
        durations=[duration],
        api_calls=api_calls,
        rows_written=rows_written,
    )
    fields = {
        "connection_id": str(started.connection.public_id),
        "job_id": str(started.job_id),
        "provider": started.connection.provider,
        "trigger": started.run.trigger,
        "window": started.run.window,
        "api_calls": api_calls,
        "rows_fetched": rows_fetched,
        "rows_written": rows_written,
        "outcome": outcome,
        "duration_ms": round(duration * 1000),
    }
    if error is not None:
        fields["error_class"] = error.error_class
    transaction.on_commit(functools.partial(_log_run, fields, error))


def _log_run(fields: dict, error: ProviderError | None) -> None:
    # One line per finished attempt, greppable as key=value; with LOG_FORMAT=json the same
    # fields become the JSON object's keys (adsync.logs.JsonFormatter reads record.fields).
    text = " ".join(f"{key}={value}" for key, value in fields.items())
    if error is not None:
        text += f" error={error.message!r}"
    logger.info("sync finished %s", text, extra={"fields": fields})


# Histogram bounds of a sync's duration in seconds (/metrics: adsync_sync_duration_seconds);
# realtime syncs at real platform latency fall between 0.5 and 5 s.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
INF_BUCKET = -1.0  # how +Inf is stored in sync_counters.le

_COUNTERS_UPSERT = """
INSERT INTO sync_counters (provider, outcome, le, count, duration_seconds_sum, api_calls, rows_written)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (provider, outcome, le) DO UPDATE SET
    count = sync_counters.count + excluded.count,
    duration_seconds_sum = sync_counters.duration_seconds_sum + excluded.duration_seconds_sum,
    api_calls = sync_counters.api_calls + excluded.api_calls,
    rows_written = sync_counters.rows_written + excluded.rows_written
"""


def duration_bucket(seconds: float) -> float:
    return next((bound for bound in DURATION_BUCKETS if seconds <= bound), INF_BUCKET)


def sync_counters_add(
    *, provider: str, outcome: str, durations: list[float], api_calls: int = 0, rows_written: int = 0
) -> None:
    """Count finished attempts (one per duration) in the /metrics totals: one upsert per bucket.

    The calls and rows go with the first bucket; /metrics sums them over buckets.
    """
    by_bucket: dict[float, list[float]] = {}
    for seconds in durations:
        by_bucket.setdefault(duration_bucket(seconds), []).append(seconds)
    extra = (api_calls, rows_written)
    with db.cursor() as cursor:
        for le, bucket in by_bucket.items():
            cursor.execute(_COUNTERS_UPSERT, [provider, outcome, le, len(bucket), sum(bucket), *extra])
            extra = (0, 0)


# --- recover ----------------------------------------------------------------------------------

# The slot of a job lost in the queue is still due, so a scheduled connection is claimed again
# on the next dispatcher tick; a job lost while syncing had already moved next_sync_at on, so it
# waits for its next slot.
LOST_IN_QUEUE = (
    "The sync job was lost before a worker picked it up (queued for over {minutes} min). "
    "Scheduled syncs retry by themselves; press Sync Now to retry now."
)
LOST_WHILE_SYNCING = (
    "The sync was interrupted: its worker stopped before finishing. "
    "It will run again at the next scheduled time, or press Sync Now."
)


def syncs_recover_stuck(*, now: datetime) -> int:
    """Return jobs nobody is running to a runnable state, with a clear last_sync_error.

    Queued too long: the message was lost (Redis flushed, worker killed before it started).
    Syncing past the task's hard time limit: the worker died (a killed task is never reported).
    A late worker that wakes up afterwards finds the row changed and writes nothing.
    """
    queued_deadline = now - timedelta(seconds=settings.SYNC_QUEUED_TIMEOUT)
    syncing_deadline = now - timedelta(seconds=settings.SYNC_TASK_TIME_LIMIT + settings.SYNC_RECOVERY_GRACE)
    lost_queued = Connection.objects.filter(sync_status=SyncStatus.QUEUED, queued_at__lt=queued_deadline).update(
        sync_status=SyncStatus.ERROR,
        last_sync_error=LOST_IN_QUEUE.format(minutes=max(1, settings.SYNC_QUEUED_TIMEOUT // 60)),
        last_sync_error_kind=ErrorKind.INTERRUPTED,
    )
    # queued_at precedes the start, so the redundant bound lets the busy index serve this.
    lost_syncing = Connection.objects.filter(
        sync_status=SyncStatus.SYNCING,
        queued_at__lt=syncing_deadline,
        last_sync_attempted_at__lt=syncing_deadline,
    ).update(
        sync_status=SyncStatus.ERROR, last_sync_error=LOST_WHILE_SYNCING, last_sync_error_kind=ErrorKind.INTERRUPTED
    )
    _runs_interrupt(
        SyncRun.objects.filter(outcome=SyncOutcome.RUNNING, started_at__lt=syncing_deadline), LOST_WHILE_SYNCING, now
    )
    if lost_queued or lost_syncing:
        logger.warning("Recovered %d lost queued and %d interrupted sync job(s)", lost_queued, lost_syncing)
    return lost_queued + lost_syncing


RESET_BY_OPERATOR = "Reset by an operator; press Sync Now to try again."


def syncs_reset_stuck(*, connection_ids: list[int], now: datetime) -> int:
    """queued/syncing -> error for jobs an operator knows are dead (the admin's "Reset stuck
    status"), before the automatic recovery deadline. Conditional, so a job that finished
    meanwhile is left alone; a late worker finds the row changed and writes nothing."""
    with transaction.atomic():
        busy = list(
            Connection.objects.filter(pk__in=connection_ids, sync_status__in=BUSY_STATUSES).values_list("pk", "job_id")
        )
        reset = Connection.objects.filter(pk__in=[pk for pk, _ in busy], sync_status__in=BUSY_STATUSES).update(
            sync_status=SyncStatus.ERROR, last_sync_error=RESET_BY_OPERATOR, last_sync_error_kind=ErrorKind.INTERRUPTED
        )
        _runs_interrupt(
            SyncRun.objects.filter(job_id__in=[job for _, job in busy], outcome=SyncOutcome.RUNNING),
            RESET_BY_OPERATOR,
            now,
        )
    return reset


def _runs_interrupt(runs: models.QuerySet[SyncRun], message: str, now: datetime) -> None:
    """Close running runs as interrupted, and count them in the /metrics totals."""
    with transaction.atomic():
        # Locked, so that what is counted is exactly what the update closes.
        found = list(runs.select_for_update(of=("self",)).values_list("pk", "connection__provider", "started_at"))
        if not found:
            return
        SyncRun.objects.filter(pk__in=[pk for pk, _, _ in found]).update(
            outcome=SyncOutcome.INTERRUPTED,
            finished_at=now,
            error_class=ErrorKind.INTERRUPTED,
            error_message=message,
        )
        by_provider: dict[str, list[float]] = {}
        for _, provider, started_at in found:
            by_provider.setdefault(provider, []).append(max(0.0, (now - started_at).total_seconds()))
        for provider, durations in by_provider.items():
            sync_counters_add(provider=provider, outcome=SyncOutcome.INTERRUPTED, durations=durations)


def sync_runs_prune(*, now: datetime, batch: int = 10_000) -> int:
    """Delete finished runs older than the retention period, a batch at a time."""
    cutoff = now - timedelta(days=settings.SYNC_RUN_RETENTION_DAYS)
    deleted = 0
    while True:
        ids = list(
            SyncRun.objects.filter(started_at__lt=cutoff)
            .exclude(outcome=SyncOutcome.RUNNING)
            .values_list("pk", flat=True)[:batch]
        )
        if not ids:
            return deleted
        # Their ledger rows (SyncChange) go with them; count the runs only.
        deleted += SyncRun.objects.filter(pk__in=ids).delete()[1].get(SyncRun._meta.label, 0)


# --- heartbeats ---------------------------------------------------------------------------------


def heartbeat_record(*, name: str, kind: str, now: datetime, details: dict | None = None) -> None:
    """Note that an engine process is alive: one UPDATE, an INSERT only the first time.

    The dispatcher calls it once per tick and every worker every SYNC_WORKER_HEARTBEAT seconds,
    so it must stay one cheap statement (bench/dispatcher.py measures the empty tick).
    """
    changes: dict = {"last_seen_at": now}
    if details is not None:
        changes["details"] = details
    if Heartbeat.objects.filter(name=name).update(**changes):
        return
    # First beat of this name. A concurrent first beat of the same name loses on the unique
    # constraint, which is as good as having beaten.
    with transaction.atomic():
        Heartbeat.objects.bulk_create(
            [Heartbeat(name=name, kind=kind, started_at=now, last_seen_at=now, details=details or {})],
            ignore_conflicts=True,
        )


def heartbeat_restart(*, name: str, kind: str, now: datetime, details: dict) -> None:
    """A process (re)starts under this name: its uptime starts now."""
    Heartbeat.objects.update_or_create(
        name=name, defaults={"kind": kind, "started_at": now, "last_seen_at": now, "details": details}
    )


def heartbeat_forget(*, name: str) -> None:
    """A worker stopping cleanly says so, so readiness does not wait for its beat to age out."""
    Heartbeat.objects.filter(name=name).delete()


def heartbeats_prune(*, now: datetime, keep: timedelta = timedelta(days=1)) -> int:
    """Forget workers gone for a day (a container's hostname changes with every restart)."""
    return Heartbeat.objects.filter(last_seen_at__lt=now - keep).delete()[0]
