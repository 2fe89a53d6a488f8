"""manage.py sync_now, sync_status and set_sync_frequency, run through call_command."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError

from connections.models import Connection, SyncFrequency, SyncStatus
from syncing.models import DailyMetric, SyncOutcome, SyncRun
from syncing.services import connection_enqueue_sync

NOW = datetime(2025, 11, 14, 13, 0, 0, tzinfo=UTC)
LIST_HINT = 'Run "manage.py sync_status" to list connections and their ids.'
# The demo provider's first sync is a restatement: 7 days back plus today, 4 campaigns a day.
DEMO_FIRST_SYNC_ROWS = 8 * 4


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def label(connection: Connection) -> str:
    return f"{connection.name} ({connection.public_id})"


# --- sync_now: queueing for the workers -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_sync_now_enqueues_one_job(connection, broker):
    out = run("sync_now", str(connection.public_id))

    connection.refresh_from_db()
    assert connection.sync_status == SyncStatus.QUEUED
    assert out == f"{label(connection)}: job {connection.job_id} queued\n"
    assert broker.llen("sync_jobs") == 1


@pytest.mark.django_db(transaction=True)
def test_sync_now_twice_returns_the_queued_job(connection, broker):
    first = run("sync_now", str(connection.public_id))
    second = run("sync_now", str(connection.public_id))

    connection.refresh_from_db()
    assert first == f"{label(connection)}: job {connection.job_id} queued\n"
    assert second == f"{label(connection)}: job {connection.job_id} already queued\n"
    assert broker.llen("sync_jobs") == 1


@pytest.mark.django_db(transaction=True)
def test_sync_now_all_enqueues_every_connection(make_connection, broker):
    connections = [make_connection() for _ in range(3)]

    out = run("sync_now", "--all")

    for connection in connections:
        connection.refresh_from_db()
    assert [c.sync_status for c in connections] == [SyncStatus.QUEUED] * 3
    assert out == "".join(f"{label(c)}: job {c.job_id} queued\n" for c in connections)
    assert broker.llen("sync_jobs") == 3


def test_sync_now_wait_with_worker_prints_each_status(make_connection, start_worker):
    # Two seconds of simulated API latency, so the poll sees "syncing" for certain.
    connection = make_connection(provider_options={"latency_ms": 2000})
    start_worker()

    out = run("sync_now", str(connection.public_id), "--wait", "--timeout", "60")

    connection.refresh_from_db()
    assert out == (
        f"{label(connection)}: job {connection.job_id} queued\n"
        f"{label(connection)}: syncing\n"
        f"{label(connection)}: idle — {DEMO_FIRST_SYNC_ROWS} rows written\n"
    )
    assert connection.sync_status == SyncStatus.IDLE
    assert connection.total_syncs_attempted == 1


@pytest.mark.django_db(transaction=True)
def test_sync_now_wait_without_worker_times_out(connection, broker):
    out = StringIO()

    with pytest.raises(CommandError) as excinfo:
        call_command("sync_now", str(connection.public_id), "--wait", "--timeout", "0.3", stdout=out)

    connection.refresh_from_db()
    assert excinfo.value.args[0] == (
        "Timed out after 0.3 s waiting for 1 job(s): Demo account 1. They go on in the background; "
        '"manage.py sync_status" shows how they end.'
    )
    assert out.getvalue() == (
        f"{label(connection)}: job {connection.job_id} queued\n{label(connection)}: still queued\n"
    )
    assert connection.sync_status == SyncStatus.QUEUED


# --- sync_now --inline: no worker, no broker -----------------------------------------------


@pytest.mark.embedded
@pytest.mark.django_db
def test_sync_now_inline_runs_demo_sync_to_idle(connection):
    out = run("sync_now", str(connection.public_id), "--inline")

    connection.refresh_from_db()
    assert out == (
        f"{label(connection)}: job {connection.job_id} queued\n"
        f"{label(connection)}: syncing (inline)\n"
        f"{label(connection)}: idle — {DEMO_FIRST_SYNC_ROWS} rows written\n"
    )
    assert connection.sync_status == SyncStatus.IDLE
    assert connection.total_syncs_attempted == 1
    assert connection.total_syncs_with_changes == 1
    assert connection.last_sync_error is None
    sync_run = SyncRun.objects.get(job_id=connection.job_id)
    assert sync_run.outcome == SyncOutcome.SUCCESS
    assert sync_run.rows_written == DEMO_FIRST_SYNC_ROWS
    assert DailyMetric.objects.filter(connection=connection).count() == DEMO_FIRST_SYNC_ROWS


@pytest.mark.embedded
@pytest.mark.django_db
def test_sync_now_inline_again_writes_no_unchanged_rows(connection):
    with time_machine.travel(NOW, tick=False):
        run("sync_now", str(connection.public_id), "--inline")
        out = run("sync_now", str(connection.public_id), "--inline")

    connection.refresh_from_db()
    assert out.splitlines()[-1] == f"{label(connection)}: idle — no changes"
    assert connection.total_syncs_attempted == 2
    assert connection.total_syncs_with_changes == 1


@pytest.mark.embedded
@pytest.mark.django_db
def test_sync_now_inline_permanent_error_exits_nonzero(make_connection):
    connection = make_connection(provider_options={"simulate_error": "permanent"})
    out = StringIO()

    with pytest.raises(CommandError) as excinfo:
        call_command("sync_now", str(connection.public_id), "--inline", stdout=out)

    connection.refresh_from_db()
    assert excinfo.value.args[0] == "Sync failed for 1 of 1 connection(s): Demo account 1."
    assert out.getvalue() == (
        f"{label(connection)}: job {connection.job_id} queued\n"
        f"{label(connection)}: syncing (inline)\n"
        f"{label(connection)}: error — Demo platform rejected the request (simulated)\n"
    )
    assert connection.sync_status == SyncStatus.ERROR
    assert connection.last_sync_error == "Demo platform rejected the request (simulated)"
    assert connection.total_syncs_attempted == 1


@pytest.mark.embedded
@pytest.mark.django_db
def test_sync_now_inline_all_runs_each_and_reports_the_failure(make_connection):
    good = make_connection()
    bad = make_connection(provider_options={"simulate_error": "auth"})

    with pytest.raises(CommandError) as excinfo:
        run("sync_now", "--all", "--inline")

    good.refresh_from_db()
    bad.refresh_from_db()
    assert excinfo.value.args[0] == "Sync failed for 1 of 2 connection(s): Demo account 2."
    assert (good.sync_status, bad.sync_status) == (SyncStatus.IDLE, SyncStatus.ERROR)
    assert bad.last_sync_error == "Demo access expired — reconnect the account (simulated)"


@pytest.mark.embedded
@pytest.mark.django_db
def test_sync_now_inline_cannot_run_a_job_a_worker_holds(connection):
    queued = connection_enqueue_sync(connection=connection, send=False)
    out = StringIO()

    with pytest.raises(CommandError) as excinfo:
        call_command("sync_now", str(connection.public_id), "--inline", stdout=out)

    connection.refresh_from_db()
    assert excinfo.value.args[0] == (
        "Not run inline, a worker holds the job of 1 connection(s): Demo account 1. Add --wait to wait for it."
    )
    assert out.getvalue() == (
        f"{label(connection)}: job {queued.job_id} already queued; a worker holds it, so it cannot run inline "
        "(add --wait to wait for it)\n"
    )
    assert (connection.sync_status, connection.job_id, connection.total_syncs_attempted) == (
        SyncStatus.QUEUED,
        queued.job_id,
        0,
    )


@pytest.mark.embedded
@pytest.mark.django_db
def test_sync_now_inline_retries_a_transient_error_then_fails(make_connection, settings):
    # One retry, so the test sleeps through a single 5 s backoff, as a worker would.
    settings.SYNC_TRANSIENT_RETRIES = 1
    connection = make_connection(provider_options={"simulate_error": "transient"})
    out = StringIO()

    with pytest.raises(CommandError) as excinfo:
        call_command("sync_now", str(connection.public_id), "--inline", stdout=out)

    connection.refresh_from_db()
    assert excinfo.value.args[0] == "Sync failed for 1 of 1 connection(s): Demo account 1."
    assert out.getvalue() == (
        f"{label(connection)}: job {connection.job_id} queued\n"
        f"{label(connection)}: syncing (inline)\n"
        f"{label(connection)}: queued — Demo platform is temporarily unavailable (simulated); retrying in 5 s\n"
        f"{label(connection)}: syncing (inline)\n"
        f"{label(connection)}: error — Demo platform is temporarily unavailable (simulated)\n"
    )
    assert connection.total_syncs_attempted == 2
    assert list(SyncRun.objects.filter(job_id=connection.job_id).values_list("outcome", flat=True)) == [
        SyncOutcome.ERROR,
        SyncOutcome.RETRYING,
    ]


@pytest.mark.embedded
@pytest.mark.django_db
def test_sync_now_inline_wait_follows_a_job_a_worker_holds(connection):
    queued = connection_enqueue_sync(connection=connection, send=False)
    out = StringIO()

    with pytest.raises(CommandError) as excinfo:
        call_command("sync_now", str(connection.public_id), "--inline", "--wait", "--timeout", "0.3", stdout=out)

    assert excinfo.value.args[0] == (
        "Timed out after 0.3 s waiting for 1 job(s): Demo account 1. They go on in the background; "
        '"manage.py sync_status" shows how they end.'
    )
    assert out.getvalue() == (
        f"{label(connection)}: job {queued.job_id} already queued; a worker holds it, so it cannot run inline, "
        f"waiting for it\n{label(connection)}: still queued\n"
    )


# --- sync_now: bad arguments change nothing --------------------------------------------------


@pytest.mark.embedded
@pytest.mark.django_db
def test_sync_now_unknown_id_changes_nothing(connection):
    unknown = uuid.UUID("00000000-0000-4000-8000-000000000000")

    with pytest.raises(CommandError) as excinfo:
        run("sync_now", str(connection.public_id), str(unknown), "--inline")

    connection.refresh_from_db()
    assert excinfo.value.args[0] == f"No connection with id '{unknown}'. {LIST_HINT}"
    assert connection.sync_status == SyncStatus.IDLE
    assert connection.total_syncs_attempted == 0


@pytest.mark.embedded
@pytest.mark.django_db
def test_sync_now_malformed_ids_are_named(connection):
    with pytest.raises(CommandError) as excinfo:
        run("sync_now", "acme", str(connection.public_id), "42", "--inline")

    connection.refresh_from_db()
    assert excinfo.value.args[0] == f"No connection with ids 'acme' (not a UUID), '42' (not a UUID). {LIST_HINT}"
    assert connection.sync_status == SyncStatus.IDLE


@pytest.mark.embedded
@pytest.mark.django_db
def test_sync_now_without_ids_or_all_fails():
    with pytest.raises(CommandError) as excinfo:
        run("sync_now")

    assert excinfo.value.args[0] == f"Give one or more connection ids, or --all. {LIST_HINT}"


@pytest.mark.embedded
@pytest.mark.django_db
def test_sync_now_ids_and_all_together_fail(connection):
    with pytest.raises(CommandError) as excinfo:
        run("sync_now", str(connection.public_id), "--all")

    assert excinfo.value.args[0] == "Give connection ids or --all, not both."


# --- set_sync_frequency ---------------------------------------------------------------------


@pytest.mark.embedded
@pytest.mark.django_db
def test_set_sync_frequency_realtime_is_due_at_once(connection):
    with time_machine.travel(NOW, tick=False):
        out = run("set_sync_frequency", str(connection.public_id), "realtime")

    connection.refresh_from_db()
    assert connection.sync_frequency == SyncFrequency.REALTIME
    assert connection.next_sync_at == NOW
    assert out == (
        f"{label(connection)}: Manual → Realtime (every 30s); next sync due now (2025-11-14 13:00:00 UTC)\n"
        "Changed 1 of 1 connection(s) to Realtime (every 30s).\n"
    )


@pytest.mark.embedded
@pytest.mark.django_db
def test_set_sync_frequency_counts_the_interval_from_the_last_attempt(make_connection):
    connection = make_connection(sync_frequency=SyncFrequency.REALTIME)
    # A fixed public id, because the schedule's jitter is derived from it: 33 s for this one.
    public_id = uuid.UUID("7a3f0c2e-5b1d-4e8a-9c6f-2d4b8e1a0f35")
    Connection.objects.filter(pk=connection.pk).update(
        public_id=public_id, last_sync_attempted_at=NOW - timedelta(minutes=10)
    )
    connection.refresh_from_db()

    with time_machine.travel(NOW, tick=False):
        out = run("set_sync_frequency", str(public_id), "30min")

    connection.refresh_from_db()
    assert connection.next_sync_at == NOW + timedelta(minutes=20, seconds=33)
    assert out == (
        f"Demo account 1 ({public_id}): Realtime (every 30s) → Every 30 min; "
        "next sync in 20 min (2025-11-14 13:20:33 UTC)\n"
        "Changed 1 of 1 connection(s) to Every 30 min.\n"
    )


@pytest.mark.embedded
@pytest.mark.django_db
def test_set_sync_frequency_invalid_value_lists_the_valid_ones(connection):
    with pytest.raises(CommandError) as excinfo:
        run("set_sync_frequency", str(connection.public_id), "weekly")

    connection.refresh_from_db()
    assert excinfo.value.args[0] == (
        "'weekly' is not a valid sync frequency; valid choices: manual, realtime, 30min, hourly, daily"
    )
    assert connection.sync_frequency == SyncFrequency.MANUAL


@pytest.mark.embedded
@pytest.mark.django_db
def test_set_sync_frequency_one_bad_id_changes_nothing(make_connection):
    first = make_connection()
    second = make_connection()

    with pytest.raises(CommandError) as excinfo:
        run("set_sync_frequency", str(first.public_id), "nope", str(second.public_id), "hourly")

    assert excinfo.value.args[0] == f"No connection with id 'nope' (not a UUID). {LIST_HINT}"
    assert list(Connection.objects.values_list("sync_frequency", "next_sync_at")) == [
        (SyncFrequency.MANUAL, None),
        (SyncFrequency.MANUAL, None),
    ]


@pytest.mark.embedded
@pytest.mark.django_db
def test_set_sync_frequency_all_manual_pauses_every_automated_sync(make_connection):
    realtime = make_connection(sync_frequency=SyncFrequency.REALTIME)
    hourly = make_connection(sync_frequency=SyncFrequency.HOURLY)
    manual = make_connection(sync_frequency=SyncFrequency.MANUAL)

    with time_machine.travel(NOW, tick=False):
        out = run("set_sync_frequency", "--all", "manual")

    assert list(Connection.objects.values_list("sync_frequency", "next_sync_at")) == [
        (SyncFrequency.MANUAL, None),
        (SyncFrequency.MANUAL, None),
        (SyncFrequency.MANUAL, None),
    ]
    assert out == (
        f"{label(realtime)}: Realtime (every 30s) → Manual; no automated sync (Sync Now only)\n"
        f"{label(hourly)}: Hourly → Manual; no automated sync (Sync Now only)\n"
        f"{label(manual)}: already Manual; no automated sync (Sync Now only)\n"
        "Changed 2 of 3 connection(s) to Manual.\n"
        "Automated syncs are paused for every connection; a job already queued or running completes first. "
        '"manage.py sync_now" still syncs on demand.\n'
    )


@pytest.mark.embedded
@pytest.mark.django_db
def test_set_sync_frequency_without_ids_or_all_fails(connection):
    with pytest.raises(CommandError) as excinfo:
        run("set_sync_frequency", "hourly")

    assert excinfo.value.args[0] == f"Give one or more connection ids, or --all. {LIST_HINT}"


# --- sync_status ----------------------------------------------------------------------------


@pytest.fixture
def busy_and_fresh(make_connection) -> tuple[Connection, Connection]:
    """A realtime connection with the spec's 45 attempts and 12 changes, and a fresh manual one."""
    with time_machine.travel(NOW, tick=False):
        busy = make_connection(name="Acme Shoes", sync_frequency=SyncFrequency.REALTIME)
        fresh = make_connection(name="Bluebird Coffee")
    Connection.objects.filter(pk=busy.pk).update(
        total_syncs_attempted=45,
        total_syncs_with_changes=12,
        last_sync_attempted_at=NOW - timedelta(seconds=25),
        last_sync_completed_at=NOW - timedelta(seconds=22),
        last_metrics_changed_at=NOW - timedelta(minutes=15),
        next_sync_at=NOW + timedelta(seconds=5),
    )
    busy.refresh_from_db()
    return busy, fresh


