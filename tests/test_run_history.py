"""Run history on the Settings page (issue 13): the "Recent runs" partial and its page without
JavaScript, a run's page with its change ledger, and the Cancel sync and Re-sync a date range
controls; their time zones, scoping (404), query counts and no-JavaScript fallbacks."""

from __future__ import annotations

import uuid
from datetime import date, timedelta

import pytest
import time_machine
from django.db import connection as db
from django.test import Client
from django.test.utils import CaptureQueriesContext

from connections.models import Connection
from syncing.models import Backfill, BackfillStatus, SyncChange, SyncRun
from syncing.services import backfill_request, connection_enqueue_sync
from tests.pages import JSON, NOW, card, page_messages, parse, signed_in, started, status_fields, update

NOV = {day: date(2026, 11, day) for day in range(1, 31)}


def run_of(connection: Connection, minutes_ago: float = 1, **fields) -> SyncRun:
    """A finished run `minutes_ago` before NOW; 2.4 s long unless told."""
    started_at = NOW - timedelta(minutes=minutes_ago)
    values = {
        "job_id": uuid.uuid4(),
        "trigger": "scheduled",
        "window_since": NOV[26],
        "window_until": NOV[28],
        "started_at": started_at,
        "finished_at": started_at + timedelta(seconds=2.4),
        "outcome": "success",
        "api_calls": 3,
        "rows_fetched": 120,
        "rows_written": 3,
    }
    values.update(fields)
    return SyncRun.objects.create(connection=connection, **values)


def change(run: SyncRun, day: date, entity: str = "c1", *, added=False, restated=False, diff=None) -> SyncChange:
    return SyncChange.objects.create(
        run=run,
        level="campaign",
        entity_id=entity,
        entity_name=f"Campaign {entity}",
        date=day,
        added=added,
        restated=restated,
        diff=diff or {"conversions": ["41", "44"]},
    )


def ledger_of(run: SyncRun) -> None:
    """Two changed rows (one a restatement of Nov 26) and one added row."""
    change(run, NOV[26], restated=True, diff={"conversions": ["41", "44"]})
    change(run, NOV[28], diff={"spend": ["10", "10.5"], "clicks": ["50", "51"]})
    change(run, NOV[28], "c2", added=True, diff={"spend": [None, "12.34"], "impressions": [None, "1000"]})


def runs_url(connection: Connection, query: str = "?partial=1") -> str:
    return f"/settings/connections/{connection.public_id}/runs{query}"


def run_url(connection: Connection, run: SyncRun, query: str = "") -> str:
    return f"/settings/connections/{connection.public_id}/runs/{run.public_id}{query}"


def get(client: Client, url: str):
    with time_machine.travel(NOW, tick=False):
        response = client.get(url)
    assert response.status_code == 200, response.status_code
    return parse(response.content)


def cells(row) -> dict[str, str]:
    return {td.attrs["data-label"]: td.text() for td in row.find_all("td")}


# --- the "Recent runs" partial ------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_runs_partial_shows_the_last_20_runs_newest_first(owner, connection):
    for minutes in range(30, 8, -1):
        run_of(connection, minutes)
    failed = run_of(
        connection,
        5,
        trigger="manual",
        window_since=None,
        window_until=None,
        finished_at=NOW - timedelta(minutes=5) + timedelta(seconds=75),
        outcome="error",
        api_calls=1,
        rows_fetched=0,
        rows_written=0,
        error_class="permanent",
        error_message="The ad account is disabled.",
    )
    latest = run_of(connection, 1, trigger="backfill", window_since=NOV[1], window_until=NOV[7])
    ledger_of(latest)

    doc = get(signed_in(owner), runs_url(connection))

    rows = doc.one("table", class_="runs-table").one("tbody").find_all("tr")
    assert len(rows) == 20
    assert cells(rows[0]) == {
        "Started": "Nov 28, 11:59:00",
        "Duration": "2.4 s",
        "Trigger": "Backfill",
        "Window": "Nov 1 – Nov 7",
        "Calls": "3",
        "Fetched / written": "120 / 3",
        "Changes": "3 restated",
        "Outcome": "Success",
    }
    assert cells(rows[1]) == {
        "Started": "Nov 28, 11:55:00",
        "Duration": "1 min 15 s",
        "Trigger": "Manual",
        "Window": "—",
        "Calls": "1",
        "Fetched / written": "0 / 0",
        "Changes": "0",
        "Outcome": "Error The ad account is disabled.",
    }
    assert rows[1].one("a").attrs["href"] == run_url(connection, failed)
    assert cells(rows[2])["Changes"] == "0"
    assert doc.one("caption").text() == "Last 20 runs · times in UTC, days in the account's (UTC)"


