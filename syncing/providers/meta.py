"""Meta (Facebook/Instagram) ads: campaign-level daily insights through the facebook-business SDK.

Each fetch builds its own session and API object, pointed at settings.META_GRAPH_URL, and
never calls FacebookAdsApi.init(): that installs a sys.excepthook crash reporter which posts to
the real graph.facebook.com. Every HTTP call the SDK makes (the first page and each further
page) goes through _MeteredApi.call, which takes one call from the ad account's budget first.

A window longer than CHUNK_DAYS (a restatement) is fetched in chunks, newest first: Meta
refuses large requests for busy accounts with "Please reduce the amount of data you're asking
for, then retry your request" (code 1, usually with no subcode and HTTP 500; sometimes 1 or 100
with subcode 1487534), which no retry fixes. A chunk Meta still refuses is halved, down to a
single day; a single day refused is a PermanentError with Meta's message.

An answer whose body is not a JSON object (an HTML page from a proxy in front of Meta) is
refused as soon as it arrives, before the SDK takes it for a success: 429 is a throttle, anything
else a transient error.

Meta reports days in the ad account's own time zone; the connection stores that zone, and the
sync window (today and yesterday, or the lookback on a restatement) is computed in it.

Errors become the provider errors of syncing.providers.base. Their messages are built from
Meta's error message only: the SDK's own exceptions print the request, and requests' exceptions
print the URL, whose query string carries the access token. (settings.LOGGING redacts the URLs
that urllib3 logs.)
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation

import requests
from django.conf import settings
from facebook_business.adobjects.adaccount import AdAccount
from facebook_business.api import FacebookAdsApi
from facebook_business.exceptions import FacebookBadObjectError, FacebookError, FacebookRequestError
from facebook_business.session import FacebookSession

from adsync.redaction import redact
from syncing.budget import Budget
from syncing.providers.base import (
    AuthError,
    FetchResult,
    MetricRow,
    PermanentError,
    ProviderError,
    ThrottledError,
    TransientProviderError,
    decimal_exact,
)

logger = logging.getLogger(__name__)

RECONNECT_MESSAGE = "Meta access expired — reconnect the account"
DEFAULT_GRAPH_URL = "https://graph.facebook.com"
# Connect and read timeouts for one Graph API call; a sync task has two minutes in all.
TIMEOUT = (10, 60)
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

# Throttling (https://developers.facebook.com/docs/graph-api/overview/rate-limiting):
# 4 app, 17 user, 32 page, 613 calls per ad account, 80000-80014 business use case limits.
THROTTLE_CODES = frozenset({4, 17, 32, 613, *range(80000, 80015)})
# The token is invalid or expired (190 with its subcodes 458-467), or the API session is gone.
EXPIRED_CODES = frozenset({102, 190})
# Permission denied (10, 200-299): the token works but may not read this account.
PERMISSION_CODES = frozenset({10, *range(200, 300)})
# Meta's "unknown error" and "service temporarily unavailable", which it says to retry.
RETRY_CODES = frozenset({1, 2})
# "Please reduce the amount of data you're asking for, then retry your request": asking again
# for the same range gets the same answer; a smaller range may succeed. Meta sends it as code 1
# with no subcode (HTTP 500), or as code 1 or 100 with subcode 1487534.
TOO_MUCH_DATA_CODES = frozenset({1, 100})
TOO_MUCH_DATA_SUBCODE = 1487534
TOO_MUCH_DATA_TEXT = "reduce the amount of data"

USAGE_HEADERS = ("x-business-use-case-usage", "x-ad-account-usage", "x-fb-ads-insights-throttle")
_PERCENT_KEYS = ("call_count", "total_cputime", "total_time", "acc_id_util_pct", "app_id_util_pct")
# Meta starts its messages with the code ("(#100) Tried accessing..."), which ours already show.
_CODE_PREFIX = re.compile(r"^\s*\(#\d+\)\s*")


def account_number(external_account_id: str) -> str:
    """'act_123' or '123' -> '123' (connections store the bare number; the API path adds act_)."""
    return external_account_id.strip().removeprefix("act_")


def action_types(option: object) -> list[str]:
    """The conversion action types in order of preference, from a connection's option or the setting."""
    value = option or settings.META_CONVERSION_ACTION_TYPE
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(item).strip() for item in items if str(item).strip()]


