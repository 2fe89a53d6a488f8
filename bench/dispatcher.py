"""Dispatcher tick: claiming the due connections with one indexed query vs a naive ORM loop.

    .venv/bin/python bench/dispatcher.py [--connections 100000] [--due 1000] [--small 10000]

Prints, with PASS/MISS against the targets:
- the claim (syncing.dispatcher.connections_claim_due, no broker send) at 100k connections
  with 1,000 due, against a naive loop over every Connection row in Python (>= 100x faster);
- the claim at 10k vs 100k connections, 1,000 due each (cost follows the rows due: <= 1.3x);
- a whole tick (syncs_dispatch_due) including the 1,000 sends to Redis, reported separately;
- an empty tick (nothing due; recovery queries and the heartbeat included): <= 5 ms.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _setup
from _setup import db, heading, measure, median, ms, out, spread, verdict
from django.db import transaction
from django.utils import timezone

from connections.models import (
    RUNNABLE_STATUSES,
    SYNC_INTERVALS,
    Connection,
    SyncStatus,
    SyncTrigger,
)
from syncing.dispatcher import connections_claim_due, syncs_dispatch_due
from syncing.models import HeartbeatKind, SyncRun
from syncing.services import heartbeat_record

TARGET_NAIVE_RATIO = 100.0
TARGET_SCALE_RATIO = 1.3
TARGET_EMPTY_TICK = 0.005

BUSY = 20  # connections queued or syncing when the tick runs, as in a live installation
SYNC_RUNS = 100_000  # finished history rows, so the recovery query has a real table to skip


def dataset_load(*, total: int, due: int, now) -> None:
    _setup.tables_reset()
    _setup.connections_create_scheduled(total=total, due=due, now=now, busy=BUSY)
    sync_runs_load(count=min(SYNC_RUNS, total), now=now)
    _setup.vacuum_analyze("connections", "sync_runs")


def sync_runs_load(*, count: int, now) -> None:
    """Finished runs spread over the last day (history the recovery query must not scan)."""
    ids = list(Connection.objects.order_by("pk").values_list("pk", flat=True)[:count])

    def rows():
        for i, pk in enumerate(ids):
            started = now - timedelta(seconds=60 + (i * 7919) % 86_400)
            yield {
                "connection_id": pk,
                "job_id": uuid.uuid4(),
                "trigger": "scheduled",
                "started_at": started,
                "finished_at": started + timedelta(seconds=2),
                "outcome": "success",
                "api_calls": 1,
                "rows_fetched": 8,
                "rows_written": 1,
            }

    _setup.model_copy(SyncRun, rows())


def claims_reset(now) -> int:
    """Put every row claimed at `now` back to idle in one UPDATE (next_sync_at is untouched
    by the claim, so the same rows are due again)."""
    with db.cursor() as cursor:
        cursor.execute(
            "UPDATE connections SET sync_status = 'idle', job_id = NULL, queued_at = NULL, queued_trigger = '' "
            "WHERE sync_status = 'queued' AND queued_at = %s",
            [now],
        )
        return cursor.rowcount


def naive_claim_due(*, now) -> list[int]:
    """What a dispatcher looks like without next_sync_at and its index: load every connection,
    work out in Python whether it is due, and queue the due ones one by one."""
    claimed = []
    for conn in Connection.objects.all():
        interval = SYNC_INTERVALS[conn.sync_frequency]
        if interval is None or conn.sync_status not in RUNNABLE_STATUSES:
            continue
        if conn.last_sync_attempted_at is None or conn.last_sync_attempted_at + interval <= now:
            conn.sync_status = SyncStatus.QUEUED
            conn.job_id = uuid.uuid4()
            conn.queued_at = now
            conn.queued_trigger = SyncTrigger.SCHEDULED
            conn.save(update_fields=["sync_status", "job_id", "queued_at", "queued_trigger"])
            claimed.append(conn.pk)
    return claimed


# The same claim as one statement (PostgreSQL): what connections_claim_due's three statements
# (SELECT ... FOR UPDATE SKIP LOCKED, UPDATE ... WHERE id IN (1,000 ids), SELECT the job ids back)
# could be. Measured beside it as a reference for a suggested change, not used by the app.
ONE_STATEMENT_CLAIM = """
WITH due AS (
    SELECT id, sync_status, job_id, queued_at, queued_trigger FROM connections
    WHERE sync_status IN ('idle', 'error') AND next_sync_at IS NOT NULL AND next_sync_at <= %(now)s
    ORDER BY next_sync_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE connections AS c
SET sync_status = 'queued', job_id = gen_random_uuid(), queued_at = %(now)s, queued_trigger = 'scheduled'
FROM due
WHERE c.id = due.id
RETURNING c.id, c.job_id, due.sync_status, due.job_id, due.queued_at, due.queued_trigger
"""


def claim_one_statement(now, limit) -> list[tuple]:
    with transaction.atomic(), db.cursor() as cursor:
        cursor.execute(ONE_STATEMENT_CLAIM, {"now": now, "limit": limit})
        return cursor.fetchall()


def claim(now, limit):
    return connections_claim_due(now=now, limit=limit)


def claim_explain(now, limit: int) -> str:
    """EXPLAIN ANALYZE of the claim's SELECT ... FOR UPDATE SKIP LOCKED (rolled back)."""
    queryset = (
        Connection.objects.filter(sync_status__in=RUNNABLE_STATUSES, next_sync_at__lte=now)
        .order_by("next_sync_at")
        .select_for_update(skip_locked=True)
        .values_list("pk", "sync_status", "job_id")[:limit]
    )
    with transaction.atomic(), db.cursor() as cursor:
        sql, params = queryset.query.sql_with_params()
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, params)
        plan = "\n".join("    " + row[0] for row in cursor.fetchall())
        transaction.set_rollback(True)
    return plan


