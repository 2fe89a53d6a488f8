"""Platform limits shared by every account of one app, on top of the loopback fakes.

A platform counts calls against more than the ad account: Meta against the app (every ad account
the app reads shares it; code 4 "Application request limit reached" once it is used up, with the
app's usage over a rolling window in `X-App-Usage` on every answer), Google against the developer
token (RESOURCE_EXHAUSTED with a quota error whose details say rate_scope DEVELOPER and give a
retry_delay). The fakes in graph.py and google_ads.py model one account at a time; these wrap
them with one AppLimit shared by all accounts:

- every insights call (Meta `/act_<id>/insights`, Google `SearchStream ... FROM campaign`) is
  counted at its arrival, across all accounts, in a rolling window of `window_seconds`;
- the call that finds `limit` calls already answered in the window starts a throttle of
  `throttle_seconds`: it and every call during the throttle are refused (and not counted: a
  refused call does no work); after it, calls are counted again against whatever the window
  still holds;
- every call is recorded (LimitedCall: arrival, when its answer left, account, throttled or
  not, the usage its answer reported), and every throttle (Throttle: start, end, which call
  started it, whether an outside client filled the window), so a benchmark can count the calls
  made after a throttle started, per scope;
- `fill()` plays another client of the same app (another installation, a backfill job) that
  uses what is left of the window at once and keeps the app at its limit: the next call of ours
  starts a throttle, however long it comes after (an engine pacing itself may be silent a while);
- each answer waits a latency drawn from `latency` (seconds, (low, high), uniform), as a real
  platform takes 0.3-1 s to answer; the throttle decision is taken at arrival, before the wait.

Times are wall-clock (time.time()), so that they compare with the database's timestamps.
Meta's usage percentage is reported as Meta does, whole numbers; while throttled it reads at
least 100. Google reports no usage (the fake still tracks it, for the benchmark).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
from google.ads.googleads.v26.errors.types import errors
from google.protobuf import duration_pb2

from tests.fakes.google_ads import (
    FAILURE_KEY,
    Failure,
    FakeGoogleAds,
    FakeOAuth,
    self_signed_certificate,
)
from tests.fakes.graph import VERSION as GRAPH_VERSION
from tests.fakes.graph import Answer, FakeGraph, graph_error

APP_LIMIT_MESSAGE = "(#4) Application request limit reached"
_META_INSIGHTS = re.compile(rf"^/{re.escape(GRAPH_VERSION)}/act_(\d+)/insights$")
_GOOGLE_CAMPAIGNS = re.compile(r"\bFROM\s+campaign\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class LimitedCall:
    at: float  # arrival (time.time())
    answered_at: float  # when its answer left: arrival + the latency
    account: str
    throttled: bool
    usage_pct: float  # the app's usage when it arrived (at least 100 while throttled)


@dataclasses.dataclass(frozen=True)
class Throttle:
    started: float  # the arrival of the call that found the window full
    ends: float
    trigger: int  # index in AppLimit.calls of that call
    forced: bool  # an outside client (fill()) had used the rest of the window


@dataclasses.dataclass(frozen=True)
class Decision:
    throttled: bool
    usage_pct: float
    latency: float
    retry_after: float  # seconds until the throttle ends (0 when not throttled)


class AppLimit:
    """`limit` calls per rolling `window_seconds` for all accounts together; see the module."""

    def __init__(
        self,
        *,
        limit: int,
        window_seconds: float,
        throttle_seconds: float,
        latency: tuple[float, float] = (0.0, 0.0),
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ):
        if limit < 1 or window_seconds <= 0 or throttle_seconds <= 0:
            raise ValueError("limit, window_seconds and throttle_seconds must be positive")
        self.limit = limit
        self.window_seconds = window_seconds
        self.throttle_seconds = throttle_seconds
        self.latency = latency
        self.clock = clock
        self.calls: list[LimitedCall] = []
        self.throttles: list[Throttle] = []
        self.max_usage_pct = 0.0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        # Arrival times of the calls counted in the window (ours answered, and an outside client's).
        self._counted: deque[float] = deque()
        self._outside_pending = False

    def _prune(self, now: float) -> None:
        while self._counted and self._counted[0] <= now - self.window_seconds:
            self._counted.popleft()

    def _throttle_at(self, now: float) -> Throttle | None:
        if self.throttles and self.throttles[-1].started <= now < self.throttles[-1].ends:
            return self.throttles[-1]
        return None

    def usage_pct(self) -> float:
        with self._lock:
            now = self.clock()
            self._prune(now)
            percent = 100.0 * len(self._counted) / self.limit
            return max(percent, 100.0) if self._throttle_at(now) else percent

    def admit(self, account: str) -> Decision:
        """Count one call of `account` arriving now: answered, or refused as throttled."""
        low, high = self.latency
        with self._lock:
            now = self.clock()
            latency = self._random.uniform(low, high) if high > 0 else 0.0
            self._prune(now)
            throttle = self._throttle_at(now)
            if throttle is None and (len(self._counted) >= self.limit or self._outside_pending):
                throttle = Throttle(now, now + self.throttle_seconds, len(self.calls), self._outside_pending)
                self.throttles.append(throttle)
                self._outside_pending = False
            if throttle is None:
                self._counted.append(now)
            percent = 100.0 * len(self._counted) / self.limit
            if throttle is not None:
                percent = max(percent, 100.0)
            self.max_usage_pct = max(self.max_usage_pct, percent)
            self.calls.append(LimitedCall(now, now + latency, account, throttle is not None, percent))
        retry_after = throttle.ends - now if throttle is not None else 0.0
        return Decision(throttle is not None, percent, latency, retry_after)

    def fill(self) -> int:
        """Another client of the same app uses the rest of the window now, and keeps the app at its
        limit until our next call, which starts a throttle; returns the calls it made now."""
        with self._lock:
            now = self.clock()
            self._prune(now)
            added = max(0, self.limit - len(self._counted))
            self._counted.extend([now] * added)
            self._outside_pending = True
            self.max_usage_pct = max(self.max_usage_pct, 100.0 * len(self._counted) / self.limit)
        return added

    def snapshot(self) -> tuple[list[LimitedCall], list[Throttle]]:
        """Copies of the calls and throttles so far (the servers keep appending)."""
        with self._lock:
            return list(self.calls), list(self.throttles)


# --- Meta: the app limit ---------------------------------------------------------------------


def app_usage_header(percent: float) -> dict[str, str]:
    """X-App-Usage as Meta sends it: whole percentages of the app's limits over the window. Only
    the call count is simulated; CPU and time are reported at half of it, so calls are what binds."""
    calls = int(percent)
    return {"X-App-Usage": json.dumps({"call_count": calls, "total_cputime": calls // 2, "total_time": calls // 2})}


def app_limit_reached() -> Answer:
    """Meta's app-wide throttle: code 4, transient."""
    return graph_error(4, APP_LIMIT_MESSAGE, is_transient=True, status=400)