@pytest.mark.embedded
@pytest.mark.django_db
def test_sync_status_table_reads_like_the_settings_page(busy_and_fresh):
    busy, fresh = busy_and_fresh

    with time_machine.travel(NOW, tick=False):
        out = run("sync_status")

    assert out == (
        "Acme Shoes\n"
        f"  Id:              {busy.public_id}\n"
        "  Workspace:       Alice's Agency\n"
        "  Provider:        Demo\n"
        "  Frequency:       Realtime (every 30s)\n"
        "  Sync status:     Idle\n"
        "  Last attempted:  25 s ago\n"
        "  Last completed:  22 s ago\n"
        "  Last change:     15 min ago\n"
        "  Next sync:       in 5 s\n"
        "  Freshness:       On time\n"
        "  Stats:           45 attempts | 12 changes (26.7%)\n"
        "\n"
        "Bluebird Coffee\n"
        f"  Id:              {fresh.public_id}\n"
        "  Workspace:       Alice's Agency\n"
        "  Provider:        Demo\n"
        "  Frequency:       Manual\n"
        "  Sync status:     Idle\n"
        "  Last attempted:  never\n"
        "  Last completed:  never\n"
        "  Last change:     never\n"
        "  Next sync:       manual\n"
        "  Freshness:       Never synced\n"
        "  Stats:           0 attempts\n"
    )