class _MeteredApi(FacebookAdsApi):
    """Takes one call from the budget before every HTTP request and keeps each response's headers."""

    def __init__(self, session: FacebookSession, *, api_version: str, meter, now: datetime):
        super().__init__(session, api_version=api_version)
        self._meter = meter
        self._now = now
        # Every answer passes _refuse_unreadable before the SDK reads it.
        session.requests.hooks["response"].append(self._refuse_unreadable)
        self.response_headers: list[Mapping[str, str]] = []
        # The last answer the SDK took for a success: (HTTP status, whether its body is a JSON
        # object), or None before the first. Tells a garbled answer from a request the SDK
        # could not build when it raises FacebookBadObjectError.
        self.last_answer: tuple[int, bool] | None = None

    def call(self, *args, **kwargs):
        self._meter.spend()
        self.last_answer = None
        response = super().call(*args, **kwargs)
        self.response_headers.append(response.headers())
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
            until = self._now + timedelta(minutes=settings.META_PAUSE_MINUTES)
            raise ThrottledError(f"Meta is rate limiting this ad account (HTTP {status}).", until=until)
        if status >= 500:
            raise TransientProviderError(f"Meta is temporarily unavailable (HTTP {status}).")
        raise TransientProviderError(f"Meta sent a response that could not be read (HTTP {status}).")


def _session(access_token: str) -> FacebookSession:
    session = FacebookSession(access_token=access_token, app_secret=settings.META_APP_SECRET or None, timeout=TIMEOUT)
    session.GRAPH = settings.META_GRAPH_URL
    if settings.META_GRAPH_URL != DEFAULT_GRAPH_URL:
        # The SDK pins Meta's own CA bundle; a proxy in front of Meta has a certificate of its own.
        session.requests.verify = True
    return session


class MetaProvider:
    slug = "meta"
    label = "Meta"

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

    def fetch(self, *, connection, since: date, until: date, now: datetime, meter) -> FetchResult:
        token = (connection.credentials or {}).get("access_token")
        if not token:
            raise AuthError(RECONNECT_MESSAGE)
        preferred = action_types((connection.provider_options or {}).get("action_type"))
        session = _session(token)
        api = _MeteredApi(session, api_version=settings.META_API_VERSION, meter=meter, now=now)
        account = AdAccount(f"act_{account_number(connection.external_account_id)}", api=api)
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
            error = _request_error(exc, now)
        except FacebookBadObjectError as exc:
            error = _bad_object_error(exc, api.last_answer, token)
        except FacebookError as exc:
            # The SDK refused to build the request (a parameter, the API version): no retry helps.
            error = PermanentError(f"Meta request could not be built: {_scrub(str(exc), token)}")
        except requests.RequestException as exc:
            error = TransientProviderError(f"Could not reach Meta ({type(exc).__name__}).")
        finally:
            session.requests.close()
        if error is not None:
            # Raised here, outside the except blocks, so the SDK's exception (which prints the
            # request) is not chained to it.
            raise error
        return FetchResult(rows=rows, slow_down_until=_slow_down_until(api.response_headers, now))


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
        # Iterating loads each further page through _MeteredApi.call.
        return [_row(item.export_all_data(), preferred, currency) for item in cursor]
    except FacebookRequestError as exc:
        if _too_much_data(exc) and since < until:
            return None
        raise


def _too_much_data(exc: FacebookRequestError) -> bool:
    """Whether Meta refused the request as too much data at once (see TOO_MUCH_DATA_CODES)."""
    code, subcode = exc.api_error_code(), exc.api_error_subcode()
    if code in TOO_MUCH_DATA_CODES and subcode == TOO_MUCH_DATA_SUBCODE:
        return True
    return code == 1 and TOO_MUCH_DATA_TEXT in str(exc.api_error_message() or "").lower()


def _scrub(text: str, token: str) -> str:
    return redact(text).replace(token, "[redacted]")[:300]


def _bad_object_error(exc: FacebookBadObjectError, last_answer: tuple[int, bool] | None, token: str) -> ProviderError:
    if last_answer is None:
        # Raised before anything was sent (the SDK checks the API version, for one).
        return PermanentError(f"Meta request could not be built: {_scrub(str(exc), token)}")
    status, json_object = last_answer
    if status >= 500 or not json_object:
        # A body the SDK could not read (an HTML error page where JSON belongs): a hiccup.
        return TransientProviderError(f"Meta sent a response that could not be read (HTTP {status}).")
    # JSON of a shape the SDK does not expect: asking again gets the same.
    return PermanentError(f"Meta sent a response AdSync cannot read: {_scrub(str(exc), token)}")


def _request_error(exc: FacebookRequestError, now: datetime) -> ProviderError:
    code, subcode = exc.api_error_code(), exc.api_error_subcode()
    status = exc.http_status() or 0
    label = f"#{code}" if code is not None else f"HTTP {status}"
    message = _CODE_PREFIX.sub("", redact(exc.api_error_message() or "")) or "no message"
    if _too_much_data(exc):
        # Even a single day was too much (fetch splits larger ranges first).
        return PermanentError(f"Meta cannot return even one day of insights for this ad account ({label}): {message}")
    if code in THROTTLE_CODES:
        until = now + _wait(_usage(exc.http_headers() or {}).regain)
        return ThrottledError(f"Meta is rate limiting this ad account ({label}): {message}", until=until)
    if code in EXPIRED_CODES or (status == 401 and code is None):
        return AuthError(RECONNECT_MESSAGE)
    if code in PERMISSION_CODES:
        return AuthError(f"Meta denied access to this ad account ({label}): {message} — reconnect the account")
    # Code 100 subcode 33 ("object does not exist") has been seen to succeed on retry; the runner
    # retries a few times, then shows the message.
    if exc.api_transient_error() or code in RETRY_CODES or status >= 500 or (code, subcode) == (100, 33):
        return TransientProviderError(f"Meta is temporarily unavailable ({label}): {message}")
    return PermanentError(f"Meta rejected the request ({label}): {message}")


