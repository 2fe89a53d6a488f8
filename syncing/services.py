"""The sync state machine. Every transition is one conditional UPDATE whose row count says
whether this caller won; nothing here checks a state and then acts on it in a second statement.

    idle/error --enqueue/claim--> queued --start--> syncing --finish--> idle
                                                            --fail----> error
                                                            --defer---> idle (rate limited)
                                                            --retry---> queued (same job)
    idle/error due, no budget left --defer--> stays, next_sync_at moved on (rate limited)
    idle/error rate limited --manual enqueue--> refused, unchanged (RateLimited)
    idle, a backfill ready --claim (trigger backfill)--> queued --start--> syncing (the next chunk)
        --finish/defer/fail/cancel--> idle, the backfill's cursor or not_before moved; the
        connection's schedule and its regular syncs' fields untouched (auth: error, as any sync)
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
import math
import operator
import uuid
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.db import connection as db
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Coalesce
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
from syncing.budget import Budget
from syncing.models import (
    BACKFILL_ACTIVE,
    Backfill,
    BackfillStatus,
    Heartbeat,
    SyncChange,
    SyncOutcome,
    SyncRun,
    SyncWindow,
)
from syncing.persist import metrics_persist_changed
from syncing.providers import provider_for
from syncing.providers.base import (
    CANCELLED_MESSAGE,
    MetricRow,
    PermanentError,
    ProviderError,
    SyncCancelled,
    ThrottledError,
    TransientProviderError,
)
from syncing.scopes import (
    connection_scopes,
    connection_scopes_learn,
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
    # Set when the job is a chunk of a backfill (trigger backfill): since..until is the chunk.
    backfill: BackfillChunk | None = None


@dataclasses.dataclass(frozen=True)
class BackfillChunk:
    """The days one chunk of a backfill fetches, and the backfill's state it started from: its
    finish and failure are conditional on that state, so a duplicate never counts twice."""

    backfill_id: int
    range_since: date  # the backfill's first day
    cursor: date  # the newest day not fetched yet when the chunk started (= until)
    failures: int
    since: date
    until: date

    @property
    def days(self) -> int:
        return (self.until - self.since).days + 1

    @property
    def last(self) -> bool:
        return self.since <= self.range_since


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
            if (
                trigger == SyncTrigger.MANUAL
                and current["sync_status"] == SyncStatus.QUEUED
                and current["queued_trigger"] == SyncTrigger.BACKFILL
            ):
                # A backfill chunk only waits for a slot: Sync Now takes its place (the backfill
                # goes on; its chunk is claimed again later). A running chunk is returned, as any
                # running job: it ends within one platform call or two.
                connection_cancel_sync(connection=connection, now=now, trigger=SyncTrigger.BACKFILL)
                continue
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
        # A claim that was a shared scope's probe: another connection probes at the next tick.
        scopes_probe_release(connection_id=claim.connection_id, now=timezone.now())


# --- claim and defer (the dispatcher's writes; what is due and how many is its own business) ---


class NewJobId(models.Func):
    """A fresh random UUID per row, generated by SQLite inside the claiming UPDATE (as the 32
    hex characters it stores UUIDs as; PostgreSQL uses gen_random_uuid() in _QUEUE_RETURNING)."""

    output_field = models.UUIDField()

    def as_sql(self, compiler, connection, function=None, template=None, arg_joiner=None, **extra_context):
        return "lower(hex(randomblob(16)))", ()


_QUEUE_RETURNING = f"""
UPDATE connections
SET sync_status = '{SyncStatus.QUEUED}', job_id = gen_random_uuid(), queued_at = %s, queued_trigger = %s
WHERE id = ANY(%s) AND sync_status IN ('{SyncStatus.IDLE}', '{SyncStatus.ERROR}')
RETURNING id, job_id
"""


def connections_queue_claimed(
    *, ids: list[int], now: datetime, trigger: str = SyncTrigger.SCHEDULED
) -> dict[int, uuid.UUID]:
    """idle/error -> queued with a new job each, for rows the caller holds locked
    (syncing.dispatcher.connections_claim_due, backfills_claim_ready); returns their job ids.
    Sends nothing.

    The rows are locked, so the condition always holds here; it stays as the state machine's
    guard (and for SQLite, which has no row locks but one writer at a time). On PostgreSQL one
    UPDATE ... RETURNING does it (bench/dispatcher.py: 47 -> 39 ms for 1,000 rows); SQLite
    updates, then reads the generated ids back.
    """
    if not ids:
        return {}
    if db.vendor == "postgresql":
        with db.cursor() as cursor:
            cursor.execute(_QUEUE_RETURNING, [now, trigger, ids])
            return dict(cursor.fetchall())
    Connection.objects.filter(pk__in=ids, sync_status__in=RUNNABLE_STATUSES).update(
        sync_status=SyncStatus.QUEUED, job_id=NewJobId(), queued_at=now, queued_trigger=trigger
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


def backfills_defer(*, deferred: Mapping[datetime, list[int]], reason: str) -> None:
    """Ready backfills whose next chunk may not call the platform now (a budget, a throttled or
    probing scope) wait until then (the key; the values are their connections' ids). Only the
    backfill waits: the connection's schedule and rate_limited_until stay as they are."""
    for until, connection_ids in deferred.items():
        Backfill.objects.filter(connection_id__in=connection_ids, status__in=BACKFILL_ACTIVE).update(
            not_before=until, last_error=reason
        )


def connections_defer_in_scopes(*, scopes: Iterable[str], until: datetime) -> int:
    """Every connection in throttled scopes waits until the throttle's end, without a call: the
    idle and errored ones now (their next sync moves to at least `until`, shown as rate limited,
    the same resume time on each); queued and running ones stop at their next call's check
    (syncing.meter.CallMeter.spend). Runs in the caller's transaction."""
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
        chunk: BackfillChunk | None = None
        changes: dict
        if conn.queued_trigger == SyncTrigger.BACKFILL:
            chunk = _backfill_next_chunk(conn)
            if chunk is None:
                _backfill_job_abandon(conn, job_id, now)
                return None
            since, until, restatement, next_at = chunk.since, chunk.until, False, conn.next_sync_at
            # A chunk fetches old days, not the recent ones: the fields that say how fresh the
            # data is (last attempted, the attempt counter, the schedule) are the regular syncs'
            # and stay as they are. queued_at becomes the start, which recovery's deadline for
            # a chunk counts from (syncs_recover_stuck).
            changes = {"sync_status": SyncStatus.SYNCING, "cancel_requested_at": None, "queued_at": now}
        else:
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
            changes = {
                "sync_status": SyncStatus.SYNCING,
                "cancel_requested_at": None,
                "last_sync_attempted_at": now,
                "total_syncs_attempted": F("total_syncs_attempted") + 1,
                "next_sync_at": next_at,
            }
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
                ).update(**changes)
                == 1
            )
            if not won:
                continue
            run = SyncRun.objects.create(
                connection_id=connection_id,
                job_id=job_id,
                trigger=conn.queued_trigger or SyncTrigger.MANUAL,
                # (A chunk is a window of past days, like a restatement; its trigger says which.)
                window=SyncWindow.LOOKBACK if restatement or chunk is not None else SyncWindow.RECENT,
                window_since=since,
                window_until=until,
                started_at=now,
            )
        slot = conn.next_sync_at
        conn.sync_status = SyncStatus.SYNCING
        if chunk is None:
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
            backfill=chunk,
        )
    return None


