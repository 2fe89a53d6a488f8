"""Re-sync a date range of one connection (a backfill), follow it, or cancel it.

    manage.py backfill <id> --since YYYY-MM-DD --until YYYY-MM-DD
    manage.py backfill <id> --status
    manage.py backfill <id> --cancel

The range is in the ad account's time zone, up to what the platform keeps (Meta about 37
months, Google 11 years). It runs in chunks (Meta a week, Google a month), newest first, as
syncs of the connection that the dispatcher queues when no sync is due and the rate budget has
room, so the command returns at once; --status shows how far it got. Asking again for the same
range returns the backfill in progress; a different one is refused until it is cancelled.
"""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from syncing.management.cli import connection_label, connections_for_arguments
from syncing.models import BACKFILL_ACTIVE, Backfill
from syncing.selectors import backfills_for_connection
from syncing.services import backfill_cancel, backfill_request


def iso_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date as YYYY-MM-DD") from None


def describe(backfill: Backfill, now: datetime) -> str:
    """ "2026-10-01 to 2026-11-30: running, 14 of 61 days (23 %); next chunk after 14:32:10 UTC (why)"."""
    text = (
        f"{backfill.since.isoformat()} to {backfill.until.isoformat()}: {backfill.get_status_display().lower()}, "
        f"{backfill.progress_text} ({backfill.progress:.0%})"
    )
    if backfill.active and backfill.not_before > now:
        text += f"; next chunk after {backfill.not_before.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
    if backfill.last_error:
        text += f" — {backfill.last_error}"
    return text


class Command(BaseCommand):
    help = (
        "Re-sync a date range of one connection (--since and --until, days in the account's time zone), "
        "or show its backfills (--status), or cancel the one in progress (--cancel)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "connection_id", metavar="ID", help="the connection's id (its public UUID, as sync_status lists)"
        )
        parser.add_argument("--since", type=iso_date, help="the first day to re-sync, YYYY-MM-DD")
        parser.add_argument("--until", type=iso_date, help="the last day to re-sync, YYYY-MM-DD")
        parser.add_argument("--status", action="store_true", help="list the connection's backfills, newest first")
        parser.add_argument("--cancel", action="store_true", help="cancel the backfill in progress")

    def handle(
        self,
        *args: object,
        connection_id: str,
        since: date | None,
        until: date | None,
        status: bool,
        cancel: bool,
        **options: object,
    ) -> None:
        if sum((status, cancel, since is not None or until is not None)) != 1:
            raise CommandError("Give --since and --until to start a backfill, or --status, or --cancel.")
        [connection] = connections_for_arguments(ids=[connection_id], all_connections=False)
        label = connection_label(connection)
        now = timezone.now()
        if status:
            backfills = list(backfills_for_connection(connection=connection))
            if not backfills:
                self.stdout.write(f"{label}: no backfills.")
            for backfill in backfills:
                self.stdout.write(f"{label}: {describe(backfill, now)}")
            return
        if cancel:
            active = backfills_for_connection(connection=connection).filter(status__in=BACKFILL_ACTIVE).first()
            if active is None or not backfill_cancel(backfill=active, now=now):
                raise CommandError(f"{label}: no backfill in progress to cancel.")
            active.refresh_from_db()
            self.stdout.write(f"{label}: {describe(active, now)}. The days fetched so far stay.")
            return
        if since is None or until is None:
            raise CommandError("Give both --since and --until (YYYY-MM-DD, days in the account's time zone).")
        try:
            backfill = backfill_request(connection=connection, since=since, until=until, now=now)
        except ValidationError as exc:
            raise CommandError(f"{label}: {exc.messages[0]}") from None
        fresh = backfill.created_at == now
        self.stdout.write(f"{label}: {'started' if fresh else 'already in progress'}, {describe(backfill, now)}.")
        self.stdout.write(
            "Its chunks run when no sync of the connection is due and its rate budget has room; "
            f'"manage.py backfill {connection.public_id} --status" shows how far it got.'
        )
