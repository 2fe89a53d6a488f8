"""Explicit input and output serializers for the API. Output field names are the spec's."""

from __future__ import annotations

from datetime import UTC
from typing import Any, TypedDict

from django.utils import timezone
from rest_framework import serializers

from connections.models import Connection, PauseReason, SyncFrequency, SyncStatus, SyncTrigger
from connections.status import Freshness
from connections.sync_status import connection_details_data, connection_sync_status_data
from syncing.models import JobStatus, MetricLevel, SyncOutcome, SyncRun, SyncWindow
from syncing.selectors import CHANGE_FIELDS, ChangeKind

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


def _choice_messages(what: str, choices: list[str]) -> dict[str, Any]:
    # (An empty query parameter, "?kind=", is DRF's "not given" for an optional field.)
    return {"invalid_choice": f'"{{input}}" is not a valid {what}; valid choices: {", ".join(choices)}.'}


class ChangeFilters(TypedDict):
    """Keyword arguments for syncing.selectors.sync_changes_for_run."""

    restated: bool | None
    kind: str | None
    field: str | None


class SyncChangesQueryIn(serializers.Serializer):
    """The changes endpoint's filters (query parameters; page and page_size are the paginator's)."""

    restated = serializers.ChoiceField(
        choices=["true", "false"],
        required=False,
        help_text="Only changes of days before yesterday (true), or only the others (false).",
        error_messages=_choice_messages("value for restated", ["true", "false"]),
    )
    kind = serializers.ChoiceField(
        choices=ChangeKind.choices,
        required=False,
        help_text="Only rows the run added, or only rows whose values it changed.",
        error_messages=_choice_messages("kind", list(ChangeKind.values)),
    )
    field = serializers.ChoiceField(
        choices=list(CHANGE_FIELDS),
        required=False,
        help_text="Only rows where this field changed.",
        error_messages=_choice_messages("field", list(CHANGE_FIELDS)),
    )

    def filters(self) -> ChangeFilters:
        data = self.validated_data
        restated = data.get("restated")
        return ChangeFilters(
            restated=None if restated is None else restated == "true", kind=data.get("kind"), field=data.get("field")
        )


class SyncRunsQueryIn(serializers.Serializer):
    """The history's filters (query parameters; cursor and page_size are the paginator's)."""

    outcome = serializers.ChoiceField(
        choices=SyncOutcome.choices,
        required=False,
        help_text="Only runs that ended so (or are running).",
        error_messages=_choice_messages("outcome", list(SyncOutcome.values)),
    )
    since = UTCDateTimeField(
        required=False,
        help_text="Only runs started at or after this time (ISO 8601, with an offset, e.g. 2026-11-28T12:00:00Z).",
        error_messages={"invalid": "Enter a time as ISO 8601 with an offset, e.g. 2026-11-28T12:00:00Z."},
    )
    trigger = serializers.ChoiceField(
        choices=SyncTrigger.choices,
        required=False,
        help_text="Only runs of this trigger.",
        error_messages=_choice_messages("trigger", list(SyncTrigger.values)),
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
        help_text="Judged against the schedule: on_time, delayed (older than one interval, or the last attempt "
        "failed), stale (two); never (no completed sync), unscheduled (manual), paused.",
    )
    stats = serializers.CharField(read_only=True, help_text='For example "45 attempts | 12 changes (26.7%)".')
    paused = serializers.BooleanField(
        read_only=True, help_text="Automated syncs paused (POST .../pause); the frequency is kept for the resume."
    )
    paused_at = UTCDateTimeField(allow_null=True, read_only=True)
    pause_reason = serializers.ChoiceField(
        choices=PauseReason.choices,
        allow_null=True,
        read_only=True,
        help_text="user (paused by someone), workspace (Stop all automated syncs), failures (auto-pause).",
    )

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
    """A run of syncing.selectors.sync_runs_with_changes_for_connection (which counts its changes)."""

    id = serializers.UUIDField(
        source="public_id", help_text="The run's id: `/sync-runs/{id}/changes` lists its changes."
    )
    started_at = UTCDateTimeField()
    finished_at = UTCDateTimeField(allow_null=True)
    duration_seconds = serializers.FloatField(allow_null=True)
    outcome = serializers.ChoiceField(choices=SyncOutcome.choices)
    window = serializers.ChoiceField(choices=SyncWindow.choices)
    changes = serializers.IntegerField(
        source="changes_count", min_value=0, help_text="Metric rows this run added or changed (its change ledger)."
    )
    restated = serializers.BooleanField(
        source="has_restatements", help_text="True when the run changed a day before yesterday: a restatement."
    )

    class Meta:
        model = SyncRun
        fields = [
            "id",
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
            "changes",
            "restated",
        ]


class FieldChangeOut(serializers.Serializer):
    field = serializers.ChoiceField(choices=list(CHANGE_FIELDS))
    old = serializers.CharField(
        allow_null=True, help_text="Before the run, as a string (decimals exact); null for an added row."
    )
    new = serializers.CharField(help_text="After the run, as a string (decimals exact).")


class SyncChangeOut(serializers.Serializer):
    """One metric row the run added or changed (syncing.selectors.MetricChange)."""

    level = serializers.ChoiceField(choices=MetricLevel.choices)
    entity_id = serializers.CharField()
    entity_name = serializers.CharField(allow_blank=True)
    date = serializers.DateField(help_text="The day, in the ad account's time zone.")
    added = serializers.BooleanField(help_text="A row the run inserted (every old value is null).")
    restated = serializers.BooleanField(
        help_text="The run changed a stored value of a day before yesterday (in the account's time zone)."
    )
    values = FieldChangeOut(many=True, help_text="Only the fields that changed, old → new.")
    summary = serializers.CharField(help_text='For example "restated Nov 27: conversions 41 → 44".')


class SyncRunChangesOut(serializers.Serializer):
    """What the whole run changed (syncing.selectors.RunChanges), whatever the filters and page."""

    id = serializers.UUIDField(source="run.public_id")
    started_at = UTCDateTimeField(source="run.started_at")
    changed = serializers.IntegerField(source="changes.changed", min_value=0)
    added = serializers.IntegerField(source="changes.added", min_value=0)
    restated = serializers.IntegerField(
        source="changes.restated", min_value=0, help_text="Changed rows of days before yesterday."
    )
    restated_days = serializers.ListField(
        child=serializers.DateField(), source="changes.restated_days", help_text="The days it restated, oldest first."
    )
    summary = serializers.CharField(
        source="changes.summary", help_text='For example "3 rows changed, 1 added; restated Nov 26, Nov 27".'
    )


class SyncChangePageOut(serializers.Serializer):
    count = serializers.IntegerField(min_value=0, help_text="Changes matching the filters, on all pages.")
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    run = SyncRunChangesOut()
    results = SyncChangeOut(many=True)


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
