from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection as db

from connections.models import Connection, SyncFrequency, SyncStatus, SyncTrigger
from connections.services import connection_set_frequency
from syncing.dispatcher import connections_claim_due, syncs_dispatch_due
from syncing.schedule import jitter
from syncing.services import connection_enqueue_sync
from tests.conftest import run_concurrently

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def schedule(connection, at):
    Connection.objects.filter(pk=connection.pk).update(next_sync_at=at)


@pytest.fixture
def realtime(make_connection):
    def make(n=1, at=NOW):
        conns = [make_connection(sync_frequency=SyncFrequency.REALTIME, now=at) for _ in range(n)]
        return conns

    return make


@pytest.mark.django_db
@pytest.mark.embedded
def test_claim_takes_only_due_rows(realtime, make_connection):
    due, later = realtime(2)
    schedule(later, NOW + timedelta(seconds=1))
    manual = make_connection()

    claims = connections_claim_due(now=NOW, limit=100)

    assert [claim.connection_id for claim in claims] == [due.pk]
    statuses = dict(Connection.objects.values_list("pk", "sync_status"))
    assert statuses == {due.pk: "queued", later.pk: "idle", manual.pk: "idle"}
    due.refresh_from_db()
    assert (due.job_id, due.queued_trigger, due.queued_at) == (claims[0].job_id, SyncTrigger.SCHEDULED, NOW)


@pytest.mark.django_db
@pytest.mark.embedded
def test_claim_gives_each_row_its_own_job(realtime):
    realtime(5)

    claims = connections_claim_due(now=NOW, limit=100)

    assert len({claim.job_id for claim in claims}) == 5
    assert {claim.previous_status for claim in claims} == {"idle"}


@pytest.mark.django_db
@pytest.mark.embedded
def test_claim_skips_busy_rows_and_takes_error_rows(realtime):
    busy, failed = realtime(2)
    job = connection_enqueue_sync(connection=busy, now=NOW, send=False)
    Connection.objects.filter(pk=failed.pk).update(sync_status=SyncStatus.ERROR, last_sync_error="x")

    claims = connections_claim_due(now=NOW, limit=100)

    assert [(c.connection_id, c.previous_status) for c in claims] == [(failed.pk, "error")]
    busy.refresh_from_db()
    assert busy.job_id == job.job_id


@pytest.mark.django_db
@pytest.mark.embedded
def test_claim_oldest_first_up_to_the_limit(realtime):
    conns = realtime(3)
    for offset, conn in zip([3, 1, 2], conns, strict=True):
        schedule(conn, NOW - timedelta(seconds=offset))

    claims = connections_claim_due(now=NOW, limit=2)

    assert [c.connection_id for c in claims] == [conns[0].pk, conns[2].pk]


@pytest.mark.django_db(transaction=True)
def test_dispatch_sends_every_claim_to_sync_jobs(realtime, broker, sync_worker_beats):
    realtime(3)
    sync_worker_beats(NOW)

    result = syncs_dispatch_due(now=NOW, limit=2)  # two batches

    assert (result.claimed, result.sent) == (3, 3)
    assert broker.llen("sync_jobs") == 3


@pytest.mark.django_db(transaction=True)
def test_dispatch_with_broker_down_reverts_the_claims(realtime, broker_down, sync_worker_beats):
    first, second = realtime(2)
    Connection.objects.filter(pk=second.pk).update(sync_status=SyncStatus.ERROR, last_sync_error="before")
    sync_worker_beats(NOW)

    result = syncs_dispatch_due(now=NOW)

    assert (result.claimed, result.sent) == (2, 0)
    statuses = dict(Connection.objects.values_list("pk", "sync_status"))
    assert statuses == {first.pk: "idle", second.pk: "error"}
    assert Connection.objects.get(pk=second.pk).last_sync_error == "before"


@pytest.mark.django_db
@pytest.mark.embedded
def test_dispatch_recovers_stuck_rows_first(realtime, settings):
    (conn,) = realtime(1, at=NOW)
    connection_enqueue_sync(connection=conn, trigger=SyncTrigger.SCHEDULED, now=NOW, send=False)
    later = NOW + timedelta(seconds=settings.SYNC_QUEUED_TIMEOUT + 1)

    claims_before = connections_claim_due(now=later, limit=10)
    assert claims_before == []  # still queued: not claimable
    from syncing.services import syncs_recover_stuck

    assert syncs_recover_stuck(now=later) == 1
    # Its slot is still due, so the very next claim picks it up again.
    assert [c.connection_id for c in connections_claim_due(now=later, limit=10)] == [conn.pk]


