"""Writes to workspaces and connections (the sync state machine lives in syncing/services.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from connections.models import AUTH_ERROR_KIND, Connection, Membership, Provider, SyncFrequency, SyncStatus, Workspace
from syncing import schedule


def frequency_validate(value: object) -> str:
    """The frequency as stored, or a ValidationError that lists the valid choices."""
    if value not in SyncFrequency.values:
        raise ValidationError(
            f"{value!r} is not a valid sync frequency; valid choices: {', '.join(SyncFrequency.values)}",
            code="invalid_choice",
        )
    return str(value)


def workspace_create(*, name: str, owner: AbstractBaseUser) -> Workspace:
    with transaction.atomic():
        workspace = Workspace.objects.create(name=name)
        Membership.objects.create(workspace=workspace, user=owner, role=Membership.Role.OWNER)
    return workspace


def workspace_add_member(
    *, workspace: Workspace, user: AbstractBaseUser, role: str = Membership.Role.MEMBER
) -> Membership:
    membership, _ = Membership.objects.get_or_create(workspace=workspace, user=user, defaults={"role": role})
    return membership


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
    now: datetime | None = None,
) -> Connection:
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
        sync_frequency=frequency,
    )
    connection.next_sync_at = schedule.next_sync_after_change(
        frequency=frequency, last_attempted_at=None, public_id=connection.public_id, now=now
    )
    connection.save()
    return connection


def connection_set_frequency(*, connection: Connection, frequency: str, now: datetime | None = None) -> Connection:
    """Change the schedule; it takes effect at once. A running job is left to finish.

    The next due time runs from the last attempt's start. The UPDATE is conditional on the
    values it was computed from, so a worker's start that lands in between (and moves the last
    attempt) makes us compute again rather than write a stale time; and the worker's start is
    conditional on the frequency it read, so it cannot overwrite this with the old frequency.
    It never schedules earlier than a platform throttle allows, and a connection waiting for a
    reconnect stays unscheduled.
    """
    frequency = frequency_validate(frequency)
    now = now or timezone.now()
    fields = ("last_sync_attempted_at", "rate_limited_until", "sync_status", "last_sync_error_kind")
    for _ in range(5):
        current = Connection.objects.filter(pk=connection.pk).values(*fields).get()
        next_at = schedule.next_sync_after_change(
            frequency=frequency,
            last_attempted_at=current["last_sync_attempted_at"],
            public_id=connection.public_id,
            now=now,
        )
        if next_at is not None and current["rate_limited_until"] is not None:
            next_at = max(next_at, current["rate_limited_until"])
        if current["sync_status"] == SyncStatus.ERROR and current["last_sync_error_kind"] == AUTH_ERROR_KIND:
            next_at = None
        if Connection.objects.filter(pk=connection.pk, **current).update(
            sync_frequency=frequency, next_sync_at=next_at
        ):
            break
    else:
        raise RuntimeError(f"connection {connection.pk} kept changing while its frequency was being set")
    connection.sync_frequency = frequency
    connection.next_sync_at = next_at
    return connection


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
        # Locked, so the schedule is computed from values nobody changes before we write.
        current = (
            Connection.objects.select_for_update()
            .filter(pk=connection.pk)
            .values("sync_frequency", "last_sync_attempted_at")
            .get()
        )
        next_at = schedule.next_sync_after_change(
            frequency=current["sync_frequency"],
            last_attempted_at=current["last_sync_attempted_at"],
            public_id=connection.public_id,
            now=now,
        )
        Connection.objects.filter(pk=connection.pk).update(
            credentials=credentials, credentials_expires_at=expires_at, credentials_updated_at=now
        )
        Connection.objects.filter(
            pk=connection.pk, sync_status=SyncStatus.ERROR, last_sync_error_kind=AUTH_ERROR_KIND
        ).update(
            sync_status=SyncStatus.IDLE,
            last_sync_error=None,
            last_sync_error_kind="",
            next_sync_at=next_at,
        )
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
        return connections.update(sync_frequency=frequency, next_sync_at=None)
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
