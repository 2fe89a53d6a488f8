"""The Google Ads provider: its budgets, the sync's GAQL query, and the connect methods.

The fetch is one search_stream over campaign, by day, through the installation's SDK clients
(sdk.py), with the connection's refresh token traded for an access token first; an access token
Google refuses is refreshed once.
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.utils import timezone

from syncing.budget import Budget
from syncing.providers import values
from syncing.providers.base import (
    AccountListing,
    AuthError,
    FetchResult,
    MetricRow,
    OAuthGrant,
    PermanentError,
    ProviderError,
)
from syncing.providers.google.errors import RECONNECT_MESSAGE, access_token_rejected, google_error
from syncing.providers.google.oauth import (
    GOOGLE_CONNECT,
    google_accounts,
    google_authorize_url,
    google_code_exchange,
    google_oauth_configured,
)
from syncing.providers.google.sdk import (
    DAY,
    GoogleAdsSdk,
    access_tokens,
    app_budget,
    call_metadata,
    customer_id_normalize,
    google_ads_sdk,
    require_configured,
)
from syncing.providers.values import UnreadableValue
from syncing.scopes import GOOGLE_DEVELOPER_TOKEN, google_customer_scope

if TYPE_CHECKING:
    from syncing.meter import CallMeter

logger = logging.getLogger(__name__)

PLATFORM = "Google Ads"

CAMPAIGN_QUERY = """
SELECT customer.currency_code, campaign.id, campaign.name, segments.date,
  metrics.cost_micros, metrics.impressions, metrics.clicks, metrics.conversions, metrics.conversions_value
FROM campaign
WHERE segments.date BETWEEN '{since}' AND '{until}'
"""


def customer_budget(customer_id: str) -> Budget:
    """One customer's share, so a few realtime accounts cannot starve all the others."""
    return Budget(
        key=f"google:customer:{customer_id_normalize(customer_id)}",
        limit=settings.GOOGLE_OPS_PER_CUSTOMER_PER_DAY,
        window=DAY,
        label="this account's share of the daily Google Ads API quota",
    )


