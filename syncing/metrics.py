"""/metrics: the engine's state in the Prometheus text format, collected at scrape time.

Everything is read from the database (and the broker's queue lengths), never from one process's
memory, so any web process answers a scrape with the same totals however many gunicorn and
Celery processes there are, in however many containers. Counters come from sync_counters,
which the transaction that closes each run increments; gauges from the tables as they are now.
"""

from __future__ import annotations

import os
from collections import defaultdict
from datetime import datetime

from django.db.models import Count, Min
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from adsync.celery import app as celery_app
from connections.models import RUNNABLE_STATUSES, Connection, Provider, SyncStatus
from connections.status import Freshness, freshness_filters
from syncing.budget import Budget, budgets_used
from syncing.health import broker_redis
from syncing.models import Heartbeat, SyncCounter
from syncing.providers import PROVIDERS
from syncing.scopes import scope_states_in_force
from syncing.services import DURATION_BUCKETS, INF_BUCKET
from syncing.task_names import BULK_QUEUE, SYNC_QUEUE

QUEUES = (SYNC_QUEUE, BULK_QUEUE, "dispatch")


class EngineCollector(Collector):
    def __init__(self, *, now: datetime):
        self.now = now

    def collect(self):
        yield from self._sync_totals()
        yield self._schedule_lag()
        yield from self._queue_depth()
        yield from self._connections()
        yield from self._budgets()
        yield from self._scopes()
        yield self._heartbeats()

    def _sync_totals(self):
        syncs = CounterMetricFamily(
            "adsync_syncs", "Finished sync attempts, by provider and outcome.", labels=["provider", "outcome"]
        )
        calls = CounterMetricFamily(
            "adsync_platform_calls", "Platform API calls made by finished sync attempts.", labels=["provider"]
        )
        written = CounterMetricFamily(
            "adsync_metric_rows_written", "Metric rows written (changed) by syncs.", labels=["provider"]
        )
        duration = HistogramMetricFamily(
            "adsync_sync_duration_seconds",
            "How long sync attempts took, from start to finish (platform wait included).",
            labels=["provider", "outcome"],
        )
        per_series: dict[tuple[str, str], dict[float, tuple[int, float]]] = defaultdict(dict)
        calls_by_provider: dict[str, int] = defaultdict(int)
        written_by_provider: dict[str, int] = defaultdict(int)
        for row in SyncCounter.objects.values_list(
            "provider", "outcome", "le", "count", "duration_seconds_sum", "api_calls", "rows_written"
        ):
            provider, outcome, le, count, seconds, api_calls, rows = row
            per_series[(provider, outcome)][le] = (count, seconds)
            calls_by_provider[provider] += api_calls
            written_by_provider[provider] += rows
        for (provider, outcome), buckets in sorted(per_series.items()):
            total = sum(count for count, _ in buckets.values())
            syncs.add_metric([provider, outcome], total)
            cumulative, histogram = 0, []
            for bound in DURATION_BUCKETS:
                cumulative += buckets.get(bound, (0, 0.0))[0]
                histogram.append((_bound(bound), cumulative))
            histogram.append(("+Inf", total))
            duration.add_metric([provider, outcome], histogram, sum(s for _, s in buckets.values()))
        for provider in sorted(calls_by_provider):
            calls.add_metric([provider], calls_by_provider[provider])
            written.add_metric([provider], written_by_provider[provider])
        return [syncs, duration, calls, written]

    def _schedule_lag(self):
        oldest = Connection.objects.filter(
            sync_status__in=RUNNABLE_STATUSES, next_sync_at__isnull=False, next_sync_at__lte=self.now
        ).aggregate(oldest=Min("next_sync_at"))["oldest"]
        lag = GaugeMetricFamily(
            "adsync_schedule_lag_seconds",
            "Now minus the oldest due next_sync_at of a connection not yet queued (0 when none is due).",
        )
        lag.add_metric([], 0.0 if oldest is None else (self.now - oldest).total_seconds())
        return lag

    def _queue_depth(self):
        depth = GaugeMetricFamily("adsync_queue_depth", "Messages waiting in the broker's queue.", labels=["queue"])
        up = GaugeMetricFamily("adsync_broker_up", "1 when the broker answered this scrape, else 0.")
        try:
            lengths = queue_lengths()
        except Exception:  # redis-py and the OS raise their own; the rest of the scrape still counts
            lengths = None
        for queue, length in (lengths or {}).items():
            depth.add_metric([queue], length)
        up.add_metric([], 0 if lengths is None else 1)
        return [depth, up]

    def _connections(self):
        by_status = GaugeMetricFamily(
            "adsync_connections", "Connections by provider and sync status.", labels=["provider", "status"]
        )
        rows = Connection.objects.values_list("provider", "sync_status").annotate(n=Count("pk")).order_by()
        counts = {(provider, status): n for provider, status, n in rows}
        in_flight = GaugeMetricFamily("adsync_syncs_in_flight", "Connections syncing right now.")
        in_flight.add_metric([], sum(n for (_, status), n in counts.items() if status == SyncStatus.SYNCING))
        for (provider, status), n in sorted(counts.items()):
            by_status.add_metric([provider, status], n)
        freshness = GaugeMetricFamily(
            "adsync_connections_by_freshness",
            "Connections by freshness, judged against their schedule as the Settings page shows it.",
            labels=["freshness"],
        )
        for label, n in connections_by_freshness(now=self.now).items():
            freshness.add_metric([label], n)
        return [by_status, in_flight, freshness]

    def _budgets(self):
        used = GaugeMetricFamily(
            "adsync_platform_budget_used_calls", "Calls counted in the budget's rolling window.", labels=["budget"]
        )
        limit = GaugeMetricFamily(
            "adsync_platform_budget_limit_calls", "Calls the budget allows per rolling window.", labels=["budget"]
        )
        budgets = active_budgets()
        for key, calls in sorted(budgets_used(budgets=list(budgets.values()), now=self.now).items()):
            used.add_metric([key], calls)
            allowed = budgets[key].limit
            if allowed is not None:
                limit.add_metric([key], allowed)
        return [used, limit]

    def _scopes(self):
        """Shared platform limits (syncing.scopes): seconds until a throttle ends (0 while its
        probe is awaited), the usage the platform last reported, and the pace in force."""
        throttled = GaugeMetricFamily(
            "adsync_platform_scope_throttled_seconds",
            "Seconds until a shared platform throttle ends (0: over, awaiting its probe).",
            labels=["scope"],
        )
        usage = GaugeMetricFamily(
            "adsync_platform_scope_usage_percent", "The usage the platform last reported for a scope.", labels=["scope"]
        )
        pace = GaugeMetricFamily(
            "adsync_platform_scope_pace_calls", "Calls per window allowed while a scope is busy.", labels=["scope"]
        )
        for state in scope_states_in_force(now=self.now).values():
            if state.throttled_until is not None:
                throttled.add_metric([state.scope], max(0.0, (state.throttled_until - self.now).total_seconds()))
            if state.usage_pct is not None:
                usage.add_metric([state.scope], state.usage_pct)
            if state.pace_limit is not None:
                pace.add_metric([state.scope], state.pace_limit)
        return [throttled, usage, pace]

    def _heartbeats(self):
        ages = GaugeMetricFamily(
            "adsync_heartbeat_age_seconds",
            "Seconds since the dispatcher's last tick (kind scheduler) and each worker's last heartbeat.",
            labels=["kind", "name"],
        )
        for name, kind, seen in Heartbeat.objects.values_list("name", "kind", "last_seen_at").order_by("name"):
            ages.add_metric([kind, name], max(0.0, (self.now - seen).total_seconds()))
        return ages


