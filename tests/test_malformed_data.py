"""A platform row AdSync cannot store ends the sync in an error naming the platform, the field,
the campaign, the day and the value, and nothing of the fetch is written
(syncing/providers/values.py, used by the Meta rows and the Google provider's _row).

The real SDKs over the wire to the fakes on 127.0.0.1 (tests/fakes/graph.py,
tests/fakes/google_ads.py), through the real runner and state machine: queue the job, run it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import models

from connections.models import Connection, SyncStatus
from syncing.models import DailyMetric, SyncOutcome, SyncRun
from syncing.providers import values
from syncing.runner import connection_sync_run
from syncing.services import connection_enqueue_sync
from tests.fakes.google_ads import Account, CampaignDay
from tests.fakes.graph import insight, without
from tests.google_fixtures import google_reset
from tests.google_fixtures import google_servers_fixture as google_servers_fixture  # a fixture: pytest finds it by name
from tests.meta_provider_fixtures import ACCOUNT, NOW, last_run, restated, sync
from tests.meta_provider_fixtures import graph_fixture as graph_fixture  # a fixture: pytest finds it by name
from tests.meta_provider_fixtures import meta_fixture as meta_fixture  # a fixture: pytest finds it by name

pytestmark = pytest.mark.django_db

META = "Meta sent a value AdSync cannot read: "
GOOGLE = "Google Ads sent a value AdSync cannot read: "


def stored(connection: Connection) -> dict:
    """Every DailyMetric row of the connection, with every value and when it last changed."""
    return {
        (m.entity_id, m.date): (m.spend, m.impressions, m.clicks, m.conversions, m.conversion_value, m.updated_at)
        for m in DailyMetric.objects.filter(connection=connection)
    }


def test_the_limits_are_those_of_the_dailymetric_columns():
    for name in ("spend", "conversions", "conversion_value"):
        field = DailyMetric._meta.get_field(name)
        assert isinstance(field, models.DecimalField)
        assert (field.max_digits, field.decimal_places) == (20, 6)
        assert Decimal(10) ** (field.max_digits - field.decimal_places) == values.MONEY_LIMIT
    assert values.BIGINT_MAX == models.BigIntegerField.MAX_BIGINT
    assert DailyMetric._meta.get_field("entity_id").max_length == values.ENTITY_ID_LENGTH
    assert DailyMetric._meta.get_field("currency").max_length == 3


# --- Meta ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (insight("123", "2026-11-27", spend="abc"), 'spend "abc" for campaign 123 on 2026-11-27 (not a number)'),
        # The SDK drops a field whose value is null: to AdSync it is missing.
        (insight("123", "2026-11-27", impressions=None), "impressions missing for campaign 123 on 2026-11-27"),
        (without(insight("123", "2026-11-27"), "date_start"), "date_start missing for campaign 123"),
        (
            insight("123", "2026-11-27", date_start="2026-11-27x"),
            'date_start "2026-11-27x" for campaign 123 (not a date)',
        ),
        (insight("", "2026-11-27"), "campaign_id missing on 2026-11-27"),
        (insight("1" * 65, "2026-11-27"), f'campaign_id "{"1" * 40}…" on 2026-11-27 (longer than 64 characters)'),
        (
            insight("123", "2026-11-27", spend="1e400"),
            'spend "1e400" for campaign 123 on 2026-11-27 (larger than AdSync can store)',
        ),
        (
            insight("123", "2026-11-27", spend="100000000000000"),
            'spend "100000000000000" for campaign 123 on 2026-11-27 (larger than AdSync can store)',
        ),
        # Rounded to the column's six places, it no longer fits.
        (
            insight("123", "2026-11-27", spend="99999999999999.9999995"),
            'spend "99999999999999.9999995" for campaign 123 on 2026-11-27 (larger than AdSync can store)',
        ),
        (insight("123", "2026-11-27", spend="-0.01"), 'spend "-0.01" for campaign 123 on 2026-11-27 (negative)'),
        (insight("123", "2026-11-27", spend="NaN"), 'spend "NaN" for campaign 123 on 2026-11-27 (not a number)'),
        (insight("123", "2026-11-27", spend=""), 'spend "" for campaign 123 on 2026-11-27 (not a number)'),
        # Decimal() reads other scripts' digits; a platform's decimal text has none.
        (insight("123", "2026-11-27", spend="١٢"), 'spend "١٢" for campaign 123 on 2026-11-27 (not a number)'),
        (
            insight("123", "2026-11-27", spend="9" * 60),
            f'spend "{"9" * 40}…" for campaign 123 on 2026-11-27 (larger than AdSync can store)',
        ),
        (
            insight("123", "2026-11-27", clicks="2.5"),
            'clicks "2.5" for campaign 123 on 2026-11-27 (not a whole number)',
        ),
        (insight("123", "2026-11-27", clicks="-1"), 'clicks "-1" for campaign 123 on 2026-11-27 (negative)'),
        (
            insight("123", "2026-11-27", impressions=str(2**63)),
            f'impressions "{2**63}" for campaign 123 on 2026-11-27 (larger than AdSync can store)',
        ),
        (
            insight("123", "2026-11-27", action_values=[{"action_type": "omni_purchase", "value": "Infinity"}]),
            'action_values.omni_purchase "Infinity" for campaign 123 on 2026-11-27 (not a number)',
        ),
        (
            insight("123", "2026-11-27", actions=[{"action_type": "purchase"}]),
            "actions.purchase missing for campaign 123 on 2026-11-27",
        ),
        (
            insight("123", "2026-11-27", account_currency="EURO"),
            'account_currency "EURO" for campaign 123 on 2026-11-27 (not a currency code)',
        ),
    ],
    ids=[
        "text-spend",
        "null-impressions",
        "no-date",
        "not-a-date",
        "no-campaign",
        "long-campaign-id",
        "huge-exponent",
        "too-many-digits",
        "rounds-over",
        "negative-spend",
        "nan",
        "empty",
        "arabic-indic-digits",
        "long-value-cut",
        "fractional-clicks",
        "negative-clicks",
        "bigint-overflow",
        "infinite-value",
        "action-without-value",
        "bad-currency",
    ],
)
def test_a_meta_row_adsync_cannot_store_ends_the_sync_naming_it(graph, meta, row, message):
    graph.insights[ACCOUNT] = [insight("100", "2026-11-28", spend="1.00"), row]
    connection = restated(meta())

    assert sync(connection) == SyncOutcome.ERROR

    assert (connection.sync_status, connection.last_sync_error_kind, connection.last_sync_error) == (
        SyncStatus.ERROR,
        "permanent",
        META + message,
    )
    assert DailyMetric.objects.filter(connection=connection).count() == 0


def test_meta_values_at_the_columns_limits_are_stored_exactly(graph, meta):
    graph.insights[ACCOUNT] = [
        insight(
            "123",
            "2026-11-28",
            spend="99999999999999.999999",
            impressions=str(2**63 - 1),
            clicks="7.000",
            actions=[{"action_type": "omni_purchase", "value": "-2"}],
        )
    ]
    connection = restated(meta())

    assert sync(connection) == SyncOutcome.SUCCESS

    metric = DailyMetric.objects.get(connection=connection)
    assert (metric.spend, metric.impressions, metric.clicks, metric.conversions) == (
        Decimal("99999999999999.999999"),
        2**63 - 1,
        7,
        Decimal(-2),
    )


def test_a_malformed_row_on_metas_second_page_leaves_the_stored_rows_as_they_were(graph, meta):
    days = ("2026-11-27", "2026-11-28")
    graph.insights[ACCOUNT] = [insight(c, d, spend="1.00", impressions="10") for d in days for c in ("1", "2")]
    connection = restated(meta())
    assert sync(connection) == SyncOutcome.SUCCESS
    before = stored(connection)
    assert len(before) == 4
    # Every row changed, in pages of two; the second page's last row is one AdSync cannot read.
    graph.insights[ACCOUNT] = [
        insight("1", "2026-11-27", spend="2.00", impressions="20"),
        insight("2", "2026-11-27", spend="2.00", impressions="20"),
        insight("1", "2026-11-28", spend="2.00", impressions="20"),
        insight("2", "2026-11-28", spend="abc", impressions="20"),
    ]
    graph.page_size = 2
    first_sync_calls = len(graph.insights_requests(ACCOUNT))

    assert sync(connection, now=NOW + timedelta(minutes=1)) == SyncOutcome.ERROR

    message = META + 'spend "abc" for campaign 2 on 2026-11-28 (not a number)'
    assert (connection.sync_status, connection.last_sync_error) == (SyncStatus.ERROR, message)
    assert [r.params.get("after") for r in graph.insights_requests(ACCOUNT)[first_sync_calls:]] == [None, "2"]
    assert stored(connection) == before
    run = last_run(connection)
    assert (run.outcome, run.error_class, run.error_message, run.rows_written) == (
        SyncOutcome.ERROR,
        "permanent",
        message,
        0,
    )


# --- Google -------------------------------------------------------------------------------------

# Frozen in the future: gRPC compares a deadline taken from time.time() with the real clock
# (see tests/test_google_provider.py).
GOOGLE_NOW = datetime(2031, 3, 14, 9, 30, tzinfo=UTC)
TODAY = date(2031, 3, 14)
YESTERDAY = TODAY - timedelta(days=1)
CUSTOMER = "1234567890"


@pytest.fixture
def google(google_servers, settings):
    google_reset(google_servers, settings)
    google_servers.ads.add_account(Account(CUSTOMER, "Shop DE", currency="EUR", time_zone="Europe/Berlin"))
    return google_servers


@pytest.fixture
def frozen():
    with time_machine.travel(GOOGLE_NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def google_connection(make_connection, google, frozen) -> Connection:
    return make_connection(
        provider="google",
        external_account_id=CUSTOMER,
        name="Google Ads",
        currency="EUR",
        timezone_name="Europe/Berlin",
        credentials={"refresh_token": google.oauth.grant("1//refresh-token")},
    )


def google_sync(connection: Connection) -> str | None:
    job = connection_enqueue_sync(connection=connection, send=False)
    outcome = connection_sync_run(connection_id=connection.pk, job_id=job.job_id)
    connection.refresh_from_db()
    return outcome


def campaign_day(campaign_id: int = 12, day: date = YESTERDAY, cost_micros: int = 1_000_000, **fields) -> CampaignDay:
    return CampaignDay(CUSTOMER, campaign_id, f"Campaign {campaign_id}", day, cost_micros, **fields)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (campaign_day(cost_micros=-1), "metrics.cost_micros -1 for campaign 12 on 2031-03-13 (negative)"),
        (campaign_day(impressions=-5), "metrics.impressions -5 for campaign 12 on 2031-03-13 (negative)"),
        (campaign_day(clicks=-1), "metrics.clicks -1 for campaign 12 on 2031-03-13 (negative)"),
        (
            campaign_day(conversions=float("nan")),
            "metrics.conversions nan for campaign 12 on 2031-03-13 (not a finite number)",
        ),
        (
            campaign_day(conversions_value=float("inf")),
            "metrics.conversions_value inf for campaign 12 on 2031-03-13 (not a finite number)",
        ),
        (
            campaign_day(conversions=1e20),
            "metrics.conversions 1e+20 for campaign 12 on 2031-03-13 (larger than AdSync can store)",
        ),
        (campaign_day(date_sent="2031-02-30"), 'segments.date "2031-02-30" for campaign 12 (not a date)'),
        (campaign_day(date_sent=""), "segments.date missing for campaign 12"),
        (campaign_day(campaign_id=0), "campaign.id missing on 2031-03-13"),
    ],
    ids=[
        "negative-cost",
        "negative-impressions",
        "negative-clicks",
        "nan-conversions",
        "infinite-value",
        "too-large-conversions",
        "impossible-date",
        "no-date",
        "no-campaign-id",
    ],
)
def test_a_google_row_adsync_cannot_store_ends_the_sync_naming_it(google, google_connection, row, message):
    google.ads.campaigns = [campaign_day(11, TODAY), row]

    assert google_sync(google_connection) == SyncOutcome.ERROR

    assert (google_connection.last_sync_error_kind, google_connection.last_sync_error) == (
        "permanent",
        GOOGLE + message,
    )
    assert DailyMetric.objects.filter(connection=google_connection).count() == 0


def test_a_currency_google_sends_that_is_not_a_code_ends_the_sync_naming_it(google, google_connection):
    google.ads.add_account(Account(CUSTOMER, "Shop DE", currency="EURO", time_zone="Europe/Berlin"))
    google.ads.campaigns = [campaign_day(11, TODAY)]

    assert google_sync(google_connection) == SyncOutcome.ERROR

    assert google_connection.last_sync_error == (
        GOOGLE + 'customer.currency_code "EURO" for campaign 11 on 2031-03-14 (not a currency code)'
    )


def test_google_values_at_the_columns_limits_are_stored_exactly(google, google_connection):
    google.ads.campaigns = [campaign_day(cost_micros=2**63 - 1, impressions=2**63 - 1, conversions=-1.5)]

    assert google_sync(google_connection) == SyncOutcome.SUCCESS

    metric = DailyMetric.objects.get(connection=google_connection)
    assert (metric.spend, metric.impressions, metric.conversions) == (
        Decimal("9223372036854.775807"),
        2**63 - 1,
        Decimal("-1.5"),
    )


def test_a_malformed_row_in_googles_second_batch_leaves_the_stored_rows_as_they_were(google, google_connection, frozen):
    google.ads.campaigns = [campaign_day(11, YESTERDAY), campaign_day(12, YESTERDAY), campaign_day(11, TODAY)]
    assert google_sync(google_connection) == SyncOutcome.SUCCESS
    before = stored(google_connection)
    assert len(before) == 3
    # Every row changed, in batches of two; the second batch carries one AdSync cannot read.
    google.ads.batch_size = 2
    google.ads.campaigns = [
        campaign_day(11, YESTERDAY, cost_micros=2_000_000),
        campaign_day(12, YESTERDAY, cost_micros=2_000_000),
        campaign_day(11, TODAY, cost_micros=2_000_000),
        campaign_day(12, TODAY, cost_micros=-2_000_000),
    ]
    frozen.shift(timedelta(minutes=1))

    assert google_sync(google_connection) == SyncOutcome.ERROR

    message = GOOGLE + "metrics.cost_micros -2000000 for campaign 12 on 2031-03-14 (negative)"
    assert (google_connection.sync_status, google_connection.last_sync_error) == (SyncStatus.ERROR, message)
    assert len(google.ads.search_streams()) == 2
    assert stored(google_connection) == before
    run = SyncRun.objects.filter(connection=google_connection).latest("started_at", "pk")
    assert (run.outcome, run.error_class, run.error_message, run.rows_written) == (
        SyncOutcome.ERROR,
        "permanent",
        message,
        0,
    )
