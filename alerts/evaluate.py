"""The alert evaluator's policy: which connections have a problem, and when one is over.

Run by beat every ALERTS_EVALUATE_INTERVAL seconds (alerts.tasks.evaluate_alerts). It reads the
sync engine's state and writes it only for the workspace's optional auto-pause (through the
engine's own service); the sync engine knows nothing about alerts. Three kinds:

- needs reconnecting: the last sync failed on expired or revoked access (sync_status error,
  last_sync_error_kind auth). Over once the error kind is no longer auth (a reconnect, or a
  sync that works again).
- failing: the workspace's failure threshold (default 3) of the latest syncs failed in a row
  (SyncRun outcomes newest first; a retried attempt counts once, by its job's last attempt; a
  rate-limited one is neither). Over once a sync succeeded after the latest failure.
- stale: no completed sync for the workspace's multiplier (default 3) of the frequency's interval
  (plus the Settings page's grace), while its slot passed at least one interval ago without a sync
  starting: the engine is not reaching it (scheduler, dispatcher or workers down, jobs lost). A
  connection held back by a platform throttle has a slot in the future and shows "Rate limited"
  instead; one that is already alerted as needing a reconnect or failing is not alerted again as
  stale. Over once a sync completed within the threshold again, or the connection is manual.

Every kind resolves only once the problem has been gone for ALERTS_RESOLVE_AFTER seconds (for
failures: no sync failed in that time), so a connection that flaps sends one alert, and one
"resolved" once it has settled, not a pair per flap.

Cost: candidates come from partial indexes that hold only rows in trouble (alerts.selectors), and
open incidents from the partial unique index of open ones. A healthy installation reads a few
short index ranges per evaluation (the jobs in flight, nothing else), however many connections
it has; a problem costs a few indexed queries while it lasts.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta

from django.conf import settings

from alerts import content
from alerts.models import AlertSettings, Incident, IncidentKind
from alerts.selectors import (
    alert_settings_for,
    connections_in_error,
    connections_overdue,
    failure_streak,
    incidents_open,
    last_failure_at,
    permanent_failure_streak,
)
from alerts.services import (
    deliveries_requeue_lost,
    incident_mark_clear,
    incident_mark_unclear,
    incident_open,
    incident_resolve,
)
from connections.models import AUTH_ERROR_KIND, SYNC_INTERVALS, Connection, PauseReason
from connections.status import FRESHNESS_GRACE_MIN
from syncing.health import engine_banner
from syncing.services import connections_pause

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    opened: int
    resolved: int
    requeued: int
    paused: int = 0


def stale_after(*, interval: timedelta, multiplier: int) -> timedelta:
    """How long without a completed sync makes a connection stale: the multiplier's intervals plus
    the grace the Settings page gives a sync that is running (connections.status)."""
    return multiplier * interval + max(FRESHNESS_GRACE_MIN, interval / 10)


def stale_since(*, connection: Connection, multiplier: int, now: datetime) -> datetime | None:
    """When the connection last completed a sync (or was added) if it is stale now, else None."""
    interval = SYNC_INTERVALS.get(connection.sync_frequency)
    # Due for at least an interval with no sync started: not one that a throttle holds back (its
    # slot is in the future), nor one just switched from manual whose first sync is starting.
    if interval is None or connection.next_sync_at is None or connection.next_sync_at > now - interval:
        return None
    since = connection.last_sync_completed_at or connection.created_at
    if now - since <= stale_after(interval=interval, multiplier=multiplier):
        return None
    return since


def _gone_since(incident: Incident, alert_settings: AlertSettings, now: datetime) -> datetime | None:
    """Since when the incident's problem is known to be gone, or None while it is there.

    Failures are judged on the runs' history: gone since the latest failure, once a sync after it
    succeeded. The other kinds are states: gone since the evaluator first saw them gone
    (clear_since), which a return of the problem resets.
    """
    connection = incident.connection
    if incident.kind == IncidentKind.FAILING:
        if failure_streak(connection_id=connection.pk, limit=1):
            return None
        return last_failure_at(connection_id=connection.pk) or incident.opened_at
    if incident.kind == IncidentKind.NEEDS_RECONNECT:
        gone = connection.last_sync_error_kind != AUTH_ERROR_KIND
    else:
        interval = SYNC_INTERVALS.get(connection.sync_frequency)
        since = connection.last_sync_completed_at or connection.created_at
        # Set to manual: nothing is expected of it any more.
        gone = interval is None or now - since <= stale_after(
            interval=interval, multiplier=alert_settings.stale_multiplier
        )
    return (incident.clear_since or now) if gone else None


def alerts_evaluate(*, now: datetime) -> Evaluation:
    """Open incidents for new problems, resolve those that are over, and send again deliveries
    whose message was lost. Safe to run in several processes at once."""
    open_incidents = list(incidents_open())
    in_auth_error = list(connections_in_error(auth=True))
    in_other_error = list(connections_in_error(auth=False))
    overdue = list(connections_overdue(now=now))
    workspace_ids = {incident.workspace_id for incident in open_incidents} | {
        connection.workspace_id for connection in [*in_auth_error, *in_other_error, *overdue]
    }
    settings_by_workspace = alert_settings_for(workspace_ids=workspace_ids)
    resolve_after = timedelta(seconds=settings.ALERTS_RESOLVE_AFTER)

    resolved = 0
    for incident in open_incidents:
        gone_since = _gone_since(incident, settings_by_workspace[incident.workspace_id], now)
        if gone_since is None:
            if incident.clear_since is not None:
                incident_mark_unclear(incident=incident)
        elif gone_since <= now - resolve_after:
            resolved += incident_resolve(incident=incident, now=now)
        elif incident.clear_since is None:
            incident_mark_clear(incident=incident, now=now)

    # What is open (or was resolved a moment ago: its problem is gone, so it is not found below).
    is_open = {(incident.connection_id, incident.kind) for incident in open_incidents}
    opened = 0

    def open_incident(connection: Connection, problem: content.Problem) -> None:
        nonlocal opened
        is_open.add((connection.pk, problem.kind))
        opened += incident_open(connection=connection, problem=problem, now=now) is not None

    for connection in in_auth_error:
        if (connection.pk, IncidentKind.NEEDS_RECONNECT) not in is_open:
            open_incident(connection, content.needs_reconnect(connection=connection))

    paused = 0
    for connection in in_other_error:
        paused += _auto_pause(connection, settings_by_workspace[connection.workspace_id], now)
        if (connection.pk, IncidentKind.FAILING) in is_open:
            continue
        threshold = settings_by_workspace[connection.workspace_id].failure_threshold
        streak = failure_streak(connection_id=connection.pk, limit=threshold)
        if streak >= threshold:
            open_incident(connection, content.failing(connection=connection, failures=streak))

    # Every scheduled connection goes stale when the engine itself is down (no scheduler tick, no
    # live sync worker): that is one problem, which the Settings page's banner, the admin's and
    # /readyz already name, not one alert per connection. No stale incident opens meanwhile;
    # those already open stay open until their connection syncs again.
    if engine_banner(now=now) is not None:
        overdue = []
    for connection in overdue:
        if any((connection.pk, kind) in is_open for kind in IncidentKind.values):
            continue  # stale, failing or waiting for a reconnect: alerted already
        multiplier = settings_by_workspace[connection.workspace_id].stale_multiplier
        since = stale_since(connection=connection, multiplier=multiplier, now=now)
        if since is not None:
            open_incident(connection, content.stale(connection=connection, since=since, now=now))

    requeued = deliveries_requeue_lost(now=now)
    if opened or resolved or paused:
        logger.info("Alerts: opened %d and resolved %d incident(s), paused %d connection(s)", opened, resolved, paused)
    return Evaluation(opened=opened, resolved=resolved, requeued=requeued, paused=paused)


def _auto_pause(connection: Connection, alert_settings: AlertSettings, now: datetime) -> bool:
    """The workspace's optional auto-pause: a scheduled connection whose latest syncs all failed
    permanently (the platform refusing the same request again and again) stops spending the
    platform's budget on it. The only write of the sync engine's state here, through its own
    conditional UPDATE (a connection paused meanwhile is left as it is)."""
    limit = alert_settings.auto_pause_after
    if limit is None or connection.paused_at is not None or connection.next_sync_at is None:
        return False
    if permanent_failure_streak(connection_id=connection.pk, limit=limit) < limit:
        return False
    done = connections_pause(
        connections=Connection.objects.filter(pk=connection.pk), reason=PauseReason.FAILURES, now=now
    )
    if done:
        logger.warning(
            "Paused automated syncs of connection %s after %d permanent failures in a row", connection.pk, limit
        )
    return bool(done)
