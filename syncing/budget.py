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

from django.conf import settings
from django.db import connection as db
from django.db import transaction
from django.db.models import Sum

from syncing.models import ApiCallBucket
from syncing.providers.base import DeadlineExceeded, ScopeUsage, ThrottledError
from syncing.scopes import (
    ScopeState,
    connection_scopes_learn,
    pace_key,
    scope_label,
    scope_states,
    scope_usage_record,
)

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

    One transaction: the keys are locked in sorted order (two syncs sharing budgets never wait
    on each other in a cycle), every limited budget is checked in one query, then one statement
    adds the calls to every key's bucket of this minute.
    """
    by_key: dict[str, Budget] = {}
    for budget in budgets:
        # A limited budget wins over a counting one of the same key.
        if budget.key not in by_key or by_key[budget.key].limit is None:
            by_key[budget.key] = budget
    if not by_key:
        return None
    with transaction.atomic():
        for key in sorted(by_key):
            _lock(key)
        limited = [b for b in by_key.values() if b.limit is not None]
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


class CallMeter:
    """Handed to a provider for one sync: it calls spend() before every real API call (each page),
    and observe() with what the platform said of its usage after every answer.

    spend() raises ThrottledError before the call is made when a budget would be exceeded, or
    when a scope the connection counts against is throttled (syncing.scopes), so the sync stops
    early and the connection resumes when it may. With a deadline (a time.monotonic() value) no
    call starts after it (DeadlineExceeded), and call_timeout() gives each call only the time
    left, so a platform that never answers cannot hold a worker's slot past the sync's deadline,
    on any pool.

    With `usage_window` (a platform that reports usage: Meta), every call is also counted per
    scope, and a scope the platform reports busy is paced: at most `pace_limit` calls per window.
    """

    def __init__(
        self,
        budgets: list[Budget],
        *,
        clock,
        deadline: float | None = None,
        allowed_seconds: float = 0,
        scopes: tuple[str, ...] = (),
        usage_window: timedelta | None = None,
        connection_id: int | None = None,
    ):
        self.budgets = budgets
        self.clock = clock
        self.calls = 0
        self.deadline = deadline
        self.allowed_seconds = allowed_seconds
        self.scopes = list(scopes)
        self.usage_window = usage_window
        self.connection_id = connection_id
        # What the last spend() read of the scopes (observe() writes only what changed).
        self.states: dict[str, ScopeState] = {}
        # A throttle the platform announced in an answer that still carried data: the sync keeps
        # that data, makes no further call, and the connection (and the scope) then wait.
        self.pending_throttle: ThrottledError | None = None

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
        if self.pending_throttle is not None:
            raise self.pending_throttle
        now = self.clock()
        budgets = list(self.budgets)
        if self.scopes:
            self.states = scope_states(scopes=self.scopes)
            throttled = [state for state in self.states.values() if state.throttled(now)]
            if throttled:
                # Another connection's call found the scope throttled: no call, the same resume time.
                latest = max(throttled, key=lambda state: state.throttled_until or now)
                raise ThrottledError(
                    f"Paused: {latest.reason or scope_label(latest.scope) + ' is rate limited'}",
                    until=latest.throttled_until,
                )
            if self.usage_window is not None:
                budgets += [self._scope_budget(scope, now) for scope in self.scopes]
        short = budgets_try_spend(budgets=budgets, now=now, calls=calls)
        if short is not None:
            raise ThrottledError(
                f"Paused to stay within {short.label} ({short.limit} calls per {_describe(short.window)}).",
                until=budget_available_at(budget=short, now=now, calls=calls),
            )
        self.calls += calls

    def _scope_budget(self, scope: str, now: datetime) -> Budget:
        assert self.usage_window is not None
        state = self.states.get(scope)
        pace = None if state is None else state.pace(now, self.usage_window)
        return Budget(
            key=pace_key(scope),
            limit=pace,
            window=self.usage_window,
            label=f"a pace that keeps {scope_label(scope)} under its platform limit",
        )

    def observe(self, usages: list[ScopeUsage], *, now: datetime) -> None:
        """What one answer said of each scope's usage: throttled (no further call), busy (paced
        from now on, for every connection in the scope), or calm again (the pace lifted)."""
        if not usages or self.usage_window is None:
            return
        learned = [u.scope for u in usages if u.scope not in self.scopes]
        if learned:
            if self.connection_id is not None:
                connection_scopes_learn(connection_id=self.connection_id, scopes=learned)
            self.scopes += learned
            # The call that answered counted in these scopes too, though spend() did not know them.
            counted = [dataclasses.replace(self._scope_budget(scope, now), limit=None) for scope in learned]
            budgets_try_spend(budgets=counted, now=now)
        throttled = [u for u in usages if u.throttled]
        if throttled:
            until = now + max(u.regain or default_pause() for u in throttled)
            names = ", ".join(scope_label(u.scope) for u in throttled)
            self.pending_throttle = ThrottledError(
                f"{names} reached {max(u.percent for u in throttled):.0f} % of its limit; paused until it recovers.",
                until=until,
                scopes=tuple(u.scope for u in throttled),
            )
            return
        for usage in usages:
            state = self.states.get(usage.scope)
            if usage.percent >= settings.META_USAGE_SLOWDOWN_PCT:
                made = budget_used(budget=self._scope_budget(usage.scope, now), now=now)
                # Our calls in the window were `usage.percent` of the limit: keep to the target.
                pace = max(1, int(made * settings.META_USAGE_TARGET_PCT / usage.percent))
                if state is None or state.pace_limit != pace or state.usage_pct != usage.percent:
                    self._record(usage, pace, now)
            elif state is not None and state.pace_limit is not None:
                self._record(usage, None, now)

    def _record(self, usage: ScopeUsage, pace: int | None, now: datetime) -> None:
        scope_usage_record(scope=usage.scope, usage_pct=usage.percent, pace_limit=pace, now=now)
        previous = self.states.get(usage.scope)
        self.states[usage.scope] = (
            dataclasses.replace(previous, usage_pct=usage.percent, usage_reported_at=now, pace_limit=pace)
            if previous is not None
            else ScopeState(usage.scope, None, "", None, None, usage.percent, now, pace)
        )


def default_pause() -> timedelta:
    """How long a throttle lasts when the platform gives no estimate."""
    return timedelta(minutes=settings.META_PAUSE_MINUTES)


def _describe(window: timedelta) -> str:
    if window == timedelta(hours=1):
        return "hour"
    if window == timedelta(days=1):
        return "24 hours"
    return f"{int(window.total_seconds())} s"
