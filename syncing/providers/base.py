"""The provider interface: turn one connection and a date window into metric rows and, for a
platform whose accounts are connected through its OAuth sign-in, the calls of that sign-in.

A provider knows nothing about scheduling or storage. It raises one of the errors below so the
runner can decide what the user sees: transient errors are retried, throttling defers the
connection without calling it a failure, auth errors ask the user to reconnect, anything else
is shown with the platform's message.

The connect flow itself (state, session, the choose page, the write) is connections/connect.py;
it reaches a platform only through the registry (syncing.providers.OAUTH_PROVIDERS) and the
OAuthProvider methods below, whose errors are ConnectError.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import zoneinfo
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import httpx

    from connections.models import Connection
    from syncing.budget import Budget
    from syncing.meter import CallMeter

logger = logging.getLogger(__name__)

# DailyMetric keeps 6 decimal places (syncing/models.py MONEY).
STORED_PLACES = Decimal("0.000001")


def decimal_exact(value: str | int | float | Decimal) -> Decimal:
    """A number from a platform as the decimal it prints as, at the 6 places we store.

    str() keeps a JSON number's or a double's shortest form, so 0.1 stays 0.1 (Decimal(0.1) would
    be 0.1000000000000000055511151231257827...). Quantizing to the stored places, rounding half
    up as PostgreSQL's numeric does, keeps change detection exact: an unrounded 1/3 would differ
    from its stored rounding and count as a change on every sync. Raises InvalidOperation for
    text that is not a number, and for infinities and NaN.
    """
    number = Decimal(str(value))
    if not number.is_finite():
        raise InvalidOperation(f"not a finite number: {value!r}")
    return number.quantize(STORED_PLACES, rounding=ROUND_HALF_UP)


@dataclasses.dataclass(frozen=True, slots=True)
class MetricRow:
    level: str
    entity_id: str
    date: date
    entity_name: str
    spend: Decimal
    impressions: int
    clicks: int
    conversions: Decimal
    conversion_value: Decimal
    currency: str


@dataclasses.dataclass(frozen=True, slots=True)
class FetchResult:
    rows: list[MetricRow]
    # Set when the platform's usage headers say to slow down before it throttles us: the rows
    # are good, and the next sync waits until then.
    slow_down_until: datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ScopeUsage:
    """What one platform answer said of a shared limit (syncing.scopes names it): how much of it
    is used, in percent, and whether the platform now refuses calls in it."""

    scope: str
    percent: float
    throttled: bool = False
    # The platform's estimate of when calls are accepted again (None: it did not say).
    regain: timedelta | None = None


class ProviderError(Exception):
    """Base of every error a provider raises. The message is shown to users: no secrets."""

    error_class = "permanent"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class TransientProviderError(ProviderError):
    """Worth retrying soon (5xx, timeouts, the platform's own 'try again')."""

    error_class = "transient"


class DeadlineExceeded(ProviderError):
    """The sync ran out of time (SYNC_TASK_SOFT_TIME_LIMIT): the platform answered too slowly, or
    not at all. Not retried at once: the next scheduled sync, or Sync Now, tries again."""

    error_class = "transient"


CANCELLED_MESSAGE = "Cancelled while running; nothing it fetched was written."


class SyncCancelled(ProviderError):
    """Someone cancelled the sync (syncing.services.connection_cancel_sync): the meter stops it
    before its next platform call, and nothing it fetched is written."""

    error_class = "cancelled"


class ThrottledError(ProviderError):
    """The platform asked us to slow down; resume at `until` (None: the provider's default).

    `scopes` names the shared limits the throttle applies to (syncing.scopes: Meta's app, a
    business's use case, Google's developer token...): every connection in them waits, not only
    this one. Empty: this connection only (our own budget said no, or the platform did not say).
    """

    error_class = "throttled"

    def __init__(self, message: str, *, until: datetime | None = None, scopes: tuple[str, ...] = ()):
        super().__init__(message)
        self.until = until
        self.scopes = scopes


class AuthError(ProviderError):
    """The stored access no longer works; the user must reconnect the account."""

    error_class = "auth"


class PermanentError(ProviderError):
    """Anything else: shown with the platform's message until the user changes something."""

    error_class = "permanent"


class Provider(Protocol):
    slug: str
    label: str
    # How far back the platform keeps daily campaign metrics, in days: the oldest day a backfill
    # may ask for is today (in the account's time zone) minus this (syncing.services.backfill_request).
    history_days: int
    # Days per backfill chunk: what one request of the platform answers comfortably, so a chunk is
    # one call against the rate budget (and one sync job of the connection).
    backfill_chunk_days: int

    @property
    def default_lookback_days(self) -> int:
        """How many days a restatement sync re-fetches when the connection does not say (read
        only: a class attribute, or a property reading the platform's setting)."""
        ...

    def budgets(self, *, external_account_id: str) -> list[Budget]:
        """The rate budgets every call for this account counts against (none for demo)."""
        ...

    @property
    def usage_window(self) -> timedelta | None:
        """The window the platform's usage reports are over, when it sends them after each answer
        (Meta's headers): then calls are counted per scope, to pace a scope it says is busy."""
        ...

    def throttle_scopes(self, *, external_account_id: str) -> tuple[str, ...]:
        """The shared limits this account's calls count against (syncing.scopes), besides those
        learned from the platform's answers."""
        ...

    def fetch(
        self, *, connection: Connection, since: date, until: date, now: datetime, meter: CallMeter
    ) -> FetchResult:
        """Fetch daily rows for since..until; call meter.spend() before every real API call."""
        ...


# --- connecting accounts through the platform's OAuth sign-in (connections/connect.py) -----------


class ConnectError(Exception):
    """Something a person can act on, shown on the error page; never holds a token or a code."""

    def __init__(self, message: str, status: int = 502):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectInfo:
    """How the connect pages name a platform, and where its callback URL may be overridden."""

    label: str  # "Meta", "Google Ads"
    account_noun: str  # "Meta ad account"
    login_noun: str  # "Meta login"
    redirect_uri_setting: str  # the setting that overrides the callback URL
    not_configured: str  # what Settings says when the installation has no app for it


@dataclasses.dataclass(frozen=True, slots=True)
class OAuthGrant:
    """What the sign-in's code was traded for."""

    # What each connection keeps (encrypted), merged under the account's own credentials.
    credentials: dict = dataclasses.field(repr=False)
    # When that access runs out; None for access that does not expire on a date.
    expires_at: datetime | None
    # The access token that lists the accounts (for Google, a short-lived one that is not kept).
    access_token: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class AccountOffer:
    """An ad account a sign-in can reach, as the platform describes it, and the line the choose
    page shows under its name."""

    external_account_id: str
    name: str
    currency: str
    timezone_name: str
    hint: str
    # Merged over the grant's credentials (Google: the manager to log in through).
    credentials: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class AccountListing:
    """The accounts a sign-in can reach, in the order offered (by name)."""

    accounts: list[AccountOffer]
    # Things the person should know about the list ("3 closed accounts are not listed").
    notes: list[str] = dataclasses.field(default_factory=list)


class OAuthProvider(Provider, Protocol):
    """A provider whose accounts are connected through the platform's OAuth sign-in."""

    connect_info: ConnectInfo

    def oauth_configured(self) -> bool:
        """Whether this installation has an app on the platform to sign in with."""
        ...

    def oauth_authorize_url(self, *, state: str, redirect_uri: str) -> str:
        """The platform's consent screen, which comes back to redirect_uri with a code and state."""
        ...

    def oauth_exchange_code(self, *, code: str, redirect_uri: str, now: datetime) -> OAuthGrant:
        """Trade the consent screen's code for access; ConnectError saying why not."""
        ...

    def accounts_list(self, *, access_token: str, now: datetime) -> AccountListing:
        """The accounts the access token reaches; ConnectError saying why they cannot be listed."""
        ...


def json_object(response: httpx.Response) -> dict | None:
    """The response's JSON object, or None for anything else (HTML, a list, nothing)."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


@functools.cache
def _known_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def zone_name(name: object, *, source: str) -> str:
    """The platform's time zone name if this installation knows it; otherwise UTC, logged.

    Checked against the list of zones rather than by loading one: ZoneInfo() of "America" (a
    directory) or of a path raises errors of its own kinds.
    """
    if isinstance(name, str) and name in _known_zones():
        return name
    logger.warning("%s reported an unknown time zone %r; using UTC", source, name)
    return "UTC"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
