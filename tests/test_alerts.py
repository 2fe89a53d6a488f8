"""Alerts (alerts/): the evaluator's three kinds, one alert per incident and one "resolved", the
email through Django's locmem backend, and the /settings/alerts page and admin.

Connections fail and succeed through the real state machine (syncing.services); time is frozen
and moved by passing `now`. The webhook, its signature and retries are in test_alerts_webhook.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.conf import settings
from django.core import mail
from django.test import Client

from alerts.evaluate import alerts_evaluate
from alerts.models import AlertSettings, Delivery, DeliveryStatus, Incident, IncidentKind
from alerts.services import alert_settings_save, delivery_send
from connections.models import Connection, PauseReason, SyncFrequency
from connections.services import connection_credentials_replace
from connections.status import connection_status_view
from syncing.models import SCHEDULER_HEARTBEAT, HeartbeatKind
from syncing.providers.base import AuthError, PermanentError, ThrottledError, TransientProviderError
from syncing.services import (
    heartbeat_record,
    sync_defer,
    sync_fail,
    sync_finish,
    sync_requeue_for_retry,
    sync_start,
)
from tests.conftest import run_concurrently
from tests.pages import NOW, page_messages, parse, signed_in, started

RESOLVE_AFTER = timedelta(seconds=300)  # settings.ALERTS_RESOLVE_AFTER's default


@pytest.fixture(autouse=True)
def _frozen():
    # Rows stamped by the database's defaults (created_at) agree with the times the tests pass.
    with time_machine.travel(NOW, tick=False):
        yield


def fail(connection: Connection, now, error=None) -> None:
    assert sync_fail(started=started(connection, now), error=error or PermanentError("Account disabled"), now=now)


def succeed(connection: Connection, now) -> None:
    assert sync_finish(started=started(connection, now), rows=[], api_calls=1, now=now) == 0


def needs_reconnect(connection: Connection, now=NOW) -> None:
    fail(connection, now, AuthError("Demo access expired — reconnect the account"))


def reconnect(connection: Connection, now) -> None:
    connection_credentials_replace(connection=connection, credentials={"token": "new"}, expires_at=None, now=now)


def incidents() -> list[tuple[str, bool]]:
    """(kind, still open) of every incident, oldest first."""
    rows = Incident.objects.order_by("opened_at", "id").values_list("kind", "resolved_at")
    return [(kind, resolved_at is None) for kind, resolved_at in rows]


def deliveries() -> list[tuple[str, str]]:
    return list(Delivery.objects.order_by("created_at", "id").values_list("event", "channel"))


def save_settings(workspace, **overrides) -> str | None:
    """The workspace's alert settings: email on to the members, no webhook, the defaults."""
    fields = {
        "email_enabled": True,
        "email_recipients": [],
        "webhook_url": "",
        "failure_threshold": 3,
        "stale_multiplier": 3,
    }
    fields.update(overrides)
    return alert_settings_save(workspace=workspace, **fields)


def engine_alive(now) -> None:
    """The scheduler ticked and a sync worker beat at `now`: the engine runs (syncing.health)."""
    heartbeat_record(name=SCHEDULER_HEARTBEAT, kind=HeartbeatKind.SCHEDULER, now=now)
    heartbeat_record(name="sync@test", kind=HeartbeatKind.SYNC_WORKER, now=now, details={"concurrency": 4})


def evaluate(now, *, engine_running: bool = True):
    if engine_running:
        engine_alive(now)
    return alerts_evaluate(now=now)


