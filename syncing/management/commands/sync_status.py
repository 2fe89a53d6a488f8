"""Show every connection's sync state the way the Settings page does, or as the API's JSON.

manage.py sync_status [<id>...] [--json]

"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from connections.models import Connection, SyncStatus
from connections.status import (
    FREQUENCY_LABELS,
    Freshness,
    connection_freshness,
    next_sync_text,
    relative_time,
    stats_line,
)
from syncing.management.cli import connections_for_arguments

# "Last attempted:" and "Last completed:" are the longest labels; values line up after them.
LABEL_WIDTH = 17


def iso_utc(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def status_text(connection: Connection, now: datetime) -> str:
    # A throttled connection is idle but not fine: say when it resumes rather than "Idle".
    if (
        connection.sync_status == SyncStatus.IDLE
        and connection.rate_limited_until is not None
        and connection.rate_limited_until > now
    ):
        return f"Rate limited — resumes {connection.rate_limited_until.astimezone(UTC):%H:%M} UTC"
    return connection.get_sync_status_display()


def connection_status_fields(connection: Connection, now: datetime) -> list[tuple[str, str]]:
    """The Settings page's lines for one connection, as (label, value)."""
    fields = [
        ("Id", str(connection.public_id)),
        ("Workspace", connection.workspace.name),
        ("Provider", connection.get_provider_display()),
        ("Frequency", FREQUENCY_LABELS[connection.sync_frequency]),
        ("Sync status", status_text(connection, now)),
        ("Last attempted", relative_time(connection.last_sync_attempted_at, now)),
        ("Last completed", relative_time(connection.last_sync_completed_at, now)),
        ("Last change", relative_time(connection.last_metrics_changed_at, now)),
        ("Next sync", next_sync_text(connection, now)),
        ("Freshness", Freshness(connection_freshness(connection, now)).label),
        ("Stats", stats_line(connection.total_syncs_attempted, connection.total_syncs_with_changes)),
    ]
    if connection.last_sync_error:
        fields.append(("Last error", connection.last_sync_error))
    return fields


def connection_status_json(connection: Connection) -> dict[str, object]:
    """The spec's GET /connections/{id}/sync-status body, plus the id and name to tell them apart."""
    return {
        "id": str(connection.public_id),
        "name": connection.name,
        "sync_frequency": connection.sync_frequency,
        "sync_status": connection.sync_status,
        "last_sync_attempted_at": iso_utc(connection.last_sync_attempted_at),
        "last_sync_completed_at": iso_utc(connection.last_sync_completed_at),
        "last_metrics_changed_at": iso_utc(connection.last_metrics_changed_at),
        "total_syncs_attempted": connection.total_syncs_attempted,
        "total_syncs_with_changes": connection.total_syncs_with_changes,
        "last_sync_error": connection.last_sync_error,
    }


class Command(BaseCommand):
    help = "Show the sync status of connections (all of them, or the ids given), as on the Settings page."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("ids", nargs="*", metavar="ID", help="connection ids (public UUIDs); default: all")
        parser.add_argument(
            "--json",
            action="store_true",
            dest="as_json",
            help="print the API's sync-status fields for each connection as JSON",
        )

    def handle(self, *args: object, ids: list[str], as_json: bool, **options: object) -> None:
        connections = connections_for_arguments(ids=ids, all_connections=False, default_all=True)
        if as_json:
            self.stdout.write(json.dumps([connection_status_json(c) for c in connections], indent=2))
            return
        if not connections:
            self.stdout.write("No connections yet.")
            return
        # One clock for the whole table, so every relative time is measured from the same moment.
        now = timezone.now()
        blocks = []
        for connection in connections:
            lines = [connection.name]
            lines += [
                f"  {label + ':':<{LABEL_WIDTH}}{value}" for label, value in connection_status_fields(connection, now)
            ]
            blocks.append("\n".join(lines))
        self.stdout.write("\n\n".join(blocks))
