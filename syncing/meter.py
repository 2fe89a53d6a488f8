"""The call meter: what a provider consults before every platform call of one sync, and tells
after every answer (syncing.budget's budgets, syncing.scopes' shared throttles and paces, the
sync's deadline and a cancel).

Apart from syncing.budget so that the platform packages can import Budget without importing
this module, which imports their base (and, through its package, every platform).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection as db

from syncing.budget import Budget, budget_available_at, budget_used, budgets_try_spend, describe_window
from syncing.providers.base import CANCELLED_MESSAGE, DeadlineExceeded, ScopeUsage, SyncCancelled, ThrottledError
from syncing.scopes import (
    ScopeState,
    connection_scopes_learn,
    scope_label,
    scope_pace_budget,
    scope_states,
    scope_usage_record,
)


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
        cancelled: Callable[[], bool] | None = None,
    ):
        self.budgets = budgets
        self.clock = clock
        self.calls = 0
        self.deadline = deadline
        self.allowed_seconds = allowed_seconds
        self.scopes = list(scopes)
        self.usage_window = usage_window
        self.connection_id = connection_id
        # Asked before every call: whether someone cancelled the sync meanwhile.
        self.cancelled = cancelled
        # What the last spend() read of the scopes (observe() writes only what changed).
        self.states: dict[str, ScopeState] = {}
        # A throttle the platform announced in an answer that still carried data: no further call
        # is made. If that was the sync's last call its rows are kept (the runner's sync_finish
        # with the throttle); otherwise the next spend() raises it and the sync ends rate limited.
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
        try:
            self._spend(calls)
        finally:
            # The platform call comes next: the database connection goes back to the pool for
            # its duration (with DB_POOL_MAX_SIZE, tens of syncs in flight share a few).
            release_connection()

    def _spend(self, calls: int) -> None:
        if self.past_deadline():
            raise self.deadline_error()
        if self.pending_throttle is not None:
            raise self.pending_throttle
        if self.cancelled is not None and self.cancelled():
            raise SyncCancelled(CANCELLED_MESSAGE)
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
                f"Paused to stay within {short.label} ({short.limit} calls per {describe_window(short.window)}).",
                until=budget_available_at(budget=short, now=now, calls=calls),
            )
        self.calls += calls

    def _scope_budget(self, scope: str, now: datetime) -> Budget:
        assert self.usage_window is not None
        return scope_pace_budget(scope=scope, state=self.states.get(scope), window=self.usage_window, now=now)

    def observe(self, usages: list[ScopeUsage], *, now: datetime) -> None:
        try:
            self._observe(usages, now=now)
        finally:
            release_connection()

    def _observe(self, usages: list[ScopeUsage], *, now: datetime) -> None:
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
                if _worth_recording(state, pace, now):
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


def release_connection() -> None:
    """Hand the thread's database connection back to the pool (DB_POOL_MAX_SIZE), so a sync
    waiting for a platform answer holds none; the next query takes one again. Outside a
    transaction only: inside one (a test's, or a caller's) the connection is kept."""
    if getattr(db, "pool", None) is not None and not db.in_atomic_block:
        db.close()


def _worth_recording(state: ScopeState | None, pace: int, now: datetime) -> bool:
    """Whether a new pace is worth a write of the scope's row, which every worker's answers in a
    busy scope would otherwise rewrite on every call: when there is none yet, when it moved by
    more than a tenth, or when the last report is a minute old (a pace older than the window
    lapses)."""
    if state is None or state.pace_limit is None or state.usage_reported_at is None:
        return True
    return abs(pace - state.pace_limit) > state.pace_limit / 10 or now - state.usage_reported_at >= timedelta(minutes=1)