def _backfill_next_chunk(conn: Connection) -> BackfillChunk | None:
    """The next chunk of the connection's active backfill: the chunk_days newest days not
    fetched yet, not before the backfill's first day. None when it has none (cancelled)."""
    row = (
        Backfill.objects.filter(connection_id=conn.pk, status__in=BACKFILL_ACTIVE)
        .values("pk", "since", "cursor", "failures")
        .first()
    )
    if row is None or row["cursor"] < row["since"]:
        return None
    days = _backfill_chunk_days(conn.provider)
    return BackfillChunk(
        backfill_id=row["pk"],
        range_since=row["since"],
        cursor=row["cursor"],
        failures=row["failures"],
        since=max(row["since"], row["cursor"] - timedelta(days=days - 1)),
        until=row["cursor"],
    )


def _backfill_chunk_days(provider: str) -> int:
    try:
        return max(1, provider_for(provider).backfill_chunk_days)
    except ProviderError:
        return 7


BACKFILL_GONE = "The backfill was cancelled before this chunk started."


def _backfill_job_abandon(conn: Connection, job_id: uuid.UUID, now: datetime) -> None:
    """queued -> idle for a chunk whose backfill was cancelled between its claim and its start:
    it never runs, and its job reads cancelled (GET /jobs/{id})."""
    with transaction.atomic():
        if Connection.objects.filter(pk=conn.pk, sync_status=SyncStatus.QUEUED, job_id=job_id).update(
            sync_status=SyncStatus.IDLE
        ):
            SyncRun.objects.create(
                connection_id=conn.pk,
                job_id=job_id,
                trigger=SyncTrigger.BACKFILL,
                started_at=now,
                finished_at=now,
                outcome=SyncOutcome.CANCELLED,
                error_message=BACKFILL_GONE,
            )


