"""Explicit input and output serializers for the API. Output field names are the spec's."""

from __future__ import annotations

from datetime import UTC

from django.utils import timezone
from rest_framework import serializers

from connections.models import Connection, SyncFrequency, SyncStatus
from connections.status import Freshness
from connections.sync_status import connection_details_data, connection_sync_status_data
from syncing.models import JobStatus, SyncOutcome, SyncRun, SyncWindow

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

    # The fields declare the object (for the schema); its values come from
    # connection_sync_status_data, which `manage.py sync_status --json` prints too.

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
    sync_frequency_label = serializers.CharField(read_only=True)
    job_id = serializers.UUIDField(allow_null=True, read_only=True, help_text="The queued or running job, if any.")
    next_sync_at = UTCDateTimeField(allow_null=True)
    rate_limited_until = UTCDateTimeField(allow_null=True)
    freshness = serializers.ChoiceField(
        choices=Freshness.choices,
        read_only=True,
        help_text="Judged against the schedule: on_time, delayed (older than one interval), stale (two).",
    )
    stats = serializers.CharField(read_only=True, help_text='For example "45 attempts | 12 changes (26.7%)".')

    def _now(self):
        # One clock reading per response (passed in context by the view), not one per connection.
        return self.context.get("now") or timezone.now()

    def to_representation(self, instance: Connection) -> dict[str, object]:
        return connection_sync_status_data(connection=instance, now=self._now())


class ConnectionOut(SyncStatusOut):
    workspace = serializers.CharField(source="workspace.name")
    workspace_id = serializers.UUIDField(source="workspace.public_id")
    external_account_id = serializers.CharField()
    currency = serializers.CharField()
    timezone = serializers.CharField()
    created_at = UTCDateTimeField()

    def to_representation(self, instance: Connection) -> dict[str, object]:
        return {**super().to_representation(instance), **connection_details_data(connection=instance)}


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
    status = serializers.ChoiceField(choices=JobStatus.values)
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


class RateLimitedOut(ErrorOut):
    rate_limited_until = UTCDateTimeField(
        help_text="When the platform's throttle ends; Sync Now works again from then."
    )


class PingOut(serializers.Serializer):
    ok = serializers.BooleanField()
