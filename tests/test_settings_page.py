"""The Settings page and sign-in, through Django's test client, with frozen time.

Sign-in and sign-out, the page and its controls, the status block (connections/status.py as the
page renders it) and isolation between workspaces. The forms' POST views and /settings/status
are in test_settings_forms; the admin is in test_admin.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.test import Client

from connections.models import Connection, SyncFrequency
from connections.services import connection_create
from syncing.providers.base import AuthError, PermanentError, ThrottledError
from syncing.services import connection_enqueue_sync, sync_defer, sync_fail, sync_finish
from tests.pages import (
    JSON,
    NOW,
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
from tests.test_state_machine import some_rows


def status_at(user, connection: Connection, now: datetime = NOW) -> dict[str, str]:
    with time_machine.travel(now, tick=False):
        return status_fields(card(settings_page(signed_in(user)), connection))


# --- sign-in and sign-out ---------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize("url", ["/settings", "/settings/status"])
def test_settings_anonymous_redirects_to_login(url):
    response = Client().get(url)

    assert response.status_code == 302
    assert response["Location"] == f"/login/?next={url}"


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize("endpoint", ["frequency", "sync-now"])
def test_post_endpoints_anonymous_redirects_to_login_and_changes_nothing(connection, endpoint):
    before = Connection.objects.values().get(pk=connection.pk)
    url = f"/settings/connections/{connection.public_id}/{endpoint}"

    response = Client().post(url, {"sync_frequency": "hourly"})

    assert response.status_code == 302
    assert response["Location"] == f"/login/?next={url}"
    assert Connection.objects.values().get(pk=connection.pk) == before


@pytest.mark.django_db
@pytest.mark.embedded
def test_root_redirects_to_settings():
    response = Client().get("/")

    assert response.status_code == 302
    assert response["Location"] == "/settings"


@pytest.mark.django_db
@pytest.mark.embedded
def test_login_form_signs_in_and_lands_on_settings(owner):
    client = Client(enforce_csrf_checks=True)
    redirect = client.get("/settings")
    login_page = client.get(redirect["Location"])
    form = parse(login_page.content).one("form", action="/login/")

    assert login_page.status_code == 200
    assert form.attrs["method"] == "post"
    fields = form_fields(form)
    assert fields["next"] == "/settings"
    assert fields["csrfmiddlewaretoken"]
    assert parse(login_page.content).one("label", **{"for": "id_username"}).text() == "Username"

    response = client.post("/login/", {**fields, "username": "alice", "password": "password"})

    assert response.status_code == 302
    assert response["Location"] == "/settings"
    doc = settings_page(client)
    assert doc.one("span", class_="who").text() == "alice"
    assert doc.one("h1").text() == "Settings"


@pytest.mark.django_db
@pytest.mark.embedded
def test_login_without_next_lands_on_settings(owner):
    doc = parse(Client().get("/login/").content)
    assert form_fields(doc.one("form"))["next"] == "/settings"

    response = Client().post("/login/", {"username": "alice", "password": "password"})

    assert response.status_code == 302
    assert response["Location"] == "/settings"


@pytest.mark.django_db
@pytest.mark.embedded
def test_login_with_offsite_next_lands_on_settings(owner):
    response = Client().post(
        "/login/", {"username": "alice", "password": "password", "next": "https://evil.example/steal"}
    )

    assert response.status_code == 302
    assert response["Location"] == "/settings"


@pytest.mark.django_db
@pytest.mark.embedded
def test_login_wrong_password_shows_error(owner):
    client = Client()

    response = client.post("/login/", {"username": "alice", "password": "wrong", "next": "/settings"})

    assert response.status_code == 200
    doc = parse(response.content)
    assert doc.one("p", role="alert").text() == "Your username and password didn't match. Please try again."
    assert form_fields(doc.one("form"))["username"] == "alice"
    assert client.get("/settings").status_code == 302


@pytest.mark.django_db
@pytest.mark.embedded
def test_logout_post_lands_on_login(owner):
    client = signed_in(owner)
    form = settings_page(client).one("form", action="/logout/")
    assert form.one("button").text() == "Sign out"

    response = client.post("/logout/")

    assert response.status_code == 302
    assert response["Location"] == "/login/"
    assert client.get("/settings")["Location"] == "/login/?next=/settings"


@pytest.mark.django_db
@pytest.mark.embedded
def test_logout_get_is_405_and_keeps_the_session(owner):
    client = signed_in(owner)

    assert client.get("/logout/").status_code == 405
    assert client.get("/settings").status_code == 200


@pytest.mark.django_db
@pytest.mark.embedded
def test_topbar_admin_link_only_for_staff(owner, admin_user):
    owner_nav = settings_page(signed_in(owner)).one("nav", class_="topbar-nav")
    staff_nav = settings_page(signed_in(admin_user)).one("nav", class_="topbar-nav")

    assert [a.text() for a in owner_nav.find_all("a")] == ["API"]
    assert [(a.text(), a.attrs["href"]) for a in staff_nav.find_all("a")] == [
        ("Admin", "/admin/"),
        ("API", "/api/docs/"),
    ]


# --- the page: connections, controls -------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_settings_shows_name_provider_and_account_of_each_connection(owner, make_connection):
    meta = make_connection(provider="meta", external_account_id="act_1234", name="Shoes EU")
    google = make_connection(provider="google", external_account_id="123-456-7890", name="Shoes US")
    demo = make_connection(provider="demo", external_account_id="demo-9", name="Sandbox")

    doc = settings_page(signed_in(owner))

    seen = {
        (
            card(doc, c).one("h2").text(),
            card(doc, c).one("span", class_="provider").text(),
            card(doc, c).one("span", class_="account-id").text(),
        )
        for c in (meta, google, demo)
    }
    assert seen == {
        ("Shoes EU", "Meta", "Account act_1234"),
        ("Shoes US", "Google", "Account 123-456-7890"),
        ("Sandbox", "Demo", "Account demo-9"),
    }
    assert [h2.text() for h2 in doc.find_all("h2")] == ["Sandbox", "Shoes EU", "Shoes US"]
    assert card(doc, demo).one("span", class_="hint").text() == "Demo data, no real ad platform"
    assert card(doc, meta).find_all("span", class_="hint") == []


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize("frequency", SyncFrequency.values)
def test_settings_frequency_dropdown_has_five_choices_with_current_selected(owner, make_connection, frequency):
    connection = make_connection(sync_frequency=frequency)

    form = card(settings_page(signed_in(owner)), connection).one("form", class_="frequency-form")

    select = form.one("select")
    options = [(o.attrs["value"], o.text()) for o in select.find_all("option")]
    assert options == [
        ("manual", "Manual"),
        ("realtime", "Realtime"),
        ("30min", "Every 30 min"),
        ("hourly", "Hourly"),
        ("daily", "Daily"),
    ]
    assert [o.attrs["value"] for o in select.find_all("option") if "selected" in o.attrs] == [frequency]
    assert select.attrs["name"] == "sync_frequency"
    label = form.one("label")
    assert label.attrs["for"] == select.attrs["id"] == f"frequency-{connection.public_id}"
    assert label.text() == "Sync frequency"


@pytest.mark.django_db
@pytest.mark.embedded
def test_settings_forms_post_to_the_connection_urls(owner, connection):
    section = card(settings_page(signed_in(owner)), connection)

    frequency_form = section.one("form", class_="frequency-form")
    sync_form = section.one("form", class_="sync-form")
    assert (frequency_form.attrs["method"], frequency_form.attrs["action"]) == ("post", frequency_url(connection))
    assert (sync_form.attrs["method"], sync_form.attrs["action"]) == ("post", sync_now_url(connection))
    assert frequency_form.one("button", type="submit").text() == "Save"
    # Sync Now, with Pause and Resume (one shown at a time) posting to their own URLs.
    assert [(b.text(), b.attrs.get("formaction"), "hidden" in b.attrs) for b in sync_form.find_all("button")] == [
        ("Sync Now", None, False),
        ("Pause", f"/settings/connections/{connection.public_id}/pause", False),
        ("Resume", f"/settings/connections/{connection.public_id}/resume", True),
    ]
    assert "data-async" in frequency_form.attrs
    assert "data-async" in sync_form.attrs
    assert form_fields(frequency_form)["csrfmiddlewaretoken"]
    assert form_fields(sync_form)["csrfmiddlewaretoken"]


@pytest.mark.django_db
@pytest.mark.embedded
def test_settings_page_loads_script_and_polls_the_status_url(owner, connection):
    doc = settings_page(signed_in(owner))

    scripts = doc.find_all("script")
    assert [(s.attrs["src"], "defer" in s.attrs, s.text()) for s in scripts] == [("/static/js/settings.js", True, "")]
    assert [link.attrs["href"] for link in doc.find_all("link", rel="stylesheet")] == [
        "/static/css/app.css",
        "/static/css/engine-banner.css",
    ]
    root = doc.one("div", class_="connections")
    assert root.attrs["data-status-url"] == "/settings/status"
    assert root.attrs["data-busy"] == "false"
    # No inline CSS either.
    assert doc.find_all("style") == []
    assert [n.tag for n in doc.iter() if "style" in n.attrs] == []


@pytest.mark.django_db
@pytest.mark.embedded
def test_settings_empty_state_for_user_without_connections(outsider):
    doc = settings_page(signed_in(outsider))

    empty = doc.one("section", class_="empty")
    assert empty.one("h2").text() == "No connected ad accounts yet"
    # What to do first: connect an account; demo data only as the command that adds it to *this* login.
    assert [form.one("button").text() for form in empty.find_all("form", class_="connect-form")] == [
        "Connect Meta account",
        "Connect Google Ads account",
    ]
    assert empty.one("code").text() == "python manage.py seed_demo --username charlie"
    # Not staff: no admin link.
    assert empty.find_all("a") == []
    assert doc.find_all("div", class_="connections") == []
    assert doc.find_all("section", class_="connection") == []


@pytest.mark.django_db
@pytest.mark.embedded
def test_settings_teammate_sees_the_workspace_connections(teammate, connection):
    doc = settings_page(signed_in(teammate))

    assert card(doc, connection).one("h2").text() == "Demo account 1"


@pytest.mark.django_db
@pytest.mark.embedded
def test_settings_csrf_enforced_form_round_trip(owner, connection):
    client = signed_in(owner, enforce_csrf_checks=True)
    form = card(settings_page(client), connection).one("form", class_="frequency-form")

    refused = client.post(form.attrs["action"], {"sync_frequency": "daily"})
    response = client.post(form.attrs["action"], {**form_fields(form), "sync_frequency": "daily"})

    assert refused.status_code == 403
    assert response.status_code == 302
    assert Connection.objects.get(pk=connection.pk).sync_frequency == "daily"


# --- the status block ------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_status_never_synced_connection(owner, connection):
    assert status_at(owner, connection) == {
        "Frequency": "Manual",
        "Status": "Idle",
        "Last attempted": "never",
        "Last completed": "never",
        "Last change": "never",
        "Next sync": "manual",
        "Stats": "0 attempts",
        "Freshness": "Never synced",
    }


@pytest.mark.django_db
@pytest.mark.embedded
def test_status_spec_example(owner, make_connection):
    connection = make_connection(sync_frequency="realtime")
    update(
        connection,
        last_sync_attempted_at=datetime(2025, 11, 14, 13, 10, 58, tzinfo=UTC),
        last_sync_completed_at=datetime(2025, 11, 14, 13, 11, 1, tzinfo=UTC),
        last_metrics_changed_at=datetime(2025, 11, 14, 12, 45, tzinfo=UTC),
        next_sync_at=datetime(2025, 11, 14, 13, 11, 28, tzinfo=UTC),
        total_syncs_attempted=45,
        total_syncs_with_changes=12,
    )

    assert status_at(owner, connection, datetime(2025, 11, 14, 13, 11, 10, tzinfo=UTC)) == {
        "Frequency": "Realtime (every 30s)",
        "Status": "Idle",
        "Last attempted": "12 s ago",
        "Last completed": "just now",
        "Last change": "26 min ago",
        "Next sync": "in 18 s",
        "Stats": "45 attempts | 12 changes (26.7%)",
        "Freshness": "On time",
    }


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize(
    ("frequency", "label"),
    [
        ("realtime", "Realtime (every 30s)"),
        ("30min", "Every 30 min"),
        ("hourly", "Hourly"),
        ("daily", "Daily"),
        ("manual", "Manual"),
    ],
)
def test_status_current_frequency_label(owner, make_connection, frequency, label):
    connection = make_connection(sync_frequency=frequency)

    section = card(settings_page(signed_in(owner)), connection)

    assert status_fields(section)["Frequency"] == label
    assert section.one("dd", class_="frequency-label").text() == label


@pytest.mark.django_db
@pytest.mark.embedded
def test_status_full_sync_story(owner, make_connection):
    connection = make_connection(sync_frequency="realtime", now=NOW - timedelta(minutes=10))
    run = started(connection, NOW - timedelta(seconds=125))
    sync_finish(started=run, rows=some_rows(), api_calls=1, now=NOW - timedelta(seconds=120))

    assert status_at(owner, connection) == {
        "Frequency": "Realtime (every 30s)",
        "Status": "Idle",
        "Last attempted": "2 min ago",
        "Last completed": "2 min ago",
        "Last change": "2 min ago",
        "Next sync": "due now",
        "Stats": "1 attempt | 1 change (100.0%)",
        "Freshness": "Stale",
    }


@pytest.mark.django_db
@pytest.mark.embedded
def test_status_queued(owner, connection):
    connection_enqueue_sync(connection=connection, now=NOW, send=False)

    with time_machine.travel(NOW, tick=False):
        doc = settings_page(signed_in(owner))

    section = card(doc, connection)
    assert status_fields(section)["Status"] == "Queued"
    assert section.one("span", class_="status-queued").text() == "Queued"
    assert section.one("dl").attrs["data-busy"] == "true"
    assert doc.one("div", class_="connections").attrs["data-busy"] == "true"


@pytest.mark.django_db
@pytest.mark.embedded
def test_status_syncing(owner, connection):
    started(connection, NOW - timedelta(seconds=3))

    with time_machine.travel(NOW, tick=False):
        section = card(settings_page(signed_in(owner)), connection)

    fields = status_fields(section)
    assert (fields["Status"], fields["Last attempted"], fields["Stats"]) == (
        "Syncing",
        "just now",
        "1 attempt | 0 changes (0.0%)",
    )
    assert section.one("dl").attrs["data-busy"] == "true"
    assert section.find_all("p", class_="error-text") == []


@pytest.mark.django_db
@pytest.mark.embedded
def test_status_error_shows_message_without_reconnect(owner, connection):
    sync_fail(started=started(connection), error=PermanentError("Meta said no: ad account disabled"), now=NOW)

    section = card(settings_page(signed_in(owner)), connection)

    fields = status_fields(section)
    assert (fields["Status"], fields["Stats"]) == ("Error", "1 attempt | 0 changes (0.0%)")
    assert section.one("p", class_="error-text").text() == "Last sync failed: Meta said no: ad account disabled"
    assert section.find_all(class_="reconnect") == []
    assert section.one("dl").attrs["data-busy"] == "false"


@pytest.mark.django_db
@pytest.mark.embedded
def test_status_auth_error_shows_reconnect(owner, connection):
    sync_fail(started=started(connection), error=AuthError("Access token expired"), now=NOW)

    section = card(settings_page(signed_in(owner)), connection)

    error = section.one("p", class_="error-text")
    assert status_fields(section)["Status"] == "Error"
    assert error.text() == "Last sync failed: Access token expired Reconnect the account to resume syncing."
    assert error.one("span", class_="reconnect").text() == "Reconnect the account to resume syncing."
    # Not an alert: the block is re-rendered by every poll, and would be announced again each time.
    assert "role" not in error.attrs


@pytest.mark.django_db
@pytest.mark.embedded
def test_status_error_text_is_escaped(owner, connection):
    sync_fail(started=started(connection), error=PermanentError("<script>alert(1)</script>"), now=NOW)

    response = signed_in(owner).get("/settings")

    assert b"<script>alert(1)</script>" not in response.content
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in response.content


@pytest.mark.django_db
@pytest.mark.embedded
def test_connection_name_is_escaped_in_page_and_message(owner, make_connection):
    connection = make_connection(name="<img src=x onerror=alert(1)>")

    response = signed_in(owner).post(frequency_url(connection), {"sync_frequency": "daily"}, follow=True)

    assert b"<img src=x" not in response.content
    doc = parse(response.content)
    assert card(doc, connection).one("h2").text() == "<img src=x onerror=alert(1)>"
    assert page_messages(doc) == [
        ("message message-success", "<img src=x onerror=alert(1)>: sync frequency set to Daily.")
    ]


@pytest.mark.django_db
@pytest.mark.embedded
def test_status_stale_error_text_hidden_when_not_in_error(owner, connection):
    # An old message left on an idle row (a later sync succeeded) is not shown.
    update(connection, last_sync_error="old failure", last_sync_error_kind="auth")

    section = card(settings_page(signed_in(owner)), connection)

    assert status_fields(section)["Status"] == "Idle"
    assert section.find_all("p", class_="error-text") == []


@pytest.mark.django_db
@pytest.mark.embedded
def test_status_rate_limited_shows_resume_time(owner, make_connection):
    connection = make_connection(sync_frequency="realtime", now=NOW - timedelta(minutes=1))
    run = started(connection, NOW - timedelta(seconds=5))
    until = datetime(2026, 11, 28, 14, 32, 45, tzinfo=UTC)
    sync_defer(started=run, until=until, error=ThrottledError("Too many calls", until=until), now=NOW)

    fields = status_at(owner, connection)

    assert fields["Status"] == "Idle Rate limited — resumes 14:32 UTC"
    assert fields["Next sync"] == "in 2 h"
    with time_machine.travel(NOW, tick=False):
        pill = card(settings_page(signed_in(owner)), connection).one("span", class_="rate-limited")
    assert pill.text() == "Rate limited — resumes 14:32 UTC"
    # Once the time has passed the badge goes away by itself.
    assert status_at(owner, connection, until + timedelta(seconds=1))["Status"] == "Idle"


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize(
    ("ago", "text"),
    [
        (timedelta(0), "just now"),
        (timedelta(seconds=9), "just now"),
        (timedelta(seconds=10), "10 s ago"),
        (timedelta(seconds=59), "59 s ago"),
        (timedelta(minutes=1), "1 min ago"),
        (timedelta(minutes=2), "2 min ago"),
        (timedelta(minutes=59, seconds=59), "59 min ago"),
        (timedelta(hours=1), "1 h ago"),
        (timedelta(hours=3), "3 h ago"),
        (timedelta(hours=23, minutes=59), "23 h ago"),
        (timedelta(days=1), "1 day ago"),
        (timedelta(days=4), "4 days ago"),
    ],
)
def test_status_relative_times(owner, connection, ago, text):
    moment = NOW - ago
    update(
        connection,
        last_sync_attempted_at=moment,
        last_sync_completed_at=moment,
        last_metrics_changed_at=moment,
        total_syncs_attempted=1,
    )

    fields = status_at(owner, connection)

    assert (fields["Last attempted"], fields["Last completed"], fields["Last change"]) == (text, text, text)


@pytest.mark.django_db
@pytest.mark.embedded
def test_status_times_carry_the_exact_time(owner, connection):
    update(
        connection,
        last_sync_attempted_at=NOW - timedelta(minutes=2, seconds=5),
        last_sync_completed_at=NOW - timedelta(minutes=2),
        total_syncs_attempted=1,
    )

    with time_machine.travel(NOW, tick=False):
        section = card(settings_page(signed_in(owner)), connection)

    times = [(t.attrs["datetime"], t.attrs["title"], t.text()) for t in section.find_all("time")]
    assert times == [
        ("2026-11-28T11:57:55+00:00", "2026-11-28 11:57:55 UTC", "2 min ago"),
        ("2026-11-28T11:58:00+00:00", "2026-11-28 11:58:00 UTC", "2 min ago"),
    ]
    # "never" has no time element to hover.
    assert status_fields(section)["Last change"] == "never"


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize(
    ("attempts", "changes", "text"),
    [
        (0, 0, "0 attempts"),
        (1, 0, "1 attempt | 0 changes (0.0%)"),
        (1, 1, "1 attempt | 1 change (100.0%)"),
        (2, 1, "2 attempts | 1 change (50.0%)"),
        (3, 2, "3 attempts | 2 changes (66.7%)"),
        (45, 12, "45 attempts | 12 changes (26.7%)"),
    ],
)
def test_status_stats(owner, connection, attempts, changes, text):
    update(connection, total_syncs_attempted=attempts, total_syncs_with_changes=changes)

    section = card(settings_page(signed_in(owner)), connection)

    assert section.one("dd", class_="stats").text() == text


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize(
    ("frequency", "next_sync_at", "text"),
    [
        ("realtime", NOW + timedelta(seconds=12), "in 12 s"),
        ("realtime", NOW + timedelta(seconds=3), "in 3 s"),
        ("hourly", NOW + timedelta(minutes=42, seconds=30), "in 42 min"),
        ("daily", NOW + timedelta(hours=23), "in 23 h"),
        ("realtime", NOW, "due now"),
        ("hourly", NOW - timedelta(minutes=5), "due now"),
        ("hourly", None, "not scheduled"),
        ("manual", None, "manual"),
    ],
)
def test_status_next_sync(owner, make_connection, frequency, next_sync_at, text):
    connection = update(make_connection(sync_frequency=frequency), next_sync_at=next_sync_at)

    assert status_at(owner, connection)["Next sync"] == text


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize(
    ("frequency", "age", "label"),
    [
        # realtime: interval 30 s, grace 15 s (the minimum)
        ("realtime", timedelta(seconds=45), "On time"),
        ("realtime", timedelta(seconds=46), "Delayed"),
        ("realtime", timedelta(seconds=75), "Delayed"),
        ("realtime", timedelta(seconds=76), "Stale"),
        # every 30 min: grace 3 min (interval / 10)
        ("30min", timedelta(minutes=33), "On time"),
        ("30min", timedelta(minutes=33, seconds=1), "Delayed"),
        ("30min", timedelta(minutes=63), "Delayed"),
        ("30min", timedelta(minutes=63, seconds=1), "Stale"),
        # hourly: grace 6 min
        ("hourly", timedelta(minutes=66), "On time"),
        ("hourly", timedelta(minutes=66, seconds=1), "Delayed"),
        ("hourly", timedelta(minutes=126), "Delayed"),
        ("hourly", timedelta(minutes=126, seconds=1), "Stale"),
        # daily: grace 2 h 24 min
        ("daily", timedelta(hours=26, minutes=24), "On time"),
        ("daily", timedelta(hours=26, minutes=24, seconds=1), "Delayed"),
        ("daily", timedelta(hours=50, minutes=24), "Delayed"),
        ("daily", timedelta(hours=50, minutes=24, seconds=1), "Stale"),
        # manual: no schedule to be late against
        ("manual", timedelta(days=30), "Manual"),
        ("realtime", None, "Never synced"),
        ("manual", None, "Never synced"),
    ],
)
def test_status_freshness_at_the_boundaries(owner, make_connection, frequency, age, label):
    connection = make_connection(sync_frequency=frequency)
    if age is not None:
        update(connection, last_sync_completed_at=NOW - age, last_sync_attempted_at=NOW - age, total_syncs_attempted=1)

    with time_machine.travel(NOW, tick=False):
        section = card(settings_page(signed_in(owner)), connection)

    assert status_fields(section)["Freshness"] == label


# --- isolation ---------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_settings_outsider_does_not_see_owner_connections(owner, outsider, connection, other_workspace):
    theirs = connection_create(
        workspace=other_workspace, provider="demo", external_account_id="demo-c", name="Charlie's account"
    )

    outsider_doc = settings_page(signed_in(outsider))
    owner_doc = settings_page(signed_in(owner))

    assert [h2.text() for h2 in outsider_doc.find_all("h2")] == ["Charlie's account"]
    assert outsider_doc.find_all("section", id=f"connection-{connection.public_id}") == []
    assert [h2.text() for h2 in owner_doc.find_all("h2")] == ["Demo account 1"]
    assert owner_doc.find_all("section", id=f"connection-{theirs.public_id}") == []


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize("endpoint", ["frequency", "sync-now"])
@pytest.mark.parametrize("accept", [{}, JSON])
@pytest.mark.parametrize("target", ["other-workspace", "nonexistent", "malformed", "integer-pk"])
def test_post_endpoints_for_others_connections_are_404_and_change_nothing(
    outsider, connection, other_workspace, endpoint, accept, target
):
    connection_id = {
        "other-workspace": str(connection.public_id),
        "nonexistent": str(uuid.uuid4()),
        "malformed": "not-a-uuid",
        "integer-pk": str(connection.pk),
    }[target]
    before = Connection.objects.values().get(pk=connection.pk)

    response = signed_in(outsider).post(
        f"/settings/connections/{connection_id}/{endpoint}", {"sync_frequency": "hourly"}, **accept
    )

    assert response.status_code == 404
    assert Connection.objects.values().get(pk=connection.pk) == before


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize("endpoint", ["frequency", "sync-now"])
def test_post_endpoints_get_is_405(owner, connection, endpoint):
    before = Connection.objects.values().get(pk=connection.pk)

    response = signed_in(owner).get(f"/settings/connections/{connection.public_id}/{endpoint}")

    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert Connection.objects.values().get(pk=connection.pk) == before


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize("url", ["/settings", "/settings/status"])
def test_settings_post_is_405(owner, url):
    assert signed_in(owner).post(url).status_code == 405


@pytest.mark.embedded
def test_rate_limited_text_names_the_day_when_not_today():
    from connections.models import Connection
    from connections.status import connection_status_view

    now = datetime(2026, 11, 28, 23, 0, tzinfo=UTC)
    today = Connection(sync_frequency="hourly", rate_limited_until=now + timedelta(minutes=30))
    tomorrow = Connection(sync_frequency="hourly", rate_limited_until=now + timedelta(hours=2))

    assert connection_status_view(today, now).rate_limited_text == "Rate limited — resumes 23:30 UTC"
    assert connection_status_view(tomorrow, now).rate_limited_text == "Rate limited — resumes Nov 29, 01:00 UTC"
