"""Resume automated syncs at each connection's kept frequency.

    manage.py resume_syncs <id>...
    manage.py resume_syncs --all

The interval runs from the last attempt: a connection whose interval has passed is due now.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from connections.services import connection_resume
from syncing.management.cli import connection_label, connections_for_arguments
from syncing.management.commands.set_sync_frequency import next_sync_description


class Command(BaseCommand):
    help = "Resume the automated syncs of the connections given, or of --all, at their kept frequency."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("ids", nargs="*", metavar="ID", help="connection ids (public UUIDs, as sync_status lists)")
        parser.add_argument("--all", action="store_true", dest="all_connections", help="every connection")

    def handle(self, *args: object, ids: list[str], all_connections: bool, **options: object) -> None:
        connections = connections_for_arguments(ids=ids, all_connections=all_connections)
        now = timezone.now()
        resumed = 0
        for connection in connections:
            done = connection_resume(connection=connection, now=now)
            resumed += done
            state = "resumed" if done else "was not paused"
            self.stdout.write(f"{connection_label(connection)}: {state}; {next_sync_description(connection, now)}")
        self.stdout.write(f"Resumed {resumed} of {len(connections)} connection(s).")
