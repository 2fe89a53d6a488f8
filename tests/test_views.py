"""The Settings page, sign-in and the admin, through Django's test client, with frozen time.

Pages are parsed with a small html.parser tree (below) so tests assert the exact text a person
reads in each element, not fragments of markup.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
import time_machine
from django.test import Client

from connections.models import Connection, SyncFrequency, SyncStatus
from connections.services import connection_create
from syncing.models import DailyMetric, SyncRun
from syncing.providers.base import AuthError, PermanentError, ThrottledError
from syncing.schedule import jitter
from syncing.services import connection_enqueue_sync, sync_defer, sync_fail, sync_finish, sync_start
from tests.test_state_machine import some_rows

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
STATIC = Path(__file__).resolve().parent.parent / "static"
VALID_CHOICES = "valid choices: manual, realtime, 30min, hourly, daily"
QUEUE_DOWN = "The job queue is unavailable; try again in a moment."


# --- a small HTML tree -------------------------------------------------------------------------

VOID_TAGS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"})


class Node:
    def __init__(self, tag: str, attrs: dict[str, str]):
        self.tag = tag
        self.attrs = attrs
        self.children: list[Node | str] = []

    def text(self) -> str:
        """The text a person reads, whitespace collapsed."""
        parts: list[str] = []

        def walk(node: Node) -> None:
            for child in node.children:
                if isinstance(child, str):
                    parts.append(child)
                else:
                    walk(child)

        walk(self)
        return " ".join("".join(parts).split())

    def iter(self):
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.iter()

    def find_all(self, tag: str | None = None, *, class_: str | None = None, **attrs: str) -> list[Node]:
        return [
            node
            for node in self.iter()
            if (tag is None or node.tag == tag)
            and (class_ is None or class_ in node.attrs.get("class", "").split())
            and all(node.attrs.get(name) == value for name, value in attrs.items())
        ]

    def one(self, tag: str | None = None, *, class_: str | None = None, **attrs: str) -> Node:
        found = self.find_all(tag, class_=class_, **attrs)
        assert len(found) == 1, f"expected one <{tag} class={class_} {attrs}>, found {len(found)}"
        return found[0]


class _TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {name: value or "" for name, value in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID_TAGS:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Node(tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag):
        for index in range(len(self.stack) - 1, 0, -1):
            if self.stack[index].tag == tag:
                del self.stack[index:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(html: str | bytes) -> Node:
    builder = _TreeBuilder()
    builder.feed(html.decode() if isinstance(html, bytes) else html)
    builder.close()
    return builder.root


# --- helpers ------------------------------------------------------------------------------------


def signed_in(user, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def settings_page(client: Client) -> Node:
    response = client.get("/settings")
    assert response.status_code == 200
    return parse(response.content)


def card(doc: Node, connection: Connection) -> Node:
    return doc.one("section", id=f"connection-{connection.public_id}")


def status_fields(node: Node) -> dict[str, str]:
    """Each line of a status block, as {"Status": "Idle", "Stats": "0 attempts", ...}."""
    grid = node.one("dl", class_="status-grid")
    return {div.one("dt").text(): div.one("dd").text() for div in grid.find_all("div")}


def status_at(user, connection: Connection, now: datetime = NOW) -> dict[str, str]:
    with time_machine.travel(now, tick=False):
        return status_fields(card(settings_page(signed_in(user)), connection))


def page_messages(doc: Node) -> list[tuple[str, str]]:
    return [(li.attrs["class"], li.text()) for li in doc.find_all("li", class_="message")]


def form_fields(form: Node) -> dict[str, str]:
    """What the browser would send for the form, as it is on the page."""
    fields = {
        node.attrs["name"]: node.attrs.get("value", "") for node in form.find_all("input") if "name" in node.attrs
    }
    for select in form.find_all("select"):
        selected = [option for option in select.find_all("option") if "selected" in option.attrs]
        fields[select.attrs["name"]] = selected[0].attrs["value"]
    return fields


def update(connection: Connection, **fields) -> Connection:
    Connection.objects.filter(pk=connection.pk).update(**fields)
    connection.refresh_from_db()
    return connection


def started(connection: Connection, now: datetime = NOW):
    job = connection_enqueue_sync(connection=connection, now=now, send=False)
    return sync_start(connection_id=connection.pk, job_id=job.job_id, now=now)


def frequency_url(connection) -> str:
    return f"/settings/connections/{connection.public_id}/frequency"


def sync_now_url(connection) -> str:
    return f"/settings/connections/{connection.public_id}/sync-now"


JSON = {"HTTP_ACCEPT": "application/json"}


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
    assert sync_form.one("button", type="submit").text() == "Sync Now"
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
    assert empty.one("code").text() == "python manage.py seed_demo"
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
    assert set(body) == {"rows", "busy", "banner"}
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


# session, user, connections with their workspace, the engine's heartbeats (the banner)
SETTINGS_QUERIES = 4


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize("url", ["/settings", "/settings/status"])
def test_settings_query_count_does_not_grow(owner, make_connection, django_assert_num_queries, url):
    client = signed_in(owner)
    _varied(make_connection, range(1))
    with django_assert_num_queries(SETTINGS_QUERIES):
        assert client.get(url).status_code == 200

    _varied(make_connection, range(1, 3))
    assert sorted(Connection.objects.values_list("sync_status", flat=True)) == ["error", "idle", "queued"]
    with django_assert_num_queries(SETTINGS_QUERIES):
        assert client.get(url).status_code == 200


# --- the admin -------------------------------------------------------------------------------------------

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
        ("pause", "Set to manual (pause)"),
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
def test_admin_action_pause_sets_manual(admin_client, admin_rows):
    alpha, beta, _ = admin_rows

    response = post_action(admin_client, "pause", alpha, beta)

    messages = [li.text() for li in parse(response.content).one("ul", class_="messagelist").find_all("li")]
    assert messages == ["Paused 2 connection(s): they now sync only on Sync Now."]
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


# --- static files -------------------------------------------------------------------------------------------
# (django_db: a request's end checks the open database connection, which SQLite keeps between tests)


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize(
    ("url", "path", "content_type"),
    [
        ("/static/css/app.css", "css/app.css", "text/css"),
        ("/static/js/settings.js", "js/settings.js", "text/javascript"),
    ],
)
def test_static_files_are_served(client, url, path, content_type):
    response = client.get(url)

    assert response.status_code == 200
    assert response["Content-Type"].split(";")[0] == content_type
    assert b"".join(response.streaming_content) == (STATIC / path).read_bytes()
    response.close()


@pytest.mark.django_db
@pytest.mark.embedded
def test_static_admin_css_is_served(client):
    response = client.get("/static/admin/css/base.css")

    assert response.status_code == 200
    response.close()


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


@pytest.mark.embedded
def test_rate_limited_text_names_the_day_when_not_today():
    from connections.models import Connection
    from connections.status import connection_status_view

    now = datetime(2026, 11, 28, 23, 0, tzinfo=UTC)
    today = Connection(sync_frequency="hourly", rate_limited_until=now + timedelta(minutes=30))
    tomorrow = Connection(sync_frequency="hourly", rate_limited_until=now + timedelta(hours=2))

    assert connection_status_view(today, now).rate_limited_text == "Rate limited — resumes 23:30 UTC"
    assert connection_status_view(tomorrow, now).rate_limited_text == "Rate limited — resumes Nov 29, 01:00 UTC"
