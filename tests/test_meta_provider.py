"""The Meta provider: the real facebook-business SDK over the wire to a fake Graph API on 127.0.0.1.

Syncs go through the real runner, state machine, budget and dispatcher; only the network edge
(the Graph API) is fake.
"""

import logging
import os
import socket
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

import pytest
import time_machine
from django.db import connection as db
from django.db.models import Sum
from django.test import Client
from facebook_business.adobjects.adaccount import AdAccount
from facebook_business.exceptions import FacebookBadParameterError

from connections.models import Connection, SyncFrequency, SyncStatus
from connections.services import api_token_issue
from syncing.budget import CallMeter, budget_try_spend
from syncing.dispatcher import connections_claim_due
from syncing.models import ApiCallBucket, DailyMetric, SyncRun
from syncing.providers import PROVIDERS, provider_for
from syncing.providers.base import ThrottledError, TransientProviderError, decimal_exact
from syncing.providers.meta import RECONNECT_MESSAGE, MetaProvider
from syncing.runner import connection_sync_run
from syncing.services import connection_enqueue_sync
from syncing.tasks import sync_connection
from tests.conftest import ROOT
from tests.fakes.graph import (
    TOO_MUCH_DATA_MESSAGE,
    Answer,
    FakeGraph,
    buc_usage,
    graph_error,
    html_502,
    html_page,
    insight,
    too_much_data,
)

TOKEN = "EAAGm0PX4ZCpsBA-secret-user-token"
ACCOUNT = "1234567890"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture
def graph(settings):
    fake = FakeGraph()
    fake.valid_tokens = {TOKEN}
    with fake.running():
        settings.META_GRAPH_URL = fake.url
        yield fake


@pytest.fixture
def meta(make_connection):
    def make(**overrides) -> Connection:
        fields = {
            "provider": "meta",
            "external_account_id": ACCOUNT,
            "name": "Shop US",
            "currency": "USD",
            "timezone_name": "UTC",
            "credentials": {"access_token": TOKEN},
            "now": NOW,
        }
        fields.update(overrides)
        return make_connection(**fields)

    return make


def restated(connection: Connection, at: datetime = NOW) -> Connection:
    """Mark the lookback as re-fetched just now, so the next sync is an ordinary one."""
    Connection.objects.filter(pk=connection.pk).update(last_restated_at=at)
    connection.refresh_from_db()
    return connection


def sync(connection: Connection, now: datetime = NOW) -> str | None:
    """One manual sync, inline, through the real runner at a frozen `now`."""
    with time_machine.travel(now, tick=False):
        job = connection_enqueue_sync(connection=connection, now=now, send=False)
        outcome = connection_sync_run(connection_id=connection.pk, job_id=job.job_id)
    connection.refresh_from_db()
    return outcome


def two_days(campaigns: int = 1, *, days=("2026-11-27", "2026-11-28"), **fields) -> list[dict]:
    return [insight(f"c{n}", day, **fields) for n in range(1, campaigns + 1) for day in days]


def last_run(connection: Connection) -> SyncRun:
    return SyncRun.objects.filter(connection=connection).latest("started_at", "pk")


def calls_counted(account: str = ACCOUNT) -> int:
    return ApiCallBucket.objects.filter(key=f"meta:{account}").aggregate(s=Sum("calls"))["s"] or 0


def ranges(requests) -> list[tuple[str, str]]:
    """The time_range of each request, as (since, until)."""
    return [(r.time_range["since"], r.time_range["until"]) for r in requests]


def lookback_days(count: int = 40, until: date = date(2026, 11, 28)) -> tuple[str, ...]:
    return tuple((until - timedelta(days=n)).isoformat() for n in range(count))


# --- registry and budget ----------------------------------------------------------------------


def test_meta_is_registered_with_an_hourly_budget_per_ad_account(settings):
    settings.META_CALLS_PER_HOUR = 180
    provider = provider_for("meta")

    assert provider is PROVIDERS["meta"]
    assert (provider.slug, provider.label, provider.default_lookback_days) == ("meta", "Meta", 28)
    [budget] = provider.budgets(external_account_id="act_42")
    assert (budget.key, budget.limit, budget.window) == ("meta:42", 180, timedelta(hours=1))
    assert provider.budgets(external_account_id="42") == [budget]


