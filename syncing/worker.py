"""A Celery worker bootstep that records the worker's heartbeat, so that /readyz, the Settings
page's banner and /metrics can tell a running sync worker from a missing one.

It runs on the worker's own timer (the event loop of the main process), not in a thread of its
own: prefork forks pool children from that process, and a thread holding a lock at fork time
can deadlock a child.
"""

from __future__ import annotations

import logging
import os

from celery import bootsteps

logger = logging.getLogger(__name__)


class HeartbeatStep(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.tref = None

    def start(self, worker) -> None:
        from django.conf import settings

        from syncing.models import HeartbeatKind
        from syncing.services import heartbeat_restart

        queues = sorted(worker.app.amqp.queues.consume_from or worker.app.amqp.queues)
        self.kind = HeartbeatKind.SYNC_WORKER if settings.CELERY_TASK_DEFAULT_QUEUE in queues else HeartbeatKind.WORKER
        self.details = {
            "pid": os.getpid(),
            "queues": queues,
            "concurrency": worker.concurrency,
            "pool": worker.pool_cls if isinstance(worker.pool_cls, str) else worker.pool_cls.__name__,
        }
        self._safely(heartbeat_restart, worker, details=self.details)
        self.tref = worker.timer.call_repeatedly(settings.SYNC_WORKER_HEARTBEAT, self.beat, (worker,), priority=10)

    def beat(self, worker) -> None:
        from syncing.services import heartbeat_record

        self._safely(heartbeat_record, worker)

    def stop(self, worker) -> None:
        from syncing.services import heartbeat_forget

        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        try:
            heartbeat_forget(name=worker.hostname)
        except Exception as exc:  # the database may be what is going away
            logger.warning("Could not remove the heartbeat of %s: %s", worker.hostname, exc)

    def _safely(self, record, worker, **extra) -> None:
        from django.db import close_old_connections
        from django.utils import timezone

        # The connection may have died since the last beat (a database restart): the health
        # check drops it, and the beat opens a new one.
        close_old_connections()
        try:
            record(name=worker.hostname, kind=self.kind, now=timezone.now(), **extra)
        except Exception as exc:
            # A missed beat is what readiness measures; it must never stop the worker.
            logger.warning("Could not record the heartbeat of %s: %s", worker.hostname, exc)
