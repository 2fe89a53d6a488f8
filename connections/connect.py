"""The "connect an account" flow, one set of views for every provider with an OAuth sign-in
(mounted per provider by connect_urls.py). The platform's own calls (its consent screen URL, the
code exchange, the account listing) are the provider's: this module reaches them only through
the registry (syncing.providers.OAUTH_PROVIDERS) and the OAuthProvider interface.

    Settings "Connect ..." (POST) -> start: a one-time `state` and the redirect URI in the session,
    the browser goes to the platform's consent screen -> callback?code&state: the state must match
    (else 400, nothing happens; either way it is spent) -> the provider trades the code
    for credentials and lists the accounts -> they wait in the session, encrypted, for 30 minutes
    -> choose: the person picks accounts and one of their workspaces -> one connection per
    account (manual sync), or new credentials for one the workspace already has (a reconnect).

Credentials never reach a page, a log line or an error message. Between callback and choice
they sit in the session Fernet-encrypted with the keys of the credentials field; if the keys
change meanwhile, the choice is gone and the person starts again.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from cryptography.fernet import InvalidToken
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from connections.fields import fernet
from connections.models import Connection, Workspace
from connections.request_user import signed_in_user
from connections.services import ConnectAccount, connections_connect_accounts
from connections.status import access_expiry_text
from syncing.providers import OAUTH_PROVIDERS
from syncing.providers.base import ConnectError, OAuthProvider, plural

logger = logging.getLogger(__name__)

# How long a listed choice waits in the session for the person to pick.
PENDING_TTL = timedelta(minutes=30)
# What a platform's error code may show of itself on the error page.
ERROR_CODE_MAX = 100


@dataclasses.dataclass(frozen=True)
class Flow:
    """One provider's connect flow, as the shared views and templates need it."""

    provider: str  # connections.models.Provider, a key of OAUTH_PROVIDERS
    label: str  # "Meta", "Google Ads"
    account_noun: str  # "Meta ad account"
    login_noun: str  # "Meta login"
    url_prefix: str  # "meta-connect": the names of its start, callback and choose URLs
    redirect_uri_setting: str  # the setting that overrides the callback URL
    not_configured: str  # what Settings says when the installation has no app for it

    @property
    def start_url(self) -> str:
        return reverse(f"{self.url_prefix}-start")

    @property
    def callback_url(self) -> str:
        return reverse(f"{self.url_prefix}-callback")

    @property
    def choose_url(self) -> str:
        return reverse(f"{self.url_prefix}-choose")

    @property
    def state_key(self) -> str:
        return f"connect_{self.provider}_flow"

    @property
    def pending_key(self) -> str:
        return f"connect_{self.provider}_pending"


@dataclasses.dataclass(frozen=True)
class Offer:
    """An account the sign-in can reach, and the line the choose page shows under its name."""

    account: ConnectAccount
    hint: str


@dataclasses.dataclass(frozen=True)
class SignIn:
    """What a callback leaves for the choice: the credentials and the accounts they reach."""

    credentials: dict
    expires_at: datetime | None
    offers: list[Offer]
    # Things the person should know about the list ("3 closed accounts are not listed").
    notes: list[str] = dataclasses.field(default_factory=list)


# --- small shared pieces -------------------------------------------------------------------------


def flow_for(provider: str) -> Flow:
    """The connect flow of a provider with an OAuth sign-in (KeyError for any other), in the words
    its platform gives (ConnectInfo) and with the URL names connect_urls.py gives it."""
    info = OAUTH_PROVIDERS[provider].connect_info
    return Flow(
        provider=provider,
        label=info.label,
        account_noun=info.account_noun,
        login_noun=info.login_noun,
        url_prefix=f"{provider}-connect",
        redirect_uri_setting=info.redirect_uri_setting,
        not_configured=info.not_configured,
    )


def oauth_sign_in(provider: OAuthProvider, *, code: str, redirect_uri: str, now: datetime) -> SignIn:
    """The provider trades the code for access, then lists the accounts that access reaches."""
    grant = provider.oauth_exchange_code(code=code, redirect_uri=redirect_uri, now=now)
    listing = provider.accounts_list(access_token=grant.access_token, now=now)
    offers = [
        Offer(
            account=ConnectAccount(
                external_account_id=offer.external_account_id,
                name=offer.name,
                currency=offer.currency,
                timezone_name=offer.timezone_name,
                credentials=offer.credentials,
            ),
            hint=offer.hint,
        )
        for offer in listing.accounts
    ]
    return SignIn(credentials=grant.credentials, expires_at=grant.expires_at, offers=offers, notes=listing.notes)


def user_workspaces(user: User) -> list[Workspace]:
    return list(Workspace.objects.filter(memberships__user=user).order_by("name", "pk"))


def workspace_for_user(workspaces: list[Workspace], public_id: str) -> Workspace:
    """The chosen workspace among the user's own; with none chosen, their only one. Else 404."""
    if not public_id and len(workspaces) == 1:
        return workspaces[0]
    for workspace in workspaces:
        if str(workspace.public_id) == public_id:
            return workspace
    raise Http404("No such workspace")


