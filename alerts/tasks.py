"""Thin Celery tasks: the evaluator's tick (beat) and one delivery attempt per message."""

import logging

from celery import shared_task
from django.db import DatabaseError
from django.utils import timezone

from alerts.evaluate import alerts_evaluate
from alerts.services import delivery_send
from syncing.task_names import ALERTS_DELIVER_TASK_NAME, ALERTS_EVALUATE_TASK_NAME

logger = logging.getLogger(__name__)


@shared_task(name=ALERTS_EVALUATE_TASK_NAME, ignore_result=True)
def evaluate_alerts() -> None:
    try:
        alerts_evaluate(now=timezone.now())
    except DatabaseError as exc:
        # One line, not a traceback: the next evaluation tries again and catches up.
        logger.warning("Alert evaluation skipped, database unavailable: %s", exc)


@shared_task(name=ALERTS_DELIVER_TASK_NAME, bind=True, ignore_result=True)
def deliver_alert(self, delivery_id: int) -> None:
    attempt = delivery_send(delivery_id=delivery_id, now=timezone.now())
    if attempt.retry_in is not None:
        # The delivery row counts and bounds the attempts (ALERTS_DELIVERY_MAX_ATTEMPTS), not Celery.
        raise self.retry(countdown=attempt.retry_in, max_retries=None)