# --- needs reconnecting ------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_needs_reconnect_alerts_once_and_resolves_once(connection):
    needs_reconnect(connection)

    results = [evaluate(NOW + timedelta(minutes=minute)) for minute in range(5)]

    assert [(r.opened, r.resolved) for r in results] == [(1, 0), (0, 0), (0, 0), (0, 0), (0, 0)]
    incident = Incident.objects.get()
    assert incident.kind == IncidentKind.NEEDS_RECONNECT
    assert incident.title == "Demo ad account “Demo account 1” needs reconnecting"
    assert incident.connection_id == connection.pk
    assert deliveries() == [("incident.opened", "email")]

    fixed = NOW + timedelta(minutes=10)
    reconnect(connection, fixed)
    first_clear = evaluate(fixed)
    settled = evaluate(fixed + RESOLVE_AFTER)
    later = [evaluate(fixed + RESOLVE_AFTER + timedelta(minutes=minute)) for minute in range(1, 4)]

    assert (first_clear.resolved, settled.resolved, sum(r.resolved for r in later)) == (0, 1, 0)
    assert incidents() == [(IncidentKind.NEEDS_RECONNECT, False)]
    assert Incident.objects.get().resolved_at == fixed + RESOLVE_AFTER
    assert deliveries() == [("incident.opened", "email"), ("incident.resolved", "email")]


@pytest.mark.django_db
@pytest.mark.embedded
def test_needs_reconnect_stays_open_while_a_retry_is_queued(connection):
    needs_reconnect(connection)
    evaluate(NOW)

    # Sync Now on the expired connection: queued, then failing on auth again. Neither is a fix.
    started(connection, NOW + timedelta(minutes=1))
    evaluate(NOW + timedelta(minutes=2))
    evaluate(NOW + timedelta(minutes=10))

    assert incidents() == [(IncidentKind.NEEDS_RECONNECT, True)]


@pytest.mark.django_db
@pytest.mark.embedded
def test_needs_reconnect_problem_back_before_resolution_keeps_the_incident(connection):
    needs_reconnect(connection)
    evaluate(NOW)
    reconnect(connection, NOW + timedelta(minutes=1))
    evaluate(NOW + timedelta(minutes=1))  # seen clear: the wait starts

    needs_reconnect(connection, NOW + timedelta(minutes=2))
    evaluate(NOW + timedelta(minutes=3))  # back: the wait starts over
    evaluate(NOW + timedelta(minutes=7))

    incident = Incident.objects.get()
    assert (incident.resolved_at, incident.clear_since) == (None, None)
    assert deliveries() == [("incident.opened", "email")]


# --- auto-pause ------------------------------------------------------------------------------------


def auto_pause_after(workspace, limit: int | None) -> None:
    save_settings(workspace, auto_pause_after=limit)


@pytest.mark.django_db
@pytest.mark.embedded
def test_auto_pause_after_n_permanent_failures_in_a_row(make_connection, workspace):
    connection = make_connection(sync_frequency=SyncFrequency.HOURLY, now=NOW)
    auto_pause_after(workspace, 2)
    fail(connection, NOW)
    assert evaluate(NOW).paused == 0

    fail(connection, NOW + timedelta(minutes=1))
    assert evaluate(NOW + timedelta(minutes=1)).paused == 1

    connection.refresh_from_db()
    assert (connection.pause_reason, connection.next_sync_at, connection.sync_frequency) == (
        PauseReason.FAILURES,
        None,
        "hourly",
    )
    assert connection_status_view(connection, NOW).paused_label == "Paused after repeated failures"
    assert evaluate(NOW + timedelta(minutes=2)).paused == 0  # once


@pytest.mark.django_db
@pytest.mark.embedded
def test_auto_pause_counts_only_permanent_failures_and_is_off_by_default(make_connection, workspace):
    connection = make_connection(sync_frequency=SyncFrequency.HOURLY, now=NOW)
    for minute in range(4):
        fail(connection, NOW + timedelta(minutes=minute))
    assert evaluate(NOW + timedelta(minutes=4)).paused == 0  # off: no setting

    auto_pause_after(workspace, 2)
    fail(connection, NOW + timedelta(minutes=5), TransientProviderError("503"))
    assert evaluate(NOW + timedelta(minutes=6)).paused == 0  # the latest failure is not permanent

    connection.refresh_from_db()
    assert connection.paused_at is None


