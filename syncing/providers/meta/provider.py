"""The Meta provider: its budget, the sync's fetch of campaign insights, and the connect methods.

A window longer than CHUNK_DAYS (a restatement) is fetched in chunks, newest first: Meta
refuses large requests for busy accounts with "Please reduce the amount of data you're asking
for, then retry your request" (code 1, usually with no subcode and HTTP 500; sometimes 1 or 100
with subcode 1487534), which no retry fixes. A chunk Meta still refuses is halved, down to a
single day; a single day refused is a PermanentError with Meta's message.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta

import requests
from django.conf import settings
from django.utils import timezone
from facebook_business.adobjects.adaccount import AdAccount
from facebook_business.exceptions import FacebookBadObjectError, FacebookError, FacebookRequestError

from syncing.budget import Budget
from syncing.providers.base import (
    AccountListing,
    AuthError,
    FetchResult,
    MetricRow,
    OAuthGrant,
    PermanentError,
    ProviderError,
    TransientProviderError,
)
from syncing.providers.meta.client import MeteredApi, account_number, graph_session
from syncing.providers.meta.errors import RECONNECT_MESSAGE, bad_object_error, request_error, scrub, too_much_data
from syncing.providers.meta.oauth import (
    META_CONNECT,
    meta_ad_accounts,
    meta_authorize_url,
    meta_oauth_configured,
    meta_token_exchange,
)
from syncing.providers.meta.rows import metric_row
from syncing.scopes import META_APP, meta_account_scope

# Rows per page: Meta's default of 25 would turn an ordinary sync of a busy account into many
# calls against a budget of 180 an hour.
PAGE_SIZE = 500
# Days per insights request. A restatement of 28 days is 5 requests: each is small enough for
# Meta to answer for busy accounts, and an ordinary sync (2 days) stays one request.
CHUNK_DAYS = 7
INSIGHTS_FIELDS = [
    "campaign_id",
    "campaign_name",
    "date_start",
    "spend",
    "impressions",
    "clicks",
    "actions",
    "action_values",
    "account_currency",
]


def action_types(option: object) -> list[str]:
    """The conversion action types in order of preference, from a connection's option or the setting."""
    value = option or settings.META_CONVERSION_ACTION_TYPE
    items: Iterable[object]
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, Iterable):
        items = list(value)
    else:  # a bare number: as list() of it would raise
        raise TypeError(f"{type(value).__name__!r} object is not iterable")
    return [str(item).strip() for item in items if str(item).strip()]


class MetaProvider:
    slug = "meta"
    label = "Meta"
    connect_info = META_CONNECT
    # Insights go back 37 months (about 1,125 days); further back Meta refuses the request.
    history_days = 1125
    # One insights request per chunk (CHUNK_DAYS), as a restatement's chunks.
    backfill_chunk_days = CHUNK_DAYS

    @property
    def default_lookback_days(self) -> int:
        return settings.META_LOOKBACK_DAYS

    def budgets(self, *, external_account_id: str) -> list[Budget]:
        return [
            Budget(
                key=f"meta:{account_number(external_account_id)}",
                limit=settings.META_CALLS_PER_HOUR,
                window=timedelta(hours=1),
                label="Meta's hourly call budget for this ad account",
            )
        ]

    @property
    def usage_window(self) -> timedelta:
        """Meta reports usage per scope (its headers): calls are counted per scope to pace them."""
        return timedelta(seconds=settings.META_USAGE_WINDOW_SECONDS)

    def throttle_scopes(self, *, external_account_id: str) -> tuple[str, ...]:
        return (META_APP, meta_account_scope(account_number(external_account_id)))

    def fetch(self, *, connection, since: date, until: date, now: datetime, meter) -> FetchResult:
        token = (connection.credentials or {}).get("access_token")
        if not token:
            raise AuthError(RECONNECT_MESSAGE)
        preferred = action_types((connection.provider_options or {}).get("action_type"))
        number = account_number(connection.external_account_id)
        session = graph_session(token)
        api = MeteredApi(session, api_version=settings.META_API_VERSION, meter=meter, account=number)
        account = AdAccount(f"act_{number}", api=api)
        rows: list[MetricRow] = []
        error: ProviderError | None = None
        pending = _chunks(since, until, CHUNK_DAYS)  # newest first
        try:
            while pending:
                start, end = pending.pop(0)
                part = _insights(account, start, end, preferred, connection.currency)
                if part is None:
                    # Meta refused this much at once: the newer half, then the older one.
                    middle = start + (end - start) // 2
                    pending[:0] = [(middle + timedelta(days=1), end), (start, middle)]
                else:
                    rows.extend(part)
        except FacebookRequestError as exc:
            # A throttle's wait counts from the answer, not from the sync's start.
            error = request_error(exc, timezone.now(), account=number, token=token)
        except FacebookBadObjectError as exc:
            error = bad_object_error(exc, api.last_answer, token)
        except FacebookError as exc:
            # The SDK refused to build the request (a parameter, the API version): no retry helps.
            error = PermanentError(f"Meta request could not be built: {scrub(str(exc), token)}")
        except requests.RequestException as exc:
            error = TransientProviderError(f"Could not reach Meta ({type(exc).__name__}).")
        finally:
            session.requests.close()
        if error is not None:
            # Raised here, outside the except blocks, so the SDK's exception (which prints the
            # request) is not chained to it.
            raise error
        # A throttle announced by the last answer's headers (meter.pending_throttle) is the
        # runner's to apply: these rows are complete.
        return FetchResult(rows=rows)

    # --- connecting accounts (connections/connect.py; the calls are in oauth.py) ---------------

    def oauth_configured(self) -> bool:
        return meta_oauth_configured()

    def oauth_authorize_url(self, *, state: str, redirect_uri: str) -> str:
        return meta_authorize_url(state=state, redirect_uri=redirect_uri)

    def oauth_exchange_code(self, *, code: str, redirect_uri: str, now: datetime) -> OAuthGrant:
        token = meta_token_exchange(code=code, redirect_uri=redirect_uri, now=now)
        return OAuthGrant(
            credentials={"access_token": token.access_token},
            expires_at=token.expires_at,
            access_token=token.access_token,
        )

    def accounts_list(self, *, access_token: str, now: datetime) -> AccountListing:
        return meta_ad_accounts(access_token=access_token)


def _chunks(since: date, until: date, days: int) -> list[tuple[date, date]]:
    """since..until as consecutive ranges of at most `days` days, the newest first."""
    chunks = []
    end = until
    while end >= since:
        start = max(since, end - timedelta(days=days - 1))
        chunks.append((start, end))
        end = start - timedelta(days=1)
    return chunks


def _insights(account: AdAccount, since: date, until: date, preferred: list[str], currency: str) -> list | None:
    """Every page of since..until, or None when Meta asks for less data and the range can be split."""
    try:
        cursor = account.get_insights(
            fields=INSIGHTS_FIELDS,
            params={
                "level": "campaign",
                "time_increment": 1,
                "time_range": {"since": since.isoformat(), "until": until.isoformat()},
                "limit": PAGE_SIZE,
            },
        )
        # Iterating loads each further page through MeteredApi.call.
        return [metric_row(item.export_all_data(), preferred, currency) for item in cursor]
    except FacebookRequestError as exc:
        if too_much_data(exc) and since < until:
            return None
        raise