@pytest.mark.django_db
@pytest.mark.embedded
def test_runs_partial_says_when_there_are_none(owner, connection):
    doc = get(signed_in(owner), runs_url(connection))

    assert doc.one("p", class_="hint").text() == "No runs yet: press Sync Now, or wait for the schedule."


@pytest.mark.django_db
@pytest.mark.embedded
def test_runs_partial_times_in_the_viewer_zone_and_days_in_the_account_zone(owner, connection):
    update(connection, timezone="America/New_York")
    run_of(connection, 1)
    client = signed_in(owner)
    client.cookies["tz"] = "Europe/Paris"

    doc = get(client, runs_url(connection))

    time = doc.one("time")
    assert (time.text(), time.attrs["title"], time.attrs["datetime"]) == (
        "Nov 28, 12:59:00",
        "2026-11-28 12:59:00 CET",
        "2026-11-28T11:59:00+00:00",
    )
    assert doc.one("caption").text() == "Last 1 run · times in Europe/Paris, days in the account's (America/New_York)"


@pytest.mark.django_db
@pytest.mark.embedded
def test_runs_links_keep_only_the_page_filters(owner, connection):
    run = run_of(connection)

    doc = get(
        signed_in(owner), runs_url(connection, "?partial=1&return_to=status%3Derror%26view%3Dlist%26next%3D//evil")
    )

    assert doc.one("table").one("a").attrs["href"] == run_url(
        connection, run, "?return_to=status%3Derror%26view%3Dlist"
    )


@pytest.mark.django_db
@pytest.mark.embedded
def test_recent_runs_is_a_disclosure_with_a_page_of_its_own_without_javascript(owner, make_connection):
    connection = make_connection(name="Acme Shoes")
    run_of(connection)
    client = signed_in(owner)

    for view in ("cards", "list"):
        details = card(get(client, f"/settings?view={view}&sort=recent&q=Acme"), connection).one(
            "details", class_="runs"
        )
        link = details.one("a", class_="runs-link")
        assert (details.one("summary").text(), link.text()) == ("Recent runs", "Show the last runs of Acme Shoes")
        # The first screen carries no run: the table comes when the disclosure is opened.
        assert details.find_all("table") == []
    assert link.attrs["href"] == runs_url(connection, "?return_to=q%3DAcme%26sort%3Drecent%26view%3Dlist")

    doc = get(client, link.attrs["href"])

    assert doc.one("h1").text() == "Recent runs of Acme Shoes"
    assert doc.one("p", class_="back").one("a").attrs["href"] == (
        f"/settings?q=Acme&sort=recent&view=list#connection-{connection.public_id}"
    )
    assert len(doc.one("tbody").find_all("tr")) == 1


# --- a run's page ------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_run_page_shows_the_run_its_error_and_its_ledger(owner, connection):
    run = run_of(
        connection,
        3,
        outcome="error",
        error_class="transient",
        error_message="Meta answered 500 three times.",
        rows_fetched=10,
    )
    ledger_of(run)
    client = signed_in(owner)
    client.cookies["tz"] = "America/New_York"

    doc = get(client, run_url(connection, run, "?return_to=view%3Dlist"))

    fields = {div.one("dt").text(): div.one("dd").text() for div in doc.one("dl", class_="run-fields").find_all("div")}
    assert fields == {
        "Started": "2026-11-28 06:57:00 EST",
        "Finished": "2026-11-28 06:57:02 EST",
        "Duration": "2.4 s",
        "Trigger": "Scheduled",
        "Window": "Nov 26 – Nov 28 (UTC days)",
        "Platform calls": "3",
        "Rows fetched": "10",
        "Rows written": "3",
    }
    assert doc.one("p", class_="run-error-full").text() == "Temporary failure: Meta answered 500 three times."
    assert doc.one("p", class_="ledger-summary").text() == "2 rows changed, 1 added; restated Nov 26."
    lines = [
        [td.text() for td in tr.find_all("td")] for tr in doc.one("table", class_="ledger-table").find_all("tr")[1:]
    ]
    assert lines == [
        ["Campaign c1", "Nov 26, 2026 restated", "conversions", "41 → 44"],
        ["Campaign c1", "Nov 28, 2026", "spend", "10 → 10.5"],
        ["Campaign c1", "Nov 28, 2026", "clicks", "50 → 51"],
        ["Campaign c2 added", "Nov 28, 2026", "spend", "— → 12.34"],
        ["Campaign c2 added", "Nov 28, 2026", "impressions", "— → 1000"],
    ]
    back = doc.one("p", class_="back").find_all("a")
    assert [a.attrs["href"] for a in back] == [
        f"/settings?view=list#connection-{connection.public_id}",
        runs_url(connection, "?return_to=view%3Dlist"),
    ]


