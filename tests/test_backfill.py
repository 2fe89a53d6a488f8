"""Re-sync a date range (issue 13, point 4): the request's rules, chunks newest first through the
state machine, progress, cancel, budgets and throttles that move only the backfill, the
dispatcher giving chunks only the room due syncs left, and a real worker taking one to done."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, transaction
from django.http import Http404
from django.utils import timezone

from connections.models import Connection, SyncFrequency, SyncStatus, SyncTrigger
from connections.selectors import connections_for_user
from syncing.dispatcher import backfills_claim_ready, syncs_dispatch_due, tick_questions
from syncing.models import ApiCallBucket, Backfill, BackfillStatus, DailyMetric, SyncOutcome, SyncRun, SyncWindow
from syncing.providers.base import MetricRow
from syncing.runner import connection_sync_run
from syncing.selectors import backfill_get, backfills_active_by_connection, backfills_for_connection
from syncing.services import (
    BACKFILL_GONE,
    BACKFILL_MAX_FAILURES,
    CancelResult,
    backfill_cancel,
    backfill_request,
    connection_cancel_sync,
    connection_enqueue_sync,
    sync_cancel,
    sync_cancel_requested,
    sync_finish,
    sync_start,
    syncs_recover_stuck,
)
from tests.conftest import wait_for
from tests.meta_provider_fixtures import ACCOUNT, two_days
from tests.meta_provider_fixtures import graph_fixture as graph_fixture  # a fixture: pytest finds it by name
from tests.meta_provider_fixtures import meta_fixture as meta_fixture  # a fixture: pytest finds it by name

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
TODAY = NOW.date()
# Far enough apart that each chunk clears SYNC_BACKFILL_SPACING (10 s) after the one before.
STEP = timedelta(seconds=11)


def reload(obj):
    obj.refresh_from_db()
    return obj


def days(since: str, until: str) -> tuple[date, date]:
    return date.fromisoformat(since), date.fromisoformat(until)


def request(connection: Connection, since: str, until: str, now: datetime = NOW) -> Backfill:
    first, last = days(since, until)
    return backfill_request(connection=connection, since=first, until=last, now=now)


def run_chunk(now: datetime) -> list[str | None]:
    """Claim every ready chunk as the dispatcher would and run each inline, at a frozen `now`."""
    with time_machine.travel(now, tick=False):
        claims = backfills_claim_ready(now=now, limit=100)
        return [connection_sync_run(connection_id=c.connection_id, job_id=c.job_id) for c in claims]


def chunk_windows(connection: Connection) -> list[tuple[str, str]]:
    runs = SyncRun.objects.filter(connection=connection, trigger=SyncTrigger.BACKFILL).order_by("started_at", "pk")
    return [(run.window_since.isoformat(), run.window_until.isoformat()) for run in runs]


# --- the request --------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_request_refuses_a_reversed_range(connection):
    with pytest.raises(ValidationError) as exc:
        request(connection, "2026-11-20", "2026-11-10")

    assert exc.value.messages == ["The start date 2026-11-20 is after the end date 2026-11-10."]
    assert not Backfill.objects.exists()


@pytest.mark.django_db
@pytest.mark.embedded
def test_request_refuses_days_in_the_future_of_the_accounts_time_zone(make_connection):
    # 12:00 UTC is already the 29th in Auckland (UTC+13): that day exists there, the 30th does not.
    auckland = make_connection(timezone_name="Pacific/Auckland")
    assert request(auckland, "2026-11-29", "2026-11-29").days_total == 1

    with pytest.raises(ValidationError) as exc:
        request(make_connection(timezone_name="Pacific/Auckland"), "2026-11-25", "2026-11-30")

    assert exc.value.messages == [
        "The end date 2026-11-30 is in the future in the account's time zone (Pacific/Auckland): "
        "choose days from 2025-11-29 to 2026-11-29."
    ]


@pytest.mark.django_db
@pytest.mark.embedded
def test_request_refuses_days_older_than_the_platform_keeps(connection, meta):
    # The demo provider keeps 365 days: the oldest day is exactly a year back.
    assert request(connection, "2025-11-28", "2025-11-28").days_total == 1

    with pytest.raises(ValidationError) as exc:
        request(meta(), "2023-10-01", "2023-12-31")

    assert exc.value.messages == [
        "Meta keeps daily metrics for 1,125 days, so the start date 2023-10-01 is too far back: "
        "choose days from 2023-10-30 to 2026-11-28."
    ]


@pytest.mark.django_db
@pytest.mark.embedded
def test_request_again_returns_the_backfill_in_progress(connection):
    first = request(connection, "2026-10-01", "2026-10-30")

    again = request(connection, "2026-10-01", "2026-10-30", now=NOW + timedelta(minutes=5))

    assert again.pk == first.pk
    assert (first.status, first.cursor, first.days_total, first.days_done) == (
        BackfillStatus.PENDING,
        date(2026, 10, 30),
        30,
        0,
    )
    assert Backfill.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.embedded
def test_request_of_another_range_while_one_is_active_is_refused(connection):
    request(connection, "2026-10-01", "2026-10-30")

    with pytest.raises(ValidationError) as exc:
        request(connection, "2026-09-01", "2026-10-30")

    assert exc.value.messages == ["A backfill of 2026-10-01 to 2026-10-30 is pending (0 of 30 days); cancel it first."]
    # Once cancelled, another range is fine.
    backfill_cancel(backfill=Backfill.objects.get(), now=NOW)
    assert request(connection, "2026-09-01", "2026-10-30").days_total == 60


@pytest.mark.django_db
@pytest.mark.embedded
def test_the_database_refuses_two_active_backfills_of_one_connection(connection):
    request(connection, "2026-10-01", "2026-10-30")
    second = Backfill(
        connection=connection,
        since=date(2026, 9, 1),
        until=date(2026, 9, 2),
        cursor=date(2026, 9, 2),
        days_total=2,
        not_before=NOW,
        created_at=NOW,
    )

    with pytest.raises(IntegrityError), transaction.atomic():
        second.save()


# --- chunks through the state machine ------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_chunks_walk_newest_to_oldest_until_done(make_connection):
    # Daily, next due tomorrow: the backfill must leave its schedule and sync fields alone.
    connection = make_connection(sync_frequency=SyncFrequency.DAILY, now=NOW)
    Connection.objects.filter(pk=connection.pk).update(next_sync_at=NOW + timedelta(hours=20))
    before = reload(connection)
    backfill = request(connection, "2026-10-01", "2026-10-30")
    progress = []

    for step in range(1, 10):
        run_chunk(NOW + step * STEP)
        backfill = reload(backfill)
        progress.append((backfill.status, backfill.progress_text))
        if backfill.status == BackfillStatus.DONE:
            break

    assert chunk_windows(connection) == [
        ("2026-10-24", "2026-10-30"),
        ("2026-10-17", "2026-10-23"),
        ("2026-10-10", "2026-10-16"),
        ("2026-10-03", "2026-10-09"),
        ("2026-10-01", "2026-10-02"),
    ]
    assert progress == [
        (BackfillStatus.RUNNING, "7 of 30 days"),
        (BackfillStatus.RUNNING, "14 of 30 days"),
        (BackfillStatus.RUNNING, "21 of 30 days"),
        (BackfillStatus.RUNNING, "28 of 30 days"),
        (BackfillStatus.DONE, "30 of 30 days"),
    ]
    assert (backfill.cursor, backfill.progress, backfill.finished_at) == (date(2026, 9, 30), 1.0, NOW + 5 * STEP)
    assert DailyMetric.objects.filter(connection=connection).count() == 30 * 4  # 4 demo campaigns
    runs = SyncRun.objects.filter(connection=connection)
    assert {(run.outcome, run.window, run.rows_written) for run in runs} == {
        (SyncOutcome.SUCCESS, SyncWindow.LOOKBACK, 28),
        (SyncOutcome.SUCCESS, SyncWindow.LOOKBACK, 8),
    }
    after = reload(connection)
    fields = (
        "sync_status",
        "next_sync_at",
        "last_sync_attempted_at",
        "last_sync_completed_at",
        "last_metrics_changed_at",
        "total_syncs_attempted",
        "total_syncs_with_changes",
        "last_sync_error",
        "rate_limited_until",
    )
    assert [getattr(after, f) for f in fields] == [getattr(before, f) for f in fields]
    # Nothing more to claim.
    assert run_chunk(NOW + 10 * STEP) == []


@pytest.mark.django_db
@pytest.mark.embedded
def test_the_same_chunk_twice_writes_nothing_the_second_time(connection):
    backfill = request(connection, "2026-10-01", "2026-10-07")
    run_chunk(NOW)
    assert reload(backfill).status == BackfillStatus.DONE
    # The same range again: the same days, fetched again, are all stored already.
    again = request(connection, "2026-10-01", "2026-10-07", now=NOW + STEP)

    run_chunk(NOW + 2 * STEP)

    first, second = SyncRun.objects.filter(connection=connection).order_by("started_at")
    assert (first.rows_fetched, first.rows_written) == (28, 28)
    assert (second.rows_fetched, second.rows_written) == (28, 0)
    assert reload(again).status == BackfillStatus.DONE
    assert DailyMetric.objects.filter(connection=connection).count() == 28


@pytest.mark.django_db
@pytest.mark.embedded
def test_a_duplicate_finish_counts_the_chunk_once(connection):
    backfill = request(connection, "2026-10-01", "2026-10-20")
    [claim] = backfills_claim_ready(now=NOW, limit=10)
    started = sync_start(connection_id=connection.pk, job_id=claim.job_id, now=NOW)

    assert sync_finish(started=started, rows=[], api_calls=1, now=NOW + timedelta(seconds=1)) == 0
    assert sync_finish(started=started, rows=[], api_calls=1, now=NOW + timedelta(seconds=2)) is None

    backfill = reload(backfill)
    assert (backfill.cursor, backfill.days_done, backfill.status) == (date(2026, 10, 13), 7, BackfillStatus.RUNNING)
    assert backfill.not_before == NOW + timedelta(seconds=11)  # the spacing after the chunk


# --- cancel -------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_cancelling_a_pending_backfill_claims_nothing_more(connection):
    backfill = request(connection, "2026-10-01", "2026-10-30")

    assert backfill_cancel(backfill=backfill, now=NOW) is True

    backfill = reload(backfill)
    assert (backfill.status, backfill.finished_at) == (BackfillStatus.CANCELLED, NOW)
    assert backfills_claim_ready(now=NOW + STEP, limit=10) == []
    assert backfill_cancel(backfill=backfill, now=NOW + STEP) is False


@pytest.mark.django_db
@pytest.mark.embedded
def test_cancelling_with_a_chunk_queued_means_the_chunk_never_runs(connection):
    backfill = request(connection, "2026-10-01", "2026-10-30")
    [claim] = backfills_claim_ready(now=NOW, limit=10)

    assert backfill_cancel(backfill=backfill, now=NOW) is True

    assert reload(connection).sync_status == SyncStatus.IDLE
    assert connection_sync_run(connection_id=connection.pk, job_id=claim.job_id) is None
    run = SyncRun.objects.get(job_id=claim.job_id)
    assert (run.trigger, run.outcome) == (SyncTrigger.BACKFILL, SyncOutcome.CANCELLED)
    assert DailyMetric.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.embedded
def test_cancelling_mid_chunk_writes_nothing_of_it(connection):
    backfill = request(connection, "2026-10-01", "2026-10-30")
    run_chunk(NOW)  # the first chunk completes: its days stay
    [claim] = backfills_claim_ready(now=NOW + STEP, limit=10)
    started = sync_start(connection_id=connection.pk, job_id=claim.job_id, now=NOW + STEP)

    assert backfill_cancel(backfill=backfill, now=NOW + STEP) is True

    # The worker's meter sees the flag before its next call; here the fetch was already done.
    assert sync_cancel_requested(started=started) is True
    assert sync_finish(started=started, rows=[], api_calls=1, now=NOW + 2 * STEP) is None
    assert sync_cancel(started=started, now=NOW + 2 * STEP) is True
    backfill = reload(backfill)
    assert (backfill.status, backfill.days_done) == (BackfillStatus.CANCELLED, 7)
    assert reload(connection).sync_status == SyncStatus.IDLE
    assert DailyMetric.objects.count() == 7 * 4
    assert SyncRun.objects.get(job_id=claim.job_id).outcome == SyncOutcome.CANCELLED


@pytest.mark.django_db
@pytest.mark.embedded
def test_a_chunk_finishing_between_the_two_steps_of_a_cancel_writes_nothing(connection):
    backfill = request(connection, "2026-10-01", "2026-10-30")
    [claim] = backfills_claim_ready(now=NOW, limit=10)
    started = sync_start(connection_id=connection.pk, job_id=claim.job_id, now=NOW)
    # backfill_cancel's first step only (the chunk is not flagged yet).
    Backfill.objects.filter(pk=backfill.pk).update(status=BackfillStatus.CANCELLED, finished_at=NOW)

    rows = [
        MetricRow("campaign", "c1", date(2026, 10, 30), "C1", Decimal("1.50"), 10, 1, Decimal(0), Decimal(0), "USD")
    ]

    # The rows fetched, then the finish finds the backfill cancelled: rolled back, and flagged.
    assert sync_finish(started=started, rows=rows, api_calls=1, now=NOW) is None

    assert sync_cancel_requested(started=started) is True
    assert sync_cancel(started=started, now=NOW) is True
    assert DailyMetric.objects.count() == 0
    assert reload(backfill).days_done == 0


@pytest.mark.django_db
@pytest.mark.embedded
def test_a_chunk_whose_backfill_was_cancelled_before_it_started_is_abandoned(connection):
    backfill = request(connection, "2026-10-01", "2026-10-30")
    [claim] = backfills_claim_ready(now=NOW, limit=10)
    Backfill.objects.filter(pk=backfill.pk).update(status=BackfillStatus.CANCELLED, finished_at=NOW)

    assert sync_start(connection_id=connection.pk, job_id=claim.job_id, now=NOW) is None

    assert reload(connection).sync_status == SyncStatus.IDLE
    run = SyncRun.objects.get(job_id=claim.job_id)
    assert (run.outcome, run.error_message) == (SyncOutcome.CANCELLED, BACKFILL_GONE)


@pytest.mark.django_db
@pytest.mark.embedded
def test_cancelling_the_connections_sync_ends_the_chunk_not_the_backfill(connection):
    backfill = request(connection, "2026-10-01", "2026-10-30")
    assert len(backfills_claim_ready(now=NOW, limit=10)) == 1

    assert connection_cancel_sync(connection=connection, now=NOW) == CancelResult.CANCELLED

    # Like a cancelled scheduled job, which leaves the schedule on: the backfill goes on.
    assert reload(backfill).status == BackfillStatus.PENDING
    assert [c.connection_id for c in backfills_claim_ready(now=NOW + STEP, limit=10)] == [connection.pk]


@pytest.mark.django_db
@pytest.mark.embedded
def test_backfill_cancel_never_cancels_a_sync_that_is_not_its_chunk(connection):
    backfill = request(connection, "2026-10-01", "2026-10-30")
    job = connection_enqueue_sync(connection=connection, now=NOW, send=False)  # Sync Now

    assert backfill_cancel(backfill=backfill, now=NOW) is True

    connection = reload(connection)
    assert (connection.sync_status, connection.job_id) == (SyncStatus.QUEUED, job.job_id)


# --- failures, throttles and budgets move the backfill, not the connection ---------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_a_throttled_chunk_moves_only_the_backfills_not_before(make_connection):
    connection = make_connection(sync_frequency=SyncFrequency.HOURLY, provider_options={"simulate_error": "throttled"})
    Connection.objects.filter(pk=connection.pk).update(next_sync_at=NOW + timedelta(minutes=40))
    backfill = request(connection, "2026-10-01", "2026-10-30")

    assert run_chunk(NOW) == [SyncOutcome.RATE_LIMITED]

    backfill = reload(backfill)
    assert (backfill.status, backfill.not_before, backfill.days_done) == (
        BackfillStatus.PENDING,
        NOW + timedelta(minutes=5),
        0,
    )
    assert backfill.last_error == "Demo platform rate limit reached (simulated)"
    connection = reload(connection)
    assert (connection.sync_status, connection.rate_limited_until, connection.next_sync_at) == (
        SyncStatus.IDLE,
        None,
        NOW + timedelta(minutes=40),
    )
    assert run_chunk(NOW + timedelta(minutes=4)) == []


@pytest.mark.django_db
def test_a_full_budget_defers_only_the_backfill_at_the_claim(meta):
    connection = meta(sync_frequency=SyncFrequency.HOURLY)
    Connection.objects.filter(pk=connection.pk).update(next_sync_at=NOW + timedelta(minutes=40))
    backfill = request(connection, "2026-10-01", "2026-10-30")
    # 162 of Meta's 180 calls this hour: what is left is the 10 % kept for the regular syncs.
    ApiCallBucket.objects.create(key=f"meta:{ACCOUNT}", minute=NOW - timedelta(minutes=30), calls=162)

    assert backfills_claim_ready(now=NOW, limit=10) == []

    backfill = reload(backfill)
    # When the calls of 30 minutes ago leave the rolling hour.
    assert backfill.not_before == NOW + timedelta(minutes=31)
    assert backfill.last_error.startswith("Waiting for room in the platform's rate limits")
    connection = reload(connection)
    assert (connection.sync_status, connection.rate_limited_until, connection.next_sync_at) == (
        SyncStatus.IDLE,
        None,
        NOW + timedelta(minutes=40),
    )
    # One call fewer used and the chunk fits.
    ApiCallBucket.objects.update(calls=161)
    Backfill.objects.update(not_before=NOW)
    assert [c.connection_id for c in backfills_claim_ready(now=NOW, limit=10)] == [connection.pk]


@pytest.mark.django_db
def test_a_chunk_stops_at_the_regular_syncs_share_of_the_budget(graph, meta):
    graph.page_size = 1
    graph.insights[ACCOUNT] = two_days(2, days=("2026-10-29", "2026-10-30"))  # four pages
    connection = meta()
    backfill = request(connection, "2026-10-01", "2026-10-30")
    ApiCallBucket.objects.create(key=f"meta:{ACCOUNT}", minute=NOW - timedelta(minutes=30), calls=160)

    assert run_chunk(NOW) == [SyncOutcome.RATE_LIMITED]

    # Two pages fitted under 162; the third would have taken a call the regular syncs keep.
    assert len(graph.insights_requests(ACCOUNT)) == 2
    backfill = reload(backfill)
    assert (backfill.days_done, backfill.not_before) == (0, NOW + timedelta(minutes=31))
    assert "less the 10 % kept for regular syncs (162 calls per hour)" in backfill.last_error
    assert reload(connection).rate_limited_until is None
    assert DailyMetric.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.embedded
def test_a_temporary_failure_waits_with_backoff_then_gives_up(make_connection):
    connection = make_connection(provider_options={"simulate_error": "transient"})
    backfill = request(connection, "2026-10-01", "2026-10-30")
    waits = []
    now = NOW

    for _ in range(BACKFILL_MAX_FAILURES):
        assert run_chunk(now) == [SyncOutcome.ERROR]
        backfill = reload(backfill)
        waits.append((backfill.not_before - now).total_seconds())
        now = backfill.not_before

    assert waits[:7] == [30, 60, 120, 240, 480, 960, 1800]
    assert (backfill.status, backfill.failures) == (BackfillStatus.FAILED, BACKFILL_MAX_FAILURES - 1)
    assert backfill.last_error == (
        "Gave up after 8 temporary failures in a row: Demo platform is temporarily unavailable (simulated)"
    )
    outcomes = list(SyncRun.objects.order_by("started_at").values_list("outcome", flat=True))
    assert outcomes == [SyncOutcome.RETRYING] * 7 + [SyncOutcome.ERROR]
    connection = reload(connection)
    # The regular syncs' state is not the backfill's to change.
    assert (connection.sync_status, connection.last_sync_error) == (SyncStatus.IDLE, None)


@pytest.mark.django_db
@pytest.mark.embedded
def test_a_refused_chunk_fails_the_backfill_not_the_connection(make_connection):
    connection = make_connection(provider_options={"simulate_error": "permanent"})
    backfill = request(connection, "2026-10-01", "2026-10-30")

    assert run_chunk(NOW) == [SyncOutcome.ERROR]

    backfill = reload(backfill)
    assert (backfill.status, backfill.finished_at, backfill.last_error) == (
        BackfillStatus.FAILED,
        NOW,
        "Demo platform rejected the request (simulated)",
    )
    connection = reload(connection)
    assert (connection.sync_status, connection.last_sync_error) == (SyncStatus.IDLE, None)


@pytest.mark.django_db
@pytest.mark.embedded
def test_expired_access_in_a_chunk_says_so_on_the_connection(make_connection):
    connection = make_connection(sync_frequency=SyncFrequency.HOURLY, provider_options={"simulate_error": "auth"})
    Connection.objects.filter(pk=connection.pk).update(next_sync_at=NOW + timedelta(minutes=40))
    backfill = request(connection, "2026-10-01", "2026-10-30")

    assert run_chunk(NOW) == [SyncOutcome.ERROR]

    assert reload(backfill).status == BackfillStatus.FAILED
    connection = reload(connection)
    # Exactly what any sync failing on expired access does: error, unscheduled until a reconnect.
    assert (connection.sync_status, connection.last_sync_error_kind, connection.next_sync_at) == (
        SyncStatus.ERROR,
        "auth",
        None,
    )


@pytest.mark.django_db
@pytest.mark.embedded
def test_a_chunk_lost_with_its_worker_is_recovered_and_runs_again(connection, settings):
    backfill = request(connection, "2026-10-01", "2026-10-30")
    [claim] = backfills_claim_ready(now=NOW, limit=10)
    sync_start(connection_id=connection.pk, job_id=claim.job_id, now=NOW + timedelta(seconds=100))
    deadline = timedelta(seconds=settings.SYNC_TASK_TIME_LIMIT + settings.SYNC_RECOVERY_GRACE)

    # The deadline counts from the chunk's start, not from its claim.
    assert syncs_recover_stuck(now=NOW + deadline + timedelta(seconds=1)) == 0
    assert syncs_recover_stuck(now=NOW + timedelta(seconds=101) + deadline) == 1

    # Not the connection's failure: idle, no error; the backfill claims the chunk again.
    connection = reload(connection)
    assert (connection.sync_status, connection.last_sync_error) == (SyncStatus.IDLE, None)
    assert reload(backfill).days_done == 0
    assert [c.connection_id for c in backfills_claim_ready(now=NOW + timedelta(seconds=102) + deadline, limit=10)] == [
        connection.pk
    ]


# --- the dispatcher ----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_the_dispatcher_gives_chunks_only_the_room_due_syncs_left(make_connection, sync_worker_beats, settings):
    settings.SYNC_QUEUE_AHEAD = 2
    settings.SYNC_BACKFILL_SLOTS_PCT = 100
    due = [make_connection(sync_frequency=SyncFrequency.REALTIME, now=NOW) for _ in range(3)]
    backfilling = make_connection()
    request(backfilling, "2026-10-01", "2026-10-30")
    sync_worker_beats(NOW, concurrency=1)  # room for 2

    first = syncs_dispatch_due(now=NOW)

    assert first.claimed == 2
    assert Connection.objects.get(pk=backfilling.pk).sync_status == SyncStatus.IDLE
    first_claimed = set(Connection.objects.filter(sync_status=SyncStatus.QUEUED).values_list("pk", flat=True))
    # Workers free again, one due sync left: it goes first, then the chunk gets the last room.
    Connection.objects.filter(sync_status=SyncStatus.QUEUED).update(sync_status=SyncStatus.IDLE, next_sync_at=None)
    second = syncs_dispatch_due(now=NOW + timedelta(seconds=1))

    assert second.claimed == 2
    queued = dict(Connection.objects.filter(sync_status=SyncStatus.QUEUED).values_list("pk", "queued_trigger"))
    [left] = [c.pk for c in due if c.pk not in first_claimed]
    assert queued == {left: SyncTrigger.SCHEDULED, backfilling.pk: SyncTrigger.BACKFILL}


@pytest.mark.django_db
@pytest.mark.embedded
def test_chunks_hold_at_most_their_share_of_the_worker_slots(make_connection, sync_worker_beats, settings):
    settings.SYNC_BACKFILL_SLOTS_PCT = 25
    for _ in range(5):
        request(make_connection(), "2026-10-01", "2026-10-30")
    sync_worker_beats(NOW, concurrency=8)  # 2 slots for chunks

    assert syncs_dispatch_due(now=NOW).claimed == 2
    assert syncs_dispatch_due(now=NOW + timedelta(seconds=1)).claimed == 0
    assert Connection.objects.filter(queued_trigger=SyncTrigger.BACKFILL, sync_status=SyncStatus.QUEUED).count() == 2


# A connection's state, and whether its backfill's chunk may be claimed in it.
READY_CASES = {
    "idle, manual": ({}, True),
    "regular sync due within the spacing": (
        {"sync_frequency": SyncFrequency.REALTIME, "next_sync_at": NOW + timedelta(seconds=10)},
        False,
    ),
    "regular sync after the spacing": (
        {"sync_frequency": SyncFrequency.REALTIME, "next_sync_at": NOW + timedelta(seconds=11)},
        True,
    ),
    "paused": ({"sync_frequency": SyncFrequency.HOURLY, "paused_at": NOW, "pause_reason": "user"}, False),
    "in error": ({"sync_status": SyncStatus.ERROR, "last_sync_error": "Refused"}, False),
    "throttled": ({"rate_limited_until": NOW + timedelta(minutes=1)}, False),
    "throttle over": ({"rate_limited_until": NOW}, True),
    "busy": ({"sync_status": SyncStatus.SYNCING, "job_id": uuid.uuid4(), "queued_at": NOW}, False),
}


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize("case", READY_CASES)
def test_the_ticks_quick_question_agrees_with_the_claim(make_connection, case):
    fields, ready = READY_CASES[case]
    connection = make_connection()
    request(connection, "2026-10-01", "2026-10-30")
    Connection.objects.filter(pk=connection.pk).update(**fields)
    Backfill.objects.update(not_before=NOW)

    assert tick_questions(now=NOW).backfills is ready
    assert bool(backfills_claim_ready(now=NOW, limit=10)) is ready
    # Held back by not_before alone.
    Backfill.objects.update(not_before=NOW + timedelta(seconds=1))
    assert tick_questions(now=NOW).backfills is False


@pytest.mark.django_db
@pytest.mark.embedded
def test_the_ticks_quick_question_of_due_syncs_agrees_with_the_claim(make_connection):
    connection = make_connection(sync_frequency=SyncFrequency.HOURLY, now=NOW)  # due at NOW
    make_connection()  # manual: never due

    assert tick_questions(now=NOW - timedelta(seconds=1)).due is False
    assert tick_questions(now=NOW).due is True
    connection_enqueue_sync(connection=connection, now=NOW, send=False)  # busy: not due
    assert tick_questions(now=NOW).due is False
    assert tick_questions(now=NOW).backfills is False


@pytest.mark.django_db
@pytest.mark.embedded
def test_chunks_take_turns_across_workspaces(make_connection, outsider):
    from connections.services import workspace_create

    shop = workspace_create(name="Shop", owner=outsider)
    agency = [make_connection() for _ in range(3)]
    for index, connection in enumerate(agency):
        request(connection, "2026-10-01", "2026-10-30", now=NOW - timedelta(minutes=10 - index))
    shops = make_connection(workspace=shop)
    request(shops, "2026-10-01", "2026-10-30")

    claimed = {claim.connection_id for claim in backfills_claim_ready(now=NOW, limit=2)}

    assert claimed == {agency[0].pk, shops.pk}


@pytest.mark.django_db
@pytest.mark.embedded
def test_an_empty_tick_asks_nothing_more_for_backfills(django_assert_num_queries, sync_worker_beats):
    sync_worker_beats(NOW)
    syncs_dispatch_due(now=NOW)  # the scheduler's first heartbeat is an insert

    # Recovery (2 updates; the running runs, in a savepoint: 3), anything due or any backfill
    # ready (one statement), the scheduler's heartbeat: as many as before backfills.
    with django_assert_num_queries(7):
        syncs_dispatch_due(now=NOW + timedelta(seconds=1))


# --- reads and the command ----------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_backfill_get_is_scoped_to_the_users_connections(connection, owner, outsider):
    backfill = request(connection, "2026-10-01", "2026-10-30")

    assert backfill_get(connections=connections_for_user(user=owner), public_id=backfill.public_id).pk == backfill.pk
    for user, public_id in ((outsider, backfill.public_id), (owner, "not-a-uuid")):
        with pytest.raises(Http404):
            backfill_get(connections=connections_for_user(user=user), public_id=public_id)
    assert list(backfills_for_connection(connection=connection)) == [backfill]
    assert backfills_active_by_connection(connection_ids=[connection.pk]) == {connection.pk: backfill}


@pytest.mark.django_db
@pytest.mark.embedded
def test_the_backfill_command_starts_shows_and_cancels(connection):
    def command(*args: str) -> str:
        out = StringIO()
        with time_machine.travel(NOW, tick=False):
            call_command("backfill", str(connection.public_id), *args, stdout=out)
        return out.getvalue()

    started = command("--since", "2026-10-01", "--until", "2026-10-30")
    status = command("--status")
    cancelled = command("--cancel")

    label = f"{connection.name} ({connection.public_id})"
    assert started.splitlines()[0] == f"{label}: started, 2026-10-01 to 2026-10-30: pending, 0 of 30 days (0%)."
    assert status == f"{label}: 2026-10-01 to 2026-10-30: pending, 0 of 30 days (0%)\n"
    assert cancelled.splitlines()[0] == (
        f"{label}: 2026-10-01 to 2026-10-30: cancelled, 0 of 30 days (0%). The days fetched so far stay."
    )
    with pytest.raises(CommandError, match="is after the end date"):
        command("--since", "2026-10-30", "--until", "2026-10-01")
    with pytest.raises(CommandError, match="no backfill in progress"):
        command("--cancel")


# --- end to end -------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_real_worker_takes_a_30_day_backfill_to_done(make_connection, start_worker, settings):
    settings.SYNC_BACKFILL_SPACING = 0
    start_worker(SYNC_BACKFILL_SPACING="0")
    # Realtime, so the dispatcher serves its due syncs between the chunks, first.
    connection = make_connection(sync_frequency=SyncFrequency.REALTIME, provider_options={"latency_ms": 50})
    today = timezone.now().date()
    backfill = backfill_request(
        connection=connection, since=today - timedelta(days=40), until=today - timedelta(days=11), now=timezone.now()
    )

    def done() -> bool:
        syncs_dispatch_due(now=timezone.now())
        return reload(backfill).status == BackfillStatus.DONE

    wait_for(done, timeout=60, interval=0.2, message="the backfill to finish")

    backfill = reload(backfill)
    assert (backfill.days_done, backfill.progress_text) == (30, "30 of 30 days")
    first_day, last_day = today - timedelta(days=40), today - timedelta(days=11)
    stored = DailyMetric.objects.filter(connection=connection, date__range=(first_day, last_day))
    assert stored.count() == 30 * 4
    chunks = list(
        SyncRun.objects.filter(connection=connection, trigger=SyncTrigger.BACKFILL)
        .order_by("started_at")
        .values_list("window_until", "outcome")
    )
    assert [until for until, _ in chunks] == [last_day - timedelta(days=7 * n) for n in range(5)]
    assert {outcome for _, outcome in chunks} == {SyncOutcome.SUCCESS}
    # Its realtime syncs ran meanwhile, on their own schedule.
    assert SyncRun.objects.filter(connection=connection, trigger=SyncTrigger.SCHEDULED).exists()
