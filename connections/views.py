"""The Settings page: server-rendered, live by polling a partial, and usable without JavaScript.

Every form posts and redirects back with a message; with JavaScript the same forms are sent
with fetch and answer JSON, so the row updates in place. The page is one page of a filtered,
sorted list (an agency has hundreds of accounts), with counters that are filters themselves.
Each connection's recent runs open in place (a partial fetched when opened, a page of its own
without JavaScript) and link to a run's page with its change ledger (issue 13).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import zoneinfo
from datetime import UTC, date, datetime, timedelta, tzinfo
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Page, Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseNotModified, JsonResponse, QueryDict
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from connections.models import Connection, Provider, SyncFrequency, SyncStatus, SyncTrigger, Workspace
from connections.request_user import signed_in_user
from connections.selectors import (
    SPARK_DAYS,
    ConnectionFilters,
    Sort,
    StatusFilter,
    active_backfill_of,
    attempts_by_hour,
    budgets_in_use,
    connection_counts,
    connection_get_for_user,
    connections_filtered,
    connections_for_user,
    connections_in_scope,
    restated_days,
    spend_by_day,
    with_active_backfill,
    workspace_get_for_user,
    workspace_pause_counts,
    workspaces_for_user,
)
from connections.services import (
    connection_pause,
    connection_resume,
    connection_set_frequency,
    workspace_syncs_resume,
    workspace_syncs_stop,
)
from connections.status import (
    FREQUENCY_LABELS,
    attempt_strip,
    budget_text,
    connection_status_view,
    rate_limited_message,
    spend_sparkline,
)
from syncing.health import engine_banner
from syncing.models import SyncRun
from syncing.selectors import (
    FIELD_LABELS,
    MetricChange,
    backfill_get,
    backfills_active_by_connection,
    day_label,
    sync_changes_describe,
    sync_changes_for_run,
    sync_run_changes_summary,
    sync_run_for_connection,
    sync_runs_with_changes_for_connection,
)
from syncing.services import (
    BrokerUnavailable,
    CancelResult,
    RateLimited,
    backfill_cancel,
    backfill_request,
    connection_cancel_sync,
    connection_enqueue_sync,
)

# Cards show everything about a connection; the list shows a line each. Past this many
# connections the list is the default, so an agency's first screen is an overview, not six cards.
LIST_FROM = 12
PAGE_SIZES = {"cards": 20, "list": 100}
VIEWS = ("cards", "list")
# The browser's zone, which settings.js stores here (UTC until it has, and without JavaScript).
ZONE_COOKIE = "tz"
# The query parameters a page is made of, kept by the forms' redirects and the poll.
PAGE_PARAMS = ("workspace", "q", "provider", "frequency", "status", "sort", "view", "page")


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def viewer_zone(request: HttpRequest) -> tzinfo:
    name = request.COOKIES.get(ZONE_COOKIE, "")
    return zoneinfo.ZoneInfo(name) if name in _zones() else UTC


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


# --- what the page was asked for -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PageQuery:
    filters: ConnectionFilters
    view: str  # "" until the connection count decides (LIST_FROM)
    page: str
    # "Ignored provider=x; valid choices: ..." for each value that was not one of the choices.
    notices: list[str]
    params: dict[str, str]  # the valid ones, to build links that keep them

    def link(self, **changes: str) -> str:
        """This page's URL with some parameters changed ("" removes one); a new filter goes back
        to page 1."""
        params = {**self.params, **changes}
        if "page" not in changes:
            params.pop("page", None)
        return "?" + urlencode({k: v for k, v in params.items() if v}) if any(params.values()) else "?"


def _choice(request: HttpRequest, name: str, choices: list[str], notices: list[str]) -> str:
    value = request.GET.get(name, "")
    if value and value not in choices:
        notices.append(f"Ignored {name}={value!r}; valid choices: {', '.join(choices)}.")
        return ""
    return value


def page_query(request: HttpRequest) -> PageQuery:
    """The page's filters from the query string. A workspace the user may not see is a 404 (as
    any other lookup); any other bad value is ignored, and the page says so with the choices."""
    notices: list[str] = []
    workspace = None
    if workspace_id := request.GET.get("workspace", ""):
        workspace = workspace_get_for_user(user=signed_in_user(request), public_id=workspace_id)
    filters = ConnectionFilters(
        workspace=workspace,
        # (PostgreSQL text cannot hold a NUL: dropped rather than a 500.)
        search=request.GET.get("q", "").replace("\x00", "").strip()[:100],
        provider=_choice(request, "provider", Provider.values, notices),
        frequency=_choice(request, "frequency", SyncFrequency.values, notices),
        status=_choice(request, "status", StatusFilter.values, notices),
        sort=_choice(request, "sort", Sort.values, notices) or Sort.NAME,
    )
    view = _choice(request, "view", list(VIEWS), notices)
    page = request.GET.get("page", "1")
    params = {
        "workspace": str(workspace.public_id) if workspace else "",
        "q": filters.search,
        "provider": filters.provider,
        "frequency": filters.frequency,
        "status": filters.status,
        "sort": filters.sort if filters.sort != Sort.NAME else "",
        "view": view,
        "page": page if page != "1" else "",
    }
    return PageQuery(filters=filters, view=view, page=page, notices=notices, params=params)


@dataclasses.dataclass
class Listing:
    query: PageQuery
    counts: dict[str, int]
    view: str
    page: Page
    rows: list[dict]


def _listing(request: HttpRequest, now: datetime, tz: tzinfo) -> Listing:
    """One page of the user's connections as asked, with the overview's counts: a constant
    number of queries however many connections there are (counts, page count, the page)."""
    user = signed_in_user(request)
    query = page_query(request)
    counts = connection_counts(connections=connections_in_scope(user=user, workspace=query.filters.workspace), now=now)
    view = query.view or ("list" if counts["total"] > LIST_FROM else "cards")
    # Each with its backfill in progress, read in the same query (with_active_backfill).
    connections = with_active_backfill(connections_filtered(user=user, filters=query.filters, now=now))
    paginator = Paginator(connections, PAGE_SIZES[view])
    if query.page != "1" and not query.page.isdigit():
        query.notices.append(f"Ignored page={query.page!r}; pages are numbered 1 to {paginator.num_pages}.")
    page = paginator.get_page(query.page)
    rows = [_row(c, now, tz) for c in page.object_list]
    return Listing(query=query, counts=counts, view=view, page=page, rows=rows)


def _row(connection: Connection, now: datetime, tz: tzinfo = UTC) -> dict:
    return {
        "connection": connection,
        "status": connection_status_view(connection, now, tz),
        # Cancel was pressed on a running sync: it stops before its next platform call.
        "cancelling": connection.cancel_requested_at is not None and connection.sync_status == SyncStatus.SYNCING,
        # Its "12 of 90 days" and Cancel backfill, when the connection was read with it.
        "backfill": active_backfill_of(connection),
    }


def _status_html(request: HttpRequest, row: dict, compact: bool = False, return_to: str = "") -> str:
    context = {**row, "row": row, "compact": compact, "return_to": return_to}
    return render_to_string("settings/_status.html", context, request=request)


def _account_today(connection: Connection, now: datetime) -> date:
    """Today in the ad account's own time zone: its metrics' days, and a re-sync's last day."""
    try:
        return now.astimezone(zoneinfo.ZoneInfo(connection.timezone)).date()
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return now.date()


