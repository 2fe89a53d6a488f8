"""API latency under load: Sync Now and sync-status against a trivial endpoint, on gunicorn.

    .venv/bin/python bench/api.py [--rate 200] [--seconds 30] [--workers 2] [--threads 1]

Starts `gunicorn adsync.wsgi -w 2` (two sync workers, as the Dockerfile runs it, without the
access log) on 127.0.0.1 in its own process group, on a database and Redis db of its own, and
sends it, from this process, a constant 200 requests/s for 30 s (after a 5 s warm-up) in equal
thirds, interleaved:

    POST /connections/{id}/sync-now     each time on another idle connection, so every request
                                        claims a job and publishes it to Redis (single-flight
                                        would otherwise answer with the existing job, cheaply)
    GET  /connections/{id}/sync-status  spread over the connections
    GET  /api/ping                      the trivial endpoint: same authentication, no query

all with `Authorization: Token <key>`. Reports p50 and p99 of each, measured from the moment a
request was due to be sent to the end of its response. Target: p99 of each of the two spec
endpoints <= 2x the trivial endpoint's p99, in a run where the server kept up (otherwise every
endpoint only shows the backlog). Also reports CPU time per process group, and what everything
else on the machine used meanwhile, since latency at a fixed rate depends on it. No worker runs:
the jobs stay queued, and the queue is emptied afterwards.

The load is open-loop (requests leave on schedule whether or not earlier ones have answered),
written here on asyncio with one connection per request (gunicorn's sync workers close each
connection anyway). wrk keeps a fixed number of connections busy instead, so a slow response
delays the requests behind it and hides the wait (coordinated omission); wrk2's constant-rate
mode is not packaged in Debian, and locust would be a dependency for 60 lines of code.

Database: API_BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/adsync_apibench,
created and migrated if missing, its connections tables emptied on every run). Redis:
API_BENCH_REDIS_URL (default redis://127.0.0.1:6379/11). DATABASE_URL and REDIS_URL are ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ["BENCH_DATABASE_URL"] = os.environ.get(
    "API_BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/adsync_apibench"
)
os.environ["BENCH_REDIS_URL"] = os.environ.get("API_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _setup
from _setup import heading, out, verdict
from django.contrib.auth import get_user_model

from connections.models import Connection
from connections.services import api_token_issue, workspace_add_member

TARGET_RATIO = 2.0
SATURATED_MEDIAN = 0.1  # seconds; see "kept up" in main()
HOST = "127.0.0.1"
PING, SYNC_NOW, SYNC_STATUS = "GET /api/ping", "POST sync-now", "GET sync-status"
ENDPOINTS = (PING, SYNC_NOW, SYNC_STATUS)
EXPECTED_STATUS = {PING: 200, SYNC_NOW: 202, SYNC_STATUS: 200}


@dataclasses.dataclass(frozen=True)
class Sample:
    endpoint: str
    status: int
    latency: float  # from when the request was due to the end of its response
    late: float  # how late the generator sent it
    body: bytes


# --- data and server ------------------------------------------------------------------------


def dataset_load(*, connections: int) -> tuple[str, list[str]]:
    """An API key and `connections` idle manual connections in the key owner's workspace."""
    _setup.tables_reset()
    workspace = _setup.workspace_get()
    user, _ = get_user_model().objects.get_or_create(username="apibench")
    workspace_add_member(workspace=workspace, user=user)
    _setup.connections_copy(
        {"workspace_id": workspace.pk, "external_account_id": f"api-{i:06d}"} for i in range(connections)
    )
    _setup.vacuum_analyze("connections")
    _, key = api_token_issue(user=user, name="bench/api.py")
    ids = [str(public_id) for public_id in Connection.objects.order_by("pk").values_list("public_id", flat=True)]
    return key, ids


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Gunicorn:
    """gunicorn adsync.wsgi in its own process group, logging to a file; stopped whatever happens."""

    def __init__(self, *, workers: int, threads: int, log: Path):
        self.port = free_port()
        self.log = log
        args = [sys.executable, "-m", "gunicorn", "adsync.wsgi", "-w", str(workers), "-b", f"{HOST}:{self.port}"]
        if threads > 1:
            args += ["--threads", str(threads)]
        with log.open("wb") as handle:
            self.process = subprocess.Popen(
                [*args, "--log-level", "warning"],
                cwd=_setup.ROOT,
                env={**os.environ, **_setup.BENCH_ENV},
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.command = " ".join(["gunicorn", *args[3:]])

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"bench: gunicorn exited early:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"bench: gunicorn not ready after {timeout:.0f} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


# --- load -----------------------------------------------------------------------------------


def requests_plan(*, count: int, start: int, ids: list[str]) -> list[tuple[str, str, str]]:
    """(endpoint, method, path) for requests start..start+count-1: the three kinds interleaved,
    Sync Now on a connection of its own each time, sync-status spread over the connections."""
    plan = []
    for i in range(start, start + count):
        endpoint = ENDPOINTS[i % 3]
        if endpoint == PING:
            plan.append((endpoint, "GET", "/api/ping"))
        elif endpoint == SYNC_NOW:
            plan.append((endpoint, "POST", f"/connections/{ids[i // 3]}/sync-now"))
        else:
            plan.append((endpoint, "GET", f"/connections/{ids[(i * 7919) % len(ids)]}/sync-status"))
    return plan


async def request(port: int, key: str, endpoint: str, method: str, path: str, due: float) -> Sample:
    loop = asyncio.get_running_loop()
    late = loop.time() - due
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Token {key}\r\n"
        "Accept: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(head.encode())
        await writer.drain()
        response = await reader.read()  # to EOF: the server closes after each response
        writer.close()
        status = int(response[9:12])
    except (OSError, ValueError):
        response, status = b"", 0
    return Sample(endpoint, status, loop.time() - due, late, response.partition(b"\r\n\r\n")[2])


async def load(*, port: int, key: str, plan: list[tuple[str, str, str]], rate: float) -> list[Sample]:
    """Send the plan at `rate` requests/s on schedule (open loop) and wait for every answer."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    tasks = []
    for index, (endpoint, method, path) in enumerate(plan):
        due = start + index / rate
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        tasks.append(asyncio.create_task(request(port, key, endpoint, method, path, due)))
    return await asyncio.gather(*tasks)


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q % of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)]


# --- CPU accounting -------------------------------------------------------------------------
# Latency at a fixed rate depends on what else the two cores do, so the run also reports CPU
# time: per request for gunicorn and PostgreSQL, and what everything else on the machine took.

TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by these processes; gone ones count 0."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def machine_cpu() -> float:
    """CPU seconds all cores spent busy so far (not idle, not waiting for I/O)."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / TICK


def gunicorn_pids(master: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == master:
                    children.append(int(entry.name))
            except OSError:
                continue
    return [master, *children]


def postgres_pids() -> list[int]:
    """The server processes of the other sessions on the bench database (gunicorn's)."""
    with _setup.db.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return [row[0] for row in cursor.fetchall()]


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second, all endpoints together")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured duration")
    parser.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds at the same rate first")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker (>1: gthread workers)")
    parser.add_argument("--keep-log", action="store_true", help="keep gunicorn's log file")
    args = parser.parse_args(argv)

    warmup = round(args.warmup * args.rate)
    measured = round(args.seconds * args.rate)
    heading(f"API latency under load: {args.rate:.0f} requests/s for {args.seconds:.0f} s on gunicorn")
    out(_setup.machine_note() + f"; Redis db {_setup.REDIS_DB}")
    key, ids = dataset_load(connections=(warmup + measured) // 3 + 100)
    _setup.redis_queues_purge()
    workdir = Path(tempfile.mkdtemp(prefix="adsync-apibench-"))
    server = Gunicorn(workers=args.workers, threads=args.threads, log=workdir / "gunicorn.log")
    try:
        server.wait_ready()
        out(f"{server.command}; {len(ids):,} connections; warm-up {args.warmup:.0f} s")
        warm = asyncio.run(
            load(port=server.port, key=key, plan=requests_plan(count=warmup, start=0, ids=ids), rate=args.rate)
        )
        web, database = gunicorn_pids(server.process.pid), postgres_pids()
        cpu_before = (process_cpu(web), process_cpu(database), time.process_time(), machine_cpu())
        began = time.monotonic()
        samples = asyncio.run(
            load(port=server.port, key=key, plan=requests_plan(count=measured, start=warmup, ids=ids), rate=args.rate)
        )
        elapsed = time.monotonic() - began
        cpu_after = (process_cpu(web), process_cpu(database), time.process_time(), machine_cpu())
    finally:
        server.stop()
    log_text = server.log.read_text(errors="replace")
    queued = _setup.redis_client().llen("sync_jobs")
    _setup.redis_queues_purge()

    out(f"answered {len(samples):,} in {elapsed:.1f} s ({len(samples) / elapsed:.0f}/s)")
    out(f"{'endpoint':<18}{'count':>7}{'p50':>12}{'p99':>12}{'max':>12}  unexpected")
    p50, p99 = {}, {}
    unexpected = 0
    for endpoint in ENDPOINTS:
        mine = [sample for sample in samples if sample.endpoint == endpoint]
        latencies = [sample.latency for sample in mine]
        bad = [sample for sample in mine if sample.status != EXPECTED_STATUS[endpoint]]
        if endpoint == SYNC_NOW:
            # Every Sync Now must have claimed a new job (and so published a message).
            bad += [s for s in mine if s.status == 202 and json.loads(s.body).get("created") is not True]
        unexpected += len(bad)
        p50[endpoint], p99[endpoint] = percentile(latencies, 50), percentile(latencies, 99)
        statuses = sorted({sample.status for sample in bad})
        out(
            f"{endpoint:<18}{len(mine):>7}{_setup.ms(p50[endpoint]):>12}{_setup.ms(p99[endpoint]):>12}"
            f"{_setup.ms(max(latencies)):>12}  {len(bad)}{f' (status {statuses})' if bad else ''}"
        )
    # A stall or a growing backlog shows here; a steady server keeps these alike.
    window = max(1, round(5 * args.rate))
    windows = [samples[i : i + window] for i in range(0, len(samples), window)]
    out("p99 per 5 s, all endpoints: " + ", ".join(_setup.ms(percentile([s.latency for s in w], 99)) for w in windows))
    used = [after - before for before, after in zip(cpu_before, cpu_after, strict=True)]
    web_cpu, db_cpu, generator_cpu, all_cpu = used
    others_cpu = max(0.0, all_cpu - web_cpu - db_cpu - generator_cpu)
    out(
        f"CPU (cores busy on average): gunicorn {web_cpu / elapsed:.2f}, PostgreSQL {db_cpu / elapsed:.2f}, "
        f"this load generator {generator_cpu / elapsed:.2f}, everything else (Redis too) {others_cpu / elapsed:.2f} "
        f"(of {os.cpu_count()}); per request: gunicorn {_setup.ms(web_cpu / len(samples))}, "
        f"PostgreSQL {_setup.ms(db_cpu / len(samples))}"
    )
    late = [sample.late for sample in samples]
    out(f"generator: sent p99 {_setup.ms(percentile(late, 99))} after due, max {_setup.ms(max(late))}")
    sync_now_sent = sum(1 for sample in [*warm, *samples] if sample.endpoint == SYNC_NOW)
    out(f"sync_jobs messages in Redis afterwards: {queued:,} (Sync Now requests: {sync_now_sent:,}; purged)")
    errors = [line for line in log_text.splitlines() if "Traceback" in line or "ERROR" in line]
    if errors:
        out(f"gunicorn logged {len(errors)} error line(s), first: {errors[0]}")

    # Open loop: a server slower than the offered rate falls further behind every second, and
    # then every endpoint just shows the backlog (all p99s alike), which says nothing. Served
    # without a backlog, half the requests take a few milliseconds, not 100 or more.
    median_all = percentile([sample.latency for sample in samples], 50)
    kept_up = len(samples) / elapsed >= 0.95 * args.rate and median_all < SATURATED_MEDIAN
    out(
        f"{verdict(kept_up)}  the server kept up with {args.rate:.0f} requests/s "
        f"(answered {len(samples) / elapsed:.0f}/s, median {_setup.ms(median_all)}; "
        f"needs >= 95 % of the rate and a median under {_setup.ms(SATURATED_MEDIAN)})"
    )
    ok = kept_up
    for endpoint in (SYNC_NOW, SYNC_STATUS):
        ratio = p99[endpoint] / p99[PING]
        passed = kept_up and ratio <= TARGET_RATIO
        ok &= passed
        out(
            f"{verdict(passed)}  p99 {endpoint} {_setup.ms(p99[endpoint])} = {ratio:.2f}x "
            f"the trivial endpoint's {_setup.ms(p99[PING])} (target <= {TARGET_RATIO:.0f}x; "
            f"p50 {p50[endpoint] / p50[PING]:.2f}x)"
        )
    clean = unexpected == 0 and queued == sync_now_sent and not errors
    ok &= clean
    out(f"{verdict(clean)}  every response as expected and every Sync Now published once")
    loadavg = os.getloadavg()
    out(f"load average afterwards {loadavg[0]:.2f} {loadavg[1]:.2f} {loadavg[2]:.2f}")
    if args.keep_log:
        out(f"gunicorn log: {server.log}")
    else:
        server.log.unlink(missing_ok=True)
        workdir.rmdir()
    return {"ok": ok, "p99": p99}


if __name__ == "__main__":
    main()
    sys.exit(0)