# --- fetching -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_fetch_follows_every_page_and_counts_each_call(graph, meta):
    graph.insights[ACCOUNT] = two_days(7, spend="1.00")
    graph.page_size = 5
    connection = meta()
    meter = CallMeter(MetaProvider().budgets(external_account_id=ACCOUNT), clock=lambda: NOW)

    result = MetaProvider().fetch(
        connection=connection, since=date(2026, 11, 27), until=date(2026, 11, 28), now=NOW, meter=meter
    )

    assert len(result.rows) == 14
    assert len({(r.entity_id, r.date) for r in result.rows}) == 14
    requests = graph.insights_requests(ACCOUNT)
    assert [r.params.get("after") for r in requests] == [None, "5", "10"]
    assert meter.calls == 3
    assert ApiCallBucket.objects.filter(key=f"meta:{ACCOUNT}").aggregate(s=Sum("calls"))["s"] == 3
    first = requests[0].params
    assert (first["level"], first["time_increment"], first["access_token"]) == ("campaign", "1", TOKEN)
    assert requests[0].time_range == {"since": "2026-11-27", "until": "2026-11-28"}
    assert {"spend", "impressions", "clicks", "actions", "action_values", "campaign_name"} <= set(
        first["fields"].split(",")
    )


@pytest.mark.django_db
def test_sync_writes_exact_rows_money_and_conversions(graph, meta):
    purchases = [
        {"action_type": "link_click", "value": "40"},
        {"action_type": "offsite_conversion.fb_pixel_purchase", "value": "3"},
        {"action_type": "purchase", "value": "3"},
        {"action_type": "omni_purchase", "value": "4"},
    ]
    graph.insights[ACCOUNT] = [
        insight(
            "120210000000001",
            "2026-11-28",
            name="Prospecting – Lookalike 1%",
            account_currency="EUR",
            spend="1234.56",
            impressions="98765",
            clicks="4321",
            actions=purchases,
            action_values=[
                {"action_type": "purchase", "value": "299.97"},
                {"action_type": "omni_purchase", "value": "399.96"},
            ],
        ),
        insight(
            "120210000000002",
            "2026-11-28",
            account_currency="EUR",
            spend="0.01",
            impressions="1",
            clicks="0",
            actions=[{"action_type": "offsite_conversion.fb_pixel_purchase", "value": "2.5"}],
            action_values=[{"action_type": "offsite_conversion.fb_pixel_purchase", "value": "0.10"}],
        ),
        insight("120210000000003", "2026-11-28", account_currency="EUR", spend="19.99", impressions="10"),
    ]
    connection = restated(meta(currency="EUR"))

    assert sync(connection) == "success"

    rows = {
        m.entity_id: (m.date, m.entity_name, m.spend, m.impressions, m.clicks, m.conversions, m.conversion_value)
        for m in DailyMetric.objects.filter(connection=connection)
    }
    assert rows == {
        # omni_purchase, the first preferred type Meta reports, never the sum of the overlapping ones
        "120210000000001": (
            date(2026, 11, 28),
            "Prospecting – Lookalike 1%",
            Decimal("1234.56"),
            98765,
            4321,
            Decimal("4"),
            Decimal("399.96"),
        ),
        "120210000000002": (
            date(2026, 11, 28),
            "Campaign 120210000000002",
            Decimal("0.01"),
            1,
            0,
            Decimal("2.5"),
            Decimal("0.10"),
        ),
        "120210000000003": (
            date(2026, 11, 28),
            "Campaign 120210000000003",
            Decimal("19.99"),
            10,
            0,
            Decimal("0"),
            Decimal("0"),
        ),
    }
    assert set(DailyMetric.objects.values_list("currency", "level")) == {("EUR", "campaign")}
    assert (connection.sync_status, connection.last_sync_error, connection.total_syncs_with_changes) == (
        "idle",
        None,
        1,
    )
    assert (last_run(connection).api_calls, last_run(connection).rows_written) == (1, 3)


@pytest.mark.django_db
def test_conversion_action_type_is_configurable_per_connection(graph, meta):
    graph.insights[ACCOUNT] = [
        insight(
            "c1",
            "2026-11-28",
            actions=[{"action_type": "purchase", "value": "9"}, {"action_type": "lead", "value": "5"}],
            action_values=[{"action_type": "purchase", "value": "90.00"}],
        )
    ]
    connection = restated(meta(provider_options={"action_type": "lead"}))

    sync(connection)

    metric = DailyMetric.objects.get(connection=connection)
    assert (metric.conversions, metric.conversion_value) == (Decimal("5"), Decimal("0"))


@pytest.mark.django_db
def test_account_in_los_angeles_at_0630_utc_syncs_its_own_today(graph, meta):
    # 06:30 UTC on the 28th is 22:30 on the 27th in Los Angeles: "today" is the 27th there.
    at = datetime(2026, 11, 28, 6, 30, tzinfo=UTC)
    graph.insights[ACCOUNT] = two_days(days=("2026-11-26", "2026-11-27", "2026-11-28"), spend="5.00")
    connection = restated(meta(timezone_name="America/Los_Angeles"), at)

    sync(connection, at)

    [request] = graph.insights_requests(ACCOUNT)
    assert request.time_range == {"since": "2026-11-26", "until": "2026-11-27"}
    dates = set(DailyMetric.objects.filter(connection=connection).values_list("date", flat=True))
    assert dates == {date(2026, 11, 26), date(2026, 11, 27)}


