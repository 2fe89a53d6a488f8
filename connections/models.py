import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from connections.fields import EncryptedJSONField


class Workspace(models.Model):
    """A team (an agency or an advertiser). Connections belong to a workspace, not to a person."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="workspaces")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        MEMBER = "member", "Member"

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workspace", "user"], name="connections_membership_unique_user"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.workspace} ({self.role})"


class Provider(models.TextChoices):
    META = "meta", "Meta"
    GOOGLE = "google", "Google"
    DEMO = "demo", "Demo"


class SyncFrequency(models.TextChoices):
    # The values are the spec's API contract: exactly these five strings.
    MANUAL = "manual", "Manual"
    REALTIME = "realtime", "Realtime"
    EVERY_30_MIN = "30min", "Every 30 min"
    HOURLY = "hourly", "Hourly"
    DAILY = "daily", "Daily"


SYNC_INTERVALS: dict[str, timedelta | None] = {
    SyncFrequency.MANUAL: None,
    SyncFrequency.REALTIME: timedelta(seconds=30),
    SyncFrequency.EVERY_30_MIN: timedelta(minutes=30),
    SyncFrequency.HOURLY: timedelta(hours=1),
    SyncFrequency.DAILY: timedelta(days=1),
}


class SyncStatus(models.TextChoices):
    IDLE = "idle", "Idle"
    QUEUED = "queued", "Queued"
    SYNCING = "syncing", "Syncing"
    ERROR = "error", "Error"


# A job may be enqueued only from these; asking while queued or syncing returns the running job.
RUNNABLE_STATUSES = (SyncStatus.IDLE, SyncStatus.ERROR)
BUSY_STATUSES = (SyncStatus.QUEUED, SyncStatus.SYNCING)


class ErrorKind(models.TextChoices):
    """What kind of failure a sync ended in (the provider error classes, plus recovery's)."""

    AUTH = "auth", "Access expired"  # waits for a reconnect
    PERMANENT = "permanent", "Refused"
    TRANSIENT = "transient", "Temporary failure"
    THROTTLED = "throttled", "Rate limited"
    INTERRUPTED = "interrupted", "Interrupted"
    CANCELLED = "cancelled", "Cancelled"  # a run someone cancelled (never a connection's last error)


# last_sync_error_kind of a connection whose access expired or was revoked: it waits for a reconnect.
AUTH_ERROR_KIND = ErrorKind.AUTH


class PauseReason(models.TextChoices):
    """Why a connection's automated syncs are paused (its frequency is kept for the resume)."""

    USER = "user", "Paused"
    WORKSPACE = "workspace", "All automated syncs stopped"
    FAILURES = "failures", "Paused after repeated failures"


class SyncTrigger(models.TextChoices):
    MANUAL = "manual", "Manual"
    SCHEDULED = "scheduled", "Scheduled"
    # A chunk of a backfill (syncing.models.Backfill): a job of the connection like the others,
    # but its window is the backfill's next chunk and it leaves the schedule alone.
    BACKFILL = "backfill", "Backfill"


class Connection(models.Model):
    """One connected ad account and its sync state. The state machine is in syncing/services.py."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="connections")
    provider = models.CharField(max_length=16, choices=Provider.choices)
    external_account_id = models.CharField(max_length=64)
    name = models.CharField(max_length=200)
    currency = models.CharField(max_length=3, default="USD")
    timezone = models.CharField(max_length=64, default="UTC")
    credentials = EncryptedJSONField()
    credentials_expires_at = models.DateTimeField(null=True, blank=True)
    # When the credentials were last replaced (a reconnect): a sync that started with older ones
    # and fails on expired access must not undo the reconnect (syncing.services.sync_fail).
    credentials_updated_at = models.DateTimeField(null=True, blank=True)
    # How many days back a restatement sync re-fetches; null means the provider's default.
    lookback_days = models.PositiveSmallIntegerField(null=True, blank=True)
    provider_options = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    # --- sync tracking: the spec's fields, named as the API returns them ---
    sync_frequency = models.CharField(max_length=16, choices=SyncFrequency.choices, default=SyncFrequency.MANUAL)
    sync_status = models.CharField(max_length=16, choices=SyncStatus.choices, default=SyncStatus.IDLE)
    last_sync_attempted_at = models.DateTimeField(null=True, blank=True)
    last_sync_completed_at = models.DateTimeField(null=True, blank=True)
    last_metrics_changed_at = models.DateTimeField(null=True, blank=True)
    total_syncs_attempted = models.PositiveIntegerField(default=0)
    total_syncs_with_changes = models.PositiveIntegerField(default=0)
    # null, not "": the spec returns `"last_sync_error": null` when the last sync succeeded.
    last_sync_error = models.TextField(null=True, blank=True)  # noqa: DJ001
    # The kind of the last error (auth, permanent, transient, interrupted), so the Settings page
    # can offer "Reconnect" for expired access without parsing the message.
    last_sync_error_kind = models.CharField(max_length=16, choices=ErrorKind.choices, blank=True, default="")

    # --- what the engine needs ---
    job_id = models.UUIDField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    queued_trigger = models.CharField(max_length=16, choices=SyncTrigger.choices, blank=True, default="")
    # When the next scheduled sync is due; null for manual connections.
    next_sync_at = models.DateTimeField(null=True, blank=True)
    rate_limited_until = models.DateTimeField(null=True, blank=True)
    # Automated syncs paused (next_sync_at is null meanwhile); the frequency is kept, so resuming
    # brings the schedule back as it was. Sync Now still works while paused.
    paused_at = models.DateTimeField(null=True, blank=True)
    # Someone asked to cancel the running sync: it stops before its next platform call and
    # writes nothing (syncing.services.connection_cancel_sync); cleared when the sync ends.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    pause_reason = models.CharField(max_length=16, choices=PauseReason.choices, blank=True, default="")
    # Shared platform limits this connection was found to count against besides those its
    # provider and account id imply (a Meta business's use case, from the usage headers).
    throttle_scopes = models.JSONField(default=list, blank=True)
    last_restated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # The spec's operations lines (`SELECT sync_frequency FROM connections;`) name this table.
        db_table = "connections"
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["workspace", "provider", "external_account_id"],
                name="connections_connection_unique_account",
            ),
            models.CheckConstraint(
                condition=Q(sync_frequency__in=SyncFrequency.values),
                name="connections_connection_frequency_valid",
            ),
            models.CheckConstraint(
                condition=Q(sync_status__in=SyncStatus.values),
                name="connections_connection_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(provider__in=Provider.values),
                name="connections_connection_provider_valid",
            ),
            models.CheckConstraint(
                condition=Q(last_sync_error_kind__in=["", *ErrorKind.values]),
                name="connections_connection_error_kind_valid",
            ),
            # A queued or syncing connection always has the job that owns it.
            models.CheckConstraint(
                condition=~Q(sync_status__in=BUSY_STATUSES) | Q(job_id__isnull=False, queued_at__isnull=False),
                name="connections_connection_busy_has_job",
            ),
            # Manual connections are never picked up by the dispatcher.
            models.CheckConstraint(
                condition=~Q(sync_frequency=SyncFrequency.MANUAL) | Q(next_sync_at__isnull=True),
                name="connections_connection_manual_not_scheduled",
            ),
            # A paused connection is never picked up by the dispatcher, and says why it is paused.
            models.CheckConstraint(
                condition=Q(paused_at__isnull=True, pause_reason="")
                | Q(paused_at__isnull=False, pause_reason__in=PauseReason.values, next_sync_at__isnull=True),
                name="connections_connection_paused_not_scheduled",
            ),
            models.CheckConstraint(
                condition=Q(total_syncs_with_changes__lte=F("total_syncs_attempted")),
                name="connections_connection_changes_within_attempts",
            ),
        ]
        indexes = [
            # syncing.dispatcher.connections_claim_due: due rows, oldest first. Partial, so its
            # size and the claim's cost follow the number of schedulable rows that are due soon,
            # and queued/syncing rows (whose next_sync_at may be past) are never scanned.
            models.Index(
                fields=["next_sync_at"],
                condition=Q(sync_status__in=RUNNABLE_STATUSES, next_sync_at__isnull=False),
                name="connections_due_idx",
            ),
            # syncing.services.syncs_recover_stuck: the few busy rows, by when they were queued.
            models.Index(
                fields=["queued_at"],
                condition=Q(sync_status__in=BUSY_STATUSES),
                name="connections_busy_idx",
            ),
            # syncing.selectors.job_get_for_user: GET /jobs/{job_id}, which scripts poll.
            models.Index(fields=["job_id"], name="connections_job_idx"),
            # alerts.selectors.connections_in_error, every alert evaluation: only failing rows,
            # so it reads as many rows as are failing, however many connections there are.
            models.Index(
                fields=["last_sync_error_kind"],
                condition=Q(sync_status=SyncStatus.ERROR),
                name="connections_error_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_provider_display()} {self.external_account_id})"


class ApiToken(models.Model):
    """A revocable API key. Only its SHA-256 is stored: the key is shown once, when issued."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True, default="")
    # The first characters of the key, so a person can tell their tokens apart.
    prefix = models.CharField(max_length=12)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "api_tokens"
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"
