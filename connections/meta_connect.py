"""Connect Meta ad accounts: the OAuth dialog, the token exchanges, and choosing accounts.

    Settings "Connect Meta account" -> start: a random `state` in the session, redirect to
    Meta's dialog -> Meta sends the browser back to callback?code&state -> the state must match
    (else 400, nothing happens) -> code -> short-lived token -> long-lived token (~60 days) ->
    /me/adaccounts -> choose: the person picks accounts (and a workspace if they have several)
    -> one connection per account, manual sync, the token encrypted in its credentials.

Between the callback and the choice, the token waits in the session encrypted with the same
keys as the credentials field. Tokens and codes are never rendered, logged or put in an error
message: Meta's error texts pass through redact(), and httpx's request log lines (which carry
the query string) are redacted by a logging filter.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import zoneinfo
from datetime import datetime, timedelta
from urllib.parse import urlencode

import httpx
from cryptography.fernet import InvalidToken
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
from connections.models import Connection, Provider, Workspace
from connections.services import connection_create
from connections.status import relative_time
from syncing.providers.meta import RedactTokens, account_number, redact

logger = logging.getLogger(__name__)
logging.getLogger("httpx").addFilter(RedactTokens())

STATE_KEY = "meta_connect_state"
PENDING_KEY = "meta_connect_pending"
SCOPE = "ads_read"
ACCOUNT_FIELDS = "id,account_id,name,currency,timezone_name"
# /me/adaccounts pages of 100; an agency user with thousands of accounts stops here.
MAX_ACCOUNT_PAGES = 50
HTTP_TIMEOUT = httpx.Timeout(20.0, connect=10.0)


class MetaConnectError(Exception):
    """Something a person can act on; the message never holds a token or a code."""

    def __init__(self, message: str, status: int = 502):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclasses.dataclass(frozen=True)
class MetaToken:
    access_token: str
    expires_at: datetime | None


def access_expiry_text(expires_at: datetime | None, now: datetime) -> str:
    """ "access expires in 5 days" / "access expired 2 h ago", as connections.status words times."""
    if expires_at is None:
        return ""
    if expires_at > now:
        return f"access expires {relative_time(expires_at, now)}"
    return f"access expired {relative_time(expires_at, now)}"


# --- Graph API calls (httpx) ------------------------------------------------------------------


def _graph() -> httpx.Client:
    return httpx.Client(base_url=f"{settings.META_GRAPH_URL}/{settings.META_API_VERSION}/", timeout=HTTP_TIMEOUT)


def _get(client: httpx.Client, path: str, params: dict[str, str]) -> dict:
    try:
        response = client.get(path, params=params)
    except httpx.HTTPError as exc:
        raise MetaConnectError(f"Could not reach Meta ({type(exc).__name__}); try again in a moment.") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise MetaConnectError(f"Meta sent an unreadable answer (HTTP {response.status_code}); try again.")
    if response.is_error or "error" in body:
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        message = redact(str(error.get("message") or f"HTTP {response.status_code}"))
        raise MetaConnectError(f"Meta refused the request: {message}")
    return body


def meta_token_exchange(*, code: str, redirect_uri: str, now: datetime) -> MetaToken:
    """The dialog's code -> a short-lived token -> a long-lived one (Meta: about 60 days)."""
    app = {"client_id": settings.META_APP_ID, "client_secret": settings.META_APP_SECRET}
    with _graph() as client:
        short = _get(client, "oauth/access_token", {**app, "redirect_uri": redirect_uri, "code": code})
        long = _get(
            client,
            "oauth/access_token",
            {**app, "grant_type": "fb_exchange_token", "fb_exchange_token": str(short.get("access_token", ""))},
        )
    token = long.get("access_token")
    if not token:
        raise MetaConnectError("Meta did not return an access token; try connecting again.")
    expires_in = long.get("expires_in")
    expires_at = now + timedelta(seconds=int(expires_in)) if expires_in else None
    return MetaToken(access_token=str(token), expires_at=expires_at)


