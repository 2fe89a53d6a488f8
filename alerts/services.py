"""Every write of alerts: workspace settings and the webhook secret, incidents, the delivery log.

Incidents open and resolve with conditional writes, so evaluators running at the same time never
alert twice: opening is an INSERT that the partial unique constraint
alerts_incident_one_open_per_kind lets only one of them win; resolving is one UPDATE ... WHERE
resolved_at IS NULL. The winner writes the event's deliveries in the same short transaction and
queues them after commit.

A delivery is sent by one Celery task per attempt (alerts.tasks.deliver_alert):

    pending --claim--> sending --2xx / mail accepted--> delivered
                               --timeout, refused, 5xx, 408, 429--> retrying --claim--> sending ...
                               --other answer, or ALERTS_DELIVERY_MAX_ATTEMPTS used--> failed
    sending past its lease (worker died) --sweep--> retrying (or failed)

Each transition is one conditional UPDATE; the network I/O in between runs outside any
transaction. Retries back off exponentially (ALERTS_RETRY_BACKOFF doubling, capped at
ALERTS_RETRY_BACKOFF_MAX).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from adsync.celery import app as celery_app
from alerts import content, transport
from alerts.models import (
    WAITING_STATUSES,
    AlertSettings,
    Delivery,
    DeliveryChannel,
    DeliveryEvent,
    DeliveryStatus,
    Incident,
)
from connections.models import Connection, Workspace
from syncing.task_names import ALERTS_DELIVER_TASK_NAME

logger = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
INTERRUPTED = "The attempt was interrupted (its worker stopped); trying again."


# --- settings ---------------------------------------------------------------------------------------


def _new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def alert_settings_save(
    *,
    workspace: Workspace,
    email_enabled: bool,
    email_recipients: list[str],
    webhook_url: str,
    failure_threshold: int,
    stale_multiplier: int,
    auto_pause_after: int | None = None,
) -> str | None:
    """Store the workspace's alert settings. Returns the webhook's signing secret when this save
    created it (a webhook URL set where there was none): the caller shows it once; it cannot be
    read back in plain text anywhere else. Removing the URL forgets the secret, so the next
    webhook starts with a new one that is shown again."""
    values: dict = {
        "email_enabled": email_enabled,
        "email_recipients": email_recipients,
        "webhook_host": transport.redacted_url(webhook_url, path=False) if webhook_url else "",
        "failure_threshold": failure_threshold,
        "stale_multiplier": stale_multiplier,
        "auto_pause_after": auto_pause_after,
        # .update() does not apply auto_now.
        "updated_at": timezone.now(),
    }
    # Two rounds: two first saves at once both find no row, and the loser of the insert (the
    # one-to-one's unique constraint) updates the winner's row instead.
    for _ in range(2):
        with transaction.atomic():
            # Locked, so two saves at once cannot both create (and show) a secret.
            row = AlertSettings.objects.select_for_update().filter(workspace=workspace).first()
            secret = row.signing_secret if row is not None and row.webhook_host else ""
            new_secret = _new_secret() if webhook_url and not secret else None
            # The URL and the secret are one encrypted value, written together.
            values["webhook_secret"] = {"url": webhook_url, "secret": new_secret or secret} if webhook_url else {}
            if row is not None:
                AlertSettings.objects.filter(pk=row.pk).update(**values)
                return new_secret
            try:
                with transaction.atomic():
                    AlertSettings.objects.create(workspace=workspace, **values)
                return new_secret
            except IntegrityError:
                # Another save created the row first: update it in the next round. Anything else
                # (a value outside a check constraint) is the caller's error.
                if not AlertSettings.objects.filter(workspace=workspace).exists():
                    raise
    raise RuntimeError(f"the alert settings of workspace {workspace.pk} could not be saved")


def alert_settings_webhook_url(*, workspace: Workspace) -> str:
    """The workspace's webhook URL, decrypted ("" without one): kept when a save leaves it empty."""
    row = AlertSettings.objects.filter(workspace=workspace).exclude(webhook_host="").first()
    return row.webhook_url if row is not None else ""