def _add_pictures(rows: list[dict], now: datetime) -> None:
    """The cards' pictures, four queries for the whole page: attempts, spend, restated days, budgets."""
    connections = [row["connection"] for row in rows]
    ids = [c.pk for c in connections]
    if not ids:
        return
    since = (now - timedelta(days=SPARK_DAYS + 1)).date()  # the earliest account day in any zone
    hours = attempts_by_hour(connection_ids=ids, now=now)
    spend = spend_by_day(connection_ids=ids, since=since)
    restated = restated_days(connection_ids=ids, since=since)
    budgets = budgets_in_use(connections=connections, now=now)
    for row in rows:
        c = row["connection"]
        today = _account_today(c, now)
        row["today"] = today  # the re-sync form's latest day
        row["strip"] = attempt_strip(hours.get(c.pk, {}))
        row["spark"] = spend_sparkline(spend.get(c.pk, {}), restated.get(c.pk, set()), today, c.currency, c.timezone)
        row["budgets"] = [
            {"label": b.label, "used": b.used, "limit": b.limit, "text": budget_text(b.used, b.limit, b.window)}
            for b in budgets.get(c.pk, [])
        ]


# --- the page and its poll -------------------------------------------------------------------------


@login_required
@require_GET
def settings_page(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    tz = viewer_zone(request)
    user = signed_in_user(request)
    workspaces = list(workspaces_for_user(user=user))
    listing = _listing(request, now, tz)
    if listing.view == "cards":
        _add_pictures(listing.rows, now)
    query = listing.query
    return render(
        request,
        "settings/page.html",
        {
            "rows": listing.rows,
            "listing": listing,
            "query": query,
            "workspaces": workspaces,
            "has_connections": listing.counts["total"] > 0,
            "counters": [
                {"key": key, "label": label, "count": listing.counts[key], "link": query.link(status=key)}
                for key, label in StatusFilter.choices
            ],
            "links": {
                "all": query.link(status=""),
                "cards": query.link(view="cards"),
                "list": query.link(view="list"),
                "clear": PageQuery(
                    filters=ConnectionFilters(),
                    view="",
                    page="1",
                    notices=[],
                    params={"workspace": query.params["workspace"]},
                ).link(),
            },
            "page_links": {
                "previous": query.link(page=str(listing.page.number - 1)),
                "next": query.link(page=str(listing.page.number + 1)),
            },
            "frequencies": SyncFrequency.choices,
            "providers": Provider.choices,
            "statuses": StatusFilter.choices,
            "sorts": Sort.choices,
            "status_url": f"/settings/status{query.link(page=query.params['page'])}".rstrip("?"),
            "return_to": query.link(page=query.params["page"]).lstrip("?"),
            "any_busy": any(row["status"].busy for row in listing.rows),
            "engine_banner": engine_banner(now=now),
            "zone_name": getattr(tz, "key", "UTC"),
            "now_iso": now.isoformat(),
        },
    )


def _fingerprint(listing: Listing, banner: str | None, zone: str) -> str:
    """What the poll's answer says, without the relative times that change every second (the
    page's script keeps those counting): equal fingerprints mean nothing to send (304)."""
    parts = [listing.view, zone, str(banner), repr(sorted(listing.counts.items()))]
    for row in listing.rows:
        status = row["status"]
        fields = dataclasses.asdict(status)
        for name in ("last_attempted", "last_completed", "last_change", "next_sync_moment"):
            if fields[name]:
                fields[name].pop("text")
        if status.next_sync_moment is not None:
            fields.pop("next_sync")  # counted down in the browser
        backfill = row["backfill"]
        progress = (backfill.public_id, backfill.status, backfill.days_done, backfill.last_error) if backfill else None
        parts.append(f"{row['connection'].public_id}:{sorted(fields.items())!r}:{row['cancelling']}:{progress}")
    return '"' + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32] + '"'


