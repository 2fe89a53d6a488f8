"""End to end with a real `celery worker` subprocess on PostgreSQL and Redis."""

import os
import signal
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from connections.models import Connection, SyncFrequency
from syncing.dispatcher import syncs_dispatch_due
from syncing.models import DailyMetric, SyncOutcome, SyncRun
from syncing.services import LOST_WHILE_SYNCING, connection_enqueue_sync, syncs_recover_stuck
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def status_of(connection) -> str:
    return Connection.objects.values_list("sync_status", flat=True).get(pk=connection.pk)


def observe_statuses(connection, until: set[str], timeout: float = 30) -> list[str]:
    """The distinct statuses seen while polling, in order, until one in `until` is reached."""
    seen: list[str] = []

    def done():
        status = status_of(connection)
        if not seen or seen[-1] != status:
            seen.append(status)
        return status in until

    wait_for(done, timeout=timeout, interval=0.02, message=f"status in {until}")
    return seen


def test_sync_now_runs_queued_syncing_idle_on_a_real_worker(make_connection, start_worker):
    start_worker()
    # A little simulated API latency so that "syncing" can be observed.
    connection = make_connection(provider_options={"latency_ms": 600})

    result = connection_enqueue_sync(connection=connection)

    assert result.status == "queued"
    assert observe_statuses(connection, until={"idle", "error"}) == ["queued", "syncing", "idle"]
    connection.refresh_from_db()
    assert connection.total_syncs_attempted == 1
    assert connection.total_syncs_with_changes == 1
    assert connection.last_sync_error is None
    assert connection.last_sync_attempted_at <= connection.last_sync_completed_at
    assert connection.last_metrics_changed_at == connection.last_sync_completed_at
    # First sync backfills the lookback window: 8 days x 4 demo campaigns.
    assert DailyMetric.objects.filter(connection=connection).count() == 32
    run = SyncRun.objects.get(connection=connection)
    assert (run.job_id, run.outcome, run.rows_written, run.api_calls) == (result.job_id, "success", 32, 1)


def test_dispatcher_feeds_the_worker(make_connection, start_worker):
    # Three slots: with SYNC_QUEUE_AHEAD 2 the dispatcher may queue six jobs (backpressure).
    start_worker(concurrency=3)
    connections = [make_connection(sync_frequency=SyncFrequency.REALTIME) for _ in range(5)]
    slots = {c.pk: c.next_sync_at for c in connections}

    result = syncs_dispatch_due(now=timezone.now())

    assert result.sent == 5
    wait_for(
        lambda: Connection.objects.filter(sync_status="idle", total_syncs_attempted=1).count() == 5,
        timeout=30,
        message="five dispatched syncs to finish",
    )
    for connection in connections:
        connection.refresh_from_db()
        # Slot-based: the next slot is 30 s after the slot just served, not after the start.
        assert connection.next_sync_at == slots[connection.pk] + timedelta(seconds=30)


def test_provider_error_ends_in_error_with_the_message(make_connection, start_worker):
    start_worker()
    connection = make_connection(provider_options={"simulate_error": "auth"})

    connection_enqueue_sync(connection=connection)

    wait_for(lambda: status_of(connection) == "error", message="the sync to fail")
    connection.refresh_from_db()
    assert connection.last_sync_error == "Demo access expired — reconnect the account (simulated)"
    assert connection.total_syncs_attempted == 1


def test_transient_error_is_retried_then_reported(make_connection, start_worker):
    start_worker(SYNC_TRANSIENT_RETRIES="2", SYNC_RETRY_BACKOFF="0.1")
    connection = make_connection(provider_options={"simulate_error": "transient"})

    job = connection_enqueue_sync(connection=connection)

    wait_for(lambda: status_of(connection) == "error", message="the retries to run out")
    runs = list(SyncRun.objects.filter(job_id=job.job_id).order_by("started_at").values_list("outcome", flat=True))
    assert runs == [SyncOutcome.RETRYING, SyncOutcome.RETRYING, SyncOutcome.ERROR]
    connection.refresh_from_db()
    assert connection.total_syncs_attempted == 3
    assert connection.last_sync_error == "Demo platform is temporarily unavailable (simulated)"


def test_worker_killed_mid_sync_is_recovered_and_nothing_duplicated(make_connection, start_worker, broker):
    worker = start_worker()
    connection = make_connection(provider_options={"latency_ms": 60_000})
    connection_enqueue_sync(connection=connection)
    wait_for(lambda: status_of(connection) == "syncing", message="the sync to start")

    worker.kill()  # SIGKILL the whole worker, as the OOM killer would

    assert status_of(connection) == "syncing"
    # No redelivery rescues it (the message waits for the visibility timeout): the dispatcher's
    # recovery does, once the task's hard time limit has certainly passed.
    later = timezone.now() + timedelta(seconds=settings.SYNC_TASK_TIME_LIMIT + settings.SYNC_RECOVERY_GRACE + 1)
    assert syncs_recover_stuck(now=later) == 1
    connection.refresh_from_db()
    assert (connection.sync_status, connection.last_sync_error) == ("error", LOST_WHILE_SYNCING)
    assert SyncRun.objects.get().outcome == SyncOutcome.INTERRUPTED

    # Back in business with a new worker: the next Sync Now completes.
    Connection.objects.filter(pk=connection.pk).update(provider_options={})
    start_worker()
    connection_enqueue_sync(connection=connection)
    wait_for(lambda: status_of(connection) == "idle", message="the retry to finish")
    connection.refresh_from_db()
    assert connection.last_sync_error is None
    assert DailyMetric.objects.filter(connection=connection).count() == 32
    assert list(SyncRun.objects.order_by("started_at").values_list("outcome", flat=True)) == [
        SyncOutcome.INTERRUPTED,
        SyncOutcome.SUCCESS,
    ]


