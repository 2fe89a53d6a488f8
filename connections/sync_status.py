"""A connection's sync status as plain JSON values: the API's sync-status object
(connections.serializers.SyncStatusOut declares it for the schema and returns this) and
`manage.py sync_status --json`, from one function so that the two can never disagree.
"""

from __future__ import annotations

from datetime import UTC, datetime

from connections.models import BUSY_STATUSES, Connection
from connections.status import FREQUENCY_LABELS, connection_freshness, stats_line


def _utc(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with an explicit offset ("2025-11-14T13:10:58+00:00"); null when never."""
    return None if moment is None else moment.astimezone(UTC).isoformat()


def connection_sync_status_data(*, connection: Connection, now: datetime) -> dict[str, object]:
    """The spec's eight sync-status fields exactly as named there, then the extras."""
    return {
        "sync_frequency": str(connection.sync_frequency),
        "sync_status": str(connection.sync_status),
        "last_sync_attempted_at": _utc(connection.last_sync_attempted_at),
        "last_sync_completed_at": _utc(connection.last_sync_completed_at),
        "last_metrics_changed_at": _utc(connection.last_metrics_changed_at),
        "total_syncs_attempted": connection.total_syncs_attempted,
        "total_syncs_with_changes": connection.total_syncs_with_changes,
        "last_sync_error": connection.last_sync_error,
        # Extras beyond the spec.
        "id": str(connection.public_id),
        "name": connection.name,
        "provider": str(connection.provider),
        "sync_frequency_label": FREQUENCY_LABELS[connection.sync_frequency],
        # The queued or running job, if any.
        "job_id": str(connection.job_id) if connection.sync_status in BUSY_STATUSES else None,
        "next_sync_at": _utc(connection.next_sync_at),
        "rate_limited_until": _utc(connection.rate_limited_until),
        "freshness": str(connection_freshness(connection, now)),
        "stats": stats_line(connection.total_syncs_attempted, connection.total_syncs_with_changes),
        # Automated syncs paused, the frequency kept for the resume (POST .../pause, .../resume).
        "paused": connection.paused_at is not None,
        "paused_at": _utc(connection.paused_at),
        "pause_reason": str(connection.pause_reason) or None,
    }


def connection_details_data(*, connection: Connection) -> dict[str, object]:
    """What the API's connection object adds to the sync status (ConnectionOut)."""
    return {
        "workspace": connection.workspace.name,
        "workspace_id": str(connection.workspace.public_id),
        "external_account_id": connection.external_account_id,
        "currency": connection.currency,
        "timezone": connection.timezone,
        "created_at": _utc(connection.created_at),
    }
