"""What an alert says: titles, messages, the webhook's JSON body and the email. Pure functions.

The title stays the same for an incident's whole life, so the "Resolved: …" email threads under
the alert in a mail client.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from django.conf import settings

from alerts.models import DeliveryEvent, Incident, IncidentKind
from connections.models import Connection, Provider
from connections.status import FREQUENCY_LABELS

SUBJECT_PREFIX = "[AdSync] "

ACCOUNT_NOUNS: dict[str, str] = {
    Provider.META: "Meta ad account",
    Provider.GOOGLE: "Google Ads account",
    Provider.DEMO: "Demo ad account",
}


def account_label(connection: Connection) -> str:
    """Meta ad account “Acme Shoes”."""
    noun = ACCOUNT_NOUNS.get(connection.provider, "Ad account")
    return f"{noun} “{connection.name}”"


def duration_text(span: timedelta) -> str:
    """ "45 s", "12 min", "3 h", "1 day", "4 days": how long something has been going on."""
    seconds = max(0, int(span.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h"
    days = seconds // 86400
    return "1 day" if days == 1 else f"{days} days"


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class Problem:
    """A problem the evaluator found, in words: what the incident's alert will say."""

    kind: str
    title: str
    message: str
    details: dict


def needs_reconnect(*, connection: Connection) -> Problem:
    label = account_label(connection)
    error = connection.last_sync_error or "access expired or was revoked"
    return Problem(
        kind=IncidentKind.NEEDS_RECONNECT,
        title=f"{label} needs reconnecting",
        message=(
            f"AdSync can no longer reach {label} ({connection.external_account_id}): {error}. "
            "Its scheduled syncs are paused until someone reconnects the account on the Settings page."
        ),
        details={"error": error},
    )


def failing(*, connection: Connection, failures: int) -> Problem:
    label = account_label(connection)
    error = connection.last_sync_error or "no message"
    return Problem(
        kind=IncidentKind.FAILING,
        title=f"{label} failed {failures} syncs in a row",
        message=f"The last {failures} syncs of {label} ({connection.external_account_id}) failed. Last error: {error}",
        details={"failures": failures, "error": error},
    )


def stale(*, connection: Connection, since: datetime, now: datetime) -> Problem:
    label = account_label(connection)
    frequency = FREQUENCY_LABELS.get(connection.sync_frequency, connection.sync_frequency)
    if connection.last_sync_completed_at is None:
        when = f"it has not completed a sync since it was added {duration_text(now - since)} ago"
    else:
        when = f"its last completed sync was {duration_text(now - since)} ago, at {utc_text(since)}"
    return Problem(
        kind=IncidentKind.STALE,
        title=f"{label} is stale",
        message=(
            f"{label} ({connection.external_account_id}) is scheduled to sync {frequency.lower()}, but {when}. "
            "Scheduled syncs may not be running: check the scheduler and the workers."
        ),
        details={"last_completed_at": iso(connection.last_sync_completed_at), "frequency": connection.sync_frequency},
    )


RESOLUTIONS: dict[str, str] = {
    IncidentKind.NEEDS_RECONNECT: "{label} can be reached again: its syncs are back on schedule.",
    IncidentKind.FAILING: "{label} syncs successfully again.",
    IncidentKind.STALE: "{label} has completed a sync again.",
}


def resolution(*, incident: Incident, connection: Connection) -> str:
    return RESOLUTIONS[incident.kind].format(label=account_label(connection))


def connection_url(connection: Connection) -> str:
    return f"{settings.ALERTS_BASE_URL}/settings#connection-{connection.public_id}"


def payload(*, incident: Incident, connection: Connection, event: str, message: str, now: datetime) -> dict:
    """The webhook's JSON body (and what the email is written from). No credentials, no secrets."""
    workspace = incident.workspace
    return {
        "event": event,
        "kind": incident.kind,
        "title": incident.title,
        "message": message,
        "occurred_at": iso(now),
        "url": connection_url(connection),
        "incident": {
            "id": str(incident.public_id),
            "opened_at": iso(incident.opened_at),
            "resolved_at": iso(incident.resolved_at),
        },
        "connection": {
            "id": str(connection.public_id),
            "name": connection.name,
            "provider": connection.provider,
            "account_id": connection.external_account_id,
        },
        "workspace": {"id": str(workspace.public_id), "name": workspace.name},
    }


@dataclasses.dataclass(frozen=True)
class Email:
    subject: str
    body: str


def email(body: dict) -> Email:
    """The plain-text email for a delivery's payload."""
    resolved = body["event"] == DeliveryEvent.RESOLVED
    # One line: an account name with a line break in it must not make the mail a header injection
    # (Django refuses to send such a subject at all).
    subject = " ".join((SUBJECT_PREFIX + ("Resolved: " if resolved else "") + body["title"]).split())
    connection, workspace = body["connection"], body["workspace"]
    lines = [
        body["message"],
        "",
        f"Account: {connection['name']} ({connection['provider']} {connection['account_id']})",
        f"Workspace: {workspace['name']}",
        f"Opened: {_utc_iso_text(body['incident']['opened_at'])}",
    ]
    if resolved and body["incident"]["resolved_at"]:
        lines.append(f"Resolved: {_utc_iso_text(body['incident']['resolved_at'])}")
    lines += [
        f"Open AdSync: {body['url']}",
        "",
        f"You get this email because you are on the alert list of {workspace['name']}.",
        f"Change who gets alerts and how: {settings.ALERTS_BASE_URL}/settings/alerts",
    ]
    return Email(subject=subject, body="\n".join(lines) + "\n")


def _utc_iso_text(value: str) -> str:
    return utc_text(datetime.fromisoformat(value))