@pytest.mark.django_db
@pytest.mark.embedded
def test_run_page_pages_its_ledger(owner, connection):
    run = run_of(connection, rows_fetched=60, rows_written=60)
    SyncChange.objects.bulk_create(
        SyncChange(
            run=run,
            level="campaign",
            entity_id=f"c{n:02d}",
            date=NOV[28],
            added=False,
            restated=False,
            diff={"clicks": ["1", "2"]},
        )
        for n in range(60)
    )
    client = signed_in(owner)

    first = get(client, run_url(connection, run))
    second = get(client, run_url(connection, run, "?page=2"))
    beyond = get(client, run_url(connection, run, "?page=x"))

    assert len(first.one("tbody").find_all("tr")) == 50
    assert first.one("nav", class_="pagination").text() == "Rows 1–50 of 60 Next →"
    assert first.one("a", rel="next").attrs["href"] == "?page=2"
    assert len(second.one("tbody").find_all("tr")) == 10
    assert second.one("tbody").find_all("tr")[0].find_all("td")[0].text() == "c50"
    assert beyond.one("nav", class_="pagination").text() == "Rows 1–50 of 60 Next →"


@pytest.mark.django_db
@pytest.mark.embedded
def test_run_page_of_a_run_without_changes(owner, connection):
    run = run_of(connection, rows_written=0, finished_at=None, outcome="running")

    doc = get(signed_in(owner), run_url(connection, run))

    assert doc.one("p", class_="ledger-summary").text() == "No changes."
    assert doc.find_all("table") == []
    fields = {div.one("dt").text(): div.one("dd").text() for div in doc.one("dl", class_="run-fields").find_all("div")}
    assert (fields["Finished"], fields["Duration"]) == ("still running", "—")


# --- scoping ------------------------------------------------------------------------------------------------


@pytest.fixture
def theirs(other_workspace):
    from connections.services import connection_create

    connection = connection_create(workspace=other_workspace, provider="demo", external_account_id="d-x", name="Theirs")
    return connection, run_of(connection)


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize(
    "url",
    [
        "/settings/connections/{their}/runs",
        "/settings/connections/{their}/runs?partial=1",
        "/settings/connections/{their}/runs/{their_run}",
        "/settings/connections/{mine}/runs/{their_run}",
        "/settings/connections/{mine}/runs/not-a-uuid",
        "/settings/connections/{mine}/runs/{random}",
        "/settings/connections/not-a-uuid/runs",
    ],
)
def test_runs_and_run_pages_outside_your_connections_are_404(owner, connection, theirs, url):
    their, their_run = theirs
    run_of(connection)
    url = url.format(
        mine=connection.public_id, their=their.public_id, their_run=their_run.public_id, random=uuid.uuid4()
    )

    assert signed_in(owner).get(url).status_code == 404


@pytest.mark.django_db
@pytest.mark.embedded
def test_outsider_gets_404_for_runs_and_anonymous_signs_in(outsider, connection):
    run = run_of(connection)

    for url in (runs_url(connection), run_url(connection, run)):
        assert signed_in(outsider).get(url).status_code == 404
        assert Client().get(url).status_code == 302


