"""/settings/alerts: each of the user's workspaces' alert settings, and its recent alerts.

One page with a form per workspace; each form names its workspace (a UUID), looked up among the
user's own (404 for any other). Saving redirects back with a message, except when it created the
webhook's signing secret, or the secret was rotated: then the answer itself shows the secret,
once, and is not stored by the browser. (A redirect would have to carry it in the session or the
messages cookie.)
"""

from __future__ import annotations

import dataclasses

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from alerts.forms import AlertSettingsForm
from alerts.models import Incident
from alerts.selectors import (
    alert_settings_for,
    incidents_recent,
    member_emails,
    workspace_get_for_user,
    workspaces_for_user,
)
from alerts.services import alert_settings_save, alert_settings_webhook_url, webhook_secret_rotate
from connections.models import Workspace
from connections.request_user import signed_in_user

SAVE = "save"
ROTATE_SECRET = "rotate_secret"


@dataclasses.dataclass(frozen=True)
class WorkspaceSection:
    workspace: Workspace
    form: AlertSettingsForm
    has_webhook: bool
    # The webhook's scheme and host, all the page shows of it ("" without one).
    webhook_host: str
    default_recipients: list[str]
    incidents: list[Incident]
    new_secret: str = ""


def _form(workspace: Workspace, data=None, initial=None) -> AlertSettingsForm:
    # Field ids unique on a page with a form per workspace; field names stay plain.
    return AlertSettingsForm(data, initial=initial, auto_id=f"id_{workspace.public_id}_%s", label_suffix="")


def _page(
    request: HttpRequest,
    workspaces: list[Workspace],
    *,
    bound: dict[int, AlertSettingsForm],
    new_secret: dict[int, str],
    status: int = 200,
) -> HttpResponse:
    ids = [workspace.pk for workspace in workspaces]
    saved = alert_settings_for(workspace_ids=ids)
    emails = member_emails(workspace_ids=ids)
    recent = incidents_recent(workspace_ids=ids)
    sections = [
        WorkspaceSection(
            workspace=workspace,
            form=bound.get(workspace.pk)
            or _form(workspace, initial=AlertSettingsForm.initial_for(saved[workspace.pk])),
            has_webhook=bool(saved[workspace.pk].webhook_host),
            webhook_host=saved[workspace.pk].webhook_host,
            default_recipients=emails[workspace.pk],
            incidents=recent[workspace.pk],
            new_secret=new_secret.get(workspace.pk, ""),
        )
        for workspace in workspaces
    ]
    response = render(request, "alerts/settings.html", {"sections": sections}, status=status)
    if new_secret:
        # The secret is in this page only: not in the browser's cache, its history or a proxy's.
        response["Cache-Control"] = "no-store"
    return response


@login_required
@require_http_methods(["GET", "POST"])
def alert_settings_page(request: HttpRequest) -> HttpResponse:
    user = signed_in_user(request)
    workspaces = list(workspaces_for_user(user=user))
    if request.method == "GET":
        return _page(request, workspaces, bound={}, new_secret={})

    workspace = workspace_get_for_user(user=user, public_id=request.POST.get("workspace", ""))
    action = request.POST.get("action", SAVE)
    back = f"{reverse('alerts-settings')}#workspace-{workspace.public_id}"
    if action == ROTATE_SECRET:
        try:
            rotated = webhook_secret_rotate(workspace=workspace)
        except ValidationError as exc:
            messages.error(request, f"{workspace.name}: {exc.messages[0]}")
            return redirect(back)
        messages.success(request, f"{workspace.name}: new webhook signing secret. The old one no longer works.")
        return _page(request, workspaces, bound={}, new_secret={workspace.pk: rotated})
    if action != SAVE:
        return HttpResponseBadRequest("Unknown action.")

    form = _form(workspace, data=request.POST)
    if not form.is_valid():
        messages.error(request, f"{workspace.name}: the alert settings were not saved; see below.")
        return _page(request, workspaces, bound={workspace.pk: form}, new_secret={}, status=400)
    fields = dict(form.cleaned_data)
    # The URL is never shown again (it may hold a token): an empty field keeps the one set,
    # and only "Remove the webhook" removes it.
    remove = fields.pop("remove_webhook")
    if remove:
        fields["webhook_url"] = ""
    elif not fields["webhook_url"]:
        fields["webhook_url"] = alert_settings_webhook_url(workspace=workspace)
    secret = alert_settings_save(workspace=workspace, **fields)
    messages.success(request, f"{workspace.name}: alert settings saved.")
    if secret is None:
        return redirect(back)
    return _page(request, workspaces, bound={}, new_secret={workspace.pk: secret})