def webhook_secret_rotate(*, workspace: Workspace) -> str:
    """A new signing secret, effective for the next attempt of every delivery; returned to be
    shown once. The old one stops working at once (update the receiver right after)."""
    secret = _new_secret()
    with transaction.atomic():
        # Locked: the URL is read and written back with the new secret (one encrypted value).
        row = AlertSettings.objects.select_for_update().filter(workspace=workspace).exclude(webhook_host="").first()
        if row is None:
            raise ValidationError("Set a webhook URL first: the signing secret belongs to the webhook.")
        AlertSettings.objects.filter(pk=row.pk).update(
            webhook_secret={"url": row.webhook_url, "secret": secret}, updated_at=timezone.now()
        )
    return secret


# --- incidents --------------------------------------------------------------------------------------


def incident_open(*, connection: Connection, problem: content.Problem, now: datetime) -> Incident | None:
    """Open an incident and write its "opened" deliveries; None if one is open already (another
    evaluator got there first, or earlier)."""
    with transaction.atomic():
        try:
            with transaction.atomic():
                incident = Incident.objects.create(
                    workspace_id=connection.workspace_id,
                    connection=connection,
                    kind=problem.kind,
                    opened_at=now,
                    title=problem.title,
                    message=problem.message,
                    details=problem.details,
                )
        except IntegrityError:
            # alerts_incident_one_open_per_kind: it is open already. Any other violation is a bug.
            if Incident.objects.filter(connection=connection, kind=problem.kind, resolved_at__isnull=True).exists():
                return None
            raise
        incident.workspace = connection.workspace
        channels = _channels(_settings_of(connection.workspace_id))
        _deliveries_create(
            incident=incident,
            connection=connection,
            event=DeliveryEvent.OPENED,
            message=problem.message,
            channels=channels,
            now=now,
        )
    logger.info("Alert opened: %s (incident %s)", problem.title, incident.public_id)
    return incident


def incident_resolve(*, incident: Incident, now: datetime) -> bool:
    """Resolve the incident and write its "resolved" deliveries, on the channels its opening went
    out on (and that are still on); False if it was resolved already."""
    connection = incident.connection
    message = content.resolution(incident=incident, connection=connection)
    with transaction.atomic():
        if Incident.objects.filter(pk=incident.pk, resolved_at__isnull=True).update(resolved_at=now) != 1:
            return False
        incident.resolved_at = now
        alert_settings = _settings_of(incident.workspace_id)
        opened_on = set(
            Delivery.objects.filter(incident=incident, event=DeliveryEvent.OPENED).values_list("channel", flat=True)
        )
        _deliveries_create(
            incident=incident,
            connection=connection,
            event=DeliveryEvent.RESOLVED,
            message=message,
            channels=[channel for channel in _channels(alert_settings) if channel in opened_on],
            now=now,
        )
    logger.info("Alert resolved: %s (incident %s)", incident.title, incident.public_id)
    return True


def incident_mark_clear(*, incident: Incident, now: datetime) -> bool:
    """Note when the problem was first seen gone (resolution waits ALERTS_RESOLVE_AFTER from it)."""
    marked = Incident.objects.filter(pk=incident.pk, resolved_at__isnull=True, clear_since__isnull=True).update(
        clear_since=now
    )
    if marked:
        incident.clear_since = now
    return marked == 1


def incident_mark_unclear(*, incident: Incident) -> bool:
    """The problem is back before the incident resolved: it stays open, and the wait starts over."""
    marked = Incident.objects.filter(pk=incident.pk, resolved_at__isnull=True, clear_since__isnull=False).update(
        clear_since=None
    )
    incident.clear_since = None
    return marked == 1


# --- deliveries -------------------------------------------------------------------------------------


def _settings_of(workspace_id: int, *, with_secret: bool = False) -> AlertSettings:
    """The workspace's settings, or the defaults. The secret is decrypted only to sign a webhook."""
    rows = AlertSettings.objects.filter(workspace_id=workspace_id)
    if not with_secret:
        rows = rows.defer("webhook_secret")
    return rows.first() or AlertSettings(workspace_id=workspace_id)


def _channels(alert_settings: AlertSettings) -> list[str]:
    channels: list[str] = []
    if alert_settings.email_enabled:
        channels.append(DeliveryChannel.EMAIL)
    if alert_settings.webhook_host:
        channels.append(DeliveryChannel.WEBHOOK)
    return channels


