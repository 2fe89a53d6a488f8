"""The facebook-business SDK's session and API object for one sync, metered.

Each fetch builds its own session and API object, pointed at settings.META_GRAPH_URL, and
never calls FacebookAdsApi.init(): that installs a sys.excepthook crash reporter which posts to
the real graph.facebook.com. Every HTTP call the SDK makes (the first page and each further
page) goes through MeteredApi.call, which takes one call from the ad account's budget first.

An answer whose body is not a JSON object (an HTML page from a proxy in front of Meta) is
refused as soon as it arrives, before the SDK takes it for a success: 429 is a throttle, anything
else a transient error.
"""

from __future__ import annotations

import json
from datetime import timedelta

import requests
from django.conf import settings
from django.utils import timezone
from facebook_business.api import FacebookAdsApi
from facebook_business.session import FacebookSession

from syncing.providers.base import ThrottledError, TransientProviderError
from syncing.providers.meta.usage import scope_usages

DEFAULT_GRAPH_URL = "https://graph.facebook.com"
# Connect and read timeouts for one Graph API call; a sync task has two minutes in all.
TIMEOUT = (10, 60)


def account_number(external_account_id: str) -> str:
    """'act_123' or '123' -> '123' (connections store the bare number; the API path adds act_)."""
    return external_account_id.strip().removeprefix("act_")


class MeteredApi(FacebookAdsApi):
    """Takes one call from the budget before every HTTP request and keeps each response's headers."""

    def __init__(self, session: FacebookSession, *, api_version: str, meter, account: str):
        super().__init__(session, api_version=api_version)
        self._meter = meter
        self._account = account
        # Every answer passes _refuse_unreadable before the SDK reads it.
        session.requests.hooks["response"].append(self._refuse_unreadable)
        # The last answer the SDK took for a success: (HTTP status, whether its body is a JSON
        # object), or None before the first. Tells a garbled answer from a request the SDK
        # could not build when it raises FacebookBadObjectError.
        self.last_answer: tuple[int, bool] | None = None

    def call(self, *args, **kwargs):
        self._meter.spend()
        # The read timeout ends at the sync's deadline (the SDK passes session.timeout on).
        self._session.timeout = (TIMEOUT[0], self._meter.call_timeout(TIMEOUT[1]))
        self.last_answer = None
        response = super().call(*args, **kwargs)
        # Usage is read after every answer, between a restatement's chunks and pages too: a busy
        # scope is paced from the next call on, a throttled one gets no further call.
        self._meter.observe(scope_usages(response.headers(), account=self._account), now=timezone.now())
        status = response.status() or 200
        # FacebookResponse.json() returns the raw text when the body is not JSON.
        self.last_answer = (status, isinstance(response.json(), dict))
        if status >= 500:
            # A JSON object without an "error" that the SDK took for a success: not one.
            raise TransientProviderError(f"Meta is temporarily unavailable (HTTP {status}).")
        return response

    def _refuse_unreadable(self, response: requests.Response, *args, **kwargs) -> None:
        """Raise for an answer whose body is not a JSON object (a proxy's HTML page, an empty body).

        The SDK takes a non-empty body that is not JSON for a success (the cursor then fails on
        it with a TypeError), or trips over it itself. The message never holds the body or URL.
        """
        try:
            body = json.loads(response.text)
        except ValueError:
            body = None
        if isinstance(body, dict):
            return
        status = response.status_code
        if status == 429:
            until = timezone.now() + timedelta(minutes=settings.META_PAUSE_MINUTES)
            raise ThrottledError(f"Meta is rate limiting this ad account (HTTP {status}).", until=until)
        if status >= 500:
            raise TransientProviderError(f"Meta is temporarily unavailable (HTTP {status}).")
        raise TransientProviderError(f"Meta sent a response that could not be read (HTTP {status}).")


def graph_session(access_token: str) -> FacebookSession:
    session = FacebookSession(access_token=access_token, app_secret=settings.META_APP_SECRET or None, timeout=TIMEOUT)
    session.GRAPH = settings.META_GRAPH_URL
    if settings.META_GRAPH_URL != DEFAULT_GRAPH_URL:
        # The SDK pins Meta's own CA bundle; a proxy in front of Meta has a certificate of its own.
        session.requests.verify = True
    return session
