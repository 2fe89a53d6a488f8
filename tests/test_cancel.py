"""Cancel a queued or running sync (issue 13, point 5): a queued one never runs; a running one
stops before its next platform call and writes nothing.

The running cases drive the real facebook-business SDK against the fake Graph API, which flags
the cancel from its own thread while it answers a page (as a person pressing Cancel would, from
another process), so the tests commit (transaction=True) for that thread to see the rows.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.db import connection as db

from connections.models import Connection, SyncFrequency, SyncStatus, SyncTrigger
from syncing.dispatcher import connections_claim_due
from syncing.models import DailyMetric, JobStatus, SyncOutcome, SyncRun
from syncing.providers.base import TransientProviderError
from syncing.runner import connection_sync_run
from syncing.selectors import job_state
from syncing.services import (
    CancelResult,
    connection_cancel_sync,
    connection_enqueue_sync,
    connections_queue_claimed,
    sync_cancel,
    sync_requeue_for_retry,
    sync_start,
)
from tests.meta_provider_fixtures import ACCOUNT, NOW, restated, two_days
from tests.meta_provider_fixtures import graph_fixture as graph_fixture  # a fixture: pytest finds it by name
from tests.meta_provider_fixtures import meta_fixture as meta_fixture  # a fixture: pytest finds it by name


def reload(connection: Connection) -> Connection:
    connection.refresh_from_db()
    return connection


def cancel_on_answer(graph, connection: Connection, *, answer: int) -> None:
    """Flag the cancel while the fake answers its `answer`-th insights request (1-based)."""
    answers = iter(range(1, 1000))

    def headers() -> dict[str, str]:
        if next(answers) == answer:
            Connection.objects.filter(pk=connection.pk).update(cancel_requested_at=NOW)
            # This runs in the fake's request thread: its database connection must not outlive it.
            db.close()
        return {}

    graph.usage_headers_for = headers


@pytest.mark.django_db
@pytest.mark.embedded
def test_cancelling_a_queued_sync_means_it_never_runs(make_connection):
    connection = make_connection()
    job = connection_enqueue_sync(connection=connection, now=NOW, send=False)

    assert connection_cancel_sync(connection=connection, now=NOW) == CancelResult.CANCELLED

    connection = reload(connection)
    assert (connection.sync_status, connection.last_sync_attempted_at) == (SyncStatus.IDLE, None)
    # The message still in the queue finds nothing to do.
    assert connection_sync_run(connection_id=connection.pk, job_id=job.job_id) is None
    state = job_state(job_id=job.job_id, connections=Connection.objects.all())
    assert state is not None
    assert state.status == JobStatus.CANCELLED
    run = SyncRun.objects.get(job_id=job.job_id)
    assert (run.outcome, run.error_message, run.api_calls) == (SyncOutcome.CANCELLED, "Cancelled before it started.", 0)
    assert connection_cancel_sync(connection=connection, now=NOW) == CancelResult.NOTHING


@pytest.mark.django_db
@pytest.mark.embedded
def test_a_cancelled_scheduled_job_gives_up_its_slot(make_connection, sync_worker_beats):
    connection = make_connection(sync_frequency=SyncFrequency.HOURLY, now=NOW)
    [claim] = connections_claim_due(now=NOW, limit=10)

    assert connection_cancel_sync(connection=connection, now=NOW + timedelta(seconds=5)) == CancelResult.CANCELLED

    connection = reload(connection)
    assert connection.next_sync_at is not None
    assert connection.next_sync_at >= NOW + timedelta(hours=1)
    assert connections_claim_due(now=NOW + timedelta(minutes=1), limit=10) == []
    assert SyncRun.objects.get(job_id=claim.job_id).trigger == SyncTrigger.SCHEDULED


@pytest.mark.django_db(transaction=True)
def test_a_running_sync_stops_before_its_next_call_and_writes_nothing(graph, meta):
    graph.page_size = 1
    graph.insights[ACCOUNT] = two_days(3)  # six rows: six pages
    connection = restated(meta(sync_frequency=SyncFrequency.HOURLY))
    job = connection_enqueue_sync(connection=connection, now=NOW, send=False)
    cancel_on_answer(graph, connection, answer=2)

    with time_machine.travel(NOW, tick=False):
        assert connection_sync_run(connection_id=connection.pk, job_id=job.job_id) == SyncOutcome.CANCELLED

    assert len(graph.insights_requests(ACCOUNT)) == 2  # no call after the cancel
    connection = reload(connection)
    assert (connection.sync_status, connection.cancel_requested_at, connection.last_sync_error) == (
        SyncStatus.IDLE,
        None,
        None,
    )
    assert connection.next_sync_at is not None  # the schedule goes on
    assert DailyMetric.objects.filter(connection=connection).count() == 0
    run = SyncRun.objects.get(job_id=job.job_id)
    assert (run.outcome, run.api_calls, run.rows_written) == (SyncOutcome.CANCELLED, 2, 0)
    assert "nothing it fetched was written" in run.error_message


@pytest.mark.django_db(transaction=True)
def test_a_cancel_after_the_last_call_still_writes_nothing(graph, meta):
    graph.insights[ACCOUNT] = two_days(2)
    connection = restated(meta())
    job = connection_enqueue_sync(connection=connection, now=NOW, send=False)
    cancel_on_answer(graph, connection, answer=1)  # the only call

    with time_machine.travel(NOW, tick=False):
        assert connection_sync_run(connection_id=connection.pk, job_id=job.job_id) == SyncOutcome.CANCELLED

    assert DailyMetric.objects.filter(connection=connection).count() == 0
    assert reload(connection).sync_status == SyncStatus.IDLE
    assert reload(connection).last_sync_completed_at is None


@pytest.mark.django_db
@pytest.mark.embedded
def test_a_cancelled_sync_is_not_retried_and_ends_cancelled(make_connection):
    connection = make_connection()
    job = connection_enqueue_sync(connection=connection, now=NOW, send=False)
    started = sync_start(connection_id=connection.pk, job_id=job.job_id, now=NOW)
    assert connection_cancel_sync(connection=connection, now=NOW) == CancelResult.CANCELLING

    # A transient failure would requeue the job for a retry: not once it is cancelled.
    later = NOW + timedelta(seconds=2)
    assert sync_requeue_for_retry(started=started, error=TransientProviderError("503"), now=later) is False
    assert sync_cancel(started=started, now=later, api_calls=1) is True

    connection = reload(connection)
    assert (connection.sync_status, connection.cancel_requested_at) == (SyncStatus.IDLE, None)
    assert SyncRun.objects.get(job_id=job.job_id).outcome == SyncOutcome.CANCELLED


@pytest.mark.django_db
@pytest.mark.embedded
def test_cancelling_a_running_sync_flags_it(make_connection):
    connection = make_connection()
    job = connection_enqueue_sync(connection=connection, now=NOW, send=False)
    Connection.objects.filter(pk=connection.pk).update(sync_status=SyncStatus.SYNCING)

    assert connection_cancel_sync(connection=connection, now=NOW) == CancelResult.CANCELLING
    assert connection_cancel_sync(connection=connection, now=NOW + timedelta(seconds=1)) == CancelResult.CANCELLING

    connection = reload(connection)
    assert (connection.sync_status, connection.job_id, connection.cancel_requested_at) == (
        SyncStatus.SYNCING,
        job.job_id,
        NOW,
    )


@pytest.mark.django_db
@pytest.mark.embedded
def test_sync_now_takes_the_place_of_a_queued_backfill_chunk(make_connection):
    connection = make_connection()
    [chunk_job] = connections_queue_claimed(ids=[connection.pk], now=NOW, trigger=SyncTrigger.BACKFILL).values()

    result = connection_enqueue_sync(connection=connection, now=NOW + timedelta(seconds=1), send=False)

    assert result.created is True
    assert result.job_id != chunk_job
    connection = reload(connection)
    assert (connection.sync_status, connection.queued_trigger) == (SyncStatus.QUEUED, SyncTrigger.MANUAL)
    cancelled = SyncRun.objects.get(job_id=chunk_job)
    assert (cancelled.outcome, cancelled.trigger) == (SyncOutcome.CANCELLED, SyncTrigger.BACKFILL)


@pytest.mark.django_db
@pytest.mark.embedded
def test_recovery_of_a_lost_backfill_chunk_leaves_the_connection_idle_without_an_error(make_connection, settings):
    from syncing.services import syncs_recover_stuck

    connection = make_connection()
    connections_queue_claimed(ids=[connection.pk], now=NOW, trigger=SyncTrigger.BACKFILL)

    recovered = syncs_recover_stuck(now=NOW + timedelta(seconds=settings.SYNC_QUEUED_TIMEOUT + 1))

    connection = reload(connection)
    assert recovered == 1
    assert (connection.sync_status, connection.last_sync_error, connection.last_sync_error_kind) == (
        SyncStatus.IDLE,
        None,
        "",
    )
