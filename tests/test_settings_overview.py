"""The Settings page for many connections (issue 14): counters, filters, search, sort, pages,
the list view, the workspace switcher, honest states, pause and stop-all, the conditional poll,
local times, the pictures, and a constant number of queries however many connections."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from connections.models import Connection, PauseReason
from connections.services import connection_create, workspace_add_member, workspace_create
from syncing.models import ApiCallBucket, DailyMetric, SyncChange, SyncRun
from syncing.providers.base import AuthError, PermanentError
from syncing.services import connection_enqueue_sync, sync_fail, sync_finish
from tests.pages import (
    JSON,
    NOW,
    agency_states,
    card,
    connections_bulk,
    parse,
    settings_page,
    signed_in,
    started,
    status_fields,
    update,
)
from tests.test_state_machine import some_rows


def page(client, query: str = ""):
    with time_machine.travel(NOW, tick=False):
        response = client.get(f"/settings{query}")
    assert response.status_code == 200
    return parse(response.content)


def names(doc) -> list[str]:
    return [h2.text() for h2 in doc.find_all("h2") if h2.attrs.get("id", "").startswith("name-")]


def counters(doc) -> dict[str, str]:
    return {a.one("span", class_="count").attrs["data-count"]: a.text() for a in doc.find_all("a", class_="counter")}


# --- counters, filters, search, sort, pages ---------------------------------------------------------


@pytest.fixture
def mix(owner, make_connection):
    """Alpha idle meta hourly; Beta auth error google; Gamma failing demo; Delta queued; Eps paused; Zeta stale."""
    alpha = make_connection(
        provider="meta", name="Alpha", external_account_id="act_111", sync_frequency="hourly", now=NOW
    )
    beta = make_connection(provider="google", name="Beta", sync_frequency="realtime", now=NOW)
    sync_fail(started=started(beta, NOW - timedelta(minutes=1)), error=AuthError("expired"), now=NOW)
    gamma = make_connection(name="Gamma", sync_frequency="hourly", now=NOW)
    sync_fail(started=started(gamma, NOW - timedelta(minutes=1)), error=PermanentError("disabled"), now=NOW)
    delta = make_connection(name="Delta")
    connection_enqueue_sync(connection=delta, now=NOW, send=False)
    eps = make_connection(name="Eps", sync_frequency="daily", now=NOW)
    update(eps, paused_at=NOW, pause_reason=PauseReason.USER, next_sync_at=None)
    zeta = make_connection(name="Zeta", sync_frequency="hourly", now=NOW)
    update(zeta, last_sync_completed_at=NOW - timedelta(hours=3), last_sync_attempted_at=NOW - timedelta(hours=3))
    return alpha, beta, gamma, delta, eps, zeta


@pytest.mark.django_db
@pytest.mark.embedded
def test_overview_counts_each_state_and_links_to_its_filter(owner, mix):
    doc = page(signed_in(owner))

    assert counters(doc) == {
        "total": "6 All",
        "syncing": "1 Syncing",
        "error": "2 Errors",
        "stale": "1 Stale",
        "reconnect": "1 Need reconnecting",
        "paused": "1 Paused",
    }
    assert [a.attrs["href"] for a in doc.find_all("a", class_="counter")][1:] == [
        "?status=syncing",
        "?status=error",
        "?status=stale",
        "?status=reconnect",
        "?status=paused",
    ]


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?status=error", ["Beta", "Gamma"]),
        ("?status=reconnect", ["Beta"]),
        ("?status=syncing", ["Delta"]),
        ("?status=paused", ["Eps"]),
        ("?status=stale", ["Zeta"]),
        ("?provider=meta", ["Alpha"]),
        ("?frequency=hourly", ["Alpha", "Gamma", "Zeta"]),
        ("?q=alp", ["Alpha"]),
        ("?q=act_11", ["Alpha"]),
        ("?q=ZET", ["Zeta"]),
        ("?frequency=hourly&status=error", ["Gamma"]),
        ("?sort=problems", ["Beta", "Gamma", "Zeta", "Alpha", "Delta", "Eps"]),
        ("?sort=recent&frequency=hourly", ["Zeta", "Alpha", "Gamma"]),
        ("?sort=oldest&frequency=hourly", ["Alpha", "Gamma", "Zeta"]),
    ],
)
def test_filters_search_and_sort(owner, mix, query, expected):
    doc = page(signed_in(owner), query)

    assert names(doc) == expected
    # The counters still count the whole workspace.
    assert counters(doc)["total"] == "6 All"


@pytest.mark.django_db
@pytest.mark.embedded
def test_bad_filter_values_are_ignored_with_the_valid_choices(owner, mix):
    doc = page(signed_in(owner), "?provider=tiktok&status=weird&sort=random&view=grid&page=x")

    assert names(doc) == ["Alpha", "Beta", "Delta", "Eps", "Gamma", "Zeta"]
    assert [li.text() for li in doc.one("ul", class_="notices").find_all("li")] == [
        "Ignored provider='tiktok'; valid choices: meta, google, demo.",
        "Ignored status='weird'; valid choices: syncing, error, stale, reconnect, paused.",
        "Ignored sort='random'; valid choices: name, problems, oldest, recent.",
        "Ignored view='grid'; valid choices: cards, list.",
        "Ignored page='x'; pages are numbered 1 to 1.",
    ]


@pytest.mark.django_db
@pytest.mark.embedded
def test_no_match_says_so_and_links_back(owner, mix):
    doc = page(signed_in(owner), "?q=nothing-like-this")

    none = doc.one("section", class_="none-match")
    assert none.one("h2").text() == "No connections match these filters"
    assert none.one("a").attrs["href"] == "?"


@pytest.mark.django_db
@pytest.mark.embedded
def test_many_connections_default_to_the_list_in_pages(owner, workspace):
    connections_bulk(workspace, 130, now=NOW)
    client = signed_in(owner)

    first = page(client)
    second = page(client, "?page=2")

    assert first.one("p", class_="showing").text() == "Showing 1–100 of 130"
    assert len(first.find_all("section", class_="list-row")) == 100
    assert first.find_all("section", class_="card") == []
    assert first.one("a", rel="next").attrs["href"] == "?page=2"
    assert second.one("p", class_="showing").text() == "Showing 101–130 of 130"
    assert names(second)[0] == "Account 0100"
    # Cards on request, 20 to a page.
    cards = page(client, "?view=cards")
    assert len(cards.find_all("section", class_="card")) == 20
    assert cards.one("a", rel="next").attrs["href"] == "?view=cards&page=2"


@pytest.mark.django_db
@pytest.mark.embedded
def test_list_row_shows_state_and_error_first(owner, workspace):
    connections = connections_bulk(workspace, 30, now=NOW)
    agency_states(connections, now=NOW)
    expired = connections[3]

    row = card(page(signed_in(owner), "?status=reconnect"), expired)

    assert row.one("p", class_="error-text").text().startswith("Last sync failed: Meta said the access token")
    assert status_fields(row) == {
        "Status": "Error",
        "Freshness": "Delayed",
        "Frequency": "Paused — reconnect",
        "Last completed": "2 min ago",
    }


@pytest.mark.django_db
@pytest.mark.embedded
def test_workspace_switcher_for_members_of_several(owner, make_connection, outsider):
    make_connection(name="Mine")
    second = workspace_create(name="Beta Brand", owner=outsider)
    workspace_add_member(workspace=second, user=owner)
    theirs = connection_create(workspace=second, provider="demo", external_account_id="d-b", name="Brand account")
    client = signed_in(owner)

    everything = page(client)
    only_second = page(client, f"?workspace={second.public_id}")

    options = [o.text() for o in everything.one("select", id="filter-workspace").find_all("option")]
    assert options == ["All workspaces", "Alice's Agency", "Beta Brand"]
    assert names(everything) == ["Mine", "Brand account"]
    assert names(only_second) == ["Brand account"]
    assert counters(only_second)["total"] == "1 All"
    assert card(everything, theirs).one("span", class_="workspace-of").text() == "Beta Brand"


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize("workspace_id", ["not-a-uuid", str(uuid.uuid4()), "other"])
def test_workspace_filter_outside_your_workspaces_is_404(owner, other_workspace, workspace_id):
    workspace_id = str(other_workspace.public_id) if workspace_id == "other" else workspace_id

    assert signed_in(owner).get(f"/settings?workspace={workspace_id}").status_code == 404
    assert signed_in(owner).get(f"/settings/status?workspace={workspace_id}").status_code == 404


# --- honest states -----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_failed_attempt_is_never_on_time_and_expired_reads_paused_reconnect(owner, make_connection):
    connection = make_connection(sync_frequency="realtime", now=NOW - timedelta(minutes=1))
    run = started(connection, NOW - timedelta(seconds=30))
    sync_finish(started=run, rows=some_rows(), api_calls=1, now=NOW - timedelta(seconds=25))
    sync_fail(started=started(connection, NOW - timedelta(seconds=5)), error=AuthError("expired"), now=NOW)

    with time_machine.travel(NOW, tick=False):
        section = card(settings_page(signed_in(owner)), connection)

    fields = status_fields(section)
    assert (fields["Status"], fields["Freshness"], fields["Frequency"], fields["Next sync"]) == (
        "Error",
        "Delayed",
        "Paused — reconnect",
        "paused until reconnected",
    )
    # The error comes before the status grid, right under the name.
    block = section.one("div", class_="status")
    assert [n.tag for n in block.children if not isinstance(n, str)][:2] == ["p", "dl"]


@pytest.mark.django_db
@pytest.mark.embedded
def test_sync_now_is_disabled_while_queued(owner, connection):
    connection_enqueue_sync(connection=connection, now=NOW, send=False)

    button = card(page(signed_in(owner)), connection).one("button", class_="sync-button")

    assert "disabled" in button.attrs
    assert button.attrs["aria-busy"] == "true"


# --- pause, resume, stop all ------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_pause_and_resume_without_javascript(owner, make_connection):
    connection = make_connection(name="Shoes", sync_frequency="hourly", now=NOW)
    client = signed_in(owner)

    with time_machine.travel(NOW, tick=False):
        paused = client.post(f"/settings/connections/{connection.public_id}/pause", {"return_to": "status=error"})
    section = card(page(client, "?status=paused"), connection)

    assert paused.status_code == 302
    assert paused["Location"] == f"/settings?status=error#connection-{connection.public_id}"
    assert status_fields(section)["Frequency"] == "Paused — resumes as Hourly"
    assert "hidden" in section.one("button", class_="pause-button").attrs
    assert "hidden" not in section.one("button", class_="resume-button").attrs

    with time_machine.travel(NOW, tick=False):
        resumed = client.post(f"/settings/connections/{connection.public_id}/resume", follow=True)
    doc = parse(resumed.content)
    assert [li.text() for li in doc.find_all("li", class_="message")] == ["Shoes: automated syncs resumed (Hourly)."]
    saved = Connection.objects.get(pk=connection.pk)
    assert (saved.paused_at, saved.sync_frequency, saved.next_sync_at) == (None, "hourly", NOW)


@pytest.mark.django_db
@pytest.mark.embedded
def test_pause_json_answers_the_new_status_block(owner, connection):
    response = signed_in(owner).post(f"/settings/connections/{connection.public_id}/pause", **JSON)

    body = response.json()
    assert (response.status_code, body["message"], body["level"]) == (
        200,
        "Demo account 1: automated syncs paused. Sync Now still works.",
        "success",
    )
    assert parse(body["status_html"]).one("dl").attrs["data-paused"] == "true"


@pytest.mark.django_db
@pytest.mark.embedded
def test_stop_and_resume_all_automated_syncs_of_a_workspace(owner, workspace, make_connection):
    one = make_connection(sync_frequency="hourly", now=NOW)
    two = make_connection(sync_frequency="daily", now=NOW)
    own = make_connection(sync_frequency="realtime", now=NOW)
    update(own, paused_at=NOW, pause_reason=PauseReason.USER, next_sync_at=None)
    client = signed_in(owner)

    stopped = client.post(f"/settings/workspaces/{workspace.public_id}/stop-syncs", **JSON).json()
    bar = page(client).one("div", id=f"workspace-{workspace.public_id}")

    assert stopped == {
        "message": "Alice's Agency: stopped automated syncs of 2 connections. Sync Now still works.",
        "level": "success",
        "stopped": 2,
        "scheduled": 0,
    }
    assert bar.one("span", class_="workspace-state").text() == "Automated syncs stopped"
    assert "hidden" in bar.one("form", class_="stop-form").attrs
    resumed = client.post(f"/settings/workspaces/{workspace.public_id}/resume-syncs", follow=True)
    assert [li.text() for li in parse(resumed.content).find_all("li", class_="message")] == [
        "Alice's Agency: resumed automated syncs of 2 connections."
    ]
    assert {c.pk: c.pause_reason for c in Connection.objects.filter(pk__in=[one.pk, two.pk, own.pk])} == {
        one.pk: "",
        two.pk: "",
        own.pk: PauseReason.USER,
    }


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize("endpoint", ["pause", "resume"])
@pytest.mark.parametrize("accept", [{}, JSON])
def test_pause_resume_of_others_connection_is_404(outsider, connection, endpoint, accept):
    before = Connection.objects.values().get(pk=connection.pk)

    response = signed_in(outsider).post(f"/settings/connections/{connection.public_id}/{endpoint}", **accept)

    assert response.status_code == 404
    assert Connection.objects.values().get(pk=connection.pk) == before


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize("endpoint", ["stop-syncs", "resume-syncs"])
@pytest.mark.parametrize("target", ["other", "malformed", "nonexistent"])
def test_workspace_controls_outside_your_workspaces_are_404(outsider, workspace, connection, endpoint, target):
    workspace_id = {"other": str(workspace.public_id), "malformed": "x", "nonexistent": str(uuid.uuid4())}[target]

    response = signed_in(outsider).post(f"/settings/workspaces/{workspace_id}/{endpoint}")

    assert response.status_code == 404
    assert Connection.objects.get(pk=connection.pk).paused_at is None


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize(
    "url",
    ["/settings/connections/{c}/pause", "/settings/connections/{c}/resume", "/settings/workspaces/{w}/stop-syncs"],
)
def test_new_controls_anonymous_redirect_and_get_is_405(owner, workspace, connection, url):
    from django.test import Client

    url = url.format(c=connection.public_id, w=workspace.public_id)

    assert Client().post(url)["Location"] == f"/login/?next={url}"
    assert signed_in(owner).get(url).status_code == 405


# --- the poll: only what changed ------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_poll_answers_304_while_only_the_clock_moves(owner, make_connection):
    connection = make_connection(sync_frequency="daily", now=NOW)
    update(connection, last_sync_completed_at=NOW - timedelta(minutes=5), last_sync_attempted_at=NOW)
    client = signed_in(owner)

    with time_machine.travel(NOW, tick=False):
        first = client.get("/settings/status")
    with time_machine.travel(NOW + timedelta(seconds=40), tick=False):
        same = client.get("/settings/status", HTTP_IF_NONE_MATCH=first["ETag"])
        connection_enqueue_sync(connection=connection, now=NOW + timedelta(seconds=40), send=False)
        changed = client.get("/settings/status", HTTP_IF_NONE_MATCH=first["ETag"])

    assert first.status_code == 200
    assert (same.status_code, same.content) == (304, b"")
    assert changed.status_code == 200
    assert changed["ETag"] != first["ETag"]
    assert status_fields(parse(changed.json()["rows"][str(connection.public_id)]))["Status"] == "Queued"


@pytest.mark.django_db
@pytest.mark.embedded
def test_poll_follows_the_page_query(owner, mix):
    _, beta, *_ = mix

    body = signed_in(owner).get("/settings/status?status=reconnect&view=list").json()

    assert list(body["rows"]) == [str(beta.public_id)]
    assert parse(body["rows"][str(beta.public_id)]).one("dl").attrs["class"] == "status-grid compact"
    assert body["counts"]["total"] == 6


# --- local times ---------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_exact_times_in_the_browser_zone_and_utc_without_it(owner, connection):
    update(connection, last_sync_completed_at=NOW - timedelta(minutes=2), total_syncs_attempted=1)
    client = signed_in(owner)

    utc = card(page(client), connection).one("dd", class_="last-completed").one("time")
    client.cookies["tz"] = "Europe/Paris"
    paris = card(page(client), connection).one("dd", class_="last-completed").one("time")
    client.cookies["tz"] = "Not/AZone"
    unknown = card(page(client), connection).one("dd", class_="last-completed").one("time")

    assert utc.attrs["title"] == "2026-11-28 11:58:00 UTC"
    assert paris.attrs["title"] == "2026-11-28 12:58:00 CET"
    assert paris.attrs["datetime"] == "2026-11-28T11:58:00+00:00"
    assert unknown.attrs["title"] == "2026-11-28 11:58:00 UTC"


@pytest.mark.embedded
def test_rate_limited_text_in_the_viewer_zone():
    from zoneinfo import ZoneInfo

    from connections.status import rate_limited_message

    until = datetime(2026, 11, 28, 14, 32, tzinfo=UTC)

    assert rate_limited_message(until, NOW) == "Rate limited — resumes 14:32 UTC"
    assert rate_limited_message(until, NOW, ZoneInfo("America/New_York")) == "Rate limited — resumes 09:32 EST"


# --- pictures --------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_pictures_attempt_strip_spend_restated_days_and_budget(owner, make_connection):
    connection = make_connection(provider="meta", external_account_id="act_42", sync_frequency="hourly", now=NOW)
    update(connection, timezone="America/New_York")
    for hours_ago, outcome in [(0, "success"), (1, "error"), (1, "success"), (5, "rate_limited")]:
        SyncRun.objects.create(
            connection=connection,
            job_id=uuid.uuid4(),
            trigger="scheduled",
            started_at=NOW - timedelta(hours=hours_ago, minutes=-1),
            finished_at=NOW - timedelta(hours=hours_ago, minutes=-2),
            outcome=outcome,
        )
    run = SyncRun.objects.first()
    for day, spend in [(date(2026, 11, 20), "10"), (date(2026, 11, 27), "30")]:
        DailyMetric.objects.create(
            connection=connection, entity_id="c1", date=day, spend=Decimal(spend), currency="USD", updated_at=NOW
        )
    SyncChange.objects.create(
        run=run, level="campaign", entity_id="c1", date=date(2026, 11, 20), added=False, restated=True, diff={}
    )
    ApiCallBucket.objects.create(key="meta:42", minute=NOW - timedelta(minutes=10), calls=120)

    section = card(page(signed_in(owner), "?view=cards"), connection)

    strip = section.one("svg", class_="strip")
    assert strip.attrs["aria-label"] == "Last 24 hours: 4 attempts (2 succeeded, 1 failed, 1 rate limited or retried)"
    assert sorted(p.attrs["class"] for p in strip.find_all("path")) == ["o-bad", "o-none", "o-ok", "o-warn"]
    spark = section.one("svg", class_="spark")
    # The account's own days: 07:00 in New York on Nov 28 is "today".
    assert spark.attrs["aria-label"] == (
        "Spend per day, last 28 days to Nov 28 (America/New_York days): 40.00 USD in all; 1 restated day marked"
    )
    assert len(spark.find_all("circle", class_="restated")) == 1
    meter = section.one("meter")
    assert (meter.attrs["value"], meter.attrs["max"]) == ("120", "180")
    assert section.one("p", class_="budget").text() == "120/180 calls this hour"


# --- no N+1: 5 against 50 connections --------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize(
    ("url", "queries"), [("/settings?view=cards", 11), ("/settings?view=list", 7), ("/settings/status?view=cards", 6)]
)
def test_query_count_is_the_same_for_5_and_50_connections(owner, workspace, django_assert_num_queries, url, queries):
    client = signed_in(owner)
    for provider, count in [("meta", 2), ("google", 2), ("demo", 1)]:
        agency_states(connections_bulk(workspace, count, now=NOW, provider=provider), now=NOW)
    with django_assert_num_queries(queries):
        assert client.get(url).status_code == 200

    for provider, count in [("meta", 15), ("google", 15), ("demo", 15)]:
        agency_states(connections_bulk(workspace, count, now=NOW, provider=provider, prefix="More"), now=NOW)
    assert Connection.objects.count() == 50
    with django_assert_num_queries(queries):
        assert client.get(url).status_code == 200