class StatementTimer:
    """A Django execute_wrapper that times each SQL statement (for --breakdown)."""

    def __init__(self):
        self.statements: list[tuple[float, str]] = []

    def __call__(self, execute, sql, params, many, context):
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.statements.append((time.perf_counter() - start, sql))


def claim_breakdown(now, limit: int, repeats: int) -> list[str]:
    """Median time of each statement of the claim (BEGIN/COMMIT are not statements here, so
    the commit is what is left of the total)."""
    per_statement: list[list[float]] = []
    labels: list[str] = []
    totals: list[float] = []
    for _ in range(repeats):
        timer = StatementTimer()
        with db.execute_wrapper(timer):
            total, claims = _setup.timed(lambda: claim(now, limit))
        assert len(claims) == limit
        claims_reset(now)
        totals.append(total)
        if not labels:
            labels = [" ".join(sql.split())[:90] for _, sql in timer.statements]
            per_statement = [[] for _ in timer.statements]
        for index, (seconds, _) in enumerate(timer.statements):
            per_statement[index].append(seconds)
    lines = [f"    {ms(median(times)):>10}  {label}" for times, label in zip(per_statement, labels, strict=True)]
    rest = median(totals) - sum(median(times) for times in per_statement)
    lines.append(f"    {ms(rest):>10}  (the rest: BEGIN, COMMIT, Python)")
    lines.append(f"    {ms(median(totals)):>10}  total")
    return lines