def redirect_uri(request: HttpRequest, flow: Flow) -> str:
    """The callback URL to register with the platform: the override setting, else built on
    PUBLIC_BASE_URL, else on the request (https behind a proxy only with SECURE_PROXY_SSL_HEADER)."""
    override = getattr(settings, flow.redirect_uri_setting, "")
    if override:
        return override
    if settings.PUBLIC_BASE_URL:
        return f"{settings.PUBLIC_BASE_URL}{flow.callback_url}"
    return request.build_absolute_uri(flow.callback_url)


def error_page(request: HttpRequest, flow: Flow, message: str, status: int) -> HttpResponse:
    return render(request, "connect/error.html", {"flow": flow, "message": message}, status=status)


# --- the OAuth state ------------------------------------------------------------------------------


def oauth_state_create(request: HttpRequest, flow: Flow) -> tuple[str, str]:
    """A fresh state and the redirect URI, kept in the session until the callback: (state, uri)."""
    state = secrets.token_urlsafe(32)
    uri = redirect_uri(request, flow)
    request.session[flow.state_key] = {"state": state, "redirect_uri": uri}
    return state, uri


def oauth_state_check(request: HttpRequest, flow: Flow) -> str | None:
    """The redirect URI the flow started with if the callback's state matches, else None.

    Spent either way: a replayed callback, or one that was forged to sign the person in to
    someone else's account (login CSRF), finds nothing.
    """
    started = request.session.pop(flow.state_key, None)
    state = request.GET.get("state", "")
    if not isinstance(started, dict) or not state or not constant_time_compare(state, started.get("state", "")):
        return None
    return started.get("redirect_uri") or None


# --- the pending choice, encrypted in the session ------------------------------------------------


def pending_store(request: HttpRequest, flow: Flow, sign_in: SignIn, now: datetime) -> None:
    data = {
        "credentials": sign_in.credentials,
        "expires_at": sign_in.expires_at.isoformat() if sign_in.expires_at else None,
        "offers": [{"account": dataclasses.asdict(o.account), "hint": o.hint} for o in sign_in.offers],
        "notes": sign_in.notes,
        "until": (now + PENDING_TTL).isoformat(),
    }
    request.session[flow.pending_key] = fernet().encrypt(json.dumps(data).encode()).decode()


def pending_load(request: HttpRequest, flow: Flow, now: datetime) -> SignIn | None:
    """The sign-in waiting for a choice; None if there is none, it expired, or the keys changed."""
    raw = request.session.get(flow.pending_key)
    if not isinstance(raw, str):
        return None
    try:
        data = json.loads(fernet().decrypt(raw.encode()))
        if datetime.fromisoformat(data["until"]) <= now:
            raise ValueError("expired")
        return SignIn(
            credentials=data["credentials"],
            expires_at=datetime.fromisoformat(data["expires_at"]) if data["expires_at"] else None,
            offers=[Offer(account=ConnectAccount(**o["account"]), hint=o["hint"]) for o in data["offers"]],
            notes=list(data["notes"]),
        )
    except (InvalidToken, ValueError, KeyError, TypeError):
        request.session.pop(flow.pending_key, None)
        return None


# --- the views' bodies ------------------------------------------------------------------------------


def start(request: HttpRequest, flow: Flow, *, configured: bool, authorize_url: Callable[..., str]) -> HttpResponse:
    if not configured:
        messages.error(request, flow.not_configured)
        return redirect("settings")
    if not user_workspaces(signed_in_user(request)):
        return error_page(
            request, flow, "You are not a member of any workspace, so there is nowhere to add accounts.", 403
        )
    state, uri = oauth_state_create(request, flow)
    return redirect(authorize_url(state=state, redirect_uri=uri))


def callback(request: HttpRequest, flow: Flow, *, sign_in: Callable[..., SignIn]) -> HttpResponse:
    """Check the state, then let the provider trade the code (sign_in(code=, redirect_uri=, now=))."""
    uri = oauth_state_check(request, flow)
    if uri is None:
        return error_page(
            request,
            flow,
            f"This {flow.label} sign-in could not be verified: it was already used, started in another "
            "browser, or its state does not match the one we started. Nothing was connected.",
            400,
        )
    error = request.GET.get("error", "")
    if error == "access_denied":
        messages.info(request, f"Connecting a {flow.account_noun} was cancelled; nothing was connected.")
        return redirect("settings")
    if error:
        return error_page(
            request, flow, f"{flow.label} did not grant access ({error[:ERROR_CODE_MAX]}). Nothing was connected.", 400
        )
    code = request.GET.get("code", "")
    if not code:
        return error_page(request, flow, f"{flow.label} did not send an authorization code.", 400)
    now = timezone.now()
    try:
        result = sign_in(code=code, redirect_uri=uri, now=now)
    except ConnectError as exc:
        logger.info("Connecting a %s failed: %s", flow.account_noun, exc.message)
        return error_page(request, flow, exc.message, exc.status)
    pending_store(request, flow, result, now)
    return redirect(flow.choose_url)


