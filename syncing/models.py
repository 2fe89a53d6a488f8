from django.db import models
from django.db.models import F, Q

from connections.models import Connection, ErrorKind, SyncTrigger

# Money and conversions are exact decimals. Six places hold Google's micros exactly.
MONEY = {"max_digits": 20, "decimal_places": 6}


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
