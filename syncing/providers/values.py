"""The values of a platform's rows, read and checked against what DailyMetric stores.

A provider reads every row with these before it returns any: a value AdSync cannot store as it
is (text where a number belongs, a negative count, a sum too large for its column, a day that is
not a date) ends the sync with a PermanentError naming the platform, the field, the campaign,
the day and the value (unreadable_value_error), and nothing of that fetch is written. Before
these checks such a value ended the sync as an unexpected error, or as a failed write.
"""

from __future__ import annotations

import json
import re
from datetime import date
from decimal import Decimal

from adsync.redaction import redact
from syncing.providers.base import PermanentError, decimal_exact

# DailyMetric's columns (syncing/models.py; tests/test_malformed_data.py holds them to it):
# MONEY is numeric(20, 6), so below 10^14 once rounded to its six places...
MONEY_LIMIT = Decimal(10) ** (20 - 6)
# ...impressions and clicks are bigint...
BIGINT_MAX = 2**63 - 1
# ...and entity_id is varchar(64).
ENTITY_ID_LENGTH = 64
# How much of an offending value a message repeats.
SHOWN_LENGTH = 40

# A decimal number as text, the way platforms print one ("12.34", "-0.5", "1E-7"). Stricter than
# Decimal(), which also reads "NaN", "Infinity", " 1 ", "1_000" and other scripts' digits ("١٢").
_DECIMAL_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
# A day as YYYY-MM-DD only: date.fromisoformat() also reads "20261130" and "2026-W48-1".
_DAY_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_CURRENCY_TEXT = re.compile(r"[A-Z]{3}")


class UnreadableValue(ValueError):
    """One field of a platform's row that AdSync cannot store as it is."""

    def __init__(self, *, field: str, value: object, reason: str = "", missing: bool = False):
        self.field = field
        self.value = value
        self.reason = reason
        self.missing = missing
        super().__init__(f"{field} {self.shown}" + (f" ({reason})" if reason else ""))

    @property
    def shown(self) -> str:
        return "missing" if self.missing else shown(self.value)


def shown(value: object) -> str:
    """A value as a message repeats it: text in double quotes, cut to SHOWN_LENGTH characters,
    and with anything that looks like a credential blanked out (a row holds none, but a garbled
    one might echo a URL)."""
    if isinstance(value, str):
        text = redact(value)
        cut = text[:SHOWN_LENGTH] + ("…" if len(text) > SHOWN_LENGTH else "")
        return json.dumps(cut, ensure_ascii=False)
    text = redact(json.dumps(value, default=str) if isinstance(value, list | dict) else str(value))
    return text[:SHOWN_LENGTH] + ("…" if len(text) > SHOWN_LENGTH else "")


def unreadable_value_error(
    *, platform: str, problem: UnreadableValue, campaign_id: str | None, day: date | None
) -> PermanentError:
    """'Meta sent a value AdSync cannot read: spend "abc" for campaign 123 on 2026-11-30 (not a
    number)', with the campaign and the day when they are known."""
    where = f" for campaign {campaign_id}" if campaign_id else ""
    when = f" on {day.isoformat()}" if day else ""
    why = f" ({problem.reason})" if problem.reason else ""
    return PermanentError(
        f"{platform} sent a value AdSync cannot read: {problem.field} {problem.shown}{where}{when}{why}"
    )


def present(value: object, *, field: str) -> object:
    """The value, unless the platform left the field out. The facebook-business SDK drops a
    field whose value is null, so null and left out are one case."""
    if value is None:
        raise UnreadableValue(field=field, value=value, missing=True)
    return value


def number(value: object, *, field: str) -> Decimal:
    """A finite number, from a JSON number or decimal text ("12.34"); anything else is refused,
    "" and null too: a platform that sends a field says how much, even when it is 0."""
    present(value, field=field)
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise UnreadableValue(field=field, value=value, reason="not a number")
    if isinstance(value, str) and not _DECIMAL_TEXT.fullmatch(value):
        raise UnreadableValue(field=field, value=value, reason="not a number")
    parsed = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    if not parsed.is_finite():
        raise UnreadableValue(field=field, value=value, reason="not a finite number")
    return parsed


def money(value: object, *, field: str, signed: bool = False) -> Decimal:
    """A sum for a MONEY column (spend, conversions, conversion value), at its six places.

    Negative only when `signed`: the table's check constraint holds spend to zero or more, not
    conversions, so a conversion count below zero is stored as the platform reports it rather
    than end the sync.
    """
    return _fits_money(number(value, field=field), value=value, field=field, signed=signed)


def micros(value: object, *, field: str) -> Decimal:
    """Google's money: a whole number of millionths of the account's currency (cost_micros)."""
    present(value, field=field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnreadableValue(field=field, value=value, reason="not a whole number of micros")
    # int / 10^6 is exact: an int64 has at most 19 digits, within Decimal's 28.
    return _fits_money(Decimal(value) / 1_000_000, value=value, field=field, signed=False)


def count(value: object, *, field: str) -> int:
    """A count for a bigint column (impressions, clicks): whole, not negative, within 2^63."""
    parsed = number(value, field=field)
    if parsed != parsed.to_integral_value():
        raise UnreadableValue(field=field, value=value, reason="not a whole number")
    if parsed < 0:
        raise UnreadableValue(field=field, value=value, reason="negative")
    if parsed > BIGINT_MAX:
        raise UnreadableValue(field=field, value=value, reason="larger than AdSync can store")
    return int(parsed)


def day(value: object, *, field: str) -> date:
    """A day as the platform prints one: YYYY-MM-DD."""
    present(value, field=field)
    if isinstance(value, str) and _DAY_TEXT.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:  # 2026-02-30
            pass
    raise UnreadableValue(field=field, value=value, reason="not a date")


def entity_id(value: object, *, field: str) -> str:
    """An id for DailyMetric.entity_id: text or a whole number, not empty, at most 64 characters."""
    present(value, field=field)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise UnreadableValue(field=field, value=value, reason="not an id")
    text = str(value)
    if not text:
        raise UnreadableValue(field=field, value=value, missing=True)
    if len(text) > ENTITY_ID_LENGTH:
        raise UnreadableValue(field=field, value=value, reason=f"longer than {ENTITY_ID_LENGTH} characters")
    return text


def currency(value: object, *, field: str) -> str:
    """An ISO 4217 code ("EUR"), which DailyMetric.currency holds in three characters."""
    present(value, field=field)
    if not isinstance(value, str) or not _CURRENCY_TEXT.fullmatch(value):
        raise UnreadableValue(field=field, value=value, reason="not a currency code")
    return value


def _fits_money(amount: Decimal, *, value: object, field: str, signed: bool) -> Decimal:
    # Compared before rounding, as quantize() raises for more digits than Decimal's precision
    # ("1e400"); and after, as rounding can carry a value over (99999999999999.9999999).
    if abs(amount) >= MONEY_LIMIT:
        raise UnreadableValue(field=field, value=value, reason="larger than AdSync can store")
    stored = decimal_exact(amount)
    if abs(stored) >= MONEY_LIMIT:
        raise UnreadableValue(field=field, value=value, reason="larger than AdSync can store")
    if stored < 0 and not signed:
        raise UnreadableValue(field=field, value=value, reason="negative")
    return stored
