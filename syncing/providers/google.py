"""Google Ads provider: the google-ads SDK, GAQL search_stream over campaign, by day.

One GAQL query is one operation of Google's quota, which belongs to the app's OAuth client and
is shared by every customer of the installation; it is budgeted for the installation and per
customer (syncing/budget.py), and Google's own quota errors defer the connection.

Built once per process, shared by every connection: the google-ads service clients and the
gRPC channel under them (importing the SDK's types costs ~0.7 s and ~100 MB; a new channel would
also mean a new TLS handshake per sync). Per connection: an OAuth access token, refreshed from
the stored refresh token at GOOGLE_TOKEN_URL and cached until it expires, sent with each call as
`authorization: Bearer` metadata, with the connection's `login-customer-id` for manager access.
That is why the channel is built here rather than by GoogleAdsClient.get_service: that bakes one
set of credentials into the channel (and with load_from_dict, refreshes against a hard-coded
accounts.google.com URL). The rest is the SDK's own parts: its service clients and transports,
its metadata interceptor (developer token) and its exception interceptor (GoogleAdsException).
Its logging interceptor is left out on purpose: it would log our authorization metadata.

Nothing of the SDK is imported until the first Google call, so web processes that never call
Google do not pay for it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import threading
from collections import OrderedDict
from datetime import date, datetime, timedelta
from decimal import Decimal
from importlib import import_module
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from syncing.budget import Budget, CallMeter
from syncing.providers.base import (
    AuthError,
    FetchResult,
    MetricRow,
    PermanentError,
    ProviderError,
    ThrottledError,
    TransientProviderError,
)

logger = logging.getLogger(__name__)

ADWORDS_SCOPE = "https://www.googleapis.com/auth/adwords"
RECONNECT_MESSAGE = "Google access expired — reconnect the account"
DAY = timedelta(hours=24)
MICROS = Decimal(1_000_000)
# DailyMetric keeps 6 decimal places (syncing/models.py MONEY).
STORED_PLACES = Decimal("0.000001")

CAMPAIGN_QUERY = """
SELECT customer.currency_code, customer.time_zone, campaign.id, campaign.name, segments.date,
  metrics.cost_micros, metrics.impressions, metrics.clicks, metrics.conversions, metrics.conversions_value
FROM campaign
WHERE segments.date BETWEEN '{since}' AND '{until}'
"""

# The account itself (level 0) and, for a manager, its direct client accounts (level 1).
CUSTOMER_CLIENT_QUERY = """
SELECT customer_client.id, customer_client.descriptive_name, customer_client.currency_code,
  customer_client.time_zone, customer_client.manager, customer_client.level, customer_client.status
FROM customer_client
WHERE customer_client.level <= 1
"""

# Authorization and authentication errors that reconnecting cannot fix: the installation's
# developer token or Cloud project, or the account's own state. Shown with Google's message.
NOT_FIXED_BY_RECONNECTING = {
    "DEVELOPER_TOKEN_NOT_ON_ALLOWLIST",
    "DEVELOPER_TOKEN_PROHIBITED",
    "DEVELOPER_TOKEN_NOT_APPROVED",
    "DEVELOPER_TOKEN_INVALID",
    "PROJECT_DISABLED",
    "CLOUD_PROJECT_NOT_APPROVED_FOR_PRODUCTION",
    "CLOUD_PROJECT_NOT_UNDER_ORGANIZATION",
    "ORGANIZATION_NOT_RECOGNIZED",
    "ORGANIZATION_NOT_APPROVED",
    "ORGANIZATION_NOT_ASSOCIATED_WITH_DEVELOPER_TOKEN",
    "MISSING_TOS",
    "INCOMPLETE_SIGNUP",
    "CUSTOMER_NOT_ENABLED",
}
# Quota errors that say "not now"; ACCESS_PROHIBITED (no access at all) is permanent.
THROTTLING_QUOTA_ERRORS = {
    "RESOURCE_EXHAUSTED",
    "RESOURCE_TEMPORARILY_EXHAUSTED",
    "EXCESSIVE_SHORT_TERM_QUERY_RESOURCE_CONSUMPTION",
    "EXCESSIVE_LONG_TERM_QUERY_RESOURCE_CONSUMPTION",
}
# Client accounts not offered when connecting.
CLOSED_STATUSES = {"CANCELED", "SUSPENDED", "CLOSED"}


def customer_id_normalize(value: str) -> str:
    """'123-456-7890' -> '1234567890', the form the API takes."""
    return "".join(ch for ch in str(value) if ch.isdigit())


# --- the SDK, once per process -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GoogleAdsSdk:
    """The google-ads service clients on one gRPC channel, shared by every connection."""

    key: tuple
    channel: Any
    google_ads: Any  # GoogleAdsServiceClient
    customers: Any  # CustomerServiceClient
    version: str


_sdk_lock = threading.Lock()
_sdk: GoogleAdsSdk | None = None


def _sdk_key() -> tuple:
    # The pid: a gRPC channel must not cross a fork (a Celery prefork child builds its own).
    return (
        os.getpid(),
        settings.GOOGLE_ADS_ENDPOINT,
        settings.GOOGLE_ADS_API_VERSION,
        settings.GOOGLE_DEVELOPER_TOKEN,
        settings.GOOGLE_ADS_CA_BUNDLE,
    )


def google_ads_sdk() -> GoogleAdsSdk:
    """The process's SDK clients, built on first use (and again only if the settings change)."""
    global _sdk
    key = _sdk_key()
    with _sdk_lock:
        if _sdk is None or _sdk.key != key:
            previous, _sdk = _sdk, _sdk_build(key)
            if previous is not None and previous.key[0] == key[0]:
                previous.channel.close()
        return _sdk