@pytest.mark.django_db
def test_restatement_refetches_the_lookback_at_the_configured_cadence(graph, meta, settings):
    settings.SYNC_RESTATEMENT_INTERVAL_HOURS = 6
    graph.insights[ACCOUNT] = two_days()
    default = meta(external_account_id="555")
    configured = meta()
    Connection.objects.filter(pk=configured.pk).update(lookback_days=10)

    sync(default)
    syncs = [NOW, NOW + timedelta(seconds=30), NOW + timedelta(hours=5, minutes=59), NOW + timedelta(hours=6)]
    for at in syncs:
        sync(configured, at)

    # 28 days back, in requests of at most a week, the newest first.
    assert ranges(graph.insights_requests("555")) == [
        ("2026-11-22", "2026-11-28"),
        ("2026-11-15", "2026-11-21"),
        ("2026-11-08", "2026-11-14"),
        ("2026-11-01", "2026-11-07"),
        ("2026-10-31", "2026-10-31"),
    ]
    lookback = [("2026-11-22", "2026-11-28"), ("2026-11-18", "2026-11-21")]  # 10 days back
    recent = [("2026-11-27", "2026-11-28")]
    assert ranges(graph.insights_requests(ACCOUNT)) == lookback + recent + recent + lookback
    assert list(
        SyncRun.objects.filter(connection=configured).order_by("started_at").values_list("window", flat=True)
    ) == [
        "lookback",
        "recent",
        "recent",
        "lookback",
    ]


# --- restatements of large accounts ------------------------------------------------------------


@pytest.mark.django_db
def test_a_restatement_meta_refuses_in_one_request_is_fetched_in_weekly_chunks(graph, meta):
    # A busy account: Meta refuses any request over 7 days with 1/1487534, however often asked.
    graph.max_days = 7
    graph.page_size = 5
    graph.insights[ACCOUNT] = two_days(2, days=lookback_days(), spend="1.00")
    connection = meta()

    assert sync(connection) == "success"

    requests = graph.insights_requests(ACCOUNT)
    firsts = [r for r in requests if "after" not in r.params]
    assert ranges(firsts) == [
        ("2026-11-22", "2026-11-28"),
        ("2026-11-15", "2026-11-21"),
        ("2026-11-08", "2026-11-14"),
        ("2026-11-01", "2026-11-07"),
        ("2026-10-31", "2026-10-31"),
    ]
    # 14 rows a week in pages of 5 (3 calls), then 2 rows for the last day (1 call): each counted.
    assert len(requests) == 4 * 3 + 1
    assert calls_counted() == last_run(connection).api_calls == 13
    assert DailyMetric.objects.filter(connection=connection).count() == 2 * 29
    assert (connection.last_restated_at, last_run(connection).rows_written) == (NOW, 58)


# The shapes Meta's "Please reduce the amount of data" comes in (see tests.fakes.graph.too_much_data).
TOO_MUCH_DATA_SHAPES = ["1", "1/1487534", "100/1487534"]


@pytest.mark.django_db
@pytest.mark.parametrize("shape", TOO_MUCH_DATA_SHAPES)
def test_a_chunk_meta_still_refuses_is_halved_newest_first(graph, meta, shape):
    graph.max_days = 2
    graph.too_much_data_shape = shape
    graph.insights[ACCOUNT] = two_days(1, days=lookback_days(), spend="1.00")
    connection = meta()

    assert sync(connection) == "success"

    requests = graph.insights_requests(ACCOUNT)
    assert ranges(requests)[:8] == [
        ("2026-11-22", "2026-11-28"),  # refused
        ("2026-11-26", "2026-11-28"),  # refused
        ("2026-11-28", "2026-11-28"),
        ("2026-11-26", "2026-11-27"),
        ("2026-11-22", "2026-11-25"),  # refused
        ("2026-11-24", "2026-11-25"),
        ("2026-11-22", "2026-11-23"),
        ("2026-11-15", "2026-11-21"),  # refused
    ]
    answered = [(s, u) for s, u in ranges(requests) if date.fromisoformat(u) - date.fromisoformat(s) < timedelta(2)]
    answered_days = sorted(
        (date.fromisoformat(s) + timedelta(days=n)).isoformat()
        for s, u in answered
        for n in range((date.fromisoformat(u) - date.fromisoformat(s)).days + 1)
    )
    assert answered_days == sorted(lookback_days(29))  # every day once
    # The refused calls count against the budget too.
    assert calls_counted() == last_run(connection).api_calls == len(requests)
    assert DailyMetric.objects.filter(connection=connection).count() == 29


