"""Reads for alerts: the evaluator's candidates, workspace settings and recipients, and the pages'
lists, always scoped to what the user may see where a user asks.

The evaluator's candidate queries are built so that their cost follows the number of connections
with a problem, not the number of connections: each is served by a partial index that holds only
rows in trouble (named beside each query).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import F, Prefetch, Q, QuerySet, Window
from django.db.models.functions import RowNumber
from django.http import Http404

from alerts.models import AlertSettings, Delivery, Incident, member_emails

__all__ = ["member_emails"]  # a read the pages share with AlertSettings.recipients (alerts.models)
from connections.models import (
    AUTH_ERROR_KIND,
    BUSY_STATUSES,
    RUNNABLE_STATUSES,
    SYNC_INTERVALS,
    Connection,
    ErrorKind,
    SyncStatus,
    Workspace,
)
from syncing.models import SyncOutcome, SyncRun

# The shortest scheduled interval (realtime): a connection due for less than this is on time
# whatever its frequency, so it is not a stale candidate.
SHORTEST_INTERVAL: timedelta = min(interval for interval in SYNC_INTERVALS.values() if interval is not None)

# Outcomes that say whether a sync worked. A retry is part of the same job (its last attempt
# decides), a rate-limited attempt neither failed nor succeeded, and a running one has not ended.
DECISIVE_OUTCOMES = (SyncOutcome.SUCCESS, SyncOutcome.ERROR, SyncOutcome.INTERRUPTED)
FAILED_OUTCOMES = (SyncOutcome.ERROR, SyncOutcome.INTERRUPTED)


# --- the evaluator's candidates -----------------------------------------------------------------


def _connections() -> QuerySet[Connection]:
    # Credentials are never needed to judge a connection's health: not decrypted here.
    # In id order: the model's default (by name) would sort what needs no sorting.
    return Connection.objects.select_related("workspace").defer("credentials").order_by("pk")


def connections_in_error(*, auth: bool) -> QuerySet[Connection]:
    """Connections whose last sync failed: with auth=True those waiting for a reconnect, else the
    others (candidates for "failing").

    Served by connections_error_idx (connections/models.py), a partial index on connections
    WHERE sync_status = 'error': only failing rows are in it, so this reads as many rows as are
    failing, however many connections there are.
    """
    in_error = _connections().filter(sync_status=SyncStatus.ERROR)
    if auth:
        return in_error.filter(last_sync_error_kind=AUTH_ERROR_KIND)
    return in_error.exclude(last_sync_error_kind=AUTH_ERROR_KIND)


def connections_overdue(*, now: datetime) -> QuerySet[Connection]:
    """Connections whose scheduled slot passed at least one realtime interval ago without a sync
    starting: the stale candidates (alerts.evaluate applies each one's own interval and threshold).

    A sync that starts moves next_sync_at to the next slot, so a connection that is being synced
    is never here; one the dispatcher does not reach (dispatcher, beat or workers down) is.
    - waiting rows: connections_due_idx (next_sync_at WHERE sync_status IN ('idle', 'error') AND
      next_sync_at IS NOT NULL), the dispatcher's own index: a range of rows overdue, which the
      dispatcher keeps near empty while it runs;
    - queued/syncing rows: connections_busy_idx (WHERE sync_status IN ('queued', 'syncing')),
      which holds only jobs in flight, at most the workers' slots times SYNC_QUEUE_AHEAD plus any
      lost ones that recovery has yet to return.
    """
    cutoff = now - SHORTEST_INTERVAL
    return _connections().filter(
        Q(sync_status__in=RUNNABLE_STATUSES, next_sync_at__isnull=False, next_sync_at__lt=cutoff)
        | Q(sync_status__in=BUSY_STATUSES, next_sync_at__lt=cutoff)
    )


def incidents_open() -> QuerySet[Incident]:
    """Every open incident, with its connection. Served by the partial unique index
    alerts_incident_one_open_per_kind (WHERE resolved_at IS NULL): open incidents only."""
    return (
        Incident.objects.filter(resolved_at__isnull=True)
        .select_related("workspace", "connection", "connection__workspace")
        .defer("connection__credentials")
        .order_by("pk")
    )


def failure_streak(*, connection_id: int, limit: int) -> int:
    """How many of the connection's latest syncs failed in a row, counting at most `limit`.

    Reads at most a few of its newest runs through syncing_run_conn_started_idx
    (connection, -started_at).
    """
    outcomes = (
        SyncRun.objects.filter(connection_id=connection_id, outcome__in=DECISIVE_OUTCOMES)
        .order_by("-started_at")
        .values_list("outcome", flat=True)[:limit]
    )
    streak = 0
    for outcome in outcomes:
        if outcome == SyncOutcome.SUCCESS:
            break
        streak += 1
    return streak


def permanent_failure_streak(*, connection_id: int, limit: int) -> int:
    """How many of the connection's latest attempts failed in a row on a permanent error (the
    platform refusing what was asked), counting at most `limit`: the auto-pause rule. Any other
    decisive outcome (a success, a transient or interrupted failure) ends the streak."""
    runs = (
        SyncRun.objects.filter(connection_id=connection_id, outcome__in=DECISIVE_OUTCOMES)
        .order_by("-started_at")
        .values_list("outcome", "error_class")[:limit]
    )
    streak = 0
    for outcome, error_class in runs:
        if outcome != SyncOutcome.ERROR or error_class != ErrorKind.PERMANENT:
            break
        streak += 1
    return streak


def last_failure_at(*, connection_id: int) -> datetime | None:
    """When the connection's latest failed sync started (syncing_run_conn_started_idx)."""
    return (
        SyncRun.objects.filter(connection_id=connection_id, outcome__in=FAILED_OUTCOMES)
        .order_by("-started_at")
        .values_list("started_at", flat=True)
        .first()
    )