def test_pool_process_killed_mid_sync_redelivery_is_a_no_op(make_connection, start_worker, broker):
    worker = start_worker(concurrency=1, pool="prefork")
    connection = make_connection(provider_options={"latency_ms": 60_000})
    job = connection_enqueue_sync(connection=connection)
    wait_for(lambda: status_of(connection) == "syncing", message="the sync to start")
    (child,) = worker.pool_pids()

    os.kill(child, signal.SIGKILL)

    # reject_on_worker_lost puts the message back at once and the new pool process takes it;
    # the start transition refuses it (the job is already syncing), so it is acknowledged and
    # nothing runs twice.
    wait_for(lambda: "not queued any more" in worker.log_path.read_text(), message="the redelivered copy")
    wait_for(lambda: broker.llen("sync_jobs") == 0 and broker.hlen("unacked") == 0, message="the queue to drain")
    connection.refresh_from_db()
    assert (connection.sync_status, connection.job_id, connection.total_syncs_attempted) == ("syncing", job.job_id, 1)
    assert SyncRun.objects.count() == 1


# --- database outages: a real worker behind a TCP proxy that can play the database going away ----


@pytest.fixture
def database_proxy():
    from django.db import connection as db

    from tests.faultproxy import FaultProxy

    with FaultProxy(db.settings_dict["HOST"] or "127.0.0.1", int(db.settings_dict["PORT"] or 5432)) as proxy:
        yield proxy


def _through(proxy) -> dict[str, str]:
    from django.db import connection as db

    return {"DATABASE_URL": f"postgres://{db.settings_dict['USER']}@127.0.0.1:{proxy.port}/{db.settings_dict['NAME']}"}


def test_job_waits_out_a_database_outage_before_it_starts(make_connection, start_worker, database_proxy):
    worker = start_worker(**_through(database_proxy))
    connection = make_connection()
    database_proxy.down()

    job = connection_enqueue_sync(connection=connection)

    # The task cannot start the job: it retries with backoff instead of using up the message.
    wait_for(lambda: "retrying in" in worker.log_path.read_text(), message="a database retry")
    assert status_of(connection) == "queued"
    database_proxy.pass_through()
    wait_for(lambda: status_of(connection) == "idle", message="the job to run once the database is back")
    run = SyncRun.objects.get()
    assert (run.job_id, run.outcome, run.rows_written) == (job.job_id, SyncOutcome.SUCCESS, 32)


def test_sync_in_flight_waits_out_a_database_outage_to_store(make_connection, start_worker, database_proxy):
    worker = start_worker(**_through(database_proxy))
    connection = make_connection(provider_options={"latency_ms": 1500})
    connection_enqueue_sync(connection=connection)
    wait_for(lambda: status_of(connection) == "syncing", message="the sync to start")

    # The database goes away while the platform call is under way: the fetched rows are not
    # thrown away and the row is not left "syncing" until recovery.
    database_proxy.down()
    wait_for(lambda: "retrying the write" in worker.log_path.read_text(), message="the store to be retried")
    database_proxy.pass_through()

    wait_for(lambda: status_of(connection) == "idle", message="the sync to finish")
    connection.refresh_from_db()
    assert (connection.last_sync_error, connection.total_syncs_attempted) == (None, 1)
    assert DailyMetric.objects.filter(connection=connection).count() == 32
    assert list(SyncRun.objects.values_list("outcome", flat=True)) == [SyncOutcome.SUCCESS]


# --- a platform that never answers (the threads pool has no Celery time limit) ---------------------


def test_a_platform_call_that_never_answers_frees_its_slot_at_the_deadline(make_connection, start_worker):
    from tests.fakes.graph import Answer, FakeGraph

    graph = FakeGraph()
    with graph.running():
        graph.script(Answer(200, "", hang=True))
        # One slot, and a deadline of 10 - 5 = 5 s (SYNC_TASK_SOFT_TIME_LIMIT).
        start_worker(concurrency=1, META_GRAPH_URL=graph.url, SYNC_TASK_TIME_LIMIT="10")
        hung = make_connection(provider="meta", external_account_id="111", credentials={"access_token": "t"})
        waiting = make_connection()
        connection_enqueue_sync(connection=hung)
        wait_for(lambda: status_of(hung) == "syncing", message="the Meta sync to start")
        connection_enqueue_sync(connection=waiting)

        wait_for(lambda: status_of(hung) == "error", timeout=20, message="the deadline to stop the hung sync")
        # The slot is free again: the job queued behind it runs.
        wait_for(lambda: status_of(waiting) == "idle", timeout=20, message="the next job to run")

    hung.refresh_from_db()
    assert hung.last_sync_error == (
        "The platform did not answer within 5 s, so the sync was stopped. "
        "It runs again at its next scheduled time, or press Sync Now."
    )
    assert (hung.last_sync_error_kind, hung.total_syncs_attempted) == ("transient", 1)
    run = SyncRun.objects.get(connection=hung)
    assert (run.outcome, run.api_calls, run.rows_written) == (SyncOutcome.ERROR, 1, 0)
    assert len(graph.insights_requests()) == 1
