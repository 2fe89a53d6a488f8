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
    # Real API calls made (each page counts), for the rate budget and the run's history.
    api_calls: int


class ProviderError(Exception):
    """Base of every error a provider raises. The message is shown to users: no secrets."""

    error_class = "permanent"

    def __init__(self, message: str, *, api_calls: int = 0):
        super().__init__(message)
        self.message = message
        self.api_calls = api_calls


class TransientProviderError(ProviderError):
    """Worth retrying soon (5xx, timeouts, the platform's own 'try again')."""

    error_class = "transient"


class ThrottledError(ProviderError):
    """The platform asked us to slow down; resume at `until` (None: the provider's default)."""

    error_class = "throttled"

    def __init__(self, message: str, *, until: datetime | None = None, api_calls: int = 0):
        super().__init__(message, api_calls=api_calls)
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

    def fetch(self, *, connection: Connection, since: date, until: date, now: datetime) -> FetchResult: ...
