"""The change ledger: which metric rows each run changed and how, restatements marked, kept as
long as the runs; its selectors and GET /connections/{id}/sync-runs/{run_id}/changes."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.test import Client

from connections.models import Connection
from connections.services import api_token_issue
from syncing.models import DailyMetric, SyncChange, SyncRun
from syncing.persist import decimal_text, metrics_persist_changed
from syncing.providers.base import MetricRow
from syncing.selectors import (
    RunChanges,
    sync_changes_describe,
    sync_changes_for_run,
    sync_run_changes_summary,
)
from syncing.services import connection_enqueue_sync, sync_finish, sync_runs_prune, sync_start, syncs_reset_stuck
from tests.test_persist import row  # the same fetched row, in both

pytestmark = pytest.mark.django_db

# Saturday 28 November 2026, noon UTC: "today" is the 28th, yesterday the 27th.
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
NOV = {day: date(2026, 11, day) for day in range(20, 30)}
ADDED_C3 = {
    "entity_name": [None, "Campaign c3"],
    "spend": [None, "12.34"],
    "impressions": [None, "1000"],
    "clicks": [None, "50"],
    "conversions": [None, "3"],
    "conversion_value": [None, "99.9"],
    "currency": [None, "USD"],
}


def sync(connection: Connection, rows: list[MetricRow], *, at: datetime = NOW) -> SyncRun:
    """One successful sync through the real state machine; its run, as stored."""
    job = connection_enqueue_sync(connection=connection, now=at, send=False)
    started = sync_start(connection_id=connection.pk, job_id=job.job_id, now=at)
    assert started is not None
    assert sync_finish(started=started, rows=rows, api_calls=1, now=at + timedelta(seconds=2)) is not None
    return SyncRun.objects.get(pk=started.run.pk)


def ledger(run: SyncRun) -> dict[tuple[str, date], dict]:
    return {(c.entity_id, c.date): c.diff for c in SyncChange.objects.filter(run=run)}


def token_client(user) -> Client:
    _, key = api_token_issue(user=user)
    return Client(HTTP_AUTHORIZATION=f"Token {key}")


def changes_url(connection: Connection, run: SyncRun) -> str:
    return f"/connections/{connection.public_id}/sync-runs/{run.public_id}/changes"


# --- what a run records ---------------------------------------------------------------------------


@pytest.mark.embedded
def test_ledger_has_a_row_per_row_written_and_none_for_unchanged_rows(connection):
    first = sync(connection, [row("c1", NOV[27], conversions=Decimal(41)), row("c2", NOV[27]), row("c1", NOV[28])])

    second = sync(
        connection,
        [
            row("c1", NOV[27], conversions=Decimal(44)),  # changed
            row("c2", NOV[27]),  # unchanged: no ledger row
            row("c1", NOV[28], clicks=51),  # changed
            row("c3", NOV[28]),  # added
        ],
        at=NOW + timedelta(minutes=30),
    )

    assert second.rows_written == 3
    assert ledger(second) == {
        ("c1", NOV[27]): {"conversions": ["41", "44"]},
        ("c1", NOV[28]): {"clicks": ["50", "51"]},
        ("c3", NOV[28]): ADDED_C3,
    }
    assert SyncChange.objects.filter(run=first).count() == first.rows_written == 3
    assert list(SyncChange.objects.filter(run=first).values_list("added", flat=True).distinct()) == [True]


@pytest.mark.embedded
def test_unchanged_sync_leaves_no_ledger_rows(connection):
    rows = [row("c1"), row("c2")]
    sync(connection, rows)

    again = sync(connection, rows, at=NOW + timedelta(minutes=30))

    assert again.rows_written == 0
    assert SyncChange.objects.filter(run=again).count() == 0


@pytest.mark.embedded
def test_ledger_old_and_new_values_are_exact_decimals(connection):
    sync(connection, [row(spend=Decimal("12.34"), conversion_value=Decimal("99.90"), conversions=Decimal("0.5"))])

    second = sync(
        connection,
        [
            row(
                spend=Decimal("12.345678"),
                conversion_value=Decimal("100.000000"),
                conversions=Decimal("0.3333333333"),  # stored at the column's six places
                entity_name="Renamed",
            )
        ],
        at=NOW + timedelta(minutes=30),
    )

    assert ledger(second) == {
        ("c1", NOV[27]): {
            "entity_name": ["Campaign c1", "Renamed"],
            "spend": ["12.34", "12.345678"],
            "conversions": ["0.5", "0.333333"],
            "conversion_value": ["99.9", "100"],
        }
    }


def test_decimal_text_trims_like_trim_scale():
    assert [decimal_text(value) for value in (Decimal("44.000000"), Decimal("100"), Decimal("0E-6"))] == [
        "44",
        "100",
        "0",
    ]
    assert [decimal_text(value) for value in (12.34, 41, Decimal("0.1234565"))] == ["12.34", "41", "0.123456"]


@pytest.mark.embedded
def test_ledger_is_written_by_the_staged_path_too(connection):
    # More than 300 rows go through COPY and a staging table on PostgreSQL.
    rows = [row(f"c{i}", NOV[20]) for i in range(400)]
    sync(connection, rows)

    second = sync(
        connection,
        [r if i % 100 else row(r.entity_id, r.date, clicks=7) for i, r in enumerate(rows)],
        at=NOW + timedelta(minutes=30),
    )

    assert second.rows_written == 4
    assert ledger(second) == {(f"c{i}", NOV[20]): {"clicks": ["50", "7"]} for i in (0, 100, 200, 300)}
    assert set(SyncChange.objects.filter(run=second).values_list("restated", flat=True)) == {True}


# --- restatements -----------------------------------------------------------------------------------


@pytest.mark.embedded
@pytest.mark.parametrize(
    ("timezone", "restated_days"),
    [
        # 05:00 UTC on the 29th is 21:00 on the 28th in Los Angeles: yesterday there is the 27th.
        ("America/Los_Angeles", [NOV[26]]),
        ("UTC", [NOV[26], NOV[27]]),
    ],
)
def test_restated_is_a_change_of_a_day_before_yesterday_in_the_account_time_zone(
    make_connection, timezone, restated_days
):
    connection = make_connection()
    # The account's own time zone, as the platform reports it when the account is connected.
    Connection.objects.filter(pk=connection.pk).update(timezone=timezone)
    at = datetime(2026, 11, 29, 5, 0, tzinfo=UTC)
    days = [NOV[26], NOV[27], NOV[28]]
    first = sync(connection, [row("c1", day, conversions=Decimal(41)) for day in days], at=at - timedelta(hours=1))

    second = sync(connection, [row("c1", day, conversions=Decimal(44)) for day in days], at=at)

    restated = SyncChange.objects.filter(run=second, restated=True).order_by("date")
    assert [change.date for change in restated] == restated_days
    # Rows the first sync added, old days included, are added, not restated (a backfill).
    assert SyncChange.objects.filter(run=first, restated=True).count() == 0
    assert sync_run_changes_summary(run=second) == RunChanges(
        changed=3, added=0, restated=len(restated_days), restated_days=tuple(restated_days)
    )


@pytest.mark.embedded
def test_change_summaries_read_as_a_person_would_say_them(connection):
    sync(connection, [row("c1", NOV[26], conversions=Decimal(41)), row("c1", NOV[28])])

    second = sync(
        connection,
        [
            row("c1", NOV[26], conversions=Decimal(44)),
            row("c1", NOV[28], clicks=51, spend=Decimal("10.50")),
            row("c3", NOV[28]),
        ],
        at=NOW + timedelta(minutes=30),
    )

    described = sync_changes_describe(changes=sync_changes_for_run(run=second))
    assert [change.summary for change in described] == [
        "restated Nov 26: conversions 41 → 44",
        "Nov 28: spend 12.34 → 10.5, clicks 50 → 51",
        "added Nov 28: spend 12.34, impressions 1000, clicks 50, conversions 3, conversion value 99.9, currency USD",
    ]
    assert sync_run_changes_summary(run=second).summary == "2 rows changed, 1 added; restated Nov 26"


# --- one transaction, one retention ---------------------------------------------------------------------


@pytest.mark.embedded
def test_a_finish_that_is_no_longer_ours_writes_neither_metrics_nor_ledger(connection):
    job = connection_enqueue_sync(connection=connection, now=NOW, send=False)
    started = sync_start(connection_id=connection.pk, job_id=job.job_id, now=NOW)
    syncs_reset_stuck(connection_ids=[connection.pk], now=NOW + timedelta(seconds=1))

    assert sync_finish(started=started, rows=[row()], api_calls=1, now=NOW + timedelta(seconds=2)) is None
    assert (DailyMetric.objects.count(), SyncChange.objects.count()) == (0, 0)


@pytest.mark.embedded
def test_pruning_runs_removes_their_changes(connection, settings):
    settings.SYNC_RUN_RETENTION_DAYS = 14
    sync(connection, [row("c1"), row("c2")], at=NOW - timedelta(days=20))
    sync(connection, [row("c1", clicks=55)], at=NOW - timedelta(days=15))
    recent = sync(connection, [row("c1", clicks=60)], at=NOW)

    assert sync_runs_prune(now=NOW, batch=1) == 2  # runs, not runs and their changes

    assert list(SyncRun.objects.values_list("pk", flat=True)) == [recent.pk]
    assert list(SyncChange.objects.values_list("run_id", flat=True)) == [recent.pk]


@pytest.mark.embedded
def test_persist_refuses_a_run_of_another_connection(make_connection):
    mine, other = make_connection(), make_connection()
    run = sync(other, [])

    with pytest.raises(ValueError, match="belongs to connection"):
        metrics_persist_changed(connection_id=mine.pk, rows=[row()], now=NOW, run=run)


# --- the API ------------------------------------------------------------------------------------------


@pytest.fixture
def changed_run(connection) -> SyncRun:
    """A run that restated one day, changed another and added a row."""
    sync(connection, [row("c1", NOV[26], conversions=Decimal(41)), row("c1", NOV[28])])
    return sync(
        connection,
        [row("c1", NOV[26], conversions=Decimal(44)), row("c1", NOV[28], clicks=51), row("c3", NOV[28])],
        at=NOW + timedelta(minutes=30),
    )


@pytest.mark.embedded
@pytest.mark.parametrize(("who", "code"), [("owner", 200), ("teammate", 200), ("outsider", 404), ("anonymous", 401)])
def test_changes_endpoint_access(request, connection, changed_run, other_workspace, who, code):
    client = Client() if who == "anonymous" else token_client(request.getfixturevalue(who))

    response = client.get(changes_url(connection, changed_run))

    assert response.status_code == code
    if code != 200:
        assert set(response.json()) == {"detail"}


@pytest.mark.embedded
def test_changes_body_is_exact(owner, connection, changed_run):
    body = token_client(owner).get(changes_url(connection, changed_run)).json()

    assert body == {
        "count": 3,
        "next": None,
        "previous": None,
        "run": {
            "id": str(changed_run.public_id),
            "started_at": "2026-11-28T12:30:00+00:00",
            "changed": 2,
            "added": 1,
            "restated": 1,
            "restated_days": ["2026-11-26"],
            "summary": "2 rows changed, 1 added; restated Nov 26",
        },
        "results": [
            {
                "level": "campaign",
                "entity_id": "c1",
                "entity_name": "Campaign c1",
                "date": "2026-11-26",
                "added": False,
                "restated": True,
                "values": [{"field": "conversions", "old": "41", "new": "44"}],
                "summary": "restated Nov 26: conversions 41 → 44",
            },
            {
                "level": "campaign",
                "entity_id": "c1",
                "entity_name": "Campaign c1",
                "date": "2026-11-28",
                "added": False,
                "restated": False,
                "values": [{"field": "clicks", "old": "50", "new": "51"}],
                "summary": "Nov 28: clicks 50 → 51",
            },
            {
                "level": "campaign",
                "entity_id": "c3",
                "entity_name": "Campaign c3",
                "date": "2026-11-28",
                "added": True,
                "restated": False,
                "values": [{"field": name, "old": None, "new": new} for name, (_, new) in ADDED_C3.items()],
                "summary": "added Nov 28: spend 12.34, impressions 1000, clicks 50, conversions 3, "
                "conversion value 99.9, currency USD",
            },
        ],
    }


@pytest.mark.embedded
def test_changes_are_paginated(owner, connection, changed_run):
    client = token_client(owner)

    first = client.get(changes_url(connection, changed_run), {"page_size": 2}).json()
    rest = client.get(first["next"]).json()

    assert (first["count"], [(c["entity_id"], c["date"]) for c in first["results"]]) == (
        3,
        [("c1", "2026-11-26"), ("c1", "2026-11-28")],
    )
    assert [(c["entity_id"], c["date"]) for c in rest["results"]] == [("c3", "2026-11-28")]
    assert rest["next"] is None
    assert rest["run"] == first["run"]  # the whole run's summary on every page
    assert client.get(changes_url(connection, changed_run), {"page": 3}).status_code == 404


@pytest.mark.embedded
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"restated": "true"}, [("c1", "2026-11-26")]),
        ({"restated": "false"}, [("c1", "2026-11-28"), ("c3", "2026-11-28")]),
        ({"kind": "added"}, [("c3", "2026-11-28")]),
        ({"kind": "changed"}, [("c1", "2026-11-26"), ("c1", "2026-11-28")]),
        ({"field": "clicks"}, [("c1", "2026-11-28"), ("c3", "2026-11-28")]),
        ({"field": "conversions", "kind": "changed"}, [("c1", "2026-11-26")]),
    ],
)
def test_changes_filters(owner, connection, changed_run, query, expected):
    body = token_client(owner).get(changes_url(connection, changed_run), query).json()

    assert [(c["entity_id"], c["date"]) for c in body["results"]] == expected
    assert body["count"] == len(expected)


@pytest.mark.embedded
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"restated": "yes"}, {"restated": ['"yes" is not a valid value for restated; valid choices: true, false.']}),
        ({"kind": "removed"}, {"kind": ['"removed" is not a valid kind; valid choices: added, changed.']}),
        (
            {"field": "cpc"},
            {
                "field": [
                    '"cpc" is not a valid field; valid choices: entity_name, spend, impressions, clicks, conversions, '
                    "conversion_value, currency."
                ]
            },
        ),
    ],
)
def test_changes_bad_query_params_are_400_with_the_valid_choices(owner, connection, changed_run, query, expected):
    response = token_client(owner).get(changes_url(connection, changed_run), query)

    assert response.status_code == 400
    assert response.json() == expected


@pytest.mark.embedded
def test_changes_of_a_run_of_another_connection_are_404(owner, make_connection, connection, changed_run):
    other = make_connection()  # same workspace: the owner may see both connections
    client = token_client(owner)

    assert client.get(changes_url(other, changed_run)).status_code == 404
    assert client.get(f"/connections/{connection.public_id}/sync-runs/{uuid.uuid4()}/changes").status_code == 404
    assert client.get(f"/connections/{connection.public_id}/sync-runs/{changed_run.pk}/changes").status_code == 404
    assert client.get(f"/connections/{uuid.uuid4()}/sync-runs/{changed_run.public_id}/changes").status_code == 404


@pytest.mark.embedded
def test_outsider_gets_404_even_with_bad_query_params(outsider, connection, changed_run):
    response = token_client(outsider).get(changes_url(connection, changed_run), {"kind": "nope"})

    assert response.status_code == 404


@pytest.mark.embedded
@pytest.mark.parametrize("count", [1, 3])
def test_changes_query_count_does_not_grow(owner, connection, django_assert_num_queries, count):
    run = sync(connection, [row(f"c{i}") for i in range(count)])
    client = token_client(owner)
    client.get("/api/ping")  # the first use of a token also records last_used_at

    # The token, the connection, the run, the count, the page, the run's summary.
    with django_assert_num_queries(6):
        body = client.get(changes_url(connection, run)).json()

    assert len(body["results"]) == count


# --- the sync-runs list ----------------------------------------------------------------------------------


@pytest.mark.embedded
def test_sync_runs_list_counts_each_runs_changes(owner, connection, changed_run):
    runs = token_client(owner).get(f"/connections/{connection.public_id}/sync-runs").json()["results"]

    assert [(run["id"], run["changes"], run["restated"]) for run in runs] == [
        (str(changed_run.public_id), 3, True),
        (str(SyncRun.objects.exclude(pk=changed_run.pk).get().public_id), 2, False),
    ]


@pytest.mark.embedded
@pytest.mark.parametrize("count", [1, 3])
def test_sync_runs_list_query_count_does_not_grow(owner, connection, django_assert_num_queries, count):
    for minute in range(count):
        sync(connection, [row(f"c{minute}")], at=NOW + timedelta(minutes=minute))
    client = token_client(owner)
    client.get("/api/ping")

    # The token, the connection, the page of runs with their counts.
    with django_assert_num_queries(3):
        runs = client.get(f"/connections/{connection.public_id}/sync-runs").json()["results"]

    assert [run["changes"] for run in runs] == [1] * count


def test_schema_documents_the_changes_endpoint_and_its_filters(owner):
    client = Client()
    client.force_login(owner)

    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()

    operation = schema["paths"]["/connections/{connection_id}/sync-runs/{run_id}/changes"]["get"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert {"connection_id", "run_id", "restated", "kind", "field", "page", "page_size"} <= set(parameters)
    assert parameters["kind"]["schema"]["enum"] == ["added", "changed"]
    assert set(operation["responses"]) == {"200", "400", "401", "404", "503"}


@pytest.mark.django_db
@pytest.mark.embedded
def test_a_run_whose_window_ends_in_the_past_judges_restatements_by_the_accounts_today(connection):
    # A backfill chunk's window ends weeks ago; a change to a day before yesterday is still a
    # restatement, judged by the account's today when the run started, not by the window.
    sync(connection, [row(day=NOV[20]), row(day=NOV[21])])
    run = SyncRun.objects.create(
        connection=connection,
        job_id=uuid.uuid4(),
        trigger="manual",
        started_at=NOW,
        window_since=NOV[20],
        window_until=NOV[21],
    )

    written = metrics_persist_changed(
        connection_id=connection.pk, rows=[row(day=NOV[21], conversions=Decimal("4"))], now=NOW, run=run, today=NOV[28]
    )

    assert written == 1
    assert SyncChange.objects.get(run=run).restated is True
