"""Show every connection's sync state the way the Settings page does, or as the API's JSON.

manage.py sync_status [<id>...] [--json]

"""

from __future__ import annotations

import json
from datetime import datetime

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from connections.models import Connection, SyncStatus
from connections.status import connection_status_view
from connections.sync_status import connection_sync_status_data
from syncing.management.cli import connections_for_arguments

# "Last attempted:" and "Last completed:" are the longest labels; values line up after them.
LABEL_WIDTH = 17


# The spec's GET /connections/{id}/sync-status fields, plus the id and name to tell them apart.
JSON_FIELDS = (
    "id",
    "name",
    "sync_frequency",
    "sync_status",
    "last_sync_attempted_at",
    "last_sync_completed_at",
    "last_metrics_changed_at",
    "total_syncs_attempted",
    "total_syncs_with_changes",
    "last_sync_error",
)


def connection_status_fields(connection: Connection, now: datetime) -> list[tuple[str, str]]:
    """The Settings page's lines for one connection, as (label, value), from the same view."""
    view = connection_status_view(connection, now)
    # A throttled connection is idle but not fine: say when it resumes rather than "Idle".
    rate_limited = view.rate_limited_text if connection.sync_status == SyncStatus.IDLE else None
    fields = [
        ("Id", str(connection.public_id)),
        ("Workspace", connection.workspace.name),
        ("Provider", connection.get_provider_display()),
        ("Frequency", view.frequency_label),
        ("Sync status", rate_limited or view.status_label),
        ("Last attempted", view.last_attempted.text),
        ("Last completed", view.last_completed.text),
        ("Last change", view.last_change.text),
        ("Next sync", view.next_sync),
        ("Freshness", view.freshness_label),
        ("Stats", view.stats),
    ]
    if connection.last_sync_error:
        fields.append(("Last error", connection.last_sync_error))
    return fields


def connection_status_json(connection: Connection, now: datetime) -> dict[str, object]:
    """The API's own sync-status data, so the command and GET sync-status can never disagree."""
    data = connection_sync_status_data(connection=connection, now=now)
    return {name: data[name] for name in JSON_FIELDS}


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
        # One clock for the whole output, so every relative time is measured from the same moment.
        now = timezone.now()
        if as_json:
            self.stdout.write(json.dumps([connection_status_json(c, now) for c in connections], indent=2))
            return
        if not connections:
            self.stdout.write("No connections yet.")
            return
        blocks = []
        for connection in connections:
            lines = [connection.name]
            lines += [
                f"  {label + ':':<{LABEL_WIDTH}}{value}" for label, value in connection_status_fields(connection, now)
            ]
            blocks.append("\n".join(lines))
        self.stdout.write("\n\n".join(blocks))