def choose(request: HttpRequest, flow: Flow) -> HttpResponse:
    now = timezone.now()
    sign_in = pending_load(request, flow, now)
    if sign_in is None:
        return error_page(
            request,
            flow,
            f"There is no {flow.label} sign-in waiting for a choice (one waits {PENDING_TTL.seconds // 60} "
            "minutes); start again.",
            400,
        )
    workspaces = user_workspaces(signed_in_user(request))
    offered = {offer.account.external_account_id: offer for offer in sign_in.offers}
    connected_in = _connected_in(workspaces, flow, list(offered))
    names_in = {account_id: ", ".join(w.name for w in found) for account_id, found in connected_in.items()}
    preselected = next((ws[0] for ws in connected_in.values()), workspaces[0] if workspaces else None)
    context = {
        "flow": flow,
        "workspaces": workspaces,
        "preselected": preselected,
        "rows": [
            {"offer": offer, "connected_in": names_in.get(offer.account.external_account_id, "")}
            for offer in sign_in.offers
        ],
        "notes": sign_in.notes,
        "expiry": access_expiry_text(sign_in.expires_at, now),
    }
    if request.method == "GET":
        return render(request, "connect/choose.html", context)

    workspace = workspace_for_user(workspaces, request.POST.get("workspace", ""))
    chosen_ids = set(request.POST.getlist("accounts"))
    if not chosen_ids:
        return render(
            request,
            "connect/choose.html",
            {**context, "error": f"Choose at least one {flow.account_noun}."},
            status=400,
        )
    if any(account_id not in offered for account_id in chosen_ids):
        return error_page(request, flow, f"That account was not offered by this {flow.label} sign-in.", 400)
    # In the order offered (by name), which is also the order the message names them in.
    chosen = [offer.account for offer in sign_in.offers if offer.account.external_account_id in chosen_ids]
    elsewhere = [
        f"{account.name} is already connected in {names_in[account.external_account_id]}"
        for account in chosen
        if workspace not in connected_in.get(account.external_account_id, [workspace])
    ]
    if elsewhere:
        # A second connection to the same account would sync it twice against one rate limit.
        error = f"{'; '.join(elsewhere)}. Choose that workspace to reconnect it there."
        return render(request, "connect/choose.html", {**context, "error": error}, status=400)
    created, reconnected = connections_connect_accounts(
        workspace=workspace,
        provider=flow.provider,
        accounts=chosen,
        credentials=sign_in.credentials,
        expires_at=sign_in.expires_at,
        now=now,
    )
    request.session.pop(flow.pending_key, None)
    messages.success(request, summary(flow, workspace, created, reconnected))
    return redirect("settings")


def _connected_in(workspaces: list[Workspace], flow: Flow, account_ids: list[str]) -> dict[str, list[Workspace]]:
    """Which of the user's workspaces already connect each of these accounts."""
    by_pk = {w.pk: w for w in workspaces}
    found: dict[str, list[Workspace]] = {}
    rows = Connection.objects.filter(
        workspace__in=workspaces, provider=flow.provider, external_account_id__in=account_ids
    ).values_list("external_account_id", "workspace_id")
    for account_id, workspace_id in rows.order_by("workspace__name", "workspace_id"):
        found.setdefault(account_id, []).append(by_pk[workspace_id])
    return found


def summary(flow: Flow, workspace: Workspace, created: list[Connection], reconnected: list[Connection]) -> str:
    """ "Alice's Agency: connected 2 Meta ad accounts (Shop DE, Shop US); ..." """
    parts = []
    if created:
        names = ", ".join(c.name for c in created)
        parts.append(
            f"connected {plural(len(created), flow.account_noun)} ({names}); "
            f"{'it syncs' if len(created) == 1 else 'they sync'} manually until you pick a frequency"
        )
    if reconnected:
        names = ", ".join(c.name for c in reconnected)
        parts.append(f"reconnected {plural(len(reconnected), flow.account_noun)} ({names})")
    return f"{workspace.name}: {'; '.join(parts)}."


# --- views, one set for every provider in OAUTH_PROVIDERS (connect_urls.py passes `provider`) ------


@login_required
@require_POST
def connect_start(request: HttpRequest, provider: str) -> HttpResponse:
    platform = OAUTH_PROVIDERS[provider]
    return start(
        request, flow_for(provider), configured=platform.oauth_configured(), authorize_url=platform.oauth_authorize_url
    )


@login_required
@require_GET
def connect_callback(request: HttpRequest, provider: str) -> HttpResponse:
    return callback(request, flow_for(provider), sign_in=functools.partial(oauth_sign_in, OAUTH_PROVIDERS[provider]))


@login_required
@require_http_methods(["GET", "POST"])
def connect_choose(request: HttpRequest, provider: str) -> HttpResponse:
    return choose(request, flow_for(provider))