class AppLimitedGraph(FakeGraph):
    """FakeGraph whose insights calls, for every account together, count against one AppLimit."""

    def __init__(self, limit: AppLimit):
        super().__init__()
        self.limit = limit

    def _answer(self, request):
        match = _META_INSIGHTS.match(request.path)
        if match is None or self._check_token(request.params) is not None:
            return super()._answer(request)
        decision = self.limit.admit(match.group(1))
        answer = app_limit_reached() if decision.throttled else super()._answer(request)
        answer = dataclasses.replace(answer, headers={**answer.headers, **app_usage_header(decision.usage_pct)})
        time.sleep(decision.latency)
        return answer


# --- Google: the developer token's limit ------------------------------------------------------


def developer_token_exhausted(retry_seconds: float, *, request_id: str = "req-developer-quota") -> Failure:
    """RESOURCE_EXHAUSTED for the developer token: a quota_error RESOURCE_EXHAUSTED whose details
    say rate_scope DEVELOPER, with the time left as retry_delay (whole seconds, rounded up)."""
    details = errors.ErrorDetails(
        quota_error_details=errors.QuotaErrorDetails(
            rate_scope=errors.QuotaErrorDetails.QuotaRateScope.DEVELOPER,
            rate_name="Number of operations for basic access",
            retry_delay=duration_pb2.Duration(seconds=max(1, math.ceil(retry_seconds))),
        )
    )
    message = "Too many requests for this developer token. Retry in the time given in the details."
    enum = errors.ErrorCode.meta.fields["quota_error"].enum
    error = errors.GoogleAdsError(
        error_code=errors.ErrorCode(quota_error=enum["RESOURCE_EXHAUSTED"]), message=message, details=details
    )
    failure = errors.GoogleAdsFailure(errors=[error], request_id=request_id)
    trailers = ((FAILURE_KEY, errors.GoogleAdsFailure.serialize(failure)), ("request-id", request_id))
    return Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "Resource has been exhausted (e.g. check quota).", trailers)