@pytest.mark.django_db
@pytest.mark.parametrize("shape", TOO_MUCH_DATA_SHAPES)
def test_a_single_day_meta_refuses_is_a_permanent_error_with_its_message(graph, meta, shape):
    graph.max_days = 0
    graph.too_much_data_shape = shape
    graph.insights[ACCOUNT] = two_days(days=lookback_days())
    connection = meta(sync_frequency=SyncFrequency.HOURLY)

    assert sync(connection) == "error"

    assert ranges(graph.insights_requests(ACCOUNT)) == [
        ("2026-11-22", "2026-11-28"),
        ("2026-11-26", "2026-11-28"),
        ("2026-11-28", "2026-11-28"),
    ]
    assert (connection.last_sync_error_kind, connection.last_sync_error) == (
        "permanent",
        f"Meta cannot return even one day of insights for this ad account (#{shape.split('/')[0]}): "
        f"{TOO_MUCH_DATA_MESSAGE}",
    )
    assert (last_run(connection).api_calls, calls_counted()) == (3, 3)
    assert DailyMetric.objects.filter(connection=connection).count() == 0
    # The restatement is not asked for again on every sync: the next one fetches recent days.
    assert connection.last_restated_at == NOW
    graph.max_days = 2
    assert sync(connection, NOW + timedelta(hours=1)) == "success"
    assert ranges(graph.insights_requests(ACCOUNT))[-1] == ("2026-11-27", "2026-11-28")


@pytest.mark.django_db
@pytest.mark.parametrize("shape", TOO_MUCH_DATA_SHAPES)
def test_too_much_data_in_each_shape_halves_the_chunk_in_fetch(graph, meta, shape):
    graph.insights[ACCOUNT] = two_days(2, days=lookback_days(4), spend="1.00")
    graph.script(too_much_data(shape))
    meter = CallMeter(MetaProvider().budgets(external_account_id=ACCOUNT), clock=lambda: NOW)

    result = MetaProvider().fetch(
        connection=meta(), since=date(2026, 11, 25), until=date(2026, 11, 28), now=NOW, meter=meter
    )

    assert ranges(graph.insights_requests(ACCOUNT)) == [
        ("2026-11-25", "2026-11-28"),  # refused
        ("2026-11-27", "2026-11-28"),
        ("2026-11-25", "2026-11-26"),
    ]
    assert sorted((r.entity_id, r.date.isoformat()) for r in result.rows) == sorted(
        (f"c{n}", day) for n in (1, 2) for day in lookback_days(4)
    )
    assert meter.calls == calls_counted() == 3


@pytest.mark.django_db
def test_a_chunked_restatement_stops_at_the_budget_and_writes_nothing(graph, meta, settings):
    settings.META_CALLS_PER_HOUR = 3
    graph.max_days = 7
    graph.insights[ACCOUNT] = two_days(days=lookback_days())
    connection = meta()

    assert sync(connection) == "rate_limited"

    assert len(graph.insights_requests(ACCOUNT)) == calls_counted() == last_run(connection).api_calls == 3
    assert DailyMetric.objects.filter(connection=connection).count() == 0
    # Still due: the whole lookback is fetched again once the budget allows.
    assert connection.last_restated_at is None
    assert connection.rate_limited_until == NOW + timedelta(hours=1, minutes=1)


# --- throttling, usage headers and the budget ------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("code", "subcode"),
    [(4, None), (17, 2446079), (32, None), (613, 1487742), *((code, 2446079) for code in range(80000, 80015))],
)
def test_throttle_error_defers_the_connection_and_is_not_a_failure(graph, meta, code, subcode):
    graph.script(graph_error(code, f"(#{code}) Too many calls", subcode=subcode))
    connection = restated(meta(sync_frequency=SyncFrequency.REALTIME))

    assert sync(connection) == "rate_limited"

    until = NOW + timedelta(minutes=5)
    assert (connection.sync_status, connection.last_sync_error, connection.last_sync_error_kind) == ("idle", None, "")
    assert (connection.rate_limited_until, connection.next_sync_at) == (until, until)
    run = last_run(connection)
    assert (run.outcome, run.error_class, run.api_calls) == ("rate_limited", "throttled", 1)
    assert f"#{code}" in run.error_message