@pytest.mark.django_db(transaction=True)
def test_two_dispatchers_at_once_never_claim_a_row_twice(realtime, broker, sync_worker_beats):
    conns = realtime(200)
    sync_worker_beats(NOW)

    results = run_concurrently(lambda: syncs_dispatch_due(now=NOW, limit=20), times=2)

    assert sum(r.claimed for r in results) == 200
    assert broker.llen("sync_jobs") == 200
    assert Connection.objects.filter(sync_status=SyncStatus.QUEUED).count() == len(conns)


@pytest.mark.django_db
def test_claim_uses_the_due_index():
    with db.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        cursor.execute(
            "EXPLAIN SELECT id FROM connections WHERE sync_status IN ('idle', 'error') "
            "AND next_sync_at <= now() ORDER BY next_sync_at LIMIT 1000 FOR UPDATE SKIP LOCKED"
        )
        plan = "\n".join(line for (line,) in cursor.fetchall())
        cursor.execute("RESET enable_seqscan")
    assert "connections_due_idx" in plan


@pytest.mark.django_db
@pytest.mark.embedded
def test_claim_query_count_does_not_grow_with_rows(realtime, django_assert_num_queries):
    realtime(50)
    # The ranking SELECT, SELECT ... FOR UPDATE by id and UPDATE ... RETURNING (SQLite: UPDATE,
    # then SELECT the job ids), plus SAVEPOINT/RELEASE because the test itself runs in a
    # transaction; 50 rows or 1,000.
    with django_assert_num_queries(5 if db.vendor == "postgresql" else 6):
        connections_claim_due(now=NOW, limit=1000)


@pytest.mark.django_db
@pytest.mark.embedded
def test_frequency_change_takes_effect_at_once(make_connection):
    conn = make_connection(sync_frequency=SyncFrequency.DAILY, now=NOW)
    Connection.objects.filter(pk=conn.pk).update(
        last_sync_attempted_at=NOW - timedelta(minutes=5), next_sync_at=NOW + timedelta(hours=23)
    )
    conn.refresh_from_db()

    connection_set_frequency(connection=conn, frequency=SyncFrequency.REALTIME, now=NOW)

    assert connections_claim_due(now=NOW, limit=10)[0].connection_id == conn.pk


@pytest.mark.django_db
@pytest.mark.embedded
def test_frequency_change_to_manual_stops_dispatching(realtime):
    (conn,) = realtime(1)

    connection_set_frequency(connection=conn, frequency=SyncFrequency.MANUAL, now=NOW)

    assert connections_claim_due(now=NOW + timedelta(days=1), limit=10) == []
    assert Connection.objects.get(pk=conn.pk).next_sync_at is None


@pytest.mark.django_db
@pytest.mark.embedded
def test_frequency_change_while_syncing_lets_the_job_finish(realtime):
    from syncing.services import sync_finish, sync_start

    (conn,) = realtime(1)
    (claim,) = connections_claim_due(now=NOW, limit=10)
    started = sync_start(connection_id=conn.pk, job_id=claim.job_id, now=NOW)

    connection_set_frequency(connection=conn, frequency=SyncFrequency.HOURLY, now=NOW + timedelta(seconds=1))

    assert sync_finish(started=started, rows=[], api_calls=1, now=NOW + timedelta(seconds=2)) == 0
    conn.refresh_from_db()
    assert (conn.sync_status, conn.sync_frequency) == ("idle", "hourly")
    assert conn.next_sync_at == NOW + timedelta(hours=1) + jitter(public_id=conn.public_id, interval=timedelta(hours=1))


# --- backpressure, order and fairness -----------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_dispatch_queues_nothing_without_a_live_sync_worker(realtime, sync_worker_beats):
    realtime(3)
    sync_worker_beats(NOW - timedelta(minutes=5))  # gone

    result = syncs_dispatch_due(now=NOW)

    # Left due: "Delayed" on the page, and the banner says no sync worker is running.
    assert (result.claimed, result.sent) == (0, 0)
    assert list(Connection.objects.values_list("sync_status", flat=True)) == ["idle"] * 3


