"""Realtime soak: N realtime demo connections, a real Celery worker and beat, for D seconds.

    .venv/bin/python bench/soak.py [--connections 1000] [--seconds 300] [--concurrency 2]

Starts, as production runs them (in their own process groups, stopped on exit or Ctrl-C):
    celery -A adsync worker -Q sync_jobs --concurrency 2
    celery -A adsync worker -Q dispatch --concurrency 1   (the dispatcher's own process)
    celery -A adsync beat -S django        (fires the dispatcher every SYNC_DISPATCH_INTERVAL)
on the bench database and Redis db (see _setup.py), creates N realtime demo connections whose
first slots are spread over one 30 s interval (as connections switched to realtime at
different moments are), lets it run for D seconds, then reads the SyncRun rows.

Reports per connection the interval between consecutive attempts (started_at): p50, p95, max;
missed slots (30 s slots after a connection's first attempt with no attempt within +-15 s of
the slot, and intervals over 45 s); how late attempts start after their slot; totals, the share
of syncs that changed metrics, the sync_jobs backlog, and every error the worker and beat
logged. Targets: p95 <= 31 s, max <= 32 s, no missed slot. Talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _setup
from _setup import heading, out, verdict
from django.conf import settings
from django.utils import timezone

from syncing.models import SyncOutcome, SyncRun

INTERVAL = 30.0  # realtime
TARGET_P95 = 31.0
TARGET_MAX = 32.0
MISSED_GAP = 45.0

ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback|WorkerLostError|\bWARNING\b")


# --- subprocesses ---------------------------------------------------------------------------


class Processes:
    """Child processes, each the leader of its own process group, stopped whatever happens."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.children: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, args: list[str], env: dict) -> Path:
        log = self.workdir / f"{name}.log"
        handle = log.open("wb")
        proc = subprocess.Popen(
            args,
            cwd=self.workdir,  # beat and celery write nothing into the source tree
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        self.children.append((name, proc, log))
        return log

    def stop(self, name: str, *, timeout: float = 20.0) -> None:
        for child_name, proc, _ in self.children:
            if child_name == name:
                _stop_group(proc, timeout)

    def stop_all(self) -> None:
        for _, proc, _ in reversed(self.children):
            _stop_group(proc, 20.0)

    def dead(self) -> list[str]:
        return [name for name, proc, _ in self.children if proc.poll() is not None]


def _stop_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the child's process group (warm shutdown), SIGKILL it if it lingers."""
    if proc.poll() is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stray pool children of a dead leader
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def wait_for_line(log: Path, pattern: str, *, timeout: float, processes: Processes) -> bool:
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        if log.exists() and regex.search(log.read_text(errors="replace")):
            return True
        if processes.dead():
            return False
        time.sleep(0.2)
    return False


# --- sampling while it runs -----------------------------------------------------------------


class Sampler(threading.Thread):
    """Once a second: the sync_jobs backlog and the load average."""

    def __init__(self):
        super().__init__(daemon=True)
        self.backlog: list[int] = []
        self.load: list[float] = []
        self.stopping = threading.Event()

    def run(self):
        client = _setup.redis_client()
        while not self.stopping.wait(1.0):
            with contextlib.suppress(Exception):
                self.backlog.append(int(client.llen("sync_jobs")))
            self.load.append(os.getloadavg()[0])


# --- analysis -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def analyse(*, first_slots: dict[int, datetime], started: datetime, ended: datetime) -> dict:
    half = timedelta(seconds=INTERVAL / 2)
    runs = SyncRun.objects.filter(started_at__gte=started, started_at__lte=ended)
    runs = runs.order_by("connection_id", "started_at")
    by_connection: dict[int, list[datetime]] = defaultdict(list)
    outcomes: dict[str, int] = defaultdict(int)
    windows: dict[str, int] = defaultdict(int)
    changed: dict[str, int] = defaultdict(int)
    durations: list[float] = []
    total = 0
    for connection_id, started_at, finished_at, outcome, window, rows_written in runs.values_list(
        "connection_id", "started_at", "finished_at", "outcome", "window", "rows_written"
    ):
        by_connection[connection_id].append(started_at)
        if finished_at is not None:
            durations.append((finished_at - started_at).total_seconds())
        outcomes[outcome] += 1
        windows[window] += 1
        changed[window] += rows_written > 0
        total += 1

    intervals: list[float] = []
    lateness: list[float] = []
    missed_slots = 0
    long_gaps = 0
    # Connections whose first slot (plus half an interval) fell inside the run but never ran.
    never = [pk for pk, slot in first_slots.items() if pk not in by_connection and slot + half <= ended]
    for connection_id, times in by_connection.items():
        seconds = [(t - started).total_seconds() for t in times]
        intervals += [b - a for a, b in itertools.pairwise(seconds)]
        long_gaps += sum(1 for a, b in itertools.pairwise(seconds) if b - a > MISSED_GAP)
        first_slot = (first_slots[connection_id] - started).total_seconds()
        for s in seconds:
            # How long after its slot the attempt started (slots are first_slot + 30 k).
            k = round((s - first_slot) / INTERVAL)
            lateness.append(s - (first_slot + k * INTERVAL))
        # Slots after the first attempt whose +-15 s window (wholly inside the run) saw no attempt.
        first = seconds[0]
        end = (ended - started).total_seconds()
        j = 1
        while first + j * INTERVAL + INTERVAL / 2 <= end:
            centre = first + j * INTERVAL
            if not any(centre - INTERVAL / 2 <= s < centre + INTERVAL / 2 for s in seconds):
                missed_slots += 1
            j += 1
    return {
        "attempts": total,
        "changed": changed,
        "outcomes": dict(outcomes),
        "windows": dict(windows),
        "intervals": intervals,
        "durations": durations,
        "lateness": lateness,
        "missed_slots": missed_slots,
        "long_gaps": long_gaps,
        "never": never,
        "connections_seen": len(by_connection),
    }


def log_problems(log: Path) -> list[str]:
    if not log.exists():
        return []
    return [line for line in log.read_text(errors="replace").splitlines() if ERROR_LINE.search(line)]


def tick_gaps(log: Path) -> list[float]:
    """Seconds between the dispatcher's "Dispatched N sync job(s)" log lines (ticks that sent)."""
    stamps = []
    pattern = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*Dispatched \d+ sync job")
    for line in log.read_text(errors="replace").splitlines():
        match = pattern.match(line)
        if match:
            stamps.append(datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f"))
    return [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]


# --- the soak -------------------------------------------------------------------------------


def connections_create_realtime(count: int, *, first_slot: datetime, campaigns: int) -> dict[int, datetime]:
    """`count` realtime demo connections, first slots spread evenly over one interval."""
    workspace_id = _setup.workspace_get().pk
    zones = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Tokyo", "Australia/Sydney"]
    rows = []
    for i in range(count):
        rows.append(
            {
                "workspace_id": workspace_id,
                "external_account_id": f"soak-{i:05d}",
                "name": f"Soak account {i}",
                "timezone": zones[i % len(zones)],
                "provider_options": f'{{"campaigns": {campaigns}}}',
                "sync_frequency": "realtime",
                "next_sync_at": first_slot + timedelta(seconds=INTERVAL * i / count),
            }
        )
    _setup.connections_copy(rows)
    return dict(
        _setup.Connection.objects.filter(external_account_id__startswith="soak-").values_list("pk", "next_sync_at")
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--campaigns", type=int, default=4, help="demo campaigns per account (rows per day)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the worker and beat logs")
    args = parser.parse_args(argv)
    if args.seconds < 2 * INTERVAL:
        parser.error(f"--seconds must be at least {2 * INTERVAL:g} to see two attempts per connection")

    heading(f"Realtime soak: {args.connections:,} connections for {args.seconds:.0f} s ({_setup.machine_note()})")
    out(
        f"worker --concurrency {args.concurrency} -Q sync_jobs + dispatcher -Q dispatch + beat -S django; every "
        f"{settings.SYNC_DISPATCH_INTERVAL:g} s, batch {settings.SYNC_DISPATCH_BATCH}; Redis {_setup.BENCH_REDIS_URL}"
    )
    _setup.tables_reset()
    _setup.redis_queues_purge()
    _setup.workspace_get()

    workdir = Path(tempfile.mkdtemp(prefix="adsync-soak-"))
    env = {
        **os.environ,
        **_setup.BENCH_ENV,
        "LOG_LEVEL": "INFO",
        "PYTHONPATH": str(_setup.ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    celery = [sys.executable, "-m", "celery", "-A", "adsync"]
    processes = Processes(workdir)

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_signal)
    sampler = Sampler()
    try:
        worker_args = ["worker", "-Q", "sync_jobs", "--concurrency", str(args.concurrency)]
        worker_args += ["--loglevel", "INFO", "-n", "bench-soak@%h"]
        worker_log = processes.start("worker", [*celery, *worker_args], env)
        dispatcher_args = ["worker", "-Q", "dispatch", "--concurrency", "1", "--loglevel", "INFO"]
        dispatcher_args += ["-n", "bench-dispatch@%h"]
        dispatcher_log = processes.start("dispatcher", [*celery, *dispatcher_args], env)
        for log in (worker_log, dispatcher_log):
            if not wait_for_line(log, r"ready\.", timeout=60, processes=processes):
                raise SystemExit(f"a worker did not start; see {log}")
        beat_log = processes.start("beat", [*celery, "beat", "-S", "django", "--loglevel", "INFO"], env)
        if not wait_for_line(beat_log, r"beat: Starting|Scheduler: Sending|LocalTime", timeout=60, processes=processes):
            raise SystemExit(f"beat did not start; see {beat_log}")
        time.sleep(2)  # beat's first ticks

        started = timezone.now()
        first_slots = connections_create_realtime(
            args.connections, first_slot=started + timedelta(seconds=1), campaigns=args.campaigns
        )
        out(f"started at {started:%H:%M:%S}; logs in {workdir}")
        sampler.start()
        deadline = time.monotonic() + args.seconds
        next_report = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            if processes.dead():
                raise SystemExit(f"{', '.join(processes.dead())} exited early; see the logs in {workdir}")
            if time.monotonic() >= next_report:
                next_report += 30
                done = SyncRun.objects.filter(started_at__gte=started).count()
                backlog = sampler.backlog[-1] if sampler.backlog else 0
                out(f"  {timezone.now():%H:%M:%S}  {done:,} attempts so far, sync_jobs backlog {backlog}")
        ended = timezone.now()
        processes.stop("beat")
        time.sleep(2)  # let running jobs finish; their started_at is before `ended` or ignored
    finally:
        sampler.stopping.set()
        processes.stop_all()
        signal.signal(signal.SIGTERM, previous)
        left = _setup.redis_queues_purge()

    result = analyse(first_slots=first_slots, started=started, ended=ended)
    worker_problems = log_problems(worker_log) + log_problems(dispatcher_log)
    beat_problems = log_problems(beat_log)
    gaps = tick_gaps(dispatcher_log)
    intervals, lateness = result["intervals"], result["lateness"]
    p50, p95 = percentile(intervals, 0.5), percentile(intervals, 0.95)
    worst = max(intervals) if intervals else float("nan")
    errors = sum(n for outcome, n in result["outcomes"].items() if outcome != SyncOutcome.SUCCESS)

    out()
    out(
        f"attempts: {result['attempts']:,} by {result['connections_seen']:,} of {args.connections:,} connections "
        f"({result['attempts'] / (ended - started).total_seconds():.1f}/s); "
        f"expected ~{args.connections * args.seconds / INTERVAL:,.0f}"
    )
    out(f"outcomes: {result['outcomes']}; windows: {result['windows']}")
    changed, windows = result["changed"], result["windows"]
    all_changed = sum(changed.values())
    out(
        f"with metric changes: {all_changed:,} ({all_changed / max(1, result['attempts']):.0%}); of the recent-days "
        f"syncs {changed.get('recent', 0):,} ({changed.get('recent', 0) / max(1, windows.get('recent', 0)):.0%}), "
        f"the first (lookback) syncs always insert; never attempted: {len(result['never'])}"
    )
    out(
        f"interval between attempts (s): p50 {p50:.2f}  p95 {p95:.2f}  p99 {percentile(intervals, 0.99):.2f}  "
        f"max {worst:.2f}  min {min(intervals) if intervals else float('nan'):.2f}  (n={len(intervals):,})"
    )
    out(
        f"start after slot (s): p50 {percentile(lateness, 0.5):.2f}  p95 {percentile(lateness, 0.95):.2f}  "
        f"max {max(lateness) if lateness else float('nan'):.2f}"
    )
    durations = result["durations"]
    if durations:
        out(
            f"sync run (start -> finish, in the worker): p50 {percentile(durations, 0.5) * 1000:.1f} ms, "
            f"p95 {percentile(durations, 0.95) * 1000:.1f} ms, max {max(durations) * 1000:.1f} ms"
        )
    if gaps:
        out(
            f"dispatcher ticks that sent: {len(gaps) + 1}; gap p50 {percentile(gaps, 0.5):.2f} s, "
            f"p95 {percentile(gaps, 0.95):.2f} s, max {max(gaps):.2f} s"
        )
    if sampler.backlog:
        out(
            f"sync_jobs backlog: max {max(sampler.backlog)}, mean {sum(sampler.backlog) / len(sampler.backlog):.1f}; "
            f"load average max {max(sampler.load):.2f}; {left} message(s) left at the end"
        )
    out(f"worker log problems: {len(worker_problems)}; beat log problems: {len(beat_problems)}")
    for line in (worker_problems + beat_problems)[:10]:
        out(f"    {line[:200]}")
    out()
    out(f"{verdict(p95 <= TARGET_P95)}  p95 interval {p95:.2f} s (target <= {TARGET_P95:g} s)")
    out(f"{verdict(worst <= TARGET_MAX)}  max interval {worst:.2f} s (target <= {TARGET_MAX:g} s)")
    missed_ok = result["missed_slots"] == 0 and result["long_gaps"] == 0 and not result["never"]
    out(
        f"{verdict(missed_ok)}  missed slots {result['missed_slots']}, intervals > {MISSED_GAP:g} s "
        f"{result['long_gaps']}, connections never synced {len(result['never'])} (target: none)"
    )
    no_errors = errors == 0 and not worker_problems and not beat_problems
    out(f"{verdict(no_errors)}  sync errors {errors}, worker/beat log problems {len(worker_problems + beat_problems)}")
    if not args.keep_logs and no_errors:
        for log in workdir.iterdir():
            log.unlink()
        workdir.rmdir()
    else:
        out(f"logs kept in {workdir}")
    return {
        "p50": p50,
        "p95": p95,
        "max": worst,
        "missed": result["missed_slots"],
        "attempts": result["attempts"],
        "ok": p95 <= TARGET_P95 and worst <= TARGET_MAX and missed_ok and no_errors,
    }


if __name__ == "__main__":
    main()