def _bound(bound: float) -> str:
    return "+Inf" if bound == INF_BUCKET else repr(float(bound))


def connections_by_freshness(*, now: datetime) -> dict[str, int]:
    """connections.status.connection_freshness counted in one aggregate query, not row by row
    (its rule as database filters: connections.status.freshness_filters)."""
    counts = Connection.objects.aggregate(
        **{str(label): Count("pk", filter=condition) for label, condition in freshness_filters(now).items()}
    )
    return {str(label): counts[str(label)] for label in Freshness.values}


def active_budgets() -> dict[str, Budget]:
    """The rate budgets of every connected platform account (demo has none), by key."""
    budgets: dict[str, Budget] = {}
    accounts = (
        Connection.objects.exclude(provider=Provider.DEMO).values_list("provider", "external_account_id").distinct()
    )
    for provider, account in accounts:
        platform = PROVIDERS.get(provider)
        if platform is not None:
            for budget in platform.budgets(external_account_id=account):
                budgets[budget.key] = budget
    return budgets


def queue_lengths() -> dict[str, int]:
    """How many messages wait in each queue, asked of the broker itself."""
    with broker_redis() as client:
        if client is not None:
            return {queue: int(client.llen(queue)) for queue in QUEUES}
    if folder := celery_app.conf.broker_transport_options.get("data_folder_in"):
        # The embedded filesystem broker; kombu names each message file "<time>_<uuid>.<queue>.msg".
        names = os.listdir(folder)
        return {queue: sum(1 for n in names if n.endswith(f".{queue}.msg")) for queue in QUEUES}
    return {}


def metrics_registry(*, now: datetime) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(now=now))
    return registry
