"""Embedded soak: the embedded mode (SQLite + adsync.broker's filesystem broker) under a flood.

    .venv/bin/python bench/embedded_soak.py [--minutes 60] [--connections 20] [--flood-rate 20]

Runs the embedded mode in a fresh temporary ADSYNC_DATA_DIR, with DATABASE_URL and REDIS_URL
unset: `migrate` and `seed_demo` as `make run` does, then, each in its own process group and
stopped on exit or Ctrl-C, the processes `make run` starts (the web server is not needed):
    celery -A adsync worker -Q sync_jobs --concurrency 2 --hostname sync@%h
    celery -A adsync worker -Q dispatch --concurrency 1 --hostname dispatch@%h
    celery -A adsync beat --scheduler django
Once they are up it adds N realtime demo connections (provider option latency_ms, first slots
spread over one 30 s interval) and, from a thread of its own, floods both queues with no-op
tasks (Celery's built-in `celery.accumulate`) so that the consumers always poll a busy folder:
every message written is another chance for kombu issue 1551 (a consumer reading a message
file before its producer has written it, which kills the worker with JSONDecodeError).

Reports worker crashes (a process that exits, "Unrecoverable error" or "JSONDecodeError" in a
log), unreadable messages the transport set aside, and, from the SyncRun rows of the N
connections as bench/soak.py measures them: the interval between consecutive attempts (p50,
p95, max) and missed slots (30 s slots after a connection's first attempt with no attempt
within +-15 s, intervals over 45 s, connections never attempted). Targets: 0 worker crashes
and 0 missed slots. `--stock-kombu` runs the same on kombu's own filesystem transport, for
comparison. Needs no PostgreSQL or Redis; not part of run_all.py.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _processes import Processes, percentile, wait_for_line  # noqa: E402 - after the path is set

INTERVAL = 30.0  # realtime
MISSED_GAP = 45.0  # bench/soak.py's long gap
LATE_GAP = 35.0  # reported: intervals a user would notice
CRASH_LINE = re.compile(r"Unrecoverable error|JSONDecodeError")
SET_ASIDE_LINE = re.compile(r"Skipped unreadable broker message")
PROBLEM_LINE = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback")
# Imported by every child before anything else when --stock-kombu: the scheme in
# CELERY_BROKER_URL then names kombu's own transport (adsync.broker only registers it if unset).
STOCK_SITECUSTOMIZE = (
    "from kombu.transport import TRANSPORT_ALIASES\n"
    "TRANSPORT_ALIASES['adsync-filesystem'] = 'kombu.transport.filesystem:Transport'\n"
)


def out(line: str = "") -> None:
    print(line, flush=True)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# --- load and sampling ---------------------------------------------------------------------------


class Flood(threading.Thread):
    """Sends no-op tasks to both queues at `rate` messages/s (round robin), until stopped."""

    def __init__(self, rate: float):
        super().__init__(daemon=True)
        self.rate = rate
        self.sent: dict[str, int] = defaultdict(int)
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self):
        from adsync.celery import app

        queues = itertools.cycle(["sync_jobs", "dispatch"])
        start = time.monotonic()
        n = 0
        while not self.stopping.is_set():
            # Open loop: message n leaves at start + n / rate, however long the sends take.
            delay = start + n / self.rate - time.monotonic()
            if delay > 0 and self.stopping.wait(delay):
                break
            queue = next(queues)
            try:
                app.send_task("celery.accumulate", args=[n], queue=queue)
                self.sent[queue] += 1
            except Exception as exc:  # reported, and the flood goes on
                self.errors.append(f"{type(exc).__name__}: {exc}")
            n += 1


class Sampler(threading.Thread):
    """Once a second: the messages waiting in each queue (files in the queue folder)."""

    def __init__(self, folder: Path):
        super().__init__(daemon=True)
        self.folder = folder
        self.backlog: dict[str, list[int]] = defaultdict(list)
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.wait(1.0):
            counts: dict[str, int] = defaultdict(int)
            with contextlib.suppress(OSError):
                for name in os.listdir(self.folder):
                    counts[name.partition(".")[2]] += 1
            for queue in ("sync_jobs", "dispatch"):
                self.backlog[queue].append(counts[f"{queue}.msg"])


# --- analysis (bench/soak.py's definitions) ------------------------------------------------------


def analyse(*, first_slots: dict[int, datetime], started: datetime, ended: datetime) -> dict:
    from syncing.models import SyncRun

    half = timedelta(seconds=INTERVAL / 2)
    runs = SyncRun.objects.filter(connection_id__in=first_slots, started_at__gte=started, started_at__lte=ended)
    by_connection: dict[int, list[datetime]] = defaultdict(list)
    outcomes: dict[str, int] = defaultdict(int)
    for connection_id, started_at, outcome in runs.order_by("connection_id", "started_at").values_list(
        "connection_id", "started_at", "outcome"
    ):
        by_connection[connection_id].append(started_at)
        outcomes[outcome] += 1
    end = (ended - started).total_seconds()
    intervals: list[float] = []
    missed_slots = long_gaps = 0
    never = [pk for pk, slot in first_slots.items() if pk not in by_connection and slot + half <= ended]
    for times in by_connection.values():
        seconds = [(t - started).total_seconds() for t in times]
        pairs = list(itertools.pairwise(seconds))
        intervals += [b - a for a, b in pairs]
        long_gaps += sum(1 for a, b in pairs if b - a > MISSED_GAP)
        # Slots after the first attempt whose +-15 s window (wholly inside the run) saw no attempt.
        j = 1
        while seconds[0] + j * INTERVAL + INTERVAL / 2 <= end:
            centre = seconds[0] + j * INTERVAL
            missed_slots += not any(centre - INTERVAL / 2 <= s < centre + INTERVAL / 2 for s in seconds)
            j += 1
    return {
        "attempts": sum(outcomes.values()),
        "outcomes": dict(outcomes),
        "intervals": intervals,
        "missed_slots": missed_slots,
        "long_gaps": long_gaps,
        "never": never,
    }


def log_lines(log: Path, pattern: re.Pattern) -> list[str]:
    if not log.exists():
        return []
    return [line for line in log.read_text(errors="replace").splitlines() if pattern.search(line)]


# --- the soak ------------------------------------------------------------------------------------


def embedded_environment(data_dir: Path, *, stock_kombu: bool, workdir: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        ADSYNC_DATA_DIR=str(data_dir),
        DJANGO_SETTINGS_MODULE="adsync.settings",
        LOG_LEVEL="INFO",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    if stock_kombu:
        site = workdir / "stock-kombu"
        site.mkdir()
        (site / "sitecustomize.py").write_text(STOCK_SITECUSTOMIZE)
        env["PYTHONPATH"] = f"{site}{os.pathsep}{ROOT}"
    return env


def connections_create(count: int, *, latency_ms: int, first_slot: datetime) -> dict[int, datetime]:
    """`count` realtime demo connections in the demo workspace, first slots spread over 30 s."""
    from django.db import transaction

    from connections.models import Connection, Provider, SyncFrequency, Workspace
    from connections.services import connection_create
    from syncing.management.commands.seed_demo import DEMO_WORKSPACE

    workspace = Workspace.objects.get(name=DEMO_WORKSPACE)
    slots = {}
    # One transaction: the dispatcher, already running, sees the connections with their slots.
    with transaction.atomic():
        for i in range(count):
            connection = connection_create(
                workspace=workspace,
                provider=Provider.DEMO,
                external_account_id=f"embedded-soak-{i:04d}",
                name=f"Embedded soak {i}",
                sync_frequency=SyncFrequency.REALTIME,
                provider_options={"latency_ms": latency_ms},
            )
            slot = first_slot + timedelta(seconds=INTERVAL * i / count)
            Connection.objects.filter(pk=connection.pk).update(next_sync_at=slot)
            slots[connection.pk] = slot
    return slots


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="how long to measure (fractions allowed)")
    parser.add_argument("--connections", type=int, default=20, help="realtime demo connections added")
    parser.add_argument("--latency-ms", type=int, default=300, help="the demo provider's latency per call")
    parser.add_argument("--flood-rate", type=float, default=20.0, help="no-op messages/s, over both queues")
    parser.add_argument("--stock-kombu", action="store_true", help="kombu's own filesystem transport instead")
    parser.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    args = parser.parse_args(argv)
    if args.minutes * 60 < 2 * INTERVAL:
        parser.error(f"--minutes must be at least {2 * INTERVAL / 60:g} to see two attempts per connection")

    workdir = Path(tempfile.mkdtemp(prefix="adsync-embedded-soak-"))
    data_dir = workdir / "data"
    env = embedded_environment(data_dir, stock_kombu=args.stock_kombu, workdir=workdir)
    if args.stock_kombu:
        from kombu.transport import TRANSPORT_ALIASES

        TRANSPORT_ALIASES["adsync-filesystem"] = "kombu.transport.filesystem:Transport"
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    os.environ.update(env)

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.utils import timezone

    from adsync.celery import app

    transport = app.connection_for_write().get_transport_cls()
    title = f"Embedded soak: {args.connections} realtime connections + {args.flood_rate:g} no-op messages/s"
    title += f" for {args.minutes:g} min"
    out()
    out(title)
    out("-" * len(title))
    out(
        f"{os.cpu_count()} CPU(s), load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"broker {settings.CELERY_BROKER_URL} -> {transport.__module__}.{transport.__name__}, "
        f"polling {settings.CELERY_BROKER_TRANSPORT_OPTIONS['polling_interval']:g} s; data in {data_dir}"
    )
    call_command("migrate", interactive=False, verbosity=0)
    call_command("seed_demo", verbosity=0)

    celery = [sys.executable, "-m", "celery", "-A", "adsync"]
    processes = Processes(workdir)
    flood = Flood(args.flood_rate)
    sampler = Sampler(Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]))
    crashed_at: dict[str, float] = {}

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        worker = ["worker", "-Q", "sync_jobs", "--concurrency", "2", "--loglevel", "INFO", "--hostname", "sync@%h"]
        dispatcher = ["worker", "-Q", "dispatch", "--concurrency", "1", "--loglevel", "INFO"]
        dispatcher += ["--hostname", "dispatch@%h"]
        worker_log = processes.start("worker", [*celery, *worker], env)
        dispatcher_log = processes.start("dispatcher", [*celery, *dispatcher], env)
        beat_log = processes.start("beat", [*celery, "beat", "--scheduler", "django", "--loglevel", "INFO"], env)
        for log in (worker_log, dispatcher_log):
            if not wait_for_line(log, r"ready\.", timeout=60, processes=processes):
                raise SystemExit(f"a worker did not start; see {log}")
        if not wait_for_line(beat_log, r"beat: Starting|LocalTime", timeout=60, processes=processes):
            raise SystemExit(f"beat did not start; see {beat_log}")

        started = timezone.now()
        first_slots = connections_create(
            args.connections, latency_ms=args.latency_ms, first_slot=started + timedelta(seconds=1)
        )
        flood.start()
        sampler.start()
        out(f"started at {started:%H:%M:%S}; logs in {workdir}")
        begin = time.monotonic()
        deadline = begin + args.minutes * 60
        next_report = begin + 60
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            for name in processes.exited():
                if name not in crashed_at:
                    crashed_at[name] = time.monotonic() - begin
                    out(f"  {name} exited after {crashed_at[name]:.0f} s; carrying on to count the missed slots")
            if time.monotonic() >= next_report:
                next_report += 60
                backlog = {queue: values[-1] for queue, values in sampler.backlog.items() if values}
                out(
                    f"  {timezone.now():%H:%M:%S}  flooded {sum(flood.sent.values()):,}, "
                    f"waiting {backlog}, exited {sorted(crashed_at) or 'none'}"
                )
        ended = timezone.now()
        flood.stopping.set()
        time.sleep(2)  # the last attempts finish; their started_at is before `ended` or ignored
    finally:
        flood.stopping.set()
        sampler.stopping.set()
        exited_before_stop = processes.exited()
        processes.stop_all()
        signal.signal(signal.SIGTERM, previous)

    result = analyse(first_slots=first_slots, started=started, ended=ended)
    logs = processes.logs()
    crash_lines = {name: log_lines(log, CRASH_LINE) for name, log in logs.items()}
    set_aside = sum(len(log_lines(log, SET_ASIDE_LINE)) for log in logs.values())
    problems = {name: log_lines(log, PROBLEM_LINE) for name, log in logs.items()}
    crashes = sorted(set(exited_before_stop) | {name for name, lines in crash_lines.items() if lines})
    intervals = result["intervals"]
    p50, p95 = percentile(intervals, 0.5), percentile(intervals, 0.95)
    worst = max(intervals) if intervals else float("nan")
    seconds = (ended - started).total_seconds()

    out()
    out(
        f"messages flooded: {sum(flood.sent.values()):,} ({dict(flood.sent)}; "
        f"{sum(flood.sent.values()) / seconds:.1f}/s), send errors {len(flood.errors)}"
    )
    for queue, values in sampler.backlog.items():
        if values:
            out(f"waiting in {queue}: max {max(values)}, mean {sum(values) / len(values):.1f}")
    out(
        f"attempts: {result['attempts']:,} by {len(first_slots) - len(result['never'])} of {len(first_slots)} "
        f"connections; expected ~{len(first_slots) * seconds / INTERVAL:,.0f}; outcomes {result['outcomes']}"
    )
    out(
        f"interval between attempts (s): p50 {p50:.2f}  p95 {p95:.2f}  max {worst:.2f}  "
        f"over {LATE_GAP:g} s: {sum(1 for x in intervals if x > LATE_GAP)}  (n={len(intervals):,})"
    )
    out(f"unreadable messages set aside by the transport: {set_aside}")
    for name in logs:
        exit_note = f"exited ({exited_before_stop[name]})" if name in exited_before_stop else "ran to the end"
        out(
            f"{name}: {exit_note}; crash lines {len(crash_lines[name])}, "
            f"ERROR/CRITICAL/Traceback lines {len(problems[name])}"
        )
        for line in (crash_lines[name] or problems[name])[:3]:
            out(f"    {line[:200]}")
    out()
    out(f"{verdict(not crashes)}  worker crashes: {len(crashes)} {crashes or ''} (target 0)")
    missed_ok = result["missed_slots"] == 0 and result["long_gaps"] == 0 and not result["never"]
    out(
        f"{verdict(missed_ok)}  missed slots {result['missed_slots']}, intervals > {MISSED_GAP:g} s "
        f"{result['long_gaps']}, connections never synced {len(result['never'])} (target: none)"
    )
    if args.keep or crashes or not missed_ok:
        out(f"data and logs kept in {workdir}")
    else:
        shutil.rmtree(workdir)
    return {"crashes": crashes, "missed": result["missed_slots"], "p95": p95, "ok": not crashes and missed_ok}


if __name__ == "__main__":
    main()