def _deliveries_create(
    *, incident: Incident, connection: Connection, event: str, message: str, channels: list[str], now: datetime
) -> list[Delivery]:
    """One delivery per channel, inside the caller's transaction, queued once it commits."""
    payload = content.payload(incident=incident, connection=connection, event=event, message=message, now=now)
    deliveries = Delivery.objects.bulk_create(
        [
            Delivery(
                incident=incident,
                event=event,
                channel=channel,
                status=DeliveryStatus.PENDING,
                next_attempt_at=now,
                payload=payload,
                created_at=now,
            )
            for channel in channels
        ]
    )
    ids = [delivery.pk for delivery in deliveries]
    if ids:
        transaction.on_commit(functools.partial(deliveries_enqueue, ids=ids))
    return deliveries


def deliveries_enqueue(*, ids: list[int]) -> None:
    """One message per delivery. A broker that is down loses nothing: the rows stay pending, and
    the evaluator's sweep (deliveries_requeue_lost) sends them again."""
    if not ids:
        return
    sent = 0
    try:
        with celery_app.producer_or_acquire() as producer:
            for pk in ids:
                celery_app.send_task(
                    ALERTS_DELIVER_TASK_NAME, args=[pk], queue=settings.ALERTS_QUEUE, producer=producer
                )
                sent += 1
    except Exception as exc:  # kombu raises OperationalError, redis-py ConnectionError, OSError...
        logger.warning("Broker unavailable, %d alert delivery(ies) not queued yet: %s", len(ids) - sent, exc)


def retry_delay(*, attempt: int, retry_after: float | None = None) -> float:
    """Seconds before the next attempt after `attempt` failed: exponential, capped; at least what
    the receiver asked for (Retry-After), within the same cap."""
    delay = min(settings.ALERTS_RETRY_BACKOFF * 2 ** (attempt - 1), settings.ALERTS_RETRY_BACKOFF_MAX)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.ALERTS_RETRY_BACKOFF_MAX))
    return delay


def _lease() -> timedelta:
    # Longer than one attempt can take (httpx's timeout applies to each phase of the request), so
    # a live attempt is never taken for a lost one.
    return timedelta(seconds=4 * max(settings.ALERTS_WEBHOOK_TIMEOUT, settings.EMAIL_TIMEOUT) + 30)


@dataclasses.dataclass(frozen=True)
class DeliveryAttempt:
    """The delivery's status after this attempt (None when it was not ours to send: already sent,
    not due yet, or taken by another task), and when to try again if it is retrying."""

    status: str | None
    retry_in: float | None = None


def delivery_send(*, delivery_id: int, now: datetime) -> DeliveryAttempt:
    """Make one attempt at a delivery: claim it, send outside any transaction, record the result."""
    claimed = Delivery.objects.filter(pk=delivery_id, status__in=WAITING_STATUSES, next_attempt_at__lte=now).update(
        status=DeliveryStatus.SENDING,
        attempts=F("attempts") + 1,
        last_attempt_at=now,
        next_attempt_at=now + _lease(),
    )
    if claimed != 1:
        return DeliveryAttempt(status=None)
    delivery = Delivery.objects.select_related("incident").get(pk=delivery_id)
    alert_settings = _settings_of(delivery.incident.workspace_id, with_secret=True)
    result, target = _attempt(delivery=delivery, alert_settings=alert_settings, now=now)
    return _attempt_record(delivery=delivery, result=result, target=target, now=now)


def _attempt(*, delivery: Delivery, alert_settings: AlertSettings, now: datetime) -> tuple[transport.SendResult, str]:
    """Send on the delivery's channel with the workspace's settings as they are now (a webhook URL
    fixed while a delivery retries is used by its next attempt)."""
    if delivery.channel == DeliveryChannel.EMAIL:
        if not alert_settings.email_enabled:
            return transport.SendResult(ok=False, error="Email alerts were switched off for this workspace."), ""
        recipients = alert_settings.recipients()
        if not recipients:
            error = "No one to email: no recipients are set and no member of the workspace has an email address."
            return transport.SendResult(ok=False, error=error), ""
        mail = content.email(delivery.payload)
        result = transport.email_send(subject=mail.subject, body=mail.body, recipients=recipients)
        return result, ", ".join(recipients)
    url = alert_settings.webhook_url
    secret = alert_settings.signing_secret
    if not url or not secret:
        return transport.SendResult(ok=False, error="The webhook was removed from this workspace's alert settings."), ""
    result = transport.webhook_post(
        url=url,
        secret=secret,
        payload=delivery.payload,
        event=delivery.event,
        delivery_id=str(delivery.public_id),
        now=now,
    )
    return result, transport.redacted_url(url)