# --- failing ---------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_failing_alerts_at_the_third_failure_in_a_row(connection):
    times = [NOW + timedelta(minutes=minute) for minute in range(3)]
    fail(connection, times[0])
    fail(connection, times[1])

    before = evaluate(times[1])
    fail(connection, times[2])
    after = evaluate(times[2])

    assert (before.opened, after.opened) == (0, 1)
    incident = Incident.objects.get()
    assert incident.kind == IncidentKind.FAILING
    assert incident.title == "Demo ad account “Demo account 1” failed 3 syncs in a row"
    assert incident.message == (
        "The last 3 syncs of Demo ad account “Demo account 1” (demo-1) failed. Last error: Account disabled"
    )


@pytest.mark.django_db
@pytest.mark.embedded
def test_failing_a_success_breaks_the_streak(connection):
    fail(connection, NOW)
    fail(connection, NOW + timedelta(minutes=1))
    succeed(connection, NOW + timedelta(minutes=2))
    fail(connection, NOW + timedelta(minutes=3))
    fail(connection, NOW + timedelta(minutes=4))

    assert evaluate(NOW + timedelta(minutes=5)).opened == 0


@pytest.mark.django_db
@pytest.mark.embedded
def test_failing_threshold_is_the_workspace_setting(connection, workspace):
    save_settings(workspace, failure_threshold=5)
    for minute in range(4):
        fail(connection, NOW + timedelta(minutes=minute))
    at_four = evaluate(NOW + timedelta(minutes=4))
    fail(connection, NOW + timedelta(minutes=5))
    at_five = evaluate(NOW + timedelta(minutes=5))

    assert (at_four.opened, at_five.opened) == (0, 1)
    assert Incident.objects.get().title == "Demo ad account “Demo account 1” failed 5 syncs in a row"


@pytest.mark.django_db
@pytest.mark.embedded
def test_failing_retries_count_once_and_rate_limits_not_at_all(connection):
    # One job retried twice (retrying, retrying, error), then a throttled attempt, then one failure.
    job = started(connection, NOW)
    sync_requeue_for_retry(started=job, error=TransientProviderError("timeout"), now=NOW)
    retry = sync_start(connection_id=connection.pk, job_id=job.job_id, now=NOW + timedelta(seconds=5))
    assert retry is not None
    sync_requeue_for_retry(started=retry, error=TransientProviderError("timeout"), now=NOW + timedelta(seconds=5))
    last = sync_start(connection_id=connection.pk, job_id=job.job_id, now=NOW + timedelta(seconds=15))
    assert last is not None
    sync_fail(started=last, error=TransientProviderError("timeout"), now=NOW + timedelta(seconds=15))
    throttled = started(connection, NOW + timedelta(minutes=1))
    sync_defer(
        started=throttled,
        until=NOW + timedelta(minutes=5),
        error=ThrottledError("slow down"),
        now=NOW + timedelta(minutes=1),
    )
    fail(connection, NOW + timedelta(minutes=6))

    assert evaluate(NOW + timedelta(minutes=7)).opened == 0  # two failed jobs, not four failures


@pytest.mark.django_db
@pytest.mark.embedded
def test_failing_that_flaps_alerts_once_and_resolves_once_it_settles(connection):
    for minute in range(3):
        fail(connection, NOW + timedelta(minutes=minute))
    evaluate(NOW + timedelta(minutes=3))

    # Success, failure, success... each seen by an evaluation: never quiet for RESOLVE_AFTER.
    minute = 4
    for _ in range(4):
        succeed(connection, NOW + timedelta(minutes=minute))
        evaluate(NOW + timedelta(minutes=minute, seconds=30))
        fail(connection, NOW + timedelta(minutes=minute + 1))
        evaluate(NOW + timedelta(minutes=minute + 1, seconds=30))
        minute += 2
    # A failure between two evaluations that both see a success also starts the wait over.
    succeed(connection, NOW + timedelta(minutes=minute))
    evaluate(NOW + timedelta(minutes=minute, seconds=10))
    fail(connection, NOW + timedelta(minutes=minute, seconds=20))
    succeed(connection, NOW + timedelta(minutes=minute, seconds=30))
    evaluate(NOW + timedelta(minutes=minute + 5, seconds=11))
    assert incidents() == [(IncidentKind.FAILING, True)]

    quiet = evaluate(NOW + timedelta(minutes=minute + 10, seconds=40))

    assert quiet.resolved == 1
    assert incidents() == [(IncidentKind.FAILING, False)]
    assert deliveries() == [("incident.opened", "email"), ("incident.resolved", "email")]


