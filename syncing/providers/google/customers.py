"""The Google Ads accounts a user can connect (the connect flow's account listing, oauth.py)."""

from __future__ import annotations

import dataclasses
import logging

from django.conf import settings
from django.utils import timezone

from syncing.providers.base import PermanentError, ProviderError
from syncing.providers.google.errors import (
    DEVELOPER_TOKEN_REFUSED,
    INSTALLATION_REFUSED,
    ONE_CUSTOMER_ONLY,
    google_error,
    google_failure,
)
from syncing.providers.google.sdk import (
    app_budget,
    call_metadata,
    customer_id_normalize,
    google_ads_sdk,
    require_configured,
)
from syncing.schedule import account_zone

logger = logging.getLogger(__name__)

# The account itself (level 0) and, for a manager, its direct client accounts (level 1).
CUSTOMER_CLIENT_QUERY = """
SELECT customer_client.id, customer_client.descriptive_name, customer_client.currency_code,
  customer_client.time_zone, customer_client.manager, customer_client.level, customer_client.status
FROM customer_client
WHERE customer_client.level <= 1
"""
# Client accounts not offered when connecting.
CLOSED_STATUSES = {"CANCELED", "SUSPENDED", "CLOSED"}
NOT_ADS_USER_MESSAGE = (
    "This Google login has no Google Ads accounts. Sign in with the Google account that has access to Google Ads."
)


class InstallationRefused(PermanentError):
    """Google refuses this installation (its developer token, Cloud project or organization) for
    every account: only an administrator can fix it, so no account is offered."""


class NoAdsAccounts(PermanentError):
    """The Google login is not a Google Ads user at all (NOT_ADS_USER)."""


@dataclasses.dataclass(frozen=True)
class GoogleCustomer:
    customer_id: str
    name: str
    currency: str
    time_zone: str
    # The manager to log in through, when the user reaches this account only through one.
    login_customer_id: str | None


def google_customers_accessible(
    *, access_token: str, clock=timezone.now, skipped: list[str] | None = None
) -> list[GoogleCustomer]:
    """The client accounts this user can sync: each accessible account and, for a manager, its
    direct client accounts. Manager accounts themselves have no campaigns and are left out.

    An accessible account Google refuses on its own (no permission, not enabled, not found) is
    left out, and why is appended to `skipped` when given. Anything else fails the listing:
    InstallationRefused when Google refuses the installation, NoAdsAccounts when the login has
    no Google Ads account, else the provider error.

    One ListAccessibleCustomers call and one GAQL query per accessible account, each counted
    against the installation's daily operations like any sync.
    """
    require_configured()
    sdk = google_ads_sdk()
    # Imported here: syncing.budget imports the providers' base, whose package imports this one.
    from syncing.meter import CallMeter

    meter = CallMeter([app_budget()], clock=clock)
    bearer = call_metadata(bearer=access_token, login_customer_id=None)
    try:
        meter.spend()
        response = sdk.customers.list_accessible_customers(metadata=bearer, timeout=settings.GOOGLE_ADS_TIMEOUT)
    except Exception as exc:
        raise _listing_error(exc, now=clock()) from None
    accessible = [customer_id_normalize(name.rsplit("/", 1)[-1]) for name in response.resource_names]
    found: dict[str, GoogleCustomer] = {}
    for account in accessible:
        try:
            meter.spend()
            stream = sdk.google_ads.search_stream(
                customer_id=account,
                query=CUSTOMER_CLIENT_QUERY,
                metadata=call_metadata(bearer=access_token, login_customer_id=account),
                timeout=settings.GOOGLE_ADS_TIMEOUT,
            )
            clients = [row.customer_client for batch in stream for row in batch.results]
        except Exception as exc:
            codes, google_message = google_failure(exc)
            error = _listing_error(exc, now=clock())
            if codes and all(code in ONE_CUSTOMER_ONLY for code in codes):
                # A cancelled or inaccessible account: offer the others.
                reason = google_message or error.message
                logger.info("Skipping Google Ads customer %s: %s", account, reason)
                if skipped is not None:
                    skipped.append(f"Google Ads account {customer_id_format(account)} is not listed: {reason}")
                continue
            raise error from None
        for client in clients:
            if client.manager or client.status.name in CLOSED_STATUSES:
                continue
            client_id = str(client.id)
            direct = client.level == 0
            known = found.get(client_id)
            if known is not None and (known.login_customer_id is None or not direct):
                continue  # direct access wins over access through a manager
            found[client_id] = GoogleCustomer(
                customer_id=client_id,
                name=client.descriptive_name or f"Google Ads {customer_id_format(client_id)}",
                currency=client.currency_code or "USD",
                # The connection's days are computed in this zone: a name we cannot load is
                # stored as UTC (and logged) rather than failing every sync later.
                time_zone=account_zone(client.time_zone or "UTC").key,
                login_customer_id=None if direct else account,
            )
    return sorted(found.values(), key=lambda c: (c.name.lower(), c.customer_id))


def _listing_error(exc: Exception, *, now) -> ProviderError:
    """google_error(), with what listing must say differently: a refused installation and a login
    without Google Ads are not fixed by reconnecting."""
    codes, google_message = google_failure(exc)
    error = google_error(exc, now=now)
    names = {name for kind, name in codes if kind in ("authentication_error", "authorization_error")}
    message = google_message or error.message
    if names & DEVELOPER_TOKEN_REFUSED:
        return InstallationRefused(f"Google refused this installation's developer token: {message}")
    if names & INSTALLATION_REFUSED:
        return InstallationRefused(f"Google refused this installation's access to the Google Ads API: {message}")
    if "NOT_ADS_USER" in names:
        return NoAdsAccounts(NOT_ADS_USER_MESSAGE)
    return error


def customer_id_format(customer_id: str) -> str:
    """'1234567890' -> '123-456-7890', as Google Ads shows it."""
    digits = customer_id_normalize(customer_id)
    return f"{digits[:3]}-{digits[3:6]}-{digits[6:]}" if len(digits) == 10 else digits