# --- query counts: the same for 1 run (or change) as for 20 (or 60) -----------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_runs_partial_query_count_does_not_grow(owner, connection, django_assert_num_queries):
    client = signed_in(owner)
    ledger_of(run_of(connection))
    # Session, user, the connection, the runs with their ledger counts.
    with django_assert_num_queries(4):
        assert client.get(runs_url(connection)).status_code == 200

    for minutes in range(2, 30):
        ledger_of(run_of(connection, minutes))
    with django_assert_num_queries(4):
        assert client.get(runs_url(connection)).status_code == 200


@pytest.mark.django_db
@pytest.mark.embedded
def test_run_page_query_count_does_not_grow(owner, connection, django_assert_num_queries):
    client = signed_in(owner)
    one = run_of(connection)
    change(one, NOV[27])
    many = run_of(connection, 2)
    for n in range(60):
        change(many, NOV[1 + n % 28], f"c{n}", restated=n % 2 == 0)
    # Session, user, connection, run, the ledger's summary, its count and its page.
    with django_assert_num_queries(7):
        assert client.get(run_url(connection, one)).status_code == 200
    with django_assert_num_queries(7):
        assert client.get(run_url(connection, many)).status_code == 200


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize("url", ["/settings?view=cards", "/settings?view=list", "/settings/status"])
def test_backfills_in_progress_cost_the_page_no_query(owner, make_connection, django_assert_num_queries, url):
    client = signed_in(owner)
    connections = [make_connection(now=NOW) for _ in range(3)]
    with time_machine.travel(NOW, tick=False), CaptureQueriesContext(db) as before:
        client.get(url)
    for connection in connections:
        done = backfill_request(connection=connection, since=NOV[1], until=NOV[2], now=NOW)
        Backfill.objects.filter(pk=done.pk).update(status=BackfillStatus.DONE, finished_at=NOW)
        backfill_request(connection=connection, since=NOV[3], until=NOV[9], now=NOW)

    with time_machine.travel(NOW, tick=False), django_assert_num_queries(len(before)):
        response = client.get(url)

    # One row per connection, though each has two backfills (one over, one in progress).
    assert response.content.decode().count("0 of 7 days") == 3


# --- Cancel sync ---------------------------------------------------------------------------------------------


def cancel_url(connection: Connection) -> str:
    return f"/settings/connections/{connection.public_id}/cancel"


@pytest.mark.django_db
@pytest.mark.embedded
def test_cancel_shows_only_while_a_sync_is_queued_or_running(owner, connection):
    client = signed_in(owner)
    idle = card(get(client, "/settings"), connection)
    connection_enqueue_sync(connection=connection, now=NOW, send=False)
    queued = card(get(client, "/settings?view=list"), connection)

    assert idle.find_all("form", class_="cancel-form") == []
    form = queued.one("form", class_="cancel-form")
    assert (form.attrs["action"], form.one("button").text()) == (cancel_url(connection), "Cancel sync")
    assert form.one("input", name="view").attrs["value"] == "list"


@pytest.mark.django_db
@pytest.mark.embedded
def test_cancel_a_queued_sync_answers_json_with_the_idle_block(owner, make_connection):
    connection = make_connection(name="Shoes")
    connection_enqueue_sync(connection=connection, now=NOW, send=False)

    with time_machine.travel(NOW, tick=False):
        response = signed_in(owner).post(cancel_url(connection), **JSON)

    body = response.json()
    assert (response.status_code, body["message"], body["level"], body["busy"]) == (
        200,
        "Shoes: the queued sync was cancelled; it will not run.",
        "success",
        False,
    )
    assert status_fields(parse(body["status_html"]))["Status"] == "Idle"
    assert parse(body["status_html"]).find_all("form", class_="cancel-form") == []
    assert SyncRun.objects.get(connection=connection).outcome == "cancelled"


@pytest.mark.django_db
@pytest.mark.embedded
def test_cancel_a_running_sync_reads_cancelling_until_it_stops(owner, make_connection):
    connection = make_connection(name="Shoes")
    started(connection)
    client = signed_in(owner)

    with time_machine.travel(NOW, tick=False):
        body = client.post(cancel_url(connection), **JSON).json()
        again = client.post(cancel_url(connection), **JSON).json()

    assert body["message"] == "Shoes: cancelling: the sync stops before its next platform call and writes nothing."
    button = parse(body["status_html"]).one("button", class_="cancel-button")
    assert (button.text(), "disabled" in button.attrs) == ("Cancelling…", True)
    assert again["message"] == body["message"]
    assert Connection.objects.get(pk=connection.pk).cancel_requested_at == NOW
    # Another viewer's page says so too, and its poll notices.
    assert card(get(client, "/settings"), connection).one("button", class_="cancel-button").text() == "Cancelling…"