def _sdk_build(key: tuple) -> GoogleAdsSdk:
    import grpc
    from google.ads.googleads.interceptors import ExceptionInterceptor, MetadataInterceptor
    from google.api_core.gapic_v1.client_info import ClientInfo

    _, endpoint, version, developer_token, ca_bundle = key
    try:
        services = f"google.ads.googleads.{version}.services.services"
        google_ads_class = import_module(f"{services}.google_ads_service").GoogleAdsServiceClient
        customer_class = import_module(f"{services}.customer_service").CustomerServiceClient
    except ModuleNotFoundError:
        raise ImproperlyConfigured(f"GOOGLE_ADS_API_VERSION={version!r} is not in the installed google-ads") from None

    root_certificates = None
    if ca_bundle:
        with open(ca_bundle, "rb") as pem:
            root_certificates = pem.read()
    # The options GoogleAdsClient sets: large metadata (failure details) and messages.
    options = [("grpc.max_metadata_size", 16 * 1024 * 1024), ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    # TLS only, with no call credentials of its own: each call carries its connection's token.
    channel = grpc.secure_channel(endpoint, grpc.ssl_channel_credentials(root_certificates), options=options)
    intercepted = grpc.intercept_channel(
        channel,
        MetadataInterceptor(developer_token or None, None, None),
        ExceptionInterceptor(version, use_proto_plus=True),
    )
    client_info = ClientInfo(client_library_version=_sdk_version())

    def client(service_class: Any) -> Any:
        transport_class = service_class.get_transport_class("grpc")
        return service_class(transport=transport_class(channel=intercepted, client_info=client_info))

    logger.info("Built the Google Ads API clients for %s (%s)", endpoint, version)
    return GoogleAdsSdk(
        key=key,
        channel=channel,
        google_ads=client(google_ads_class),
        customers=client(customer_class),
        version=version,
    )


def _sdk_version() -> str:
    from importlib.metadata import version

    return version("google-ads")


# --- access tokens, per connection ---------------------------------------------------------------


class _AccessTokens:
    """OAuth access tokens by refresh token, refreshed at GOOGLE_TOKEN_URL when they expire.

    A realtime connection syncs every 30 s and a token lasts an hour, so caching them here saves
    119 of every 120 refreshes. Bounded, least recently used out.
    """

    def __init__(self, size: int = 10_000):
        self.size = size
        self.lock = threading.Lock()
        self.credentials: OrderedDict[str, Any] = OrderedDict()
        self.session: Any = None

    def bearer(self, refresh_token: str) -> str:
        from google.auth.transport.requests import Request
        from google.oauth2.credentials import Credentials

        token_uri, client_id = settings.GOOGLE_TOKEN_URL, settings.GOOGLE_CLIENT_ID
        key = hashlib.sha256(f"{token_uri}\0{client_id}\0{refresh_token}".encode()).hexdigest()
        with self.lock:
            credentials = self.credentials.pop(key, None) or Credentials(
                token=None,
                refresh_token=refresh_token,
                token_uri=token_uri,
                client_id=client_id,
                client_secret=settings.GOOGLE_CLIENT_SECRET,
                scopes=[ADWORDS_SCOPE],
            )
            self.credentials[key] = credentials
            while len(self.credentials) > self.size:
                self.credentials.popitem(last=False)
            if self.session is None:
                import requests

                self.session = requests.Session()
        if not credentials.valid:
            # google-auth would wait up to 120 s for the token endpoint; a sync cannot.
            credentials.refresh(functools.partial(Request(self.session), timeout=settings.GOOGLE_HTTP_TIMEOUT))
        return credentials.token

    def clear(self) -> None:
        with self.lock:
            self.credentials.clear()


access_tokens = _AccessTokens()


def _call_metadata(*, bearer: str, login_customer_id: str | None) -> list[tuple[str, str]]:
    metadata = [("authorization", f"Bearer {bearer}")]
    if login_customer_id:
        metadata.append(("login-customer-id", customer_id_normalize(login_customer_id)))
    return metadata


def _configured() -> None:
    if not (settings.GOOGLE_CLIENT_ID and settings.GOOGLE_CLIENT_SECRET):
        raise PermanentError(
            "Google Ads is not configured in this installation (GOOGLE_CLIENT_ID, GOOGLE_CLIENT_SECRET)"
        )


def _bearer_for(credentials: dict) -> str:
    refresh_token = credentials.get("refresh_token")
    if not refresh_token:
        raise AuthError(RECONNECT_MESSAGE)
    try:
        return access_tokens.bearer(refresh_token)
    except Exception as exc:
        raise google_error(exc) from None


# --- errors ------------------------------------------------------------------------------------


def google_error(exc: Exception) -> ProviderError:
    """The provider error for anything the SDK or google-auth raised. Never includes a token."""
    from google.ads.googleads.errors import GoogleAdsException
    from google.api_core import exceptions as core
    from google.auth import exceptions as auth

    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, GoogleAdsException):
        return _from_failure(exc.failure, exc.request_id, status=exc.error.code().name)
    if isinstance(exc, core.ResourceExhausted):
        failure, request_id = _failure_in_trailers(exc)
        delay = _retry_delay(failure) or _retry_info_delay(exc)
        return _throttled(_messages(failure) or exc.message, request_id, delay)
    if isinstance(exc, core.ServiceUnavailable | core.InternalServerError | core.DeadlineExceeded | core.Aborted):
        return TransientProviderError(f"Google Ads is temporarily unavailable ({exc.message}); retrying")
    if isinstance(exc, core.Unauthenticated | core.PermissionDenied):
        return AuthError(RECONNECT_MESSAGE)
    if isinstance(exc, core.GoogleAPICallError):
        failure, request_id = _failure_in_trailers(exc)
        return PermanentError(_with_request_id(_messages(failure) or exc.message or type(exc).__name__, request_id))
    if isinstance(exc, auth.RefreshError):
        if exc.retryable:
            return TransientProviderError("Google's sign-in service is temporarily unavailable; retrying")
        # invalid_grant: the refresh token was revoked, expired or belongs to another client.
        return AuthError(RECONNECT_MESSAGE)
    if isinstance(exc, auth.TransportError):
        return TransientProviderError("Could not reach Google's sign-in service; retrying")
    raise exc


