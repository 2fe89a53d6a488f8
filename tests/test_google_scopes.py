"""Google's shared limits (syncing/scopes.py, issue 12): RESOURCE_EXHAUSTED on the developer token
defers every Google connection of the installation without a call, one on a customer only that
customer; one probe after the end.

The real google-ads SDK over gRPC (TLS) to the loopback fake; syncs go through the real runner,
dispatcher and state machine.
"""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.ads.googleads.v26.errors.types import errors
from google.protobuf import duration_pb2

from connections.models import Connection, SyncFrequency, SyncStatus
from syncing.dispatcher import connections_claim_due
from syncing.models import PlatformScope, SyncOutcome
from syncing.runner import connection_sync_run
from syncing.scopes import GOOGLE_DEVELOPER_TOKEN, google_customer_scope
from syncing.services import RateLimited, connection_enqueue_sync
from tests.fakes.google_ads import Account, Failure, _failure_trailers, resource_exhausted
from tests.google_fixtures import google_servers_fixture as google_servers_fixture  # a fixture: pytest finds it by name
from tests.test_google_provider import CUSTOMER, NOW, campaign
from tests.test_google_provider import frozen as frozen  # fixtures: pytest finds them by name
from tests.test_google_provider import google as google
from tests.test_google_provider import google_connection as google_connection

pytestmark = pytest.mark.django_db

OTHER = "2345678901"


def developer_token_exhausted(retry_seconds: int = 600) -> Failure:
    """The developer token's daily operations are used up (QuotaErrorDetails.rate_scope DEVELOPER)."""
    details = errors.ErrorDetails(
        quota_error_details=errors.QuotaErrorDetails(
            rate_scope=errors.QuotaErrorDetails.QuotaRateScope.DEVELOPER,
            rate_name="Number of operations for basic access",
            retry_delay=duration_pb2.Duration(seconds=retry_seconds),
        )
    )
    message = "Too many requests. Retry in the time given in the details."
    trailers = _failure_trailers("quota_error", "RESOURCE_EXHAUSTED", message, "req-token", details)
    return Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "Resource has been exhausted (e.g. check quota).", trailers)


@pytest.fixture
def customers(google, google_connection):
    google.ads.add_account(Account(OTHER, "Shop AT", currency="EUR", time_zone="Europe/Berlin"))
    google.ads.campaigns = [campaign()]
    return [
        google_connection(CUSTOMER, sync_frequency=SyncFrequency.REALTIME),
        google_connection(OTHER, sync_frequency=SyncFrequency.REALTIME),
    ]


def sync(connection: Connection) -> str | None:
    job = connection_enqueue_sync(connection=connection, send=False)
    return connection_sync_run(connection_id=connection.pk, job_id=job.job_id)


def reload(connection: Connection) -> Connection:
    connection.refresh_from_db()
    return connection


def test_the_developer_tokens_quota_defers_every_google_connection_without_a_call(google, customers, frozen):
    first, second = customers
    google.ads.fail_next(developer_token_exhausted(retry_seconds=600))

    assert sync(first) == SyncOutcome.RATE_LIMITED

    until = NOW + timedelta(seconds=600)
    assert PlatformScope.objects.get().scope == GOOGLE_DEVELOPER_TOKEN
    assert (reload(second).sync_status, reload(second).rate_limited_until) == (SyncStatus.IDLE, until)
    calls = len(google.ads.search_streams())
    frozen.move_to(NOW + timedelta(seconds=30))
    assert connections_claim_due(now=NOW + timedelta(seconds=30), limit=10) == []
    with pytest.raises(RateLimited):
        connection_enqueue_sync(connection=reload(second), now=NOW + timedelta(seconds=30))
    assert len(google.ads.search_streams()) == calls == 1


def test_a_customers_rate_defers_only_that_customer(google, customers):
    first, second = customers
    google.ads.fail_next(resource_exhausted(retry_seconds=90))

    assert sync(first) == SyncOutcome.RATE_LIMITED

    assert PlatformScope.objects.get().scope == google_customer_scope(CUSTOMER)
    assert reload(second).rate_limited_until is None


def test_one_probe_after_the_developer_token_throttle_then_everyone_resumes(google, customers, frozen, settings):
    settings.SYNC_THROTTLE_PROBE_WAIT = 10
    first, second = customers
    google.ads.fail_next(developer_token_exhausted(retry_seconds=600))
    sync(first)
    end = NOW + timedelta(seconds=600)

    frozen.move_to(end)
    [probe] = connections_claim_due(now=end, limit=10)
    assert connection_sync_run(connection_id=probe.connection_id, job_id=probe.job_id) == SyncOutcome.SUCCESS

    assert PlatformScope.objects.get().throttled_until is None
    frozen.move_to(end + timedelta(seconds=10))
    [other] = connections_claim_due(now=end + timedelta(seconds=10), limit=10)
    assert {probe.connection_id, other.connection_id} == {first.pk, second.pk}
    assert len(google.ads.search_streams()) == 2
