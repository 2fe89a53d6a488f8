"""Platform limits shared across connections (syncing/scopes.py, issue 12): a throttle on Meta's
app, a business's use case or an ad account is stored once and defers every connection in it
without a call; after its end a single probe goes out; usage headers pace a busy scope, read
after every answer (between a restatement's chunks too).

The real facebook-business SDK over the wire to a fake Graph API on 127.0.0.1; syncs go through
the real dispatcher, runner, state machine and budget.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import time_machine

from connections.models import Connection, SyncFrequency, SyncStatus
from syncing.budget import Budget, budget_try_spend
from syncing.dispatcher import connections_claim_due
from syncing.models import DailyMetric, PlatformScope, SyncRun
from syncing.runner import connection_sync_run
from syncing.scopes import META_APP, meta_account_scope, meta_business_scope, pace_key, usage_window
from syncing.services import RateLimited, connection_enqueue_sync
from tests.fakes.graph import buc_usage, graph_error
from tests.meta_provider_fixtures import ACCOUNT, NOW, TOKEN, last_run, restated, sync, two_days
from tests.meta_provider_fixtures import graph_fixture as graph_fixture  # a fixture: pytest finds it by name
from tests.meta_provider_fixtures import meta_fixture as meta_fixture  # a fixture: pytest finds it by name

# Also on SQLite (the embedded mode): the scope's SQL and the budget's upsert there.
pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

OTHER = "2222222222"
THIRD = "3333333333"


def app_usage(percent: float) -> dict[str, str]:
    return {"X-App-Usage": json.dumps({"call_count": percent, "total_cputime": 5, "total_time": 5})}


@pytest.fixture
def accounts(graph, meta):
    """Three realtime Meta connections under the one app, their restatements done."""
    made = []
    for number in (ACCOUNT, OTHER, THIRD):
        graph.insights[number] = two_days(spend="1.00")
        made.append(restated(meta(external_account_id=number, name=f"Shop {number}", sync_frequency="realtime")))
    return made


def reload(connection: Connection) -> Connection:
    connection.refresh_from_db()
    return connection


def claim_and_run(now, limit: int = 10) -> dict[int, str | None]:
    """One dispatcher claim at `now`, each claimed job run inline: {connection id: outcome}."""
    with time_machine.travel(now, tick=False):
        return {
            claim.connection_id: connection_sync_run(connection_id=claim.connection_id, job_id=claim.job_id)
            for claim in connections_claim_due(now=now, limit=limit)
        }


# --- a throttle on the app defers every connection in it, without a call -------------------------


def test_an_app_throttle_defers_every_meta_connection_at_once_with_the_same_resume_time(
    graph, meta, accounts, make_connection
):
    first, second, third = accounts
    demo = make_connection(sync_frequency=SyncFrequency.REALTIME)
    manual = meta(external_account_id="4444444444", name="Manual shop")
    expired = meta(external_account_id="5555555555", name="Expired shop", sync_frequency="hourly")
    Connection.objects.filter(pk=expired.pk).update(
        sync_status=SyncStatus.ERROR, last_sync_error_kind="auth", next_sync_at=None
    )
    graph.script(graph_error(4, "(#4) Application request limit reached", is_transient=True))

    assert sync(first) == "rate_limited"

    until = NOW + timedelta(minutes=5)
    throttle = PlatformScope.objects.get(scope=META_APP)
    assert throttle.throttled_until == until
    assert "#4" in throttle.reason
    for connection in (first, reload(second), reload(third)):
        assert (connection.sync_status, connection.rate_limited_until, connection.next_sync_at) == (
            SyncStatus.IDLE,
            until,
            until,
        )
    # Nothing else in the app's scope: the demo connection keeps its schedule.
    assert reload(demo).rate_limited_until is None
    # Unscheduled connections show the throttle (Sync Now is refused) and stay unscheduled.
    for unscheduled in (reload(manual), reload(expired)):
        assert (unscheduled.rate_limited_until, unscheduled.next_sync_at) == (until, None)
    assert "this app" in last_run(first).error_message


def test_no_call_is_made_for_the_other_connections_while_the_app_is_throttled(graph, accounts):
    first, *_ = accounts
    graph.script(graph_error(4, "(#4) Application request limit reached"))
    sync(first)
    calls = len(graph.insights_requests())

    # Every slot before the throttle's end: nothing is claimed, nothing is called.
    for seconds in range(30, 300, 30):
        assert claim_and_run(NOW + timedelta(seconds=seconds)) == {}
    assert len(graph.insights_requests()) == calls == 1


def test_sync_now_in_a_throttled_scope_is_refused_before_any_call(graph, accounts):
    first, second, _ = accounts
    graph.script(graph_error(4, "(#4) Application request limit reached"))
    sync(first)
    # Even a connection the throttle did not reach (it was busy): the scope's throttle holds it.
    Connection.objects.filter(pk=second.pk).update(rate_limited_until=None)

    with pytest.raises(RateLimited) as refused:
        connection_enqueue_sync(connection=reload(second), now=NOW + timedelta(minutes=1))

    assert refused.value.until == NOW + timedelta(minutes=5)
    assert reload(second).sync_status == SyncStatus.IDLE
    assert len(graph.insights_requests()) == 1


def test_a_queued_job_in_a_scope_throttled_meanwhile_stops_before_its_call(graph, accounts):
    first, second, _ = accounts
    job = connection_enqueue_sync(connection=second, now=NOW, send=False)
    graph.script(graph_error(4, "(#4) Application request limit reached"))
    sync(first)

    with time_machine.travel(NOW + timedelta(seconds=1), tick=False):
        assert connection_sync_run(connection_id=second.pk, job_id=job.job_id) == "rate_limited"

    second = reload(second)
    assert (second.sync_status, second.rate_limited_until) == (SyncStatus.IDLE, NOW + timedelta(minutes=5))
    assert last_run(second).api_calls == 0
    assert len(graph.insights_requests(OTHER)) == 0


# --- after the end: one probe, not a stampede --------------------------------------------------


def test_after_the_throttle_one_probe_goes_out_and_its_success_resumes_everyone(graph, accounts, settings):
    settings.SYNC_THROTTLE_PROBE_WAIT = 10
    first, second, third = accounts
    graph.script(graph_error(4, "(#4) Application request limit reached"))
    sync(first)
    before = len(graph.insights_requests())
    end = NOW + timedelta(minutes=5)

    outcomes = claim_and_run(end)

    # Exactly one connection was claimed, and it called once; the rest wait for its answer.
    assert list(outcomes.values()) == ["success"]
    assert len(graph.insights_requests()) == before + 1
    assert not PlatformScope.objects.filter(scope=META_APP, throttled_until__isnull=False).exists()
    waiting = [c for c in (reload(first), reload(second), reload(third)) if c.pk not in outcomes]
    assert [c.next_sync_at for c in waiting] == [end + timedelta(seconds=10)] * 2
    # The probe's success lifted the throttle: the others run at their next turn.
    assert set(claim_and_run(end + timedelta(seconds=10)).values()) == {"success"}
    assert len(graph.insights_requests()) == before + 3


def test_a_probe_that_is_throttled_again_renews_the_throttle_for_everyone(graph, accounts):
    first, second, third = accounts
    graph.script(graph_error(4, "(#4) Application request limit reached"))
    sync(first)
    end = NOW + timedelta(minutes=5)
    graph.script(graph_error(4, "(#4) Application request limit reached"))

    assert list(claim_and_run(end).values()) == ["rate_limited"]

    renewed = end + timedelta(minutes=5)
    assert PlatformScope.objects.get(scope=META_APP).throttled_until == renewed
    assert {reload(c).rate_limited_until for c in (first, second, third)} == {renewed}
    assert claim_and_run(end + timedelta(seconds=30)) == {}
    assert len(graph.insights_requests()) == 2


def test_a_probe_that_fails_otherwise_lets_another_connection_probe(graph, accounts):
    first, *_ = accounts
    graph.script(graph_error(4, "(#4) Application request limit reached"))
    sync(first)
    end = NOW + timedelta(minutes=5)
    graph.script(graph_error(100, "(#100) Unsupported get request"))

    assert list(claim_and_run(end).values()) == ["error"]
    scope = PlatformScope.objects.get(scope=META_APP)
    assert (scope.probe_connection_id, scope.throttled_until) == (None, NOW + timedelta(minutes=5))

    # The next connection due probes, succeeds, and the throttle is lifted.
    assert list(claim_and_run(end + timedelta(seconds=10)).values()) == ["success"]
    assert PlatformScope.objects.get(scope=META_APP).throttled_until is None


# --- the scope of each throttle error -----------------------------------------------------------


@pytest.mark.parametrize(("code", "subcode"), [(17, 2446079), (32, None), (613, 1487742)])
def test_an_account_throttle_defers_only_that_account(graph, accounts, code, subcode):
    first, second, _ = accounts
    graph.script(graph_error(code, f"(#{code}) Too many calls", subcode=subcode))

    assert sync(first) == "rate_limited"

    assert PlatformScope.objects.get().scope == meta_account_scope(ACCOUNT)
    assert reload(first).rate_limited_until == NOW + timedelta(minutes=5)
    assert reload(second).rate_limited_until is None


def test_a_business_use_case_throttle_names_the_business_from_the_headers(graph, accounts):
    first, second, third = accounts
    business = "987654321"
    # Both first and second count against the business: second saw it in its own answers.
    graph.usage_headers = {"X-Business-Use-Case-Usage": json.dumps({business: [{"type": "ads_insights"}]})}
    sync(second, NOW - timedelta(minutes=1))
    assert reload(second).throttle_scopes == [meta_business_scope(business, "ads_insights")]
    graph.usage_headers = {}
    headers = {
        "X-Business-Use-Case-Usage": json.dumps(
            {business: [{"type": "ads_insights", "call_count": 100, "estimated_time_to_regain_access": 12}]}
        )
    }
    graph.script(graph_error(80000, "There have been too many calls from this ad-account.", headers=headers))

    assert sync(first) == "rate_limited"

    until = NOW + timedelta(minutes=12)
    assert PlatformScope.objects.get().scope == meta_business_scope(business, "ads_insights")
    assert (reload(first).rate_limited_until, reload(second).rate_limited_until) == (until, until)
    assert reload(third).rate_limited_until is None
    # The connection the error answered now counts against that business too (its probe and the
    # throttle's clearing reach it), though no answer of its own carried the header.
    assert reload(first).throttle_scopes == [meta_business_scope(business, "ads_insights")]


def test_a_business_use_case_throttle_without_usable_headers_is_the_accounts_own(graph, accounts):
    first, second, _ = accounts
    graph.script(graph_error(80004, "(#80004) There have been too many calls to this ad-account."))

    sync(first)

    assert PlatformScope.objects.get().scope == meta_business_scope(ACCOUNT, "ads_management")
    assert reload(second).rate_limited_until is None
    # The connection is in its own account's business scope without having to learn it.
    assert claim_and_run(NOW + timedelta(seconds=30)) == {second.pk: "success", accounts[2].pk: "success"}


# --- usage headers: read after every answer, between chunks too -------------------------------


@pytest.mark.parametrize(
    ("headers", "scope"),
    [
        (app_usage(100), META_APP),
        ({"x-fb-ads-insights-throttle": '{"app_id_util_pct": 100, "acc_id_util_pct": 10}'}, META_APP),
        (
            {"X-Ad-Account-Usage": '{"acc_id_util_pct": 100, "reset_time_duration": 900}'},
            meta_account_scope(ACCOUNT),
        ),
        (buc_usage(ACCOUNT, 100, regain_minutes=9), meta_business_scope(ACCOUNT, "ads_insights")),
    ],
    ids=["app-usage", "insights-throttle", "ad-account", "business-use-case"],
)
def test_usage_at_100_percent_between_chunks_stops_the_restatement_before_its_next_call(graph, meta, headers, scope):
    # A restatement of 28 days is five chunks; the second answer says the scope is full.
    days = [(NOW.date() - timedelta(days=n)).isoformat() for n in range(28)]
    graph.insights[ACCOUNT] = two_days(days=days)
    connection = meta(sync_frequency=SyncFrequency.REALTIME)
    graph.usage_headers = {}
    answers = iter([{}, headers])
    graph.usage_headers_for = lambda: next(answers, headers)

    assert sync(connection) == "rate_limited"

    assert len(graph.insights_requests(ACCOUNT)) == 2
    throttle = PlatformScope.objects.get(scope=scope)
    assert throttle.throttled_until > NOW
    assert reload(connection).rate_limited_until == throttle.throttled_until
    assert DailyMetric.objects.filter(connection=connection).count() == 0


def test_a_full_scope_on_the_last_answer_keeps_the_rows_and_defers_the_rest(graph, accounts):
    first, second, _ = accounts
    graph.usage_headers = app_usage(100)

    assert sync(first) == "success"

    until = NOW + timedelta(minutes=5)
    assert DailyMetric.objects.filter(connection=first).count() == 2
    assert (reload(first).rate_limited_until, reload(second).rate_limited_until) == (until, until)
    assert PlatformScope.objects.get(scope=META_APP).throttled_until == until


def test_a_busy_app_is_paced_to_stay_under_100_percent(graph, accounts, settings):
    settings.META_USAGE_SLOWDOWN_PCT = 75
    settings.META_USAGE_TARGET_PCT = 90
    first, second, third = accounts
    # 17 calls of ours earlier in the window, then this sync's one: 18 calls are 80 % of the app.
    budget_try_spend(
        budget=Budget(key=pace_key(META_APP), limit=None, window=usage_window(), label="app"),
        now=NOW - timedelta(minutes=10),
        calls=17,
    )
    graph.usage_headers = app_usage(80)

    assert sync(first) == "success"

    scope = PlatformScope.objects.get(scope=META_APP)
    # 18 calls at 80 %: the limit is about 22.5 calls; 90 % of it is 20 calls per window.
    assert (scope.usage_pct, scope.pace_limit, scope.throttled_until) == (80.0, 20, None)
    assert reload(first).rate_limited_until is None
    # Two more calls fit the pace; the third connection waits until older calls leave the window.
    outcomes = claim_and_run(NOW + timedelta(seconds=30))
    assert sorted(outcomes.values()) == ["success", "success"]
    assert len(graph.insights_requests()) == 3
    [waiting] = [reload(c) for c in (first, second, third) if c.pk not in outcomes]
    assert waiting.rate_limited_until == NOW - timedelta(minutes=10) + usage_window() + timedelta(minutes=1)


def test_the_pace_is_lifted_when_usage_falls_below_the_threshold(graph, accounts):
    first, second, _ = accounts
    graph.usage_headers = app_usage(80)
    sync(first)
    assert PlatformScope.objects.get(scope=META_APP).pace_limit == 1

    graph.usage_headers = app_usage(30)
    Connection.objects.filter(pk=second.pk).update(rate_limited_until=None)
    sync(reload(second), NOW + timedelta(minutes=61))

    assert PlatformScope.objects.get(scope=META_APP).pace_limit is None
    assert SyncRun.objects.filter(connection=second, outcome="success").exists()


def test_usage_below_the_threshold_records_nothing(graph, accounts):
    first, *_ = accounts
    graph.usage_headers = {**app_usage(60), **buc_usage(ACCOUNT, 70)}

    assert sync(first) == "success"

    assert not PlatformScope.objects.exists()
    assert reload(first).rate_limited_until is None


def test_the_token_never_appears_in_a_scope_reason(graph, accounts):
    first, *_ = accounts
    graph.script(graph_error(4, f"(#4) Application request limit reached for {TOKEN}"))

    sync(first)

    assert TOKEN not in PlatformScope.objects.get().reason


def test_prune_keeps_what_is_in_force_and_drops_the_rest(accounts):
    from syncing.scopes import platform_scopes_prune, scope_usage_record, scopes_throttle

    scopes_throttle(scopes=[META_APP], until=NOW + timedelta(minutes=5), reason="(#4)", now=NOW)
    scope_usage_record(scope=meta_account_scope(ACCOUNT), usage_pct=80, pace_limit=10, now=NOW)
    scope_usage_record(scope=meta_account_scope(OTHER), usage_pct=80, pace_limit=10, now=NOW - timedelta(hours=2))

    assert platform_scopes_prune(now=NOW) == 1

    assert set(PlatformScope.objects.values_list("scope", flat=True)) == {META_APP, meta_account_scope(ACCOUNT)}


def test_a_probe_whose_claim_is_put_back_is_released(graph, accounts):
    from syncing.services import claims_revert

    first, *_ = accounts
    graph.script(graph_error(4, "(#4) Application request limit reached"))
    sync(first)
    end = NOW + timedelta(minutes=5)
    with time_machine.travel(end, tick=False):
        [probe] = connections_claim_due(now=end, limit=10)
    assert PlatformScope.objects.get(scope=META_APP).probe_connection_id == probe.connection_id

    # The broker refused the message: the claim is put back, and so is the probe.
    claims_revert(claims=[probe])

    assert PlatformScope.objects.get(scope=META_APP).probe_connection_id is None
