"""Connect Google Ads accounts: Google's OAuth authorization-code flow, then a choice of accounts.

start     -> Google's consent screen (scope adwords, offline access, a one-time `state`)
callback  -> check `state`, exchange the code for tokens (httpx), list the client accounts the
             user can reach (syncing.providers.google), keep them in the session with the
             refresh token encrypted, and show the choice
choose    -> the chosen accounts become connections in one of the user's workspaces (manual by
             default), or, when already connected, get the new access (a reconnect)

The refresh token is stored only inside Connection.credentials (encrypted at rest with
ADSYNC_ENCRYPTION_KEYS) and, for the few minutes between callback and choice, Fernet-encrypted
with the same keys in the session. It is never logged, shown or returned.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from datetime import datetime
from urllib.parse import urlencode

import httpx
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from django.views.decorators.http import require_GET, require_http_methods

from connections.fields import fernet
from connections.models import Connection, Provider, SyncFrequency, Workspace
from connections.services import connection_create
from syncing.providers.base import ProviderError, ThrottledError
from syncing.providers.google import (
    ADWORDS_SCOPE,
    GoogleCustomer,
    customer_id_format,
    google_customers_accessible,
)

logger = logging.getLogger(__name__)

FLOW_KEY = "google_connect_flow"  # the state and redirect URI, from start to callback
CHOICE_KEY = "google_connect_choice"  # the accounts and the encrypted refresh token, to choose
CHOICE_SECONDS = 30 * 60


class ConnectError(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


# --- Google's OAuth --------------------------------------------------------------------------------


def _configured() -> bool:
    return bool(settings.GOOGLE_CLIENT_ID and settings.GOOGLE_CLIENT_SECRET)


def _redirect_uri(request: HttpRequest) -> str:
    return settings.GOOGLE_OAUTH_REDIRECT_URI or request.build_absolute_uri(reverse("google-connect-callback"))


def google_authorize_url(*, state: str, redirect_uri: str) -> str:
    params = {
        "client_id": settings.GOOGLE_CLIENT_ID,
        "redirect_uri": redirect_uri,
        "response_type": "code",
        "scope": ADWORDS_SCOPE,
        # A refresh token, and again on a reconnect (Google sends one only with consent).
        "access_type": "offline",
        "prompt": "consent",
        "include_granted_scopes": "true",
        "state": state,
    }
    return f"{settings.GOOGLE_OAUTH_AUTHORIZE_URL}?{urlencode(params)}"


def google_code_exchange(*, code: str, redirect_uri: str) -> dict:
    """The token response for an authorization code, or ConnectError with Google's reason."""
    try:
        response = httpx.post(
            settings.GOOGLE_TOKEN_URL,
            data={
                "code": code,
                "client_id": settings.GOOGLE_CLIENT_ID,
                "client_secret": settings.GOOGLE_CLIENT_SECRET,
                "redirect_uri": redirect_uri,
                "grant_type": "authorization_code",
            },
            headers={"Accept": "application/json"},
            timeout=settings.GOOGLE_HTTP_TIMEOUT,
        )
    except httpx.HTTPError as exc:
        logger.warning("Google token endpoint unreachable: %s", type(exc).__name__)
        raise ConnectError("Could not reach Google to finish signing in; please try again.", status=502) from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200:
        reason = body.get("error_description") or body.get("error") or f"HTTP {response.status_code}"
        raise ConnectError(f"Google did not accept the sign-in ({reason}). Please start again.")
    if not body.get("access_token"):
        raise ConnectError("Google's answer had no access token. Please start again.", status=502)
    if not body.get("refresh_token"):
        raise ConnectError("Google did not grant offline access, which syncing needs. Please start again.")
    return body


# --- writes ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConnectResult:
    created: list[Connection]
    reconnected: list[Connection]


def google_connections_connect(
    *, workspace: Workspace, customers: list[GoogleCustomer], refresh_token: str, now: datetime | None = None
) -> ConnectResult:
    """Create a manual connection per new account; give already connected ones the new access."""
    now = now or timezone.now()
    created: list[Connection] = []
    reconnected: list[Connection] = []
    with transaction.atomic():
        existing = {
            c.external_account_id: c
            for c in Connection.objects.select_for_update().filter(
                workspace=workspace,
                provider=Provider.GOOGLE,
                external_account_id__in=[c.customer_id for c in customers],
            )
        }
        for customer in customers:
            credentials = {"refresh_token": refresh_token}
            if customer.login_customer_id:
                credentials["login_customer_id"] = customer.login_customer_id
            connection = existing.get(customer.customer_id)
            if connection is None:
                created.append(
                    connection_create(
                        workspace=workspace,
                        provider=Provider.GOOGLE,
                        external_account_id=customer.customer_id,
                        name=customer.name,
                        currency=customer.currency,
                        timezone_name=customer.time_zone,
                        credentials=credentials,
                        sync_frequency=SyncFrequency.MANUAL,
                        now=now,
                    )
                )
                continue
            connection.credentials = credentials
            connection.currency = customer.currency
            connection.timezone = customer.time_zone
            connection.save(update_fields=["credentials", "currency", "timezone"])
            reconnected.append(connection)
    return ConnectResult(created=created, reconnected=reconnected)


