"""Writes to workspaces, connections and API tokens.

A connection's sync state and schedule (sync_status, job_id, queued_at, queued_trigger,
next_sync_at, rate_limited_until) are written by the state machine in syncing/services.py only:
a frequency change or a reconnect is validated or stored here and calls it for those columns.
A new row is the exception: it is inserted here with its first slot (connection_create).
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from connections.models import ApiToken, Connection, Membership, PauseReason, Provider, SyncFrequency, Workspace
from syncing import schedule
from syncing.services import (
    connection_reschedule,
    connection_resume_after_reconnect,
    connections_pause,
    connections_unschedule,
)
from syncing.services import connection_resume as syncs_resume


def frequency_validate(value: object) -> str:
    """The frequency as stored, or a ValidationError that lists the valid choices."""
    if value not in SyncFrequency.values:
        raise ValidationError(
            f"{value!r} is not a valid sync frequency; valid choices: {', '.join(SyncFrequency.values)}",
            code="invalid_choice",
        )
    return str(value)


def workspace_create(*, name: str, owner: User) -> Workspace:
    with transaction.atomic():
        workspace = Workspace.objects.create(name=name)
        Membership.objects.create(workspace=workspace, user=owner, role=Membership.Role.OWNER)
    return workspace


def workspace_add_member(*, workspace: Workspace, user: User, role: str = Membership.Role.MEMBER) -> Membership:
    """The user's membership of the workspace; one they already have keeps its role."""
    membership, _ = Membership.objects.get_or_create(workspace=workspace, user=user, defaults={"role": role})
    return membership


# --- API tokens ---------------------------------------------------------------------------------


