"""Platform limits shared by many connections ("scopes"): their names, which connections are in
each, and the one home of the platform_scopes table's reads and writes.

A platform counts calls against more than the ad account: Meta against the app (code 4,
X-App-Usage), a business's use case (80000-80014, X-Business-Use-Case-Usage by business object id
and type) and the ad account (613, X-Ad-Account-Usage); Google against the developer token
(RESOURCE_EXHAUSTED with rate_scope DEVELOPER) and the customer. When one of them is throttled,
every connection in it would get the same answer: so the throttle is stored once, for the scope,
and consulted before any call (the dispatcher's claim, Sync Now, the worker's meter before each
request). A scope's connections are found from what the connections table already says (the
provider, the account id), plus the business scopes a connection was seen to count against
(Connection.throttle_scopes, learned from Meta's usage headers).

After the throttle's end one connection probes (a single call) while the others wait
SYNC_THROTTLE_PROBE_WAIT: the probe's answer lifts the throttle or renews it, so a resume is never
a stampede of a thousand calls into a platform that is still refusing them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Case, F, Q, Value, When

from connections.models import Connection
from syncing.budget import Budget
from syncing.models import PlatformScope

META_APP = "meta:app"
GOOGLE_DEVELOPER_TOKEN = "google:developer-token"


def meta_account_scope(number: str) -> str:
    return f"meta:account:{number}"


def meta_business_scope(object_id: str, use_case: str) -> str:
    return f"meta:business:{object_id}:{use_case or 'any'}"


def google_customer_scope(customer_id: str) -> str:
    return f"google:customer:{customer_id}"


def scope_label(scope: str) -> str:
    """How a scope is named to a person."""
    parts = scope.split(":")
    match parts:
        case ["meta", "app"]:
            return "the Meta app of this installation"
        case ["meta", "account", number]:
            return f"Meta ad account {number}"
        case ["meta", "business", object_id, use_case]:
            return f"Meta business {object_id} ({use_case})"
        case ["google", "developer-token"]:
            return "the Google Ads developer token of this installation"
        case ["google", "customer", customer_id]:
            return f"Google Ads customer {customer_id}"
    return scope


def scope_connections(scope: str) -> Q:
    """The connections a scope's throttle applies to, as a filter on the connections table."""
    parts = scope.split(":")
    match parts:
        case ["meta", "app"]:
            return Q(provider="meta")
        case ["meta", "account", number]:
            return Q(provider="meta", external_account_id__in=[number, f"act_{number}"])
        case ["meta", "business", object_id, _]:
            # The business object is the ad account itself for most Marketing API use cases;
            # otherwise the connections that saw it in their headers.
            learned = Q(throttle_scopes__icontains=f'"{scope}"')
            return Q(provider="meta") & (Q(external_account_id__in=[object_id, f"act_{object_id}"]) | learned)
        case ["google", "developer-token"]:
            return Q(provider="google")
        case ["google", "customer", customer_id]:
            return Q(provider="google", external_account_id=customer_id) | Q(
                provider="google", external_account_id=_dashed(customer_id)
            )
    return Q(pk__in=[])


def _dashed(customer_id: str) -> str:
    return f"{customer_id[:3]}-{customer_id[3:6]}-{customer_id[6:]}" if len(customer_id) == 10 else customer_id


def connection_scopes(*, provider: str, external_account_id: str, learned: Iterable[str] = ()) -> tuple[str, ...]:
    """Every scope a connection's calls count against: its provider's, then the learned ones."""
    # Imported here: the platform packages import this module for the scope names.
    from syncing.providers import PROVIDERS

    platform = PROVIDERS.get(provider)
    own = () if platform is None else platform.throttle_scopes(external_account_id=external_account_id)
    return tuple(dict.fromkeys([*own, *(s for s in learned if isinstance(s, str))]))


# --- reads ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ScopeState:
    scope: str
    throttled_until: datetime | None
    reason: str
    probe_connection_id: int | None
    probe_started_at: datetime | None
    usage_pct: float | None
    usage_reported_at: datetime | None
    pace_limit: int | None

    def throttled(self, now: datetime) -> bool:
        return self.throttled_until is not None and self.throttled_until > now

    def probing(self, now: datetime) -> bool:
        """The throttle's time is over but no call has confirmed it yet: one probe at a time."""
        return self.throttled_until is not None and self.throttled_until <= now

    def probe_free(self, now: datetime) -> bool:
        return self.probe_started_at is None or self.probe_started_at < now - probe_timeout()

    def pace(self, now: datetime, window: timedelta) -> int | None:
        """The calls per window allowed while the platform says the scope is busy; None if not."""
        if self.pace_limit is None or self.usage_reported_at is None:
            return None
        # A report older than the window says nothing about the calls in it now.
        return self.pace_limit if self.usage_reported_at > now - window else None


_STATE_FIELDS = tuple(f.name for f in dataclasses.fields(ScopeState))


def probe_timeout() -> timedelta:
    """A probe that has not answered by then (its worker died) lets another connection probe."""
    return timedelta(seconds=settings.SYNC_TASK_TIME_LIMIT + 30)


def scope_states(*, scopes: Iterable[str]) -> dict[str, ScopeState]:
    """The stored state of these scopes (only those with a row)."""
    keys = list(scopes)
    if not keys:
        return {}
    rows = PlatformScope.objects.filter(scope__in=keys).values_list(*_STATE_FIELDS)
    return {row[0]: ScopeState(*row) for row in rows}