# --- stale ---------------------------------------------------------------------------------------------


@pytest.fixture
def realtime(make_connection) -> Connection:
    """A realtime connection whose last sync completed at NOW; its next slot is NOW + 30 s."""
    connection = make_connection(sync_frequency=SyncFrequency.REALTIME, now=NOW)
    succeed(connection, NOW)
    connection.refresh_from_db()
    assert connection.next_sync_at == NOW + timedelta(seconds=30)
    return connection


# 3 intervals of 30 s plus the Settings page's 15 s of grace.
REALTIME_STALE_AFTER = timedelta(seconds=105)


@pytest.mark.django_db
@pytest.mark.embedded
def test_stale_when_no_sync_completes_for_three_intervals(realtime):
    # Nothing dispatches it (the scheduler is down): its slot passes and nothing completes.
    on_the_edge = evaluate(NOW + REALTIME_STALE_AFTER)
    past_it = evaluate(NOW + REALTIME_STALE_AFTER + timedelta(seconds=1))
    again = evaluate(NOW + REALTIME_STALE_AFTER + timedelta(minutes=5))

    assert (on_the_edge.opened, past_it.opened, again.opened) == (0, 1, 0)
    incident = Incident.objects.get()
    assert (incident.kind, incident.title) == (IncidentKind.STALE, "Demo ad account “Demo account 1” is stale")
    assert incident.message.startswith(
        "Demo ad account “Demo account 1” (demo-1) is scheduled to sync realtime (every 30s), but its last "
        "completed sync was 1 min ago, at 2026-11-28 12:00 UTC."
    )


@pytest.mark.django_db
@pytest.mark.embedded
def test_stale_is_not_alerted_per_connection_while_the_engine_is_down(realtime):
    # No scheduler tick and no sync worker: every scheduled connection goes stale at once; the
    # banner names that one problem, so no storm of per-connection alerts.
    assert evaluate(NOW + timedelta(minutes=5), engine_running=False).opened == 0
    assert incidents() == []
    assert evaluate(NOW + timedelta(minutes=6)).opened == 1  # the engine runs, the connection still stale


@pytest.mark.django_db
@pytest.mark.embedded
def test_stale_resolves_after_syncs_complete_again(realtime):
    evaluate(NOW + timedelta(minutes=3))
    back = NOW + timedelta(minutes=10)

    # Syncing every 30 s again, evaluated every minute.
    results = []
    for step in range(11):
        succeed(realtime, back + step * timedelta(seconds=30))
        if step % 2 == 0:
            results.append(evaluate(back + step * timedelta(seconds=30)))

    assert [r.resolved for r in results] == [0, 0, 0, 0, 0, 1]
    assert incidents() == [(IncidentKind.STALE, False)]


@pytest.mark.django_db
@pytest.mark.embedded
def test_stale_multiplier_is_the_workspace_setting(realtime, workspace):
    save_settings(workspace, stale_multiplier=10)

    assert evaluate(NOW + timedelta(seconds=200)).opened == 0
    assert evaluate(NOW + timedelta(seconds=316)).opened == 1  # 10 x 30 s + 15 s


@pytest.mark.django_db
@pytest.mark.embedded
def test_stale_not_while_the_platform_throttles_it(realtime):
    # Throttled for an hour: shown as "Rate limited — resumes …", and it resumes by itself.
    throttled = started(realtime, NOW + timedelta(seconds=30))
    sync_defer(
        started=throttled,
        until=NOW + timedelta(hours=1),
        error=ThrottledError("slow down"),
        now=NOW + timedelta(seconds=31),
    )

    assert evaluate(NOW + timedelta(minutes=30)).opened == 0


