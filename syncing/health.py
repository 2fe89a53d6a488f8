"""Is the engine running? Readiness (/readyz, `manage.py health`) and the banner that the
Settings page and the admin show when scheduled syncs are not running.

Liveness (/healthz) stays a constant answer: it says the web process serves requests, nothing
about what it depends on, so an orchestrator never restarts a healthy web server because the
database is down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.db import connection as db

from adsync.celery import app as celery_app
from syncing.models import Heartbeat, HeartbeatKind


class Component:
    DATABASE = "database"
    BROKER = "broker"
    SCHEDULER = "scheduler"
    SYNC_WORKERS = "sync_workers"
    ALL = (DATABASE, BROKER, SCHEDULER, SYNC_WORKERS)


@dataclasses.dataclass(frozen=True)
class Check:
    component: str
    ok: bool
    detail: str


@dataclasses.dataclass(frozen=True)
class Readiness:
    checks: list[Check]

    @property
    def ready(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_json(self) -> dict:
        return {
            "status": "ready" if self.ready else "unavailable",
            "reasons": [f"{c.component}: {c.detail}" for c in self.checks if not c.ok],
            "checks": {c.component: {"ok": c.ok, "detail": c.detail} for c in self.checks},
        }


@dataclasses.dataclass(frozen=True)
class EngineBeats:
    """The heartbeats that matter, read in one query."""

    last_tick_at: datetime | None
    last_sync_worker_at: datetime | None
    live_sync_workers: int
    # The live sync workers' concurrency, added up: how many syncs they run at once.
    live_sync_capacity: int


def engine_beats(*, now: datetime) -> EngineBeats:
    rows = Heartbeat.objects.filter(kind__in=[HeartbeatKind.SCHEDULER, HeartbeatKind.SYNC_WORKER]).values_list(
        "kind", "last_seen_at", "details"
    )
    tick = None
    workers: list[tuple[datetime, int]] = []
    for kind, seen, details in rows:
        if kind == HeartbeatKind.SCHEDULER:
            tick = seen if tick is None else max(tick, seen)
        else:
            concurrency = details.get("concurrency") if isinstance(details, dict) else None
            workers.append((seen, concurrency if isinstance(concurrency, int) and concurrency > 0 else 1))
    fresh_after = now - timedelta(seconds=settings.HEALTH_WORKER_STALE_AFTER)
    live = [concurrency for seen, concurrency in workers if seen >= fresh_after]
    return EngineBeats(
        last_tick_at=tick,
        last_sync_worker_at=max((seen for seen, _ in workers), default=None),
        live_sync_workers=len(live),
        live_sync_capacity=sum(live),
    )


def _scheduler_stale(beats: EngineBeats, now: datetime) -> bool:
    stale_after = timedelta(seconds=settings.HEALTH_SCHEDULER_STALE_AFTER)
    return beats.last_tick_at is None or now - beats.last_tick_at > stale_after


def _clock(moment: datetime, now: datetime) -> str:
    utc = moment.astimezone(UTC)
    return f"{utc:%H:%M} UTC" if utc.date() == now.astimezone(UTC).date() else f"{utc:%b %d, %H:%M} UTC"


def engine_banner(*, now: datetime) -> str | None:
    """What a person must know when syncs are not running; None when they are.

    "Scheduled syncs are paused: the scheduler has not run since 14:02 UTC." A newcomer must
    never stare at "due now" without an explanation.
    """
    beats = engine_beats(now=now)
    problems = []
    if _scheduler_stale(beats, now):
        if beats.last_tick_at is None:
            problems.append("Scheduled syncs are not running: the scheduler has not run yet.")
        else:
            problems.append(
                f"Scheduled syncs are paused: the scheduler has not run since {_clock(beats.last_tick_at, now)}."
            )
    if beats.live_sync_workers == 0:
        if beats.last_sync_worker_at is None:
            problems.append("No sync worker is running, so no sync (not even Sync Now) can start.")
        else:
            problems.append(
                "No sync worker is running, so no sync (not even Sync Now) can start: the last one "
                f"reported at {_clock(beats.last_sync_worker_at, now)}."
            )
    return " ".join(problems) if problems else None


def _check_database() -> Check:
    try:
        db.ensure_connection()
        with db.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        # The connection is unusable now; drop it so the next request tries a fresh one.
        db.close_if_unusable_or_obsolete()
        return Check(Component.DATABASE, False, f"unavailable ({_first_line(exc)})")
    return Check(Component.DATABASE, True, "ok")


@contextlib.contextmanager
def broker_redis() -> Iterator[Any]:
    """A short-lived client of the Redis broker, with HEALTH_BROKER_TIMEOUT on every socket (a
    frozen Redis must not hang a probe or a scrape); None when the broker is not Redis."""
    url = celery_app.conf.broker_url or ""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        yield None
        return
    import redis

    timeout = settings.HEALTH_BROKER_TIMEOUT
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        yield client
    finally:
        client.close()


def _check_broker() -> Check:
    try:
        with broker_redis() as client:
            if client is not None:
                client.ping()
                return Check(Component.BROKER, True, "ok")
        if folder := celery_app.conf.broker_transport_options.get("data_folder_in"):
            # The embedded filesystem broker: a folder on this machine.
            if not os.access(folder, os.W_OK):
                return Check(Component.BROKER, False, f"queue folder {folder} is not writable")
        else:
            with celery_app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=settings.HEALTH_BROKER_TIMEOUT)
    except Exception as exc:  # redis-py, kombu and the OS each raise their own
        return Check(Component.BROKER, False, f"unavailable ({_first_line(exc)})")
    return Check(Component.BROKER, True, "ok")


def readiness(*, now: datetime, components: tuple[str, ...] = Component.ALL) -> Readiness:
    """Each component's state; the engine's heartbeats are read only when the database answers."""
    checks: list[Check] = []
    database = _check_database()
    if Component.DATABASE in components:
        checks.append(database)
    if Component.BROKER in components:
        checks.append(_check_broker())
    wants_beats = {Component.SCHEDULER, Component.SYNC_WORKERS} & set(components)
    if wants_beats and not database.ok:
        checks.extend(Check(c, False, "unknown: the database is unavailable") for c in sorted(wants_beats))
    elif wants_beats:
        beats = engine_beats(now=now)
        if Component.SCHEDULER in components:
            checks.append(_scheduler_check(beats, now))
        if Component.SYNC_WORKERS in components:
            checks.append(_workers_check(beats, now))
    return Readiness(checks)


def _scheduler_check(beats: EngineBeats, now: datetime) -> Check:
    if beats.last_tick_at is None:
        return Check(
            Component.SCHEDULER, False, "the dispatcher has never ticked (are beat and the dispatch worker running?)"
        )
    age = (now - beats.last_tick_at).total_seconds()
    if _scheduler_stale(beats, now):
        return Check(
            Component.SCHEDULER,
            False,
            f"no dispatcher tick for {age:.0f} s (since {beats.last_tick_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC; "
            f"expected every {settings.SYNC_DISPATCH_INTERVAL} s)",
        )
    return Check(Component.SCHEDULER, True, f"last tick {age:.0f} s ago")


def _workers_check(beats: EngineBeats, now: datetime) -> Check:
    if beats.live_sync_workers:
        return Check(Component.SYNC_WORKERS, True, f"{beats.live_sync_workers} running")
    if beats.last_sync_worker_at is None:
        return Check(Component.SYNC_WORKERS, False, "no sync worker has ever reported")
    age = (now - beats.last_sync_worker_at).total_seconds()
    return Check(Component.SYNC_WORKERS, False, f"no sync worker has reported for {age:.0f} s")


def worker_check(*, name: str, now: datetime) -> Check:
    """Is the worker with this hostname beating? (A container's own healthcheck.)"""
    seen = Heartbeat.objects.filter(name=name).values_list("last_seen_at", flat=True).first()
    if seen is None:
        return Check(name, False, "no heartbeat from this worker")
    age = (now - seen).total_seconds()
    return Check(name, age <= settings.HEALTH_WORKER_STALE_AFTER, f"last heartbeat {age:.0f} s ago")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
