"""Pause automated syncs, keeping each connection's frequency for the resume.

    manage.py pause_syncs <id>...
    manage.py pause_syncs --all

Sync Now still works while paused; a job already queued or running completes first.
`manage.py resume_syncs` brings the schedule back at the kept frequency.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from connections.services import connection_pause
from connections.status import FREQUENCY_LABELS
from syncing.management.cli import connection_label, connections_for_arguments


class Command(BaseCommand):
    help = "Pause the automated syncs of the connections given, or of --all, keeping their frequency."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("ids", nargs="*", metavar="ID", help="connection ids (public UUIDs, as sync_status lists)")
        parser.add_argument("--all", action="store_true", dest="all_connections", help="every connection")

    def handle(self, *args: object, ids: list[str], all_connections: bool, **options: object) -> None:
        connections = connections_for_arguments(ids=ids, all_connections=all_connections)
        now = timezone.now()
        paused = 0
        for connection in connections:
            done = connection_pause(connection=connection, now=now)
            paused += done
            state = "paused" if done else "already paused"
            self.stdout.write(
                f"{connection_label(connection)}: {state} ({FREQUENCY_LABELS[connection.sync_frequency]} kept)"
            )
        self.stdout.write(
            f"Paused {paused} of {len(connections)} connection(s). Sync Now still works; "
            '"manage.py resume_syncs" brings their schedules back.'
        )
