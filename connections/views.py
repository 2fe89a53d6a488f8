"""The Settings page: server-rendered, live by polling a partial, and usable without JavaScript.

Every form posts and redirects back with a message; with JavaScript the same forms are sent
with fetch and answer JSON, so the row updates in place.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from connections.models import Connection, SyncFrequency, SyncTrigger
from connections.request_user import signed_in_user
from connections.selectors import connection_get_for_user, connections_for_user
from connections.services import connection_set_frequency
from connections.status import FREQUENCY_LABELS, connection_status_view, rate_limited_message
from syncing.health import engine_banner
from syncing.services import BrokerUnavailable, RateLimited, connection_enqueue_sync


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _row(connection: Connection, now) -> dict:
    return {"connection": connection, "status": connection_status_view(connection, now)}


def _status_html(request: HttpRequest, row: dict) -> str:
    return render_to_string("settings/_status.html", row, request=request)


@login_required
@require_GET
def settings_page(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    connections = connections_for_user(user=signed_in_user(request)).order_by("workspace__name", "name", "id")
    rows = [_row(c, now) for c in connections]
    return render(
        request,
        "settings/page.html",
        {
            "rows": rows,
            "frequencies": SyncFrequency.choices,
            "any_busy": any(row["status"].busy for row in rows),
            "engine_banner": engine_banner(now=now),
        },
    )


@login_required
@require_GET
def settings_status(request: HttpRequest) -> JsonResponse:
    """The status block of each connection, rendered on the server, for the page to poll."""
    now = timezone.now()
    rows = [_row(c, now) for c in connections_for_user(user=signed_in_user(request))]
    return JsonResponse(
        {
            "rows": {str(row["connection"].public_id): _status_html(request, row) for row in rows},
            "busy": any(row["status"].busy for row in rows),
            # Shown, changed or removed live, like the rows.
            "banner": engine_banner(now=now),
        }
    )


def _reply(request: HttpRequest, connection: Connection, level: int, text: str, status: int = 200) -> HttpResponse:
    if _wants_json(request):
        connection.refresh_from_db()
        row = _row(connection, timezone.now())
        return JsonResponse(
            {
                "message": text,
                "level": messages.DEFAULT_TAGS[level],
                "status_html": _status_html(request, row),
                "busy": row["status"].busy,
            },
            status=status,
        )
    messages.add_message(request, level, text)
    return redirect(f"/settings#connection-{connection.public_id}")


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
        text = f"{connection.name}: {rate_limited_message(exc.until, now)}"
        return _reply(request, connection, messages.WARNING, text, status=429)
    except BrokerUnavailable as exc:
        return _reply(request, connection, messages.ERROR, str(exc), status=503)
    if result.created:
        text = f"{connection.name}: sync queued."
    else:
        text = f"{connection.name}: a sync is already {result.status}; it will finish first."
    return _reply(request, connection, messages.SUCCESS, text, status=202 if _wants_json(request) else 200)
