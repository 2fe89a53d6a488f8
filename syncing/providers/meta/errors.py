"""What Meta and the facebook-business SDK raise, as the provider errors of syncing.providers.base.

Their messages are built from Meta's error message only: the SDK's own exceptions print the
request, and requests' exceptions print the URL, whose query string carries the access token.
(settings.LOGGING redacts the URLs that urllib3 logs.)
"""

from __future__ import annotations

import re
from datetime import datetime

from facebook_business.exceptions import FacebookBadObjectError, FacebookRequestError

from adsync.redaction import redact
from syncing.providers.base import (
    AuthError,
    PermanentError,
    ProviderError,
    ThrottledError,
    TransientProviderError,
)
from syncing.providers.meta.usage import scope_usages, wait
from syncing.scopes import META_APP, meta_account_scope, meta_business_scope

RECONNECT_MESSAGE = "Meta access expired — reconnect the account"

# Throttling (https://developers.facebook.com/docs/graph-api/overview/rate-limiting):
# 4 app, 17 user, 32 page, 613 calls per ad account, 80000-80014 business use case limits.
THROTTLE_CODES = frozenset({4, 17, 32, 613, *range(80000, 80015)})
APP_THROTTLE_CODE = 4
# The business use cases of codes 80000-80014, for a throttle whose headers do not name one.
BUSINESS_USE_CASES = {
    80000: "ads_insights",
    80001: "pages",
    80002: "instagram",
    80003: "custom_audience",
    80004: "ads_management",
    80005: "leadgen",
    80006: "messenger",
    80008: "whatsapp_business_management",
    80009: "catalog_management",
    80014: "catalog_batch",
}
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

# Meta starts its messages with the code ("(#100) Tried accessing..."), which ours already show.
_CODE_PREFIX = re.compile(r"^\s*\(#\d+\)\s*")


def too_much_data(exc: FacebookRequestError) -> bool:
    """Whether Meta refused the request as too much data at once (see TOO_MUCH_DATA_CODES)."""
    code, subcode = exc.api_error_code(), exc.api_error_subcode()
    if code in TOO_MUCH_DATA_CODES and subcode == TOO_MUCH_DATA_SUBCODE:
        return True
    return code == 1 and TOO_MUCH_DATA_TEXT in str(exc.api_error_message() or "").lower()


def scrub(text: str, token: str) -> str:
    return redact(text).replace(token, "[redacted]")[:300]


def bad_object_error(exc: FacebookBadObjectError, last_answer: tuple[int, bool] | None, token: str) -> ProviderError:
    if last_answer is None:
        # Raised before anything was sent (the SDK checks the API version, for one).
        return PermanentError(f"Meta request could not be built: {scrub(str(exc), token)}")
    status, json_object = last_answer
    if status >= 500 or not json_object:
        # A body the SDK could not read (an HTML error page where JSON belongs): a hiccup.
        return TransientProviderError(f"Meta sent a response that could not be read (HTTP {status}).")
    # JSON of a shape the SDK does not expect: asking again gets the same.
    return PermanentError(f"Meta sent a response AdSync cannot read: {scrub(str(exc), token)}")


def throttle_scopes(code: int, headers: dict, account: str) -> tuple[str, ...]:
    """The shared limit a throttle error is about: the app (4), the business use cases its
    headers say are throttled (80000-80014), else the ad account (17, 32, 613; a user's or a
    page's limit is met through this account's calls too)."""
    if code == APP_THROTTLE_CODE:
        return (META_APP,)
    if 80000 <= code <= 80014:
        named = tuple(u.scope for u in scope_usages(headers, account=account) if u.throttled)
        return named or (meta_business_scope(account, BUSINESS_USE_CASES.get(code, "any")),)
    return (meta_account_scope(account),)


def request_error(exc: FacebookRequestError, now: datetime, *, account: str = "", token: str = "") -> ProviderError:
    """The provider error for a Graph API error answer; `now` is when the answer came (a
    throttle's wait counts from then), `account` the ad account's number, `token` the access
    token, never repeated in the message even if Meta's message quotes it."""
    code, subcode = exc.api_error_code(), exc.api_error_subcode()
    status = exc.http_status() or 0
    label = f"#{code}" if code is not None else f"HTTP {status}"
    text = exc.api_error_message() or ""
    message = _CODE_PREFIX.sub("", scrub(text, token) if token else redact(text)) or "no message"
    if too_much_data(exc):
        # Even a single day was too much (fetch splits larger ranges first).
        return PermanentError(f"Meta cannot return even one day of insights for this ad account ({label}): {message}")
    if code in THROTTLE_CODES:
        headers = exc.http_headers() or {}
        usages = scope_usages(headers, account=account)
        until = now + wait(max((u.regain for u in usages if u.throttled and u.regain), default=None))
        scopes = throttle_scopes(code, headers, account) if account else ()
        what = "this app" if code == APP_THROTTLE_CODE else "this ad account"
        return ThrottledError(f"Meta is rate limiting {what} ({label}): {message}", until=until, scopes=scopes)
    if code in EXPIRED_CODES or (status == 401 and code is None):
        return AuthError(RECONNECT_MESSAGE)
    if code in PERMISSION_CODES:
        return AuthError(f"Meta denied access to this ad account ({label}): {message} — reconnect the account")
    # Code 100 subcode 33 ("object does not exist") has been seen to succeed on retry; the runner
    # retries a few times, then shows the message.
    if exc.api_transient_error() or code in RETRY_CODES or status >= 500 or (code, subcode) == (100, 33):
        return TransientProviderError(f"Meta is temporarily unavailable ({label}): {message}")
    return PermanentError(f"Meta rejected the request ({label}): {message}")