def _default_lookback(provider: str) -> int:
    try:
        return provider_for(provider).default_lookback_days
    except ProviderError:
        return 7


def _account_today(started: StartedSync) -> date:
    """The account's today when the attempt started: a backfill chunk's window ends in the past,
    and its changes of days before yesterday are restatements too."""
    return started.started_at.astimezone(schedule.account_zone(started.connection.timezone)).date()


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

    A backfill's chunk moves the backfill on instead (_backfill_chunk_finish).
    """
    if throttle is not None and throttle.until is not None:
        slow_down_until = max(slow_down_until or throttle.until, throttle.until)
    if started.backfill is not None:
        return _backfill_chunk_finish(
            started, started.backfill, rows, api_calls, now, slow_down_until=slow_down_until, throttle=throttle
        )
    with transaction.atomic():
        written = metrics_persist_changed(
            connection_id=started.connection.pk, rows=rows, now=now, run=started.run, today=_account_today(started)
        )
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
        # A cancel asked for meanwhile wins: nothing of this sync is written (the caller ends it
        # as cancelled, see sync_cancel).
        if _mine(started).filter(cancel_requested_at__isnull=True).update(**changes) != 1:
            transaction.set_rollback(True)
            return None
        if api_calls:
            scopes_clear_after_answer(scopes=_scopes_of(started.connection), now=now)
        if throttle is not None and throttle.scopes and slow_down_until is not None:
            _scopes_throttle(throttle, slow_down_until, now, started)
        _run_close(started, SyncOutcome.SUCCESS, None, now, api_calls, rows_fetched=len(rows), rows_written=written)
    return written


def _backfill_chunk_finish(
    started: StartedSync,
    chunk: BackfillChunk,
    rows: list[MetricRow],
    api_calls: int,
    now: datetime,
    *,
    slow_down_until: datetime | None,
    throttle: ThrottledError | None,
) -> int | None:
    """syncing -> idle for a backfill's chunk: its changed rows written and the backfill's cursor
    moved past the chunk, in one transaction; done once the cursor passes the first day.

    The connection's own fields stay as they were: last completed, last change, the counters,
    the error and the schedule describe how fresh its recent days are, which a chunk of old days
    says nothing about (a chunk counted as a completed sync would show stale data as fresh). A
    slow-down only delays the next chunk; a throttle the platform put on shared scopes defers
    every connection in them, this one included, as after any sync.

    The cursor moves only from where the chunk started: a duplicate, or a chunk whose backfill
    was cancelled meanwhile, writes nothing. The latter is ended as cancelled (the runner asks
    sync_cancel_requested after a None).
    """
    with transaction.atomic():
        written = metrics_persist_changed(
            connection_id=started.connection.pk, rows=rows, now=now, run=started.run, today=_account_today(started)
        )
        if _mine(started).filter(cancel_requested_at__isnull=True).update(sync_status=SyncStatus.IDLE) != 1:
            transaction.set_rollback(True)
            return None
        not_before = now + timedelta(seconds=settings.SYNC_BACKFILL_SPACING)
        if slow_down_until is not None:
            not_before = max(not_before, slow_down_until)
        advanced = Backfill.objects.filter(
            pk=chunk.backfill_id, status__in=BACKFILL_ACTIVE, cursor=chunk.cursor
        ).update(
            cursor=chunk.since - timedelta(days=1),
            days_done=F("days_done") + chunk.days,
            status=BackfillStatus.DONE if chunk.last else BackfillStatus.RUNNING,
            finished_at=now if chunk.last else None,
            not_before=not_before,
            failures=0,
            last_error="",
        )
        if advanced:
            if api_calls:
                scopes_clear_after_answer(scopes=_scopes_of(started.connection), now=now)
            if throttle is not None and throttle.scopes and slow_down_until is not None:
                _scopes_throttle(throttle, slow_down_until, now, started)
            _run_close(started, SyncOutcome.SUCCESS, None, now, api_calls, rows_fetched=len(rows), rows_written=written)
            return written
        transaction.set_rollback(True)
    # Cancelled between the chunk's start and now (backfill_cancel flags the chunk right after
    # it cancels the backfill; this is the moment in between): nothing of the chunk is kept.
    _mine(started).update(cancel_requested_at=Coalesce(F("cancel_requested_at"), Value(now)))
    return None


def _scopes_throttle(error: ThrottledError, until: datetime, now: datetime, started: StartedSync) -> None:
    # The scope's row first: it serializes the workers that throttle the same scope at once,
    # which would otherwise deadlock deferring the same connections in different orders (the
    # throttle bench saw it). The dispatcher never waits on that row (scope_probe_take skips it
    # while locked), so it cannot close a cycle with the connections it holds.
    scopes_throttle(scopes=error.scopes, until=until, reason=error.message, now=now)
    deferred = connections_defer_in_scopes(scopes=error.scopes, until=until)
    # A business scope named by an error answer (whose usage headers no meter observed): the
    # connection counts against it from now on, so its probe and its clearing reach it.
    known = _scopes_of(started.connection)
    learned = [scope for scope in error.scopes if scope not in known]
    if learned:
        connection_scopes_learn(connection_id=started.connection.pk, scopes=learned)
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

    A backfill's chunk fails its own way (_backfill_chunk_fail).
    """
    if started.backfill is not None:
        return _backfill_chunk_fail(started, started.backfill, error, now, api_calls)
    changes: dict = {
        "sync_status": SyncStatus.ERROR,
        "last_sync_error": error.message,
        "last_sync_error_kind": error.error_class,
        "cancel_requested_at": None,
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
                if _mine(started).update(sync_status=SyncStatus.IDLE, cancel_requested_at=None) != 1:
                    return False
                _run_close(started, SyncOutcome.ERROR, error, now, api_calls)
                return True
        elif mine.update(**changes) != 1:
            return False
        # Not an answer either way about a shared throttle: another connection probes.
        scopes_probe_release(connection_id=started.connection.pk, now=now)
        _run_close(started, SyncOutcome.ERROR, error, now, api_calls)
    return True


# A chunk's temporary failures: the backfill waits 30 s, then twice as long after each one in a
# row, up to half an hour; after this many in a row (about 1.5 h of trying) it fails.
BACKFILL_MAX_FAILURES = 8


def _backfill_backoff(failures: int) -> timedelta:
    return timedelta(seconds=min(1800, 30 * 2 ** max(0, failures - 1)))


def _backfill_chunk_fail(
    started: StartedSync, chunk: BackfillChunk, error: ProviderError, now: datetime, api_calls: int
) -> bool:
    """syncing -> idle (or error, for expired access) after a backfill's chunk failed.

    - Expired access is the connection's problem, not the range's: the connection says so and is
      unscheduled exactly as after any sync (sync_fail), and the backfill fails with it (a
      reconnect does not resume it: ask again). If the credentials were replaced while the chunk
      ran, the chunk is simply tried again with the new ones.
    - Temporary: the backfill waits a growing backoff and tries the same chunk again, not Celery's
      retry, which would hold the connection queued, and its own regular syncs back, meanwhile.
      The run reads "retrying" (it is, and alerts do not count it as a failed sync).
    - Anything else is about what the chunk asked for (the platform refusing those days): the
      backfill fails with the platform's message, and the connection, whose regular syncs are
      not concerned, goes back to idle with its own last error (if any) untouched.
    """
    backfill = Backfill.objects.filter(
        pk=chunk.backfill_id, status__in=BACKFILL_ACTIVE, cursor=chunk.cursor, failures=chunk.failures
    )
    failed = {"status": BackfillStatus.FAILED, "finished_at": now, "last_error": error.message}
    outcome = SyncOutcome.ERROR
    with transaction.atomic():
        if error.error_class == AUTH_ERROR_KIND:
            reconnected = (
                _mine(started)
                .filter(credentials_updated_at=started.credentials_version)
                .update(
                    sync_status=SyncStatus.ERROR,
                    last_sync_error=error.message,
                    last_sync_error_kind=error.error_class,
                    cancel_requested_at=None,
                    next_sync_at=None,
                )
                == 0
            )
            if not reconnected:
                backfill.update(**failed)
            elif _mine(started).update(sync_status=SyncStatus.IDLE, cancel_requested_at=None) == 1:
                backfill.update(not_before=now + timedelta(seconds=settings.SYNC_BACKFILL_SPACING))
            else:
                return False
        else:
            if _mine(started).update(sync_status=SyncStatus.IDLE, cancel_requested_at=None) != 1:
                return False
            failures = chunk.failures + 1
            if error.error_class != TransientProviderError.error_class:
                backfill.update(**failed)
            elif failures >= BACKFILL_MAX_FAILURES:
                message = f"Gave up after {failures} temporary failures in a row: {error.message}"
                backfill.update(**(failed | {"last_error": message}))
            else:
                backfill.update(
                    failures=failures, not_before=now + _backfill_backoff(failures), last_error=error.message
                )
                outcome = SyncOutcome.RETRYING
        scopes_probe_release(connection_id=started.connection.pk, now=now)
        _run_close(started, outcome, error, now, api_calls)
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
    releases its probe, if it was one, for another connection to try.

    A backfill's chunk: only the backfill waits until then (its not_before); the connection's
    schedule and rate_limited_until stay as they are, unless the platform throttled shared
    scopes, which defers every connection in them, this one included."""
    if started.backfill is not None:
        return _backfill_chunk_defer(started, started.backfill, until, error, now, api_calls)
    with transaction.atomic():
        won = _mine(started).update(
            sync_status=SyncStatus.IDLE,
            rate_limited_until=until,
            next_sync_at=_deferred_next_sync(until),
            cancel_requested_at=None,
        )
        if won != 1:
            return False
        if isinstance(error, ThrottledError) and error.scopes:
            _scopes_throttle(error, until, now, started)
        else:
            scopes_probe_release(connection_id=started.connection.pk, now=now)
        _run_close(started, SyncOutcome.RATE_LIMITED, error, now, api_calls)
    return True


def _backfill_chunk_defer(
    started: StartedSync, chunk: BackfillChunk, until: datetime, error: ProviderError, now: datetime, api_calls: int
) -> bool:
    with transaction.atomic():
        if _mine(started).update(sync_status=SyncStatus.IDLE, cancel_requested_at=None) != 1:
            return False
        if isinstance(error, ThrottledError) and error.scopes:
            _scopes_throttle(error, until, now, started)
        else:
            scopes_probe_release(connection_id=started.connection.pk, now=now)
        Backfill.objects.filter(pk=chunk.backfill_id, status__in=BACKFILL_ACTIVE, cursor=chunk.cursor).update(
            not_before=until, last_error=error.message
        )
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
        changes: dict = {"sync_status": SyncStatus.QUEUED, "queued_at": now, "next_sync_at": slot}
        if started.backfill is not None:
            del changes["next_sync_at"]  # a chunk's start did not move the schedule
        # Not retried if a cancel was asked for meanwhile (the caller ends it as cancelled).
        requeued = _mine(started).filter(cancel_requested_at__isnull=True).update(**changes)
        if requeued != 1:
            return False
        scopes_probe_release(connection_id=started.connection.pk, now=now)
        _run_close(started, SyncOutcome.RETRYING, error, now, api_calls)
    return True


def sync_cancel(*, started: StartedSync, now: datetime, api_calls: int = 0) -> bool:
    """syncing -> idle after a cancel: nothing fetched is written, the error (if any) of the
    attempt before stays as it was, the schedule goes on (the next slot was set at start)."""
    with transaction.atomic():
        if _mine(started).update(sync_status=SyncStatus.IDLE, cancel_requested_at=None) != 1:
            return False
        scopes_probe_release(connection_id=started.connection.pk, now=now)
        _run_close(started, SyncOutcome.CANCELLED, SyncCancelled(CANCELLED_MESSAGE), now, api_calls)
    return True


def sync_cancel_requested(*, started: StartedSync) -> bool:
    """Whether someone asked to cancel this running sync (the meter asks before every call)."""
    return _mine(started).filter(cancel_requested_at__isnull=False).exists()


class CancelResult(models.TextChoices):
    CANCELLED = "cancelled", "Cancelled"  # it was queued: it will not run
    CANCELLING = "cancelling", "Cancelling"  # it is running: it stops before its next call
    NOTHING = "nothing", "Nothing to cancel"


def connection_cancel_sync(*, connection: Connection, now: datetime, trigger: str | None = None) -> str:
    """Cancel the connection's queued or running sync (with `trigger`, only a job of that trigger:
    backfill_cancel stops the backfill's chunk, never a sync that has taken its place).

    Queued: back to idle at once, with a run that says so (GET /jobs/{id} reads "cancelled");
    the message still in the queue finds the row no longer queued and does nothing. A scheduled
    job gives up its slot (the next one is an interval on), so the dispatcher does not claim it
    again straight away. Running: flagged; the worker stops before its next platform call and
    writes nothing (sync_cancel). Each is one conditional UPDATE.
    """
    fields = ("sync_status", "job_id", "queued_at", "queued_trigger", "next_sync_at", "sync_frequency", "paused_at")
    for _ in range(3):
        current = Connection.objects.filter(pk=connection.pk).values(*fields).first()
        if current is None or current["sync_status"] not in BUSY_STATUSES:
            return CancelResult.NOTHING
        if trigger is not None and current["queued_trigger"] != trigger:
            return CancelResult.NOTHING
        if current["sync_status"] == SyncStatus.SYNCING:
            flagged = Connection.objects.filter(
                pk=connection.pk, sync_status=SyncStatus.SYNCING, job_id=current["job_id"]
            ).update(cancel_requested_at=Coalesce(F("cancel_requested_at"), Value(now)))
            if flagged:
                return CancelResult.CANCELLING
            continue
        next_at = current["next_sync_at"]
        if current["queued_trigger"] == SyncTrigger.SCHEDULED and next_at is not None and next_at <= now:
            next_at = schedule.next_sync_after_start(
                frequency=current["sync_frequency"],
                trigger=SyncTrigger.SCHEDULED,
                slot=next_at,
                started_at=now,
                public_id=connection.public_id,
            )
        if current["paused_at"] is not None:
            next_at = None
        with transaction.atomic():
            won = Connection.objects.filter(pk=connection.pk, **current).update(
                sync_status=SyncStatus.IDLE, next_sync_at=next_at
            )
            if not won:
                continue
            SyncRun.objects.create(
                connection_id=connection.pk,
                job_id=current["job_id"],
                trigger=current["queued_trigger"] or SyncTrigger.MANUAL,
                started_at=now,
                finished_at=now,
                outcome=SyncOutcome.CANCELLED,
                error_message="Cancelled before it started.",
            )
        return CancelResult.CANCELLED
    return CancelResult.NOTHING


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


# --- backfills: re-sync a chosen date range, chunk by chunk ---------------------------------------
#
# A backfill is a row (syncing.models.Backfill) and a cursor; each chunk is a sync job of its
# connection (trigger backfill) that the dispatcher claims with the room every due sync left
# (syncing.dispatcher.backfills_claim_ready) and the worker runs through the state machine above:
# single-flight with the connection's other syncs, metered against its budgets, cancellable.


def backfill_request(*, connection: Connection, since: date, until: date, now: datetime) -> Backfill:
    """Start re-syncing since..until (days in the account's time zone), or return the backfill of
    that range already in progress (asking twice is harmless).

    Raises ValidationError, with a message naming the allowed days, for a range that is reversed,
    ends in the future or starts before the platform's history (Provider.history_days), and for
    a different range while another is in progress (one at a time: cancel it first).
    """
    provider = provider_for(connection.provider)
    zone = schedule.account_zone(connection.timezone)
    today = now.astimezone(zone).date()
    earliest = today - timedelta(days=provider.history_days)
    allowed = f"choose days from {earliest.isoformat()} to {today.isoformat()}"
    if since > until:
        raise ValidationError(f"The start date {since.isoformat()} is after the end date {until.isoformat()}.")
    if until > today:
        raise ValidationError(
            f"The end date {until.isoformat()} is in the future in the account's time zone ({zone.key}): {allowed}."
        )
    if since < earliest:
        raise ValidationError(
            f"{provider.label} keeps daily metrics for {provider.history_days:,} days, so the start date "
            f"{since.isoformat()} is too far back: {allowed}."
        )
    for _ in range(3):
        active = Backfill.objects.filter(connection=connection, status__in=BACKFILL_ACTIVE).first()
        if active is not None:
            if (active.since, active.until) == (since, until):
                return active
            raise ValidationError(
                f"A backfill of {active.since.isoformat()} to {active.until.isoformat()} is "
                f"{active.get_status_display().lower()} ({active.progress_text}); cancel it first."
            )
        try:
            # A savepoint: the loser of two requests at once hits the one-active constraint and
            # reads the winner's backfill on the next round.
            with transaction.atomic():
                return Backfill.objects.create(
                    connection=connection,
                    since=since,
                    until=until,
                    cursor=until,
                    days_total=(until - since).days + 1,
                    not_before=now,
                    created_at=now,
                )
        except IntegrityError:
            continue
    raise RuntimeError(f"connection {connection.pk}'s backfills kept changing while one was being requested")


def backfill_cancel(*, backfill: Backfill, now: datetime) -> bool:
    """Stop the backfill: no further chunk is claimed, a queued chunk never runs and a running one
    stops before its next platform call, writing nothing. The days already fetched stay. False
    when it was not in progress (done, failed or cancelled already).

    Two steps, each one conditional UPDATE: the backfill first, so that the dispatcher claims no
    chunk after the second; a chunk between the two finds its backfill cancelled when it starts
    or finishes (sync_start, _backfill_chunk_finish) and writes nothing either.
    """
    cancelled = (
        Backfill.objects.filter(pk=backfill.pk, status__in=BACKFILL_ACTIVE).update(
            status=BackfillStatus.CANCELLED, finished_at=now
        )
        == 1
    )
    if cancelled:
        connection_cancel_sync(connection=backfill.connection, now=now, trigger=SyncTrigger.BACKFILL)
    return cancelled


def backfill_budgets(*, budgets: list[Budget]) -> list[Budget]:
    """The rate budgets as a backfill's chunk may spend them: each limit less
    SYNC_BACKFILL_BUDGET_RESERVE_PCT, which stays for the regular syncs counted against the same
    keys (the dispatcher's check before a claim and the worker's meter before each call)."""
    pct = settings.SYNC_BACKFILL_BUDGET_RESERVE_PCT
    if pct <= 0:
        return budgets
    return [
        budget
        if budget.limit is None
        else dataclasses.replace(
            budget,
            limit=max(0, budget.limit - math.ceil(budget.limit * pct / 100)),
            label=f"{budget.label}, less the {pct} % kept for regular syncs",
        )
        for budget in budgets
    ]


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
    # A backfill's lost chunk is not the connection's failure: back to idle with its error as it
    # was, and the backfill claims the chunk again. In the same UPDATEs (recovery runs on every
    # tick: bench/dispatcher.py's empty tick).
    chunk = Q(queued_trigger=SyncTrigger.BACKFILL)

    def lost(message: str) -> dict:
        return {
            "sync_status": Case(
                When(chunk, then=Value(SyncStatus.IDLE)),
                default=Value(SyncStatus.ERROR),
                output_field=models.CharField(),
            ),
            "last_sync_error": Case(
                When(chunk, then=F("last_sync_error")), default=Value(message), output_field=models.TextField()
            ),
            "last_sync_error_kind": Case(
                When(chunk, then=F("last_sync_error_kind")),
                default=Value(ErrorKind.INTERRUPTED),
                output_field=models.CharField(),
            ),
            "cancel_requested_at": None,
        }

    lost_queued = Connection.objects.filter(sync_status=SyncStatus.QUEUED, queued_at__lt=queued_deadline).update(
        **lost(LOST_IN_QUEUE.format(minutes=max(1, settings.SYNC_QUEUED_TIMEOUT // 60)))
    )
    # queued_at precedes the start, so the redundant bound lets the busy index serve this. A
    # backfill's chunk leaves last_sync_attempted_at to the regular syncs (it may be null) and
    # sets queued_at to its start instead (sync_start).
    lost_syncing = (
        Connection.objects.filter(sync_status=SyncStatus.SYNCING, queued_at__lt=syncing_deadline)
        .filter(Q(last_sync_attempted_at__lt=syncing_deadline) | chunk)
        .update(**lost(LOST_WHILE_SYNCING))
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
            sync_status=SyncStatus.ERROR,
            last_sync_error=RESET_BY_OPERATOR,
            last_sync_error_kind=ErrorKind.INTERRUPTED,
            cancel_requested_at=None,
        )
        for pk, _ in busy:
            scopes_probe_release(connection_id=pk, now=now)
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
    """Delete finished runs older than the retention period, and their change ledger, a batch at
    a time; returns how many runs."""
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
        # Their change ledger first, then the runs, one statement each. QuerySet.delete() on the
        # runs would load each one to cascade to the ledger and delete them 100 at a time (460
        # instead of 210 ms per 10,000 runs, on the dispatcher's single worker); the ledger has
        # nothing of its own to cascade to, and the runs have nothing left.
        SyncChange.objects.filter(run_id__in=ids).delete()
        deleted += SyncRun.objects.filter(pk__in=ids)._raw_delete(db.alias)


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
