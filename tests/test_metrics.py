"""/metrics (Prometheus) and the one log line per finished sync."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.conf import settings
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from adsync.logs import JsonFormatter
from connections.models import Connection, SyncFrequency
from connections.status import connection_freshness
from syncing.metrics import connections_by_freshness
from syncing.models import SCHEDULER_HEARTBEAT, HeartbeatKind, SyncCounter
from syncing.providers.base import PermanentError
from syncing.services import (
    connection_enqueue_sync,
    heartbeat_record,
    sync_fail,
    sync_finish,
    syncs_recover_stuck,
)
from tests.conftest import wait_for
from tests.test_state_machine import some_rows, started_sync

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
TOKEN = "scrape-secret"


@pytest.fixture
def metrics_on(settings):
    settings.METRICS_TOKEN = TOKEN


def scrape(client: Client | None = None, **headers) -> dict[tuple[str, tuple], float]:
    """The samples of one scrape, as {(name, sorted labels): value}."""
    client = client or Client()
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}", **headers})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def labels(**kwargs) -> tuple:
    return tuple(sorted(kwargs.items()))


# --- access ---------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_metrics_off_unless_configured(client):
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer anything"}).status_code == 404


@pytest.mark.django_db
@pytest.mark.embedded
def test_metrics_token_must_match(client, metrics_on):
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 404
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


@pytest.mark.django_db
@pytest.mark.embedded
def test_metrics_allow_list_by_client_address(settings):
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    # X-Forwarded-For is the client's to write: it does not count.
    assert Client(REMOTE_ADDR="192.0.2.1").get("/metrics", headers={"X-Forwarded-For": "10.1.2.3"}).status_code == 404


# --- what it says -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_counts_finished_syncs_by_outcome_with_durations(make_connection, metrics_on, broker):
    ok, failing = make_connection(), make_connection()
    sync_finish(started=started_sync(ok), rows=some_rows(3), api_calls=2, now=NOW + timedelta(seconds=0.7))
    sync_finish(
        started=started_sync(ok, NOW + timedelta(minutes=1)),
        rows=some_rows(3),
        api_calls=1,
        now=NOW + timedelta(minutes=1, seconds=40),
    )
    sync_fail(started=started_sync(failing), error=PermanentError("no"), now=NOW + timedelta(seconds=3))

    samples = scrape()

    assert samples[("adsync_syncs_total", labels(provider="demo", outcome="success"))] == 2
    assert samples[("adsync_syncs_total", labels(provider="demo", outcome="error"))] == 1
    success = {"provider": "demo", "outcome": "success"}
    buckets = {
        le: samples[("adsync_sync_duration_seconds_bucket", labels(**success, le=le))]
        for le in ("0.5", "1.0", "30.0", "60.0", "+Inf")
    }
    assert buckets == {"0.5": 0, "1.0": 1, "30.0": 1, "60.0": 2, "+Inf": 2}
    assert samples[("adsync_sync_duration_seconds_sum", labels(**success))] == pytest.approx(40.7)
    assert samples[("adsync_sync_duration_seconds_count", labels(**success))] == 2
    assert samples[("adsync_platform_calls_total", labels(provider="demo"))] == 3
    assert samples[("adsync_metric_rows_written_total", labels(provider="demo"))] == 3


@pytest.mark.django_db
def test_metrics_counts_interrupted_runs_once(make_connection, metrics_on, broker):
    connection = make_connection()
    started_sync(connection)
    later = NOW + timedelta(seconds=settings.SYNC_TASK_TIME_LIMIT + settings.SYNC_RECOVERY_GRACE + 1)

    assert syncs_recover_stuck(now=later) == 1
    assert syncs_recover_stuck(now=later + timedelta(seconds=1)) == 0

    assert scrape()[("adsync_syncs_total", labels(provider="demo", outcome="interrupted"))] == 1


@pytest.mark.django_db
def test_metrics_gauges_lag_queue_status_heartbeats(
    make_connection, metrics_on, broker, django_capture_on_commit_callbacks
):
    due = make_connection(sync_frequency=SyncFrequency.HOURLY)
    Connection.objects.filter(pk=due.pk).update(next_sync_at=NOW - timedelta(seconds=42))
    with django_capture_on_commit_callbacks(execute=True):
        connection_enqueue_sync(connection=make_connection(), now=NOW)
    started_sync(make_connection())
    heartbeat_record(name=SCHEDULER_HEARTBEAT, kind=HeartbeatKind.SCHEDULER, now=NOW - timedelta(seconds=3))

    with time_machine.travel(NOW, tick=False):
        samples = scrape()

    assert samples[("adsync_schedule_lag_seconds", ())] == 42
    # The enqueue above sent a real message to the test Redis.
    assert samples[("adsync_queue_depth", labels(queue="sync_jobs"))] == 1
    assert samples[("adsync_broker_up", ())] == 1
    assert samples[("adsync_syncs_in_flight", ())] == 1
    assert {key[1]: value for key, value in samples.items() if key[0] == "adsync_connections"} == {
        labels(provider="demo", status="idle"): 1,
        labels(provider="demo", status="queued"): 1,
        labels(provider="demo", status="syncing"): 1,
    }
    assert samples[("adsync_heartbeat_age_seconds", labels(kind="scheduler", name="scheduler"))] == 3


@pytest.mark.django_db
def test_metrics_budget_used_per_key(make_connection, metrics_on, broker):
    from syncing.budget import budget_try_spend
    from syncing.providers import provider_for

    make_connection(provider="meta", external_account_id="act_123", credentials={"access_token": "t"})
    (budget,) = provider_for("meta").budgets(external_account_id="act_123")
    for _ in range(5):
        assert budget_try_spend(budget=budget, now=NOW - timedelta(minutes=10))

    with time_machine.travel(NOW, tick=False):
        samples = scrape()

    assert samples[("adsync_platform_budget_used_calls", labels(budget=budget.key))] == 5
    assert samples[("adsync_platform_budget_limit_calls", labels(budget=budget.key))] == settings.META_CALLS_PER_HOUR


@pytest.mark.django_db
@pytest.mark.embedded
def test_freshness_counts_match_the_page(make_connection):
    ages = [None, 20, 40, 70, 200]  # seconds since the last completed sync
    for frequency in (SyncFrequency.REALTIME, SyncFrequency.HOURLY, SyncFrequency.MANUAL):
        for age in ages:
            connection = make_connection(sync_frequency=frequency)
            completed = None if age is None else NOW - timedelta(seconds=age * (120 if frequency == "hourly" else 1))
            Connection.objects.filter(pk=connection.pk).update(last_sync_completed_at=completed)
    # Failing and paused ones too: never "on time" while the last attempt failed.
    failing = make_connection(sync_frequency=SyncFrequency.REALTIME)
    Connection.objects.filter(pk=failing.pk).update(last_sync_completed_at=NOW, sync_status="error")
    paused = make_connection(sync_frequency=SyncFrequency.HOURLY)
    Connection.objects.filter(pk=paused.pk).update(
        last_sync_completed_at=NOW, paused_at=NOW, pause_reason="user", next_sync_at=None
    )
    expected: dict[str, int] = {}
    for connection in Connection.objects.all():
        label = connection_freshness(connection, NOW)
        expected[label] = expected.get(label, 0) + 1

    counts = connections_by_freshness(now=NOW)

    assert {label: n for label, n in counts.items() if n} == expected
    assert (counts["delayed"], counts["paused"]) == (expected.get("delayed", 0), 1)
    assert sum(counts.values()) == 17


@pytest.mark.slow
def test_metrics_after_a_real_sync_on_a_real_worker(make_connection, start_worker, metrics_on):
    start_worker()
    connection = make_connection(provider_options={"latency_ms": 300})
    connection_enqueue_sync(connection=connection)
    wait_for(lambda: SyncCounter.objects.exists(), message="the sync to be counted")

    samples = scrape()

    assert samples[("adsync_syncs_total", labels(provider="demo", outcome="success"))] == 1
    assert samples[("adsync_sync_duration_seconds_bucket", labels(provider="demo", outcome="success", le="0.25"))] == 0
    assert samples[("adsync_sync_duration_seconds_count", labels(provider="demo", outcome="success"))] == 1
    assert samples[("adsync_metric_rows_written_total", labels(provider="demo"))] == 32
    assert samples[("adsync_syncs_in_flight", ())] == 0
    assert ("adsync_heartbeat_age_seconds", labels(kind="sync_worker", name=_worker_name())) in samples


def _worker_name() -> str:
    from syncing.models import Heartbeat

    return Heartbeat.objects.get(kind=HeartbeatKind.SYNC_WORKER).name


# --- the log line -----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_one_log_line_per_finished_sync(make_connection, caplog, django_capture_on_commit_callbacks):
    connection = make_connection()
    started = started_sync(connection)

    with caplog.at_level(logging.INFO, logger="syncing.services"), django_capture_on_commit_callbacks(execute=True):
        sync_finish(started=started, rows=some_rows(3), api_calls=1, now=NOW + timedelta(seconds=1.25))

    (record,) = [r for r in caplog.records if r.getMessage().startswith("sync finished")]
    assert record.getMessage() == (
        f"sync finished connection_id={connection.public_id} job_id={started.job_id} provider=demo "
        "trigger=manual window=lookback api_calls=1 rows_fetched=3 rows_written=3 outcome=success duration_ms=1250"
    )
    line = json.loads(JsonFormatter().format(record))
    assert {key: line[key] for key in ("level", "logger", "connection_id", "outcome", "rows_written")} == {
        "level": "INFO",
        "logger": "syncing.services",
        "connection_id": str(connection.public_id),
        "outcome": "success",
        "rows_written": 3,
    }
    assert line["message"] == record.getMessage()


@pytest.mark.django_db
@pytest.mark.embedded
def test_failed_sync_log_line_carries_the_error(make_connection, caplog, django_capture_on_commit_callbacks):
    started = started_sync(make_connection())

    with caplog.at_level(logging.INFO, logger="syncing.services"), django_capture_on_commit_callbacks(execute=True):
        sync_fail(started=started, error=PermanentError("Account disabled"), now=NOW + timedelta(seconds=2))

    (message,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sync finished")]
    assert message.endswith("outcome=error duration_ms=2000 error_class=permanent error='Account disabled'")


@pytest.mark.django_db
def test_metrics_show_shared_platform_throttles_usage_and_pace(metrics_on, broker):
    from syncing.scopes import META_APP, meta_account_scope, scope_usage_record, scopes_throttle

    scopes_throttle(scopes=[META_APP], until=NOW + timedelta(minutes=4), reason="(#4) limit", now=NOW)
    scope_usage_record(scope=meta_account_scope("42"), usage_pct=82.0, pace_limit=110, now=NOW)

    with time_machine.travel(NOW + timedelta(minutes=1), tick=False):
        samples = scrape()

    assert samples[("adsync_platform_scope_throttled_seconds", labels(scope=META_APP))] == 180
    assert samples[("adsync_platform_scope_usage_percent", labels(scope="meta:account:42"))] == 82
    assert samples[("adsync_platform_scope_pace_calls", labels(scope="meta:account:42"))] == 110
