"""The provider interface: turn one connection and a date window into metric rows.

A provider knows nothing about scheduling or storage. It raises one of the errors below so the
runner can decide what the user sees: transient errors are retried, throttling defers the
connection without calling it a failure, auth errors ask the user to reconnect, anything else
is shown with the platform's message.
"""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from connections.models import Connection
    from syncing.budget import Budget, CallMeter

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


class ProviderError(Exception):
    """Base of every error a provider raises. The message is shown to users: no secrets."""

    error_class = "permanent"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class TransientProviderError(ProviderError):
    """Worth retrying soon (5xx, timeouts, the platform's own 'try again')."""

    error_class = "transient"


class ThrottledError(ProviderError):
    """The platform asked us to slow down; resume at `until` (None: the provider's default)."""

    error_class = "throttled"

    def __init__(self, message: str, *, until: datetime | None = None):
        super().__init__(message)
        self.until = until


class AuthError(ProviderError):
    """The stored access no longer works; the user must reconnect the account."""

    error_class = "auth"


class PermanentError(ProviderError):
    """Anything else: shown with the platform's message until the user changes something."""

    error_class = "permanent"


class Provider(Protocol):
    slug: str
    label: str
    # How many days a restatement sync re-fetches when the connection does not say.
    default_lookback_days: int

    def budgets(self, *, external_account_id: str) -> list[Budget]:
        """The rate budgets every call for this account counts against (none for demo)."""
        ...

    def fetch(
        self, *, connection: Connection, since: date, until: date, now: datetime, meter: CallMeter
    ) -> FetchResult:
        """Fetch daily rows for since..until; call meter.spend() before every real API call."""
        ...