@pytest.mark.django_db
@pytest.mark.embedded
def test_stale_not_for_a_manual_connection(connection):
    succeed(connection, NOW)

    assert evaluate(NOW + timedelta(days=30)).opened == 0


@pytest.mark.django_db
@pytest.mark.embedded
def test_stale_not_alerted_again_for_a_connection_that_needs_reconnecting(realtime):
    needs_reconnect(realtime, NOW + timedelta(seconds=30))

    evaluate(NOW + timedelta(seconds=31))
    evaluate(NOW + timedelta(hours=2))

    assert incidents() == [(IncidentKind.NEEDS_RECONNECT, True)]


# --- concurrent evaluators ------------------------------------------------------------------------------


# PostgreSQL only: the SQLite test database is in memory, where concurrent writers fail at once
# ("table is locked") instead of waiting as the embedded mode's file database does.
@pytest.mark.django_db(transaction=True)
def test_concurrent_evaluators_alert_once_and_resolve_once(connection, broker):
    needs_reconnect(connection)

    opened = run_concurrently(lambda: evaluate(NOW).opened, times=4)
    send_all(NOW)
    reconnect(connection, NOW + timedelta(minutes=1))
    run_concurrently(lambda: evaluate(NOW + timedelta(minutes=1)), times=4)
    resolved = run_concurrently(lambda: evaluate(NOW + timedelta(minutes=1) + RESOLVE_AFTER).resolved, times=4)

    assert (sum(opened), sum(resolved)) == (1, 1)
    assert incidents() == [(IncidentKind.NEEDS_RECONNECT, False)]
    assert deliveries() == [("incident.opened", "email"), ("incident.resolved", "email")]
    assert broker.llen(settings.ALERTS_QUEUE) == 2  # one message per delivery, sent by the winners only


# --- email -------------------------------------------------------------------------------------------


def send_all(now) -> list[str | None]:
    return [
        delivery_send(delivery_id=pk, now=now).status
        for pk in Delivery.objects.order_by("id").values_list("pk", flat=True)
    ]


@pytest.mark.django_db
@pytest.mark.embedded
def test_email_goes_to_the_members_then_resolved(connection):
    needs_reconnect(connection)
    evaluate(NOW)

    assert send_all(NOW) == [DeliveryStatus.DELIVERED]
    (opened,) = mail.outbox
    assert opened.subject == "[AdSync] Demo ad account “Demo account 1” needs reconnecting"
    assert opened.to == ["alice@example.com", "bob@example.com"]
    assert opened.from_email == settings.DEFAULT_FROM_EMAIL
    assert opened.body.splitlines()[:6] == [
        "AdSync can no longer reach Demo ad account “Demo account 1” (demo-1): Demo access expired — reconnect "
        "the account. Its scheduled syncs are paused until someone reconnects the account on the Settings page.",
        "",
        "Account: Demo account 1 (demo demo-1)",
        "Workspace: Alice's Agency",
        "Opened: 2026-11-28 12:00 UTC",
        f"Open AdSync: {settings.ALERTS_BASE_URL}/settings#connection-{connection.public_id}",
    ]

    reconnect(connection, NOW + timedelta(minutes=1))
    evaluate(NOW + timedelta(minutes=1))
    evaluate(NOW + timedelta(minutes=1) + RESOLVE_AFTER)
    send_all(NOW + timedelta(minutes=7))

    assert [m.subject for m in mail.outbox] == [
        "[AdSync] Demo ad account “Demo account 1” needs reconnecting",
        "[AdSync] Resolved: Demo ad account “Demo account 1” needs reconnecting",
    ]
    assert "Resolved: 2026-11-28 12:06 UTC" in mail.outbox[1].body.splitlines()
    delivered = Delivery.objects.values_list("status", "attempts", "target").order_by("id")
    assert list(delivered) == [("delivered", 1, "alice@example.com, bob@example.com")] * 2


