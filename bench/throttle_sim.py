"""Platform limits shared across connections: a throttle of the whole app, end to end.

    .venv/bin/python bench/throttle_sim.py                  # Meta (1,000 connections), then Google (300)
    .venv/bin/python bench/throttle_sim.py --meta-only --connections 200 --latency-ms 500
    .venv/bin/python bench/throttle_sim.py --google-only --app-limit 300 --window-seconds 60

Meta: N realtime connections of N ad accounts under one app, with encrypted tokens, against the
loopback fake Graph API behind an app-wide limit (tests/fakes/platform_limits.py): at most
--app-limit insights calls per rolling --window-seconds for all accounts together, `X-App-Usage`
on every answer, and code 4 ("Application request limit reached") for --throttle-seconds once the
limit is reached. Google: the same with N customers under one developer token, against the fake
Google Ads API (TLS, self-signed, the real SDK through GOOGLE_ADS_CA_BUNDLE) and the fake OAuth
token endpoint; its throttle is RESOURCE_EXHAUSTED with rate_scope DEVELOPER and the time left as
retry_delay. Every answer waits --latency-ms (a range: each answer a uniform draw).

The engine runs as docker-compose.yml starts it (the sync worker, the dispatcher and beat; see
bench/soak.py), with the settings pointed at the fakes and META_PAUSE_MINUTES matching the
throttle (Meta does not say how long an app throttle lasts). By default the limit is 75 % of the
realtime demand, so the app is throttled by the connections' own calls; an engine that paces
itself on the usage headers may never get there, so after --force-after seconds without a
throttle another client of the same app uses the rest of the window and keeps the app at its
limit until our next call, which starts the throttle (said so in the output).

Measured after the first throttle, from the fake's record of every call and the database only
(connections, sync_runs, platform_scopes), so it runs against any version of the engine:

- calls after the throttle started: those in flight before anyone could know (they arrived
  before the throttled answer left the fake, + 0.5 s), those after (avoidable), and, after its
  end, the calls made until the first answered one was back (the probe). Goal: 1 probe per scope.
- connections whose `rate_limited_until`, read 1 s before the end, is the end (+-1 s). Goal: all.
- connections with a successful sync finished within --resume-within after the end. Goal: all.
- calls per hour against the limit (and per account against its own budget), and the highest
  usage the fake reported.

Database: THROTTLE_BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/adsync_bench_throttle,
created and migrated if missing; its connections, metrics, runs, call buckets and platform scopes
are emptied on every run). Redis: THROTTLE_BENCH_REDIS_URL (default redis://127.0.0.1:6379/7).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ["BENCH_DATABASE_URL"] = os.environ.get(
    "THROTTLE_BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/adsync_bench_throttle"
)
os.environ["BENCH_REDIS_URL"] = os.environ.get("THROTTLE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _compose
import _setup
from _processes import Processes, percentile, wait_for_line
from _setup import heading, out, verdict
from django.conf import settings
from soak import bench_session_name, engine_commands, log_problems, queues_purge, wait_for_scheduler

from connections.models import Connection, SyncFrequency
from syncing.models import PlatformScope, SyncOutcome, SyncRun
from tests.fakes.google_ads import Account, CampaignDay
from tests.fakes.graph import insight
from tests.fakes.platform_limits import AppLimit, AppLimitedGraph, LimitedCall, Throttle, limited_google_running

INTERVAL = 30.0  # realtime
# The engine learns of a throttle when the throttled answer reaches it, and needs a moment to
# record it: calls that arrive before then could not have been held back.
KNOW_GRACE = 0.5
# rate_limited_until counts as the throttle's end within this.
RESUME_TOLERANCE = 1.0
DEMAND_SHARE = 0.75  # the default app limit: this share of the realtime demand over the window
TABLES = ("connections", "daily_metrics", "sync_runs", "api_call_buckets", "platform_scopes")


@dataclasses.dataclass(frozen=True)
class Platform:
    name: str
    provider: str
    scope: str  # the scope the throttle is on (syncing.scopes names it so)
    limit_name: str
    default_connections: int
    account_budget: str  # how the per-account budget is named
    account_budget_per_hour: Callable[[], float]


META = Platform(
    name="Meta",
    provider="meta",
    scope="meta:app",
    limit_name="the app's limit",
    default_connections=1000,
    account_budget="META_CALLS_PER_HOUR per ad account",
    account_budget_per_hour=lambda: float(settings.META_CALLS_PER_HOUR),
)
GOOGLE = Platform(
    name="Google",
    provider="google",
    scope="google:developer-token",
    limit_name="the developer token's limit",
    default_connections=300,
    account_budget="GOOGLE_OPS_PER_CUSTOMER_PER_DAY / 24 per customer",
    account_budget_per_hour=lambda: settings.GOOGLE_OPS_PER_CUSTOMER_PER_DAY / 24,
)


@dataclasses.dataclass
class Fakes:
    """What a platform's fakes give the run: the engine's settings and the connections' rows."""

    env: dict[str, str]
    accounts: list[tuple[str, dict]]  # (external account id, credentials)
    notes: list[str]


