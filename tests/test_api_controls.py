"""The API's controls (connections/api_controls.py): pause, resume, cancel, stop and resume a
workspace's automated syncs; and the history's filters (GET .../sync-runs?outcome=&since=&trigger=)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.test import Client

from connections.models import Connection, SyncFrequency, SyncStatus
from connections.services import api_token_issue
from syncing.models import SyncRun
from syncing.providers.base import PermanentError
from syncing.services import connection_enqueue_sync, sync_fail, sync_finish, sync_start

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def client_for(user) -> Client:
    _, key = api_token_issue(user=user)
    return Client(HTTP_AUTHORIZATION=f"Token {key}")


@pytest.fixture(autouse=True)
def _frozen():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def hourly(make_connection) -> Connection:
    return make_connection(sync_frequency=SyncFrequency.HOURLY, now=NOW)


def test_pause_and_resume_keep_the_frequency(owner, hourly):
    client = client_for(owner)

    paused = client.post(f"/connections/{hourly.public_id}/pause").json()

    assert (paused["sync_frequency"], paused["paused"], paused["pause_reason"], paused["next_sync_at"]) == (
        "hourly",
        True,
        "user",
        None,
    )
    resumed = client.post(f"/connections/{hourly.public_id}/resume").json()
    assert (resumed["paused"], resumed["pause_reason"], resumed["next_sync_at"]) == (False, None, NOW.isoformat())
    status = client.get(f"/connections/{hourly.public_id}/sync-status").json()
    assert status["paused"] is False


def test_controls_answer_404_for_a_connection_of_another_workspace(outsider, hourly):
    client = client_for(outsider)

    for action in ("pause", "resume", "cancel"):
        response = client.post(f"/connections/{hourly.public_id}/{action}")
        assert response.status_code == 404, action
    hourly.refresh_from_db()
    assert hourly.paused_at is None


def test_cancel_a_queued_sync_then_nothing_to_cancel(owner, hourly):
    client = client_for(owner)
    job = connection_enqueue_sync(connection=hourly, now=NOW, send=False)

    body = client.post(f"/connections/{hourly.public_id}/cancel").json()

    assert body["result"] == "cancelled"
    assert body["sync_status"]["sync_status"] == SyncStatus.IDLE
    assert client.get(f"/jobs/{job.job_id}").json()["status"] == "cancelled"
    assert client.post(f"/connections/{hourly.public_id}/cancel").json()["result"] == "nothing"


def test_cancel_a_running_sync_answers_cancelling(owner, hourly):
    job = connection_enqueue_sync(connection=hourly, now=NOW, send=False)
    sync_start(connection_id=hourly.pk, job_id=job.job_id, now=NOW)

    body = client_for(owner).post(f"/connections/{hourly.public_id}/cancel").json()

    assert (body["result"], body["sync_status"]["sync_status"]) == ("cancelling", "syncing")


def test_stop_and_resume_all_automated_syncs_of_a_workspace(owner, outsider, make_connection, workspace):
    connections = [make_connection(sync_frequency=f, now=NOW) for f in ("realtime", "hourly", "daily")]
    client = client_for(owner)

    stopped = client.post(f"/workspaces/{workspace.public_id}/stop-syncs")

    assert stopped.status_code == 200
    assert stopped.json() == {"changed": 3, "paused": 3}
    assert client_for(outsider).post(f"/workspaces/{workspace.public_id}/resume-syncs").status_code == 404
    assert client.post("/workspaces/not-a-uuid/resume-syncs").status_code == 404
    assert client.post(f"/workspaces/{workspace.public_id}/resume-syncs").json() == {"changed": 3, "paused": 0}
    assert [Connection.objects.get(pk=c.pk).sync_frequency for c in connections] == ["realtime", "hourly", "daily"]


def run_history(connection: Connection) -> None:
    """Three runs: a success at NOW-3h, a failure at NOW-2h, a success at NOW-1h."""
    for hours, outcome in ((3, "success"), (2, "error"), (1, "success")):
        at = NOW - timedelta(hours=hours)
        job = connection_enqueue_sync(connection=connection, now=at, send=False)
        started = sync_start(connection_id=connection.pk, job_id=job.job_id, now=at)
        assert started is not None
        if outcome == "success":
            sync_finish(started=started, rows=[], api_calls=1, now=at)
        else:
            sync_fail(started=started, error=PermanentError("refused"), now=at)


def test_history_filters_by_outcome_trigger_and_since(owner, hourly):
    run_history(hourly)
    client = client_for(owner)
    url = f"/connections/{hourly.public_id}/sync-runs"

    def outcomes(**params) -> list[str]:
        response = client.get(url, params)
        assert response.status_code == 200, response.content
        return [run["outcome"] for run in response.json()["results"]]

    assert outcomes() == ["success", "error", "success"]
    assert outcomes(outcome="error") == ["error"]
    assert outcomes(since=(NOW - timedelta(hours=2, minutes=30)).isoformat()) == ["success", "error"]
    assert outcomes(trigger="manual") == ["success", "error", "success"]
    assert outcomes(trigger="scheduled") == []
    assert SyncRun.objects.count() == 3


def test_history_filters_refuse_bad_values_with_the_choices(owner, outsider, hourly):
    client = client_for(owner)
    url = f"/connections/{hourly.public_id}/sync-runs"

    bad_outcome = client.get(url, {"outcome": "great"})
    bad_since = client.get(url, {"since": "yesterday"})

    assert bad_outcome.status_code == 400
    assert "success" in bad_outcome.json()["outcome"][0]
    assert "cancelled" in bad_outcome.json()["outcome"][0]
    assert bad_since.status_code == 400
    assert "ISO 8601" in bad_since.json()["since"][0]
    # An outsider learns nothing from the parameters: 404 first.
    assert client_for(outsider).get(url, {"outcome": "great"}).status_code == 404


def test_backfill_start_list_and_cancel(owner, outsider, hourly):
    client = client_for(owner)
    url = f"/connections/{hourly.public_id}/backfills"
    body = {"since": "2026-11-01", "until": "2026-11-20"}

    created = client.post(url, body, content_type="application/json")

    assert created.status_code == 201, created.content
    backfill = created.json()
    assert (backfill["status"], backfill["days_done"], backfill["days_total"]) == ("pending", 0, 20)
    assert backfill["progress_text"] == "0 of 20 days"
    # The same range again: the one in progress; another range: refused with the reason.
    assert client.post(url, body, content_type="application/json").json()["id"] == backfill["id"]
    other = client.post(url, {"since": "2026-10-01", "until": "2026-10-05"}, content_type="application/json")
    assert other.status_code == 400
    assert other.json()["detail"]
    assert [b["id"] for b in client.get(url).json()] == [backfill["id"]]
    assert client_for(outsider).get(url).status_code == 404
    assert client_for(outsider).post(f"{url}/{backfill['id']}/cancel").status_code == 404

    cancelled = client.post(f"{url}/{backfill['id']}/cancel")

    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")


def test_backfill_bad_input_is_a_400(owner, hourly):
    client = client_for(owner)
    url = f"/connections/{hourly.public_id}/backfills"

    assert client.post(url, {"since": "yesterday"}, content_type="application/json").status_code == 400
    future = client.post(url, {"since": "2026-11-01", "until": "2027-01-01"}, content_type="application/json")
    assert future.status_code == 400
    assert client.post(f"{url}/not-a-uuid/cancel").status_code == 404
