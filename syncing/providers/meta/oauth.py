"""Connect Meta ad accounts: Meta's OAuth dialog, the token exchanges, and the account listing.

The flow itself (state, pending choice, choose page, the write) is connections/connect.py, which
reaches this module through MetaProvider's connect methods; this module holds what is Meta's:
the dialog URL, code -> short-lived token -> long-lived token (~60 days), and /me/adaccounts,
all over httpx. Tokens and codes are never rendered, logged or put in an error message: Meta's
error texts pass through redact(), and httpx's request log lines (which carry the query string)
are redacted by the filter settings.LOGGING puts on "httpx".
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
from datetime import datetime, timedelta
from urllib.parse import urlencode

import httpx
from django.conf import settings

from adsync.redaction import redact
from syncing.providers.base import (
    AccountListing,
    AccountOffer,
    ConnectError,
    ConnectInfo,
    json_object,
    plural,
    zone_name,
)
from syncing.providers.meta.client import account_number

logger = logging.getLogger(__name__)

META_CONNECT = ConnectInfo(
    label="Meta",
    account_noun="Meta ad account",
    login_noun="Meta login",
    redirect_uri_setting="META_OAUTH_REDIRECT_URI",
    not_configured=(
        "Connecting Meta accounts is not set up here (META_APP_ID and META_APP_SECRET). "
        "An administrator can paste a system-user token in the admin instead."
    ),
)
SCOPE = "ads_read"
ACCOUNT_FIELDS = "id,account_id,name,currency,timezone_name,account_status"
# account_status values (Meta: 1 active, 2 disabled, 3 unsettled, 7 pending risk review,
# 8 pending settlement, 9 in grace period, 100 pending closure, 101 closed, 201 any active,
# 202 any closed). All but the disabled and closed ones still report insights.
EXCLUDED_STATUSES = frozenset({2, 101, 202})
# A token's expires_in beyond this is not believed (Meta's long-lived tokens last ~60 days).
MAX_EXPIRES_IN = 10 * 366 * 86400
# /me/adaccounts pages of 100; an agency user with thousands of accounts stops here.
MAX_ACCOUNT_PAGES = 50
HTTP_TIMEOUT = httpx.Timeout(20.0, connect=10.0)


@dataclasses.dataclass(frozen=True)
class MetaToken:
    access_token: str
    expires_at: datetime | None


def meta_oauth_configured() -> bool:
    return bool(settings.META_APP_ID and settings.META_APP_SECRET)


def meta_authorize_url(*, state: str, redirect_uri: str) -> str:
    query = urlencode({"client_id": settings.META_APP_ID, "redirect_uri": redirect_uri, "state": state, "scope": SCOPE})
    return f"{settings.META_OAUTH_DIALOG_URL}/{settings.META_API_VERSION}/dialog/oauth?{query}"


# --- Graph API calls (httpx) ------------------------------------------------------------------


def appsecret_proof(access_token: str) -> str:
    """What Meta asks of server calls when the app requires it, as the SDK sends it for syncs."""
    return hmac.new(settings.META_APP_SECRET.encode(), access_token.encode(), hashlib.sha256).hexdigest()


def _graph() -> httpx.Client:
    return httpx.Client(base_url=f"{settings.META_GRAPH_URL}/{settings.META_API_VERSION}/", timeout=HTTP_TIMEOUT)


def _get(client: httpx.Client, path: str, params: dict[str, str]) -> dict:
    try:
        response = client.get(path, params=params)
    except httpx.HTTPError as exc:
        raise ConnectError(f"Could not reach Meta ({type(exc).__name__}); try again in a moment.") from None
    body = json_object(response)
    if body is None:
        raise ConnectError(f"Meta sent an unreadable answer (HTTP {response.status_code}); try again.")
    if response.is_error or "error" in body:
        raw_error = body.get("error")
        error = raw_error if isinstance(raw_error, dict) else {}
        message = redact(str(error.get("message") or f"HTTP {response.status_code}"))
        raise ConnectError(f"Meta refused the request: {message}")
    return body


def _expires_at(expires_in: object, now: datetime) -> datetime | None:
    """Meta's expires_in (seconds) as a time; None when it sends none (a token that does not
    expire) or something that is not a plausible positive number of seconds (logged, not fatal)."""
    if expires_in is None or expires_in == "":
        return None
    try:
        seconds = _json_int(expires_in)
    except (TypeError, ValueError, OverflowError):
        seconds = 0
    if seconds <= 0 or seconds > MAX_EXPIRES_IN:
        logger.warning("Meta sent an unreadable expires_in %r; the token's expiry is not known", expires_in)
        return None
    return now + timedelta(seconds=seconds)


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
    if not token or not isinstance(token, str):
        raise ConnectError("Meta did not return an access token; try connecting again.")
    return MetaToken(access_token=token, expires_at=_expires_at(long.get("expires_in"), now))


def meta_ad_accounts(*, access_token: str) -> AccountListing:
    """The ad accounts the token may read that are neither disabled nor closed, every page, sorted
    by name; and notes for the person (accounts left out)."""
    offers: list[AccountOffer] = []
    inactive = 0
    truncated = False
    params = {
        "access_token": access_token,
        "appsecret_proof": appsecret_proof(access_token),
        "fields": ACCOUNT_FIELDS,
        "limit": "100",
    }
    with _graph() as client:
        for _ in range(MAX_ACCOUNT_PAGES):
            body = _get(client, "me/adaccounts", params)
            data = body.get("data")
            for item in data if isinstance(data, list) else []:
                if not isinstance(item, dict):
                    continue
                number = account_number(str(item.get("account_id") or item.get("id") or ""))
                if not number:
                    continue
                if _status(item.get("account_status")) in EXCLUDED_STATUSES:
                    inactive += 1
                    continue
                offers.append(_offer(number, item))
            raw_paging = body.get("paging")
            paging = raw_paging if isinstance(raw_paging, dict) else {}
            raw_cursors = paging.get("cursors")
            cursors = raw_cursors if isinstance(raw_cursors, dict) else {}
            after = cursors.get("after")
            if not paging.get("next") or not after:
                break
            # Follow the cursor against our base URL (a proxy may stand in) rather than `next`.
            params = {**params, "after": str(after)}
        else:
            truncated = True
            logger.warning("Meta lists more than %d pages of ad accounts; offering the first ones", MAX_ACCOUNT_PAGES)
    notes = []
    if inactive:
        verb = "is" if inactive == 1 else "are"
        notes.append(f"{plural(inactive, 'ad account')} that Meta reports as disabled or closed {verb} not listed.")
    if truncated:
        notes.append(f"This Meta login reaches more ad accounts than we list; only the first {len(offers)} are shown.")
    offers.sort(key=lambda o: (o.name.lower(), o.external_account_id))
    return AccountListing(accounts=offers, notes=notes)


def _status(value: object) -> int | None:
    """account_status as a number (Meta sends an integer); None when absent or unreadable."""
    try:
        return _json_int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _json_int(value: object) -> int:
    """int() of a JSON value: a number, or a string of one (ValueError if it is not); TypeError
    for the other JSON values (null, arrays, objects), as int() itself raises for them."""
    if isinstance(value, str | int | float):
        return int(value)
    raise TypeError(f"int() argument must be a string or a number, not {type(value).__name__!r}")


def _offer(number: str, item: dict) -> AccountOffer:
    currency = str(item.get("currency") or "USD")[:3]
    timezone_name = zone_name(item.get("timezone_name") or "UTC", source="Meta")
    return AccountOffer(
        external_account_id=number,
        name=str(item.get("name") or f"Ad account {number}")[:200],
        currency=currency,
        timezone_name=timezone_name,
        hint=f"Account {number} · {currency} · {timezone_name}",
    )
