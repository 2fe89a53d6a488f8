from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import pairwise

import pytest

from connections.models import Connection
from syncing.meter import CallMeter
from syncing.providers import PROVIDERS, provider_for
from syncing.providers.base import AuthError, PermanentError, ThrottledError, TransientProviderError
from syncing.providers.demo import DemoProvider

pytestmark = pytest.mark.embedded

NOW = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)


def account(**fields) -> Connection:
    # An unsaved connection is all a provider needs: it never touches the database.
    defaults = {"external_account_id": "demo-42", "timezone": "UTC", "currency": "EUR", "provider_options": {}}
    defaults.update(fields)
    return Connection(provider="demo", **defaults)


def fetch(connection, since=date(2026, 11, 27), until=date(2026, 11, 28), now=NOW, meter=None):
    meter = meter or CallMeter([], clock=lambda: now)
    return DemoProvider().fetch(connection=connection, since=since, until=until, now=now, meter=meter)


def test_demo_is_registered():
    assert provider_for("demo") is PROVIDERS["demo"]
    assert PROVIDERS["demo"].label == "Demo"


def test_unknown_provider_is_a_permanent_error_with_a_message():
    with pytest.raises(PermanentError, match="not available in this installation"):
        provider_for("tiktok")


def test_demo_rows_are_deterministic_and_exact():
    meter = CallMeter([], clock=lambda: NOW)
    first, second = fetch(account(), meter=meter), fetch(account())

    assert first == second
    assert len(first.rows) == 8  # 2 days x 4 campaigns
    assert meter.calls == 1
    row = first.rows[0]
    assert row.currency == "EUR"
    assert isinstance(row.spend, Decimal)
    assert row.spend == row.spend.quantize(Decimal("0.01"))
    assert row.level == "campaign"


def test_demo_past_days_never_change_and_today_grows():
    early = fetch(account(), now=NOW)
    late = fetch(account(), now=NOW + timedelta(hours=3))

    past = [r for r in early.rows if r.date == date(2026, 11, 27)]
    assert past == [r for r in late.rows if r.date == date(2026, 11, 27)]
    today_early = {r.entity_id: r.spend for r in early.rows if r.date == date(2026, 11, 28)}
    today_late = {r.entity_id: r.spend for r in late.rows if r.date == date(2026, 11, 28)}
    assert all(today_late[key] > today_early[key] for key in today_early)


def test_demo_about_a_quarter_of_realtime_syncs_see_a_change():
    conn = account()
    snapshots = [fetch(conn, now=NOW + timedelta(seconds=30 * i)).rows for i in range(241)]

    changes = sum(1 for before, after in pairwise(snapshots) if before != after)

    assert changes == 60  # 240 syncs, a step every 2 minutes


def test_demo_never_returns_future_days_of_the_account_zone():
    # 02:00 UTC on the 28th is still the 27th in Los Angeles.
    rows = fetch(account(timezone="America/Los_Angeles"), now=datetime(2026, 11, 28, 2, 0, tzinfo=UTC)).rows

    assert {r.date for r in rows} == {date(2026, 11, 27)}


def test_demo_honours_the_campaign_count():
    assert len(fetch(account(provider_options={"campaigns": 10}), since=date(2026, 11, 28)).rows) == 10


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("transient", TransientProviderError),
        ("throttled", ThrottledError),
        ("auth", AuthError),
        ("permanent", PermanentError),
    ],
)
def test_demo_simulated_errors(kind, error):
    with pytest.raises(error):
        fetch(account(provider_options={"simulate_error": kind}))