@pytest.mark.embedded
@pytest.mark.django_db
def test_sync_status_shows_the_last_error(connection):
    Connection.objects.filter(pk=connection.pk).update(
        sync_status=SyncStatus.ERROR,
        total_syncs_attempted=1,
        last_sync_attempted_at=NOW - timedelta(hours=3),
        last_sync_error="Demo access expired — reconnect the account (simulated)",
    )

    with time_machine.travel(NOW, tick=False):
        out = run("sync_status", str(connection.public_id))

    assert out.splitlines()[5:] == [
        "  Sync status:     Error",
        "  Last attempted:  3 h ago",
        "  Last completed:  never",
        "  Last change:     never",
        "  Next sync:       manual",
        "  Freshness:       Never synced",
        "  Stats:           1 attempt | 0 changes (0.0%)",
        "  Last error:      Demo access expired — reconnect the account (simulated)",
    ]


@pytest.mark.embedded
@pytest.mark.django_db
def test_sync_status_rate_limited_says_when_it_resumes(connection):
    Connection.objects.filter(pk=connection.pk).update(rate_limited_until=NOW + timedelta(minutes=4, seconds=30))

    with time_machine.travel(NOW, tick=False):
        out = run("sync_status", str(connection.public_id))

    assert out.splitlines()[5] == "  Sync status:     Rate limited — resumes 13:04 UTC"


