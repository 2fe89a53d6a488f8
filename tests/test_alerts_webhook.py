"""The alert webhook against a real HTTP receiver on 127.0.0.1: the HMAC-SHA256 signature and its
timestamp (checked by the receiver's own code, not ours), retries with backoff on 5xx answers and
refused connections with what the delivery log records, lost attempts, and a real Celery worker
delivering one."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import socket
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.conf import settings
from django.utils import timezone

from alerts.evaluate import alerts_evaluate
from alerts.models import Delivery, DeliveryChannel, DeliveryStatus, Incident
from alerts.services import INTERRUPTED, alert_settings_save, deliveries_requeue_lost, delivery_send, retry_delay
from alerts.tasks import evaluate_alerts
from tests.conftest import wait_for
from tests.test_alerts import needs_reconnect, reconnect

TOLERANCE = 300  # seconds: how old a timestamp the receiver accepts


@dataclasses.dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A webhook receiver on 127.0.0.1 in a thread: records every request and answers each with
    the next of `answers` (status, extra headers), 200 once they run out."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.answers: list[tuple[int, dict[str, str]]] = []
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    receiver.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    status, headers = receiver.answers.pop(0) if receiver.answers else (200, {})
                text = b"ok" if status < 300 else b"receiver says no"
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, format, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/adsync?token=t0k3n"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def verified(request: Received, secret: str, *, now) -> dict:
    """What a receiver does: recompute the signature over "<timestamp>.<raw body>" and refuse a
    stale timestamp; the parsed body if both hold."""
    timestamp = request.headers["x-adsync-timestamp"]
    expected = (
        "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256).hexdigest()
    )
    assert hmac.compare_digest(request.headers["x-adsync-signature"], expected), "signature mismatch"
    assert abs(now.timestamp() - int(timestamp)) <= TOLERANCE, "stale timestamp"
    return json.loads(request.body)


def signature_holds(request: Received, secret: str, *, timestamp: str, body: bytes) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(request.headers["x-adsync-signature"], expected)


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def webhook_to(workspace, url: str) -> str:
    """Alerts of the workspace by webhook only; the signing secret."""
    secret = alert_settings_save(
        workspace=workspace,
        email_enabled=False,
        email_recipients=[],
        webhook_url=url,
        failure_threshold=3,
        stale_multiplier=3,
    )
    assert secret is not None
    return secret


@pytest.fixture
def allow_loopback(settings):
    # The receiver is on 127.0.0.1, which webhooks may not reach by default (outside embedded mode).
    settings.ALERTS_WEBHOOK_ALLOW_PRIVATE = True


def opened_delivery(connection, now) -> Delivery:
    needs_reconnect(connection, now)
    alerts_evaluate(now=now)
    return Delivery.objects.get(channel=DeliveryChannel.WEBHOOK)


# --- signed and delivered ---------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_webhook_delivers_a_signed_alert(connection, workspace, receiver, allow_loopback):
    secret = webhook_to(workspace, receiver.url)
    now = timezone.now().replace(microsecond=0)
    delivery = opened_delivery(connection, now)

    attempt = delivery_send(delivery_id=delivery.pk, now=now)

    assert (attempt.status, attempt.retry_in) == (DeliveryStatus.DELIVERED, None)
    (request,) = receiver.requests
    body = verified(request, secret, now=now)
    incident = Incident.objects.get()
    stamp = now.isoformat().replace("+00:00", "Z")
    assert body == {
        "event": "incident.opened",
        "kind": "needs_reconnect",
        "title": "Demo ad account “Demo account 1” needs reconnecting",
        "message": incident.message,
        "occurred_at": stamp,
        "url": f"{settings.ALERTS_BASE_URL}/settings#connection-{connection.public_id}",
        "incident": {"id": str(incident.public_id), "opened_at": stamp, "resolved_at": None},
        "connection": {
            "id": str(connection.public_id),
            "name": "Demo account 1",
            "provider": "demo",
            "account_id": "demo-1",
        },
        "workspace": {"id": str(workspace.public_id), "name": "Alice's Agency"},
    }
    assert request.path == "/hooks/adsync?token=t0k3n"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-adsync-event"] == "incident.opened"
    assert request.headers["x-adsync-delivery"] == str(delivery.public_id)
    assert request.headers["x-adsync-timestamp"] == str(int(now.timestamp()))
    # The timestamp is signed with the body: neither can be changed or replayed with another.
    later = str(int(now.timestamp()) + 600)
    assert not signature_holds(request, secret, timestamp=later, body=request.body)
    assert not signature_holds(request, secret, timestamp=request.headers["x-adsync-timestamp"], body=b"{}")
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_http_status, delivery.last_error) == (
        "delivered",
        1,
        200,
        "",
    )
    assert (delivery.delivered_at, delivery.next_attempt_at) == (now, None)
    # The log names the receiver's host, never the URL's path or query (they may hold a token).
    assert delivery.target == f"http://127.0.0.1:{receiver.server.server_address[1]}/…"


@pytest.mark.django_db
@pytest.mark.embedded
def test_webhook_resolved_follows_on_the_same_channel(connection, workspace, receiver, allow_loopback):
    secret = webhook_to(workspace, receiver.url)
    now = timezone.now().replace(microsecond=0)
    delivery_send(delivery_id=opened_delivery(connection, now).pk, now=now)
    fixed = now + timedelta(minutes=1)
    reconnect(connection, fixed)
    alerts_evaluate(now=fixed)
    resolved_at = fixed + timedelta(seconds=settings.ALERTS_RESOLVE_AFTER)
    alerts_evaluate(now=resolved_at)

    resolved = Delivery.objects.get(event="incident.resolved")
    delivery_send(delivery_id=resolved.pk, now=resolved_at)

    assert [r.headers["x-adsync-event"] for r in receiver.requests] == ["incident.opened", "incident.resolved"]
    body = verified(receiver.requests[1], secret, now=resolved_at)
    assert (body["event"], body["incident"]["resolved_at"]) == (
        "incident.resolved",
        resolved_at.isoformat().replace("+00:00", "Z"),
    )
    assert body["message"] == "Demo ad account “Demo account 1” can be reached again: its syncs are back on schedule."


# --- retries ----------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_webhook_5xx_is_retried_with_backoff_until_delivered(connection, workspace, receiver, allow_loopback):
    secret = webhook_to(workspace, receiver.url)
    receiver.answers = [(500, {}), (503, {})]
    now = timezone.now().replace(microsecond=0)
    pk = opened_delivery(connection, now).pk

    first = delivery_send(delivery_id=pk, now=now)
    after_first = Delivery.objects.get(pk=pk)
    too_early = delivery_send(delivery_id=pk, now=now + timedelta(seconds=9))
    second = delivery_send(delivery_id=pk, now=now + timedelta(seconds=10))
    third = delivery_send(delivery_id=pk, now=now + timedelta(seconds=30))

    assert [(a.status, a.retry_in) for a in (first, too_early, second, third)] == [
        ("retrying", 10.0),
        (None, None),  # not due yet: a duplicate or early message does nothing
        ("retrying", 20.0),
        ("delivered", None),
    ]
    assert (after_first.status, after_first.attempts, after_first.last_http_status) == ("retrying", 1, 500)
    assert (after_first.last_error, after_first.next_attempt_at) == (
        "HTTP 500: receiver says no",
        now + timedelta(seconds=10),
    )
    # Every attempt is the same delivery with the same body, signed afresh with its own time.
    assert len({r.headers["x-adsync-delivery"] for r in receiver.requests}) == 1
    assert len({r.body for r in receiver.requests}) == 1
    for request, sent_at in zip(receiver.requests, [0, 10, 30], strict=True):
        verified(request, secret, now=now + timedelta(seconds=sent_at))
    delivery = Delivery.objects.get(pk=pk)
    assert (delivery.status, delivery.attempts, delivery.last_http_status, delivery.last_error) == (
        "delivered",
        3,
        200,
        "",
    )


@pytest.mark.django_db
@pytest.mark.embedded
def test_webhook_refused_connection_is_retried_then_given_up(connection, workspace, settings, allow_loopback):
    settings.ALERTS_DELIVERY_MAX_ATTEMPTS = 3
    webhook_to(workspace, f"http://127.0.0.1:{closed_port()}/hook")
    now = timezone.now().replace(microsecond=0)
    pk = opened_delivery(connection, now).pk

    attempts = [delivery_send(delivery_id=pk, now=now + timedelta(seconds=s)) for s in (0, 10, 30)]

    assert [(a.status, a.retry_in) for a in attempts] == [("retrying", 10.0), ("retrying", 20.0), ("failed", None)]
    delivery = Delivery.objects.get(pk=pk)
    assert (delivery.status, delivery.attempts, delivery.last_http_status, delivery.next_attempt_at) == (
        "failed",
        3,
        None,
        None,
    )
    assert delivery.last_error.startswith("Could not connect: ConnectError: ")
    assert delivery.delivered_at is None


@pytest.mark.django_db
@pytest.mark.embedded
def test_webhook_client_error_is_final(connection, workspace, receiver, allow_loopback):
    webhook_to(workspace, receiver.url)
    receiver.answers = [(410, {})]
    now = timezone.now()

    attempt = delivery_send(delivery_id=opened_delivery(connection, now).pk, now=now)

    assert (attempt.status, attempt.retry_in) == ("failed", None)
    delivery = Delivery.objects.get()
    assert (delivery.attempts, delivery.last_http_status, delivery.last_error) == (1, 410, "HTTP 410: receiver says no")


@pytest.mark.django_db
@pytest.mark.embedded
def test_webhook_retry_after_is_honoured_within_the_cap(connection, workspace, receiver, allow_loopback):
    webhook_to(workspace, receiver.url)
    receiver.answers = [(429, {"Retry-After": "120"}), (503, {"Retry-After": "86400"})]
    now = timezone.now()
    pk = opened_delivery(connection, now).pk

    first = delivery_send(delivery_id=pk, now=now)
    second = delivery_send(delivery_id=pk, now=now + timedelta(seconds=120))

    assert (first.retry_in, second.retry_in) == (120.0, settings.ALERTS_RETRY_BACKOFF_MAX)


def test_retry_delay_doubles_up_to_the_cap(settings):
    settings.ALERTS_RETRY_BACKOFF, settings.ALERTS_RETRY_BACKOFF_MAX = 10.0, 900.0

    assert [retry_delay(attempt=n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 320, 640, 900]


@pytest.mark.django_db
@pytest.mark.embedded
def test_webhook_to_a_loopback_address_is_refused_by_default(connection, workspace, receiver, settings):
    settings.ALERTS_WEBHOOK_ALLOW_PRIVATE = False
    webhook_to(workspace, receiver.url)
    now = timezone.now()

    attempt = delivery_send(delivery_id=opened_delivery(connection, now).pk, now=now)

    assert attempt.status == "failed"
    assert receiver.requests == []
    assert Delivery.objects.get().last_error == (
        "Refused: 127.0.0.1 resolves to 127.0.0.1, a private or local address "
        "(set ALERTS_WEBHOOK_ALLOW_PRIVATE=1 to allow webhooks on your own network)."
    )


# --- lost messages and attempts -------------------------------------------------------------------------


@pytest.mark.django_db
def test_lost_attempts_and_messages_are_queued_again_once(make_connection, workspace, broker):
    webhook_to(workspace, "https://hooks.example.com/adsync")
    now = timezone.now()
    hour_ago = now - timedelta(hours=1)
    for connection in (make_connection(), make_connection()):
        needs_reconnect(connection, hour_ago)
    alerts_evaluate(now=hour_ago)
    lost, crashed = Delivery.objects.order_by("incident__connection_id")
    # One's message was lost (Redis flushed): pending for an hour. The other's worker was killed
    # mid-attempt: still "sending", its lease run out.
    Delivery.objects.filter(pk=crashed.pk).update(
        status="sending", attempts=1, next_attempt_at=now - timedelta(seconds=1)
    )

    requeued = deliveries_requeue_lost(now=now)
    again = deliveries_requeue_lost(now=now + timedelta(seconds=1))

    assert (requeued, again) == (2, 0)
    assert broker.llen(settings.ALERTS_QUEUE) == 2
    crashed.refresh_from_db()
    lost.refresh_from_db()
    assert (crashed.status, crashed.attempts, crashed.next_attempt_at, crashed.last_error) == (
        "retrying",
        1,
        now,
        INTERRUPTED,
    )
    assert (lost.status, lost.attempts, lost.next_attempt_at) == ("pending", 0, now)


# --- the tasks --------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.embedded
def test_evaluate_task_runs_the_evaluator(connection):
    needs_reconnect(connection, timezone.now())

    evaluate_alerts.apply()

    assert Incident.objects.get().kind == "needs_reconnect"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_worker_delivers_the_webhook_retrying_a_500(make_connection, workspace, start_worker, receiver):
    secret = webhook_to(workspace, receiver.url)
    receiver.answers = [(500, {})]
    start_worker(ALERTS_WEBHOOK_ALLOW_PRIVATE="1", ALERTS_RETRY_BACKOFF="0.2")
    connection = make_connection()
    needs_reconnect(connection, timezone.now())

    alerts_evaluate(now=timezone.now())  # the delivery is queued when its transaction commits

    wait_for(
        lambda: Delivery.objects.filter(status=DeliveryStatus.DELIVERED).exists(),
        timeout=30,
        message="the worker to deliver the webhook",
    )
    assert len(receiver.requests) == 2
    for request in receiver.requests:
        body = verified(request, secret, now=timezone.now())
    assert (body["event"], body["connection"]["id"]) == ("incident.opened", str(connection.public_id))
    delivery = Delivery.objects.get()
    assert (delivery.attempts, delivery.last_http_status, delivery.last_error) == (2, 200, "")


@pytest.mark.django_db
@pytest.mark.embedded
def test_the_webhook_url_is_encrypted_at_rest_and_kept_through_a_rotation(workspace):
    from django.db import connection as db

    from alerts.models import AlertSettings
    from alerts.services import webhook_secret_rotate

    url = "https://hooks.example.com/services/T000/B000/XXXXSECRETXXXX"
    secret = webhook_to(workspace, url)

    row = AlertSettings.objects.get(workspace=workspace)
    assert (row.webhook_url, row.webhook_host, row.signing_secret) == (url, "https://hooks.example.com", secret)
    with db.cursor() as cursor:
        cursor.execute("SELECT * FROM alert_settings WHERE workspace_id = %s", [workspace.pk])
        stored = " ".join(str(value) for value in cursor.fetchone())
    assert "XXXXSECRETXXXX" not in stored
    assert secret not in stored

    rotated = webhook_secret_rotate(workspace=workspace)

    row.refresh_from_db()
    assert (row.webhook_url, row.signing_secret) == (url, rotated)