@pytest.mark.django_db
def test_throttle_error_waits_as_long_as_meta_estimates(graph, meta):
    headers = buc_usage(ACCOUNT, 100, regain_minutes=17)
    graph.script(graph_error(80000, "There have been too many calls from this ad-account.", headers=headers))
    connection = restated(meta())

    sync(connection)

    assert connection.rate_limited_until == NOW + timedelta(minutes=17)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "headers",
    [
        buc_usage(ACCOUNT, 80),
        {"X-Ad-Account-Usage": '{"acc_id_util_pct": 80.5, "reset_time_duration": 0}'},
        {"x-fb-ads-insights-throttle": '{"app_id_util_pct": 12, "acc_id_util_pct": 80}'},
    ],
    ids=["business-use-case", "ad-account", "insights-throttle"],
)
def test_usage_header_at_80_percent_defers_the_next_sync(graph, meta, headers):
    graph.insights[ACCOUNT] = two_days(spend="3.00")
    graph.usage_headers = headers
    connection = restated(meta(sync_frequency=SyncFrequency.REALTIME))

    assert sync(connection) == "success"

    until = NOW + timedelta(minutes=5)
    assert (connection.sync_status, connection.rate_limited_until, connection.next_sync_at) == ("idle", until, until)
    assert DailyMetric.objects.filter(connection=connection).count() == 2
    assert connections_claim_due(now=NOW + timedelta(seconds=30), limit=10) == []


@pytest.mark.django_db
def test_usage_below_the_threshold_keeps_the_schedule(graph, meta):
    graph.insights[ACCOUNT] = two_days()
    graph.usage_headers = buc_usage(ACCOUNT, 70)
    connection = restated(meta(sync_frequency=SyncFrequency.REALTIME))

    sync(connection)

    assert (connection.rate_limited_until, connection.next_sync_at) == (None, NOW + timedelta(seconds=30))


@pytest.mark.django_db
def test_dispatcher_defers_a_due_meta_connection_when_its_budget_is_full(meta):
    connection = meta(sync_frequency=SyncFrequency.REALTIME)
    [budget] = MetaProvider().budgets(external_account_id=ACCOUNT)
    assert budget_try_spend(budget=budget, now=NOW - timedelta(minutes=10), calls=180)

    assert connections_claim_due(now=NOW, limit=10) == []

    connection.refresh_from_db()
    available = NOW - timedelta(minutes=10) + timedelta(hours=1, minutes=1)
    assert (connection.sync_status, connection.rate_limited_until, connection.next_sync_at) == (
        "idle",
        available,
        available,
    )


@pytest.mark.django_db
def test_realtime_for_an_hour_never_exceeds_180_calls_for_the_account(graph, meta):
    # Two pages per ordinary sync (and 29 for the first, the lookback) want ~270 calls an hour.
    graph.page_size = 2
    days = [(date(2026, 11, 28) - timedelta(days=n)).isoformat() for n in range(40)]
    graph.insights[ACCOUNT] = two_days(2, days=days, spend="1.00")
    connection = meta(sync_frequency=SyncFrequency.REALTIME)

    outcomes = []
    for slot in range(120):
        at = NOW + timedelta(seconds=30 * slot)
        with time_machine.travel(at, tick=False):
            for claim in connections_claim_due(now=at, limit=10):
                outcomes.append(connection_sync_run(connection_id=claim.connection_id, job_id=claim.job_id))

    calls = len(graph.insights_requests(ACCOUNT))
    # 29 pages for the lookback (7 for each of four weeks, 1 for the last day), then 2 a sync;
    # the 77th sync gets one page in and stops there.
    assert calls == 180
    assert outcomes == ["success"] * 76 + ["rate_limited"]
    assert ApiCallBucket.objects.filter(key=f"meta:{ACCOUNT}").aggregate(s=Sum("calls"))["s"] == calls
    assert SyncRun.objects.filter(connection=connection).aggregate(s=Sum("api_calls"))["s"] == calls
    connection.refresh_from_db()
    # Resumes by itself once the first minute's calls leave the rolling hour.
    assert connection.rate_limited_until == NOW + timedelta(hours=1, minutes=1)
    assert connection.next_sync_at == connection.rate_limited_until
    assert connection.sync_status == SyncStatus.IDLE


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_expired_token_is_an_error_asking_to_reconnect(graph, meta):
    connection = restated(meta(credentials={"access_token": "EAAexpired-token"}))

    assert sync(connection) == "error"

    assert (connection.sync_status, connection.last_sync_error, connection.last_sync_error_kind) == (
        "error",
        RECONNECT_MESSAGE,
        "auth",
    )
    assert RECONNECT_MESSAGE == "Meta access expired — reconnect the account"
    assert len(graph.insights_requests(ACCOUNT)) == 1


