"""Rate budgets: at most `limit` API calls per rolling `window` for a key, atomic across processes.

Calls are counted in one-minute buckets (api_call_buckets). A budget counts every bucket that
overlaps the window, so it errs on the safe side by at most a minute's calls, and it never lets
two processes both take the last call: the check and the increment run in one transaction that
holds a per-key lock (a PostgreSQL advisory lock; SQLite has a single writer anyway).

Meta: 180 of 200 calls per rolling hour per ad account. Google: operations per rolling day for
the whole installation (the quota belongs to the app's OAuth client) and per customer.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from django.db import connection as db
from django.db import transaction
from django.db.models import Sum

from syncing.models import ApiCallBucket

MINUTE = timedelta(minutes=1)


@dataclasses.dataclass(frozen=True)
class Budget:
    key: str
    # None: calls are counted, never refused (a scope's calls, counted to pace it when the
    # platform says it is busy: syncing.scopes).
    limit: int | None
    window: timedelta
    label: str  # how the budget is named to a person ("Meta's hourly call budget for this account")


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def _window_start(budget: Budget, now: datetime) -> datetime:
    return _minute(now - budget.window)


def _lock(key: str) -> None:
    if db.vendor == "postgresql":
        with db.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"adsync-budget:{key}"])


def budget_used(*, budget: Budget, now: datetime) -> int:
    total = ApiCallBucket.objects.filter(key=budget.key, minute__gte=_window_start(budget, now)).aggregate(
        total=Sum("calls")
    )["total"]
    return total or 0


def budgets_used(*, budgets: list[Budget], now: datetime) -> dict[str, int]:
    """Used calls of many budgets in one query (the dispatcher checks a whole batch at once)."""
    if not budgets:
        return {}
    start = min(_window_start(b, now) for b in budgets)
    rows = ApiCallBucket.objects.filter(key__in={b.key for b in budgets}, minute__gte=start).values_list(
        "key", "minute", "calls"
    )
    used = dict.fromkeys((b.key for b in budgets), 0)
    starts = {b.key: _window_start(b, now) for b in budgets}
    for key, minute, calls in rows:
        if minute >= starts[key]:
            used[key] += calls
    return used


def budget_try_spend(*, budget: Budget, now: datetime, calls: int = 1) -> bool:
    """Take `calls` from the budget if they fit; False (and nothing taken) if they do not."""
    return budgets_try_spend(budgets=[budget], now=now, calls=calls) is None


def budgets_try_spend(*, budgets: list[Budget], now: datetime, calls: int = 1) -> Budget | None:
    """Take `calls` from every budget, or from none: the first budget without room, or None.

    One transaction: the limited keys are locked in sorted order (two syncs sharing budgets never
    wait on each other in a cycle), every limited budget is checked in one query, then one
    statement adds the calls to every key's bucket of this minute.
    """
    by_key: dict[str, Budget] = {}
    for budget in budgets:
        # A limited budget wins over a counting one of the same key.
        if budget.key not in by_key or by_key[budget.key].limit is None:
            by_key[budget.key] = budget
    if not by_key:
        return None
    with transaction.atomic():
        limited = [b for b in by_key.values() if b.limit is not None]
        # Only a limit needs its check and increment together; a count (a scope's calls, for
        # pacing) is one atomic upsert, and a lock on it would serialize every Meta call on the
        # app's key.
        for key in sorted(b.key for b in limited):
            _lock(key)
        used = budgets_used(budgets=limited, now=now)
        for budget in limited:
            assert budget.limit is not None
            if used[budget.key] + calls > budget.limit:
                return budget
        _buckets_add(keys=sorted(by_key), minute=_minute(now), calls=calls)
    return None


def _buckets_add(*, keys: list[str], minute: datetime, calls: int) -> None:
    """INSERT ... ON CONFLICT DO UPDATE for each key's bucket (PostgreSQL and SQLite alike)."""
    table = ApiCallBucket._meta.db_table
    rows = ", ".join(["(%s, %s, %s)"] * len(keys))
    params: list = []
    for key in keys:
        params += [key, minute, calls]
    with db.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (key, minute, calls) VALUES {rows} "  # (our own table name)
            f"ON CONFLICT (key, minute) DO UPDATE SET calls = {table}.calls + excluded.calls",
            params,
        )


def budget_available_at(*, budget: Budget, now: datetime, calls: int = 1, pending: int = 0) -> datetime:
    """The earliest time `calls` more calls fit, from what is recorded now plus `pending` calls
    promised but not made yet (the dispatcher's batch): those will be recorded this minute."""
    return available_at(budget=budget, buckets=budget_buckets(budget=budget, now=now), now=now, calls=calls + pending)


def budget_buckets(*, budget: Budget, now: datetime) -> list[tuple[datetime, int]]:
    """The budget's minute buckets in its window, oldest first."""
    return list(
        ApiCallBucket.objects.filter(key=budget.key, minute__gte=_window_start(budget, now))
        .order_by("minute")
        .values_list("minute", "calls")
    )


def available_at(*, budget: Budget, buckets: list[tuple[datetime, int]], now: datetime, calls: int = 1) -> datetime:
    """The earliest time `calls` more calls fit, given the budget's buckets (budget_buckets).

    Calls not recorded yet (set aside for a batch, or spread over the connections that wait)
    count as made this minute: each later one then finds its room a little later, as older
    buckets leave the window, so waiting connections resume spread out, not all at once.
    """
    if budget.limit is None:
        return now
    excess = sum(c for _, c in buckets) + calls - budget.limit
    if excess <= 0:
        return now
    for minute, bucket_calls in buckets:
        excess -= bucket_calls
        if excess <= 0:
            # That bucket leaves the window once the window starts after it.
            return minute + budget.window + MINUTE
    # Beyond the recorded calls: the unrecorded ones count as made this minute.
    return _minute(now) + budget.window + MINUTE


def api_call_buckets_prune(*, now: datetime, keep: timedelta = timedelta(days=2)) -> int:
    return ApiCallBucket.objects.filter(minute__lt=now - keep).delete()[0]


def describe_window(window: timedelta) -> str:
    if window == timedelta(hours=1):
        return "hour"
    if window == timedelta(days=1):
        return "24 hours"
    return f"{int(window.total_seconds())} s"