# --- the fakes --------------------------------------------------------------------------------


def _days() -> tuple[str, str]:
    today = datetime.now(UTC).date()
    return (today - timedelta(days=1)).isoformat(), today.isoformat()


@contextlib.contextmanager
def meta_fakes(limit: AppLimit, count: int, args: argparse.Namespace, workdir: Path) -> Iterator[Fakes]:
    graph = AppLimitedGraph(limit)
    tokens = {}
    for i in range(count):
        account = str(1_000_000_000 + i)
        tokens[account] = f"EAAB-bench-token-{i:05d}"
        graph.insights[account] = [
            insight(f"{account}{n}", day, spend=f"{10 + n}.25", impressions="1000", clicks="10")
            for n in range(2)
            for day in _days()
        ]
    graph.valid_tokens = set(tokens.values())
    with graph.running():
        env = {
            "META_GRAPH_URL": graph.url,
            "META_APP_ID": graph.app_id,
            "META_APP_SECRET": graph.app_secret,
            "META_PAUSE_MINUTES": str(args.pause_minutes),
            "META_USAGE_WINDOW_SECONDS": str(int(args.window_seconds)),
        }
        yield Fakes(env, [(account, {"access_token": token}) for account, token in tokens.items()], [])


@contextlib.contextmanager
def google_fakes(limit: AppLimit, count: int, args: argparse.Namespace, workdir: Path) -> Iterator[Fakes]:
    with limited_google_running(workdir, limit) as fakes:
        accounts = []
        since, until = _days()
        for i in range(count):
            customer = str(5_000_000_000 + i)
            fakes.ads.add_account(Account(customer, f"Bench customer {i}"))
            for n in range(2):
                for day in (since, until):
                    fakes.ads.campaigns.append(
                        CampaignDay(customer, 100 + n, f"Campaign {n}", datetime.fromisoformat(day).date(), 10_250_000)
                    )
            accounts.append((customer, {"refresh_token": fakes.oauth.grant(f"1//bench-refresh-{i:05d}")}))
        # The engine's own daily quota for the installation is the fake's limit, per day: it is the
        # fake's limit that the run reaches, and the calls per hour compare with the same figure.
        per_day = int(limit.limit * 86400 / limit.window_seconds)
        env = {
            **fakes.engine_env(),
            "GOOGLE_ADS_TIMEOUT": "10",
            "GOOGLE_HTTP_TIMEOUT": "5",
            "GOOGLE_OPS_PER_DAY": str(per_day),
        }
        notes = [f"GOOGLE_OPS_PER_DAY={per_day:,} (the fake's limit, per day)"]
        yield Fakes(env, accounts, notes)


FAKES = {META.name: meta_fakes, GOOGLE.name: google_fakes}


# --- the database -----------------------------------------------------------------------------


def tables_reset() -> None:
    with _setup.db.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")


