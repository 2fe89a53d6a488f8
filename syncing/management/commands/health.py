"""Readiness from the command line, as /readyz answers it: for container healthchecks (the
worker and scheduler containers serve no HTTP) and for operators.

manage.py health [--check database|broker|scheduler|sync_workers ...] [--worker HOSTNAME]

Prints the JSON /readyz returns; exits 0 when every asked-for part is there, 1 otherwise.
--worker asks about one worker's own heartbeat (docker-compose.yml: celery@$HOSTNAME).
"""

from __future__ import annotations

import json
import sys

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from syncing.health import Component, Readiness, readiness, worker_check


class Command(BaseCommand):
    help = "Check that the database, the broker, the scheduler and the sync workers are there (exit 1 if not)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--check",
            action="append",
            choices=Component.ALL,
            help="A part to check (repeatable); all of them when neither this nor --worker is given.",
        )
        parser.add_argument("--worker", help="Check that the worker with this hostname is beating.")

    def handle(self, *args, **options) -> None:
        now = timezone.now()
        checks = options["check"] or ([] if options["worker"] else list(Component.ALL))
        state = readiness(now=now, components=tuple(checks))
        if options["worker"]:
            state = Readiness([*state.checks, worker_check(name=options["worker"], now=now)])
        self.stdout.write(json.dumps(state.as_json(), indent=2))
        if not state.ready:
            sys.exit(1)
