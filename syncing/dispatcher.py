"""The dispatcher: fired by beat every SYNC_DISPATCH_INTERVAL, it recovers stuck jobs, claims
the connections that are due and queues one job for each.

Its cost follows the number of rows due, not the number of connections: one indexed query
(connections_due_idx) picks the due rows with FOR UPDATE SKIP LOCKED, so two dispatchers (two
beats, or a beat and `manage.py sync_now --all`) never claim the same row, and one conditional
UPDATE moves them to queued.

This module is the policy (what is due, in what order, how many, which fit their rate budgets);
the writes are the state machine's (syncing.services: connections_queue_claimed,
connections_defer).

How many: never more than the sync workers can start soon (backpressure). The room is the live
workers' concurrency (their heartbeats say it) times SYNC_QUEUE_AHEAD, less the jobs already
queued or syncing. A backlog beyond that stays in the database, due, where it shows as "Delayed"
and is claimed as room frees up; it never sits in the broker long enough to be recovered as lost.

In what order: shorter intervals first (realtime before every 30 min, hourly and daily, so a
midnight burst of daily syncs cannot hold realtime back), then round robin across workspaces
(each workspace's most overdue row first), then the most overdue. An agency with 2,000 accounts
due at once does not starve a shop with 5.

Backfills last (backfills_claim_ready): their chunks take only the room every due sync left, at
most SYNC_BACKFILL_SLOTS_PCT of the workers' slots, and never a call the regular syncs need.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection as db
from django.db import transaction
from django.db.models import Case, F, IntegerField, Q, QuerySet, Value, When, Window
from django.db.models.functions import RowNumber

from connections.models import (
    BUSY_STATUSES,
    RUNNABLE_STATUSES,
    SYNC_INTERVALS,
    Connection,
    SyncFrequency,
    SyncStatus,
    SyncTrigger,
)
from syncing.budget import Budget, available_at, budget_buckets, budgets_used
from syncing.health import engine_beats
from syncing.models import BACKFILL_ACTIVE, SCHEDULER_HEARTBEAT, Backfill, HeartbeatKind
from syncing.providers import PROVIDERS
from syncing.scopes import (
    ScopeState,
    connection_scopes,
    scope_pace_budget,
    scope_probe_take,
    scope_states_in_force,
    scopes_probe_release,
)
from syncing.services import (
    BrokerUnavailable,
    Claim,
    backfill_budgets,
    backfills_defer,
    connections_defer,
    connections_queue_claimed,
    heartbeat_record,
    jobs_send,
    syncs_recover_stuck,
)
from syncing.task_names import BULK_QUEUE, SYNC_QUEUE

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DispatchResult:
    recovered: int
    claimed: int
    sent: int


# Slotted rather than frozen: a frozen dataclass sets each field through object.__setattr__,
# which cost 0.8 ms per 1,000-row claim (bench/dispatcher.py); these never leave the claim.
@dataclasses.dataclass(slots=True)
class DueConnection:
    """A due row as the claim reads it: its state before the claim (put back if sending fails)
    and whose rate budgets its sync spends."""

    pk: int
    sync_status: str
    job_id: uuid.UUID | None
    queued_at: datetime | None
    queued_trigger: str
    provider: str
    external_account_id: str
    throttle_scopes: list


# The columns the claim reads, named by DueConnection itself, so rows and fields cannot drift apart.
_DUE_FIELDS = tuple(field.name for field in dataclasses.fields(DueConnection))


def connections_claim_due(*, now: datetime, limit: int, realtime: bool | None = None) -> list[Claim]:
    """Move up to `limit` due connections to queued; return them. Sends nothing. With
    `realtime` True (False), only realtime (only other) connections.

    A due connection whose provider budget has no call left for it is not queued: it is
    deferred to when the budget allows, and shows as rate limited meanwhile.
    """
    due_now = Connection.objects.filter(sync_status__in=RUNNABLE_STATUSES, next_sync_at__lte=now)
    if realtime is not None:
        due_now = (due_now.filter if realtime else due_now.exclude)(sync_frequency=SyncFrequency.REALTIME)
    with transaction.atomic():
        # Whose turn it is, over the due rows only (connections_due_idx). PostgreSQL cannot lock
        # the rows of a query with a window function, so a second query locks them by id; a
        # subquery there made it hash-join the whole table (39 ms instead of 23 at 100,000).
        turns = list(
            due_now.annotate(
                urgency=_URGENCY,
                turn=Window(RowNumber(), partition_by=F("workspace_id"), order_by=F("next_sync_at").asc()),
            )
            .order_by("urgency", "turn", "next_sync_at")
            .values_list("pk", flat=True)[:limit]
        )
        if not turns:
            return []
        # Conditions again: a row claimed or changed since the first query is skipped.
        due = [
            DueConnection(*row)
            for row in due_now.filter(pk__in=turns).select_for_update(skip_locked=True).values_list(*_DUE_FIELDS)
        ]
        if not due:
            return []
        ids, deferred = _within_limits(due, now)
        if deferred:
            connections_defer(deferred=deferred)
        job_ids = connections_queue_claimed(ids=ids, now=now)
    return _claims(due, job_ids)


def _claims(due: list[DueConnection], job_ids: dict[int, uuid.UUID]) -> list[Claim]:
    """The rows queued, each with what it was before (put back if sending fails)."""
    return [
        Claim(
            connection_id=row.pk,
            job_id=job_ids[row.pk],
            previous_status=row.sync_status,
            previous_job_id=row.job_id,
            previous_queued_at=row.queued_at,
            previous_trigger=row.queued_trigger,
        )
        for row in due
        if row.pk in job_ids
    ]


# Shorter intervals first: 0 for realtime, then every 30 min, hourly, daily.
_SCHEDULED = sorted((i, f) for f, i in SYNC_INTERVALS.items() if i is not None)
_URGENCY = Case(
    *(When(sync_frequency=frequency, then=Value(rank)) for rank, (_, frequency) in enumerate(_SCHEDULED)),
    default=Value(len(_SCHEDULED)),
    output_field=IntegerField(),
)


def dispatch_room(*, now: datetime) -> int:
    """How many more jobs the sync workers can start soon: their concurrency (from their
    heartbeats) times SYNC_QUEUE_AHEAD, less the jobs queued or syncing. 0 with no live worker:
    queuing then would only have recovery call the jobs lost; the banner and /readyz say why."""
    concurrency = engine_beats(now=now).live_sync_capacity
    if concurrency <= 0:
        return 0
    busy = Connection.objects.filter(sync_status__in=BUSY_STATUSES).count()
    return max(0, concurrency * settings.SYNC_QUEUE_AHEAD - busy)


def backfill_room(*, now: datetime, room: int) -> int:
    """How many backfill chunks this tick may queue, of the `room` every due sync left: chunks
    queued or syncing stay within SYNC_BACKFILL_SLOTS_PCT of the live workers' slots (at least
    one), so the syncs that come due in the next seconds find free slots, not a wave of chunks."""
    if room <= 0:
        return 0
    slots = math.ceil(engine_beats(now=now).live_sync_capacity * settings.SYNC_BACKFILL_SLOTS_PCT / 100)
    in_flight = Connection.objects.filter(sync_status__in=BUSY_STATUSES, queued_trigger=SyncTrigger.BACKFILL).count()
    return max(0, min(room, slots - in_flight))


def _budgets_for(provider: str, account_id: str) -> list[Budget]:
    slug_provider = PROVIDERS.get(provider)
    return [] if slug_provider is None else slug_provider.budgets(external_account_id=account_id)


def _paced(scopes: tuple[str, ...], states: dict[str, ScopeState], provider: str, now: datetime) -> list[Budget]:
    """The pace of each scope the platform reported busy (syncing.meter.CallMeter.observe)."""
    window = getattr(PROVIDERS.get(provider), "usage_window", None)
    if window is None:
        return []
    budgets = (scope_pace_budget(scope=scope, state=states.get(scope), window=window, now=now) for scope in scopes)
    return [budget for budget in budgets if budget.limit is not None]


def _within_limits(
    due: list[DueConnection], now: datetime, *, backfill: bool = False
) -> tuple[list[int], dict[datetime, list[int]]]:
    """Split due rows into those whose next sync may call the platform now and those to defer.

    - A row in a throttled scope (syncing.scopes) waits until the throttle's end, without a call.
    - A row in a scope whose throttle is over but not yet confirmed may be its one probe; the
      others wait SYNC_THROTTLE_PROBE_WAIT for the probe's answer.
    - A row whose budgets (and the paces of busy scopes) have no call left waits until they do.
      One call is set aside per claimed sync as we go, so a batch never promises more than a
      shared budget has left; each row deferred for a budget also counts one call, so the rows
      that wait resume spread out as older calls leave the window, not all in the same second.

    With `backfill` (rows whose next job is a backfill's chunk) every budget keeps its share for
    the regular syncs (syncing.services.backfill_budgets), and no row is a probe: a probe's
    answer decides for every connection in the scope, which is a regular sync's to give.

    Demo rows have no budgets or scopes and cost no query.
    """
    scopes = {
        row.pk: connection_scopes(
            provider=row.provider, external_account_id=row.external_account_id, learned=row.throttle_scopes or ()
        )
        for row in due
    }
    states = scope_states_in_force(now=now) if any(scopes.values()) else {}
    budgets = {
        row.pk: [
            *_budgets_for(row.provider, row.external_account_id),
            *_paced(scopes[row.pk], states, row.provider, now),
        ]
        for row in due
    }
    if backfill:
        budgets = {pk: backfill_budgets(budgets=row_budgets) for pk, row_budgets in budgets.items()}
    limited = {b.key: b for bs in budgets.values() for b in bs if b.limit is not None}
    if not limited and not states:
        return [row.pk for row in due], {}
    recorded = budgets_used(budgets=list(limited.values()), now=now)
    used = dict(recorded)
    waiting: dict[str, int] = dict.fromkeys(limited, 0)
    buckets: dict[str, list[tuple[datetime, int]]] = {}
    probes: dict[str, int] = {}
    claim: list[int] = []
    deferred: dict[datetime, list[int]] = {}
    probe_wait = now + timedelta(seconds=settings.SYNC_THROTTLE_PROBE_WAIT)
    for row in due:
        row_states = [states[scope] for scope in scopes[row.pk] if scope in states]
        throttled = [state.throttled_until for state in row_states if state.throttled(now) and state.throttled_until]
        if throttled:
            deferred.setdefault(max(throttled), []).append(row.pk)
            continue
        short = [b for b in budgets[row.pk] if b.limit is not None and used[b.key] + 1 > b.limit]
        if short:
            until = now
            for budget in short:
                if budget.key not in buckets:
                    buckets[budget.key] = budget_buckets(budget=budget, now=now)
                # Calls promised to this batch's claims and to the rows already told to wait.
                pending = used[budget.key] - recorded[budget.key] + waiting[budget.key]
                until = max(until, available_at(budget=budget, buckets=buckets[budget.key], now=now, calls=1 + pending))
                waiting[budget.key] += 1
            deferred.setdefault(until, []).append(row.pk)
            continue
        probing = [state.scope for state in row_states if state.probing(now)]
        if probing and (backfill or not _probe_take(row.pk, probing, states, probes, now)):
            deferred.setdefault(probe_wait, []).append(row.pk)
            continue
        for budget in budgets[row.pk]:
            if budget.limit is not None:
                used[budget.key] += 1
        claim.append(row.pk)
    return claim, deferred


def _probe_take(
    connection_id: int, scopes: list[str], states: dict[str, ScopeState], probes: dict[str, int], now: datetime
) -> bool:
    """Whether this row is the one probe of every scope it waits on (each taken by a conditional
    UPDATE, so two dispatchers never both send one)."""
    if any(scope in probes or not states[scope].probe_free(now) for scope in scopes):
        return False
    taken: list[str] = []
    for scope in scopes:
        if not scope_probe_take(scope=scope, connection_id=connection_id, now=now):
            if taken:
                scopes_probe_release(connection_id=connection_id, now=now)
            return False
        taken.append(scope)
    for scope in scopes:
        probes[scope] = connection_id
    logger.info("Connection %s probes %s after its throttle", connection_id, ", ".join(scopes))
    return True


# --- backfills: with the room the due syncs left -------------------------------------------------

BACKFILL_WAITS = "Waiting for room in the platform's rate limits (its regular syncs come first)."


def _backfills_ready(now: datetime) -> QuerySet[Backfill]:
    """Backfills whose next chunk may be claimed now: not held back (not_before), and their
    connection idle (a connection in error shows its regular syncs' problem, which a chunk's
    success must not hide, and a chunk would most likely fail the same way), not paused (pausing
    stops every automated call, chunks included; the backfill goes on once resumed), not
    throttled, and not due for a regular sync within SYNC_BACKFILL_SPACING (the regular sync
    goes first, and a chunk never holds the connection when its next slot comes).

    The active backfills are few (the partial index syncing_backfill_ready_idx holds only them),
    so this reads as many rows as backfills are in progress, however long the history.
    """
    clearance = now + timedelta(seconds=settings.SYNC_BACKFILL_SPACING)
    return Backfill.objects.filter(
        Q(connection__next_sync_at__isnull=True) | Q(connection__next_sync_at__gt=clearance),
        Q(connection__rate_limited_until__isnull=True) | Q(connection__rate_limited_until__lte=now),
        status__in=BACKFILL_ACTIVE,
        not_before__lte=now,
        connection__sync_status=SyncStatus.IDLE,
        connection__paused_at__isnull=True,
    )


# What every tick asks first, in one statement written once: is any connection due (the claim's
# question, on connections_due_idx), and has any backfill a chunk to claim (_backfills_ready's
# question, on syncing_backfill_ready_idx)? Through the ORM the two cost 0.5 and 0.95 ms a tick,
# mostly Python building the queries (the whole empty tick is about 3 ms, bench/dispatcher.py);
# this costs about 0.3 ms. tests/test_backfill.py checks that it agrees with the claims.
def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)  # our own constants, never input


_TICK_QUESTIONS_SQL = f"""
SELECT
  EXISTS (SELECT 1 FROM connections
          WHERE sync_status IN ({_sql_list(RUNNABLE_STATUSES)}) AND next_sync_at <= %s),
  EXISTS (SELECT 1 FROM backfills b JOIN connections c ON c.id = b.connection_id
          WHERE b.status IN ({_sql_list(BACKFILL_ACTIVE)}) AND b.not_before <= %s
            AND c.sync_status = '{SyncStatus.IDLE}' AND c.paused_at IS NULL
            AND (c.next_sync_at IS NULL OR c.next_sync_at > %s)
            AND (c.rate_limited_until IS NULL OR c.rate_limited_until <= %s))
"""


@dataclasses.dataclass(frozen=True)
class TickQuestions:
    due: bool  # a connection is due for a scheduled sync
    backfills: bool  # a backfill has a chunk to claim


def tick_questions(*, now: datetime) -> TickQuestions:
    """Whether anything is due, and whether any backfill has a chunk to claim: one cheap query."""
    clearance = now + timedelta(seconds=settings.SYNC_BACKFILL_SPACING)
    params = [db.ops.adapt_datetimefield_value(moment) for moment in (now, now, clearance, now)]
    with db.cursor() as cursor:
        cursor.execute(_TICK_QUESTIONS_SQL, params)
        due, backfills = cursor.fetchone()
    return TickQuestions(due=bool(due), backfills=bool(backfills))


def backfills_claim_ready(*, now: datetime, limit: int) -> list[Claim]:
    """Queue the next chunk of up to `limit` ready backfills, round robin across workspaces (the
    longest waiting first in each), each as a job of its connection with the trigger backfill;
    return the claims. Sends nothing.

    A backfill whose chunk does not fit its connection's budgets (less the regular syncs' share)
    or waits on a throttled scope is not claimed: only its not_before moves, never the
    connection's schedule or rate_limited_until, which belong to its regular syncs.
    """
    ready = _backfills_ready(now)
    with transaction.atomic():
        turns = list(
            ready.annotate(
                turn=Window(RowNumber(), partition_by=F("connection__workspace_id"), order_by=F("not_before").asc())
            )
            .order_by("turn", "not_before")
            .values_list("connection_id", flat=True)[:limit]
        )
        if not turns:
            return []
        # The connections locked as the regular claim locks them, their conditions checked again;
        # a backfill cancelled since the first query finds its chunk abandoned at its start
        # (syncing.services.sync_start).
        due = [
            DueConnection(*row)
            for row in Connection.objects.filter(
                Q(next_sync_at__isnull=True)
                | Q(next_sync_at__gt=now + timedelta(seconds=settings.SYNC_BACKFILL_SPACING)),
                pk__in=turns,
                sync_status=SyncStatus.IDLE,
                paused_at__isnull=True,
            )
            .select_for_update(skip_locked=True)
            .values_list(*_DUE_FIELDS)
        ]
        if not due:
            return []
        ids, deferred = _within_limits(due, now, backfill=True)
        if deferred:
            backfills_defer(deferred=deferred, reason=BACKFILL_WAITS)
        job_ids = connections_queue_claimed(ids=ids, now=now, trigger=SyncTrigger.BACKFILL)
    return _claims(due, job_ids)


def syncs_dispatch_due(*, now: datetime, limit: int | None = None) -> DispatchResult:
    """One dispatcher tick: recover, claim and send batches until nothing is due, then backfill
    chunks with the room left, beat."""
    limit = limit or settings.SYNC_DISPATCH_BATCH
    recovered = syncs_recover_stuck(now=now)
    questions = tick_questions(now=now)
    due, backfills = questions.due, questions.backfills
    # (Nothing due, the usual tick: no need to ask how much room there is.)
    room = dispatch_room(now=now) if due or backfills else 0
    claimed = sent = 0
    broker_down = False
    # Realtime first, to the sync_jobs queue; then the rest, to sync_bulk, which the workers take
    # from in turn with sync_jobs, so no realtime job waits behind a burst of daily ones.
    for realtime, queue in ((True, SYNC_QUEUE), (False, BULK_QUEUE)):
        while due and not broker_down and room > 0:
            batch = min(limit, room)
            claims = connections_claim_due(now=now, limit=batch, realtime=realtime)
            claimed += len(claims)
            room -= len(claims)
            if claims:
                try:
                    jobs_send(claims=claims, queue=queue)
                except BrokerUnavailable:
                    # The claims were reverted; the next tick tries again.
                    broker_down = True
                    break
                sent += len(claims)
            if len(claims) < batch:
                break
    # Backfill chunks last, with what is left: never at the expense of a due sync, realtime first.
    chunks = backfill_room(now=now, room=room) if backfills and not broker_down else 0
    if chunks > 0:
        claims = backfills_claim_ready(now=now, limit=min(limit, chunks))
        claimed += len(claims)
        if claims:
            try:
                jobs_send(claims=claims, queue=BULK_QUEUE)
                sent += len(claims)
            except BrokerUnavailable:
                pass  # reverted; the next tick tries again
    if claimed:
        logger.info("Dispatched %d sync job(s)%s", sent, f", recovered {recovered}" if recovered else "")
    # Each completed tick is the scheduler's sign of life (/readyz, the Settings page's banner).
    heartbeat_record(name=SCHEDULER_HEARTBEAT, kind=HeartbeatKind.SCHEDULER, now=now)
    return DispatchResult(recovered=recovered, claimed=claimed, sent=sent)