def token_hash(key: str) -> str:
    """How a key is stored and looked up (connections.authentication): its SHA-256, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()


def api_token_issue(*, user: User, name: str = "") -> tuple[ApiToken, str]:
    """Create a token; returns it and the key, which is never stored and cannot be shown again."""
    key = "ads_" + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name, prefix=key[:12], key_hash=token_hash(key))
    return token, key


def api_token_rename(*, token: ApiToken, name: str) -> None:
    """Only the label: a full-row save would write back revoked_at as it was read, un-revoking a
    token revoked meanwhile."""
    ApiToken.objects.filter(pk=token.pk).update(name=name)
    token.name = name


def api_token_revoke(*, token: ApiToken, now: datetime | None = None) -> bool:
    """Revoke the token; False when it already was (its revocation time is kept)."""
    now = now or timezone.now()
    return ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now) == 1


# --- connections --------------------------------------------------------------------------------


def connection_create(
    *,
    workspace: Workspace,
    provider: str,
    external_account_id: str,
    name: str,
    currency: str = "USD",
    timezone_name: str = "UTC",
    credentials: dict | None = None,
    sync_frequency: str = SyncFrequency.MANUAL,
    provider_options: dict | None = None,
    lookback_days: int | None = None,
    now: datetime | None = None,
) -> Connection:
    """A new connection, idle, scheduled from its frequency (due at once unless manual)."""
    if provider not in Provider.values:
        raise ValidationError(f"{provider!r} is not a provider; valid choices: {', '.join(Provider.values)}")
    frequency = frequency_validate(sync_frequency)
    now = now or timezone.now()
    connection = Connection(
        workspace=workspace,
        provider=provider,
        external_account_id=external_account_id,
        name=name,
        currency=currency,
        timezone=timezone_name,
        credentials=credentials or {},
        provider_options=provider_options or {},
        lookback_days=lookback_days,
        sync_frequency=frequency,
    )
    # The row is born with its first slot: there is no state to race with before it exists.
    connection.next_sync_at = schedule.next_sync_after_change(
        frequency=frequency, last_attempted_at=None, public_id=connection.public_id, now=now
    )
    connection.save()
    return connection


# What an operator may edit on an existing connection (the admin's form). Never the sync state or
# the schedule, which only the state machine writes, nor the frequency, whose change recomputes
# the schedule (connection_set_frequency).
EDITABLE_FIELDS = (
    "workspace",
    "provider",
    "external_account_id",
    "name",
    "currency",
    "timezone",
    "lookback_days",
    "provider_options",
)


def connection_update(*, connection: Connection, fields: Iterable[str]) -> None:
    """Save these edited fields of the instance, and only these: a full-row save would write
    back the sync state as it was read when the form opened, over whatever a worker changed since."""
    fields = list(fields)
    refused = sorted(set(fields) - set(EDITABLE_FIELDS))
    if refused:
        raise ValueError(f"not editable here: {', '.join(refused)}")
    if fields:
        connection.save(update_fields=fields)


def connection_set_frequency(*, connection: Connection, frequency: str, now: datetime | None = None) -> Connection:
    """Change the schedule; it takes effect at once. A running job is left to finish.

    The next due time runs from the last attempt's start, never earlier than a platform
    throttle allows; a connection waiting for a reconnect stays unscheduled
    (syncing.services.connection_reschedule writes both, safe against a worker's start).
    """
    frequency = frequency_validate(frequency)
    now = now or timezone.now()
    next_at = connection_reschedule(connection=connection, frequency=frequency, now=now)
    connection.sync_frequency = frequency
    connection.next_sync_at = next_at
    return connection


def connection_pause(*, connection: Connection, now: datetime | None = None) -> bool:
    """Pause the connection's automated syncs, keeping its frequency; False if already paused."""
    paused = connections_pause(
        connections=Connection.objects.filter(pk=connection.pk), reason=PauseReason.USER, now=now or timezone.now()
    )
    connection.refresh_from_db()
    return paused == 1


def connection_resume(*, connection: Connection, now: datetime | None = None) -> bool:
    """Resume automated syncs at the kept frequency (due now if its interval has passed)."""
    resumed = syncs_resume(connection=connection, now=now or timezone.now())
    connection.refresh_from_db()
    return resumed


def workspace_syncs_stop(*, workspace: Workspace, now: datetime | None = None) -> int:
    """ "Stop all automated syncs" (the spec's FAQ) without forgetting any frequency: one UPDATE.
    Connections paused on their own stay paused for their own reason."""
    return connections_pause(
        connections=Connection.objects.filter(workspace=workspace),
        reason=PauseReason.WORKSPACE,
        now=now or timezone.now(),
    )


def workspace_syncs_resume(*, workspace: Workspace, now: datetime | None = None) -> int:
    """Undo "Stop all automated syncs": resume what it paused (not what was paused on its own)."""
    now = now or timezone.now()
    stopped = Connection.objects.filter(workspace=workspace, pause_reason=PauseReason.WORKSPACE)
    return sum(syncs_resume(connection=c, now=now) for c in stopped.only("pk", "public_id").iterator())


def connection_credentials_replace(
    *, connection: Connection, credentials: dict, expires_at: datetime | None, now: datetime | None = None
) -> Connection:
    """Store new credentials (an OAuth reconnect, an admin pasting a token).

    A connection that was failing because its access expired is put back in business in the
    same transaction: idle, the error cleared, and scheduled again (sync_fail unschedules a
    connection whose access failed, so that it stops calling the platform with a dead token).
    """
    now = now or timezone.now()
    with transaction.atomic():
        Connection.objects.filter(pk=connection.pk).update(
            credentials=credentials, credentials_expires_at=expires_at, credentials_updated_at=now
        )
        connection_resume_after_reconnect(connection=connection, now=now)
    connection.refresh_from_db()
    return connection


def connections_set_frequency_all(
    *, connections: QuerySet[Connection], frequency: str, now: datetime | None = None
) -> int:
    """Set many connections' frequency (manage.py set_sync_frequency --all, admin actions).

    Pausing (manual) is one UPDATE however many rows: nothing per row to compute. Any other
    frequency schedules each connection from its own last attempt, one short UPDATE each.
    """
    frequency = frequency_validate(frequency)
    if frequency == SyncFrequency.MANUAL:
        return connections_unschedule(connections=connections)
    now = now or timezone.now()
    count = 0
    for connection in connections.only("pk", "public_id").iterator():
        connection_set_frequency(connection=connection, frequency=frequency, now=now)
        count += 1
    return count


@dataclasses.dataclass(frozen=True)
class ConnectAccount:
    """An ad account a person chose to connect, as the platform describes it."""

    external_account_id: str
    name: str
    currency: str
    timezone_name: str
    # Merged over the credentials shared by the sign-in (Google: the manager to log in through).
    credentials: dict = dataclasses.field(default_factory=dict)


def connections_connect_accounts(
    *,
    workspace: Workspace,
    provider: str,
    accounts: Sequence[ConnectAccount],
    credentials: dict,
    expires_at: datetime | None,
    now: datetime,
) -> tuple[list[Connection], list[Connection]]:
    """The end of a connect flow: a manual connection per new account; an account the workspace
    already has gets the new access (a reconnect, which also clears an expired-access error).

    All or nothing. Returns (created, reconnected).
    """
    created: list[Connection] = []
    reconnected: list[Connection] = []
    with transaction.atomic():
        for account in accounts:
            account_credentials = {**credentials, **account.credentials}
            rows = Connection.objects.select_for_update().filter(
                workspace=workspace, provider=provider, external_account_id=account.external_account_id
            )
            connection = rows.first()
            if connection is None:
                try:
                    with transaction.atomic():
                        connection = connection_create(
                            workspace=workspace,
                            provider=provider,
                            external_account_id=account.external_account_id,
                            name=account.name,
                            currency=account.currency,
                            timezone_name=account.timezone_name,
                            credentials=account_credentials,
                            sync_frequency=SyncFrequency.MANUAL,
                            now=now,
                        )
                        if expires_at is not None:
                            Connection.objects.filter(pk=connection.pk).update(credentials_expires_at=expires_at)
                            connection.credentials_expires_at = expires_at
                    created.append(connection)
                    continue
                except IntegrityError:
                    # The same choice posted twice at once: the other request created it first.
                    connection = rows.first()
                    if connection is None:
                        raise
            Connection.objects.filter(pk=connection.pk).update(
                name=account.name, currency=account.currency, timezone=account.timezone_name
            )
            reconnected.append(
                connection_credentials_replace(
                    connection=connection, credentials=account_credentials, expires_at=expires_at, now=now
                )
            )
    return created, reconnected
