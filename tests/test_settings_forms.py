"""The Settings page's forms and polling, through Django's test client, with frozen time.

The POST views without JavaScript (post, redirect, message) and with fetch (Accept:
application/json), /settings/status that the page polls, and the guard against N+1 queries.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine

from connections.models import Connection, SyncStatus
from connections.services import connection_create
from syncing.providers.base import AuthError
from syncing.schedule import jitter
from syncing.services import connection_enqueue_sync, sync_fail
from tests.pages import (
    JSON,
    NOW,
    QUEUE_DOWN,
    card,
    form_fields,
    frequency_url,
    page_messages,
    parse,
    settings_page,
    signed_in,
    started,
    status_fields,
    sync_now_url,
    update,
)

VALID_CHOICES = "valid choices: manual, realtime, 30min, hourly, daily"


# --- forms without JavaScript: post, redirect, message -----------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_frequency_post_redirects_back_with_message(owner, connection):
    client = signed_in(owner)

    with time_machine.travel(NOW, tick=False):
        response = client.post(frequency_url(connection), {"sync_frequency": "hourly"})
        assert response.status_code == 302
        assert response["Location"] == f"/settings#connection-{connection.public_id}"
        doc = settings_page(client)

    assert page_messages(doc) == [("message message-success", "Demo account 1: sync frequency set to Hourly.")]
    assert doc.one("ul", class_="messages").attrs["role"] == "status"
    section = card(doc, connection)
    assert status_fields(section)["Frequency"] == "Hourly"
    assert status_fields(section)["Next sync"] == "due now"
    assert form_fields(section.one("form", class_="frequency-form"))["sync_frequency"] == "hourly"
    saved = Connection.objects.get(pk=connection.pk)
    # Never attempted: the new schedule is due at once.
    assert (saved.sync_frequency, saved.next_sync_at) == ("hourly", NOW)
    # The message is shown once.
    assert page_messages(settings_page(client)) == []


@pytest.mark.django_db
@pytest.mark.embedded
def test_frequency_post_realtime_message_uses_the_long_label(owner, connection):
    client = signed_in(owner)

    response = client.post(frequency_url(connection), {"sync_frequency": "realtime"}, follow=True)

    assert page_messages(parse(response.content)) == [
        ("message message-success", "Demo account 1: sync frequency set to Realtime (every 30s).")
    ]


@pytest.mark.django_db
@pytest.mark.embedded
def test_frequency_post_recomputes_next_sync_from_last_attempt(owner, make_connection):
    connection = make_connection(sync_frequency="realtime", now=NOW - timedelta(minutes=10))
    attempted = NOW - timedelta(minutes=10)
    update(connection, last_sync_attempted_at=attempted, total_syncs_attempted=1)
    client = signed_in(owner)

    with time_machine.travel(NOW, tick=False):
        client.post(frequency_url(connection), {"sync_frequency": "daily"})
    daily = Connection.objects.get(pk=connection.pk)
    with time_machine.travel(NOW, tick=False):
        client.post(frequency_url(connection), {"sync_frequency": "manual"})
    manual = Connection.objects.get(pk=connection.pk)

    interval = timedelta(days=1)
    assert daily.next_sync_at == attempted + interval + jitter(public_id=connection.public_id, interval=interval)
    assert (manual.sync_frequency, manual.next_sync_at) == ("manual", None)


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize(("data", "shown"), [({"sync_frequency": "weekly"}, "'weekly'"), ({}, "''")])
def test_frequency_post_invalid_lists_valid_choices_and_changes_nothing(owner, make_connection, data, shown):
    connection = make_connection(sync_frequency="hourly", now=NOW)
    before = Connection.objects.values().get(pk=connection.pk)
    client = signed_in(owner)

    response = client.post(frequency_url(connection), data)

    assert response.status_code == 302
    assert response["Location"] == f"/settings#connection-{connection.public_id}"
    assert page_messages(settings_page(client)) == [
        ("message message-error", f"{shown} is not a valid sync frequency; {VALID_CHOICES}")
    ]
    assert Connection.objects.values().get(pk=connection.pk) == before


@pytest.mark.django_db(transaction=True)
def test_sync_now_post_queues_a_job(owner, connection, broker):
    client = signed_in(owner)

    response = client.post(sync_now_url(connection))

    assert response.status_code == 302
    assert response["Location"] == f"/settings#connection-{connection.public_id}"
    doc = settings_page(client)
    assert page_messages(doc) == [("message message-success", "Demo account 1: sync queued.")]
    assert status_fields(card(doc, connection))["Status"] == "Queued"
    assert broker.llen("sync_jobs") == 1
    assert Connection.objects.get(pk=connection.pk).sync_status == SyncStatus.QUEUED


@pytest.mark.django_db(transaction=True)
def test_sync_now_post_twice_says_already_queued(owner, connection, broker):
    client = signed_in(owner)
    client.post(sync_now_url(connection), follow=True)
    job_id = Connection.objects.get(pk=connection.pk).job_id

    response = client.post(sync_now_url(connection), follow=True)

    assert page_messages(parse(response.content)) == [
        ("message message-success", "Demo account 1: a sync is already queued; it will finish first.")
    ]
    assert broker.llen("sync_jobs") == 1
    assert Connection.objects.get(pk=connection.pk).job_id == job_id


@pytest.mark.django_db
@pytest.mark.embedded
def test_sync_now_post_while_syncing_says_already_syncing(owner, connection, django_capture_on_commit_callbacks):
    started(connection)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = signed_in(owner).post(sync_now_url(connection), follow=True)

    assert page_messages(parse(response.content)) == [
        ("message message-success", "Demo account 1: a sync is already syncing; it will finish first.")
    ]
    assert callbacks == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.embedded
def test_sync_now_post_broker_down_shows_error_and_changes_nothing(owner, connection, broker_down):
    before = Connection.objects.values().get(pk=connection.pk)
    client = signed_in(owner)

    response = client.post(sync_now_url(connection))

    assert response.status_code == 302
    doc = settings_page(client)
    assert page_messages(doc) == [("message message-error", QUEUE_DOWN)]
    assert status_fields(card(doc, connection))["Status"] == "Idle"
    assert Connection.objects.values().get(pk=connection.pk) == before


# --- the fetch path: Accept: application/json ---------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_frequency_json_returns_message_and_status_html(owner, connection):
    client = signed_in(owner)

    with time_machine.travel(NOW, tick=False):
        response = client.post(frequency_url(connection), {"sync_frequency": "hourly"}, **JSON)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"message", "level", "status_html", "busy"}
    assert (body["message"], body["level"], body["busy"]) == (
        "Demo account 1: sync frequency set to Hourly.",
        "success",
        False,
    )
    assert status_fields(parse(body["status_html"])) == {
        "Frequency": "Hourly",
        "Status": "Idle",
        "Last attempted": "never",
        "Last completed": "never",
        "Last change": "never",
        "Next sync": "due now",
        "Stats": "0 attempts",
        "Freshness": "Never synced",
    }
    # The row shows the message itself; nothing is left over for the next page load.
    assert page_messages(settings_page(client)) == []


@pytest.mark.django_db
@pytest.mark.embedded
def test_frequency_json_invalid_is_400_with_the_valid_choices(owner, connection):
    response = signed_in(owner).post(frequency_url(connection), {"sync_frequency": "weekly"}, **JSON)

    assert response.status_code == 400
    body = response.json()
    assert (body["message"], body["level"], body["busy"]) == (
        f"'weekly' is not a valid sync frequency; {VALID_CHOICES}",
        "error",
        False,
    )
    assert status_fields(parse(body["status_html"]))["Frequency"] == "Manual"
    assert Connection.objects.get(pk=connection.pk).sync_frequency == "manual"


@pytest.mark.django_db
@pytest.mark.embedded
def test_sync_now_json_is_202_and_busy(owner, connection, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = signed_in(owner).post(sync_now_url(connection), **JSON)

    assert response.status_code == 202
    body = response.json()
    assert (body["message"], body["level"], body["busy"]) == ("Demo account 1: sync queued.", "success", True)
    status_html = parse(body["status_html"])
    assert status_fields(status_html)["Status"] == "Queued"
    assert status_html.one("dl").attrs["data-busy"] == "true"
    assert len(callbacks) == 1


@pytest.mark.django_db(transaction=True)
def test_sync_now_json_sends_one_job(owner, connection, broker):
    client = signed_in(owner)

    first = client.post(sync_now_url(connection), **JSON)
    second = client.post(sync_now_url(connection), **JSON)

    assert (first.status_code, second.status_code) == (202, 202)
    assert second.json()["message"] == "Demo account 1: a sync is already queued; it will finish first."
    assert broker.llen("sync_jobs") == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.embedded
def test_sync_now_json_broker_down_is_503(owner, connection, broker_down):
    before = Connection.objects.values().get(pk=connection.pk)

    response = signed_in(owner).post(sync_now_url(connection), **JSON)

    assert response.status_code == 503
    body = response.json()
    assert (body["message"], body["level"], body["busy"]) == (QUEUE_DOWN, "error", False)
    assert status_fields(parse(body["status_html"]))["Status"] == "Idle"
    assert Connection.objects.values().get(pk=connection.pk) == before


# --- /settings/status: what the page polls --------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_settings_status_rows_keyed_by_public_id_for_my_connections_only(owner, make_connection, other_workspace):
    idle = make_connection(sync_frequency="hourly")
    busy = make_connection()
    connection_enqueue_sync(connection=busy, now=NOW, send=False)
    connection_create(workspace=other_workspace, provider="demo", external_account_id="demo-c", name="Theirs")
    client = signed_in(owner)

    with time_machine.travel(NOW, tick=False):
        response = client.get("/settings/status")
        doc = settings_page(client)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"rows", "busy", "banner", "counts"}
    assert set(body["rows"]) == {str(idle.public_id), str(busy.public_id)}
    assert body["busy"] is True
    for connection in (idle, busy):
        # The same block the page shows, so polling replaces it like for like.
        polled = status_fields(parse(body["rows"][str(connection.public_id)]))
        assert polled == status_fields(card(doc, connection))
    assert status_fields(parse(body["rows"][str(busy.public_id)]))["Status"] == "Queued"


@pytest.mark.django_db
@pytest.mark.embedded
def test_settings_status_not_busy_when_all_idle(owner, connection):
    body = signed_in(owner).get("/settings/status").json()

    assert body["busy"] is False
    assert list(body["rows"]) == [str(connection.public_id)]


@pytest.mark.django_db
@pytest.mark.embedded
def test_settings_status_empty_for_user_without_connections(outsider, connection):
    # (No engine runs in this test: the banner says so.)
    body = signed_in(outsider).get("/settings/status").json()
    assert (body["rows"], body["busy"]) == ({}, False)


# --- no N+1 queries ----------------------------------------------------------------------------------------


def _varied(make_connection, indexes: range) -> None:
    """Connections in different states (idle, auth error, queued), so every branch renders."""
    for index in indexes:
        connection = make_connection(sync_frequency=["realtime", "hourly", "manual"][index % 3], now=NOW)
        if index % 3 == 1:
            sync_fail(started=started(connection), error=AuthError("expired"), now=NOW)
        elif index % 3 == 2:
            connection_enqueue_sync(connection=connection, now=NOW, send=False)


# The page: session, user, workspaces, the overview's counts, the page's count, its connections
# with their workspace, the pictures (attempts, spend, restated days), the engine's heartbeats
# (the banner). The poll: session, user, counts, page count, connections, heartbeats.
# (test_settings_overview checks 5 against 50 connections of every platform, in both views.)
SETTINGS_QUERIES = {"/settings": 10, "/settings/status": 6}


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize("url", ["/settings", "/settings/status"])
def test_settings_query_count_does_not_grow(owner, make_connection, django_assert_num_queries, url):
    client = signed_in(owner)
    _varied(make_connection, range(1))
    with django_assert_num_queries(SETTINGS_QUERIES[url]):
        assert client.get(url).status_code == 200

    _varied(make_connection, range(1, 3))
    assert sorted(Connection.objects.values_list("sync_status", flat=True)) == ["error", "idle", "queued"]
    with django_assert_num_queries(SETTINGS_QUERIES[url]):
        assert client.get(url).status_code == 200