@pytest.mark.django_db
@pytest.mark.embedded
def test_poll_notices_a_cancel_asked_elsewhere(owner, connection):
    started(connection)
    client = signed_in(owner)
    with time_machine.travel(NOW, tick=False):
        first = client.get("/settings/status")
        update(connection, cancel_requested_at=NOW)
        after = client.get("/settings/status", HTTP_IF_NONE_MATCH=first["ETag"])

    assert after.status_code == 200
    assert parse(after.json()["rows"][str(connection.public_id)]).one("button").text() == "Cancelling…"


@pytest.mark.django_db
@pytest.mark.embedded
def test_cancel_without_javascript_redirects_with_a_message_keeping_the_filters(owner, make_connection):
    connection = make_connection(name="Shoes")
    client = signed_in(owner)

    with time_machine.travel(NOW, tick=False):
        response = client.post(cancel_url(connection), {"return_to": "status=syncing&view=list"})
    doc = get(client, "/settings")

    assert response.status_code == 302
    assert response["Location"] == f"/settings?status=syncing&view=list#connection-{connection.public_id}"
    assert page_messages(doc) == [("message message-info", "Shoes: no sync was queued or running.")]


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize("accept", [{}, JSON])
def test_outsider_cannot_cancel(outsider, connection, accept):
    connection_enqueue_sync(connection=connection, now=NOW, send=False)

    assert signed_in(outsider).post(cancel_url(connection), **accept).status_code == 404
    assert Connection.objects.get(pk=connection.pk).sync_status == "queued"


# --- Re-sync a date range ----------------------------------------------------------------------------------


def backfill_url(connection: Connection) -> str:
    return f"/settings/connections/{connection.public_id}/backfill"


def backfill_cancel_url(connection: Connection, backfill) -> str:
    return f"/settings/connections/{connection.public_id}/backfills/{backfill.public_id}/cancel"


@pytest.mark.django_db
@pytest.mark.embedded
def test_resync_form_is_in_each_card_with_the_account_days(owner, make_connection):
    connection = make_connection(name="Shoes")
    update(connection, timezone="Pacific/Kiritimati")  # UTC+14: already Nov 29 there

    form = card(get(signed_in(owner), "/settings?view=cards"), connection).one("form", class_="resync-form")

    assert form.attrs["action"] == backfill_url(connection)
    assert form.one("input", name="until").attrs["max"] == "2026-11-29"
    assert form.one("p", class_="hint").text().startswith("Days in the account's time zone (Pacific/Kiritimati).")


@pytest.mark.django_db
@pytest.mark.embedded
def test_resync_starts_a_backfill_and_shows_its_progress(owner, make_connection):
    connection = make_connection(name="Shoes")
    client = signed_in(owner)

    with time_machine.travel(NOW, tick=False):
        response = client.post(backfill_url(connection), {"since": "2026-11-01", "until": "2026-11-27"}, **JSON)
        again = client.post(backfill_url(connection), {"since": "2026-11-01", "until": "2026-11-27"}, **JSON)

    body = response.json()
    assert (response.status_code, body["message"], body["level"]) == (
        202,
        "Shoes: re-syncing Nov 1 – Nov 27, 2026 (0 of 27 days), newest days first, alongside the regular syncs.",
        "success",
    )
    progress = parse(body["status_html"]).one("div", class_="backfill-progress")
    assert progress.text() == "Re-syncing Nov 1 – Nov 27, 2026 0 of 27 days Cancel backfill"
    backfill = Backfill.objects.get(connection=connection)
    assert progress.one("form").attrs["action"] == backfill_cancel_url(connection, backfill)
    # Asking again for the same range is the same backfill.
    assert (again.status_code, Backfill.objects.count()) == (202, 1)
    Backfill.objects.filter(pk=backfill.pk).update(status=BackfillStatus.RUNNING, days_done=12)
    row = card(get(client, "/settings?view=list"), connection)
    assert status_fields(row)["Re-sync"] == "12 of 27 days"


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        ("2026-11-10", "2026-11-01", "Shoes: The start date 2026-11-10 is after the end date 2026-11-01."),
        (
            "2026-11-01",
            "2026-11-29",
            "Shoes: The end date 2026-11-29 is in the future in the account's time zone (UTC): "
            "choose days from 2025-11-28 to 2026-11-28.",
        ),
        ("", "2026-11-01", "Shoes: choose both the first and the last day to re-sync (YYYY-MM-DD)."),
        ("11/01/2026", "2026-11-01", "Shoes: choose both the first and the last day to re-sync (YYYY-MM-DD)."),
    ],
)
def test_resync_of_a_bad_range_is_400_with_the_reason(owner, make_connection, since, until, expected):
    connection = make_connection(name="Shoes")

    with time_machine.travel(NOW, tick=False):
        response = signed_in(owner).post(backfill_url(connection), {"since": since, "until": until}, **JSON)

    assert (response.status_code, response.json()["message"], response.json()["level"]) == (400, expected, "error")
    assert Backfill.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.embedded