@login_required
@require_GET
def settings_status(request: HttpRequest) -> HttpResponse:
    """The status block of each connection on the page, rendered on the server, for the page to
    poll with the page's own query. Answers 304 when nothing but the clock moved."""
    now = timezone.now()
    tz = viewer_zone(request)
    listing = _listing(request, now, tz)
    banner = engine_banner(now=now)
    etag = _fingerprint(listing, banner, getattr(tz, "key", "UTC"))
    headers = {"ETag": etag, "Cache-Control": "no-cache, private"}
    if request.headers.get("If-None-Match") == etag:
        return HttpResponseNotModified(headers=headers)
    compact = listing.view == "list"
    return_to = listing.query.link(page=listing.query.params["page"]).lstrip("?")
    return JsonResponse(
        {
            "rows": {
                str(row["connection"].public_id): _status_html(request, row, compact, return_to) for row in listing.rows
            },
            "busy": any(row["status"].busy for row in listing.rows),
            # Shown, changed or removed live, like the rows.
            "banner": banner,
            "counts": listing.counts,
        },
        headers=headers,
    )


# --- the forms ---------------------------------------------------------------------------------------


def _kept(return_to: str) -> str:
    """The page's own parameters out of a `return_to` a form or link carried ("status=error&
    view=list"), re-read through the known parameters only, so it can only lead back to /settings."""
    sent = QueryDict(return_to)
    kept = {name: sent[name] for name in PAGE_PARAMS if sent.get(name)}
    return urlencode(kept)


def _back(request: HttpRequest, anchor: str = "", return_to: str | None = None) -> str:
    """Where a form without JavaScript returns (and a run's page links back to): the page it was
    on, with its filters, at the row it acted on."""
    kept = _kept(request.POST.get("return_to", "") if return_to is None else return_to)
    return "/settings" + (f"?{kept}" if kept else "") + (f"#{anchor}" if anchor else "")