@pytest.mark.django_db
def test_missing_token_asks_to_reconnect_without_calling_meta(graph, meta):
    connection = restated(meta(credentials={}))

    sync(connection)

    assert (connection.sync_status, connection.last_sync_error) == ("error", RECONNECT_MESSAGE)
    assert graph.requests == []


@pytest.mark.django_db
def test_permission_error_asks_to_reconnect_with_metas_message(graph, meta):
    graph.script(graph_error(200, "(#200) Requires ads_read permission", error_type="OAuthException", status=403))
    connection = restated(meta())

    sync(connection)

    assert (connection.sync_status, connection.last_sync_error_kind) == ("error", "auth")
    # Meta's own "(#200) " prefix is not repeated.
    assert connection.last_sync_error == (
        "Meta denied access to this ad account (#200): Requires ads_read permission — reconnect the account"
    )


@pytest.mark.django_db
def test_other_errors_show_metas_message(graph, meta):
    graph.script(graph_error(100, "(#100) Tried accessing nonexisting field (foo)", error_type="OAuthException"))
    connection = restated(meta())

    sync(connection)

    assert (connection.sync_status, connection.last_sync_error_kind) == ("error", "permanent")
    assert connection.last_sync_error == "Meta rejected the request (#100): Tried accessing nonexisting field (foo)"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"campaign_id": ""}, "no campaign_id"),
        ({"date_start": "2026-11-27x"}, "date_start '2026-11-27x' is not a date"),
        ({"spend": "12,50"}, "a number AdSync cannot read: '12,50'"),
        ({"actions": [{"action_type": "omni_purchase", "value": "lots"}]}, "a number AdSync cannot read: 'lots'"),
    ],
    ids=["no-campaign-id", "bad-date", "bad-spend", "bad-conversions"],
)
def test_an_unexpected_insights_row_is_a_permanent_error(graph, meta, fields, problem):
    graph.insights[ACCOUNT] = [insight("c1", "2026-11-28"), insight("c2", "2026-11-27", **fields)]
    connection = restated(meta())

    assert sync(connection) == "error"

    assert (connection.last_sync_error_kind, connection.last_sync_error) == (
        "permanent",
        f"Meta sent an unexpected insights row ({problem})",
    )
    assert DailyMetric.objects.filter(connection=connection).count() == 0


@pytest.mark.django_db
def test_a_request_the_sdk_cannot_build_is_permanent(graph, meta, settings):
    settings.META_API_VERSION = "26.0"  # past the settings check, which would refuse it at startup
    connection = restated(meta())

    assert sync(connection) == "error"

    assert (connection.last_sync_error_kind, connection.last_sync_error) == (
        "permanent",
        "Meta request could not be built: Please provide the API version in the following format: v26.0",
    )
    assert graph.requests == []


@pytest.mark.django_db
def test_an_sdk_parameter_error_is_permanent_and_never_shows_the_token(graph, meta, monkeypatch):
    def refuse(self, fields=None, params=None, **kwargs):
        raise FacebookBadParameterError(
            f"Bad value in {{'access_token': '{TOKEN}', 'level': 'x'}} ?access_token={TOKEN}"
        )

    monkeypatch.setattr(AdAccount, "get_insights", refuse)
    connection = restated(meta())

    assert sync(connection) == "error"

    assert connection.last_sync_error_kind == "permanent"
    assert connection.last_sync_error == (
        "Meta request could not be built: Bad value in {'access_token': '[redacted]', 'level': 'x'} "
        "?access_token=[redacted]"
    )