# --- usage headers ------------------------------------------------------------------------------


class _Usage:
    def __init__(self, percent: float = 0.0, regain: timedelta = timedelta(0)):
        self.percent = percent
        self.regain = regain


def _usage(headers: Mapping[str, str]) -> _Usage:
    """The highest usage percentage in Meta's usage headers, and when access is regained."""
    lowered = {str(k).lower(): v for k, v in headers.items()}
    percent, regain = 0.0, timedelta(0)
    for name in USAGE_HEADERS:
        raw = lowered.get(name)
        if not raw:
            continue
        try:
            parsed = json.loads(raw)
        except ValueError:
            logger.warning("Ignoring an unreadable %s header from Meta", name)
            continue
        for entry in _entries(parsed):
            for key in _PERCENT_KEYS:
                percent = max(percent, _number(entry.get(key)))
            regain = max(regain, timedelta(minutes=_number(entry.get("estimated_time_to_regain_access"))))
            regain = max(regain, timedelta(seconds=_number(entry.get("reset_time_duration"))))
    return _Usage(percent, regain)


def _entries(parsed: object) -> list[dict]:
    """X-Business-Use-Case-Usage maps ids to lists of entries; the other two are one object."""
    if isinstance(parsed, dict) and any(isinstance(v, list) for v in parsed.values()):
        return [e for v in parsed.values() if isinstance(v, list) for e in v if isinstance(e, dict)]
    return [parsed] if isinstance(parsed, dict) else []


def _number(value: object) -> float:
    try:
        return max(0.0, float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def _slow_down_until(responses: list[Mapping[str, str]], now: datetime) -> datetime | None:
    usages = [_usage(headers) for headers in responses]
    percent = max((u.percent for u in usages), default=0.0)
    if percent < settings.META_USAGE_SLOWDOWN_PCT:
        return None
    return now + _wait(max(u.regain for u in usages))


def _wait(regain: timedelta) -> timedelta:
    """Meta's own estimate when it gives one (it does once throttling is near), else our pause."""
    return regain if regain > timedelta(0) else timedelta(minutes=settings.META_PAUSE_MINUTES)


# --- rows ---------------------------------------------------------------------------------------


class _UnexpectedRow(ValueError):
    pass


def _decimal(value: object) -> Decimal:
    if value is None or value == "":
        return Decimal(0)
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise _UnexpectedRow(f"a number AdSync cannot read: {str(value)[:40]!r}")
    try:
        return decimal_exact(value)
    except InvalidOperation:
        raise _UnexpectedRow(f"a number AdSync cannot read: {str(value)[:40]!r}") from None


def _by_type(actions: object) -> dict[str, object]:
    """Meta's [{"action_type": "purchase", "value": "3"}, ...] as {"purchase": "3", ...}."""
    return {a.get("action_type"): a.get("value") for a in actions or [] if isinstance(a, dict)}


def _row(data: dict, preferred: list[str], fallback_currency: str) -> MetricRow:
    try:
        return _parse_row(data, preferred, fallback_currency)
    except _UnexpectedRow as exc:
        problem = str(exc)
    # Raised outside the except block: nothing of the SDK's to chain, and the row holds no secret.
    logger.warning("Unexpected insights row from Meta (%s): %.500r", problem, data)
    raise PermanentError(f"Meta sent an unexpected insights row ({problem})")


def _parse_row(data: dict, preferred: list[str], fallback_currency: str) -> MetricRow:
    campaign_id = data.get("campaign_id")
    if campaign_id in (None, ""):
        raise _UnexpectedRow("no campaign_id")
    try:
        day = date.fromisoformat(data.get("date_start"))
    except (TypeError, ValueError):
        raise _UnexpectedRow(f"date_start {str(data.get('date_start'))[:40]!r} is not a date") from None
    actions = _by_type(data.get("actions"))
    values = _by_type(data.get("action_values"))
    # The first preferred type Meta reports for this row, for both the count and the value.
    chosen = next((t for t in preferred if t in actions or t in values), None)
    return MetricRow(
        level="campaign",
        entity_id=str(campaign_id),
        date=day,
        entity_name=str(data.get("campaign_name") or ""),
        spend=_decimal(data.get("spend")),
        impressions=int(_decimal(data.get("impressions"))),
        clicks=int(_decimal(data.get("clicks"))),
        conversions=_decimal(actions.get(chosen)) if chosen else Decimal(0),
        conversion_value=_decimal(values.get(chosen)) if chosen else Decimal(0),
        currency=str(data.get("account_currency") or fallback_currency),
    )