def _reply(request: HttpRequest, connection: Connection, level: int, text: str, status: int = 200) -> HttpResponse:
    if _wants_json(request):
        connection.refresh_from_db()
        row = _row(connection, timezone.now(), viewer_zone(request))
        row["backfill"] = backfills_active_by_connection(connection_ids=[connection.pk]).get(connection.pk)
        compact = request.POST.get("view") == "list"
        return JsonResponse(
            {
                "message": text,
                "level": messages.DEFAULT_TAGS[level],
                "status_html": _status_html(request, row, compact, _kept(request.POST.get("return_to", ""))),
                "busy": row["status"].busy,
            },
            status=status,
        )
    messages.add_message(request, level, text)
    return redirect(_back(request, f"connection-{connection.public_id}"))


@login_required
@require_POST
def connection_frequency_update(request: HttpRequest, connection_id: str) -> HttpResponse:
    connection = connection_get_for_user(user=signed_in_user(request), public_id=connection_id)
    frequency = request.POST.get("sync_frequency", "")
    try:
        connection_set_frequency(connection=connection, frequency=frequency)
    except ValidationError as exc:
        return _reply(request, connection, messages.ERROR, exc.messages[0], status=400)
    return _reply(
        request,
        connection,
        messages.SUCCESS,
        f"{connection.name}: sync frequency set to {FREQUENCY_LABELS[frequency]}.",
    )


@login_required
@require_POST
def connection_sync_now(request: HttpRequest, connection_id: str) -> HttpResponse:
    connection = connection_get_for_user(user=signed_in_user(request), public_id=connection_id)
    now = timezone.now()
    try:
        result = connection_enqueue_sync(connection=connection, trigger=SyncTrigger.MANUAL, now=now)
    except RateLimited as exc:
        text = f"{connection.name}: {rate_limited_message(exc.until, now, viewer_zone(request))}"
        return _reply(request, connection, messages.WARNING, text, status=429)
    except BrokerUnavailable as exc:
        return _reply(request, connection, messages.ERROR, str(exc), status=503)
    if result.created:
        text = f"{connection.name}: sync queued."
    else:
        text = f"{connection.name}: a sync is already {result.status}; it will finish first."
    return _reply(request, connection, messages.SUCCESS, text, status=202 if _wants_json(request) else 200)


@login_required
@require_POST
def connection_pause_view(request: HttpRequest, connection_id: str) -> HttpResponse:
    connection = connection_get_for_user(user=signed_in_user(request), public_id=connection_id)
    if connection_pause(connection=connection, now=timezone.now()):
        text = f"{connection.name}: automated syncs paused. Sync Now still works."
    else:
        text = f"{connection.name}: automated syncs were already paused."
    return _reply(request, connection, messages.SUCCESS, text)


@login_required
@require_POST
def connection_resume_view(request: HttpRequest, connection_id: str) -> HttpResponse:
    connection = connection_get_for_user(user=signed_in_user(request), public_id=connection_id)
    if not connection_resume(connection=connection, now=timezone.now()):
        text = f"{connection.name}: automated syncs were not paused."
    elif connection.next_sync_at is None and connection.sync_frequency != SyncFrequency.MANUAL:
        text = f"{connection.name}: resumed; it syncs on schedule again once the account is reconnected."
    else:
        text = f"{connection.name}: automated syncs resumed ({FREQUENCY_LABELS[connection.sync_frequency]})."
    return _reply(request, connection, messages.SUCCESS, text)


def _workspace_reply(request: HttpRequest, workspace: Workspace, text: str) -> HttpResponse:
    if _wants_json(request):
        # Which of its two buttons the workspace shows now.
        counts = workspace_pause_counts(workspace=workspace)
        return JsonResponse({"message": text, "level": "success", **counts})
    messages.success(request, text)
    return redirect(_back(request, f"workspace-{workspace.public_id}"))


def _connections(count: int) -> str:
    return f"{count} connection" if count == 1 else f"{count} connections"


@login_required
@require_POST
def workspace_stop_syncs(request: HttpRequest, workspace_id: str) -> HttpResponse:
    workspace = workspace_get_for_user(user=signed_in_user(request), public_id=workspace_id)
    count = workspace_syncs_stop(workspace=workspace, now=timezone.now())
    text = f"{workspace.name}: stopped automated syncs of {_connections(count)}. Sync Now still works."
    return _workspace_reply(request, workspace, text)


@login_required
@require_POST
def workspace_resume_syncs(request: HttpRequest, workspace_id: str) -> HttpResponse:
    workspace = workspace_get_for_user(user=signed_in_user(request), public_id=workspace_id)
    count = workspace_syncs_resume(workspace=workspace, now=timezone.now())
    text = f"{workspace.name}: resumed automated syncs of {_connections(count)}."
    return _workspace_reply(request, workspace, text)


