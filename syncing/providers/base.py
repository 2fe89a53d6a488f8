"""The provider interface: turn one connection and a date window into metric rows.

A provider knows nothing about scheduling or storage. It raises one of the errors below so the
runner can decide what the user sees: transient errors are retried, throttling defers the
connection without calling it a failure, auth errors ask the user to reconnect, anything else
is shown with the platform's message.
"""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from connections.models import Connection
    from syncing.budget import Budget, CallMeter


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