def test_resync_without_javascript_redirects_with_a_message_keeping_the_filters(owner, make_connection):
    connection = make_connection(name="Shoes")
    client = signed_in(owner)

    with time_machine.travel(NOW, tick=False):
        response = client.post(
            backfill_url(connection), {"since": "2026-11-20", "until": "2026-11-27", "return_to": "q=Sho&view=cards"}
        )
    doc = get(client, "/settings?view=cards")

    assert response["Location"] == f"/settings?q=Sho&view=cards#connection-{connection.public_id}"
    assert page_messages(doc) == [
        (
            "message message-success",
            "Shoes: re-syncing Nov 20 – Nov 27, 2026 (0 of 8 days), newest days first, alongside the regular syncs.",
        )
    ]
    assert card(doc, connection).one("span", class_="backfill-days").text() == "0 of 8 days"


@pytest.mark.django_db
@pytest.mark.embedded
def test_cancel_backfill_answers_and_a_second_press_says_it_ended(owner, make_connection):
    connection = make_connection(name="Shoes")
    backfill = backfill_request(connection=connection, since=NOV[1], until=NOV[27], now=NOW)
    client = signed_in(owner)

    with time_machine.travel(NOW, tick=False):
        first = client.post(backfill_cancel_url(connection, backfill), **JSON).json()
        second = client.post(backfill_cancel_url(connection, backfill), {"return_to": "view=list"})

    assert first["message"] == "Shoes: re-sync of Nov 1 – Nov 27, 2026 cancelled; the days already fetched stay."
    assert parse(first["status_html"]).find_all("div", class_="backfill-progress") == []
    assert second["Location"] == f"/settings?view=list#connection-{connection.public_id}"
    assert page_messages(get(client, "/settings")) == [
        ("message message-success", "Shoes: the re-sync of Nov 1 – Nov 27, 2026 had already ended (cancelled).")
    ]
    assert Backfill.objects.get(pk=backfill.pk).status == BackfillStatus.CANCELLED


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize("who", ["outsider", "other connection", "made-up id"])
def test_backfill_controls_outside_your_connections_are_404(request, owner, make_connection, who):
    connection = make_connection()
    other = make_connection()
    backfill = backfill_request(connection=connection, since=NOV[1], until=NOV[27], now=NOW)
    user = request.getfixturevalue("outsider") if who == "outsider" else owner
    url = {
        "outsider": backfill_cancel_url(connection, backfill),
        "other connection": backfill_cancel_url(other, backfill),
        "made-up id": f"/settings/connections/{connection.public_id}/backfills/not-a-uuid/cancel",
    }[who]
    client = signed_in(user)

    assert client.post(url, **JSON).status_code == 404
    if who == "outsider":
        assert client.post(backfill_url(connection), {"since": "2026-11-01", "until": "2026-11-02"}).status_code == 404
    assert Backfill.objects.get(pk=backfill.pk).status == BackfillStatus.PENDING


@pytest.mark.django_db
@pytest.mark.embedded
@pytest.mark.parametrize("endpoint", ["cancel", "backfill"])
def test_new_controls_anonymous_redirect_and_get_is_405(owner, connection, endpoint):
    url = f"/settings/connections/{connection.public_id}/{endpoint}"

    assert Client().post(url)["Location"] == f"/login/?next={url}"
    assert signed_in(owner).get(url).status_code == 405
