"""Pause and resume that remember the frequency (issue 13, point 3), and "Stop all automated
syncs" for a workspace: the state machine, the dispatcher, the command and the API's status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.db import IntegrityError, transaction

from connections.models import Connection, PauseReason, SyncFrequency, SyncStatus
from connections.services import (
    connection_credentials_replace,
    connection_pause,
    connection_resume,
    connection_set_frequency,
    workspace_syncs_resume,
    workspace_syncs_stop,
)
from connections.status import connection_status_view
from connections.sync_status import connection_sync_status_data
from syncing.dispatcher import connections_claim_due
from syncing.providers.base import AuthError, ThrottledError, TransientProviderError
from syncing.services import (
    connection_enqueue_sync,
    sync_defer,
    sync_fail,
    sync_finish,
    sync_requeue_for_retry,
    sync_start,
)

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def reload(connection: Connection) -> Connection:
    connection.refresh_from_db()
    return connection


def started(connection: Connection, now: datetime = NOW):
    job = connection_enqueue_sync(connection=connection, now=now, send=False)
    return sync_start(connection_id=connection.pk, job_id=job.job_id, now=now)


@pytest.fixture
def hourly(make_connection) -> Connection:
    """An hourly connection whose last sync started at NOW and succeeded."""
    connection = make_connection(sync_frequency=SyncFrequency.HOURLY, now=NOW)
    sync_finish(started=started(connection), rows=[], api_calls=1, now=NOW)
    return reload(connection)


def test_pause_keeps_the_frequency_and_the_dispatcher_never_claims_it(hourly):
    slot = hourly.next_sync_at

    assert connection_pause(connection=hourly, now=NOW) is True

    assert (hourly.sync_frequency, hourly.next_sync_at, hourly.pause_reason) == ("hourly", None, PauseReason.USER)
    assert hourly.paused_at == NOW
    assert connections_claim_due(now=slot + timedelta(days=3), limit=10) == []
    assert connection_pause(connection=hourly, now=NOW) is False  # already paused: unchanged
    assert reload(hourly).paused_at == NOW


def test_resume_brings_the_schedule_back_as_it_was(hourly):
    slot = hourly.next_sync_at
    connection_pause(connection=hourly, now=NOW)

    assert connection_resume(connection=hourly, now=NOW + timedelta(minutes=10)) is True

    assert (hourly.next_sync_at, hourly.paused_at, hourly.pause_reason) == (slot, None, "")
    assert connection_resume(connection=hourly, now=NOW) is False  # not paused


def test_resume_after_the_interval_is_due_now(hourly):
    connection_pause(connection=hourly, now=NOW)

    connection_resume(connection=hourly, now=NOW + timedelta(hours=5))

    assert hourly.next_sync_at == NOW + timedelta(hours=5)
    assert [c.connection_id for c in connections_claim_due(now=NOW + timedelta(hours=5), limit=10)] == [hourly.pk]


def test_sync_now_while_paused_syncs_and_stays_paused(hourly):
    connection_pause(connection=hourly, now=NOW)

    run = started(hourly, NOW + timedelta(minutes=5))
    sync_finish(started=run, rows=[], api_calls=1, now=NOW + timedelta(minutes=5))

    hourly = reload(hourly)
    assert (hourly.sync_status, hourly.next_sync_at, hourly.last_sync_completed_at) == (
        SyncStatus.IDLE,
        None,
        NOW + timedelta(minutes=5),
    )
    assert hourly.paused_at == NOW


def test_retry_throttle_and_failure_while_paused_stay_unscheduled(hourly):
    connection_pause(connection=hourly, now=NOW)
    later = NOW + timedelta(minutes=5)

    sync_requeue_for_retry(started=started(hourly, later), error=TransientProviderError("5xx"), now=later)
    assert reload(hourly).next_sync_at is None
    run = sync_start(connection_id=hourly.pk, job_id=reload(hourly).job_id, now=later)
    sync_defer(started=run, until=later + timedelta(minutes=5), error=ThrottledError("slow down"), now=later)
    hourly = reload(hourly)
    assert (hourly.next_sync_at, hourly.rate_limited_until) == (None, later + timedelta(minutes=5))
    sync_fail(
        started=started(hourly, later + timedelta(minutes=6)),
        error=AuthError("expired"),
        now=later + timedelta(minutes=6),
    )
    assert reload(hourly).next_sync_at is None


def test_a_pause_during_a_running_sync_is_kept(hourly):
    run = started(hourly, NOW + timedelta(hours=1))
    connection_pause(connection=hourly, now=NOW + timedelta(hours=1, seconds=1))

    sync_finish(started=run, rows=[], api_calls=1, now=NOW + timedelta(hours=1, seconds=2))

    hourly = reload(hourly)
    assert (hourly.sync_status, hourly.next_sync_at) == (SyncStatus.IDLE, None)
    assert hourly.paused_at is not None


def test_a_frequency_change_while_paused_is_kept_for_the_resume(hourly):
    connection_pause(connection=hourly, now=NOW)

    connection_set_frequency(connection=hourly, frequency=SyncFrequency.REALTIME, now=NOW + timedelta(minutes=1))
    assert (reload(hourly).sync_frequency, reload(hourly).next_sync_at) == ("realtime", None)

    connection_resume(connection=hourly, now=NOW + timedelta(minutes=1))
    # Realtime from the last attempt at NOW: its 30 s have passed, so due at once.
    assert reload(hourly).next_sync_at == NOW + timedelta(minutes=1)


def test_a_reconnect_while_paused_clears_the_error_and_stays_paused(hourly):
    sync_fail(
        started=started(hourly, NOW + timedelta(hours=1)), error=AuthError("expired"), now=NOW + timedelta(hours=1)
    )
    connection_pause(connection=hourly, now=NOW + timedelta(hours=2))

    connection_credentials_replace(
        connection=hourly, credentials={"access_token": "new"}, expires_at=None, now=NOW + timedelta(hours=3)
    )

    hourly = reload(hourly)
    assert (hourly.sync_status, hourly.last_sync_error, hourly.next_sync_at) == (SyncStatus.IDLE, None, None)
    assert hourly.paused_at is not None


def test_resume_of_a_connection_waiting_for_a_reconnect_stays_unscheduled(hourly):
    sync_fail(
        started=started(hourly, NOW + timedelta(hours=1)), error=AuthError("expired"), now=NOW + timedelta(hours=1)
    )
    connection_pause(connection=hourly, now=NOW + timedelta(hours=2))

    assert connection_resume(connection=hourly, now=NOW + timedelta(hours=3)) is True

    assert (hourly.paused_at, hourly.next_sync_at) == (None, None)


def test_the_database_refuses_a_paused_connection_with_a_schedule(hourly):
    connection_pause(connection=hourly, now=NOW)

    with pytest.raises(IntegrityError), transaction.atomic():
        Connection.objects.filter(pk=hourly.pk).update(next_sync_at=NOW)


def test_stop_all_pauses_the_workspace_and_resume_all_undoes_only_that(make_connection, workspace, other_workspace):
    mine = [make_connection(sync_frequency=f, now=NOW) for f in ("realtime", "hourly", "daily")]
    paused_alone = make_connection(sync_frequency="30min", now=NOW)
    connection_pause(connection=paused_alone, now=NOW)
    theirs = make_connection(workspace=other_workspace, sync_frequency="hourly", now=NOW)

    # One UPDATE for the three scheduled ones; the one paused on its own keeps its reason.
    assert workspace_syncs_stop(workspace=workspace, now=NOW) == 3
    assert set(Connection.objects.filter(workspace=workspace).values_list("pause_reason", flat=True)) == {
        PauseReason.WORKSPACE,
        PauseReason.USER,
    }
    assert reload(theirs).paused_at is None
    claimed = connections_claim_due(now=NOW + timedelta(days=2), limit=10)
    assert [c.connection_id for c in claimed] == [theirs.pk]

    assert workspace_syncs_resume(workspace=workspace, now=NOW + timedelta(days=2)) == 3

    assert all(reload(c).paused_at is None for c in mine)
    assert reload(paused_alone).pause_reason == PauseReason.USER
    assert [c.sync_frequency for c in mine] == ["realtime", "hourly", "daily"]


def test_status_says_paused_with_the_frequency_kept(hourly):
    connection_pause(connection=hourly, now=NOW)

    data = connection_sync_status_data(connection=hourly, now=NOW)
    view = connection_status_view(hourly, NOW + timedelta(days=1))

    assert (data["sync_frequency"], data["paused"], data["pause_reason"]) == ("hourly", True, "user")
    assert data["paused_at"] == NOW.isoformat()
    assert (view.paused_label, view.next_sync, view.freshness) == ("Paused", "paused", "paused")


def test_the_pause_and_resume_commands(hourly):
    slot = hourly.next_sync_at
    out = StringIO()
    call_command("pause_syncs", str(hourly.public_id), stdout=out)

    assert f"{hourly.name} ({hourly.public_id}): paused (Hourly kept)" in out.getvalue()
    assert reload(hourly).paused_at is not None

    out = StringIO()
    with time_machine.travel(NOW + timedelta(minutes=10), tick=False):
        call_command("resume_syncs", "--all", stdout=out)

    assert f"{hourly.name} ({hourly.public_id}): resumed; next sync in " in out.getvalue()
    assert "Resumed 1 of 1 connection(s)." in out.getvalue()
    assert reload(hourly).next_sync_at == slot