def _attempt_record(*, delivery: Delivery, result: transport.SendResult, target: str, now: datetime) -> DeliveryAttempt:
    attempt = delivery.attempts
    changes: dict = {"last_http_status": result.http_status, "target": target[:500] or delivery.target}
    retry_in: float | None = None
    if result.ok:
        status = DeliveryStatus.DELIVERED
        changes.update(delivered_at=now, next_attempt_at=None, last_error="")
    elif result.retryable and attempt < settings.ALERTS_DELIVERY_MAX_ATTEMPTS:
        status = DeliveryStatus.RETRYING
        retry_in = retry_delay(attempt=attempt, retry_after=result.retry_after)
        changes.update(next_attempt_at=now + timedelta(seconds=retry_in), last_error=result.error)
    else:
        status = DeliveryStatus.FAILED
        changes.update(next_attempt_at=None, last_error=result.error)
    # Only this attempt's claim: if the sweep took the delivery back meanwhile, its retry decides.
    recorded = Delivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.SENDING, attempts=attempt).update(
        status=status, **changes
    )
    if not recorded:
        logger.warning("Alert delivery %s: attempt %d finished after it was taken as lost", delivery.public_id, attempt)
        return DeliveryAttempt(status=None)
    where = f"{delivery.get_channel_display().lower()} {changes['target']}".strip()
    if status == DeliveryStatus.DELIVERED:
        logger.info("Alert delivery %s (%s) delivered by %s", delivery.public_id, delivery.event, where)
    elif status == DeliveryStatus.RETRYING:
        logger.warning(
            "Alert delivery %s (%s) by %s failed, attempt %d of %d, retrying in %.0f s: %s",
            delivery.public_id,
            delivery.event,
            where,
            attempt,
            settings.ALERTS_DELIVERY_MAX_ATTEMPTS,
            retry_in,
            result.error,
        )
    else:
        logger.warning(
            "Alert delivery %s (%s) by %s failed after %d attempt(s): %s",
            delivery.public_id,
            delivery.event,
            where,
            attempt,
            result.error,
        )
    return DeliveryAttempt(status=status, retry_in=retry_in)


def deliveries_requeue_lost(*, now: datetime, batch: int = 500) -> int:
    """Send again what no task is going to send (run by every evaluation):

    - attempts still "sending" past their lease: the worker died mid-attempt. Back to retrying
      (failed if that was the last attempt). The receiver may get that attempt twice; the
      X-AdSync-Delivery header is the same, so it can tell.
    - waiting deliveries overdue by ALERTS_DELIVERY_LOST_AFTER: their message was lost (Redis
      flushed) or never sent (the broker was down when the event happened).

    Reads alerts_delivery_unfinished_idx: only unfinished deliveries. Returns how many were queued.
    """
    requeue: list[int] = []
    lost = Delivery.objects.filter(status=DeliveryStatus.SENDING, next_attempt_at__lt=now)
    for pk, attempts in lost.values_list("pk", "attempts")[:batch]:
        mine = Delivery.objects.filter(pk=pk, status=DeliveryStatus.SENDING, attempts=attempts)
        if attempts >= settings.ALERTS_DELIVERY_MAX_ATTEMPTS:
            mine.update(status=DeliveryStatus.FAILED, next_attempt_at=None, last_error=INTERRUPTED)
        elif mine.update(status=DeliveryStatus.RETRYING, next_attempt_at=now, last_error=INTERRUPTED):
            requeue.append(pk)
    overdue_before = now - timedelta(seconds=settings.ALERTS_DELIVERY_LOST_AFTER)
    overdue = list(
        Delivery.objects.filter(status__in=WAITING_STATUSES, next_attempt_at__lt=overdue_before).values_list(
            "pk", flat=True
        )[:batch]
    )
    if overdue:
        # Due from now: sent once per ALERTS_DELIVERY_LOST_AFTER at most, not on every evaluation.
        Delivery.objects.filter(pk__in=overdue, status__in=WAITING_STATUSES).update(next_attempt_at=now)
        logger.warning("Queued %d alert delivery(ies) again whose message was lost", len(overdue))
    requeue += overdue
    deliveries_enqueue(ids=requeue)
    return len(requeue)