def scope_states_in_force(*, now: datetime) -> dict[str, ScopeState]:
    """Every scope with a throttle (in force or awaiting its probe) or a pace: the few rows the
    dispatcher consults for a whole batch in one query."""
    window = usage_window()
    rows = PlatformScope.objects.filter(
        Q(throttled_until__isnull=False) | Q(pace_limit__isnull=False, usage_reported_at__gt=now - window)
    ).values_list(*_STATE_FIELDS)
    return {row[0]: ScopeState(*row) for row in rows}


def usage_window() -> timedelta:
    """The rolling window Meta's usage percentages are over (an hour)."""
    return timedelta(seconds=settings.META_USAGE_WINDOW_SECONDS)


def pace_key(scope: str) -> str:
    """The api_call_buckets key counting our calls in a scope (syncing.budget)."""
    return f"scope:{scope}"


def scope_pace_budget(*, scope: str, state: ScopeState | None, window: timedelta, now: datetime) -> Budget:
    """The budget our calls in a scope count against: limited to its pace while the platform
    says it is busy, a plain count otherwise (the meter's spend and the dispatcher's claim)."""
    return Budget(
        key=pace_key(scope),
        limit=None if state is None else state.pace(now, window),
        window=window,
        label=f"a pace that keeps {scope_label(scope)} under its platform limit",
    )


# --- writes --------------------------------------------------------------------------------------


def scopes_throttle(*, scopes: Iterable[str], until: datetime, reason: str, now: datetime) -> None:
    """Record a throttle on each scope (never shortening one already recorded), probe released.

    Runs in the caller's transaction (syncing.services.sync_defer / sync_finish), with the
    deferral of the scope's connections.
    """
    for scope in scopes:
        updated = PlatformScope.objects.filter(scope=scope).update(
            throttled_until=_later(until),
            reason=reason,
            probe_connection_id=None,
            probe_started_at=None,
            updated_at=now,
        )
        if not updated:
            try:
                with transaction.atomic():
                    PlatformScope.objects.create(scope=scope, throttled_until=until, reason=reason, updated_at=now)
            except IntegrityError:
                # Created by another worker meanwhile (the unique scope): update that row.
                PlatformScope.objects.filter(scope=scope).update(
                    throttled_until=_later(until), reason=reason, probe_connection_id=None, probe_started_at=None
                )


def _later(until: datetime) -> Case:
    return Case(When(throttled_until__gt=until, then=F("throttled_until")), default=Value(until))


def scope_probe_take(*, scope: str, connection_id: int, now: datetime) -> bool:
    """Make this connection the scope's one probe, if its throttle is over and no live probe runs.

    A row locked by a worker (renewing or lifting the throttle) is skipped, not waited for: the
    dispatcher holds the due connections' row locks meanwhile, and that worker may be about to
    defer them (a cycle). The next tick tries again."""
    free = Q(probe_started_at__isnull=True) | Q(probe_started_at__lt=now - probe_timeout())
    with transaction.atomic():
        row = (
            PlatformScope.objects.select_for_update(skip_locked=True)
            .filter(free, scope=scope, throttled_until__lte=now)
            .values_list("pk", flat=True)
            .first()
        )
        if row is None:
            return False
        PlatformScope.objects.filter(pk=row).update(
            probe_connection_id=connection_id, probe_started_at=now, updated_at=now
        )
    return True


def scopes_clear_after_answer(*, scopes: Iterable[str], now: datetime) -> int:
    """A call in these scopes was answered without a throttle: throttles that are over are lifted."""
    keys = list(scopes)
    if not keys:
        return 0
    return PlatformScope.objects.filter(scope__in=keys, throttled_until__lte=now).update(
        throttled_until=None, reason="", probe_connection_id=None, probe_started_at=None, updated_at=now
    )


def scopes_probe_release(*, connection_id: int, now: datetime) -> int:
    """The connection's probe ended without an answer either way: another connection may probe."""
    return PlatformScope.objects.filter(probe_connection_id=connection_id).update(
        probe_connection_id=None, probe_started_at=None, updated_at=now
    )


def scope_usage_record(*, scope: str, usage_pct: float, pace_limit: int | None, now: datetime) -> None:
    """What the platform said of a scope's usage, and the pace it gives (None: no pace)."""
    values = {"usage_pct": usage_pct, "usage_reported_at": now, "pace_limit": pace_limit, "updated_at": now}
    if PlatformScope.objects.filter(scope=scope).update(**values):
        return
    if pace_limit is None:
        return  # nothing to remember for a scope that is not busy
    try:
        with transaction.atomic():
            PlatformScope.objects.create(scope=scope, **values)
    except IntegrityError:
        PlatformScope.objects.filter(scope=scope).update(**values)


def connection_scopes_learn(*, connection_id: int, scopes: Iterable[str]) -> None:
    """Remember scopes a connection was seen to count against (not sync state: its own column)."""
    with transaction.atomic():
        current = (
            Connection.objects.select_for_update().filter(pk=connection_id).values_list("throttle_scopes", flat=True)
        )
        known = list(next(iter(current), None) or [])
        added = [s for s in scopes if s not in known]
        if added:
            Connection.objects.filter(pk=connection_id).update(throttle_scopes=[*known, *added])


def platform_scopes_prune(*, now: datetime) -> int:
    """Rows with nothing in force any more: no throttle, and no usage report in the window."""
    stale = Q(usage_reported_at__isnull=True) | Q(usage_reported_at__lt=now - usage_window())
    return PlatformScope.objects.filter(stale, throttled_until__isnull=True).delete()[0]