@pytest.mark.django_db
def test_json_of_an_unexpected_shape_is_permanent(graph, meta):
    graph.script(Answer(200, '{"data": "not a list of rows"}'))
    connection = restated(meta())

    assert sync(connection) == "error"

    assert (connection.last_sync_error_kind, connection.last_sync_error) == (
        "permanent",
        "Meta sent a response AdSync cannot read: Bad data to set object data",
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    "failure",
    [
        html_502(),
        graph_error(2, "An unexpected error has occurred. Please retry your request later.", is_transient=True),
        # Meta's "unknown error" (code 1 without the "reduce the amount of data" subcode).
        graph_error(1, "An unknown error occurred", status=500),
        # HTML where JSON belongs, which the SDK would take for a success.
        Answer(200, "<html><body>Sorry, something went wrong.</body></html>", content_type="text/html"),
        html_page(403, "403 Forbidden"),
        # "success" in the page: the SDK would index the text with it (a TypeError).
        html_page(200, "Login successful"),
        Answer(200, ""),
        Answer(200, "[]"),
    ],
    ids=["html-502", "is-transient", "http-500", "html-200", "html-403", "html-200-success", "empty-200", "list"],
)
def test_transient_errors_are_retried_within_the_budget(graph, meta, failure):
    graph.insights[ACCOUNT] = two_days(spend="2.00")
    graph.script(failure, failure)
    connection = restated(meta())

    with time_machine.travel(NOW, tick=False):
        job = connection_enqueue_sync(connection=connection, now=NOW, send=False)
        sync_connection.apply(args=[connection.pk, str(job.job_id)])

    connection.refresh_from_db()
    assert (connection.sync_status, connection.last_sync_error) == ("idle", None)
    runs = SyncRun.objects.filter(connection=connection).order_by("pk")
    assert [(r.outcome, r.api_calls) for r in runs] == [("retrying", 1), ("retrying", 1), ("success", 1)]
    assert len(graph.insights_requests(ACCOUNT)) == 3
    assert ApiCallBucket.objects.filter(key=f"meta:{ACCOUNT}").aggregate(s=Sum("calls"))["s"] == 3
    assert DailyMetric.objects.filter(connection=connection).count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        (
            html_page(403, "403 Forbidden"),
            TransientProviderError,
            "Meta sent a response that could not be read (HTTP 403).",
        ),
        (html_page(200, "Sorry"), TransientProviderError, "Meta sent a response that could not be read (HTTP 200)."),
        (html_page(429, "Too Many Requests"), ThrottledError, "Meta is rate limiting this ad account (HTTP 429)."),
        (html_page(503, "Service Unavailable"), TransientProviderError, "Meta is temporarily unavailable (HTTP 503)."),
    ],
    ids=["html-403", "html-200", "html-429", "html-503"],
)
def test_a_body_that_is_not_json_is_a_provider_error_with_a_short_message(
    graph, meta, settings, answer, error, message
):
    settings.META_PAUSE_MINUTES = 7
    graph.insights[ACCOUNT] = two_days()
    graph.script(answer)
    meter = CallMeter(MetaProvider().budgets(external_account_id=ACCOUNT), clock=lambda: NOW)

    with pytest.raises(error) as raised:
        MetaProvider().fetch(
            connection=meta(), since=date(2026, 11, 27), until=date(2026, 11, 28), now=NOW, meter=meter
        )

    assert type(raised.value) is error
    assert str(raised.value) == message
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None
    if error is ThrottledError:
        assert raised.value.until == NOW + timedelta(minutes=7)
    assert meter.calls == calls_counted() == 1


@pytest.mark.django_db
def test_an_html_429_defers_the_connection_for_the_pause(graph, meta):
    graph.script(html_page(429, "Too Many Requests"))
    connection = restated(meta(sync_frequency=SyncFrequency.REALTIME))

    assert sync(connection) == "rate_limited"

    until = NOW + timedelta(minutes=5)
    assert (connection.sync_status, connection.last_sync_error, connection.rate_limited_until) == ("idle", None, until)
    run = last_run(connection)
    assert (run.outcome, run.error_class, run.api_calls) == ("rate_limited", "throttled", 1)
    assert run.error_message == "Meta is rate limiting this ad account (HTTP 429)."


@pytest.mark.django_db
def test_html_502_is_an_error_once_the_retries_run_out(graph, meta, settings):
    settings.SYNC_TRANSIENT_RETRIES = 1
    graph.script(html_502(), html_502())
    connection = restated(meta())

    with time_machine.travel(NOW, tick=False):
        job = connection_enqueue_sync(connection=connection, now=NOW, send=False)
        sync_connection.apply(args=[connection.pk, str(job.job_id)])

    connection.refresh_from_db()
    assert (connection.sync_status, connection.last_sync_error_kind) == ("error", "transient")
    assert connection.last_sync_error == "Meta is temporarily unavailable (HTTP 502)."


# --- numbers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "exact"),
    [
        ("1234.56", "1234.560000"),
        ("1.2345675", "1.234568"),  # half up, as PostgreSQL rounds numeric(20, 6)
        ("0.0000005", "0.000001"),
        ("-0.0000005", "-0.000001"),
        (0.1, "0.100000"),  # the double's shortest form, not 0.1000000000000000055...
        (1 / 3, "0.333333"),
        (7, "7.000000"),
    ],
)
def test_decimal_exact_gives_the_stored_six_places(value, exact):
    assert str(decimal_exact(value)) == exact


@pytest.mark.parametrize("value", ["12,50", "", "NaN", "Infinity", float("inf")])
def test_decimal_exact_refuses_what_is_not_a_finite_number(value):
    with pytest.raises(InvalidOperation):
        decimal_exact(value)


