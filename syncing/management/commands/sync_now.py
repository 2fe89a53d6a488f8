"""Sync connections now: queue jobs for the workers ("Sync Now"), wait for them, or run them here.

    manage.py sync_now <id>... | --all [--wait [--timeout SECONDS]] [--inline]

Without options it does what the Settings page's button and the API do: one job per connection,
single-flight, and prints each job id and status. --wait then follows the jobs in the database
until each one is idle or in error. --inline runs the jobs in this process, for when no worker
is running.

A connection the platform throttles is not synced, in any mode: it prints "Rate limited —
resumes 14:32 UTC", and the command exits non-zero at the end, as it does for the other
connections it could not sync (a failure, a job a worker holds under --inline).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from datetime import UTC, datetime

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from connections.models import BUSY_STATUSES, Connection, SyncStatus, SyncTrigger
from connections.status import rate_limited_message
from syncing.management.cli import connection_label, connections_for_arguments
from syncing.models import JobStatus
from syncing.runner import RetryLater, connection_sync_run
from syncing.selectors import job_state
from syncing.services import BrokerUnavailable, RateLimited, connection_enqueue_sync

# How often --wait reads the connections' state: often enough to see a demo sync's "syncing".
POLL_INTERVAL = 0.25
DEFAULT_TIMEOUT = 300.0


@dataclasses.dataclass
class Job:
    connection: Connection
    job_id: uuid.UUID
    # The last status printed, so that each transition is printed once.
    status: str


class Command(BaseCommand):
    help = (
        "Sync connections now: queue a job for each (or return the one already queued or running). "
        "--wait follows the jobs until they finish; --inline runs them in this process, without a worker."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("ids", nargs="*", metavar="ID", help="connection ids (public UUIDs, as sync_status lists)")
        parser.add_argument("--all", action="store_true", dest="all_connections", help="sync every connection")
        parser.add_argument(
            "--wait",
            action="store_true",
            help="print each status change until every job is idle or in error; exit non-zero on error or timeout",
        )
        parser.add_argument(
            "--inline",
            action="store_true",
            help="run the syncs in this process, one after another (no worker needed)",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=DEFAULT_TIMEOUT,
            help=f"seconds --wait waits for the jobs (default {DEFAULT_TIMEOUT:g})",
        )

    def handle(
        self,
        *args: object,
        ids: list[str],
        all_connections: bool,
        wait: bool,
        inline: bool,
        timeout: float,
        **options: object,
    ) -> None:
        connections = connections_for_arguments(ids=ids, all_connections=all_connections)
        if not connections:
            self.stdout.write("No connections to sync.")
            return
        deadline = time.monotonic() + timeout
        now = timezone.now()
        failed: list[Job] = []
        not_run: list[Job] = []
        throttled: list[Connection] = []
        if inline:
            to_wait_for = self._run_inline(connections, wait=wait, failed=failed, not_run=not_run, throttled=throttled)
        else:
            to_wait_for = self._enqueue(connections, now=now, throttled=throttled)
        timed_out: list[Job] = []
        if wait:
            timed_out = self._wait(to_wait_for, deadline=deadline, failed=failed)
        self._finish(
            failed=failed,
            not_run=not_run,
            throttled=throttled,
            timed_out=timed_out,
            total=len(connections),
            timeout=timeout,
        )

    # --- the three ways to run ----------------------------------------------------------------

    def _enqueue(self, connections: list[Connection], *, now: datetime, throttled: list[Connection]) -> list[Job]:
        jobs: list[Job] = []
        for connection in connections:
            try:
                result = connection_enqueue_sync(connection=connection, trigger=SyncTrigger.MANUAL, now=now)
            except RateLimited as exc:
                self._report_throttled(connection, exc, now, throttled)
                continue
            except BrokerUnavailable as exc:
                done = f" {len(jobs)} job(s) were queued before this one." if jobs else ""
                raise CommandError(
                    f"Could not queue a sync for {connection_label(connection)}: {exc}{done} "
                    "Check that Redis (REDIS_URL) is reachable, or use --inline to sync in this process."
                ) from exc
            already = "" if result.created else "already "
            self.stdout.write(f"{connection_label(connection)}: job {result.job_id} {already}{result.status}")
            jobs.append(Job(connection, result.job_id, result.status))
        return jobs

    def _run_inline(
        self,
        connections: list[Connection],
        *,
        wait: bool,
        failed: list[Job],
        not_run: list[Job],
        throttled: list[Connection],
    ) -> list[Job]:
        """Run each sync here. Returns the jobs a worker holds, to wait for."""
        busy: list[Job] = []
        for connection in connections:
            label = connection_label(connection)
            # send=False: the job is claimed exactly as Sync Now claims it, but no message goes
            # to the queue, so no worker can start it while this process runs it.
            # A fresh time for each: an inline run can take minutes, and a stale queued_at would let
            # the dispatcher's recovery take a job over as "lost" before it starts.
            now = timezone.now()
            try:
                result = connection_enqueue_sync(connection=connection, trigger=SyncTrigger.MANUAL, now=now, send=False)
            except RateLimited as exc:
                self._report_throttled(connection, exc, now, throttled)
                continue
            job = Job(connection, result.job_id, result.status)
            if not result.created:
                # Only the worker holding that job's message may start it (the start transition
                # checks the job id), so this process cannot run it.
                self.stdout.write(
                    f"{label}: job {result.job_id} already {result.status}; a worker holds it, so it cannot run inline"
                    + (", waiting for it" if wait else " (add --wait to wait for it)")
                )
                (busy if wait else not_run).append(job)
                continue
            self.stdout.write(f"{label}: job {result.job_id} queued")
            if not self._run_job(job):
                failed.append(job)
        return busy

    def _run_job(self, job: Job) -> bool:
        label = connection_label(job.connection)
        attempt = 0
        while True:
            self.stdout.write(f"{label}: syncing (inline)")
            try:
                outcome = connection_sync_run(
                    connection_id=job.connection.pk,
                    job_id=job.job_id,
                    attempt=attempt,
                    max_retries=settings.SYNC_TRANSIENT_RETRIES,
                )
                break
            except RetryLater as retry:
                # The runner put the job back to queued; it is ours to start again after the
                # backoff, as the worker would with a Celery retry.
                self.stdout.write(f"{label}: queued — {retry.__cause__}; retrying in {retry.countdown:g} s")
                time.sleep(retry.countdown)
                attempt += 1
        row = _state_of([job.connection.pk]).get(job.connection.pk)
        if outcome is None:
            # Someone else moved the row on (recovery, a concurrent inline run): nothing ran here.
            now_status = row.sync_status if row else "deleted"
            self.stdout.write(f"{label}: not run here, the job was taken over (now {now_status})")
            return False
        return self._report_finished(job, row)

    def _wait(self, jobs: list[Job], *, deadline: float, failed: list[Job]) -> list[Job]:
        """Follow the jobs in the database until each is done. Returns those still running at the deadline."""
        pending = {job.connection.pk: job for job in jobs}
        while pending:
            rows = _state_of(list(pending))
            for pk, job in list(pending.items()):
                row = rows.get(pk)
                if row is not None and row.job_id == job.job_id and row.sync_status in BUSY_STATUSES:
                    if row.sync_status != job.status:
                        job.status = row.sync_status
                        self.stdout.write(f"{connection_label(job.connection)}: {job.status}")
                    continue
                del pending[pk]
                if not self._report_finished(job, row):
                    failed.append(job)
            if pending and time.monotonic() >= deadline:
                break
            if pending:
                time.sleep(POLL_INTERVAL)
        for job in pending.values():
            self.stdout.write(f"{connection_label(job.connection)}: still {job.status}")
        return list(pending.values())

    # --- reporting ----------------------------------------------------------------------------

    def _report_throttled(
        self, connection: Connection, exc: RateLimited, now: datetime, throttled: list[Connection]
    ) -> None:
        # No job, no platform call: it would only be throttled again and push the resume time out.
        self.stdout.write(f"{connection_label(connection)}: {rate_limited_message(exc.until, now)}")
        throttled.append(connection)

    def _report_finished(self, job: Job, row: Connection | None) -> bool:
        """Print how the job ended; True when it succeeded (a rate-limited sync resumes by itself)."""
        label = connection_label(job.connection)
        if row is None:
            self.stdout.write(f"{label}: the connection was deleted")
            return False
        # What the API's GET /jobs/{id} says of it, from the same selector. It may have finished
        # while the next job (a scheduled one) was queued before we looked.
        state = job_state(job_id=job.job_id, connections=Connection.objects.filter(pk=row.pk).defer("credentials"))
        if state is None or state.status not in (JobStatus.SUCCEEDED, JobStatus.RATE_LIMITED):
            error = state.error if state is not None and state.error else "the job ended without running"
            self.stdout.write(f"{label}: error — {error}")
            return False
        if state.status == JobStatus.RATE_LIMITED and row.rate_limited_until is not None:
            detail = f"rate limited by the platform, resumes {row.rate_limited_until.astimezone(UTC):%H:%M} UTC"
        else:
            # A deferred attempt writes no rows.
            written = state.rows_written or 0
            plural = "" if written == 1 else "s"
            detail = f"{written} row{plural} written" if written else "no changes"
        self.stdout.write(f"{label}: {SyncStatus.IDLE} — {detail}")
        return True

    def _finish(
        self,
        *,
        failed: list[Job],
        not_run: list[Job],
        throttled: list[Connection],
        timed_out: list[Job],
        total: int,
        timeout: float,
    ) -> None:
        problems = []
        if failed:
            names = ", ".join(job.connection.name for job in failed)
            problems.append(f"Sync failed for {len(failed)} of {total} connection(s): {names}.")
        if not_run:
            names = ", ".join(job.connection.name for job in not_run)
            problems.append(
                f"Not run inline, a worker holds the job of {len(not_run)} connection(s): {names}. "
                "Add --wait to wait for it."
            )
        if throttled:
            names = ", ".join(connection.name for connection in throttled)
            problems.append(
                f"Not synced, the platform is rate limiting {len(throttled)} of {total} connection(s): {names}. "
                "Run sync_now again once it resumes; scheduled syncs resume by themselves."
            )
        if timed_out:
            names = ", ".join(job.connection.name for job in timed_out)
            problems.append(
                f"Timed out after {timeout:g} s waiting for {len(timed_out)} job(s): {names}. They go on in the "
                'background; "manage.py sync_status" shows how they end.'
            )
        if problems:
            raise CommandError(" ".join(problems))


def _state_of(pks: list[int]) -> dict[int, Connection]:
    # Only the state columns: polling should not decrypt every connection's credentials.
    fields = ("sync_status", "job_id", "last_sync_error", "rate_limited_until")
    return {row.pk: row for row in Connection.objects.filter(pk__in=pks).only(*fields)}