@pytest.mark.django_db
@pytest.mark.embedded
def test_email_to_the_recipients_set_or_not_at_all(make_connection, workspace):
    connection = make_connection()
    save = dict(workspace=workspace, webhook_url="", failure_threshold=3, stale_multiplier=3)
    alert_settings_save(email_enabled=True, email_recipients=["ops@example.com"], **save)
    needs_reconnect(connection)
    evaluate(NOW)
    send_all(NOW)
    alert_settings_save(email_enabled=False, email_recipients=[], **save)
    other = make_connection()
    needs_reconnect(other)
    evaluate(NOW + timedelta(minutes=1))

    assert [m.to for m in mail.outbox] == [["ops@example.com"]]
    assert Incident.objects.count() == 2
    assert Delivery.objects.count() == 1  # the second incident had no channel on


@pytest.mark.django_db
@pytest.mark.embedded
def test_email_server_down_retries_with_backoff_then_fails(connection, settings):
    import socket

    with socket.socket() as probe:  # a port nothing listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    settings.ALERTS_DELIVERY_MAX_ATTEMPTS = 3
    needs_reconnect(connection)
    evaluate(NOW)
    pk = Delivery.objects.get().pk

    first = delivery_send(delivery_id=pk, now=NOW)
    too_early = delivery_send(delivery_id=pk, now=NOW + timedelta(seconds=9))
    second = delivery_send(delivery_id=pk, now=NOW + timedelta(seconds=10))
    third = delivery_send(delivery_id=pk, now=NOW + timedelta(seconds=30))

    assert [(a.status, a.retry_in) for a in (first, too_early, second, third)] == [
        ("retrying", 10.0),
        (None, None),
        ("retrying", 20.0),
        ("failed", None),
    ]
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("failed", 3, None)
    assert delivery.last_error.startswith("Mail server error: ConnectionRefusedError")
    assert mail.outbox == []


@pytest.mark.django_db
@pytest.mark.embedded
def test_email_subject_stays_one_line_whatever_the_account_is_named(make_connection):
    connection = make_connection(name="Shoes\nBcc: everyone@example.com")
    needs_reconnect(connection)
    evaluate(NOW)

    assert send_all(NOW) == [DeliveryStatus.DELIVERED]
    assert mail.outbox[0].subject == "[AdSync] Demo ad account “Shoes Bcc: everyone@example.com” needs reconnecting"
    assert mail.outbox[0].to == ["alice@example.com", "bob@example.com"]


# --- the settings page ------------------------------------------------------------------------------

PAGE = "/settings/alerts"


def save_data(workspace, **fields) -> dict:
    data = {
        "workspace": str(workspace.public_id),
        "action": "save",
        "email_enabled": "on",
        "email_recipients": "",
        "webhook_url": "",
        "failure_threshold": "3",
        "stale_multiplier": "3",
    }
    data.update(fields)
    return {key: value for key, value in data.items() if value is not None}


def section(doc, workspace):
    return doc.one("section", id=f"workspace-{workspace.public_id}")


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize("method", ["get", "post"])
def test_page_anonymous_redirects_to_login(method):
    response = getattr(Client(), method)(PAGE)

    assert (response.status_code, response["Location"]) == (302, f"/login/?next={PAGE}")


@pytest.mark.django_db
@pytest.mark.embedded
def test_page_shows_only_the_users_workspaces_with_their_settings(owner, workspace, other_workspace):
    doc = parse(signed_in(owner).get(PAGE).content)

    assert [s.one("h2").text() for s in doc.find_all("section", class_="alerts-workspace")] == ["Alice's Agency"]
    form = section(doc, workspace).one("form", class_="alerts-form")
    assert form.one("input", name="email_enabled").attrs.get("checked") == ""
    assert form.one("input", name="failure_threshold").attrs["value"] == "3"
    assert form.one("input", name="stale_multiplier").attrs["value"] == "3"
    assert "Now: alice@example.com, bob@example.com." in section(doc, workspace).text()


