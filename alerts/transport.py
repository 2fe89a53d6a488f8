"""Sending one alert: a signed webhook POST or an email. Network I/O only: no database here, so the
callers (alerts.services.delivery_send) can keep it outside any transaction.

Webhook signature (what a receiver checks):

    X-AdSync-Timestamp: 1796212800                       (Unix seconds when this attempt was sent)
    X-AdSync-Signature: sha256=<hex HMAC-SHA256(key=secret, msg=f"{timestamp}." + raw body)>

The key is the workspace's signing secret as shown ("whsec_…", UTF-8). The timestamp is signed
with the body, so a receiver that rejects timestamps older than a few minutes cannot be fed an old
request again; X-AdSync-Delivery (the same on every retry of one delivery) lets it drop duplicates.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import json
import smtplib
import socket
from datetime import datetime
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core.mail import send_mail

SIGNATURE_HEADER = "X-AdSync-Signature"
TIMESTAMP_HEADER = "X-AdSync-Timestamp"
DELIVERY_HEADER = "X-AdSync-Delivery"
EVENT_HEADER = "X-AdSync-Event"
USER_AGENT = "AdSync-Alerts/1"
# Errors stored in the delivery log and logged are cut to this; a receiver's error page can be long.
ERROR_MAX = 300


@dataclasses.dataclass(frozen=True)
class SendResult:
    """What one attempt came to. retryable: worth trying again later (a timeout, a 5xx)."""

    ok: bool
    retryable: bool = False
    error: str = ""
    http_status: int | None = None
    # Seconds the receiver asked us to wait (Retry-After on a 429 or 503), if it said.
    retry_after: float | None = None


def body_bytes(payload: dict) -> bytes:
    """The exact bytes sent and signed: compact, keys sorted, so every retry signs the same body."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signature(*, secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def redacted_url(url: str, *, path: bool = True) -> str:
    """scheme://host[:port]/… : enough to tell webhooks apart in a log without the path's token
    (with path=False, without the "/…" either)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    suffix = "/…" if path and (parts.path.strip("/") or parts.query) else ""
    return f"{parts.scheme}://{host}{port}{suffix}"


def _refused_address(url: str) -> SendResult | None:
    """Unless ALERTS_WEBHOOK_ALLOW_PRIVATE, a webhook may only reach public addresses: a workspace
    member must not be able to make our workers POST to the database, Redis or a cloud metadata
    service. Checked on every attempt, against what the name resolves to now."""
    if settings.ALERTS_WEBHOOK_ALLOW_PRIVATE:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        infos = socket.getaddrinfo(
            host, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except (socket.gaierror, UnicodeError) as exc:
        return SendResult(ok=False, retryable=True, error=f"Could not resolve {host}: {exc}")
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            return SendResult(
                ok=False,
                error=(
                    f"Refused: {host} resolves to {address}, a private or local address "
                    "(set ALERTS_WEBHOOK_ALLOW_PRIVATE=1 to allow webhooks on your own network)."
                ),
            )
    return None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


def webhook_post(*, url: str, secret: str, payload: dict, event: str, delivery_id: str, now: datetime) -> SendResult:
    """POST the payload, signed. 2xx is delivered; 5xx, 408, 429, timeouts and refused connections
    are worth retrying; any other answer (4xx, a redirect, which is not followed) is final."""
    refused = _refused_address(url)
    if refused is not None:
        return refused
    body = body_bytes(payload)
    timestamp = int(now.timestamp())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: event,
        DELIVERY_HEADER: delivery_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret=secret, timestamp=timestamp, body=body),
    }
    try:
        # No proxies from the environment: the address check above must see where we connect.
        response = httpx.post(
            url,
            content=body,
            headers=headers,
            timeout=settings.ALERTS_WEBHOOK_TIMEOUT,
            follow_redirects=False,
            trust_env=False,
        )
    except httpx.TimeoutException:
        return SendResult(ok=False, retryable=True, error=f"No answer within {settings.ALERTS_WEBHOOK_TIMEOUT:g} s")
    except httpx.HTTPError as exc:
        # Refused, reset, DNS, TLS. The URL's path may hold a token: never in the message.
        text = str(exc).replace(url, redacted_url(url))
        return SendResult(
            ok=False, retryable=True, error=f"Could not connect: {type(exc).__name__}: {text}"[:ERROR_MAX]
        )
    status = response.status_code
    if 200 <= status < 300:
        return SendResult(ok=True, http_status=status)
    text = " ".join(response.text.split())[:200]
    error = f"HTTP {status}" + (f": {text}" if text else "")
    if 300 <= status < 400:
        error = f"HTTP {status}: redirects are not followed; use the final URL"
    retryable = status >= 500 or status in (408, 429)
    return SendResult(
        ok=False, retryable=retryable, error=error[:ERROR_MAX], http_status=status, retry_after=_retry_after(response)
    )


def email_send(*, subject: str, body: str, recipients: list[str]) -> SendResult:
    """One email to all recipients through Django's mail (the console backend in embedded mode)."""
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients, fail_silently=False)
    except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as exc:
        # The server will refuse these addresses next time too.
        return SendResult(ok=False, error=f"Refused by the mail server: {exc}"[:ERROR_MAX])
    except (smtplib.SMTPException, OSError) as exc:
        return SendResult(ok=False, retryable=True, error=f"Mail server error: {type(exc).__name__}: {exc}"[:ERROR_MAX])
    return SendResult(ok=True)
