"""Change how often connections sync; `--all manual` pauses every automated sync.

    manage.py set_sync_frequency <id>... <frequency>
    manage.py set_sync_frequency --all <frequency>

The change takes effect at once (the next due time is recomputed); a job already queued or
running completes first, as the spec's FAQ says.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from connections.models import Connection, SyncFrequency
from connections.services import connection_set_frequency, connections_set_frequency_all, frequency_validate
from connections.status import FREQUENCY_LABELS, next_sync_text
from syncing.management.cli import connection_label, connections_for_arguments


def next_sync_description(connection: Connection, now: datetime) -> str:
    if connection.next_sync_at is None:
        return "no automated sync (Sync Now only)"
    return (
        f"next sync {next_sync_text(connection, now)} ({connection.next_sync_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC)"
    )


class Command(BaseCommand):
    help = (
        f"Set the sync frequency ({', '.join(SyncFrequency.values)}) of the connections given, or of --all. "
        "--all manual stops every automated sync."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("ids", nargs="*", metavar="ID", help="connection ids (public UUIDs, as sync_status lists)")
        parser.add_argument("frequency", metavar="FREQUENCY", help=f"one of: {', '.join(SyncFrequency.values)}")
        parser.add_argument("--all", action="store_true", dest="all_connections", help="every connection")

    def handle(self, *args: object, ids: list[str], frequency: str, all_connections: bool, **options: object) -> None:
        # Check everything before changing anything: a typo must not leave half the ids changed.
        try:
            frequency = frequency_validate(frequency)
        except ValidationError as exc:
            raise CommandError(exc.messages[0]) from None
        connections = connections_for_arguments(ids=ids, all_connections=all_connections)
        if not connections:
            self.stdout.write("No connections.")
            return
        before = {c.pk: c.sync_frequency for c in connections}
        now = timezone.now()
        if all_connections:
            # Set-based (one UPDATE for manual); read the rows back for the report below.
            connections_set_frequency_all(connections=Connection.objects.all(), frequency=frequency, now=now)
            connections = list(Connection.objects.filter(pk__in=before).select_related("workspace"))
        else:
            for connection in connections:
                connection_set_frequency(connection=connection, frequency=frequency, now=now)

        new_label = FREQUENCY_LABELS[frequency]
        changed = 0
        for connection in connections:
            old = before[connection.pk]
            change = f"already {new_label}" if old == frequency else f"{FREQUENCY_LABELS[old]} → {new_label}"
            changed += old != frequency
            self.stdout.write(f"{connection_label(connection)}: {change}; {next_sync_description(connection, now)}")
        self.stdout.write(f"Changed {changed} of {len(connections)} connection(s) to {new_label}.")
        if all_connections and frequency == SyncFrequency.MANUAL:
            self.stdout.write(
                "Automated syncs are paused for every connection; a job already queued or running completes first. "
                '"manage.py sync_now" still syncs on demand.'
            )