@pytest.mark.django_db
@pytest.mark.embedded
def test_page_saves_and_redirects_back(teammate, workspace):
    response = signed_in(teammate).post(
        PAGE,
        save_data(
            workspace,
            email_enabled=None,
            email_recipients="ops@example.com\nOPS@example.com, cto@example.com",
            failure_threshold="5",
            stale_multiplier="4",
        ),
    )

    assert (response.status_code, response["Location"]) == (302, f"{PAGE}#workspace-{workspace.public_id}")
    saved = AlertSettings.objects.get(workspace=workspace)
    assert (saved.email_enabled, saved.email_recipients, saved.webhook_url) == (
        False,
        ["ops@example.com", "cto@example.com"],
        "",
    )
    assert (saved.failure_threshold, saved.stale_multiplier, saved.webhook_secret) == (5, 4, {})


@pytest.mark.django_db
@pytest.mark.embedded
def test_page_foreign_workspace_is_404_and_changes_nothing(outsider, workspace):
    client = signed_in(outsider)

    foreign = client.post(PAGE, save_data(workspace, failure_threshold="9"))
    rotate = client.post(PAGE, {"workspace": str(workspace.public_id), "action": "rotate_secret"})
    malformed = client.post(PAGE, {**save_data(workspace), "workspace": "not-a-uuid"})

    assert (foreign.status_code, rotate.status_code, malformed.status_code) == (404, 404, 404)
    assert AlertSettings.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.embedded
def test_page_invalid_values_answer_400_with_each_error(owner, workspace):
    response = signed_in(owner).post(
        PAGE,
        save_data(
            workspace,
            email_recipients="ops@example.com, bob@, nobody",
            webhook_url="ftp://example.com/hook",
            failure_threshold="0",
            stale_multiplier="",
        ),
    )

    assert response.status_code == 400
    doc = parse(response.content)
    errors = {
        ul.attrs["id"].split("_", 2)[2].removesuffix("_error"): ul.text()
        for ul in section(doc, workspace).find_all("ul", class_="errorlist")
    }
    assert errors == {
        "email_recipients": "Not an email address: “bob@”, “nobody”.",
        "webhook_url": "Enter a full http:// or https:// URL, such as https://example.com/adsync-alerts.",
        "failure_threshold": "Ensure this value is greater than or equal to 1.",
        "stale_multiplier": "Enter after how many intervals without a completed sync to alert.",
    }
    assert page_messages(doc) == [
        ("message message-error", "Alice's Agency: the alert settings were not saved; see below.")
    ]
    # What was typed is kept, and nothing was saved.
    assert section(doc, workspace).one("input", name="webhook_url").attrs["value"] == "ftp://example.com/hook"
    assert AlertSettings.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.embedded
def test_page_webhook_secret_is_shown_once_and_rotates(owner, workspace):
    client = signed_in(owner)

    added = client.post(PAGE, save_data(workspace, webhook_url="https://hooks.example.com/adsync"))
    secret = section(parse(added.content), workspace).one("code", class_="secret").text()
    saved_again = client.post(PAGE, save_data(workspace, webhook_url="https://hooks.example.com/adsync"))
    page = client.get(PAGE)
    rotated = client.post(PAGE, {"workspace": str(workspace.public_id), "action": "rotate_secret"})
    new_secret = section(parse(rotated.content), workspace).one("code", class_="secret").text()

    assert (added.status_code, added["Cache-Control"]) == (200, "no-store")
    assert (secret[:6], len(secret)) == ("whsec_", 49)
    assert saved_again.status_code == 302  # the secret exists: not shown again
    assert secret.encode() not in page.content
    assert (rotated.status_code, rotated["Cache-Control"]) == (200, "no-store")
    assert new_secret[:6] == "whsec_"
    assert new_secret != secret
    assert AlertSettings.objects.get().signing_secret == new_secret
    # Encrypted at rest: the column holds a Fernet token, not the secret.
    assert "whsec_" not in _raw_column()