@pytest.mark.embedded
@pytest.mark.django_db
def test_sync_status_json_has_the_api_fields(busy_and_fresh):
    busy, fresh = busy_and_fresh

    out = run("sync_status", "--json", str(busy.public_id), str(fresh.public_id))

    assert json.loads(out) == [
        {
            "id": str(busy.public_id),
            "name": "Acme Shoes",
            "sync_frequency": "realtime",
            "sync_status": "idle",
            "last_sync_attempted_at": "2025-11-14T12:59:35+00:00",
            "last_sync_completed_at": "2025-11-14T12:59:38+00:00",
            "last_metrics_changed_at": "2025-11-14T12:45:00+00:00",
            "total_syncs_attempted": 45,
            "total_syncs_with_changes": 12,
            "last_sync_error": None,
        },
        {
            "id": str(fresh.public_id),
            "name": "Bluebird Coffee",
            "sync_frequency": "manual",
            "sync_status": "idle",
            "last_sync_attempted_at": None,
            "last_sync_completed_at": None,
            "last_metrics_changed_at": None,
            "total_syncs_attempted": 0,
            "total_syncs_with_changes": 0,
            "last_sync_error": None,
        },
    ]


@pytest.mark.embedded
@pytest.mark.django_db
def test_sync_status_without_connections():
    assert run("sync_status") == "No connections yet.\n"


@pytest.mark.embedded
@pytest.mark.django_db
def test_sync_status_unknown_id_fails(connection):
    with pytest.raises(CommandError) as excinfo:
        run("sync_status", "acme")

    assert excinfo.value.args[0] == f"No connection with id 'acme' (not a UUID). {LIST_HINT}"


@pytest.mark.embedded
@pytest.mark.django_db
@pytest.mark.parametrize("count", [1, 3])
def test_sync_status_reads_all_connections_in_one_query(make_connection, django_assert_num_queries, count):
    for _ in range(count):
        make_connection()

    with django_assert_num_queries(1):
        run("sync_status")