# --- settings ---------------------------------------------------------------------------------------


def alert_settings_for(*, workspace_ids: Iterable[int]) -> dict[int, AlertSettings]:
    """Each workspace's settings; the defaults (unsaved) for a workspace that never changed them."""
    ids = set(workspace_ids)
    # The signing secret is decrypted only where a webhook is sent (alerts.services.delivery_send).
    rows = AlertSettings.objects.filter(workspace_id__in=ids).defer("webhook_secret")
    found = {row.workspace_id: row for row in rows}
    return {pk: found.get(pk) or AlertSettings(workspace_id=pk) for pk in ids}


# --- what a person may see --------------------------------------------------------------------------


def workspaces_for_user(*, user: User | AnonymousUser) -> QuerySet[Workspace]:
    if not user.is_authenticated:
        return Workspace.objects.none()
    return Workspace.objects.filter(memberships__user=user).order_by("name", "id")


def workspace_get_for_user(*, user: User | AnonymousUser, public_id: uuid.UUID | str) -> Workspace:
    """The workspace, or Http404 whether it does not exist or the user is not a member."""
    try:
        return workspaces_for_user(user=user).get(public_id=uuid.UUID(str(public_id)))
    except (Workspace.DoesNotExist, ValueError):
        raise Http404("No workspace with that id") from None


def incidents_recent(*, workspace_ids: Iterable[int], limit: int = 10) -> dict[int, list[Incident]]:
    """Each workspace's latest incidents with their deliveries, in a fixed number of queries."""
    ids = list(workspace_ids)
    rows = (
        Incident.objects.filter(workspace_id__in=ids)
        .annotate(
            position=Window(
                RowNumber(), partition_by=[F("workspace_id")], order_by=[F("opened_at").desc(), F("id").desc()]
            )
        )
        .filter(position__lte=limit)
        .select_related("connection")
        .defer("connection__credentials")
        .prefetch_related(Prefetch("deliveries", queryset=Delivery.objects.order_by("created_at", "channel")))
        .order_by("workspace_id", "-opened_at", "-id")
    )
    recent: dict[int, list[Incident]] = {pk: [] for pk in ids}
    for incident in rows:
        recent[incident.workspace_id].append(incident)
    return recent
