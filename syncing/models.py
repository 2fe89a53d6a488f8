import uuid
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
    CANCELLED = "cancelled", "Cancelled"


class JobStatus(models.TextChoices):
    """What became of a sync job (GET /jobs/{id}, manage.py sync_now): while its connection holds
    it, the connection's state; afterwards, its last attempt's outcome (syncing.selectors.job_state)."""

    QUEUED = "queued", "Queued"
    SYNCING = "syncing", "Syncing"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    RATE_LIMITED = "rate_limited", "Rate limited"
    INTERRUPTED = "interrupted", "Interrupted"
    CANCELLED = "cancelled", "Cancelled"


class SyncWindow(models.TextChoices):
    RECENT = "recent", "Recent days"
    LOOKBACK = "lookback", "Lookback (restatement)"


class SyncRun(models.Model):
    """One attempt to sync one connection: the history behind the connection's counters."""

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="sync_runs")
    # The run's id in URLs and the API (a job's retries share its job_id; the pk stays internal).
    public_id = models.UUIDField(default=uuid.uuid4, editable=False)
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
            # The API's lookup of one run (connections.api, syncing.selectors.sync_run_for_connection).
            models.UniqueConstraint(fields=["public_id"], name="syncing_syncrun_unique_public_id"),
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


class SyncChange(models.Model):
    """One metric row a run inserted or changed, with its values before and after: the change ledger.

    syncing.persist writes it with the metrics, in the same statement on PostgreSQL and the same
    transaction on SQLite, so a run's changes are exactly its rows_written; unchanged rows leave
    none. It goes with its run (CASCADE), so it is kept exactly as long as the runs are.
    """

    run = models.ForeignKey(
        SyncRun,
        on_delete=models.CASCADE,
        related_name="changes",
        # The unique constraint below starts with the run, so it serves the run's lookups and
        # the cascade from sync_runs_prune; a second index on run alone would only cost writes.
        db_index=False,
    )
    level = models.CharField(max_length=16, choices=MetricLevel.choices)
    entity_id = models.CharField(max_length=64)
    entity_name = models.CharField(max_length=400, blank=True, default="")
    date = models.DateField()
    # A row the run inserted: every old value is null.
    added = models.BooleanField()
    # A stored value of a day before yesterday (in the account's time zone when the run
    # started) changed: the platform restated it (attribution), rather than the day still
    # filling up. Never an added row: a first sync backfills weeks of those.
    restated = models.BooleanField()
    # Only the fields that changed, as {"conversions": ["41", "44"]}: old and new as strings
    # (decimals exact, trailing zeros trimmed), old null for an added row.
    diff = models.JSONField()

    class Meta:
        db_table = "sync_changes"
        constraints = [
            # One row per metric row per run; in this order it also serves the run's changes in
            # date order (syncing.selectors.sync_changes_for_run) and their summary by day.
            models.UniqueConstraint(fields=["run", "date", "level", "entity_id"], name="syncing_syncchange_unique_row"),
        ]

    def __str__(self) -> str:
        return f"{self.entity_name or self.entity_id} {self.date}"


class BackfillStatus(models.TextChoices):
    PENDING = "pending", "Pending"  # no day fetched yet
    RUNNING = "running", "Running"  # some days fetched, more to go
    DONE = "done", "Done"
    CANCELLED = "cancelled", "Cancelled"
    FAILED = "failed", "Failed"


# A backfill the dispatcher still claims chunks of; at most one per connection.
BACKFILL_ACTIVE = (BackfillStatus.PENDING, BackfillStatus.RUNNING)


class Backfill(models.Model):
    """A re-sync of a chosen date range of one connection (syncing.services.backfill_request).

    It runs as chunks of `backfill_chunk_days` (the provider's), each an ordinary sync job of the
    connection with the trigger "backfill", newest days first, so recent history lands first.
    `cursor` is the newest day not fetched yet: it starts at `until`, and every finished chunk
    moves it to the day before the chunk's first day; the backfill is done once it passes `since`
    (cursor = since - 1 day). Whether a chunk is in flight is the connection's state (queued or
    syncing with queued_trigger "backfill"), not a status here, so nothing here can be left
    "running" by a dead worker: recovery returns the connection, and the chunk runs again.
    """

    public_id = models.UUIDField(default=uuid.uuid4, editable=False)
    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="backfills")
    # Days in the ad account's time zone, like DailyMetric.date.
    since = models.DateField()
    until = models.DateField()
    status = models.CharField(max_length=16, choices=BackfillStatus.choices, default=BackfillStatus.PENDING)
    cursor = models.DateField()
    days_total = models.PositiveIntegerField()
    days_done = models.PositiveIntegerField(default=0)
    # The earliest the next chunk may be claimed: the spacing after a chunk, a rate budget or a
    # platform throttle, a transient failure's backoff. Only the backfill waits, never the
    # connection's own schedule.
    not_before = models.DateTimeField()
    # Transient failures in a row (reset by a chunk that succeeds); the backoff grows with them.
    failures = models.PositiveSmallIntegerField(default=0)
    # Why the backfill failed, or why its next chunk waits (a throttle, a temporary failure).
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "backfills"
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["public_id"], name="syncing_backfill_unique_public_id"),
            # One active backfill per connection: asking again returns it (backfill_request). Also
            # the index behind "the connection's active backfill" (sync_start, backfill_request).
            models.UniqueConstraint(
                fields=["connection"],
                condition=Q(status__in=BACKFILL_ACTIVE),
                name="syncing_backfill_one_active_per_connection",
            ),
            models.CheckConstraint(condition=Q(since__lte=F("until")), name="syncing_backfill_since_not_after_until"),
            models.CheckConstraint(condition=Q(cursor__lte=F("until")), name="syncing_backfill_cursor_within_range"),
            models.CheckConstraint(
                condition=Q(days_done__lte=F("days_total")), name="syncing_backfill_done_within_total"
            ),
            models.CheckConstraint(condition=Q(status__in=BackfillStatus.values), name="syncing_backfill_status_valid"),
            # Finished exactly when it is over.
            models.CheckConstraint(
                condition=Q(status__in=BACKFILL_ACTIVE, finished_at__isnull=True)
                | (~Q(status__in=BACKFILL_ACTIVE) & Q(finished_at__isnull=False)),
                name="syncing_backfill_finished_when_over",
            ),
        ]
        indexes = [
            # syncing.dispatcher.backfills_claim_ready, on every tick: only active backfills, so
            # the check costs as many rows as backfills are in progress, whatever the history.
            models.Index(
                fields=["not_before"], condition=Q(status__in=BACKFILL_ACTIVE), name="syncing_backfill_ready_idx"
            ),
            # syncing.selectors.backfills_for_connection: a connection's backfills, newest first.
            models.Index(fields=["connection", "-created_at"], name="syncing_backfill_conn_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.connection_id} {self.since}..{self.until} {self.status}"

    @property
    def active(self) -> bool:
        return self.status in BACKFILL_ACTIVE

    @property
    def progress(self) -> float:
        """Days done as a fraction of the range, 0.0 to 1.0."""
        return self.days_done / self.days_total if self.days_total else 1.0

    @property
    def progress_text(self) -> str:
        """ "12 of 90 days" ("1 of 1 day")."""
        noun = "day" if self.days_total == 1 else "days"
        return f"{self.days_done} of {self.days_total} {noun}"
