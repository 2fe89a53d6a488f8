"""What the Meta provider's tests share: the fake Graph API, Meta connections, and syncing them.

The tests (test_meta_fetch, test_meta_usage, test_meta_errors, test_meta_client) run the real
facebook-business SDK over the wire to a fake Graph API on 127.0.0.1. Syncs go through the real
runner, state machine, budget and dispatcher; only the network edge (the Graph API) is fake.

The fixtures are imported by the modules that use them, as `graph_fixture as graph_fixture`:
pytest finds a fixture among a module's names, and the redundant alias tells ruff the import is
meant though no code uses it. Their functions are named apart from the fixtures (`name=`), so that
a test's parameter does not shadow the import.
"""

from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from django.db.models import Sum

from connections.models import Connection
from syncing.models import ApiCallBucket, SyncRun
from syncing.runner import connection_sync_run
from syncing.services import connection_enqueue_sync
from tests.fakes.graph import FakeGraph, insight

TOKEN = "EAAGm0PX4ZCpsBA-secret-user-token"
ACCOUNT = "1234567890"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture(name="graph")
def graph_fixture(settings):
    fake = FakeGraph()
    fake.valid_tokens = {TOKEN}
    with fake.running():
        settings.META_GRAPH_URL = fake.url
        yield fake


@pytest.fixture(name="meta")
def meta_fixture(make_connection):
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
