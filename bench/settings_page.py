"""The Settings page for an agency with 500 connections (issue 14): server time and weight.

    .venv/bin/python bench/settings_page.py [--connections 500] [--repeats 30]

A user with 500 connections (a third each Meta, Google and demo; some failing, waiting for a
reconnect, queued, paused, stale), each with a day of hourly sync runs, 28 days of spend for
three campaigns, a few restated days in the change ledger and Meta call budgets in use. Django's
test client calls the views in this process, so the time is the server's own (middleware, view,
queries, templates), without a network. Prints p50/p95 and bytes, with PASS/MISS against:
- GET /settings (the first screen: the list, 100 rows): p95 <= 300 ms, and the HTML plus the
  page's CSS and JS <= 300 KB;
- GET /settings?view=cards (20 cards with their pictures): p95 <= 300 ms, <= 300 KB;
- the live poll (/settings/status): the answer when nothing changed is a 304 without a body;
and the number of queries of each, which does not grow with the connections.

Its own database (adsync_bench_page, or BENCH_DATABASE_URL), emptied at the start.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

os.environ.setdefault("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/adsync_bench_page")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _setup
from _setup import heading, measure, verdict
from django.contrib.auth import get_user_model
from django.db import connection as db
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from connections.models import Connection, PauseReason, SyncFrequency
from connections.services import workspace_create
from syncing import schedule
from syncing.models import ApiCallBucket, DailyMetric, SyncChange, SyncRun

TARGET_MS = 300.0
TARGET_BYTES = 300 * 1024
ROOT = Path(__file__).resolve().parent.parent
# What the first screen loads besides the HTML (the favicon is an SVG of a few hundred bytes).
ASSETS = ["static/css/app.css", "static/css/engine-banner.css", "static/js/settings.js", "static/favicon.svg"]


def populate(count: int) -> None:
    _setup.tables_reset()
    ApiCallBucket.objects.all().delete()
    get_user_model().objects.filter(username="bench-agency").delete()
    user = get_user_model().objects.create_user("bench-agency", password="x")
    workspace = workspace_create(name="Bench Agency", owner=user)
    now = timezone.now()
    rng = random.Random(14)
    providers = ["meta", "google", "demo"]
    frequencies = list(SyncFrequency.values)
    rows = []
    for index in range(count):
        provider = providers[index % 3]
        account = {"meta": f"act_{1000 + index}", "google": f"{100_000_0000 + index}", "demo": f"demo-{index}"}
        frequency = frequencies[index % len(frequencies)]
        connection = Connection(
            workspace=workspace,
            provider=provider,
            external_account_id=account[provider],
            name=f"Client {index:04d}",
            timezone=["UTC", "Europe/Berlin", "America/New_York"][index % 3],
            credentials={},
            sync_frequency=frequency,
            last_sync_attempted_at=now - timedelta(seconds=20),
            last_sync_completed_at=now - timedelta(seconds=18),
            total_syncs_attempted=500,
            total_syncs_with_changes=120,
        )
        connection.next_sync_at = schedule.next_sync_after_change(
            frequency=frequency, last_attempted_at=None, public_id=connection.public_id, now=now
        )
        if index % 29 == 3:
            connection.sync_status, connection.last_sync_error_kind = "error", "auth"
            connection.last_sync_error, connection.next_sync_at = "Access token expired.", None
        elif index % 23 == 5:
            connection.sync_status, connection.last_sync_error_kind = "error", "permanent"
            connection.last_sync_error = "The ad account is disabled."
        elif index % 31 == 7:
            connection.sync_status, connection.job_id, connection.queued_at = "queued", uuid.uuid4(), now
        elif index % 37 == 11:
            connection.paused_at, connection.pause_reason, connection.next_sync_at = now, PauseReason.USER, None
        rows.append(connection)
    connections = Connection.objects.bulk_create(rows)

    runs = []
    for connection in connections:
        for hour in range(24):
            started = now - timedelta(hours=hour, minutes=rng.randint(0, 59))
            outcome = "error" if rng.random() < 0.03 else "success"
            runs.append(
                SyncRun(
                    connection=connection,
                    job_id=uuid.uuid4(),
                    trigger="scheduled",
                    started_at=started,
                    finished_at=started + timedelta(seconds=2),
                    outcome=outcome,
                )
            )
    SyncRun.objects.bulk_create(runs, batch_size=5000)
    metrics = [
        DailyMetric(
            connection=connection,
            entity_id=f"c{campaign}",
            date=(now - timedelta(days=day)).date(),
            spend=Decimal(rng.randint(1000, 90000)) / 100,
            currency="USD",
            updated_at=now,
        )
        for connection in connections
        for campaign in range(3)
        for day in range(28)
    ]
    DailyMetric.objects.bulk_create(metrics, batch_size=5000)
    first_runs = {run.connection_id: run for run in SyncRun.objects.order_by("connection_id", "-started_at")}
    SyncChange.objects.bulk_create(
        [
            SyncChange(
                run=first_runs[c.pk],
                level="campaign",
                entity_id="c0",
                date=(now - timedelta(days=5 + c.pk % 7)).date(),
                added=False,
                restated=True,
                diff={},
            )
            for c in connections[::4]
        ]
    )
    ApiCallBucket.objects.bulk_create(
        [
            ApiCallBucket(
                key=f"meta:{1000 + i}", minute=now.replace(second=0, microsecond=0), calls=rng.randint(1, 170)
            )
            for i in range(0, count, 3)
        ]
    )
    _setup.vacuum_analyze("connections", "sync_runs", "daily_metrics", "sync_changes", "api_call_buckets")


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    heading(f"Settings page: {args.connections} connections")
    print(_setup.machine_note())
    populate(args.connections)
    client = Client(HTTP_HOST="localhost")
    client.force_login(get_user_model().objects.get(username="bench-agency"))
    assets = sum((ROOT / path).stat().st_size for path in ASSETS)
    ok = True

    for label, url in [("first screen (list)", "/settings"), ("cards with pictures", "/settings?view=cards")]:
        times, responses = measure(lambda url=url: client.get(url), repeats=args.repeats, warmup=2)
        response = responses[-1]
        assert response.status_code == 200, response.status_code
        with CaptureQueriesContext(db) as queries:
            client.get(url)
        html = len(response.content)
        p50, p95 = percentile(times, 50) * 1000, percentile(times, 95) * 1000
        fast, light = p95 <= TARGET_MS, html + assets <= TARGET_BYTES
        ok &= fast and light
        print(
            f"GET {url:<24} {label:<20} p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  [{verdict(fast)} <= {TARGET_MS:.0f} ms]"
            f"  HTML {html / 1024:6.1f} KB + assets {assets / 1024:.1f} KB = {(html + assets) / 1024:6.1f} KB"
            f"  [{verdict(light)} <= {TARGET_BYTES // 1024} KB]  {len(queries)} queries"
        )

    times, responses = measure(lambda: client.get("/settings/status"), repeats=args.repeats, warmup=2)
    etag = responses[-1]["ETag"]
    body = len(responses[-1].content)
    p50, p95 = percentile(times, 50) * 1000, percentile(times, 95) * 1000
    print(f"GET /settings/status      poll, changed        p50 {p50:6.1f} ms  p95 {p95:6.1f} ms", end="")
    print(f"  body {body / 1024:6.1f} KB")
    times, responses = measure(
        lambda: client.get("/settings/status", HTTP_IF_NONE_MATCH=etag), repeats=args.repeats, warmup=2
    )
    unchanged = responses[-1]
    not_modified = unchanged.status_code == 304 and len(unchanged.content) == 0
    ok &= not_modified
    p50, p95 = percentile(times, 50) * 1000, percentile(times, 95) * 1000
    print(
        f"GET /settings/status      poll, unchanged      p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  "
        f"{unchanged.status_code}, body {len(unchanged.content)} bytes  [{verdict(not_modified)} 304 without a body]"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