def connections_create(platform: Platform, accounts: list[tuple[str, dict]], *, started: datetime) -> None:
    """Realtime connections with encrypted credentials, first slots spread over one interval from
    started + 1 s, restated just now (so every sync is an ordinary one: one call)."""
    workspace_id = _setup.workspace_get().pk
    encrypt = Connection._meta.get_field("credentials").get_prep_value
    first_slot = started + timedelta(seconds=1)
    rows = [
        {
            "workspace_id": workspace_id,
            "provider": platform.provider,
            "external_account_id": account,
            "name": f"{platform.name} bench {i}",
            "currency": "USD",
            "timezone": "UTC",
            "credentials": encrypt(credentials),
            "sync_frequency": SyncFrequency.REALTIME,
            "next_sync_at": first_slot + timedelta(seconds=INTERVAL * i / len(accounts)),
            "last_restated_at": started,
        }
        for i, (account, credentials) in enumerate(accounts)
    ]
    _setup.model_copy(Connection, rows)


def scopes_read() -> list[dict]:
    """platform_scopes, as the engine left it (empty before issue 12)."""
    columns = ("scope", "throttled_until", "probe_connection_id", "probe_started_at", "usage_pct", "pace_limit")
    try:
        return list(PlatformScope.objects.order_by("scope").values(*columns))
    except Exception as exc:  # a column renamed by the engine being measured: say so, go on
        _setup.db.close()
        return [{"scope": f"(unreadable: {type(exc).__name__}: {str(exc)[:100]})"}]