@pytest.mark.django_db
@pytest.mark.embedded
def test_dispatch_queues_no_more_than_the_workers_can_start(realtime, sync_worker_beats, settings):
    realtime(10)
    busy = Connection.objects.order_by("pk").first()
    connection_enqueue_sync(connection=busy, now=NOW, send=False)
    # Two workers of 2 slots, two jobs ahead per slot: room for 8, one taken.
    sync_worker_beats(NOW, concurrency=2, name="sync@a")
    sync_worker_beats(NOW, concurrency=2, name="sync@b")
    settings.SYNC_QUEUE_AHEAD = 2

    result = syncs_dispatch_due(now=NOW)

    assert result.claimed == 7
    assert Connection.objects.filter(sync_status=SyncStatus.QUEUED).count() == 8
    assert syncs_dispatch_due(now=NOW).claimed == 0


@pytest.mark.django_db
@pytest.mark.embedded
def test_a_backlog_longer_than_the_queued_timeout_is_not_lost(realtime, sync_worker_beats, settings):
    from syncing.services import sync_finish, sync_start

    conns = realtime(10)
    settings.SYNC_QUEUE_AHEAD = 1
    sync_worker_beats(NOW, concurrency=2)
    first = syncs_dispatch_due(now=NOW)
    # The worker runs what it was given; the rest of the backlog waits, due, in the database.
    for connection in Connection.objects.filter(sync_status=SyncStatus.QUEUED):
        started = sync_start(connection_id=connection.pk, job_id=connection.job_id, now=NOW + timedelta(seconds=1))
        sync_finish(started=started, rows=[], api_calls=1, now=NOW + timedelta(seconds=2))

    later = NOW + timedelta(seconds=settings.SYNC_QUEUED_TIMEOUT + 60)
    sync_worker_beats(later, concurrency=2)
    second = syncs_dispatch_due(now=later)

    assert (first.claimed, second.recovered, second.claimed) == (2, 0, 2)
    assert not Connection.objects.filter(last_sync_error_kind="interrupted").exists()
    assert Connection.objects.filter(sync_status=SyncStatus.IDLE).count() == len(conns) - 2


@pytest.mark.django_db
@pytest.mark.embedded
def test_claim_order_shorter_intervals_first_then_round_robin_across_workspaces(
    make_connection, outsider, sync_worker_beats
):
    from connections.services import workspace_create

    shop = workspace_create(name="Shop", owner=outsider)
    # The agency's daily syncs are the most overdue, then its realtime ones; the shop's one
    # realtime connection is the least overdue of all.
    agency_daily = [make_connection(sync_frequency=SyncFrequency.DAILY, now=NOW) for _ in range(4)]
    for index, connection in enumerate(agency_daily):
        schedule(connection, NOW - timedelta(hours=1, seconds=index))
    agency_realtime = [make_connection(sync_frequency=SyncFrequency.REALTIME, now=NOW) for _ in range(3)]
    for index, connection in enumerate(agency_realtime):
        schedule(connection, NOW - timedelta(seconds=10 + index))
    shop_realtime = make_connection(workspace=shop, sync_frequency=SyncFrequency.REALTIME, now=NOW)
    schedule(shop_realtime, NOW)

    claimed = {claim.connection_id for claim in connections_claim_due(now=NOW, limit=2)}

    # Realtime before daily; and the shop's turn comes with the agency's first, not after all of
    # the agency's (by overdue time alone the agency would take both).
    assert claimed == {agency_realtime[2].pk, shop_realtime.pk}


@pytest.mark.django_db
@pytest.mark.embedded
def test_realtime_jobs_go_to_sync_jobs_and_the_rest_to_sync_bulk(make_connection, sync_worker_beats):
    from syncing.metrics import queue_lengths

    daily = [make_connection(sync_frequency=SyncFrequency.DAILY, now=NOW) for _ in range(5)]
    for connection in daily:
        schedule(connection, NOW - timedelta(hours=1))
    realtime = [make_connection(sync_frequency=SyncFrequency.REALTIME, now=NOW) for _ in range(3)]
    sync_worker_beats(NOW)
    before = queue_lengths()

    result = syncs_dispatch_due(now=NOW, limit=2)  # batches of 2: each class in its own batches

    after = queue_lengths()
    assert (result.claimed, result.sent) == (8, 8)
    assert after["sync_jobs"] - before["sync_jobs"] == len(realtime)
    assert after["sync_bulk"] - before["sync_bulk"] == len(daily)
