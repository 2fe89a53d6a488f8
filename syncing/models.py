from typing import TypedDict

from django.db import models
from django.db.models import F, Q

from connections.models import Connection, ErrorKind, SyncTrigger


class _DecimalShape(TypedDict):
    max_digits: int
    decimal_places: int


# Money and conversions are exact decimals. Six places hold Google's micros exactly.
MONEY: _DecimalShape = {"max_digits": 20, "decimal_places": 6}


class MetricLevel(models.TextChoices):
    CAMPAIGN = "campaign", "Campaign"
    ADSET = "adset", "Ad set"
    AD = "ad", "Ad"


class DailyMetric(models.Model):
    """One entity's metrics for one day, in the ad account's time zone and currency."""

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="metrics")
    level = models.CharField(max_length=16, choices=MetricLevel.choices, default=MetricLevel.CAMPAIGN)
    entity_id = models.CharField(max_length=64)
    date = models.DateField()
    entity_name = models.CharField(max_length=400, blank=True, default="")
    spend = models.DecimalField(**MONEY, default=0)
    impressions = models.BigIntegerField(default=0)
    clicks = models.BigIntegerField(default=0)
    conversions = models.DecimalField(**MONEY, default=0)
    conversion_value = models.DecimalField(**MONEY, default=0)
    currency = models.CharField(max_length=3)
    # When these values last changed (set only by a write that changed something).
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "daily_metrics"
        constraints = [
            # The key syncing.persist writes against (MERGE / ON CONFLICT).
            models.UniqueConstraint(
                fields=["connection", "level", "entity_id", "date"],
                name="syncing_dailymetric_unique_key",
            ),
            models.CheckConstraint(
                condition=Q(spend__gte=0, impressions__gte=0, clicks__gte=0),
                name="syncing_dailymetric_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.entity_name or self.entity_id} {self.date}"


class SyncOutcome(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCESS = "success", "Success"
    ERROR = "error", "Error"
    RETRYING = "retrying", "Retrying"
    RATE_LIMITED = "rate_limited", "Rate limited"
    INTERRUPTED = "interrupted", "Interrupted"


class JobStatus(models.TextChoices):
    """What became of a sync job (GET /jobs/{id}, manage.py sync_now): while its connection holds
    it, the connection's state; afterwards, its last attempt's outcome (syncing.selectors.job_state)."""

    QUEUED = "queued", "Queued"
    SYNCING = "syncing", "Syncing"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    RATE_LIMITED = "rate_limited", "Rate limited"
    INTERRUPTED = "interrupted", "Interrupted"


class SyncWindow(models.TextChoices):
    RECENT = "recent", "Recent days"
    LOOKBACK = "lookback", "Lookback (restatement)"


class SyncRun(models.Model):
    """One attempt to sync one connection: the history behind the connection's counters."""

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="sync_runs")
    job_id = models.UUIDField()
    trigger = models.CharField(max_length=16, choices=SyncTrigger.choices)
    window = models.CharField(max_length=16, choices=SyncWindow.choices, default=SyncWindow.RECENT)
    window_since = models.DateField(null=True, blank=True)
    window_until = models.DateField(null=True, blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=SyncOutcome.choices, default=SyncOutcome.RUNNING)
    api_calls = models.PositiveIntegerField(default=0)
    rows_fetched = models.PositiveIntegerField(default=0)
    rows_written = models.PositiveIntegerField(default=0)
    error_class = models.CharField(max_length=32, choices=ErrorKind.choices, blank=True, default="")
    error_message = models.TextField(blank=True, default="")

    class Meta:
        db_table = "sync_runs"
        ordering = ["-started_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(rows_written__lte=F("rows_fetched")),
                name="syncing_syncrun_written_within_fetched",
            ),
            models.CheckConstraint(
                condition=Q(finished_at__isnull=True) | Q(finished_at__gte=F("started_at")),
                name="syncing_syncrun_finished_after_start",
            ),
        ]
        indexes = [
            # History of one connection, newest first (API, admin, sync_status).
            models.Index(fields=["connection", "-started_at"], name="syncing_run_conn_started_idx"),
            # Finishing and recovering the run of a job.
            models.Index(fields=["job_id"], name="syncing_run_job_idx"),
            # syncing.services.sync_runs_prune.
            models.Index(fields=["started_at"], name="syncing_run_started_idx"),
            # syncing.services.syncs_recover_stuck, on every dispatcher tick: only running runs.
            models.Index(fields=["started_at"], condition=Q(outcome="running"), name="syncing_run_running_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.connection_id} {self.started_at:%Y-%m-%d %H:%M:%S} {self.outcome}"

    @property
    def duration_seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class ApiCallBucket(models.Model):
    """Calls made against one rate budget in one minute (syncing.budget sums a rolling window)."""

    key = models.CharField(max_length=128)
    minute = models.DateTimeField()
    calls = models.PositiveIntegerField(default=0)

    class Meta:
        db_table = "api_call_buckets"
        constraints = [
            # syncing.budget: the upsert target, and the index its rolling-window SUM reads.
            models.UniqueConstraint(fields=["key", "minute"], name="syncing_apicallbucket_unique_minute"),
        ]

    def __str__(self) -> str:
        return f"{self.key} {self.minute:%H:%M} {self.calls}"


class HeartbeatKind(models.TextChoices):
    SCHEDULER = "scheduler", "Scheduler"
    SYNC_WORKER = "sync_worker", "Sync worker"
    WORKER = "worker", "Other worker"


# The heartbeat the dispatcher records on each tick (one row for the whole installation).
SCHEDULER_HEARTBEAT = "scheduler"


class Heartbeat(models.Model):
    """The last sign of life of an engine process: the dispatcher's last tick (one row, named
    "scheduler") and each Celery worker's periodic beat (a row per worker hostname).

    /readyz, the Settings page's banner and /metrics read these; syncing.services writes them.
    """

    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=HeartbeatKind.choices)
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    # What the process says about itself (pid, concurrency, queues), for operators.
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "heartbeats"
        constraints = [
            # syncing.services.heartbeat_record updates by name, inserting only the first time.
            models.UniqueConstraint(fields=["name"], name="syncing_heartbeat_unique_name"),
            models.CheckConstraint(condition=Q(kind__in=HeartbeatKind.values), name="syncing_heartbeat_kind_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.last_seen_at:%H:%M:%S}"


class SyncCounter(models.Model):
    """Monotonic totals of finished sync attempts for /metrics, by provider, outcome and duration
    bucket (`le`, the smallest histogram bound the duration fits under; +Inf stored as -1).

    Counted in the database, in the same transaction that closes the run, so the totals are
    exact and the same whichever web process answers a scrape, however many workers there are.
    """

    provider = models.CharField(max_length=16)
    outcome = models.CharField(max_length=16, choices=SyncOutcome.choices)
    le = models.FloatField()
    count = models.BigIntegerField(default=0)
    duration_seconds_sum = models.FloatField(default=0)
    api_calls = models.BigIntegerField(default=0)
    rows_written = models.BigIntegerField(default=0)

    class Meta:
        db_table = "sync_counters"
        constraints = [
            # The upsert target of syncing.services (INSERT ... ON CONFLICT ... DO UPDATE).
            models.UniqueConstraint(fields=["provider", "outcome", "le"], name="syncing_synccounter_unique_series"),
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.outcome} le={self.le} {self.count}"


class PlatformScope(models.Model):
    """A platform's limit shared by many connections, and what the platform last said about it.

    A scope is one of the things a platform counts calls against: Meta's app, a business's use
    case (business id and type) and an ad account; Google's developer token and a customer
    (syncing.scopes names them). A row exists only for a scope the platform has throttled or
    reported as busy:

    - `throttled_until`: no call in the scope before then. Every connection in it is deferred
      without a call, each showing this resume time. After it, one connection probes (the
      `probe_*` columns) while the rest wait; the probe's answer lifts or renews the throttle.
    - `pace_limit`: while the platform's usage headers say the scope is busy (usage_pct at or
      above META_USAGE_SLOWDOWN_PCT), at most this many calls per rolling hour in the scope,
      estimated from our own calls and the reported percentage, so usage stays under 100 %.
    """

    scope = models.CharField(max_length=200)
    throttled_until = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True, default="")
    probe_connection_id = models.BigIntegerField(null=True, blank=True)
    probe_started_at = models.DateTimeField(null=True, blank=True)
    usage_pct = models.FloatField(null=True, blank=True)
    usage_reported_at = models.DateTimeField(null=True, blank=True)
    pace_limit = models.PositiveIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "platform_scopes"
        constraints = [
            models.UniqueConstraint(fields=["scope"], name="syncing_platformscope_unique_scope"),
            models.CheckConstraint(
                condition=Q(pace_limit__isnull=True) | Q(pace_limit__gte=1),
                name="syncing_platformscope_pace_positive",
            ),
        ]

    def __str__(self) -> str:
        return self.scope