def at(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


# --- the run ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Observed:
    begun: float  # wall clock, as the fake's
    ended: float
    forced_at: float | None
    forced_calls: int
    limited: dict[int, tuple[datetime | None, str]]  # pk -> (rate_limited_until, sync_status) 1 s before the end
    scopes_during: list[dict]
    scopes_end: list[dict]
    stopped_early: str  # why the run ended before the resume deadline, if it did


def source_note() -> str:
    """Which engine this is: the source tree, its commit and how many files differ from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(_setup.ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(_setup.ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        return f"{_setup.ROOT} at {head}" + (f" with {len(changed)} changed file(s)" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return f"{_setup.ROOT} (not a git checkout)"


def simulate(platform: Platform, args: argparse.Namespace) -> dict:
    count = args.connections or platform.default_connections
    demand = count * args.window_seconds / INTERVAL
    app_limit = args.app_limit or max(1, int(demand * DEMAND_SHARE))
    limit = AppLimit(
        limit=app_limit,
        window_seconds=args.window_seconds,
        throttle_seconds=args.throttle_seconds,
        latency=(args.latency[0] / 1000, args.latency[1] / 1000),
    )
    latency_text = (
        f"{args.latency[0]}-{args.latency[1]} ms" if args.latency[0] != args.latency[1] else f"{args.latency[0]} ms"
    )
    heading(f"{platform.name}: {count:,} realtime connections under one {platform.scope} ({_setup.machine_note()})")
    out(f"engine source: {source_note()}")
    out(
        f"fake: {platform.limit_name} {app_limit:,} calls per {args.window_seconds:g} s rolling "
        f"(= {app_limit * 3600 / args.window_seconds:,.0f}/h; demand {demand:,.0f} per window), throttle "
        f"{args.throttle_seconds:g} s, latency {latency_text} per answer; an outside client fills the window "
        + (f"at +{args.force_after:g} s if not throttled by then" if args.force_after else "never (--force-after 0)")
    )
    bench_session_name()
    engine = engine_commands(None)
    workdir = Path(tempfile.mkdtemp(prefix=f"adsync-throttle-{platform.provider}-"))
    with FAKES[platform.name](limit, count, args, workdir) as fakes:
        extra = dict(fakes.env)
        if args.db_pool is not None:
            extra["DB_POOL_MAX_SIZE"] = str(args.db_pool)
            fakes.notes.append(f"DB_POOL_MAX_SIZE={args.db_pool} overrides docker-compose.yml's")
        if args.probe_wait is not None:
            extra["SYNC_THROTTLE_PROBE_WAIT"] = str(args.probe_wait)
        engine.env.update(extra)
        for name in _compose.ENGINE_SERVICES:
            out(f"{name}: {shlex.join(engine.argv[name])}")
        shown = {k: v for k, v in extra.items() if "SECRET" not in k}
        out("engine settings from the bench: " + " ".join(f"{k}={v}" for k, v in shown.items()))
        for note in [*engine.notes, *fakes.notes]:
            out(f"    {note}")
        tables_reset()
        queues_purge(engine.queues)
        observed, logs = run_engine(platform, args, engine, fakes, limit, workdir)
    return report(platform, args, limit, observed, logs, workdir, count)


def run_engine(platform, args, engine, fakes: Fakes, limit: AppLimit, workdir: Path) -> tuple[Observed, dict]:
    processes = Processes(workdir)
    logs: dict[str, Path] = {}

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        for name in ("worker", "dispatcher"):
            logs[name] = processes.start(name, engine.argv[name], engine.env)
        for name in ("worker", "dispatcher"):
            if not wait_for_line(logs[name], r"ready\.", timeout=60, processes=processes):
                raise SystemExit(f"the {name} did not start; see {logs[name]}")
        beat_started = datetime.now(UTC)
        logs["scheduler"] = processes.start("scheduler", engine.argv["scheduler"], engine.env)
        if not wait_for_scheduler(beat_started, timeout=60, processes=processes):
            raise SystemExit(f"no dispatcher tick within 60 s of starting beat; see {logs['scheduler']}")

        begun = time.time()
        connections_create(platform, fakes.accounts, started=at(begun))
        out(f"started at {at(begun):%H:%M:%S}; logs in {workdir}")
        cap = begun + args.minutes * 60
        force_at = begun + args.force_after if args.force_after else None
        forced_at, forced_calls = None, 0
        first: Throttle | None = None
        limited: dict[int, tuple[datetime | None, str]] = {}
        scopes_during: list[dict] = []
        stopped_early = ""
        next_report = begun + 15
        while True:
            now = time.time()
            if first is None and limit.throttles:
                first = limit.throttles[0]
                out(
                    f"  +{first.started - begun:.1f} s: throttled"
                    + (" (after the outside client filled the window)" if first.forced else "")
                    + f" until +{first.ends - begun:.1f} s"
                )
            if first is None and force_at is not None and forced_at is None and now >= force_at:
                forced_at, forced_calls = now, limit.fill()
                out(
                    f"  +{now - begun:.1f} s: not throttled yet; an outside client used the rest of the window "
                    f"({forced_calls:,} calls): the next call starts a throttle"
                )
            if first is not None and not limited and now >= first.ends - RESUME_TOLERANCE:
                limited = {
                    pk: (until, status)
                    for pk, until, status in Connection.objects.filter(provider=platform.provider).values_list(
                        "pk", "rate_limited_until", "sync_status"
                    )
                }
                scopes_during = scopes_read()
            if first is not None and now >= first.ends + args.resume_within:
                break
            if now >= cap:
                stopped_early = f"--minutes {args.minutes:g} reached" + ("" if first else " without a throttle")
                break
            if processes.dead():
                raise SystemExit(f"{', '.join(processes.dead())} exited early; see the logs in {workdir}")
            if now >= next_report:
                next_report += 15
                calls, _ = limit.snapshot()
                refused = sum(c.throttled for c in calls)
                out(
                    f"  +{now - begun:.0f} s: {len(calls):,} calls ({refused:,} throttled), usage "
                    f"{limit.usage_pct():.0f} %"
                )
            time.sleep(0.1)
        ended = time.time()
        scopes_end = scopes_read()
        processes.stop("scheduler")
        # Syncs already running finish within the latency; let them, so the logs end cleanly.
        time.sleep(min(5.0, 1.0 + args.latency[1] / 1000))
    finally:
        processes.stop_all()
        signal.signal(signal.SIGTERM, previous)
        queues_purge(engine.queues)
    observed = Observed(begun, ended, forced_at, forced_calls, limited, scopes_during, scopes_end, stopped_early)
    return observed, logs


# --- the figures ------------------------------------------------------------------------------


@dataclasses.dataclass
class FirstThrottle:
    throttle: Throttle
    during: list[LimitedCall]
    in_flight: list[LimitedCall]  # arrived before the engine could know
    avoidable: list[LimitedCall]  # arrived after it could
    at_resume: list[LimitedCall]  # from the end until the first answered call after it was back
    open_at: float | None  # when that answer left the fake

    @property
    def probes(self) -> int:
        return len(self.avoidable) + len(self.at_resume)


def first_throttle(calls: list[LimitedCall], throttle: Throttle) -> FirstThrottle:
    during = [c for c in calls if throttle.started <= c.at < throttle.ends]
    # The engine can know from the first throttled answer that reaches it, whichever call's.
    known = min(c.answered_at for c in during) + KNOW_GRACE
    in_flight = [c for c in during[1:] if c.at < known]
    avoidable = [c for c in during[1:] if c.at >= known]
    after = [c for c in calls if c.at >= throttle.ends]
    first_ok = next((c for c in after if not c.throttled), None)
    open_at = first_ok.answered_at if first_ok is not None else None
    at_resume = [c for c in after if open_at is None or c.at < open_at or c is first_ok]
    return FirstThrottle(throttle, during, in_flight, avoidable, at_resume, open_at)


def seconds(values: list[float]) -> str:
    if not values:
        return "(none)"
    return (
        f"p50 {percentile(values, 0.5):.1f} s, p95 {percentile(values, 0.95):.1f} s, max {max(values):.1f} s "
        f"(n={len(values):,})"
    )


def report(platform, args, limit: AppLimit, seen: Observed, logs: dict, workdir: Path, count: int) -> dict:
    every_call, throttles = limit.snapshot()
    begun, ended = seen.begun, seen.ended
    window = ended - begun
    calls = [c for c in every_call if begun <= c.at <= ended]
    answered = [c for c in calls if not c.throttled]
    out()
    out(
        f"calls: {len(calls):,} in {window:.0f} s ({len(answered):,} answered, {len(calls) - len(answered):,} "
        f"throttled); highest usage the fake {'reported' if platform is META else 'counted (Google reports none)'}: "
        f"{limit.max_usage_pct:.0f} %"
    )
    budget = limit.limit * 3600 / limit.window_seconds
    rate, answered_rate = len(calls) / window * 3600, len(answered) / window * 3600
    out(
        f"calls per hour: {rate:,.0f} ({answered_rate:,.0f} answered) against {platform.limit_name} "
        f"{budget:,.0f}/h: {rate / budget:.2f}x ({answered_rate / budget:.2f}x answered)"
    )
    per_account = Counter(c.account for c in calls)
    account_rates = [per_account.get(a, 0) / window * 3600 for a in {c.account for c in calls}]
    account_budget = platform.account_budget_per_hour()
    if account_rates:
        out(
            f"calls per hour per account: p50 {percentile(account_rates, 0.5):,.0f}, max {max(account_rates):,.0f} "
            f"against {account_budget:,.0f} ({platform.account_budget}); realtime alone is {3600 / INTERVAL:.0f}"
        )
    for number, throttle in enumerate(throttles, 1):
        refused = sum(1 for c in calls if throttle.started <= c.at < throttle.ends)
        out(
            f"throttle {number}: +{throttle.started - begun:.1f} s to +{throttle.ends - begun:.1f} s"
            + (
                f" (an outside client had used the rest of the window at +{seen.forced_at - begun:.1f} s: "
                f"{seen.forced_calls:,} calls)"
                if throttle.forced and seen.forced_at is not None
                else ""
            )
            + f", {refused:,} calls refused"
        )
    runs = SyncRun.objects.filter(
        started_at__gte=at(begun), started_at__lte=at(ended), connection__provider=platform.provider
    )
    outcomes = Counter(runs.values_list("outcome", flat=True))
    out(f"sync runs: {dict(outcomes)}")
    durations = [
        (finished - started).total_seconds()
        for started, finished in runs.filter(finished_at__isnull=False).values_list("started_at", "finished_at")
    ]
    out(
        f"    {sum(outcomes.values()) / window:.1f} started per second (the realtime demand is "
        f"{count / INTERVAL:.1f}/s); start to finish {seconds(durations)}, the fake answering in "
        f"{args.latency[0]}-{args.latency[1]} ms"
    )
    errors = Counter(
        runs.filter(outcome=SyncOutcome.ERROR).values_list("error_message", flat=True).order_by()
    ).most_common(3)
    for message, times in errors:
        out(f"    {times:,} x {message[:160]}")
    problems = [line for name in ("worker", "dispatcher") for line in log_problems(logs[name])]
    out(f"engine log lines at WARNING or above: {len(problems):,}")
    for line in problems[:3]:
        out(f"    {line[:200]}")

    result = {"platform": platform.name, "connections": count, "calls": len(calls), "ok": False}
    if not throttles:
        out()
        out(
            f"no throttle in {window:.0f} s ({seen.stopped_early}): nothing to measure (a lower --app-limit, or "
            "--force-after, brings one about)"
        )
        for goal in ("1 probe per scope", "every connection shows the resume time", "every connection resumes"):
            out(f"{verdict(False)}  {goal}: not measured (no throttle)")
        return result

    first = first_throttle(every_call, throttles[0])
    end = first.throttle.ends
    out()
    out(
        f"the first throttle: +{first.throttle.started - begun:.1f} s to +{end - begun:.1f} s; calls in it: "
        f"{len(first.during):,} (beyond the first: {len(first.during) - 1:,})"
    )
    first_answer = min(c.answered_at for c in first.during) - first.throttle.started
    out(
        f"    in flight, arrived before the first throttled answer left the fake (+{first_answer * 1000:.0f} ms, "
        f"+{KNOW_GRACE:g} s to record it): {len(first.in_flight):,}"
    )
    if first.avoidable:
        spread_from = min(c.at for c in first.avoidable) - first.throttle.started
        spread_to = max(c.at for c in first.avoidable) - first.throttle.started
        out(
            f"    after: {len(first.avoidable):,} from {len({c.account for c in first.avoidable}):,} accounts, "
            f"+{spread_from:.1f} s to +{spread_to:.1f} s into the throttle"
        )
    else:
        out("    after: none")
    if first.open_at is not None:
        out(
            f"    after its end, until the first answered call was back (+{first.open_at - end:.1f} s): "
            f"{len(first.at_resume):,} call(s)"
        )
    else:
        out(f"    after its end: {len(first.at_resume):,} call(s), none answered by the end of the run")
    burst = Counter(int(c.at - end) for c in every_call if end <= c.at < end + 10)
    out(
        f"    in the 10 s after its end: {sum(burst.values()):,} calls, at most {max(burst.values(), default=0):,} "
        "in one second"
    )

    # rate_limited_until, 1 s before the end.
    if seen.limited:
        offsets = [(until - at(end)).total_seconds() for until, _ in seen.limited.values() if until is not None]
        # The goal: every connection shows the throttle's end as its resume time. The engine can
        # only count the pause from the throttled answer (not from the call's arrival, which it
        # cannot see), so "the end" is the end as the engine learned it: never before the fake's
        # end (-1 s), at most one answer's time after it, and the same on every connection.
        late = args.latency[1] / 1000 + RESUME_TOLERANCE
        shown = sum(1 for o in offsets if -RESUME_TOLERANCE <= o <= late)
        spread = (max(offsets) - min(offsets)) if offsets else 0.0
        unset = sum(1 for until, _ in seen.limited.values() if until is None)
        statuses = Counter(status for _, status in seen.limited.values())
        out(
            f"rate_limited_until 1 s before the end: the end (+-{RESUME_TOLERANCE:g} s) on {shown:,} of {count:,}; "
            f"unset on {unset:,}; statuses {dict(statuses)}"
        )
        if offsets:
            exact = sum(1 for o in offsets if abs(o) <= RESUME_TOLERANCE)
            out(
                f"    minus the end: min {min(offsets):+.1f} s, p50 {percentile(offsets, 0.5):+.1f} s, "
                f"max {max(offsets):+.1f} s (spread {spread:.1f} s); within -{RESUME_TOLERANCE:g} s to +{late:g} s "
                f"(late by at most one answer's time): {shown:,}; within +-{RESUME_TOLERANCE:g} s: {exact:,}"
            )
    else:
        shown = 0
        out("rate_limited_until: not read (the run stopped before the throttle's end)")
    for label, rows in (("1 s before the end", seen.scopes_during), ("at the end of the run", seen.scopes_end)):
        mine = [r for r in rows if r.get("scope") == platform.scope]
        others = len(rows) - len(mine)
        if not rows:
            out(f"platform_scopes {label}: empty")
            continue
        for row in mine:
            text = ", ".join(f"{k} {_scope_value(v, end)}" for k, v in row.items() if k != "scope" and v is not None)
            out(f"platform_scopes {label}: {row['scope']}: {text or 'no values'}")
        if others:
            out(f"platform_scopes {label}: {others:,} other scope(s)")

    # Resumed: a successful sync that finished after the end, within --resume-within.
    deadline = end + args.resume_within
    first_done: dict[int, datetime] = {}
    for pk, finished in (
        SyncRun.objects.filter(
            connection__provider=platform.provider,
            outcome=SyncOutcome.SUCCESS,
            finished_at__gte=at(end),
            finished_at__lte=at(deadline),
        )
        .order_by("finished_at")
        .values_list("connection_id", "finished_at")
    ):
        first_done.setdefault(pk, finished)
    delays = [(finished - at(end)).total_seconds() for finished in first_done.values()]
    resumed = len(first_done)
    out(
        f"resumed (a successful sync finished within {args.resume_within:g} s of the end): {resumed:,} of {count:,}; "
        f"after the end: {seconds(delays)}"
    )
    if seen.stopped_early:
        out(f"    (the run stopped early: {seen.stopped_early})")

    out()
    scopes = 1
    out(
        f"{verdict(first.probes <= scopes)}  calls after the throttle was known, through the first answer after it: "
        f"{first.probes:,} = {len(first.avoidable):,} during it + {len(first.at_resume):,} at its end (goal: 1 probe "
        f"per scope; {scopes} scope throttled, {platform.scope}; {len(first.in_flight):,} in flight not counted)"
    )
    out(
        f"{verdict(shown == count)}  connections showing the resume time (the end as the engine learned it, "
        f"-{RESUME_TOLERANCE:g} s to one answer's time late): {shown:,} of {count:,} ({shown / count:.0%}; goal 100 %)"
    )
    out(
        f"{verdict(resumed == count)}  connections resumed within {args.resume_within:g} s: {resumed:,} of {count:,} "
        f"({resumed / count:.0%}; goal 100 %)"
    )
    ok = first.probes <= scopes and shown == count and resumed == count
    result.update(
        ok=ok,
        probes=first.probes,
        in_flight=len(first.in_flight),
        beyond_first=len(first.during) - 1,
        shown=shown,
        resumed=resumed,
        calls_per_hour=rate,
        budget_per_hour=budget,
        max_usage_pct=limit.max_usage_pct,
        throttles=len(throttles),
    )
    if ok and not args.keep_logs:
        for log in workdir.iterdir():
            log.unlink()
        workdir.rmdir()
    else:
        out(f"logs kept in {workdir}")
    return result


def _scope_value(value, end: float) -> str:
    if isinstance(value, datetime):
        return f"{value:%H:%M:%S.%f}"[:-3] + f" (end {(value - at(end)).total_seconds():+.1f} s)"
    if isinstance(value, float):
        return f"{value:.0f}"
    return str(value)


# --- main -------------------------------------------------------------------------------------


def latency_range(text: str) -> tuple[int, int]:
    """'500' or '300-1000' (milliseconds)."""
    low, _, high = text.partition("-")
    values = (int(low), int(high or low))
    if values[0] < 0 or values[1] < values[0]:
        raise argparse.ArgumentTypeError(f"{text!r} is not N or LOW-HIGH milliseconds")
    return values


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--meta-only", action="store_true")
    only.add_argument("--google-only", action="store_true")
    parser.add_argument(
        "--connections", type=int, default=None, help="connections per platform (default: Meta 1,000, Google 300)"
    )
    parser.add_argument(
        "--latency-ms", dest="latency", type=latency_range, default=(300, 1000), help="per answer: N or LOW-HIGH"
    )
    parser.add_argument(
        "--app-limit",
        type=int,
        default=None,
        help=f"calls per window for all accounts (default: {DEMAND_SHARE:.0%} of the realtime demand)",
    )
    parser.add_argument("--window-seconds", type=float, default=60.0, help="the limit's rolling window")
    parser.add_argument("--throttle-seconds", type=float, default=60.0, help="how long a throttle lasts")
    parser.add_argument(
        "--force-after",
        type=float,
        default=75.0,
        help="seconds without a throttle before an outside client fills the window (0: never)",
    )
    parser.add_argument(
        "--resume-within", type=float, default=60.0, help="seconds after the throttle's end to resume in"
    )
    parser.add_argument(
        "--minutes", type=float, default=4.0, help="the longest a platform's run lasts (it ends at the resume deadline)"
    )
    parser.add_argument("--probe-wait", type=int, default=None, help="SYNC_THROTTLE_PROBE_WAIT for the engine")
    parser.add_argument(
        "--db-pool",
        type=int,
        default=None,
        help="override the worker's DB_POOL_MAX_SIZE (default: docker-compose.yml's)",
    )
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--exit-code", action="store_true", help="exit 1 when a goal is missed (for run_all.py)")
    args = parser.parse_args(argv)
    if args.window_seconds < 60:
        parser.error("--window-seconds must be at least 60 (META_USAGE_WINDOW_SECONDS' minimum)")
    # Meta does not say how long an app throttle lasts: the engine's guess is META_PAUSE_MINUTES.
    args.pause_minutes = max(1, round(args.throttle_seconds / 60))
    if not math.isclose(args.pause_minutes * 60, args.throttle_seconds):
        out(f"note: the throttle lasts {args.throttle_seconds:g} s, META_PAUSE_MINUTES={args.pause_minutes}")

    started = time.monotonic()
    platforms = [
        p for p in (META, GOOGLE) if not ((args.meta_only and p is GOOGLE) or (args.google_only and p is META))
    ]
    results = [simulate(platform, args) for platform in platforms]
    heading(f"Summary ({time.monotonic() - started:.0f} s)")
    for r in results:
        if "probes" not in r:
            out(f"{verdict(False)}  {r['platform']}: no throttle")
            continue
        out(
            f"{verdict(r['ok'])}  {r['platform']} ({r['connections']:,}): calls after the throttle {r['probes']:,} "
            f"(+{r['in_flight']:,} in flight), resume time shown {r['shown']:,}, resumed {r['resumed']:,}; "
            f"{r['calls_per_hour']:,.0f} calls/h against {r['budget_per_hour']:,.0f}/h; max usage "
            f"{r['max_usage_pct']:.0f} %; throttles {r['throttles']}"
        )
    return {"ok": all(r["ok"] for r in results), "results": results, "exit_code": args.exit_code}


if __name__ == "__main__":
    outcome = main()
    sys.exit(1 if outcome["exit_code"] and not outcome["ok"] else 0)