def _raw_column() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT webhook_secret FROM alert_settings")
        return cursor.fetchone()[0]


@pytest.mark.django_db
@pytest.mark.embedded
def test_page_removing_the_webhook_forgets_its_secret(owner, workspace):
    client = signed_in(owner)
    client.post(PAGE, save_data(workspace, webhook_url="https://hooks.example.com/adsync"))

    # An empty field keeps the webhook (its URL is never shown again); "Remove the webhook" removes it.
    client.post(PAGE, save_data(workspace, webhook_url=""), follow=True)
    kept = AlertSettings.objects.get()
    assert (kept.webhook_url, kept.webhook_host) == ("https://hooks.example.com/adsync", "https://hooks.example.com")
    page = client.get(PAGE).content.decode()
    assert "hooks.example.com/adsync" not in page
    assert "https://hooks.example.com/…" in page
    client.post(PAGE, save_data(workspace, webhook_url="", remove_webhook="on"), follow=True)
    rotate = client.post(PAGE, {"workspace": str(workspace.public_id), "action": "rotate_secret"}, follow=True)

    assert AlertSettings.objects.get().webhook_secret == {}
    assert page_messages(parse(rotate.content)) == [
        ("message message-error", "Alice's Agency: Set a webhook URL first: the signing secret belongs to the webhook.")
    ]


@pytest.mark.django_db
@pytest.mark.embedded
def test_page_csrf_enforced(owner, workspace):
    client = signed_in(owner, enforce_csrf_checks=True)
    form = section(parse(client.get(PAGE).content), workspace).one("form", class_="alerts-form")
    token = form.one("input", name="csrfmiddlewaretoken").attrs["value"]

    refused = client.post(PAGE, save_data(workspace, failure_threshold="4"))
    accepted = client.post(PAGE, {**save_data(workspace, failure_threshold="4"), "csrfmiddlewaretoken": token})

    assert (refused.status_code, accepted.status_code) == (403, 302)
    assert AlertSettings.objects.get().failure_threshold == 4


@pytest.mark.django_db
@pytest.mark.embedded
def test_page_lists_recent_alerts_with_their_deliveries(owner, workspace, connection):
    needs_reconnect(connection)
    evaluate(NOW)
    send_all(NOW)

    rows = section(parse(signed_in(owner).get(PAGE).content), workspace).one("table", class_="incidents").find_all("tr")

    assert [[cell.text() for cell in row.find_all("td")] for row in rows[1:]] == [
        [
            "Demo ad account “Demo account 1” needs reconnecting",
            "2026-11-28 12:00 UTC",
            "Open",
            "Opened by email: delivered",
        ]
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("count", [1, 3])
def test_page_query_count_does_not_grow_with_incidents(
    owner, workspace, make_connection, django_assert_num_queries, count
):
    for _ in range(count):
        needs_reconnect(make_connection())
    evaluate(NOW)
    client = signed_in(owner)
    client.get(PAGE)  # the session's first queries

    # session, user, workspaces, settings, member emails, incidents, deliveries
    with django_assert_num_queries(7):
        assert client.get(PAGE).status_code == 200


# --- admin ----------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("alerts/incident/", "Demo ad account “Demo account 1” needs reconnecting"),
        ("alerts/delivery/", "Demo ad account “Demo account 1” needs reconnecting"),
        ("alerts/alertsettings/", "Alice's Agency"),
    ],
)
def test_admin_lists_are_read_only(admin_user, connection, workspace, path, shown):
    save_settings(workspace)
    needs_reconnect(connection)
    evaluate(NOW)
    client = signed_in(admin_user)

    listing = client.get(f"/admin/{path}")
    add = client.get(f"/admin/{path}add/")

    assert (listing.status_code, add.status_code) == (200, 403)
    assert shown in parse(listing.content).one("table", id="result_list").text()