def _from_failure(failure: Any, request_id: str | None, *, status: str) -> ProviderError:
    codes = [_error_code(error) for error in failure.errors]
    for kind, name in codes:
        if kind in ("authentication_error", "authorization_error") and name not in NOT_FIXED_BY_RECONNECTING:
            return AuthError(RECONNECT_MESSAGE)
        if kind == "header_error" and name == "INVALID_LOGIN_CUSTOMER_ID":
            return AuthError(RECONNECT_MESSAGE)
    if any(kind == "quota_error" and name in THROTTLING_QUOTA_ERRORS for kind, name in codes):
        return _throttled(_messages(failure), request_id, _retry_delay(failure))
    if status in ("UNAVAILABLE", "DEADLINE_EXCEEDED") or any(kind == "internal_error" for kind, _ in codes):
        return TransientProviderError(f"Google Ads is temporarily unavailable ({_messages(failure)}); retrying")
    return PermanentError(_with_request_id(_messages(failure) or status, request_id))


def _error_code(error: Any) -> tuple[str, str]:
    """('authentication_error', 'OAUTH_TOKEN_EXPIRED') for one GoogleAdsError."""
    code = error.error_code
    kind = type(code).pb(code).WhichOneof("error_code") or ""
    return kind, getattr(getattr(code, kind, None), "name", "") if kind else ""


