"""The admin (connections/admin.py, syncing/admin.py), through Django's test client, with frozen time."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.test import Client

from connections.models import Connection
from syncing.models import DailyMetric, SyncRun
from syncing.providers.base import PermanentError
from syncing.services import connection_enqueue_sync, sync_fail, sync_finish
from tests.pages import (
    NOW,
    QUEUE_DOWN,
    Node,
    card,
    parse,
    settings_page,
    signed_in,
    started,
    status_fields,
    update,
)
from tests.test_state_machine import some_rows

CHANGELIST = "/admin/connections/connection/"


def changelist_rows(response) -> list[dict[str, str]]:
    """The changelist table as [{"name": ..., "provider": ..., ...}], keyed by field-<name> class."""
    assert response.status_code == 200
    tables = parse(response.content).find_all("table", id="result_list")
    if not tables:  # the admin shows no table at all for no results
        return []
    table = tables[0]
    rows = []
    for tr in table.one("tbody").find_all("tr"):
        cells = {}
        for cell in tr.children:
            if isinstance(cell, Node):
                fields = [c[len("field-") :] for c in cell.attrs.get("class", "").split() if c.startswith("field-")]
                if fields:
                    cells[fields[0]] = cell.text()
        rows.append(cells)
    return rows


@pytest.fixture
def admin_rows(make_connection):
    """Three connections to filter: Alpha (meta, hourly, idle), Beta (google, daily, error), Gamma (demo, queued)."""
    alpha = make_connection(provider="meta", name="Alpha", sync_frequency="hourly", now=NOW)
    beta = make_connection(provider="google", name="Beta", sync_frequency="daily", now=NOW)
    gamma = make_connection(provider="demo", name="Gamma")
    sync_fail(started=started(beta, NOW - timedelta(hours=1)), error=PermanentError("no"), now=NOW)
    connection_enqueue_sync(connection=gamma, now=NOW, send=False)
    return alpha, beta, gamma


def post_action(client: Client, action: str, *connections: Connection):
    return client.post(
        CHANGELIST,
        {"action": action, "index": "0", "_selected_action": [str(c.pk) for c in connections]},
        follow=True,
    )


@pytest.mark.django_db
@pytest.mark.embedded
def test_admin_connection_changelist_columns_and_values(admin_client, make_connection):
    connection = make_connection(provider="meta", name="Shoes EU", sync_frequency="realtime", now=NOW)
    update(
        connection,
        last_sync_attempted_at=NOW - timedelta(seconds=20),
        last_sync_completed_at=NOW - timedelta(seconds=18),
        last_metrics_changed_at=NOW - timedelta(hours=3),
        total_syncs_attempted=45,
        total_syncs_with_changes=12,
    )

    with time_machine.travel(NOW, tick=False):
        response = admin_client.get(CHANGELIST)

    doc = parse(response.content)
    headers = [th.text() for th in doc.one("table", id="result_list").one("thead").find_all("th")]
    assert headers[1:] == [
        "Name",
        "Provider",
        "Workspace",
        "Sync frequency",
        "Sync status",
        "Last completed",
        "Last change",
        "Stats",
        "Freshness",
        "Next sync at",
    ]
    [row] = changelist_rows(response)
    # next_sync_at has its own tests; freshness has test_admin_freshness_column_uses_the_page_labels.
    assert {key: row[key] for key in row if key not in {"next_sync_at", "freshness"}} == {
        "name": "Shoes EU",
        "provider": "Meta",
        "workspace": "Alice's Agency",
        "sync_frequency": "Realtime",
        "sync_status": "Idle",
        "last_completed": "18 s ago",
        "last_change": "3 h ago",
        "stats": "45 attempts | 12 changes (26.7%)",
    }


@pytest.mark.django_db
@pytest.mark.embedded
def test_admin_freshness_column_uses_the_page_labels(admin_client, make_connection):
    on_time = make_connection(name="A", sync_frequency="hourly", now=NOW)
    update(on_time, last_sync_completed_at=NOW - timedelta(minutes=5))
    make_connection(name="B", sync_frequency="hourly", now=NOW)
    manual = make_connection(name="C")
    update(manual, last_sync_completed_at=NOW - timedelta(days=3))

    with time_machine.travel(NOW, tick=False):
        rows = changelist_rows(admin_client.get(CHANGELIST))

    assert [(row["name"], row["freshness"]) for row in rows] == [
        ("A", "On time"),
        ("B", "Never synced"),
        ("C", "Manual"),
    ]


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("", ["Alpha", "Beta", "Gamma"]),
        ("?sync_status__exact=error", ["Beta"]),
        ("?sync_status__exact=queued", ["Gamma"]),
        ("?sync_status__exact=idle", ["Alpha"]),
        ("?sync_frequency__exact=hourly", ["Alpha"]),
        ("?sync_frequency__exact=manual", ["Gamma"]),
        ("?provider__exact=google", ["Beta"]),
        ("?provider__exact=demo", ["Gamma"]),
        ("?q=alph", ["Alpha"]),
        ("?q=Gamma", ["Gamma"]),
        ("?q=Alice%27s", ["Alpha", "Beta", "Gamma"]),
        ("?q=nothing-like-this", []),
    ],
)
def test_admin_changelist_filters_and_search(admin_client, admin_rows, query, names):
    rows = changelist_rows(admin_client.get(CHANGELIST + query))

    assert [row["name"] for row in rows] == names


@pytest.mark.django_db
@pytest.mark.embedded
def test_admin_changelist_offers_the_filters_and_actions(admin_client, admin_rows):
    doc = parse(admin_client.get(CHANGELIST).content)

    filters = [summary.text() for summary in doc.one("nav", id="changelist-filter").find_all("summary")]
    assert filters == ["By sync status", "By sync frequency", "By provider"]
    actions = [(o.attrs["value"], o.text()) for o in doc.one("select", name="action").find_all("option")]
    assert actions[1:] == [
        ("delete_selected", "Delete selected connections"),
        ("sync_now", "Sync now"),
        ("pause", "Pause automated syncs (keeps the frequency)"),
        ("resume", "Resume automated syncs"),
        ("set_manual", "Set to manual"),
        ("reset_stuck", "Reset stuck status"),
    ]


@pytest.mark.django_db(transaction=True)
def test_admin_action_sync_now_enqueues(admin_client, admin_rows, broker):
    alpha, beta, gamma = admin_rows

    response = post_action(admin_client, "sync_now", alpha, beta, gamma)

    messages = [li.text() for li in parse(response.content).one("ul", class_="messagelist").find_all("li")]
    assert messages == ["Queued 2 sync(s); 1 already queued or running."]
    assert broker.llen("sync_jobs") == 2
    statuses = dict(Connection.objects.values_list("name", "sync_status"))
    assert statuses == {"Alpha": "queued", "Beta": "queued", "Gamma": "queued"}


@pytest.mark.django_db
@pytest.mark.embedded
def test_admin_actions_pause_and_resume_keep_the_frequency(admin_client, admin_rows):
    alpha, beta, _ = admin_rows
    before = dict(Connection.objects.values_list("name", "next_sync_at"))

    response = post_action(admin_client, "pause", alpha, beta)

    messages = [li.text() for li in parse(response.content).one("ul", class_="messagelist").find_all("li")]
    assert messages == ["Paused 2 connection(s): Sync Now still works; resume to sync on schedule."]
    values = set(Connection.objects.values_list("name", "sync_frequency", "next_sync_at", "pause_reason"))
    assert values == {("Alpha", "hourly", None, "user"), ("Beta", "daily", None, "user"), ("Gamma", "manual", None, "")}

    with time_machine.travel(NOW, tick=False):
        response = post_action(admin_client, "resume", alpha, beta)

    messages = [li.text() for li in parse(response.content).one("ul", class_="messagelist").find_all("li")]
    assert messages == ["Resumed 2 connection(s) at their frequency."]
    after = dict(Connection.objects.values_list("name", "next_sync_at"))
    # Alpha never synced: due at once; Beta's schedule is back as it was (from its last attempt).
    assert after["Alpha"] == NOW
    assert after["Beta"] == before["Beta"]
    assert not Connection.objects.filter(paused_at__isnull=False).exists()


@pytest.mark.django_db
@pytest.mark.embedded
def test_admin_action_set_manual(admin_client, admin_rows):
    alpha, beta, _ = admin_rows

    response = post_action(admin_client, "set_manual", alpha, beta)

    messages = [li.text() for li in parse(response.content).one("ul", class_="messagelist").find_all("li")]
    assert messages == ["Set 2 connection(s) to manual: they now sync only on Sync Now."]
    values = set(Connection.objects.values_list("name", "sync_frequency", "next_sync_at"))
    assert values == {("Alpha", "manual", None), ("Beta", "manual", None), ("Gamma", "manual", None)}


@pytest.mark.django_db
@pytest.mark.embedded
def test_admin_action_reset_stuck_only_touches_busy_rows(admin_client, admin_rows):
    alpha, beta, gamma = admin_rows
    alpha_before = Connection.objects.values().get(pk=alpha.pk)
    beta_before = Connection.objects.values().get(pk=beta.pk)

    response = post_action(admin_client, "reset_stuck", alpha, beta, gamma)

    messages = [li.text() for li in parse(response.content).one("ul", class_="messagelist").find_all("li")]
    assert messages == ["Reset 1 stuck connection(s)."]
    gamma = Connection.objects.get(pk=gamma.pk)
    assert (gamma.sync_status, gamma.last_sync_error, gamma.last_sync_error_kind) == (
        "error",
        "Reset by an operator; press Sync Now to try again.",
        "interrupted",
    )
    assert Connection.objects.values().get(pk=alpha.pk) == alpha_before
    assert Connection.objects.values().get(pk=beta.pk) == beta_before


@pytest.mark.django_db
@pytest.mark.embedded
def test_admin_reset_stuck_row_shows_on_settings_without_reconnect(owner, admin_client, admin_rows):
    gamma = admin_rows[2]
    post_action(admin_client, "reset_stuck", gamma)

    section = card(settings_page(signed_in(owner)), gamma)

    assert status_fields(section)["Status"] == "Error"
    assert section.one("p", class_="error-text").text() == (
        "Last sync failed: Reset by an operator; press Sync Now to try again."
    )
    assert section.find_all(class_="reconnect") == []


@pytest.fixture
def history(connection):
    run = started(connection, NOW)
    sync_finish(started=run, rows=some_rows(), api_calls=1, now=NOW + timedelta(seconds=3))
    return SyncRun.objects.get(), DailyMetric.objects.order_by("pk").first()


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize("model", ["syncrun", "dailymetric"])
def test_admin_history_is_read_only(admin_client, history, model):
    obj = history[0] if model == "syncrun" else history[1]
    base = f"/admin/syncing/{model}/"
    before = type(obj).objects.values().get(pk=obj.pk)

    changelist = admin_client.get(base)
    change = admin_client.get(f"{base}{obj.pk}/change/")

    assert changelist.status_code == 200
    doc = parse(changelist.content)
    assert doc.find_all("a", href=f"{base}add/") == []
    assert b"delete_selected" not in changelist.content
    assert change.status_code == 200
    assert parse(change.content).find_all("input", name="_save") == []
    assert admin_client.get(f"{base}add/").status_code == 403
    assert admin_client.post(f"{base}add/", {}).status_code == 403
    assert admin_client.post(f"{base}{obj.pk}/change/", {}).status_code == 403
    assert admin_client.get(f"{base}{obj.pk}/delete/").status_code == 403
    assert admin_client.post(f"{base}{obj.pk}/delete/", {"post": "yes"}).status_code == 403
    assert type(obj).objects.values().get(pk=obj.pk) == before


@pytest.mark.django_db
@pytest.mark.embedded
def test_admin_non_staff_is_sent_to_admin_login(owner, connection):
    response = signed_in(owner).get(CHANGELIST)

    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={CHANGELIST}"


@pytest.mark.django_db(transaction=True)
@pytest.mark.embedded
def test_admin_action_sync_now_broker_down_changes_nothing(admin_client, admin_rows, broker_down):
    alpha = admin_rows[0]
    before = Connection.objects.values().get(pk=alpha.pk)

    response = post_action(admin_client, "sync_now", alpha)

    messages = [li.text() for li in parse(response.content).one("ul", class_="messagelist").find_all("li")]
    assert messages == [f"{QUEUE_DOWN} 1 connection(s) were not queued."]
    assert Connection.objects.values().get(pk=alpha.pk) == before


@pytest.mark.django_db
@pytest.mark.embedded
def test_admin_add_connection_appears_on_settings(admin_client, owner, workspace):
    response = admin_client.post(
        "/admin/connections/connection/add/",
        {
            "workspace": str(workspace.pk),
            "provider": "meta",
            "external_account_id": "act_42",
            "name": "Added by admin",
            "currency": "EUR",
            "timezone": "Europe/Paris",
            "lookback_days": "",
            "provider_options": "{}",
            "sync_frequency": "manual",
        },
    )

    assert response.status_code == 302, parse(response.content).one("form").text()
    added = Connection.objects.get(name="Added by admin")
    assert (added.sync_frequency, added.sync_status, added.next_sync_at) == ("manual", "idle", None)
    section = card(settings_page(signed_in(owner)), added)
    assert section.one("span", class_="provider").text() == "Meta"
    assert status_fields(section)["Next sync"] == "manual"


@pytest.mark.django_db
@pytest.mark.embedded
def test_admin_change_saves_only_the_edited_fields(admin_client, make_connection):
    from syncing.services import connection_enqueue_sync, sync_finish, sync_start

    connection = make_connection(name="Before", sync_frequency="realtime", now=NOW)
    page = admin_client.get(f"/admin/connections/connection/{connection.pk}/change/")
    assert page.status_code == 200
    # The worker runs a whole sync while the page is open.
    job = connection_enqueue_sync(connection=connection, now=NOW, send=False)
    started = sync_start(connection_id=connection.pk, job_id=job.job_id, now=NOW)
    sync_finish(started=started, rows=[], api_calls=1, now=NOW + timedelta(seconds=1))

    response = admin_client.post(
        f"/admin/connections/connection/{connection.pk}/change/",
        {
            "workspace": str(connection.workspace_id),
            "provider": "demo",
            "external_account_id": connection.external_account_id,
            "name": "After",
            "currency": "USD",
            "timezone": "UTC",
            "lookback_days": "",
            "provider_options": "{}",
            "meta_access_token": "",
        },
    )

    assert response.status_code == 302
    connection.refresh_from_db()
    assert connection.name == "After"
    # The sync's results were not written over with the state the page was opened with.
    assert (connection.sync_status, connection.total_syncs_attempted) == ("idle", 1)
    assert connection.last_sync_completed_at == NOW + timedelta(seconds=1)