# --- cancel a sync, re-sync a date range -----------------------------------------------------------

CANCEL_MESSAGES = {
    CancelResult.CANCELLED: "the queued sync was cancelled; it will not run.",
    CancelResult.CANCELLING: "cancelling: the sync stops before its next platform call and writes nothing.",
    CancelResult.NOTHING: "no sync was queued or running.",
}


@login_required
@require_POST
def connection_cancel_view(request: HttpRequest, connection_id: str) -> HttpResponse:
    connection = connection_get_for_user(user=signed_in_user(request), public_id=connection_id)
    result = connection_cancel_sync(connection=connection, now=timezone.now())
    level = messages.INFO if result == CancelResult.NOTHING else messages.SUCCESS
    return _reply(request, connection, level, f"{connection.name}: {CANCEL_MESSAGES[CancelResult(result)]}")


def _range_text(since: date, until: date) -> str:
    """ "Nov 1 – Nov 30, 2026": account days, the year once (twice across a new year)."""
    if since.year != until.year:
        return f"{day_label(since)}, {since.year} – {day_label(until)}, {until.year}"
    return f"{day_label(since)} – {day_label(until)}, {until.year}"


def _posted_day(request: HttpRequest, name: str) -> date | None:
    try:
        return date.fromisoformat(request.POST.get(name, "").strip())
    except ValueError:
        return None


@login_required
@require_POST
def connection_backfill_view(request: HttpRequest, connection_id: str) -> HttpResponse:
    """Re-sync a date range (days in the account's time zone), in chunks, newest days first."""
    connection = connection_get_for_user(user=signed_in_user(request), public_id=connection_id)
    since, until = _posted_day(request, "since"), _posted_day(request, "until")
    if since is None or until is None:
        text = f"{connection.name}: choose both the first and the last day to re-sync (YYYY-MM-DD)."
        return _reply(request, connection, messages.ERROR, text, status=400)
    try:
        backfill = backfill_request(connection=connection, since=since, until=until, now=timezone.now())
    except ValidationError as exc:
        return _reply(request, connection, messages.ERROR, f"{connection.name}: {exc.messages[0]}", status=400)
    text = (
        f"{connection.name}: re-syncing {_range_text(backfill.since, backfill.until)} "
        f"({backfill.progress_text}), newest days first, alongside the regular syncs."
    )
    return _reply(request, connection, messages.SUCCESS, text, status=202 if _wants_json(request) else 200)


@login_required
@require_POST
def backfill_cancel_view(request: HttpRequest, connection_id: str, backfill_id: str) -> HttpResponse:
    user = signed_in_user(request)
    connection = connection_get_for_user(user=user, public_id=connection_id)
    # Only a backfill of this connection: another connection's answers 404 like a made-up id.
    backfill = backfill_get(connections=connections_for_user(user=user).filter(pk=connection.pk), public_id=backfill_id)
    span = _range_text(backfill.since, backfill.until)
    if backfill_cancel(backfill=backfill, now=timezone.now()):
        text = f"{connection.name}: re-sync of {span} cancelled; the days already fetched stay."
    else:
        text = f"{connection.name}: the re-sync of {span} had already ended ({backfill.get_status_display().lower()})."
    return _reply(request, connection, messages.SUCCESS, text)


# --- run history and a run's page --------------------------------------------------------------------

RUNS_SHOWN = 20
CHANGES_PER_PAGE = 50


