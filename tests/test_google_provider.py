"""The Google Ads provider: the real google-ads SDK over gRPC (TLS) to a fake GoogleAdsService on
127.0.0.1, and a fake OAuth token endpoint (tests/fakes/google_ads.py).

Time is frozen in the future on purpose: gRPC computes a call's deadline from time.time(),
which time_machine moves, while its core compares it with the real clock. Frozen in the past,
every call would end at once with DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import grpc
import pytest
import time_machine

from connections.models import Connection, SyncFrequency, SyncStatus
from syncing.dispatcher import connections_claim_due
from syncing.models import DailyMetric, SyncOutcome, SyncRun
from syncing.providers import PROVIDERS, provider_for
from syncing.providers.google import (
    RECONNECT_MESSAGE,
    GoogleCustomer,
    google_ads_sdk,
    google_customers_accessible,
    google_error,
)
from syncing.providers.google import sdk as google_sdk
from syncing.runner import connection_sync_run
from syncing.services import connection_enqueue_sync
from syncing.tasks import sync_connection
from tests.conftest import ROOT
from tests.fakes.google_ads import (
    Account,
    CampaignDay,
    Failure,
    ads_failure,
    resource_exhausted,
    resource_exhausted_retry_info,
    unavailable,
)
from tests.google_fixtures import google_reset
from tests.google_fixtures import google_servers_fixture as google_servers_fixture  # a fixture: pytest finds it by name

NOW = datetime(2031, 3, 14, 9, 30, tzinfo=UTC)
TODAY = date(2031, 3, 14)  # in Europe/Berlin too
CUSTOMER = "1234567890"

pytestmark = pytest.mark.django_db


@pytest.fixture
def google(google_servers, settings):
    google_reset(google_servers, settings)
    google_servers.ads.add_account(Account(CUSTOMER, "Shop DE", currency="EUR", time_zone="Europe/Berlin"))
    return google_servers


@pytest.fixture
def frozen():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def google_connection(make_connection, google, frozen):
    def make(customer_id: str = CUSTOMER, **overrides) -> Connection:
        fields = {
            "provider": "google",
            "external_account_id": customer_id,
            "name": f"Google Ads {customer_id}",
            "currency": "EUR",
            "timezone_name": "Europe/Berlin",
            "credentials": {"refresh_token": google.oauth.grant(f"1//refresh-{customer_id}")},
        }
        fields.update(overrides)
        return make_connection(**fields)

    return make


def sync(connection: Connection, **kwargs) -> str | None:
    job = connection_enqueue_sync(connection=connection, send=False)
    return connection_sync_run(connection_id=connection.pk, job_id=job.job_id, **kwargs)


def reload(connection: Connection) -> Connection:
    connection.refresh_from_db()
    return connection


def campaign(day: date = TODAY, cost_micros: int = 1_000_000, campaign_id: int = 11, **fields) -> CampaignDay:
    return CampaignDay(CUSTOMER, campaign_id, fields.pop("name", "Brand Search"), day, cost_micros, **fields)


# --- registry and budgets ------------------------------------------------------------------------


def test_google_is_registered_with_the_installation_and_customer_budgets(settings):
    settings.GOOGLE_OPS_PER_CUSTOMER_PER_DAY = 3000
    provider = provider_for("google")

    budgets = provider.budgets(external_account_id="123-456-7890")

    assert provider is PROVIDERS["google"]
    assert (provider.slug, provider.label, provider.default_lookback_days) == ("google", "Google", 14)
    assert [(b.key, b.limit, b.window) for b in budgets] == [
        ("google:app", 15000, timedelta(hours=24)),
        ("google:customer:1234567890", 3000, timedelta(hours=24)),
    ]


def test_lookback_days_default_is_a_setting(settings):
    settings.GOOGLE_LOOKBACK_DAYS = 30

    assert provider_for("google").default_lookback_days == 30


# --- fetching ------------------------------------------------------------------------------------


def test_rows_are_exact_across_a_multi_batch_stream(google, google_connection):
    google.ads.batch_size = 2
    google.ads.campaigns = [
        campaign(cost_micros=1_234_567, impressions=1000, clicks=25, conversions=0.1, conversions_value=12.34),
        campaign(TODAY - timedelta(days=1), cost_micros=12_345_678_901_234, conversions=1 / 3, conversions_value=0.3),
        campaign(campaign_id=12, name="Shopping", cost_micros=5_000_000, conversions=2.0, conversions_value=99.99),
        campaign(TODAY - timedelta(days=14), campaign_id=12, name="Shopping", cost_micros=1),
        campaign(TODAY - timedelta(days=15), cost_micros=7),  # outside the 14-day lookback
        CampaignDay("999", 13, "Another customer", TODAY, 5),
    ]
    connection = google_connection()

    assert sync(connection) == SyncOutcome.SUCCESS

    stored = {
        (m.entity_id, m.date): (m.entity_name, m.spend, m.impressions, m.clicks, m.conversions, m.conversion_value)
        for m in DailyMetric.objects.filter(connection=connection)
    }
    assert stored == {
        ("11", TODAY): ("Brand Search", Decimal("1.234567"), 1000, 25, Decimal("0.1"), Decimal("12.34")),
        ("11", TODAY - timedelta(days=1)): (
            "Brand Search",
            Decimal("12345678.901234"),
            0,
            0,
            Decimal("0.333333"),
            Decimal("0.3"),
        ),
        ("12", TODAY): ("Shopping", Decimal("5"), 0, 0, Decimal("2"), Decimal("99.99")),
        ("12", TODAY - timedelta(days=14)): ("Shopping", Decimal("0.000001"), 0, 0, Decimal("0"), Decimal("0")),
    }
    assert set(DailyMetric.objects.values_list("currency", flat=True)) == {"EUR"}
    [call] = google.ads.search_streams()
    assert call.customer_id == CUSTOMER
    assert f"BETWEEN '{TODAY - timedelta(days=14)}' AND '{TODAY}'" in call.query
    assert "FROM campaign" in call.query
    assert call.metadata["developer-token"] == "fake-developer-token"
    assert "login-customer-id" not in call.metadata
    run = SyncRun.objects.get(connection=connection)
    assert (run.api_calls, run.rows_fetched, run.rows_written) == (1, 4, 4)


def test_an_unchanged_resync_of_recent_days_writes_nothing(google, google_connection, frozen):
    # More than 6 places, and 2.0000005 rounds half up (half-even would make it 2.000000).
    google.ads.campaigns = [campaign(conversions=2.0000005, conversions_value=10 / 3)]
    connection = google_connection(sync_frequency=SyncFrequency.REALTIME)
    sync(connection)
    frozen.shift(timedelta(seconds=30))

    assert sync(connection) == SyncOutcome.SUCCESS

    connection = reload(connection)
    assert (connection.total_syncs_attempted, connection.total_syncs_with_changes) == (2, 1)
    metric = DailyMetric.objects.get(connection=connection)
    assert (metric.conversions, metric.conversion_value) == (Decimal("2.000001"), Decimal("3.333333"))
    assert list(SyncRun.objects.filter(connection=connection).order_by("pk").values_list("rows_written")) == [
        (1,),
        (0,),
    ]
    second = google.ads.search_streams()[1]
    assert f"BETWEEN '{TODAY - timedelta(days=1)}' AND '{TODAY}'" in second.query


def test_the_account_time_zone_picks_the_days_asked_for(google, google_connection, frozen):
    # 03:00 UTC on the 14th is still the 13th in Los Angeles.
    frozen.move_to(datetime(2031, 3, 14, 3, 0, tzinfo=UTC))
    connection = google_connection(timezone_name="America/Los_Angeles")
    Connection.objects.filter(pk=connection.pk).update(last_restated_at=datetime(2031, 3, 14, 2, 0, tzinfo=UTC))

    sync(connection)

    assert "BETWEEN '2031-03-12' AND '2031-03-13'" in google.ads.search_streams()[0].query


def through_manager(connection: Connection, manager: str) -> Connection:
    connection.credentials = dict(connection.credentials, login_customer_id=manager)
    connection.save(update_fields=["credentials"])
    return connection


def test_a_manager_account_is_reached_through_login_customer_id(google, google_connection):
    # The fake refuses a login-customer-id that is not a manager of the customer.
    google.ads.add_account(Account("1112223333", "Agency", manager=True, clients=(CUSTOMER,)))
    google.ads.campaigns = [campaign()]
    connection = through_manager(google_connection(), "111-222-3333")

    assert sync(connection) == SyncOutcome.SUCCESS

    assert google.ads.search_streams()[0].metadata["login-customer-id"] == "1112223333"
    assert DailyMetric.objects.filter(connection=connection).count() == 1


def test_a_manager_that_no_longer_manages_the_account_asks_to_reconnect(google, google_connection):
    google.ads.add_account(Account("1112223333", "Agency", manager=True, clients=()))
    connection = through_manager(google_connection(), "111-222-3333")

    assert sync(connection) == SyncOutcome.ERROR

    connection = reload(connection)
    assert (connection.last_sync_error_kind, connection.last_sync_error) == ("auth", RECONNECT_MESSAGE)


def test_a_developer_token_google_does_not_take_is_shown_not_a_reconnect(google, google_connection, settings):
    settings.GOOGLE_DEVELOPER_TOKEN = "not-the-fakes-token"
    connection = google_connection()

    assert sync(connection) == SyncOutcome.ERROR

    connection = reload(connection)
    assert google.ads.search_streams()[0].metadata["developer-token"] == "not-the-fakes-token"
    assert (connection.last_sync_error_kind, connection.last_sync_error) == (
        "permanent",
        "The developer token is not valid. (request id req-developer-token)",
    )


def test_an_unknown_account_time_zone_is_stored_as_utc(google, caplog):
    google.ads.add_account(Account("5555555555", "Mars Shop", time_zone="Mars/Olympus_Mons"))
    google.ads.accessible = [CUSTOMER, "5555555555"]

    customers = google_customers_accessible(access_token=google.oauth.issue_access_token())

    assert customers == [
        GoogleCustomer("5555555555", "Mars Shop", "USD", "UTC", None),
        GoogleCustomer(CUSTOMER, "Shop DE", "EUR", "Europe/Berlin", None),
    ]
    assert "Unknown time zone 'Mars/Olympus_Mons'; using UTC" in caplog.text


# --- OAuth access tokens -------------------------------------------------------------------------


def test_the_access_token_is_refreshed_at_the_token_endpoint_and_sent_as_bearer(google, google_connection, frozen):
    connection = google_connection(sync_frequency=SyncFrequency.REALTIME)

    sync(connection)
    frozen.shift(timedelta(seconds=30))
    sync(connection)

    assert google.oauth.refreshes == ["1//refresh-1234567890"]
    first, second = google.ads.search_streams()
    assert first.metadata["authorization"] == second.metadata["authorization"] == "Bearer ya29.fake-access-1"

    frozen.shift(timedelta(hours=1))  # the token has expired
    sync(connection)

    assert len(google.oauth.refreshes) == 2
    assert google.ads.search_streams()[2].metadata["authorization"] == "Bearer ya29.fake-access-2"


def test_a_revoked_refresh_token_asks_to_reconnect_without_calling_the_api(google, google_connection):
    connection = google_connection()
    google.oauth.revoke("1//refresh-1234567890")

    assert sync(connection) == SyncOutcome.ERROR

    connection = reload(connection)
    assert (connection.sync_status, connection.last_sync_error) == (SyncStatus.ERROR, RECONNECT_MESSAGE)
    assert connection.last_sync_error_kind == "auth"
    assert google.ads.search_streams() == []


def test_an_unreachable_token_endpoint_is_transient(google, google_connection, settings):
    connection = google_connection()
    settings.GOOGLE_TOKEN_URL = "http://127.0.0.1:1/token"  # nothing listens there

    assert sync(connection) == SyncOutcome.ERROR  # no retries left

    connection = reload(connection)
    assert (connection.last_sync_error_kind, connection.last_sync_error) == (
        "transient",
        "Could not reach Google's sign-in service",
    )
    assert google.ads.calls == []


def test_a_misconfigured_oauth_client_is_not_the_users_to_fix(google, google_connection, settings):
    connection = google_connection(sync_frequency=SyncFrequency.HOURLY)
    settings.GOOGLE_CLIENT_SECRET = "not-the-client-secret"

    assert sync(connection) == SyncOutcome.ERROR

    connection = reload(connection)
    assert (connection.last_sync_error_kind, connection.last_sync_error) == (
        "permanent",
        "Google OAuth client is misconfigured (invalid_client: Unauthorized) — check GOOGLE_CLIENT_ID and "
        "GOOGLE_CLIENT_SECRET",
    )
    assert "not-the-client-secret" not in connection.last_sync_error
    # Not unscheduled, as an auth error would be: fixing the installation is enough.
    assert connection.next_sync_at is not None
    assert google.ads.calls == []


@pytest.mark.parametrize(
    ("error", "message"),
    [
        ("invalid_client", "Google OAuth client is misconfigured (invalid_client: The OAuth client was not found.)"),
        ("unauthorized_client", "Google OAuth client is misconfigured (unauthorized_client: The OAuth client was not "),
        ("invalid_grant", RECONNECT_MESSAGE),
    ],
)
def test_token_endpoint_errors_tell_the_installation_from_the_user(error, message):
    from google.auth.exceptions import RefreshError

    answer = {"error": error, "error_description": "The OAuth client was not found."}
    mapped = google_error(RefreshError(f"{error}: ...", answer, retryable=False), now=NOW)

    assert mapped.message.startswith(message)
    assert mapped.error_class == ("auth" if error == "invalid_grant" else "permanent")


def test_an_access_token_google_stops_taking_is_refreshed_once(google, google_connection, frozen):
    google.ads.campaigns = [campaign()]
    connection = google_connection(sync_frequency=SyncFrequency.REALTIME)
    sync(connection)
    google.oauth.access_tokens.clear()  # Google no longer takes ya29.fake-access-1, an hour early
    frozen.shift(timedelta(seconds=30))

    assert sync(connection) == SyncOutcome.SUCCESS

    assert [c.metadata["authorization"] for c in google.ads.search_streams()] == [
        "Bearer ya29.fake-access-1",
        "Bearer ya29.fake-access-1",  # refused: OAUTH_TOKEN_INVALID
        "Bearer ya29.fake-access-2",
    ]
    assert google.oauth.refreshes == ["1//refresh-1234567890"] * 2
    run = SyncRun.objects.filter(connection=connection).latest("pk")
    assert (run.outcome, run.api_calls) == (SyncOutcome.SUCCESS, 2)


def test_a_connection_without_a_refresh_token_asks_to_reconnect(google, google_connection):
    connection = google_connection(credentials={})

    assert sync(connection) == SyncOutcome.ERROR

    assert reload(connection).last_sync_error == RECONNECT_MESSAGE
    assert google.oauth.refreshes == []


def test_an_installation_without_oauth_client_says_so(google, google_connection, settings):
    connection = google_connection()
    settings.GOOGLE_CLIENT_SECRET = ""

    assert sync(connection) == SyncOutcome.ERROR

    assert "not configured" in reload(connection).last_sync_error
    assert google.ads.calls == []


# --- errors --------------------------------------------------------------------------------------


def test_resource_exhausted_defers_by_googles_retry_delay_and_resumes_by_itself(google, google_connection, frozen):
    google.ads.fail_next(resource_exhausted(retry_seconds=90, request_id="req-q1"))
    google.ads.campaigns = [campaign()]
    connection = google_connection(sync_frequency=SyncFrequency.REALTIME)

    assert sync(connection) == SyncOutcome.RATE_LIMITED

    connection = reload(connection)
    until = NOW + timedelta(seconds=90)
    assert (connection.sync_status, connection.rate_limited_until, connection.next_sync_at) == (
        SyncStatus.IDLE,
        until,
        until,
    )
    run = SyncRun.objects.get(connection=connection)
    assert run.error_class == "throttled"
    assert "(request id req-q1)" in run.error_message

    frozen.move_to(until - timedelta(seconds=1))
    assert connections_claim_due(now=until - timedelta(seconds=1), limit=10) == []
    frozen.move_to(until)
    [claim] = connections_claim_due(now=until, limit=10)
    assert connection_sync_run(connection_id=connection.pk, job_id=claim.job_id) == SyncOutcome.SUCCESS
    connection = reload(connection)
    assert (connection.rate_limited_until, connection.last_sync_error) == (None, None)
    assert DailyMetric.objects.filter(connection=connection).count() == 1


def test_resource_exhausted_with_retry_info_defers_by_it(google, google_connection):
    google.ads.fail_next(resource_exhausted_retry_info(retry_seconds=42))
    connection = google_connection()

    assert sync(connection) == SyncOutcome.RATE_LIMITED

    assert reload(connection).rate_limited_until == NOW + timedelta(seconds=42)


def test_resource_exhausted_without_a_delay_pauses_for_the_default(google, google_connection):
    google.ads.fail_next(resource_exhausted(retry_seconds=None))
    connection = google_connection()

    assert sync(connection) == SyncOutcome.RATE_LIMITED

    assert reload(connection).rate_limited_until == NOW + timedelta(minutes=5)


@pytest.mark.parametrize(
    ("kind", "name", "status", "calls"),
    [
        # An expired access token is refreshed and the call made again, once.
        ("authentication_error", "OAUTH_TOKEN_EXPIRED", "UNAUTHENTICATED", 2),
        ("authentication_error", "OAUTH_TOKEN_INVALID", "UNAUTHENTICATED", 2),
        ("authentication_error", "OAUTH_TOKEN_REVOKED", "UNAUTHENTICATED", 1),
        ("authorization_error", "USER_PERMISSION_DENIED", "PERMISSION_DENIED", 1),
    ],
)
def test_auth_failures_ask_to_reconnect(google, google_connection, kind, name, status, calls):
    failure = ads_failure(kind, name, "Authentication failed.", status=grpc.StatusCode[status])
    google.ads.fail_next(failure, failure)
    connection = google_connection()

    assert sync(connection) == SyncOutcome.ERROR

    connection = reload(connection)
    assert (connection.last_sync_error, connection.last_sync_error_kind) == (RECONNECT_MESSAGE, "auth")
    assert "ya29" not in connection.last_sync_error
    assert (len(google.ads.search_streams()), len(google.oauth.refreshes)) == (calls, calls)
    assert SyncRun.objects.get(connection=connection).api_calls == calls


def test_permission_denied_without_an_ads_failure_shows_googles_message(google, google_connection):
    message = (
        "Google Ads API has not been used in project 123456 before or it is disabled. Enable it by visiting "
        "https://console.developers.google.com/apis/api/googleads.googleapis.com/overview?project=123456"
    )
    google.ads.fail_next(Failure(grpc.StatusCode.PERMISSION_DENIED, message, (("request-id", "req-disabled"),)))
    connection = google_connection()

    assert sync(connection) == SyncOutcome.ERROR

    connection = reload(connection)
    assert (connection.last_sync_error_kind, connection.last_sync_error) == (
        "permanent",
        f"{message} (request id req-disabled)",
    )


def test_a_developer_token_problem_is_not_the_users_to_fix(google, google_connection):
    message = "The developer token is not approved."
    google.ads.fail_next(
        ads_failure(
            "authorization_error", "DEVELOPER_TOKEN_NOT_APPROVED", message, status=grpc.StatusCode.PERMISSION_DENIED
        )
    )
    connection = google_connection()

    sync(connection)

    assert reload(connection).last_sync_error == f"{message} (request id req-failure)"


def test_other_errors_show_googles_message_and_request_id_never_a_token(google, google_connection):
    google.ads.fail_next(ads_failure("request_error", "INVALID_CUSTOMER_ID", "Invalid customer ID '1234567890'."))
    connection = google_connection()

    assert sync(connection) == SyncOutcome.ERROR

    connection = reload(connection)
    assert connection.last_sync_error == "Invalid customer ID '1234567890'. (request id req-failure)"
    assert connection.last_sync_error_kind == "permanent"
    assert "ya29" not in connection.last_sync_error
    assert "refresh" not in connection.last_sync_error


def test_unavailable_is_retried_with_backoff_then_succeeds(google, google_connection, settings):
    settings.SYNC_TRANSIENT_RETRIES = 3
    with_request_id = Failure(grpc.StatusCode.UNAVAILABLE, "Try again later.", (("request-id", "req-u2"),))
    google.ads.fail_next(unavailable(), with_request_id)
    google.ads.campaigns = [campaign()]
    connection = google_connection()
    job = connection_enqueue_sync(connection=connection, send=False)

    # apply() runs the task here, and Celery runs its retries eagerly in turn.
    sync_connection.apply(args=[connection.pk, str(job.job_id)])

    connection = reload(connection)
    assert (connection.sync_status, connection.last_sync_error) == (SyncStatus.IDLE, None)
    assert len(google.ads.search_streams()) == 3
    outcomes = list(
        SyncRun.objects.filter(connection=connection).order_by("pk").values_list("outcome", "error_message")
    )
    assert outcomes == [
        ("retrying", "Google Ads is temporarily unavailable (The service is currently unavailable.)"),
        ("retrying", "Google Ads is temporarily unavailable (Try again later.) (request id req-u2)"),
        ("success", ""),
    ]
    assert DailyMetric.objects.filter(connection=connection).count() == 1


def test_a_stream_failing_midway_keeps_none_of_its_rows(google, google_connection):
    google.ads.batch_size = 1
    google.ads.campaigns = [campaign(), campaign(campaign_id=12), campaign(campaign_id=13)]
    google.ads.fail_next(Failure(grpc.StatusCode.INTERNAL, "Internal error encountered.", after_batches=1))
    connection = google_connection()

    assert sync(connection) == SyncOutcome.ERROR  # transient, and no retries left

    connection = reload(connection)
    assert connection.last_sync_error_kind == "transient"
    assert DailyMetric.objects.filter(connection=connection).count() == 0


# --- budgets -------------------------------------------------------------------------------------


def test_the_customer_budget_stops_before_calling_google(google, google_connection, settings, frozen):
    settings.GOOGLE_OPS_PER_CUSTOMER_PER_DAY = 2
    connection = google_connection()
    for _ in range(2):
        assert sync(connection) == SyncOutcome.SUCCESS
        frozen.shift(timedelta(minutes=1))

    assert sync(connection) == SyncOutcome.RATE_LIMITED

    assert len(google.ads.search_streams()) == 2
    # The first call leaves the rolling day a minute after its own minute.
    assert reload(connection).rate_limited_until == NOW + timedelta(hours=24, minutes=1)
    run = SyncRun.objects.filter(connection=connection).latest("pk")
    assert run.error_message == (
        "Paused to stay within this account's share of the daily Google Ads API quota (2 calls per 24 hours)."
    )


def test_the_installation_budget_holds_across_many_connections(google, google_connection, settings, frozen):
    settings.GOOGLE_OPS_PER_DAY = 5
    customers = [f"10000000{n:02d}" for n in range(12)]
    for customer in customers:
        google.ads.add_account(Account(customer, f"Client {customer}"))
        google_connection(customer, sync_frequency=SyncFrequency.REALTIME)
    ran = 0
    # Dispatcher ticks a second apart, each followed by the workers running what was claimed.
    for tick in range(4):
        frozen.move_to(NOW + timedelta(seconds=tick))
        for claim in connections_claim_due(now=NOW + timedelta(seconds=tick), limit=100):
            connection_sync_run(connection_id=claim.connection_id, job_id=claim.job_id)
            ran += 1

    assert ran == len(google.ads.search_streams()) == 5
    later = NOW + timedelta(minutes=10)
    frozen.move_to(later)
    assert connections_claim_due(now=later, limit=100) == []
    resume = NOW + timedelta(hours=24, minutes=1)
    assert set(Connection.objects.values_list("rate_limited_until", flat=True)) == {resume}
    assert set(Connection.objects.values_list("next_sync_at", flat=True)) == {resume}

    # Sync Now skips the dispatcher; the worker's meter still holds the line. (A throttled
    # connection's Sync Now is refused before any job, tests/test_sync_now_throttled.py; one
    # added since, never deferred, shares the spent installation budget.)
    google.ads.add_account(Account("1000000012", "Client 1000000012"))
    assert sync(google_connection("1000000012")) == SyncOutcome.RATE_LIMITED
    assert len(google.ads.search_streams()) == 5

    frozen.move_to(resume)
    assert len(connections_claim_due(now=resume, limit=100)) == 5


# --- the SDK, once per process -------------------------------------------------------------------


def test_the_sdk_is_built_once_and_its_channel_reused_across_connections(google, google_connection):
    google.ads.add_account(Account("2222222222", "Shop AT"))
    first, second = google_connection(), google_connection("2222222222")
    sync(first)
    sdk = google_ads_sdk()

    sync(second)

    assert google_ads_sdk() is sdk
    one, two = google.ads.search_streams()
    # The same client TCP connection: the channel was reused, not rebuilt.
    assert one.peer == two.peer
    # Each call still carried its own connection's token.
    assert google.oauth.refreshes == ["1//refresh-1234567890", "1//refresh-2222222222"]
    assert one.metadata["authorization"] != two.metadata["authorization"]


def test_a_forked_process_builds_its_own_channel_and_fetches_its_own_tokens(google, google_connection, monkeypatch):
    connection = google_connection(sync_frequency=SyncFrequency.REALTIME)
    sync(connection)
    parent = google_ads_sdk()

    # What a Celery prefork child sees: the parent's module state under another process id.
    monkeypatch.setattr(google_sdk.os, "getpid", lambda: 4_000_000)
    assert sync(connection) == SyncOutcome.SUCCESS

    assert google_ads_sdk() is not parent
    assert google.oauth.refreshes == ["1//refresh-1234567890"] * 2
    first, second = google.ads.search_streams()
    assert first.peer != second.peer


def test_importing_the_app_does_not_import_the_sdk():
    code = (
        "import sys, django; django.setup();"
        "import syncing.providers, syncing.tasks, connections.connect, adsync.urls;"
        "print(sorted(m for m in ('grpc', 'google.ads.googleads', 'google.auth') if m in sys.modules))"
    )
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="adsync.settings")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)

    assert out.stdout.strip() == "[]"
