"""Shared bootstrap for the benchmarks: a dedicated database and Redis db, fast data loading,
timing helpers.

The benchmarks truncate tables, so they never run against the database the tests or a
developer use. The database and Redis db come from BENCH_DATABASE_URL / BENCH_REDIS_URL
(defaults: postgres://postgres@127.0.0.1:5432/adsync_bench and redis://127.0.0.1:6379/12);
DATABASE_URL and REDIS_URL (which `make bench` sets to the test services) are ignored on
purpose. Import this module before anything that touches Django.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BENCH_DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/adsync_bench")
BENCH_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
# Databases and Redis dbs other people use on this machine: the benchmarks refuse them.
FORBIDDEN_DATABASES = {"adsync", "test_adsync", "postgres", "template0", "template1"}
FORBIDDEN_REDIS_DBS = {"13", "15"}


def _check_targets() -> tuple[str, str]:
    db_name = urlsplit(BENCH_DATABASE_URL).path.lstrip("/")
    if not db_name or db_name in FORBIDDEN_DATABASES or db_name.startswith("test_"):
        raise SystemExit(f"bench: refusing to use database {db_name!r}; set BENCH_DATABASE_URL to a bench database")
    redis_db = urlsplit(BENCH_REDIS_URL).path.lstrip("/") or "0"
    if redis_db in FORBIDDEN_REDIS_DBS:
        raise SystemExit(f"bench: refusing to use Redis db {redis_db}; set BENCH_REDIS_URL to another db")
    return db_name, redis_db


DB_NAME, REDIS_DB = _check_targets()

# The environment the Django settings (and the soak's subprocesses) read.
BENCH_ENV = {
    "DJANGO_SETTINGS_MODULE": "adsync.settings",
    "DATABASE_URL": BENCH_DATABASE_URL,
    "REDIS_URL": BENCH_REDIS_URL,
    "SECRET_KEY": os.environ.get("BENCH_SECRET_KEY", "bench-secret-key-not-for-production"),
    # DEBUG would record every query in memory (connection.queries) and skew the timings.
    "DEBUG": "0",
    "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
}
for _dropped in ("DATABASE_URL", "REDIS_URL"):
    if os.environ.get(_dropped) and os.environ[_dropped] != BENCH_ENV[_dropped]:
        print(f"bench: ignoring {_dropped} from the environment; using {BENCH_ENV[_dropped]}", file=sys.stderr)
os.environ.update(BENCH_ENV)


def _ensure_database() -> None:
    import psycopg
    from psycopg import sql

    parts = urlsplit(BENCH_DATABASE_URL)
    admin_url = urlunsplit((parts.scheme.replace("postgres", "postgresql", 1), parts.netloc, "/postgres", "", ""))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB_NAME)))
            print(f"bench: created database {DB_NAME}", file=sys.stderr)


_ensure_database()

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection as db  # noqa: E402
from django.utils import timezone  # noqa: E402

from connections.models import SYNC_INTERVALS, Connection, SyncFrequency, Workspace  # noqa: E402

call_command("migrate", interactive=False, verbosity=0)


# --- timing ---------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Seconds taken by fn() and its result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def measure(
    fn: Callable[[], object],
    *,
    repeats: int = 7,
    warmup: int = 1,
    setup: Callable[[], object] | None = None,
    teardown: Callable[[object], object] | None = None,
) -> tuple[list[float], list[object]]:
    """Run setup (untimed), fn (timed), teardown (untimed) warmup + repeats times.

    Returns the timed seconds and fn's results of the measured (non-warm-up) runs.
    """
    times: list[float] = []
    results: list[object] = []
    for index in range(warmup + repeats):
        if setup is not None:
            setup()
        seconds, result = timed(fn)
        if teardown is not None:
            teardown(result)
        if index >= warmup:
            times.append(seconds)
            results.append(result)
    return times, results


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def spread(times: list[float]) -> str:
    """min / median / max in ms, for the detail lines."""
    return f"min {min(times) * 1000:.1f} / median {median(times) * 1000:.1f} / max {max(times) * 1000:.1f} ms"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def heading(title: str) -> None:
    print()
    print(title)
    print("-" * len(title))


def machine_note() -> str:
    load = os.getloadavg()
    cpus = os.cpu_count()
    with db.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg = cursor.fetchone()[0]
    return f"{cpus} CPU(s), load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; PostgreSQL {pg}; db {DB_NAME}"


# --- data -----------------------------------------------------------------------------------

BENCH_WORKSPACE = "Bench workspace"


def workspace_get() -> Workspace:
    workspace = Workspace.objects.filter(name=BENCH_WORKSPACE).first()
    return workspace or Workspace.objects.create(name=BENCH_WORKSPACE)


def tables_reset() -> None:
    """Empty the tables the benchmarks fill (connections cascade to metrics and runs)."""
    with db.cursor() as cursor:
        cursor.execute("TRUNCATE connections, daily_metrics, sync_runs RESTART IDENTITY CASCADE")


def vacuum_analyze(*tables: str) -> None:
    """Fresh statistics and visibility map, as autovacuum would leave a steady-state table."""
    with db.cursor() as cursor:
        for table in tables:
            cursor.execute(f"VACUUM ANALYZE {table}")


def model_copy(model, rows: Iterable[dict]) -> int:
    """COPY rows into a model's table: 100k connections in about two seconds.

    Each dict maps attnames (`workspace_id`, `next_sync_at`...) to values psycopg can write as
    they are (a JSON field's value as a JSON string). Every other column gets the model's
    default, so a column added by a later migration needs no change here: per row for UUID
    defaults (uuid4), once for the rest (prepared as the ORM would, e.g. an empty encrypted
    dict is stored as ""); `auto_now_add` columns get the current time.
    """
    now = timezone.now()
    fields = [field for field in model._meta.concrete_fields if not field.primary_key]
    per_row: dict[str, Callable[[], object]] = {}
    constant: dict[str, object] = {}
    required: set[str] = set()
    for field in fields:
        if getattr(field, "auto_now_add", False) or getattr(field, "auto_now", False):
            constant[field.attname] = now
        elif field.has_default() and callable(field.default) and field.get_internal_type() == "UUIDField":
            per_row[field.attname] = field.default
        elif field.has_default():
            constant[field.attname] = field.get_db_prep_save(field.get_default(), db)
        elif field.null:
            constant[field.attname] = None
        else:
            required.add(field.attname)
    columns = ", ".join(f'"{field.column}"' for field in fields)
    count = 0
    db.ensure_connection()
    with db.cursor() as cursor, cursor.copy(f'COPY "{model._meta.db_table}" ({columns}) FROM STDIN') as copy:
        for row in rows:
            if count == 0 and required - row.keys():
                raise ValueError(f"{model.__name__} rows need {sorted(required - row.keys())}")
            values = []
            for field in fields:
                name = field.attname
                if name in row:
                    values.append(row[name])
                elif name in constant:
                    values.append(constant[name])
                else:
                    values.append(per_row[name]())
            copy.write_row(values)
            count += 1
    return count


def connections_copy(rows: Iterable[dict]) -> int:
    """Demo connections by COPY. Credentials stay empty (the demo provider needs none), so
    nothing is encrypted row by row."""

    def filled():
        for row in rows:
            row.setdefault("provider", "demo")
            row.setdefault("name", f"Bench account {row['external_account_id']}")
            yield row

    return model_copy(Connection, filled())


# A realistic mix of schedules for a large installation (manual ones are never due).
FREQUENCY_MIX = (
    (SyncFrequency.MANUAL, 0.15),
    (SyncFrequency.REALTIME, 0.05),
    (SyncFrequency.EVERY_30_MIN, 0.20),
    (SyncFrequency.HOURLY, 0.30),
    (SyncFrequency.DAILY, 0.30),
)


def connections_create_scheduled(*, total: int, due: int, now: datetime, busy: int = 0, prefix: str = "acct") -> int:
    """`total` connections of which exactly `due` are due at `now` (their last attempt was one
    interval or more ago) and `busy` are queued or syncing; the rest are scheduled in the
    future or manual. Deterministic: connection i always gets the same schedule.
    """
    workspace_id = workspace_get().pk
    scheduled = [frequency for frequency, _ in FREQUENCY_MIX if frequency != SyncFrequency.MANUAL]
    cumulative: list[tuple[float, str]] = []
    acc = 0.0
    for frequency, share in FREQUENCY_MIX:
        acc += share
        cumulative.append((acc, frequency))

    def frequency_of(i: int) -> str:
        # A cheap deterministic spread in [0, 1).
        unit = (i * 2654435761 % 2**32) / 2**32
        return next(freq for edge, freq in cumulative if unit < edge)

    def rows():
        for i in range(total):
            row: dict = {"workspace_id": workspace_id, "external_account_id": f"{prefix}-{i:07d}"}
            if i < due:
                frequency = scheduled[i % len(scheduled)]
                interval = SYNC_INTERVALS[frequency]
                # Due a little while ago, oldest first, so the claim's ORDER BY has work to do.
                last = now - interval - timedelta(seconds=1 + (i % 25))
                row.update(
                    sync_frequency=frequency,
                    last_sync_attempted_at=last,
                    last_sync_completed_at=last + timedelta(seconds=2),
                    next_sync_at=last + interval,
                    total_syncs_attempted=10,
                )
            elif i < due + busy:
                frequency = scheduled[i % len(scheduled)]
                interval = SYNC_INTERVALS[frequency]
                status = "queued" if i % 2 else "syncing"
                row.update(
                    sync_frequency=frequency,
                    sync_status=status,
                    job_id=uuid.uuid4(),
                    queued_at=now - timedelta(seconds=1),
                    queued_trigger="scheduled",
                    last_sync_attempted_at=now - timedelta(seconds=1) if status == "syncing" else now - interval,
                    next_sync_at=now + interval,
                    total_syncs_attempted=10,
                )
            else:
                frequency = frequency_of(i)
                interval = SYNC_INTERVALS[frequency]
                if interval is not None:
                    # Attempted recently: due again between 5 s and one interval from now.
                    fraction = ((i * 40503) % 1000 + 1) / 1000
                    next_at = now + timedelta(seconds=5) + (interval - timedelta(seconds=5)) * fraction
                    last = next_at - interval
                    row.update(
                        sync_frequency=frequency,
                        last_sync_attempted_at=last,
                        last_sync_completed_at=last + timedelta(seconds=2),
                        next_sync_at=next_at,
                        total_syncs_attempted=10,
                    )
            yield row

    return connections_copy(rows())


def redis_client():
    import redis

    return redis.Redis.from_url(BENCH_REDIS_URL)


def redis_queues_purge() -> int:
    """Drop the Celery queues in the bench Redis db (only there)."""
    client = redis_client()
    assert str(client.connection_pool.connection_kwargs.get("db", 0)) == REDIS_DB
    removed = 0
    # Realtime and Sync Now jobs go to sync_jobs, the other scheduled ones to sync_bulk.
    for key in ("sync_jobs", "sync_bulk", "dispatch"):
        removed += client.llen(key)
        client.delete(key)
    return removed


def out(line: str = "") -> None:
    print(line, flush=True)


__all__ = [
    "BENCH_ENV",
    "DB_NAME",
    "ROOT",
    "Connection",
    "connections_copy",
    "connections_create_scheduled",
    "db",
    "heading",
    "machine_note",
    "measure",
    "median",
    "ms",
    "out",
    "redis_client",
    "redis_queues_purge",
    "spread",
    "tables_reset",
    "timed",
    "vacuum_analyze",
    "verdict",
    "workspace_get",
]
