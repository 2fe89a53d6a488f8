"""Writes to workspaces and connections (the sync state machine lives in syncing/services.py)."""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from connections.models import Connection, Membership, Provider, SyncFrequency, Workspace
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

    The next due time is recomputed from the last attempt's start in the same UPDATE. The
    worker's start transition is conditional on the frequency it read, so it cannot overwrite
    this with a time computed from the old frequency.
    """
    frequency = frequency_validate(frequency)
    now = now or timezone.now()
    current = Connection.objects.filter(pk=connection.pk).values("last_sync_attempted_at").get()
    next_at = schedule.next_sync_after_change(
        frequency=frequency,
        last_attempted_at=current["last_sync_attempted_at"],
        public_id=connection.public_id,
        now=now,
    )
    Connection.objects.filter(pk=connection.pk).update(sync_frequency=frequency, next_sync_at=next_at)
    connection.sync_frequency = frequency
    connection.next_sync_at = next_at
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
