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
import time
from datetime import datetime, timedelta

from django.db import connection as db
from django.db import transaction
from django.db.models import F, Sum

from syncing.models import ApiCallBucket
from syncing.providers.base import DeadlineExceeded, ThrottledError

MINUTE = timedelta(minutes=1)


@dataclasses.dataclass(frozen=True)
class Budget:
    key: str
    limit: int
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
    with transaction.atomic():
        _lock(budget.key)
        if budget_used(budget=budget, now=now) + calls > budget.limit:
            return False
        updated = ApiCallBucket.objects.filter(key=budget.key, minute=_minute(now)).update(calls=F("calls") + calls)
        if not updated:
            ApiCallBucket.objects.create(key=budget.key, minute=_minute(now), calls=calls)
    return True


def budget_available_at(*, budget: Budget, now: datetime, calls: int = 1, pending: int = 0) -> datetime:
    """The earliest time `calls` more calls fit, from what is recorded now plus `pending` calls
    promised but not made yet (the dispatcher's batch): those will be recorded this minute."""
    buckets = list(
        ApiCallBucket.objects.filter(key=budget.key, minute__gte=_window_start(budget, now))
        .order_by("minute")
        .values_list("minute", "calls")
    )
    if pending:
        buckets.append((_minute(now), pending))
    excess = sum(c for _, c in buckets) + calls - budget.limit
    if excess <= 0:
        return now
    for minute, bucket_calls in buckets:
        excess -= bucket_calls
        if excess <= 0:
            # That bucket leaves the window once the window starts after it.
            return minute + budget.window + MINUTE
    return now + budget.window + MINUTE


def api_call_buckets_prune(*, now: datetime, keep: timedelta = timedelta(days=2)) -> int:
    return ApiCallBucket.objects.filter(minute__lt=now - keep).delete()[0]


class CallMeter:
    """Handed to a provider for one sync: it calls spend() before every real API call (each page).

    When a budget would be exceeded it raises ThrottledError before the call is made, so the
    sync stops early and the connection resumes when the budget allows. With a deadline (a
    time.monotonic() value) no call starts after it (DeadlineExceeded), and call_timeout() gives
    each call only the time left, so a platform that never answers cannot hold a worker's slot
    past the sync's deadline, on any pool.
    """

    def __init__(self, budgets: list[Budget], *, clock, deadline: float | None = None, allowed_seconds: float = 0):
        self.budgets = budgets
        self.clock = clock
        self.calls = 0
        self.deadline = deadline
        self.allowed_seconds = allowed_seconds

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def past_deadline(self) -> bool:
        remaining = self.remaining()
        return remaining is not None and remaining <= 0

    def deadline_error(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"The platform did not answer within {self.allowed_seconds:.0f} s, so the sync was stopped. "
            "It runs again at its next scheduled time, or press Sync Now."
        )

    def call_timeout(self, default: float) -> float:
        """A call's timeout: its usual one, cut to what is left of the sync's time."""
        remaining = self.remaining()
        return default if remaining is None else max(0.1, min(default, remaining))

    def spend(self, calls: int = 1) -> None:
        if self.past_deadline():
            raise self.deadline_error()
        now = self.clock()
        spent: list[Budget] = []
        for budget in self.budgets:
            if not budget_try_spend(budget=budget, now=now, calls=calls):
                # Give back what this call took from the budgets checked before this one.
                for taken in spent:
                    ApiCallBucket.objects.filter(key=taken.key, minute=_minute(now)).update(calls=F("calls") - calls)
                raise ThrottledError(
                    f"Paused to stay within {budget.label} ({budget.limit} calls per {_describe(budget.window)}).",
                    until=budget_available_at(budget=budget, now=now, calls=calls),
                )
            spent.append(budget)
        self.calls += calls


def _describe(window: timedelta) -> str:
    if window == timedelta(hours=1):
        return "hour"
    if window == timedelta(days=1):
        return "24 hours"
    return f"{int(window.total_seconds())} s"
