"""Google's retry delay counts from its answer, not from the sync's start
(syncing/providers/google/provider.py, GoogleProvider._failed).

The real google-ads SDK over gRPC (TLS) to the fake GoogleAdsService on 127.0.0.1, and the fake
token endpoint (tests/fakes/google_ads.py), through the real runner and state machine. The fakes
take real time to answer (ANSWER_DELAY), and the clock ticks with it: time_machine moves it to
the future and lets it run (a frozen clock would not see the delay; a past one would make gRPC
end every call at once, see tests/test_google_provider.py).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import time_machine
from django.utils import timezone

from connections.models import Connection, SyncStatus
from syncing.models import SyncOutcome, SyncRun
from syncing.runner import connection_sync_run
from syncing.services import connection_enqueue_sync
from tests.fakes.google_ads import Account, CampaignDay, ads_failure, resource_exhausted
from tests.google_fixtures import google_reset
from tests.google_fixtures import google_servers_fixture as google_servers_fixture  # a fixture: pytest finds it by name

NOW = datetime(2031, 3, 14, 9, 30, tzinfo=UTC)
CUSTOMER = "1234567890"
RETRY_DELAY = timedelta(seconds=45)
# How long each fake answer takes: long enough to tell apart from the sync's start, short
# enough to keep the tests fast.
ANSWER_DELAY = timedelta(seconds=0.3)

pytestmark = pytest.mark.django_db


@pytest.fixture
def google(google_servers, settings):
    google_reset(google_servers, settings)
    google_servers.ads.add_account(Account(CUSTOMER, "Shop DE", currency="EUR", time_zone="Europe/Berlin"))
    google_servers.ads.campaigns = [CampaignDay(CUSTOMER, 11, "Brand Search", NOW.date(), 1_000_000)]
    return google_servers


@pytest.fixture
def connection(make_connection, google) -> Connection:
    return make_connection(
        provider="google",
        external_account_id=CUSTOMER,
        name="Google Ads",
        currency="EUR",
        timezone_name="Europe/Berlin",
        credentials={"refresh_token": google.oauth.grant("1//refresh-token")},
    )


def sync_ticking(connection: Connection) -> tuple[str | None, datetime]:
    """One manual sync through the runner on a clock that runs; its outcome and the time after."""
    with time_machine.travel(NOW, tick=True):
        job = connection_enqueue_sync(connection=connection, send=False)
        outcome = connection_sync_run(connection_id=connection.pk, job_id=job.job_id)
        after = timezone.now()
    connection.refresh_from_db()
    return outcome, after


def test_a_throttle_after_a_slow_query_waits_the_whole_delay_from_the_answer(google, connection):
    google.ads.fail_next(dataclasses.replace(resource_exhausted(retry_seconds=45), delay=ANSWER_DELAY.total_seconds()))

    outcome, after = sync_ticking(connection)

    assert outcome == SyncOutcome.RATE_LIMITED
    run = SyncRun.objects.get(connection=connection)
    assert (connection.sync_status, run.outcome) == (SyncStatus.IDLE, SyncOutcome.RATE_LIMITED)
    # Counted from the sync's start, the wait would end ANSWER_DELAY early.
    assert run.started_at + ANSWER_DELAY + RETRY_DELAY <= connection.rate_limited_until <= after + RETRY_DELAY


def test_a_throttle_after_refreshing_a_refused_token_waits_from_its_own_answer(google, connection):
    # The token endpoint takes ANSWER_DELAY for each of the two refreshes (the first access
    # token, and the new one after Google refuses it); the throttle then comes at once.
    google.oauth.refresh_delay = ANSWER_DELAY.total_seconds()
    refused = ads_failure(
        "authentication_error", "OAUTH_TOKEN_EXPIRED", "Oauth token expired.", status=grpc.StatusCode.UNAUTHENTICATED
    )
    google.ads.fail_next(refused, resource_exhausted(retry_seconds=45))

    outcome, after = sync_ticking(connection)

    assert outcome == SyncOutcome.RATE_LIMITED
    assert len(google.oauth.refreshes) == len(google.ads.search_streams()) == 2
    run = SyncRun.objects.get(connection=connection)
    assert run.started_at + 2 * ANSWER_DELAY + RETRY_DELAY <= connection.rate_limited_until <= after + RETRY_DELAY
