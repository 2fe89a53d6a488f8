import uuid
from datetime import UTC, date, datetime, timedelta

import pytest

from connections.models import SyncFrequency, SyncTrigger
from syncing.schedule import jitter, next_sync_after_change, next_sync_after_start, restatement_due, sync_window

pytestmark = pytest.mark.embedded

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")


def test_jitter_none_for_realtime():
    assert jitter(public_id=ID, interval=timedelta(seconds=30)) == timedelta(0)


def test_jitter_is_deterministic_and_bounded():
    daily = timedelta(days=1)
    values = {jitter(public_id=uuid.uuid4(), interval=daily) for _ in range(200)}

    assert jitter(public_id=ID, interval=daily) == jitter(public_id=ID, interval=daily)
    assert all(timedelta(0) <= value < timedelta(minutes=10) for value in values)
    assert len(values) > 100  # spread, not one slot for everyone


def test_jitter_for_30min_is_at_most_5_percent():
    assert all(
        jitter(public_id=uuid.uuid4(), interval=timedelta(minutes=30)) < timedelta(seconds=90) for _ in range(100)
    )


def test_next_after_change_to_manual_is_none():
    assert next_sync_after_change(frequency="manual", last_attempted_at=NOW, public_id=ID, now=NOW) is None


def test_next_after_change_never_attempted_is_due_now():
    assert next_sync_after_change(frequency="daily", last_attempted_at=None, public_id=ID, now=NOW) == NOW


def test_next_after_change_runs_from_the_last_attempt():
    last = NOW - timedelta(seconds=10)

    assert next_sync_after_change(frequency="realtime", last_attempted_at=last, public_id=ID, now=NOW) == NOW + (
        timedelta(seconds=20)
    )


def test_next_after_change_already_elapsed_is_due_now():
    last = NOW - timedelta(hours=2)

    assert next_sync_after_change(frequency="hourly", last_attempted_at=last, public_id=ID, now=NOW) == NOW


def test_next_after_scheduled_start_keeps_the_slot():
    slot = NOW - timedelta(seconds=0.8)

    nxt = next_sync_after_start(
        frequency=SyncFrequency.REALTIME, trigger=SyncTrigger.SCHEDULED, slot=slot, started_at=NOW, public_id=ID
    )

    assert nxt == slot + timedelta(seconds=30)


def test_next_after_a_start_more_than_an_interval_late_restarts_from_now():
    slot = NOW - timedelta(seconds=45)

    nxt = next_sync_after_start(
        frequency=SyncFrequency.REALTIME, trigger=SyncTrigger.SCHEDULED, slot=slot, started_at=NOW, public_id=ID
    )

    assert nxt == NOW + timedelta(seconds=30)


def test_next_after_manual_start_restarts_the_interval():
    nxt = next_sync_after_start(
        frequency=SyncFrequency.HOURLY,
        trigger=SyncTrigger.MANUAL,
        slot=NOW + timedelta(minutes=40),
        started_at=NOW,
        public_id=ID,
    )

    assert nxt == NOW + timedelta(hours=1) + jitter(public_id=ID, interval=timedelta(hours=1))


def test_next_after_start_of_manual_connection_is_none():
    assert (
        next_sync_after_start(frequency="manual", trigger=SyncTrigger.MANUAL, slot=None, started_at=NOW, public_id=ID)
        is None
    )


def test_restatement_due_first_time_and_after_the_cadence(settings):
    settings.SYNC_RESTATEMENT_INTERVAL_HOURS = 6

    assert restatement_due(last_restated_at=None, now=NOW) is True
    assert restatement_due(last_restated_at=NOW - timedelta(hours=5, minutes=59), now=NOW) is False
    assert restatement_due(last_restated_at=NOW - timedelta(hours=6), now=NOW) is True


def test_sync_window_recent_is_today_and_yesterday_in_the_account_zone():
    # 02:00 UTC on the 28th is 11:00 on the 28th in Tokyo and 18:00 on the 27th in Los Angeles.
    at = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)

    assert sync_window(timezone="Asia/Tokyo", now=at, lookback_days=None) == (date(2026, 11, 27), date(2026, 11, 28))
    assert sync_window(timezone="America/Los_Angeles", now=at, lookback_days=None) == (
        date(2026, 11, 26),
        date(2026, 11, 27),
    )


def test_sync_window_lookback():
    assert sync_window(timezone="UTC", now=NOW, lookback_days=28) == (date(2026, 10, 31), date(2026, 11, 28))


@pytest.mark.parametrize("name", ["Mars/Olympus_Mons", "America", "", "../etc"])
def test_sync_window_with_an_unknown_zone_uses_utc(name):
    assert sync_window(timezone=name, now=NOW, lookback_days=None) == (date(2026, 11, 27), date(2026, 11, 28))