def claim_bench(*, total: int, due: int, repeats: int) -> tuple[list[float], set[int], datetime]:
    now = timezone.now()
    dataset_load(total=total, due=due, now=now)
    claimed_ids: set[int] = set()

    def run():
        return claim(now, due)

    def teardown(claims):
        assert len(claims) == due, f"claimed {len(claims)}, expected {due}"
        claimed_ids.update(c.connection_id for c in claims)
        assert claims_reset(now) == due

    times, _ = measure(run, repeats=repeats, warmup=1, teardown=teardown)
    return times, claimed_ids, now


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=10_000, help="the smaller installation to compare with")
    parser.add_argument("--due", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--naive-repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternating loads of the small and large dataset")
    parser.add_argument("--explain", action="store_true", help="print the claim's EXPLAIN ANALYZE")
    parser.add_argument("--breakdown", action="store_true", help="time each statement of the claim")
    args = parser.parse_args(argv)
    total, small, due = args.connections, args.small, args.due

    heading(f"Dispatcher tick ({_setup.machine_note()})")
    out(f"{due:,} due; {BUSY} busy (queued/syncing); 15% manual; {min(SYNC_RUNS, total):,} finished sync_runs rows")

    # 1. The claim at both sizes, alternating (small, large, small, large...) so that a change
    # in the machine's load during the run does not masquerade as an effect of the table size.
    # The large dataset is loaded last and stays for the rest.
    small_times: list[float] = []
    large_times: list[float] = []
    for _ in range(args.rounds):
        times, _, _ = claim_bench(total=small, due=due, repeats=args.repeats)
        small_times += times
        times, claimed_ids, now = claim_bench(total=total, due=due, repeats=args.repeats)
        large_times += times
    out(f"claim  {small:>7,} connections: {spread(small_times)} ({args.rounds} rounds x {args.repeats})")
    out(f"claim  {total:>7,} connections: {spread(large_times)} ({args.rounds} rounds x {args.repeats})")
    if args.explain:
        out("EXPLAIN ANALYZE of the claim's SELECT:")
        out(claim_explain(now, due))
    if args.breakdown:
        out("The claim, statement by statement (medians):")
        for line in claim_breakdown(now, due, args.repeats):
            out(line)

    one_ids: set[int] = set()

    def one_teardown(rows):
        assert len(rows) == due
        one_ids.update(row[0] for row in rows)
        assert claims_reset(now) == due

    one_times, _ = measure(lambda: claim_one_statement(now, due), repeats=args.repeats, teardown=one_teardown)
    assert one_ids == claimed_ids, "the one-statement claim picked different connections"
    out(f"ref    {total:>7,} connections, the claim as one statement (see ONE_STATEMENT_CLAIM): {spread(one_times)}")

    # 2. The naive loop on the same rows: it must pick exactly the same connections.
    naive_ids: set[int] = set()

    def naive_teardown(ids):
        assert len(ids) == due, f"naive claimed {len(ids)}, expected {due}"
        naive_ids.update(ids)
        assert claims_reset(now) == due

    naive_times, _ = measure(
        lambda: naive_claim_due(now=now), repeats=args.naive_repeats, warmup=0, teardown=naive_teardown
    )
    assert naive_ids == claimed_ids, "the naive loop and the claim picked different connections"
    load_times, _ = measure(lambda: len(list(Connection.objects.all())), repeats=3, warmup=0)
    out(
        f"naive  {total:>7,} connections: {spread(naive_times)} (of which loading every row: "
        f"{ms(median(load_times))}; then {due:,} x save(update_fields))"
    )
    _setup.vacuum_analyze("connections")

    # 3. A whole tick with the sends to Redis (bench db), the queues emptied in between. The
    # dispatcher queues only what live sync workers can start (backpressure): one with room for
    # every due row beats, as a worker process would.
    heartbeat_record(name="bench-sync@localhost", kind=HeartbeatKind.SYNC_WORKER, now=now, details={"concurrency": due})

    def tick_teardown(result):
        assert (result.claimed, result.sent) == (due, due), result
        claims_reset(now)
        assert _setup.redis_queues_purge() == due

    _setup.redis_queues_purge()
    tick_times, _ = measure(
        lambda: syncs_dispatch_due(now=now, limit=due), repeats=args.repeats, teardown=tick_teardown
    )
    out(f"tick   {total:>7,} connections, {due:,} claimed and sent to Redis: {spread(tick_times)}")

    # 4. An empty tick: the due rows were just claimed (queued), so nothing is due or stuck.
    claim(now, due)

    def empty_teardown(result):
        assert (result.claimed, result.recovered) == (0, 0), result

    empty_times, _ = measure(
        lambda: syncs_dispatch_due(now=now), repeats=max(25, args.repeats), teardown=empty_teardown
    )
    claims_reset(now)
    out(f"empty  {total:>7,} connections, nothing due: {spread(empty_times)}")

    claim_small, claim_large = median(small_times), median(large_times)
    naive, tick, empty = median(naive_times), median(tick_times), median(empty_times)
    naive_ratio = naive / claim_large
    scale_ratio = claim_large / claim_small
    out()
    out(
        f"{verdict(naive_ratio >= TARGET_NAIVE_RATIO)}  claim {ms(claim_large)} vs naive {ms(naive)} at {total:,}: "
        f"{naive_ratio:,.0f}x faster (target >= {TARGET_NAIVE_RATIO:.0f}x)"
    )
    out(
        f"{verdict(scale_ratio <= TARGET_SCALE_RATIO)}  claim at {total:,} / at {small:,} connections "
        f"({due:,} due each): {ms(claim_large)} / {ms(claim_small)} = {scale_ratio:.2f} "
        f"(target <= {TARGET_SCALE_RATIO})"
    )
    out(f"{verdict(empty <= TARGET_EMPTY_TICK)}  empty tick: {ms(empty)} (target <= {ms(TARGET_EMPTY_TICK)})")
    out(
        f"info  the claim as one statement: {ms(median(one_times))} "
        f"({claim_large / median(one_times):.1f}x faster than connections_claim_due)"
    )
    out(
        f"info  full tick with {due:,} sends: {ms(tick)}; sending ~{ms(max(0.0, tick - claim_large))} "
        f"({(tick - claim_large) / due * 1e6:,.0f} us per message)"
    )
    return {
        "claim_small": claim_small,
        "claim_large": claim_large,
        "naive": naive,
        "tick": tick,
        "empty": empty,
        "ok": naive_ratio >= TARGET_NAIVE_RATIO and scale_ratio <= TARGET_SCALE_RATIO and empty <= TARGET_EMPTY_TICK,
    }


if __name__ == "__main__":
    main()
