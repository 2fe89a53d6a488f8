"""The Meta provider's budget and Meta's usage headers (syncing/providers/meta/usage.py): the
hourly budget per ad account, throttle errors, usage headers that pace a busy scope, and the
dispatcher keeping a realtime connection within the budget.

The real facebook-business SDK over the wire to a fake Graph API on 127.0.0.1 (see
tests/meta_provider_fixtures.py). Syncs go through the real runner, state machine, budget and
dispatcher; only the network edge (the Graph API) is fake.
"""

from datetime import date, timedelta

import pytest
import time_machine
from django.db.models import Sum

from connections.models import SyncFrequency, SyncStatus
from syncing.budget import budget_try_spend
from syncing.dispatcher import connections_claim_due
from syncing.models import ApiCallBucket, DailyMetric, PlatformScope, SyncRun
from syncing.providers import PROVIDERS, provider_for
from syncing.providers.meta import MetaProvider
from syncing.runner import connection_sync_run
from syncing.scopes import meta_account_scope, meta_business_scope
from tests.fakes.graph import buc_usage, graph_error
from tests.meta_provider_fixtures import ACCOUNT, NOW, last_run, restated, sync, two_days
from tests.meta_provider_fixtures import graph_fixture as graph_fixture  # a fixture: pytest finds it by name
from tests.meta_provider_fixtures import meta_fixture as meta_fixture  # a fixture: pytest finds it by name

# --- registry and budget ----------------------------------------------------------------------


def test_meta_is_registered_with_an_hourly_budget_per_ad_account(settings):
    settings.META_CALLS_PER_HOUR = 180
    provider = provider_for("meta")

    assert provider is PROVIDERS["meta"]
    assert (provider.slug, provider.label, provider.default_lookback_days) == ("meta", "Meta", 28)
    [budget] = provider.budgets(external_account_id="act_42")
    assert (budget.key, budget.limit, budget.window) == ("meta:42", 180, timedelta(hours=1))
    assert provider.budgets(external_account_id="42") == [budget]


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
    ("headers", "scope"),
    [
        (buc_usage(ACCOUNT, 80), meta_business_scope(ACCOUNT, "ads_insights")),
        ({"X-Ad-Account-Usage": '{"acc_id_util_pct": 80.5, "reset_time_duration": 0}'}, meta_account_scope(ACCOUNT)),
        ({"x-fb-ads-insights-throttle": '{"app_id_util_pct": 12, "acc_id_util_pct": 80}'}, meta_account_scope(ACCOUNT)),
    ],
    ids=["business-use-case", "ad-account", "insights-throttle"],
)
def test_usage_header_at_80_percent_paces_its_scope_and_keeps_the_rows(graph, meta, headers, scope):
    graph.insights[ACCOUNT] = two_days(spend="3.00")
    graph.usage_headers = headers
    connection = restated(meta(sync_frequency=SyncFrequency.REALTIME))

    assert sync(connection) == "success"

    # Not a pause of the account: a pace for the busy scope (syncing.scopes), shared by every
    # connection in it, so usage stays under 100 % (tests/test_platform_scopes.py).
    assert (connection.sync_status, connection.rate_limited_until) == ("idle", None)
    assert DailyMetric.objects.filter(connection=connection).count() == 2
    paced = PlatformScope.objects.get()
    assert (paced.scope, paced.throttled_until, paced.pace_limit) == (scope, None, 1)
    # One call in the window was ~80 %: a second would pass the 90 % target, so it waits.
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
