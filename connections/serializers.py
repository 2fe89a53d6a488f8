"""Explicit input and output serializers for the API. Output field names are the spec's."""

from __future__ import annotations

from datetime import UTC

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from connections.models import BUSY_STATUSES, Connection, SyncFrequency, SyncStatus
from connections.status import FREQUENCY_LABELS, Freshness, connection_freshness, stats_line
from syncing.models import SyncOutcome, SyncRun, SyncWindow

JOB_STATUSES = ["queued", "syncing", "succeeded", "failed", "rate_limited", "interrupted"]

VALID_FREQUENCIES = ", ".join(SyncFrequency.values)


class UTCDateTimeField(serializers.DateTimeField):
    """ISO 8601 in UTC with an explicit offset ("2025-11-14T13:10:58+00:00"); null when never."""

    def to_representation(self, value):
        if value is None:
            return None
        return value.astimezone(UTC).isoformat()


# --- input -------------------------------------------------------------------------------------


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, so a typo ("sync_frequncy") is an error, not a no-op."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {name: [f"Unknown field; expected only: {', '.join(self.fields)}."] for name in unknown}
                )
        return super().to_internal_value(data)


class SyncFrequencyIn(StrictSerializer):
    sync_frequency = serializers.ChoiceField(
        choices=SyncFrequency.choices,
        error_messages={
            "invalid_choice": f'"{{input}}" is not a valid sync frequency; valid choices: {VALID_FREQUENCIES}.',
            "required": f"This field is required; valid choices: {VALID_FREQUENCIES}.",
            "null": f"This field may not be null; valid choices: {VALID_FREQUENCIES}.",
        },
    )


# --- output ------------------------------------------------------------------------------------


class SyncStatusOut(serializers.Serializer):
    """The spec's sync-status object, its eight fields exactly as named there, plus extras."""

    sync_frequency = serializers.ChoiceField(choices=SyncFrequency.choices)
    sync_status = serializers.ChoiceField(choices=SyncStatus.choices)
    last_sync_attempted_at = UTCDateTimeField(allow_null=True)
    last_sync_completed_at = UTCDateTimeField(allow_null=True)
    last_metrics_changed_at = UTCDateTimeField(allow_null=True)
    total_syncs_attempted = serializers.IntegerField(min_value=0)
    total_syncs_with_changes = serializers.IntegerField(min_value=0)
    last_sync_error = serializers.CharField(allow_null=True)
    # Extras beyond the spec.
    id = serializers.UUIDField(source="public_id")
    name = serializers.CharField()
    provider = serializers.CharField()
    sync_frequency_label = serializers.SerializerMethodField()
    job_id = serializers.SerializerMethodField(help_text="The queued or running job, if any.")
    next_sync_at = UTCDateTimeField(allow_null=True)
    rate_limited_until = UTCDateTimeField(allow_null=True)
    freshness = serializers.SerializerMethodField(
        help_text="Judged against the schedule: on_time, delayed (older than one interval), stale (two)."
    )
    stats = serializers.SerializerMethodField(help_text='For example "45 attempts | 12 changes (26.7%)".')

    def _now(self):
        # One clock reading per response (passed in context by the view), not one per field.
        return self.context.get("now") or timezone.now()

    def get_sync_frequency_label(self, connection: Connection) -> str:
        return FREQUENCY_LABELS[connection.sync_frequency]

    @extend_schema_field(serializers.UUIDField(allow_null=True))
    def get_job_id(self, connection: Connection) -> str | None:
        return str(connection.job_id) if connection.sync_status in BUSY_STATUSES else None

    @extend_schema_field(serializers.ChoiceField(choices=Freshness.choices))
    def get_freshness(self, connection: Connection) -> str:
        return connection_freshness(connection, self._now())

    def get_stats(self, connection: Connection) -> str:
        return stats_line(connection.total_syncs_attempted, connection.total_syncs_with_changes)


class ConnectionOut(SyncStatusOut):
    workspace = serializers.CharField(source="workspace.name")
    workspace_id = serializers.UUIDField(source="workspace.public_id")
    external_account_id = serializers.CharField()
    currency = serializers.CharField()
    timezone = serializers.CharField()
    created_at = UTCDateTimeField()


class SyncNowOut(serializers.Serializer):
    job_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=[SyncStatus.QUEUED, SyncStatus.SYNCING])
    created = serializers.BooleanField(help_text="False when an existing queued or running job was returned.")


class SyncRunOut(serializers.ModelSerializer):
    started_at = UTCDateTimeField()
    finished_at = UTCDateTimeField(allow_null=True)
    duration_seconds = serializers.FloatField(allow_null=True)
    outcome = serializers.ChoiceField(choices=SyncOutcome.choices)
    window = serializers.ChoiceField(choices=SyncWindow.choices)

    class Meta:
        model = SyncRun
        fields = [
            "job_id",
            "trigger",
            "window",
            "window_since",
            "window_until",
            "started_at",
            "finished_at",
            "duration_seconds",
            "outcome",
            "api_calls",
            "rows_fetched",
            "rows_written",
            "error_class",
            "error_message",
        ]


class JobOut(serializers.Serializer):
    job_id = serializers.UUIDField()
    connection_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=JOB_STATUSES)
    finished = serializers.BooleanField(help_text="True once the job will not change any more.")
    queued_at = UTCDateTimeField(allow_null=True)
    started_at = UTCDateTimeField(allow_null=True)
    finished_at = UTCDateTimeField(allow_null=True)
    attempts = serializers.IntegerField(min_value=0)
    rows_fetched = serializers.IntegerField(allow_null=True)
    rows_written = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(allow_null=True)


class ErrorOut(serializers.Serializer):
    detail = serializers.CharField()


class PingOut(serializers.Serializer):
    ok = serializers.BooleanField()