def _messages(failure: Any) -> str:
    if failure is None:
        return ""
    return "; ".join(dict.fromkeys(error.message for error in failure.errors if error.message))


def _with_request_id(message: str, request_id: str | None) -> str:
    return f"{message} (request id {request_id})" if request_id else message


def _throttled(message: str, request_id: str | None, delay: timedelta | None) -> ThrottledError:
    text = _with_request_id(f"Google Ads quota reached: {message or 'resource exhausted'}", request_id)
    return ThrottledError(text, until=timezone.now() + delay if delay else None)


def _failure_in_trailers(exc: Exception) -> tuple[Any, str | None]:
    """The GoogleAdsFailure and request id that RESOURCE_EXHAUSTED and INTERNAL still carry.

    The SDK turns only the other statuses into GoogleAdsException; these reach us as api_core
    errors whose `response` is the gRPC call, with the failure in its trailing metadata.
    """
    response = getattr(exc, "response", None)
    trailers = getattr(response, "trailing_metadata", lambda: ())() or ()
    version = settings.GOOGLE_ADS_API_VERSION
    failure = request_id = None
    for key, value in trailers:
        if key == f"google.ads.googleads.{version}.errors.googleadsfailure-bin":
            failure_type = import_module(f"google.ads.googleads.{version}.errors.types.errors").GoogleAdsFailure
            try:
                failure = failure_type.deserialize(value)
            except Exception:  # undecodable details: the status message still tells the story
                failure = None
        elif key == "request-id":
            request_id = value
    return failure, request_id


def _retry_delay(failure: Any) -> timedelta | None:
    if failure is None:
        return None
    for error in failure.errors:
        details = error.details.quota_error_details
        if "retry_delay" in details:
            delay = details.retry_delay
            seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay.seconds + delay.nanos / 1e9
            if seconds > 0:
                return timedelta(seconds=seconds)
    return None


def _retry_info_delay(exc: Exception) -> timedelta | None:
    """google.rpc.RetryInfo in the status details, which api_core unpacks into exc.details."""
    for detail in getattr(exc, "details", None) or ():
        delay = getattr(detail, "retry_delay", None)
        if delay is not None and (delay.seconds or delay.nanos):
            return timedelta(seconds=delay.seconds + delay.nanos / 1e9)
    return None


# --- the provider ------------------------------------------------------------------------------


def app_budget() -> Budget:
    """Google's quota belongs to the app's OAuth client: every connection shares it."""
    return Budget(
        key="google:app", limit=settings.GOOGLE_OPS_PER_DAY, window=DAY, label="the app's daily Google Ads API quota"
    )


def customer_budget(customer_id: str) -> Budget:
    """One customer's share, so a few realtime accounts cannot starve all the others."""
    return Budget(
        key=f"google:customer:{customer_id_normalize(customer_id)}",
        limit=settings.GOOGLE_OPS_PER_CUSTOMER_PER_DAY,
        window=DAY,
        label="this account's share of the daily Google Ads API quota",
    )


def _decimal(value: float) -> Decimal:
    """A double from the API as the decimal it prints as, at the 6 places we store.

    str() of a double is the shortest text that reads back as the same double, so 0.1 stays 0.1
    (Decimal(0.1) would be 0.1000000000000000055511151231257827...). Quantizing to the stored
    places keeps change detection exact: an unrounded 1/3 would differ from its stored rounding
    and count as a change on every sync.
    """
    return Decimal(str(value)).quantize(STORED_PLACES)


