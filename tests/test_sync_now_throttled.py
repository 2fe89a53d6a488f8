"""Sync Now while the platform throttles the connection (issue 13, point 7): refused before any
job or platform call, with when it resumes, by the API, the Settings page, manage.py sync_now
and the admin; a job already queued or running is still returned, and the scheduler is unaffected."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
import schemathesis
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from adsync.wsgi import application
from connections.models import Connection, SyncStatus, SyncTrigger
from connections.services import api_token_issue
from syncing.models import SyncRun
from syncing.services import RateLimited, connection_enqueue_sync
from tests.pages import (
    JSON,
    NOW,
    card,
    page_messages,
    parse,
    settings_page,
    signed_in,
    started,
    status_fields,
    sync_now_url,
    update,
)

# NOW is 12:00 UTC; the platform lets us call again at 12:32:20.
UNTIL = NOW + timedelta(minutes=32, seconds=20)
RESUMES = "Rate limited — resumes 12:32 UTC"


def token_client(user) -> Client:
    _, key = api_token_issue(user=user)
    return Client(HTTP_AUTHORIZATION=f"Token {key}")


def api_url(connection: Connection) -> str:
    return f"/connections/{connection.public_id}/sync-now"


def row(connection: Connection) -> dict:
    return Connection.objects.values().get(pk=connection.pk)


def label(connection: Connection) -> str:
    return f"{connection.name} ({connection.public_id})"


@pytest.fixture
def throttled(connection) -> Connection:
    """Idle, synced before, and throttled by the platform until UNTIL (as sync_defer leaves it)."""
    return update(connection, rate_limited_until=UNTIL, last_sync_attempted_at=NOW - timedelta(minutes=1))


# --- the rule, in the service ---------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_enqueue_manual_while_throttled_raises_and_changes_nothing(throttled, django_capture_on_commit_callbacks):
    before = row(throttled)

    with django_capture_on_commit_callbacks(execute=False) as callbacks, pytest.raises(RateLimited) as raised:
        connection_enqueue_sync(connection=throttled, trigger=SyncTrigger.MANUAL, now=NOW)

    assert raised.value.until == UNTIL
    assert row(throttled) == before
    assert callbacks == []


@pytest.mark.django_db
@pytest.mark.embedded
def test_enqueue_manual_at_the_resume_time_queues(throttled):
    result = connection_enqueue_sync(connection=throttled, trigger=SyncTrigger.MANUAL, now=UNTIL, send=False)

    assert (result.status, result.created) == (SyncStatus.QUEUED, True)
    assert row(throttled)["sync_status"] == SyncStatus.QUEUED


@pytest.mark.django_db
@pytest.mark.embedded
def test_enqueue_scheduled_while_throttled_is_not_refused(throttled):
    result = connection_enqueue_sync(connection=throttled, trigger=SyncTrigger.SCHEDULED, now=NOW, send=False)

    assert (result.status, result.created) == (SyncStatus.QUEUED, True)


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize("status", [SyncStatus.QUEUED, SyncStatus.SYNCING])
def test_enqueue_manual_while_throttled_and_busy_returns_the_job(connection, status):
    job_id = connection_enqueue_sync(connection=connection, now=NOW - timedelta(minutes=1), send=False).job_id
    if status == SyncStatus.SYNCING:
        started(connection, NOW - timedelta(minutes=1))
    update(connection, rate_limited_until=UNTIL)
    before = row(connection)

    result = connection_enqueue_sync(connection=connection, trigger=SyncTrigger.MANUAL, now=NOW)

    assert (result.job_id, result.status, result.created) == (job_id, status, False)
    assert row(connection) == before


# --- the API ---------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("wait", "resumes", "retry_after"),
    [
        (timedelta(minutes=32, seconds=20), "12:32", "1940"),
        # Part of a second left is still a second to wait.
        (timedelta(milliseconds=400), "12:00", "1"),
        # Tomorrow (UTC): the date is part of the answer.
        (timedelta(hours=21, minutes=5), "Nov 29, 09:05", "75900"),
    ],
)
def test_sync_now_api_throttled_is_429_with_retry_after(owner, connection, broker, wait, resumes, retry_after):
    update(connection, rate_limited_until=NOW + wait)
    before = row(connection)
    client = token_client(owner)

    with time_machine.travel(NOW, tick=False):
        response = client.post(api_url(connection))

    assert response.status_code == 429
    assert response["Content-Type"] == "application/json"
    assert response["Retry-After"] == retry_after
    assert response.json() == {
        "detail": f"Rate limited — resumes {resumes} UTC",
        "rate_limited_until": (NOW + wait).isoformat(),
    }
    assert "Location" not in response
    assert row(connection) == before
    assert broker.llen("sync_jobs") == 0


@pytest.mark.django_db(transaction=True)
def test_sync_now_api_throttled_body_is_iso_8601_utc(owner, throttled, broker):
    with time_machine.travel(NOW, tick=False):
        response = token_client(owner).post(api_url(throttled))

    assert response.json() == {"detail": RESUMES, "rate_limited_until": "2026-11-28T12:32:20+00:00"}


@pytest.mark.django_db(transaction=True)
def test_sync_now_api_throttled_outsider_gets_404(outsider, other_workspace, throttled, broker):
    before = row(throttled)

    with time_machine.travel(NOW, tick=False):
        response = token_client(outsider).post(api_url(throttled))

    assert (response.status_code, response.json()) == (404, {"detail": "No connection with that id"})
    assert row(throttled) == before
    assert broker.llen("sync_jobs") == 0


@pytest.mark.django_db(transaction=True)
def test_sync_now_api_works_again_once_the_throttle_ends(owner, throttled, broker):
    client = token_client(owner)
    with time_machine.travel(NOW, tick=False):
        assert client.post(api_url(throttled)).status_code == 429

    with time_machine.travel(UNTIL, tick=False):
        response = client.post(api_url(throttled))

    assert response.status_code == 202
    throttled.refresh_from_db()
    assert response.json() == {"job_id": str(throttled.job_id), "status": "queued", "created": True}
    assert (throttled.sync_status, throttled.queued_at) == (SyncStatus.QUEUED, UNTIL)
    assert broker.llen("sync_jobs") == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("status", [SyncStatus.QUEUED, SyncStatus.SYNCING])
def test_sync_now_api_throttled_but_busy_returns_the_existing_job(owner, connection, broker, status):
    job_id = connection_enqueue_sync(connection=connection, now=NOW - timedelta(minutes=1), send=False).job_id
    if status == SyncStatus.SYNCING:
        started(connection, NOW - timedelta(minutes=1))
    update(connection, rate_limited_until=UNTIL)
    before = row(connection)

    with time_machine.travel(NOW, tick=False):
        response = token_client(owner).post(api_url(connection))

    assert response.status_code == 202
    assert response.json() == {"job_id": str(job_id), "status": status, "created": False}
    assert response["Location"] == f"/jobs/{job_id}"
    assert row(connection) == before
    assert broker.llen("sync_jobs") == 0


# transaction=True: the WSGI app closes the database connection after each request, as it does
# in production, which a test wrapped in one transaction cannot survive.
@pytest.mark.django_db(transaction=True)
def test_sync_now_api_429_matches_the_openapi_schema(owner, throttled, broker):
    # The documented 429 (status, Retry-After, body), checked as tests/test_api_schema.py checks
    # every operation; its seeded throttle is in the past by the time it runs.
    schema = schemathesis.openapi.from_wsgi("/api/schema/", application)
    case = schema["/connections/{connection_id}/sync-now"]["POST"].Case(
        path_parameters={"connection_id": str(throttled.public_id)}
    )
    _, key = api_token_issue(user=owner)

    with time_machine.travel(NOW, tick=False):
        response = case.call_and_validate(headers={"Authorization": f"Token {key}"})

    assert response.status_code == 429


# --- the Settings page -----------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_sync_now_json_throttled_is_429_with_the_resume_time(owner, throttled, django_capture_on_commit_callbacks):
    before = row(throttled)

    with time_machine.travel(NOW, tick=False), django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = signed_in(owner).post(sync_now_url(throttled), **JSON)

    assert response.status_code == 429
    body = response.json()
    assert (body["message"], body["level"], body["busy"]) == (f"Demo account 1: {RESUMES}", "warning", False)
    status_html = parse(body["status_html"])
    assert status_fields(status_html)["Status"] == f"Idle {RESUMES}"
    assert row(throttled) == before
    assert callbacks == []


@pytest.mark.django_db
@pytest.mark.embedded
def test_sync_now_post_throttled_redirects_with_the_resume_time(owner, throttled, django_capture_on_commit_callbacks):
    before = row(throttled)
    client = signed_in(owner)

    with time_machine.travel(NOW, tick=False):
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            response = client.post(sync_now_url(throttled))
        doc = settings_page(client)

    assert response.status_code == 302
    assert response["Location"] == f"/settings#connection-{throttled.public_id}"
    assert page_messages(doc) == [("message message-warning", f"Demo account 1: {RESUMES}")]
    assert status_fields(card(doc, throttled))["Status"] == f"Idle {RESUMES}"
    assert row(throttled) == before
    assert callbacks == []


@pytest.mark.django_db
@pytest.mark.embedded
def test_sync_now_post_throttled_outsider_gets_404(outsider, other_workspace, throttled):
    before = row(throttled)

    with time_machine.travel(NOW, tick=False):
        response = signed_in(outsider).post(sync_now_url(throttled), **JSON)

    assert response.status_code == 404
    assert row(throttled) == before


# --- manage.py sync_now ----------------------------------------------------------------------------

NOT_SYNCED = (
    "Not synced, the platform is rate limiting 1 of {total} connection(s): Demo account 1. "
    "Run sync_now again once it resumes; scheduled syncs resume by themselves."
)


@pytest.mark.django_db(transaction=True)
def test_sync_now_command_throttled_says_when_it_resumes_and_exits_nonzero(throttled, broker):
    before = row(throttled)
    out = StringIO()

    with time_machine.travel(NOW, tick=False), pytest.raises(CommandError) as raised:
        call_command("sync_now", str(throttled.public_id), stdout=out)

    assert out.getvalue() == f"{label(throttled)}: {RESUMES}\n"
    assert str(raised.value) == NOT_SYNCED.format(total=1)
    assert row(throttled) == before
    assert broker.llen("sync_jobs") == 0


@pytest.mark.django_db
@pytest.mark.embedded
def test_sync_now_command_inline_throttled_makes_no_call(throttled, make_connection):
    other = make_connection()
    before = row(throttled)
    out = StringIO()

    with time_machine.travel(NOW, tick=False), pytest.raises(CommandError) as raised:
        call_command("sync_now", str(throttled.public_id), str(other.public_id), "--inline", stdout=out)

    other.refresh_from_db()
    assert out.getvalue().splitlines() == [
        f"{label(throttled)}: {RESUMES}",
        f"{label(other)}: job {other.job_id} queued",
        f"{label(other)}: syncing (inline)",
        f"{label(other)}: idle — 32 rows written",
    ]
    assert str(raised.value) == NOT_SYNCED.format(total=2)
    assert row(throttled) == before
    # No attempt, so no call to the platform: the other connection's run is the only one.
    assert list(SyncRun.objects.values_list("connection_id", flat=True)) == [other.pk]


@pytest.mark.django_db
@pytest.mark.embedded
def test_sync_now_command_inline_after_the_resume_time_runs(throttled):
    out = StringIO()

    with time_machine.travel(UNTIL, tick=False):
        call_command("sync_now", str(throttled.public_id), "--inline", stdout=out)

    throttled.refresh_from_db()
    assert out.getvalue().splitlines()[-1] == f"{label(throttled)}: idle — 32 rows written"
    assert (throttled.sync_status, throttled.rate_limited_until) == (SyncStatus.IDLE, None)


# --- the admin's "Sync now" action -----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_admin_action_sync_now_reports_throttled_connections(admin_client, make_connection, broker):
    alpha = make_connection(name="Alpha")
    beta = make_connection(name="Beta")
    gamma = make_connection(name="Gamma")
    connection_enqueue_sync(connection=gamma, now=NOW - timedelta(minutes=1), send=False)
    update(alpha, rate_limited_until=UNTIL)
    update(gamma, rate_limited_until=UNTIL)
    before = row(alpha)

    with time_machine.travel(NOW, tick=False):
        response = admin_client.post(
            "/admin/connections/connection/",
            {"action": "sync_now", "index": "0", "_selected_action": [str(c.pk) for c in (alpha, beta, gamma)]},
            follow=True,
        )

    messages = [li.text() for li in parse(response.content).one("ul", class_="messagelist").find_all("li")]
    assert messages == [
        "Queued 1 sync(s); 1 already queued or running.",
        f"Not queued: Alpha: {RESUMES}.",
    ]
    assert row(alpha) == before
    assert broker.llen("sync_jobs") == 1
    assert dict(Connection.objects.values_list("name", "sync_status")) == {
        "Alpha": "idle",
        "Beta": "queued",
        "Gamma": "queued",
    }
