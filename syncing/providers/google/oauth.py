"""Connect Google Ads accounts: Google's OAuth authorization-code flow and the account listing.

The flow itself (state, pending choice, choose page, the write) is connections/connect.py, which
reaches this module through GoogleProvider's connect methods; this module holds what is Google's:
the consent screen URL (adwords scope, offline access), the code exchange for tokens (httpx),
and listing the client accounts the user can reach through the google-ads SDK (customers.py).
The refresh token is kept only in the connection's encrypted credentials (and, until the
choice, encrypted in the session); it is never logged, shown or returned.
"""

from __future__ import annotations

import logging
from datetime import datetime
from urllib.parse import urlencode

import httpx
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from syncing.providers.base import (
    AccountListing,
    AccountOffer,
    ConnectError,
    ConnectInfo,
    ProviderError,
    ThrottledError,
    json_object,
    zone_name,
)
from syncing.providers.google.customers import (
    InstallationRefused,
    NoAdsAccounts,
    customer_id_format,
    google_customers_accessible,
)
from syncing.providers.google.sdk import ADWORDS_SCOPE

logger = logging.getLogger(__name__)

GOOGLE_CONNECT = ConnectInfo(
    label="Google Ads",
    account_noun="Google Ads account",
    login_noun="Google login",
    redirect_uri_setting="GOOGLE_OAUTH_REDIRECT_URI",
    not_configured="Connecting Google Ads accounts is not set up here (GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET).",
)
# Connection.name's length.
NAME_MAX = 200


def google_oauth_configured() -> bool:
    return bool(settings.GOOGLE_CLIENT_ID and settings.GOOGLE_CLIENT_SECRET)


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
    body = json_object(response)
    if response.status_code >= 500:
        raise ConnectError(
            f"Google's sign-in service is unavailable (HTTP {response.status_code}); please try again.", 502
        )
    if response.status_code != 200:
        body = body or {}
        reason = body.get("error_description") or body.get("error") or f"HTTP {response.status_code}"
        raise ConnectError(f"Google did not accept the sign-in ({str(reason)[:200]}). Please start again.", 400)
    if body is None:
        raise ConnectError("Google sent an unreadable answer to the sign-in. Please start again.", status=502)
    if not isinstance(body.get("access_token"), str) or not body["access_token"]:
        raise ConnectError("Google's answer had no access token. Please start again.", status=502)
    if not isinstance(body.get("refresh_token"), str) or not body["refresh_token"]:
        raise ConnectError("Google did not grant offline access, which syncing needs. Please start again.", 400)
    return body


def google_accounts(*, access_token: str, now: datetime) -> AccountListing:
    """The client accounts the user can reach and notes for the person (accounts Google refused
    on their own, left out), or ConnectError saying why not."""
    notes: list[str] = []
    try:
        customers = google_customers_accessible(access_token=access_token, clock=lambda: now, skipped=notes)
    except InstallationRefused as exc:
        logger.error("Google Ads refused this installation: %s", exc.message)
        raise ConnectError(f"{exc.message} Tell an administrator; reconnecting will not help.", status=502) from None
    except NoAdsAccounts as exc:
        raise ConnectError(exc.message, status=400) from None
    except ThrottledError as exc:
        raise ConnectError(f"{exc.message} Please try again later.", status=503) from None
    except ProviderError as exc:
        raise ConnectError(f"Google Ads would not list your accounts: {exc.message}", status=502) from None
    except ImproperlyConfigured as exc:  # GOOGLE_ADS_API_VERSION not in the installed google-ads
        logger.error("Google Ads is misconfigured: %s", exc)
        raise ConnectError(f"Google Ads is not set up correctly here ({exc}); tell an administrator.", 503) from None
    except OSError as exc:  # GOOGLE_ADS_CA_BUNDLE missing or unreadable
        logger.error("Google Ads is misconfigured: cannot read GOOGLE_ADS_CA_BUNDLE (%s)", type(exc).__name__)
        raise ConnectError(
            "Google Ads is not set up correctly here (GOOGLE_ADS_CA_BUNDLE cannot be read); tell an administrator.",
            503,
        ) from None
    except Exception:
        # google_error() passes on what it does not know; a person still gets a page, not a 500.
        logger.exception("Listing Google Ads accounts failed unexpectedly")
        raise ConnectError("Google Ads could not list your accounts (an unexpected error); try again.", 502) from None
    offers = []
    for customer in customers:
        currency = customer.currency[:3]
        timezone_name = zone_name(customer.time_zone, source="Google Ads")
        hint = f"Customer {customer_id_format(customer.customer_id)} · {currency} · {timezone_name}"
        if customer.login_customer_id:
            hint += f" · through manager {customer_id_format(customer.login_customer_id)}"
        offers.append(
            AccountOffer(
                external_account_id=customer.customer_id,
                name=customer.name[:NAME_MAX],
                currency=currency,
                timezone_name=timezone_name,
                hint=hint,
                credentials={"login_customer_id": customer.login_customer_id} if customer.login_customer_id else {},
            )
        )
    return AccountListing(accounts=offers, notes=notes)