def duration_text(seconds: float | None) -> str:
    """ "0.4 s", "12 s", "3 min 05 s", "1 h 02 min"; "" while running."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def _window_text(run: SyncRun) -> str:
    if run.window_since is None or run.window_until is None:
        return ""
    if run.window_since == run.window_until:
        return day_label(run.window_since)
    return f"{day_label(run.window_since)} – {day_label(run.window_until)}"


@dataclasses.dataclass(frozen=True)
class RunLine:
    """One run as the run history reads it; times in the viewer's zone, days in the account's."""

    run: SyncRun
    url: str
    started: str  # "Nov 28, 13:57:55"
    started_exact: str  # ISO 8601 in UTC, for <time datetime>
    started_human: str  # "2026-11-28 13:57:55 CET", the title
    duration: str
    window: str
    changes: int | None
    restated: bool


def _run_line(run: SyncRun, connection: Connection, tz: tzinfo, return_to: str) -> RunLine:
    local = run.started_at.astimezone(tz)
    query = f"?{urlencode({'return_to': return_to})}" if return_to else ""
    return RunLine(
        run=run,
        url=f"/settings/connections/{connection.public_id}/runs/{run.public_id}{query}",
        started=f"{local:%b} {local.day}, {local:%H:%M:%S}",
        started_exact=run.started_at.astimezone(UTC).replace(microsecond=0).isoformat(),
        started_human=f"{local:%Y-%m-%d %H:%M:%S} {local.tzname() or 'UTC'}",
        duration=duration_text(run.duration_seconds),
        window=_window_text(run),
        changes=getattr(run, "changes_count", None),
        restated=getattr(run, "has_restatements", False),
    )


@login_required
@require_GET
def connection_runs(request: HttpRequest, connection_id: str) -> HttpResponse:
    """A connection's last runs: the fragment the page's "Recent runs" loads when opened
    (?partial=1), or, for a browser without JavaScript, the same table as a page of its own.
    Four queries however many runs (the session's two, the connection, and the runs with their
    ledger counts)."""
    connection = connection_get_for_user(user=signed_in_user(request), public_id=connection_id)
    tz = viewer_zone(request)
    return_to = _kept(request.GET.get("return_to", ""))
    runs = sync_runs_with_changes_for_connection(connection=connection)[:RUNS_SHOWN]
    context = {
        "connection": connection,
        "lines": [_run_line(run, connection, tz, return_to) for run in runs],
        "zone_name": getattr(tz, "key", "UTC"),
        "shown": RUNS_SHOWN,
        "back": _back(request, f"connection-{connection.public_id}", return_to),
    }
    if request.GET.get("partial"):
        response = render(request, "settings/_runs.html", context)
        response["Cache-Control"] = "no-cache, private"  # a fresh history each time it is opened
        return response
    return render(request, "settings/runs.html", context)


@dataclasses.dataclass(frozen=True)
class LedgerLine:
    """One changed field of one metric row (the ledger's rows, a line per field)."""

    entity: str
    level: str
    day: date
    day_text: str
    field: str
    old: str
    new: str
    added: bool
    restated: bool


def _ledger_lines(changes: list[MetricChange]) -> list[LedgerLine]:
    lines = []
    for change in changes:
        for value in change.values:
            lines.append(
                LedgerLine(
                    entity=change.entity_name or change.entity_id,
                    level="" if change.level == "campaign" else change.level,
                    day=change.date,
                    day_text=f"{day_label(change.date)}, {change.date.year}",
                    field=FIELD_LABELS.get(value.field, value.field),
                    old="—" if value.old is None else value.old,
                    new="—" if value.new is None else value.new,
                    added=change.added,
                    restated=change.restated,
                )
            )
    return lines


@login_required
@require_GET
def connection_run_detail(request: HttpRequest, connection_id: str, run_id: str) -> HttpResponse:
    """One run: its fields, its error and its change ledger, a page of metric rows at a time.
    404 for a run of another connection, as for a connection the user may not see."""
    connection = connection_get_for_user(user=signed_in_user(request), public_id=connection_id)
    run = sync_run_for_connection(connection=connection, public_id=run_id)
    tz = viewer_zone(request)
    return_to = _kept(request.GET.get("return_to", ""))
    page_number = request.GET.get("page", "1")
    # A page number out of range or not a number shows the nearest page, as the list does.
    page = Paginator(sync_changes_for_run(run=run), CHANGES_PER_PAGE).get_page(page_number)
    finished = run.finished_at.astimezone(tz) if run.finished_at else None

    def page_link(number: int) -> str:
        return "?" + urlencode({k: v for k, v in {"return_to": return_to, "page": str(number)}.items() if v})

    return render(
        request,
        "settings/run.html",
        {
            "connection": connection,
            "run": run,
            "line": _run_line(run, connection, tz, return_to),
            "finished": f"{finished:%Y-%m-%d %H:%M:%S} {finished.tzname()}" if finished else "",
            "summary": sync_run_changes_summary(run=run),
            "ledger": _ledger_lines(sync_changes_describe(changes=page.object_list)),
            "page": page,
            "previous_link": page_link(page.number - 1) if page.has_previous() else "",
            "next_link": page_link(page.number + 1) if page.has_next() else "",
            "zone_name": getattr(tz, "key", "UTC"),
            "back": _back(request, f"connection-{connection.public_id}", return_to),
            "runs_link": f"/settings/connections/{connection.public_id}/runs"
            + (f"?{urlencode({'return_to': return_to})}" if return_to else ""),
        },
    )
