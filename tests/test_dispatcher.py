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
def test_dispatch_sends_every_claim_to_sync_jobs(realtime, broker):
    realtime(3)

    result = syncs_dispatch_due(now=NOW, limit=2)  # two batches

    assert (result.claimed, result.sent) == (3, 3)
    assert broker.llen("sync_jobs") == 3


@pytest.mark.django_db(transaction=True)
def test_dispatch_with_broker_down_reverts_the_claims(realtime, broker_down):
    first, second = realtime(2)
    Connection.objects.filter(pk=second.pk).update(sync_status=SyncStatus.ERROR, last_sync_error="before")

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
def test_two_dispatchers_at_once_never_claim_a_row_twice(realtime, broker):
    conns = realtime(200)

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
    # SELECT ... FOR UPDATE and UPDATE ... RETURNING (SQLite: UPDATE, then SELECT the job ids),
    # plus SAVEPOINT/RELEASE because the test itself runs in a transaction; 50 rows or 1,000.
    with django_assert_num_queries(4 if db.vendor == "postgresql" else 5):
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
