"""The Google Ads API access shared by the installation: the SDK's clients, OAuth access tokens
and the app's quota.

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

Neither the channel nor the token cache's HTTP session may cross a fork (a Celery prefork
child builds its own): both are keyed by the process id. Nothing of the SDK is imported until the
first Google call, so web processes that never call Google do not pay for it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import threading
from collections import OrderedDict
from datetime import timedelta
from importlib import import_module
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from syncing.budget import Budget
from syncing.providers.base import PermanentError

logger = logging.getLogger(__name__)

ADWORDS_SCOPE = "https://www.googleapis.com/auth/adwords"
DAY = timedelta(hours=24)


def customer_id_normalize(value: str) -> str:
    """'123-456-7890' -> '1234567890', the form the API takes."""
    return "".join(ch for ch in str(value) if ch.isdigit())


def app_budget() -> Budget:
    """Google's quota belongs to the app's OAuth client: every connection shares it."""
    return Budget(
        key="google:app", limit=settings.GOOGLE_OPS_PER_DAY, window=DAY, label="the app's daily Google Ads API quota"
    )


def require_configured() -> None:
    if not (settings.GOOGLE_CLIENT_ID and settings.GOOGLE_CLIENT_SECRET):
        raise PermanentError(
            "Google Ads is not configured in this installation (GOOGLE_CLIENT_ID, GOOGLE_CLIENT_SECRET)"
        )


# --- the SDK, once per process -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GoogleAdsSdk:
    """The google-ads service clients on one gRPC channel, shared by every connection."""

    key: tuple
    channel: Any
    google_ads: Any  # GoogleAdsServiceClient
    customers: Any  # CustomerServiceClient


_sdk_lock = threading.Lock()
_sdk: GoogleAdsSdk | None = None


def _sdk_key() -> tuple:
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
    return GoogleAdsSdk(key=key, channel=channel, google_ads=client(google_ads_class), customers=client(customer_class))


def _sdk_version() -> str:
    from importlib.metadata import version

    return version("google-ads")


# --- access tokens, per connection ---------------------------------------------------------------


class _AccessTokens:
    """OAuth access tokens by refresh token, refreshed at GOOGLE_TOKEN_URL when they expire.

    A realtime connection syncs every 30 s and a token lasts an hour, so caching them here saves
    119 of every 120 refreshes. Bounded, least recently used out. Per process: a forked child
    starts empty, with an HTTP session (and connection pool) of its own.
    """

    def __init__(self, size: int = 10_000):
        self.size = size
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.credentials: OrderedDict[str, Any] = OrderedDict()
        self.session: Any = None

    def _key(self, refresh_token: str) -> str:
        token_uri, client_id = settings.GOOGLE_TOKEN_URL, settings.GOOGLE_CLIENT_ID
        return hashlib.sha256(f"{token_uri}\0{client_id}\0{refresh_token}".encode()).hexdigest()

    def _this_process(self) -> None:
        """Forget what a parent process cached (call with the lock held)."""
        if self.pid != os.getpid():
            self.pid, self.credentials, self.session = os.getpid(), OrderedDict(), None

    def bearer(self, refresh_token: str) -> str:
        from google.auth.transport.requests import Request
        from google.oauth2.credentials import Credentials

        key = self._key(refresh_token)
        with self.lock:
            self._this_process()
            credentials = self.credentials.pop(key, None) or Credentials(
                token=None,
                refresh_token=refresh_token,
                token_uri=settings.GOOGLE_TOKEN_URL,
                client_id=settings.GOOGLE_CLIENT_ID,
                client_secret=settings.GOOGLE_CLIENT_SECRET,
                scopes=[ADWORDS_SCOPE],
            )
            self.credentials[key] = credentials
            while len(self.credentials) > self.size:
                self.credentials.popitem(last=False)
            if self.session is None:
                import requests

                self.session = requests.Session()
            session = self.session
        if not credentials.valid:
            # google-auth would wait up to 120 s for the token endpoint; a sync cannot.
            credentials.refresh(functools.partial(Request(session), timeout=settings.GOOGLE_HTTP_TIMEOUT))
        # Valid means it has a token; refresh() sets one or raises.
        assert credentials.token is not None
        return credentials.token

    def forget(self, refresh_token: str) -> None:
        """Drop the cached access token, so the next bearer() refreshes."""
        with self.lock:
            self._this_process()
            self.credentials.pop(self._key(refresh_token), None)

    def clear(self) -> None:
        with self.lock:
            self.credentials.clear()


access_tokens = _AccessTokens()


def call_metadata(*, bearer: str, login_customer_id: str | None) -> list[tuple[str, str]]:
    metadata = [("authorization", f"Bearer {bearer}")]
    if login_customer_id:
        metadata.append(("login-customer-id", customer_id_normalize(login_customer_id)))
    return metadata