class GoogleProvider:
    slug = "google"
    label = "Google"

    @property
    def default_lookback_days(self) -> int:
        return settings.GOOGLE_LOOKBACK_DAYS

    def budgets(self, *, external_account_id: str) -> list[Budget]:
        return [app_budget(), customer_budget(external_account_id)]

    def fetch(self, *, connection, since: date, until: date, now: datetime, meter: CallMeter) -> FetchResult:
        _configured()
        credentials = connection.credentials or {}
        customer_id = customer_id_normalize(connection.external_account_id)
        metadata = _call_metadata(
            bearer=_bearer_for(credentials), login_customer_id=credentials.get("login_customer_id")
        )
        sdk = google_ads_sdk()
        query = CAMPAIGN_QUERY.format(since=since.isoformat(), until=until.isoformat())
        meter.spend()
        rows: list[MetricRow] = []
        try:
            stream = sdk.google_ads.search_stream(
                customer_id=customer_id, query=query, metadata=metadata, timeout=settings.GOOGLE_ADS_TIMEOUT
            )
            for batch in stream:
                rows.extend(self._row(result, connection.currency) for result in batch.results)
        except Exception as exc:
            error = google_error(exc)
            logger.info("Google Ads customer %s: %s (%s)", customer_id, error.message, error.error_class)
            raise error from None
        return FetchResult(rows=rows)

    @staticmethod
    def _row(result: Any, fallback_currency: str) -> MetricRow:
        metrics = result.metrics
        return MetricRow(
            level="campaign",
            entity_id=str(result.campaign.id),
            date=date.fromisoformat(result.segments.date),
            entity_name=result.campaign.name,
            # int64 micros / 10^6 is exact: 19 digits fit Decimal's 28.
            spend=Decimal(metrics.cost_micros) / MICROS,
            impressions=int(metrics.impressions),
            clicks=int(metrics.clicks),
            conversions=_decimal(metrics.conversions),
            conversion_value=_decimal(metrics.conversions_value),
            currency=result.customer.currency_code or fallback_currency,
        )


# --- accessible customers (the connect flow) ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GoogleCustomer:
    customer_id: str
    name: str
    currency: str
    time_zone: str
    # The manager to log in through, when the user reaches this account only through one.
    login_customer_id: str | None


def google_customers_accessible(*, access_token: str, clock=timezone.now) -> list[GoogleCustomer]:
    """The client accounts this user can sync: each accessible account and, for a manager, its
    direct client accounts. Manager accounts themselves have no campaigns and are left out.

    One ListAccessibleCustomers call and one GAQL query per accessible account, each counted
    against the installation's daily operations like any sync.
    """
    _configured()
    sdk = google_ads_sdk()
    meter = CallMeter([app_budget()], clock=clock)
    bearer = _call_metadata(bearer=access_token, login_customer_id=None)
    try:
        meter.spend()
        response = sdk.customers.list_accessible_customers(metadata=bearer, timeout=settings.GOOGLE_ADS_TIMEOUT)
    except Exception as exc:
        raise google_error(exc) from None
    accessible = [customer_id_normalize(name.rsplit("/", 1)[-1]) for name in response.resource_names]
    found: dict[str, GoogleCustomer] = {}
    for account in accessible:
        try:
            meter.spend()
            stream = sdk.google_ads.search_stream(
                customer_id=account,
                query=CUSTOMER_CLIENT_QUERY,
                metadata=_call_metadata(bearer=access_token, login_customer_id=account),
                timeout=settings.GOOGLE_ADS_TIMEOUT,
            )
            clients = [row.customer_client for batch in stream for row in batch.results]
        except Exception as exc:
            error = google_error(exc)
            if isinstance(error, AuthError | PermanentError):
                # A cancelled or inaccessible account: offer the others.
                logger.info("Skipping Google Ads customer %s: %s", account, error.message)
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
                time_zone=client.time_zone or "UTC",
                login_customer_id=None if direct else account,
            )
    return sorted(found.values(), key=lambda c: (c.name.lower(), c.customer_id))


def customer_id_format(customer_id: str) -> str:
    """'1234567890' -> '123-456-7890', as Google Ads shows it."""
    digits = customer_id_normalize(customer_id)
    return f"{digits[:3]}-{digits[3:6]}-{digits[6:]}" if len(digits) == 10 else digits