# --- views -----------------------------------------------------------------------------------------


def _error(request: HttpRequest, message: str, status: int = 400) -> HttpResponse:
    return render(request, "connect/google_error.html", {"message": message}, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def google_connect_start(request: HttpRequest) -> HttpResponse:
    if not _configured():
        return _error(request, "Google Ads is not configured in this installation (GOOGLE_CLIENT_ID).", status=503)
    state = secrets.token_urlsafe(32)
    redirect_uri = _redirect_uri(request)
    request.session[FLOW_KEY] = {"state": state, "redirect_uri": redirect_uri}
    return redirect(google_authorize_url(state=state, redirect_uri=redirect_uri))


@login_required
@require_GET
def google_connect_callback(request: HttpRequest) -> HttpResponse:
    # One use only: a replayed or forged callback finds no flow.
    flow = request.session.pop(FLOW_KEY, None)
    if flow is None or not constant_time_compare(request.GET.get("state", ""), flow["state"]):
        return _error(
            request,
            "This sign-in link is not valid (it was already used, or it was started in another browser). "
            "Start again from Settings.",
        )
    if request.GET.get("error"):
        return _error(request, f"Google did not grant access ({request.GET['error']}). Nothing was connected.")
    try:
        tokens = google_code_exchange(code=request.GET.get("code", ""), redirect_uri=flow["redirect_uri"])
        customers = google_customers_accessible(access_token=tokens["access_token"])
    except ConnectError as exc:
        return _error(request, exc.message, exc.status)
    except ThrottledError as exc:
        return _error(request, f"{exc.message} Please try again later.", status=503)
    except ProviderError as exc:
        return _error(request, f"Google Ads would not list your accounts: {exc.message}", status=502)
    request.session[CHOICE_KEY] = {
        "refresh_token": fernet().encrypt(tokens["refresh_token"].encode()).decode(),
        "customers": [dataclasses.asdict(c) for c in customers],
        "expires_at": timezone.now().timestamp() + CHOICE_SECONDS,
    }
    return redirect("google-connect-choose")


def _pending_choice(request: HttpRequest) -> dict | None:
    choice = request.session.get(CHOICE_KEY)
    if choice is None or choice["expires_at"] < timezone.now().timestamp():
        request.session.pop(CHOICE_KEY, None)
        return None
    return choice


@login_required
@require_http_methods(["GET", "POST"])
def google_connect_choose(request: HttpRequest) -> HttpResponse:
    choice = _pending_choice(request)
    if choice is None:
        messages.error(request, "That Google sign-in has expired; connect the Google Ads account again.")
        return redirect("settings")
    customers = [GoogleCustomer(**c) for c in choice["customers"]]
    workspaces = list(Workspace.objects.filter(memberships__user=request.user).order_by("name", "pk"))
    if request.method == "POST":
        workspace = next((w for w in workspaces if str(w.public_id) == request.POST.get("workspace")), None)
        if workspace is None:
            raise Http404("No workspace with that id")
        chosen_ids = set(request.POST.getlist("customer"))
        chosen = [c for c in customers if c.customer_id in chosen_ids]
        if chosen:
            refresh_token = fernet().decrypt(choice["refresh_token"].encode()).decode()
            result = google_connections_connect(workspace=workspace, customers=chosen, refresh_token=refresh_token)
            request.session.pop(CHOICE_KEY, None)
            messages.success(request, _summary(result))
            return redirect("settings")
        messages.error(request, "Choose at least one account to connect.")
    connected = set(
        Connection.objects.filter(
            workspace__in=workspaces,
            provider=Provider.GOOGLE,
            external_account_id__in=[c.customer_id for c in customers],
        ).values_list("external_account_id", flat=True)
    )
    rows = [
        {
            "customer": c,
            "formatted_id": customer_id_format(c.customer_id),
            "manager": customer_id_format(c.login_customer_id) if c.login_customer_id else "",
            "connected": c.customer_id in connected,
        }
        for c in customers
    ]
    return render(
        request,
        "connect/google_choose.html",
        {"rows": rows, "workspaces": workspaces},
        status=400 if request.method == "POST" else 200,
    )


def _summary(result: ConnectResult) -> str:
    parts = []
    if result.created:
        names = ", ".join(c.name for c in result.created)
        count = len(result.created)
        parts.append(
            f"Connected {count} Google Ads account(s): {names}. They sync manually until you pick a frequency."
        )
    if result.reconnected:
        names = ", ".join(c.name for c in result.reconnected)
        parts.append(f"Reconnected {names}; press Sync Now to resume.")
    return " ".join(parts)