@pytest.mark.django_db
def test_an_unchanged_resync_with_more_than_six_places_writes_nothing(graph, meta):
    graph.insights[ACCOUNT] = [
        insight(
            "c1",
            "2026-11-28",
            spend="1.2345675",
            actions=[{"action_type": "purchase", "value": "0.33333333"}],
            action_values=[{"action_type": "purchase", "value": "10.0000004"}],
        )
    ]
    connection = restated(meta())

    sync(connection)
    assert sync(connection, NOW + timedelta(seconds=30)) == "success"

    metric = DailyMetric.objects.get(connection=connection)
    assert (metric.spend, metric.conversions, metric.conversion_value) == (
        Decimal("1.234568"),
        Decimal("0.333333"),
        Decimal("10.000000"),
    )
    runs = SyncRun.objects.filter(connection=connection).order_by("pk")
    assert [(r.rows_fetched, r.rows_written) for r in runs] == [(1, 1), (1, 0)]
    assert connection.total_syncs_with_changes == 1


# --- settings -------------------------------------------------------------------------------------


def django_setup(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run `code` after django.setup() in a fresh interpreter, with these environment variables."""
    environment = dict(os.environ, DJANGO_SETTINGS_MODULE="adsync.settings", **env)
    script = f"import django; django.setup(); {code}"
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True, text=True)


@pytest.mark.parametrize("version", ["v26", "26.0"])
def test_a_malformed_meta_api_version_stops_the_app_at_startup(version):
    out = django_setup("", META_API_VERSION=version)

    assert out.returncode == 1
    assert f"ImproperlyConfigured: META_API_VERSION={version!r} is not like v26.0" in out.stderr


def test_token_redaction_is_declared_in_logging_settings():
    code = (
        "import logging;"
        "names = lambda logger: [f'{type(f).__module__}.{type(f).__name__}'"
        " for f in logging.getLogger(logger).filters];"
        "print(names('urllib3.connectionpool')); print('adsync.redaction.RedactTokens' in names('httpx'))"
    )
    out = django_setup(code)

    assert out.stdout.splitlines() == ["['adsync.redaction.RedactTokens']", "True"], out.stderr


# --- no crash reporter, no token anywhere ------------------------------------------------------


@pytest.mark.django_db
def test_sync_leaves_sys_excepthook_unchanged(graph, meta):
    hook = sys.excepthook
    graph.insights[ACCOUNT] = two_days()
    import facebook_business.api  # noqa: F401 - importing the SDK must not install anything either

    sync(restated(meta()))
    graph.script(graph_error(190, "Error validating access token", subcode=463))
    sync(meta(external_account_id="2"))

    assert sys.excepthook is hook
    assert sys.excepthook is sys.__excepthook__


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.django_db
def test_no_token_in_logs_errors_or_api_responses(graph, meta, owner, settings, caplog):
    caplog.set_level(logging.DEBUG)
    graph.insights[ACCOUNT] = two_days()
    connection = restated(meta())
    sync(connection)
    graph.script(graph_error(100, "(#100) Invalid parameter"))
    sync(connection, NOW + timedelta(minutes=1))
    graph.script(html_502())
    sync(connection, NOW + timedelta(minutes=2))
    # Nothing listens there: requests' own error message carries the URL, token and all.
    settings.META_GRAPH_URL = f"http://127.0.0.1:{closed_port()}"
    sync(connection, NOW + timedelta(minutes=3))
    assert connection.last_sync_error == "Could not reach Meta (ConnectionError)."

    # The test saw the SDK's requests being logged (urllib3 logs each URL at DEBUG), redacted.
    assert "access_token=[redacted]" in caplog.text
    assert TOKEN not in caplog.text
    runs = SyncRun.objects.filter(connection=connection)
    assert runs.count() == 4
    assert all(TOKEN not in (run.error_message or "") for run in runs)
    assert TOKEN not in (connection.last_sync_error or "")
    with db.cursor() as cursor:
        cursor.execute("SELECT credentials FROM connections WHERE id = %s", [connection.pk])
        [(stored,)] = cursor.fetchall()
    assert TOKEN not in stored  # encrypted at rest

    _, key = api_token_issue(user=owner)
    client = Client(HTTP_AUTHORIZATION=f"Token {key}")
    base = f"/connections/{connection.public_id}"
    for url in ["/connections/", base, f"{base}/sync-status", f"{base}/sync-runs"]:
        response = client.get(url, HTTP_ACCEPT="application/json")
        assert response.status_code == 200, url
        assert TOKEN not in response.content.decode()
        assert "credentials" not in response.content.decode()
        assert "access_token" not in response.content.decode()
    detail = client.get(base, HTTP_ACCEPT="application/json").json()
    assert "credentials" not in detail