def meta_ad_accounts(*, access_token: str) -> list[dict]:
    """The ad accounts the token may read, every page, sorted by name."""
    accounts: list[dict] = []
    params = {"access_token": access_token, "fields": ACCOUNT_FIELDS, "limit": "100"}
    with _graph() as client:
        for _ in range(MAX_ACCOUNT_PAGES):
            body = _get(client, "me/adaccounts", params)
            for item in body.get("data") or []:
                number = account_number(str(item.get("account_id") or item.get("id") or ""))
                if number:
                    accounts.append(
                        {
                            "account_id": number,
                            "name": str(item.get("name") or f"Ad account {number}")[:200],
                            "currency": str(item.get("currency") or "USD")[:3],
                            "timezone_name": _zone(str(item.get("timezone_name") or "UTC")),
                        }
                    )
            paging = body.get("paging") or {}
            after = (paging.get("cursors") or {}).get("after")
            if not paging.get("next") or not after:
                break
            # Follow the cursor against our base URL (a proxy may stand in) rather than `next`.
            params = {**params, "after": str(after)}
    return sorted(accounts, key=lambda a: (a["name"].lower(), a["account_id"]))


def _zone(name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        logger.warning("Meta reported an unknown time zone %r; using UTC", name)
        return "UTC"
    return name


def meta_connections_save(
    *, workspace: Workspace, accounts: list[dict], token: MetaToken, now: datetime
) -> tuple[int, int]:
    """Create a manual connection per account, or give an existing one the new token (reconnect).

    Returns (created, reconnected).
    """
    credentials = {"access_token": token.access_token}
    created = reconnected = 0
    with transaction.atomic():
        for account in accounts:
            existing = Connection.objects.filter(
                workspace=workspace, provider=Provider.META, external_account_id=account["account_id"]
            )
            details = {"name": account["name"], "currency": account["currency"], "timezone": account["timezone_name"]}
            if existing.update(credentials=credentials, credentials_expires_at=token.expires_at, **details):
                reconnected += 1
                continue
            connection = connection_create(
                workspace=workspace,
                provider=Provider.META,
                external_account_id=account["account_id"],
                name=account["name"],
                currency=account["currency"],
                timezone_name=account["timezone_name"],
                credentials=credentials,
                now=now,
            )
            Connection.objects.filter(pk=connection.pk).update(credentials_expires_at=token.expires_at)
            created += 1
    return created, reconnected


# --- the pending choice, encrypted in the session --------------------------------------------


def _pending_store(request: HttpRequest, token: MetaToken, accounts: list[dict]) -> None:
    data = {
        "access_token": token.access_token,
        "expires_at": token.expires_at.isoformat() if token.expires_at else None,
        "accounts": accounts,
    }
    request.session[PENDING_KEY] = fernet().encrypt(json.dumps(data).encode()).decode()


def _pending_load(request: HttpRequest) -> tuple[MetaToken, list[dict]] | None:
    raw = request.session.get(PENDING_KEY)
    if not raw:
        return None
    try:
        data = json.loads(fernet().decrypt(raw.encode()))
    except InvalidToken:  # the keys changed meanwhile: start again
        return None
    expires_at = datetime.fromisoformat(data["expires_at"]) if data["expires_at"] else None
    return MetaToken(data["access_token"], expires_at), data["accounts"]


def _workspaces(request: HttpRequest) -> list[Workspace]:
    return list(Workspace.objects.filter(memberships__user=request.user).order_by("name", "pk"))


def _error(request: HttpRequest, message: str, status: int) -> HttpResponse:
    return render(request, "connect/meta_error.html", {"message": message}, status=status)


# --- views ------------------------------------------------------------------------------------


@login_required
@require_GET
def meta_connect_start(request: HttpRequest) -> HttpResponse:
    if not (settings.META_APP_ID and settings.META_APP_SECRET):
        messages.error(
            request,
            "Connecting Meta accounts is not set up here (META_APP_ID and META_APP_SECRET). "
            "An administrator can paste a system-user token in the admin instead.",
        )
        return redirect("settings")
    if not _workspaces(request):
        return _error(request, "You are not a member of any workspace, so there is nowhere to add accounts.", 403)
    state = secrets.token_urlsafe(32)
    request.session[STATE_KEY] = state
    query = urlencode(
        {
            "client_id": settings.META_APP_ID,
            "redirect_uri": request.build_absolute_uri(reverse("meta-connect-callback")),
            "state": state,
            "scope": SCOPE,
        }
    )
    return redirect(f"{settings.META_OAUTH_DIALOG_URL}/{settings.META_API_VERSION}/dialog/oauth?{query}")


@login_required
@require_GET
def meta_connect_callback(request: HttpRequest) -> HttpResponse:
    expected = request.session.pop(STATE_KEY, None)
    state = request.GET.get("state", "")
    if not expected or not state or not constant_time_compare(state, expected):
        # A forged or replayed callback (login CSRF): stop before the code is used.
        return _error(
            request,
            "This Meta sign-in could not be verified (its state does not match the one we started). "
            "Nothing was connected; start again from Settings.",
            400,
        )
    if request.GET.get("error"):
        messages.info(request, "Connecting a Meta account was cancelled; nothing was connected.")
        return redirect("settings")
    code = request.GET.get("code", "")
    if not code:
        return _error(request, "Meta did not send an authorization code; start again from Settings.", 400)
    now = timezone.now()
    try:
        token = meta_token_exchange(
            code=code, redirect_uri=request.build_absolute_uri(reverse("meta-connect-callback")), now=now
        )
        accounts = meta_ad_accounts(access_token=token.access_token)
    except MetaConnectError as exc:
        logger.info("Connecting a Meta account failed: %s", exc.message)
        return _error(request, exc.message, exc.status)
    _pending_store(request, token, accounts)
    return redirect("meta-connect-choose")


@login_required
@require_http_methods(["GET", "POST"])
def meta_connect_choose(request: HttpRequest) -> HttpResponse:
    pending = _pending_load(request)
    if pending is None:
        return _error(request, "There is no Meta sign-in waiting for a choice; start again from Settings.", 400)
    token, accounts = pending
    workspaces = _workspaces(request)
    context = {
        "accounts": accounts,
        "workspaces": workspaces,
        "expiry": access_expiry_text(token.expires_at, timezone.now()),
    }
    if request.method == "GET":
        return render(request, "connect/meta_choose.html", context)

    workspace = next((w for w in workspaces if str(w.public_id) == request.POST.get("workspace", "")), None)
    if workspace is None:
        if len(workspaces) != 1 or request.POST.get("workspace"):
            raise Http404("No such workspace")
        workspace = workspaces[0]
    offered = {a["account_id"]: a for a in accounts}
    chosen_ids = request.POST.getlist("accounts")
    if not chosen_ids:
        return render(
            request, "connect/meta_choose.html", {**context, "error": "Choose at least one ad account."}, status=400
        )
    if any(account_id not in offered for account_id in chosen_ids):
        return _error(request, "That ad account was not offered by this Meta sign-in; start again from Settings.", 400)
    created, reconnected = meta_connections_save(
        workspace=workspace, accounts=[offered[i] for i in dict.fromkeys(chosen_ids)], token=token, now=timezone.now()
    )
    del request.session[PENDING_KEY]
    parts = []
    if created:
        plural = "s" if created != 1 else ""
        parts.append(f"connected {created} Meta ad account{plural} (manual sync until you pick a frequency)")
    if reconnected:
        parts.append(f"reconnected {reconnected}")
    messages.success(request, f"{workspace.name}: {' and '.join(parts)}.")
    return redirect("settings")
