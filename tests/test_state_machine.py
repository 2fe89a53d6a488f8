"""Every transition of DESIGN.md's state machine, each one conditional UPDATE."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.conf import settings
from django.db import connection as db

from connections.models import Connection, SyncFrequency, SyncStatus, SyncTrigger
from syncing.models import DailyMetric, SyncOutcome, SyncRun, SyncWindow
from syncing.providers.base import AuthError, MetricRow, ThrottledError, TransientProviderError
from syncing.services import (
    LOST_IN_QUEUE,
    LOST_WHILE_SYNCING,
    BrokerUnavailable,
    connection_enqueue_sync,
    sync_defer,
    sync_fail,
    sync_finish,
    sync_requeue_for_retry,
    sync_start,
    syncs_recover_stuck,
)
from tests.conftest import run_concurrently

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def reload(connection: Connection) -> Connection:
    return Connection.objects.get(pk=connection.pk)


def queued(connection, now=NOW, trigger=SyncTrigger.MANUAL):
    return connection_enqueue_sync(connection=connection, trigger=trigger, now=now, send=False)


def some_rows(n=2):
    from decimal import Decimal

    return [
        MetricRow("campaign", f"c{i}", NOW.date(), f"C{i}", Decimal("1.50"), 10, 1, Decimal(0), Decimal(0), "USD")
        for i in range(n)
    ]


# --- enqueue -------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_enqueue_from_idle_queues_a_new_job(connection):
    result = queued(connection)

    connection = reload(connection)
    assert result.created is True
    assert result.status == "queued"
    assert connection.sync_status == SyncStatus.QUEUED
    assert connection.job_id == result.job_id
    assert connection.queued_at == NOW
    assert connection.queued_trigger == SyncTrigger.MANUAL


@pytest.mark.django_db
@pytest.mark.embedded
def test_enqueue_while_queued_returns_the_existing_job(connection):
    first = queued(connection)

    second = queued(connection, now=NOW + timedelta(seconds=5))

    assert second.created is False
    assert second.job_id == first.job_id
    assert second.status == "queued"
    assert reload(connection).queued_at == NOW


@pytest.mark.django_db
@pytest.mark.embedded
def test_enqueue_while_syncing_returns_the_running_job(connection):
    first = queued(connection)
    sync_start(connection_id=connection.pk, job_id=first.job_id, now=NOW)

    second = queued(connection)

    assert (second.job_id, second.status, second.created) == (first.job_id, "syncing", False)


@pytest.mark.django_db
@pytest.mark.embedded
def test_enqueue_from_error_is_allowed(connection):
    Connection.objects.filter(pk=connection.pk).update(sync_status=SyncStatus.ERROR, last_sync_error="boom")

    result = queued(connection)

    assert result.created is True
    assert reload(connection).sync_status == SyncStatus.QUEUED
    # The error stays visible until a sync succeeds.
    assert reload(connection).last_sync_error == "boom"


@pytest.mark.django_db(transaction=True)
def test_enqueue_sends_one_message_to_sync_jobs(connection, broker):
    result = connection_enqueue_sync(connection=connection, now=NOW)

    assert broker.llen("sync_jobs") == 1
    assert result.created is True


@pytest.mark.django_db(transaction=True)
def test_enqueue_with_broker_down_leaves_the_connection_as_it_was(connection, broker_down):
    Connection.objects.filter(pk=connection.pk).update(sync_status=SyncStatus.ERROR, last_sync_error="earlier")

    with pytest.raises(BrokerUnavailable):
        connection_enqueue_sync(connection=connection, now=NOW)

    connection = reload(connection)
    assert connection.sync_status == SyncStatus.ERROR
    assert connection.job_id is None
    assert connection.last_sync_error == "earlier"


@pytest.mark.django_db(transaction=True)
def test_enqueue_20_concurrent_requests_make_one_job(connection, broker):
    results = run_concurrently(lambda: connection_enqueue_sync(connection=connection), times=20)

    assert len(results) == 20
    assert len({r.job_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert broker.llen("sync_jobs") == 1
    assert reload(connection).job_id == results[0].job_id


# --- start ---------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_start_moves_queued_to_syncing_and_counts_the_attempt(connection):
    job = queued(connection)

    started = sync_start(connection_id=connection.pk, job_id=job.job_id, now=NOW + timedelta(seconds=1))

    connection = reload(connection)
    assert started is not None
    assert connection.sync_status == SyncStatus.SYNCING
    assert connection.last_sync_attempted_at == NOW + timedelta(seconds=1)
    assert connection.total_syncs_attempted == 1
    run = SyncRun.objects.get()
    assert (run.job_id, run.outcome, run.trigger) == (job.job_id, SyncOutcome.RUNNING, SyncTrigger.MANUAL)


@pytest.mark.django_db
@pytest.mark.embedded
def test_start_twice_for_one_job_runs_it_once(connection):
    job = queued(connection)

    first = sync_start(connection_id=connection.pk, job_id=job.job_id, now=NOW)
    duplicate = sync_start(connection_id=connection.pk, job_id=job.job_id, now=NOW)

    assert first is not None
    assert duplicate is None
    assert reload(connection).total_syncs_attempted == 1
    assert SyncRun.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.embedded
def test_start_with_a_stale_job_id_does_nothing(connection):
    queued(connection)

    assert sync_start(connection_id=connection.pk, job_id=uuid.uuid4(), now=NOW) is None
    assert reload(connection).sync_status == SyncStatus.QUEUED


@pytest.mark.django_db
@pytest.mark.embedded
def test_start_of_a_deleted_connection_does_nothing(connection):
    job = queued(connection)
    Connection.objects.filter(pk=connection.pk).delete()

    assert sync_start(connection_id=connection.pk, job_id=job.job_id, now=NOW) is None


@pytest.mark.django_db
@pytest.mark.embedded
def test_first_sync_fetches_the_lookback_window_then_recent_days(make_connection):
    connection = make_connection(timezone_name="UTC")
    started = sync_start(connection_id=connection.pk, job_id=queued(connection).job_id, now=NOW)
    assert (started.restatement, started.since, started.until) == (True, NOW.date() - timedelta(days=7), NOW.date())
    sync_finish(started=started, rows=[], api_calls=1, now=NOW)

    later = NOW + timedelta(minutes=1)
    started = sync_start(connection_id=connection.pk, job_id=queued(connection, later).job_id, now=later)

    assert (started.restatement, started.since, started.until) == (False, NOW.date() - timedelta(days=1), NOW.date())
    assert SyncRun.objects.filter(window=SyncWindow.RECENT).count() == 1


@pytest.mark.django_db
@pytest.mark.embedded
def test_restatement_rides_on_the_first_sync_after_the_cadence(make_connection):
    connection = make_connection()
    Connection.objects.filter(pk=connection.pk).update(last_restated_at=NOW - timedelta(hours=5, minutes=59))
    started = sync_start(connection_id=connection.pk, job_id=queued(connection).job_id, now=NOW)
    assert started.restatement is False
    sync_finish(started=started, rows=[], api_calls=1, now=NOW)

    later = NOW + timedelta(minutes=1)
    started = sync_start(connection_id=connection.pk, job_id=queued(connection, later).job_id, now=later)
    assert started.restatement is True
    sync_finish(started=started, rows=[], api_calls=1, now=later)
    assert reload(connection).last_restated_at == later


@pytest.mark.django_db
@pytest.mark.embedded
def test_start_in_the_account_time_zone_picks_its_today(make_connection):
    # 06:30 UTC is still the previous evening in Los Angeles.
    connection = make_connection(timezone_name="America/Los_Angeles")
    Connection.objects.filter(pk=connection.pk).update(last_restated_at=NOW)
    at = datetime(2026, 11, 28, 6, 30, tzinfo=UTC)

    started = sync_start(connection_id=connection.pk, job_id=queued(connection, at).job_id, now=at)

    assert (started.since, started.until) == (datetime(2026, 11, 26).date(), datetime(2026, 11, 27).date())


# --- finish / fail / defer / retry -----------------------------------------------------------------


def started_sync(connection, now=NOW):
    return sync_start(connection_id=connection.pk, job_id=queued(connection, now).job_id, now=now)


@pytest.mark.django_db
@pytest.mark.embedded
def test_finish_with_changes_moves_the_change_counters(connection):
    started = started_sync(connection)

    written = sync_finish(started=started, rows=some_rows(3), api_calls=1, now=NOW + timedelta(seconds=2))

    connection = reload(connection)
    assert written == 3
    assert connection.sync_status == SyncStatus.IDLE
    assert connection.last_sync_completed_at == NOW + timedelta(seconds=2)
    assert connection.last_metrics_changed_at == NOW + timedelta(seconds=2)
    assert (connection.total_syncs_attempted, connection.total_syncs_with_changes) == (1, 1)
    run = SyncRun.objects.get()
    assert (run.outcome, run.rows_fetched, run.rows_written, run.api_calls) == (SyncOutcome.SUCCESS, 3, 3, 1)


@pytest.mark.django_db
@pytest.mark.embedded
def test_finish_unchanged_resync_writes_nothing_and_leaves_change_counters(connection):
    sync_finish(started=started_sync(connection), rows=some_rows(3), api_calls=1, now=NOW)
    later = NOW + timedelta(seconds=30)

    written = sync_finish(started=started_sync(connection, later), rows=some_rows(3), api_calls=1, now=later)

    connection = reload(connection)
    assert written == 0
    assert connection.last_sync_completed_at == later
    assert connection.last_metrics_changed_at == NOW
    assert (connection.total_syncs_attempted, connection.total_syncs_with_changes) == (2, 1)
    assert DailyMetric.objects.count() == 3


@pytest.mark.django_db
@pytest.mark.embedded
def test_finish_clears_the_previous_error(connection):
    Connection.objects.filter(pk=connection.pk).update(sync_status=SyncStatus.ERROR, last_sync_error="boom")

    sync_finish(started=started_sync(connection), rows=[], api_calls=1, now=NOW)

    assert reload(connection).sync_status == SyncStatus.IDLE
    assert reload(connection).last_sync_error is None


@pytest.mark.django_db
@pytest.mark.embedded
def test_finish_after_recovery_writes_nothing(connection):
    started = started_sync(connection)
    Connection.objects.filter(pk=connection.pk).update(sync_status=SyncStatus.ERROR, last_sync_error="lost")

    assert sync_finish(started=started, rows=some_rows(2), api_calls=1, now=NOW) is None

    connection = reload(connection)
    assert connection.sync_status == SyncStatus.ERROR
    assert connection.total_syncs_with_changes == 0
    assert DailyMetric.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.embedded
def test_fail_sets_error_with_the_message(connection):
    started = started_sync(connection)

    sync_fail(started=started, error=AuthError("Access expired — reconnect the account"), now=NOW, api_calls=1)

    connection = reload(connection)
    assert connection.sync_status == SyncStatus.ERROR
    assert connection.last_sync_error == "Access expired — reconnect the account"
    assert connection.last_sync_completed_at is None
    run = SyncRun.objects.get()
    assert (run.outcome, run.error_class, run.api_calls) == (SyncOutcome.ERROR, "auth", 1)


@pytest.mark.django_db
@pytest.mark.embedded
def test_defer_when_throttled_is_not_a_failure(make_connection):
    connection = make_connection(sync_frequency=SyncFrequency.REALTIME)
    started = started_sync(connection)
    until = NOW + timedelta(minutes=7)

    sync_defer(started=started, until=until, error=ThrottledError("slow down", until=until), now=NOW)

    connection = reload(connection)
    assert connection.sync_status == SyncStatus.IDLE
    assert connection.rate_limited_until == until
    assert connection.next_sync_at == until
    assert connection.last_sync_error is None
    assert SyncRun.objects.get().outcome == SyncOutcome.RATE_LIMITED


@pytest.mark.django_db
@pytest.mark.embedded
def test_defer_keeps_a_manual_connection_unscheduled(connection):
    started = started_sync(connection)

    sync_defer(started=started, until=NOW + timedelta(minutes=7), error=ThrottledError("slow down"), now=NOW)

    assert reload(connection).next_sync_at is None


@pytest.mark.django_db
@pytest.mark.embedded
def test_requeue_for_retry_keeps_the_job_and_can_start_again(connection):
    started = started_sync(connection)

    sync_requeue_for_retry(started=started, error=TransientProviderError("503"), now=NOW + timedelta(seconds=1))

    connection = reload(connection)
    assert connection.sync_status == SyncStatus.QUEUED
    assert connection.job_id == started.job_id
    again = sync_start(connection_id=connection.pk, job_id=started.job_id, now=NOW + timedelta(seconds=6))
    assert again is not None
    assert reload(connection).total_syncs_attempted == 2
    assert list(SyncRun.objects.order_by("started_at").values_list("outcome", flat=True)) == [
        SyncOutcome.RETRYING,
        SyncOutcome.RUNNING,
    ]


# --- recover -------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_recover_a_job_lost_in_the_queue(connection):
    queued(connection)

    assert syncs_recover_stuck(now=NOW + timedelta(seconds=settings.SYNC_QUEUED_TIMEOUT - 1)) == 0
    assert syncs_recover_stuck(now=NOW + timedelta(seconds=settings.SYNC_QUEUED_TIMEOUT + 1)) == 1

    connection = reload(connection)
    assert connection.sync_status == SyncStatus.ERROR
    assert connection.last_sync_error == LOST_IN_QUEUE.format(minutes=settings.SYNC_QUEUED_TIMEOUT // 60)


@pytest.mark.django_db
@pytest.mark.embedded
def test_recover_a_sync_past_the_hard_time_limit(connection):
    started = started_sync(connection)
    deadline = settings.SYNC_TASK_TIME_LIMIT + settings.SYNC_RECOVERY_GRACE

    assert syncs_recover_stuck(now=NOW + timedelta(seconds=deadline - 1)) == 0
    assert syncs_recover_stuck(now=NOW + timedelta(seconds=deadline + 1)) == 1

    connection = reload(connection)
    assert connection.sync_status == SyncStatus.ERROR
    assert connection.last_sync_error == LOST_WHILE_SYNCING
    assert SyncRun.objects.get().outcome == SyncOutcome.INTERRUPTED
    # The late worker, if it ever wakes up, finds the row changed and writes nothing.
    assert sync_finish(started=started, rows=some_rows(), api_calls=1, now=NOW) is None
    # And the connection can be synced again.
    assert queued(connection).created is True


@pytest.mark.django_db
@pytest.mark.embedded
def test_recover_leaves_healthy_jobs_alone(make_connection):
    idle = make_connection()
    waiting = make_connection()
    running = make_connection()
    queued(waiting, now=NOW + timedelta(seconds=100))
    started_sync(running, now=NOW + timedelta(seconds=100))

    assert syncs_recover_stuck(now=NOW + timedelta(seconds=120)) == 0
    assert [reload(c).sync_status for c in (idle, waiting, running)] == ["idle", "queued", "syncing"]


@pytest.mark.django_db
def test_recover_uses_the_busy_index():
    plan = _explain("SELECT id FROM connections WHERE sync_status IN ('queued', 'syncing') AND queued_at < now()")
    assert "connections_busy_idx" in plan


def _explain(sql: str) -> str:
    with db.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("EXPLAIN " + sql)
        plan = "\n".join(line for (line,) in cursor.fetchall())
        cursor.execute("RESET enable_seqscan")
    return plan


# --- frequency changes ---------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_frequency_change_while_queued_wins_over_the_start(make_connection):
    from connections.services import connection_set_frequency

    connection = make_connection(sync_frequency=SyncFrequency.HOURLY, now=NOW)
    job = connection_enqueue_sync(connection=connection, trigger=SyncTrigger.SCHEDULED, now=NOW, send=False)

    with time_machine.travel(NOW + timedelta(seconds=1), tick=False):
        connection_set_frequency(connection=connection, frequency=SyncFrequency.REALTIME)
    started = sync_start(connection_id=connection.pk, job_id=job.job_id, now=NOW + timedelta(seconds=2))

    assert started is not None
    # Slot NOW+1s (recomputed at the change) + 30 s: the new frequency, not an hour.
    assert reload(connection).next_sync_at == NOW + timedelta(seconds=31)


# --- expired access and refused restatements ---------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_fail_with_expired_access_unschedules_until_reconnected(make_connection):
    from connections.services import connection_credentials_replace

    connection = make_connection(sync_frequency=SyncFrequency.REALTIME, now=NOW)
    started = sync_start(
        connection_id=connection.pk,
        job_id=connection_enqueue_sync(connection=connection, now=NOW, send=False).job_id,
        now=NOW,
    )
    sync_fail(started=started, error=AuthError("Meta access expired — reconnect the account"), now=NOW)
    connection = reload(connection)
    assert (connection.sync_status, connection.next_sync_at, connection.last_sync_error_kind) == ("error", None, "auth")

    later = NOW + timedelta(minutes=5)
    connection_credentials_replace(
        connection=connection, credentials={"access_token": "new"}, expires_at=None, now=later
    )

    connection = reload(connection)
    assert (connection.sync_status, connection.last_sync_error, connection.last_sync_error_kind) == ("idle", None, "")
    assert connection.next_sync_at == later  # the last attempt was over 30 s ago: due at once
    assert connection.credentials == {"access_token": "new"}


@pytest.mark.django_db
@pytest.mark.embedded
def test_credentials_replace_leaves_other_errors_alone(connection):
    from connections.services import connection_credentials_replace

    Connection.objects.filter(pk=connection.pk).update(
        sync_status=SyncStatus.ERROR, last_sync_error="Meta said no", last_sync_error_kind="permanent"
    )

    connection_credentials_replace(connection=connection, credentials={"access_token": "new"}, expires_at=NOW)

    connection = reload(connection)
    assert (connection.sync_status, connection.last_sync_error) == ("error", "Meta said no")
    assert connection.credentials_expires_at == NOW


@pytest.mark.django_db
@pytest.mark.embedded
def test_a_refused_restatement_lets_the_next_sync_fetch_recent_days(connection):
    from syncing.providers.base import PermanentError

    started = started_sync(connection)
    assert started.restatement is True
    sync_fail(started=started, error=PermanentError("Please reduce the amount of data"), now=NOW)

    later = NOW + timedelta(minutes=1)
    again = sync_start(connection_id=connection.pk, job_id=queued(connection, later).job_id, now=later)

    assert again.restatement is False


@pytest.mark.django_db
@pytest.mark.embedded
def test_a_transient_failure_keeps_the_restatement_due(connection):
    started = started_sync(connection)
    sync_fail(started=started, error=TransientProviderError("503"), now=NOW)

    later = NOW + timedelta(minutes=1)
    again = sync_start(connection_id=connection.pk, job_id=queued(connection, later).job_id, now=later)

    assert again.restatement is True


@pytest.mark.django_db
@pytest.mark.embedded
def test_a_retried_job_serves_the_same_slot(make_connection):
    connection = make_connection(sync_frequency=SyncFrequency.HOURLY, now=NOW)
    job = connection_enqueue_sync(connection=connection, trigger=SyncTrigger.SCHEDULED, now=NOW, send=False)
    started = sync_start(connection_id=connection.pk, job_id=job.job_id, now=NOW + timedelta(seconds=1))
    assert reload(connection).next_sync_at == NOW + timedelta(hours=1)

    sync_requeue_for_retry(started=started, error=TransientProviderError("503"), now=NOW + timedelta(seconds=2))
    assert reload(connection).next_sync_at == NOW
    sync_start(connection_id=connection.pk, job_id=job.job_id, now=NOW + timedelta(seconds=7))

    assert reload(connection).next_sync_at == NOW + timedelta(hours=1)


@pytest.mark.django_db
@pytest.mark.embedded
def test_frequency_change_to_longer_while_queued_runs_from_the_start(make_connection):
    from connections.services import connection_set_frequency
    from syncing.schedule import jitter

    connection = make_connection(sync_frequency=SyncFrequency.REALTIME, now=NOW)
    Connection.objects.filter(pk=connection.pk).update(last_sync_attempted_at=NOW - timedelta(seconds=30))
    job = connection_enqueue_sync(connection=connection, trigger=SyncTrigger.SCHEDULED, now=NOW, send=False)

    connection_set_frequency(connection=connection, frequency=SyncFrequency.DAILY, now=NOW + timedelta(seconds=1))
    sync_start(connection_id=connection.pk, job_id=job.job_id, now=NOW + timedelta(seconds=2))

    # A day after this attempt, not a day after the (future) time the change computed.
    day = timedelta(days=1)
    expected = NOW + timedelta(seconds=2) + day + jitter(public_id=connection.public_id, interval=day)
    assert reload(connection).next_sync_at == expected


@pytest.mark.django_db
@pytest.mark.embedded
def test_frequency_change_respects_a_platform_throttle(make_connection):
    from connections.services import connection_set_frequency

    connection = make_connection(sync_frequency=SyncFrequency.HOURLY, now=NOW)
    Connection.objects.filter(pk=connection.pk).update(rate_limited_until=NOW + timedelta(minutes=7))

    connection_set_frequency(connection=connection, frequency=SyncFrequency.REALTIME, now=NOW)

    assert reload(connection).next_sync_at == NOW + timedelta(minutes=7)


@pytest.mark.django_db
@pytest.mark.embedded
def test_frequency_change_keeps_a_connection_waiting_for_reconnect_unscheduled(make_connection):
    from connections.services import connection_set_frequency

    connection = make_connection(sync_frequency=SyncFrequency.HOURLY, now=NOW)
    Connection.objects.filter(pk=connection.pk).update(
        sync_status=SyncStatus.ERROR, last_sync_error_kind="auth", next_sync_at=None
    )

    connection_set_frequency(connection=connection, frequency=SyncFrequency.REALTIME, now=NOW)

    assert (reload(connection).sync_frequency, reload(connection).next_sync_at) == ("realtime", None)


@pytest.mark.django_db
@pytest.mark.embedded
def test_operator_reset_ends_the_run_and_leaves_idle_rows_alone(make_connection):
    from syncing.services import RESET_BY_OPERATOR, syncs_reset_stuck

    running, idle = make_connection(), make_connection()
    started = started_sync(running)

    assert syncs_reset_stuck(connection_ids=[running.pk, idle.pk], now=NOW + timedelta(seconds=5)) == 1

    running = reload(running)
    assert (running.sync_status, running.last_sync_error, running.last_sync_error_kind) == (
        "error",
        RESET_BY_OPERATOR,
        "interrupted",
    )
    assert reload(idle).sync_status == "idle"
    assert SyncRun.objects.get().outcome == SyncOutcome.INTERRUPTED
    assert sync_finish(started=started, rows=some_rows(), api_calls=1, now=NOW) is None


def test_every_provider_error_kind_is_a_stored_kind():
    from connections.models import ErrorKind
    from syncing.providers import base

    kinds = {
        cls.error_class for cls in vars(base).values() if isinstance(cls, type) and issubclass(cls, base.ProviderError)
    }
    assert kinds <= set(ErrorKind.values)
    assert kinds == {"auth", "permanent", "transient", "throttled", "cancelled"}


@pytest.mark.django_db
@pytest.mark.embedded
def test_a_retry_after_switching_to_manual_stays_unscheduled(make_connection):
    from connections.services import connection_set_frequency

    connection = make_connection(sync_frequency=SyncFrequency.HOURLY, now=NOW)
    job = connection_enqueue_sync(connection=connection, trigger=SyncTrigger.SCHEDULED, now=NOW, send=False)
    started = sync_start(connection_id=connection.pk, job_id=job.job_id, now=NOW)
    connection_set_frequency(connection=connection, frequency=SyncFrequency.MANUAL, now=NOW)

    assert sync_requeue_for_retry(started=started, error=TransientProviderError("503"), now=NOW) is True

    connection = reload(connection)
    assert (connection.sync_status, connection.sync_frequency, connection.next_sync_at) == ("queued", "manual", None)


@pytest.mark.django_db
@pytest.mark.embedded
def test_expired_access_from_before_a_reconnect_does_not_undo_it(make_connection):
    from connections.services import connection_credentials_replace

    connection = make_connection(sync_frequency=SyncFrequency.REALTIME, credentials={"access_token": "old"}, now=NOW)
    started = started_sync(connection)  # runs with the old token
    connection_credentials_replace(
        connection=connection, credentials={"access_token": "new"}, expires_at=None, now=NOW + timedelta(seconds=1)
    )

    assert sync_fail(started=started, error=AuthError("Meta access expired — reconnect the account"), now=NOW) is True

    connection = reload(connection)
    assert (connection.sync_status, connection.last_sync_error, connection.last_sync_error_kind) == ("idle", None, "")
    assert connection.next_sync_at is not None
    assert SyncRun.objects.get().outcome == SyncOutcome.ERROR
