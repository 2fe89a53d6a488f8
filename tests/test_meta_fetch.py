"""The Meta provider's fetch (syncing/providers/meta/provider.py) and its rows (rows.py): every
page, exact rows and money, the account's own day, restatements in chunks Meta accepts, and
numbers to six places.

The real facebook-business SDK over the wire to a fake Graph API on 127.0.0.1 (see
tests/meta_provider_fixtures.py). Syncs go through the real runner, state machine, budget and
dispatcher; only the network edge (the Graph API) is fake.
"""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

import pytest
from django.db.models import Sum

from connections.models import Connection, SyncFrequency
from syncing.meter import CallMeter
from syncing.models import ApiCallBucket, DailyMetric, SyncRun
from syncing.providers.base import decimal_exact
from syncing.providers.meta import MetaProvider
from tests.fakes.graph import TOO_MUCH_DATA_MESSAGE, insight, too_much_data
from tests.meta_provider_fixtures import (
    ACCOUNT,
    NOW,
    TOKEN,
    calls_counted,
    last_run,
    lookback_days,
    ranges,
    restated,
    sync,
    two_days,
)
from tests.meta_provider_fixtures import graph_fixture as graph_fixture  # a fixture: pytest finds it by name
from tests.meta_provider_fixtures import meta_fixture as meta_fixture  # a fixture: pytest finds it by name

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