class DeveloperLimitedGoogleAds(FakeGoogleAds):
    """FakeGoogleAds whose campaign searches, for every customer together, count against one
    AppLimit, served by `max_workers` threads (the parent's 8 would queue calls at 0.3-1 s each)."""

    def __init__(self, *, oauth: FakeOAuth, certificate: bytes, private_key: bytes, limit: AppLimit, max_workers=128):
        super().__init__(oauth=oauth, certificate=certificate, private_key=private_key, max_workers=max_workers)
        self.limit = limit

    def _search_stream(self, request, context):
        if _GOOGLE_CAMPAIGNS.search(request.query):
            decision = self.limit.admit(request.customer_id)
            time.sleep(decision.latency)
            if decision.throttled:
                developer_token_exhausted(decision.retry_after).abort(context)
        yield from super()._search_stream(request, context)


@dataclasses.dataclass
class LimitedGoogle:
    ads: DeveloperLimitedGoogleAds
    oauth: FakeOAuth
    ca_bundle: str

    def engine_env(self) -> dict[str, str]:
        """The settings (as environment variables) that point the real SDK at these fakes."""
        return {
            "GOOGLE_ADS_ENDPOINT": self.ads.endpoint,
            "GOOGLE_ADS_CA_BUNDLE": self.ca_bundle,
            "GOOGLE_TOKEN_URL": f"{self.oauth.url}/token",
            "GOOGLE_OAUTH_AUTHORIZE_URL": f"{self.oauth.url}/auth",
            "GOOGLE_CLIENT_ID": self.oauth.client_id,
            "GOOGLE_CLIENT_SECRET": self.oauth.client_secret,
            "GOOGLE_DEVELOPER_TOKEN": self.ads.developer_token or "",
        }


@contextlib.contextmanager
def limited_google_running(directory: Path, limit: AppLimit, *, max_workers: int = 128) -> Iterator[LimitedGoogle]:
    """The Google Ads fake behind a developer-token limit, and the OAuth fake, on 127.0.0.1."""
    certificate, key = self_signed_certificate()
    ca_bundle = directory / "google-ads-ca.pem"
    ca_bundle.write_bytes(certificate)
    oauth = FakeOAuth(client_id="fake-client.apps.googleusercontent.com", client_secret="fake-client-secret")
    ads = DeveloperLimitedGoogleAds(
        oauth=oauth, certificate=certificate, private_key=key, limit=limit, max_workers=max_workers
    )
    oauth_thread = threading.Thread(target=oauth.server.serve_forever, name="fake-google-oauth", daemon=True)
    oauth_thread.start()
    ads.server.start()
    try:
        yield LimitedGoogle(ads=ads, oauth=oauth, ca_bundle=str(ca_bundle))
    finally:
        ads.server.stop(grace=None).wait(5)
        oauth.server.shutdown()
        oauth.server.server_close()