class GoogleProvider:
    slug = "google"
    label = "Google"
    connect_info = GOOGLE_CONNECT
    # Google Ads keeps campaign performance with segments.date for 11 years.
    history_days = 11 * 365
    # One GAQL search_stream per chunk: a month of daily campaign rows is one streamed query.
    backfill_chunk_days = 31

    @property
    def default_lookback_days(self) -> int:
        return settings.GOOGLE_LOOKBACK_DAYS

    def budgets(self, *, external_account_id: str) -> list[Budget]:
        return [app_budget(), customer_budget(external_account_id)]

    # Google sends no usage figures: its shared limits are met through the budgets and its
    # RESOURCE_EXHAUSTED answers (syncing.providers.google.errors names the scope).
    usage_window = None

    def throttle_scopes(self, *, external_account_id: str) -> tuple[str, ...]:
        return (GOOGLE_DEVELOPER_TOKEN, google_customer_scope(customer_id_normalize(external_account_id)))

    def fetch(self, *, connection, since: date, until: date, now: datetime, meter: CallMeter) -> FetchResult:
        # `now` (the sync's start) is not used: a retry delay counts from Google's answer (_failed).
        require_configured()
        credentials = connection.credentials or {}
        refresh_token = credentials.get("refresh_token")
        customer_id = customer_id_normalize(connection.external_account_id)
        login_customer_id = credentials.get("login_customer_id")
        sdk = google_ads_sdk()
        query = CAMPAIGN_QUERY.format(since=since.isoformat(), until=until.isoformat())

        def search() -> list[MetricRow]:
            if not refresh_token:
                raise AuthError(RECONNECT_MESSAGE)
            # What the token endpoint raises is turned into a provider error below with the rest,
            # at the moment it answered.
            metadata = call_metadata(bearer=access_tokens.bearer(refresh_token), login_customer_id=login_customer_id)
            meter.spend()
            timeout = meter.call_timeout(settings.GOOGLE_ADS_TIMEOUT)
            return self._search(sdk, customer_id, query, metadata, connection.currency, timeout)

        try:
            return FetchResult(rows=search())
        except Exception as exc:
            if not access_token_rejected(exc):
                raise self._failed(customer_id, exc) from None
        # Google refused the cached access token (expired or revoked early): drop it and
        # refresh once. Refused again, or no new token, and the user must reconnect.
        logger.info("Google Ads customer %s: access token refused; refreshing it once", customer_id)
        # Google saw a token, so search() had a refresh token (it raises AuthError without one).
        assert refresh_token
        access_tokens.forget(refresh_token)
        try:
            return FetchResult(rows=search())
        except Exception as exc:
            raise self._failed(customer_id, exc) from None

    # --- connecting accounts (connections/connect.py; the calls are in oauth.py) ---------------

    def oauth_configured(self) -> bool:
        return google_oauth_configured()

    def oauth_authorize_url(self, *, state: str, redirect_uri: str) -> str:
        return google_authorize_url(state=state, redirect_uri=redirect_uri)

    def oauth_exchange_code(self, *, code: str, redirect_uri: str, now: datetime) -> OAuthGrant:
        tokens = google_code_exchange(code=code, redirect_uri=redirect_uri)
        # Refresh tokens do not expire on a date; Google revokes them (then syncs ask to reconnect).
        return OAuthGrant(
            credentials={"refresh_token": tokens["refresh_token"]}, expires_at=None, access_token=tokens["access_token"]
        )

    def accounts_list(self, *, access_token: str, now: datetime) -> AccountListing:
        return google_accounts(access_token=access_token, now=now)

    # --- the fetch's parts -----------------------------------------------------------------------

    @classmethod
    def _search(
        cls, sdk: GoogleAdsSdk, customer_id: str, query: str, metadata: list, currency: str, timeout: float
    ) -> list[MetricRow]:
        stream = sdk.google_ads.search_stream(customer_id=customer_id, query=query, metadata=metadata, timeout=timeout)
        try:
            return [cls._row(result, currency) for batch in stream for result in batch.results]
        except PermanentError:
            # A row AdSync cannot read ends the fetch: Google need not send the rest.
            stream.cancel()
            raise

    @staticmethod
    def _failed(customer_id: str, exc: Exception) -> ProviderError:
        # Read now, as the answer has just come: Google's retry delay counts from it, not from
        # the sync's start (a throttle after a slow query would otherwise end early).
        error = google_error(exc, now=timezone.now(), customer_id=customer_id)
        logger.info("Google Ads customer %s: %s (%s)", customer_id, error.message, error.error_class)
        return error

    @staticmethod
    def _row(result: Any, fallback_currency: str) -> MetricRow:
        """One GoogleAdsRow as a MetricRow; a PermanentError naming the value AdSync cannot read.

        The protobuf types what Google sends (int64 micros and counts, double conversions), so
        what is left to check is what they allow and the table does not: negative money and
        counts, conversions that are NaN or too large, a day that is not a date, no campaign id
        (0, protobuf's default), a currency that is not a code."""
        campaign_id = str(result.campaign.id) if result.campaign.id > 0 else None
        day: date | None = None
        try:
            day = values.day(result.segments.date or None, field="segments.date")
            if campaign_id is None:
                raise UnreadableValue(field="campaign.id", value=result.campaign.id, missing=True)
            metrics = result.metrics
            return MetricRow(
                level="campaign",
                entity_id=campaign_id,
                date=day,
                entity_name=result.campaign.name,
                spend=values.micros(metrics.cost_micros, field="metrics.cost_micros"),
                impressions=values.count(metrics.impressions, field="metrics.impressions"),
                clicks=values.count(metrics.clicks, field="metrics.clicks"),
                conversions=values.money(metrics.conversions, field="metrics.conversions", signed=True),
                conversion_value=values.money(
                    metrics.conversions_value, field="metrics.conversions_value", signed=True
                ),
                currency=values.currency(
                    result.customer.currency_code or fallback_currency, field="customer.currency_code"
                ),
            )
        except UnreadableValue as exc:
            problem = exc
        # Raised outside the except block: nothing to chain.
        raise values.unreadable_value_error(platform=PLATFORM, problem=problem, campaign_id=campaign_id, day=day)
