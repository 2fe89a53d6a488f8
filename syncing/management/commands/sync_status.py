"""Show every connection's sync state the way the Settings page does, or as the API's JSON.

    manage.py sync_status [<id>...] [--json]

Also the place the other commands send people to when they mistype a connection id, so it
holds the id lookup they share (connections_for_arguments).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError, CommandParser
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

# "Last attempted:" and "Last completed:" are the longest labels; values line up after them.
LABEL_WIDTH = 17
LIST_HINT = 'Run "manage.py sync_status" to list connections and their ids.'


def connections_for_arguments(*, ids: list[str], all_connections: bool, default_all: bool = False) -> list[Connection]:
    """The connections named on the command line (public UUIDs, in the order given), or all.

    Every id is checked before anything is returned, so a command that changes connections
    changes none of them when one id is wrong. Commands are operator tools: they see every
    workspace, unlike the Settings page and the API.
    """
    if ids and all_connections:
        raise CommandError("Give connection ids or --all, not both.")
    queryset = Connection.objects.select_related("workspace")
    if all_connections or (default_all and not ids):
        return list(queryset)
    if not ids:
        raise CommandError(f"Give one or more connection ids, or --all. {LIST_HINT}")
    parsed: dict[str, uuid.UUID | None] = {}
    for raw in ids:
        try:
            parsed[raw] = uuid.UUID(raw)
        except ValueError:
            parsed[raw] = None
    found = {c.public_id: c for c in queryset.filter(public_id__in=[p for p in parsed.values() if p is not None])}
    unknown = [
        f"{raw!r} (not a UUID)" if public_id is None else repr(raw)
        for raw, public_id in parsed.items()
        if public_id not in found
    ]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise CommandError(f"No connection with id{plural} {', '.join(unknown)}. {LIST_HINT}")
    # The same connection given twice (say, with and without dashes) is handled once.
    return list({parsed[raw]: found[parsed[raw]] for raw in ids}.values())


def connection_label(connection: Connection) -> str:
    """How the commands name a connection in their output: the name people know, and the id they type."""
    return f"{connection.name} ({connection.public_id})"


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
