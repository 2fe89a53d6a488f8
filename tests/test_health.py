"""Heartbeats, readiness (/readyz, manage.py health), the "syncs are not running" banner."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.conf import settings
from django.db import connection as db
from django.test import Client

from syncing.models import SCHEDULER_HEARTBEAT, Heartbeat, HeartbeatKind
from syncing.services import heartbeat_forget, heartbeat_record, heartbeats_prune
from syncing.tasks import dispatch_due_syncs
from tests.conftest import ROOT, _worker_env, wait_for
from tests.pages import parse, settings_page, signed_in

NOW = datetime(2026, 11, 28, 14, 2, 30, tzinfo=UTC)
SCHEDULER_STALE = "Scheduled syncs are paused: the scheduler has not run since 14:02 UTC."


def beat(name: str, kind: str, at: datetime) -> None:
    heartbeat_record(name=name, kind=kind, now=at)


def engine_running(at: datetime) -> None:
    beat(SCHEDULER_HEARTBEAT, HeartbeatKind.SCHEDULER, at)
    beat("sync@host", HeartbeatKind.SYNC_WORKER, at)


def readyz(client: Client, query: str = "") -> tuple[int, dict]:
    response = client.get(f"/readyz{query}")
    assert response["Content-Type"] == "application/json"
    return response.status_code, response.json()


# --- heartbeats ---------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_heartbeat_first_beat_inserts_then_one_update(django_assert_num_queries):
    beat("sync@a", HeartbeatKind.SYNC_WORKER, NOW)
    later = NOW + timedelta(seconds=10)

    with django_assert_num_queries(1):
        beat("sync@a", HeartbeatKind.SYNC_WORKER, later)

    row = Heartbeat.objects.get()
    assert (row.name, row.kind, row.started_at, row.last_seen_at) == ("sync@a", "sync_worker", NOW, later)


@pytest.mark.django_db
@pytest.mark.embedded
def test_heartbeat_forget_and_prune():
    beat("sync@gone", HeartbeatKind.SYNC_WORKER, NOW - timedelta(days=2))
    beat("sync@stopped", HeartbeatKind.SYNC_WORKER, NOW)
    beat("sync@alive", HeartbeatKind.SYNC_WORKER, NOW)

    heartbeat_forget(name="sync@stopped")
    assert heartbeats_prune(now=NOW) == 1

    assert list(Heartbeat.objects.values_list("name", flat=True)) == ["sync@alive"]


@pytest.mark.django_db
@pytest.mark.embedded
def test_dispatcher_tick_records_the_scheduler_heartbeat():
    with time_machine.travel(NOW, tick=False):
        dispatch_due_syncs.apply()

    row = Heartbeat.objects.get()
    assert (row.name, row.kind, row.last_seen_at) == (SCHEDULER_HEARTBEAT, HeartbeatKind.SCHEDULER, NOW)


# --- readiness ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_readyz_ready_when_every_part_is_there(client, broker):
    engine_running(NOW - timedelta(seconds=2))

    with time_machine.travel(NOW, tick=False):
        status, body = readyz(client)

    assert status == 200
    assert body == {
        "status": "ready",
        "reasons": [],
        "checks": {
            "database": {"ok": True, "detail": "ok"},
            "broker": {"ok": True, "detail": "ok"},
            "scheduler": {"ok": True, "detail": "last tick 2 s ago"},
            "sync_workers": {"ok": True, "detail": "1 running"},
        },
    }


@pytest.mark.django_db
def test_readyz_scheduler_never_ticked(client, broker):
    beat("sync@host", HeartbeatKind.SYNC_WORKER, NOW)

    with time_machine.travel(NOW, tick=False):
        status, body = readyz(client)

    assert status == 503
    assert body["status"] == "unavailable"
    assert body["reasons"] == ["scheduler: the dispatcher has never ticked (are beat and the dispatch worker running?)"]


@pytest.mark.django_db
def test_readyz_scheduler_stale_after_three_intervals(client, broker):
    engine_running(NOW)
    stale_after = settings.HEALTH_SCHEDULER_STALE_AFTER

    with time_machine.travel(NOW + timedelta(seconds=stale_after), tick=False):
        assert readyz(client)[0] == 200
    beat("sync@host", HeartbeatKind.SYNC_WORKER, NOW + timedelta(seconds=stale_after + 1))
    with time_machine.travel(NOW + timedelta(seconds=stale_after + 1), tick=False):
        status, body = readyz(client)

    assert status == 503
    assert body["reasons"] == [
        f"scheduler: no dispatcher tick for {stale_after + 1} s (since 2026-11-28 14:02:30 UTC; "
        f"expected every {settings.SYNC_DISPATCH_INTERVAL} s)"
    ]


@pytest.mark.django_db
def test_readyz_no_sync_worker(client, broker):
    engine_running(NOW)
    # A dispatch-only worker does not run syncs.
    beat("dispatch@host", HeartbeatKind.WORKER, NOW + timedelta(seconds=60))
    beat(SCHEDULER_HEARTBEAT, HeartbeatKind.SCHEDULER, NOW + timedelta(seconds=60))

    with time_machine.travel(NOW + timedelta(seconds=60), tick=False):
        status, body = readyz(client)

    assert status == 503
    assert body["reasons"] == ["sync_workers: no sync worker has reported for 60 s"]


@pytest.mark.django_db
def test_readyz_broker_down(client, broker_down):
    engine_running(NOW)

    with time_machine.travel(NOW, tick=False):
        status, body = readyz(client)

    assert status == 503
    assert [reason.split(" (")[0] for reason in body["reasons"]] == ["broker: unavailable"]
    assert body["checks"]["broker"]["detail"].startswith("unavailable (ConnectionError: ")


@pytest.mark.django_db(transaction=True)
def test_readyz_database_down(client, broker):
    engine_running(NOW)
    port = db.settings_dict["PORT"]
    db.close()
    # A port where nothing listens: the network edge fails, our code is real.
    db.settings_dict["PORT"] = 1
    try:
        with time_machine.travel(NOW, tick=False):
            status, body = readyz(client)
    finally:
        db.close()
        db.settings_dict["PORT"] = port

    assert status == 503
    assert body["reasons"][0].startswith("database: unavailable (OperationalError: ")
    assert body["reasons"][1:] == [
        "scheduler: unknown: the database is unavailable",
        "sync_workers: unknown: the database is unavailable",
    ]
    assert body["checks"]["broker"] == {"ok": True, "detail": "ok"}


@pytest.mark.django_db
def test_readyz_some_checks_only_and_unknown_check(client, broker):
    status, body = readyz(client, "?check=database,broker")
    assert (status, sorted(body["checks"])) == (200, ["broker", "database"])

    status, body = readyz(client, "?check=database,queue")
    assert (status, body) == (
        400,
        {"detail": "Unknown check queue; choose from database, broker, scheduler, sync_workers."},
    )


@pytest.mark.django_db
def test_healthz_stays_a_constant_liveness_answer(client, broker_down):
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


@pytest.mark.django_db(transaction=True)
def test_health_command_exit_codes(broker):
    command = [sys.executable, "manage.py", "health", "--check", "database", "--check", "scheduler"]
    env = _worker_env({})

    failing = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    engine_running(datetime.now(UTC))
    passing = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    assert failing.returncode == 1
    assert json.loads(failing.stdout)["reasons"] == [
        "scheduler: the dispatcher has never ticked (are beat and the dispatch worker running?)"
    ]
    assert (passing.returncode, json.loads(passing.stdout)["status"]) == (0, "ready")


@pytest.mark.django_db(transaction=True)
def test_health_command_for_one_worker():
    """A worker container's healthcheck: its own heartbeat, not anyone's."""
    command = [sys.executable, "manage.py", "health", "--worker", "celery@box-1"]
    beat("celery@box-2", HeartbeatKind.SYNC_WORKER, datetime.now(UTC))

    missing = subprocess.run(command, cwd=ROOT, env=_worker_env({}), capture_output=True, text=True, timeout=60)
    beat("celery@box-1", HeartbeatKind.SYNC_WORKER, datetime.now(UTC))
    present = subprocess.run(command, cwd=ROOT, env=_worker_env({}), capture_output=True, text=True, timeout=60)

    assert (missing.returncode, json.loads(missing.stdout)["reasons"]) == (
        1,
        ["celery@box-1: no heartbeat from this worker"],
    )
    assert (present.returncode, json.loads(present.stdout)["status"]) == (0, "ready")


@pytest.mark.slow
def test_a_real_worker_beats_and_says_goodbye(start_worker, client):
    worker = start_worker()

    row = wait_for(
        lambda: Heartbeat.objects.filter(kind=HeartbeatKind.SYNC_WORKER).first(), message="the worker's heartbeat"
    )
    assert row.name.startswith("test-")
    assert (row.details["queues"], row.details["concurrency"]) == (["sync_bulk", "sync_jobs"], 2)
    assert readyz(client, "?check=sync_workers")[0] == 200

    worker.stop()

    assert not Heartbeat.objects.exists()
    assert readyz(client, "?check=sync_workers")[1]["reasons"] == ["sync_workers: no sync worker has ever reported"]


# --- the banner ---------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_settings_banner_says_when_the_scheduler_stopped(owner, connection):
    engine_running(NOW)
    client = signed_in(owner)

    with time_machine.travel(NOW + timedelta(seconds=3), tick=False):
        assert settings_page(client).find_all(class_="engine-banner")[0].attrs.get("hidden") == ""
    beat("sync@host", HeartbeatKind.SYNC_WORKER, NOW + timedelta(minutes=5))
    with time_machine.travel(NOW + timedelta(minutes=5), tick=False):
        banner = settings_page(client).one(class_="engine-banner")
        polled = client.get("/settings/status").json()["banner"]

    assert "hidden" not in banner.attrs
    assert banner.text() == f"Syncs are not running. {SCHEDULER_STALE}"
    assert polled == SCHEDULER_STALE


@pytest.mark.django_db
@pytest.mark.embedded
def test_settings_banner_without_any_engine(owner, connection):
    with time_machine.travel(NOW, tick=False):
        banner = settings_page(signed_in(owner)).one(class_="engine-banner")

    assert banner.text() == (
        "Syncs are not running. Scheduled syncs are not running: the scheduler has not run yet. "
        "No sync worker is running, so no sync (not even Sync Now) can start."
    )


@pytest.mark.django_db
@pytest.mark.embedded
def test_admin_banner_for_staff(admin_client):
    beat(SCHEDULER_HEARTBEAT, HeartbeatKind.SCHEDULER, NOW - timedelta(days=1))
    beat("sync@host", HeartbeatKind.SYNC_WORKER, NOW)

    with time_machine.travel(NOW, tick=False):
        page = parse(admin_client.get("/admin/").content)
        login = parse(Client().get("/admin/login/").content)

    assert page.one(class_="engine-banner").text() == (
        "Syncs are not running. Scheduled syncs are paused: the scheduler has not run since Nov 27, 14:02 UTC. "
        "Operators: /readyz says which part is missing."
    )
    assert login.find_all(class_="engine-banner")[0].attrs.get("hidden") == ""
