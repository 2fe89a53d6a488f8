"""What the google-ads SDK and google-auth raise, as the provider errors of syncing.providers.base.

Messages are Google's own error texts with the request id when there is one (what Google's
support asks for), never a token. The SDK raises GoogleAdsException only when a call's trailers
carry a GoogleAdsFailure and its status is not INTERNAL or RESOURCE_EXHAUSTED; everything else
arrives as a google.api_core exception, whose trailers may still carry the failure.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from importlib import import_module
from typing import Any

from django.conf import settings

from syncing.providers.base import (
    AuthError,
    PermanentError,
    ProviderError,
    ThrottledError,
    TransientProviderError,
)
from syncing.scopes import GOOGLE_DEVELOPER_TOKEN, google_customer_scope

RECONNECT_MESSAGE = "Google access expired — reconnect the account"

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
# Errors about one customer account (its access, state or existence), not the login or the
# installation: listing a login's accounts leaves that account out and offers the others.
ONE_CUSTOMER_ONLY = {
    ("authorization_error", "USER_PERMISSION_DENIED"),
    ("authorization_error", "CUSTOMER_NOT_ENABLED"),
    ("authorization_error", "INCOMPLETE_SIGNUP"),
    ("authorization_error", "ACCESS_DENIED_FOR_ACCOUNT_TYPE"),
    ("authorization_error", "ACTION_NOT_PERMITTED_FOR_SUSPENDED_ACCOUNT"),
    ("authentication_error", "CUSTOMER_NOT_FOUND"),
}
# What Google refuses about the installation itself, for every account: its developer token...
DEVELOPER_TOKEN_REFUSED = {
    "DEVELOPER_TOKEN_NOT_ON_ALLOWLIST",
    "DEVELOPER_TOKEN_PROHIBITED",
    "DEVELOPER_TOKEN_NOT_APPROVED",
    "DEVELOPER_TOKEN_INVALID",
    "ORGANIZATION_NOT_ASSOCIATED_WITH_DEVELOPER_TOKEN",
}
# ...or its Cloud project, organization or terms of service.
INSTALLATION_REFUSED = NOT_FIXED_BY_RECONNECTING - DEVELOPER_TOKEN_REFUSED - {name for _, name in ONE_CUSTOMER_ONLY}
# Google no longer takes this access token, though the refresh token may still get a new one.
STALE_ACCESS_TOKEN = {"OAUTH_TOKEN_EXPIRED", "OAUTH_TOKEN_INVALID"}
# Quota errors that say "not now"; ACCESS_PROHIBITED (no access at all) is permanent.
THROTTLING_QUOTA_ERRORS = {
    "RESOURCE_EXHAUSTED",
    "RESOURCE_TEMPORARILY_EXHAUSTED",
    "EXCESSIVE_SHORT_TERM_QUERY_RESOURCE_CONSUMPTION",
    "EXCESSIVE_LONG_TERM_QUERY_RESOURCE_CONSUMPTION",
}
# The token endpoint's answers about the installation's OAuth client, not the user's grant.
MISCONFIGURED_CLIENT = {"invalid_client", "unauthorized_client"}


def google_error(exc: Exception, *, now: datetime, customer_id: str = "") -> ProviderError:
    """The provider error for anything the SDK or google-auth raised. Never includes a token.

    `now` is when the answer came: a throttle's retry delay counts from then. `customer_id`
    names the customer a throttle may be about (its scope, syncing.scopes)."""
    from google.ads.googleads.errors import GoogleAdsException
    from google.api_core import exceptions as core
    from google.auth import exceptions as auth

    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, GoogleAdsException):
        return _from_failure(
            exc.failure, exc.request_id, status=exc.error.code().name, now=now, customer_id=customer_id
        )
    if isinstance(exc, core.ResourceExhausted):
        failure, request_id = _failure_in_trailers(exc)
        delay = _retry_delay(failure) or _retry_info_delay(exc)
        scopes = _throttle_scopes(failure, customer_id)
        return _throttled(_messages(failure) or exc.message, request_id, delay, now, scopes)
    if isinstance(exc, core.ServiceUnavailable | core.InternalServerError | core.DeadlineExceeded | core.Aborted):
        failure, request_id = _failure_in_trailers(exc)
        message = f"Google Ads is temporarily unavailable ({_messages(failure) or exc.message})"
        return TransientProviderError(_with_request_id(message, request_id))
    if isinstance(exc, core.Unauthenticated):
        return AuthError(RECONNECT_MESSAGE)
    if isinstance(exc, core.GoogleAPICallError):
        # Including PermissionDenied without a GoogleAdsFailure: Google's front end refused the
        # call (the Google Ads API is not enabled in the OAuth client's Cloud project, say), which
        # reconnecting does not fix.
        failure, request_id = _failure_in_trailers(exc)
        return PermanentError(_with_request_id(_messages(failure) or exc.message or type(exc).__name__, request_id))
    if isinstance(exc, auth.RefreshError):
        error, description = _oauth_error(exc)
        if error in MISCONFIGURED_CLIENT:
            detail = f"{error}: {description}" if description else error
            return PermanentError(
                f"Google OAuth client is misconfigured ({detail}) — check GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET"
            )
        if exc.retryable:
            return TransientProviderError("Google's sign-in service is temporarily unavailable")
        # invalid_grant: the refresh token was revoked, expired or belongs to another client.
        return AuthError(RECONNECT_MESSAGE)
    if isinstance(exc, auth.TransportError):
        return TransientProviderError("Could not reach Google's sign-in service")
    raise exc


def access_token_rejected(exc: Exception) -> bool:
    """Whether Google refused the access token itself (a fresh one from the refresh token may work)."""
    from google.ads.googleads.errors import GoogleAdsException
    from google.api_core import exceptions as core

    if isinstance(exc, GoogleAdsException):
        return any(
            kind == "authentication_error" and name in STALE_ACCESS_TOKEN
            for kind, name in map(_error_code, exc.failure.errors)
        )
    return isinstance(exc, core.Unauthenticated)


def google_failure(exc: Exception) -> tuple[list[tuple[str, str]], str]:
    """The (kind, name) codes of the GoogleAdsFailure an SDK error carries, and Google's own
    message with the request id; ([], "") when it carries none."""
    from google.ads.googleads.errors import GoogleAdsException
    from google.api_core import exceptions as core

    if isinstance(exc, GoogleAdsException):
        failure, request_id = exc.failure, exc.request_id
    elif isinstance(exc, core.GoogleAPICallError):
        failure, request_id = _failure_in_trailers(exc)
    else:
        return [], ""
    if failure is None:
        return [], ""
    return [_error_code(error) for error in failure.errors], _with_request_id(_messages(failure), request_id)


def _from_failure(
    failure: Any, request_id: str | None, *, status: str, now: datetime, customer_id: str = ""
) -> ProviderError:
    codes = [_error_code(error) for error in failure.errors]
    for kind, name in codes:
        if kind in ("authentication_error", "authorization_error") and name not in NOT_FIXED_BY_RECONNECTING:
            return AuthError(RECONNECT_MESSAGE)
        if kind == "header_error" and name == "INVALID_LOGIN_CUSTOMER_ID":
            return AuthError(RECONNECT_MESSAGE)
    if any(kind == "quota_error" and name in THROTTLING_QUOTA_ERRORS for kind, name in codes):
        scopes = _throttle_scopes(failure, customer_id)
        return _throttled(_messages(failure), request_id, _retry_delay(failure), now, scopes)
    if status in ("UNAVAILABLE", "DEADLINE_EXCEEDED") or any(kind == "internal_error" for kind, _ in codes):
        message = f"Google Ads is temporarily unavailable ({_messages(failure) or status})"
        return TransientProviderError(_with_request_id(message, request_id))
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


def _throttled(
    message: str, request_id: str | None, delay: timedelta | None, now: datetime, scopes: tuple[str, ...]
) -> ThrottledError:
    text = _with_request_id(f"Google Ads quota reached: {message or 'resource exhausted'}", request_id)
    return ThrottledError(text, until=now + delay if delay else None, scopes=scopes)


def _throttle_scopes(failure: Any, customer_id: str) -> tuple[str, ...]:
    """Which shared limit a quota error is about: Google says it in QuotaErrorDetails.rate_scope
    (DEVELOPER: the developer token, for every customer; ACCOUNT: this customer). Without it,
    RESOURCE_EXHAUSTED (the token's daily operations) is the developer token's and the query
    resource errors are the customer's."""
    developer, customer = GOOGLE_DEVELOPER_TOKEN, google_customer_scope(customer_id) if customer_id else None
    for error in failure.errors if failure is not None else ():
        kind, name = _error_code(error)
        if kind != "quota_error":
            continue
        rate_scope = getattr(error.details.quota_error_details.rate_scope, "name", "")
        if rate_scope == "DEVELOPER":
            return (developer,)
        if rate_scope == "ACCOUNT" and customer:
            return (customer,)
        if name == "RESOURCE_EXHAUSTED" or customer is None:
            return (developer,)
        return (customer,)
    # A bare RESOURCE_EXHAUSTED status, with no failure details: the installation's quota.
    return (developer,)


def _oauth_error(exc: Exception) -> tuple[str, str]:
    """The token endpoint's `error` and `error_description`, which google-auth passes as args[1]."""
    response = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    return str(response.get("error") or ""), str(response.get("error_description") or "")[:200]


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
