from datetime import UTC, datetime, timedelta

import pytest

from syncing.budget import (
    Budget,
    api_call_buckets_prune,
    budget_available_at,
    budget_try_spend,
    budget_used,
    budgets_used,
)
from syncing.meter import CallMeter
from syncing.models import ApiCallBucket
from syncing.providers.base import ThrottledError
from tests.conftest import run_concurrently

NOW = datetime(2026, 11, 28, 12, 0, 30, tzinfo=UTC)
HOURLY = Budget(key="meta:act_1", limit=180, window=timedelta(hours=1), label="Meta's hourly call budget")


@pytest.mark.django_db
@pytest.mark.embedded
def test_spend_up_to_the_limit_and_no_further():
    assert all(budget_try_spend(budget=HOURLY, now=NOW) for _ in range(180))

    assert budget_try_spend(budget=HOURLY, now=NOW) is False
    assert budget_used(budget=HOURLY, now=NOW) == 180


@pytest.mark.django_db
@pytest.mark.embedded
def test_spend_several_calls_at_once_is_all_or_nothing():
    budget_try_spend(budget=HOURLY, now=NOW, calls=178)

    assert budget_try_spend(budget=HOURLY, now=NOW, calls=3) is False
    assert budget_used(budget=HOURLY, now=NOW) == 178


@pytest.mark.django_db
@pytest.mark.embedded
def test_the_window_rolls():
    budget_try_spend(budget=HOURLY, now=NOW, calls=100)
    budget_try_spend(budget=HOURLY, now=NOW + timedelta(minutes=30), calls=80)

    assert budget_try_spend(budget=HOURLY, now=NOW + timedelta(minutes=59)) is False
    # The first minute's bucket leaves the window a minute after the hour (counted whole, so
    # the budget errs on the safe side by at most a minute).
    assert budget_try_spend(budget=HOURLY, now=NOW + timedelta(minutes=61)) is True
    assert budget_used(budget=HOURLY, now=NOW + timedelta(minutes=61)) == 81


@pytest.mark.django_db
@pytest.mark.embedded
def test_available_at_is_when_the_oldest_calls_leave_the_window():
    budget_try_spend(budget=HOURLY, now=NOW, calls=100)
    budget_try_spend(budget=HOURLY, now=NOW + timedelta(minutes=30), calls=80)
    later = NOW + timedelta(minutes=40)

    assert budget_available_at(budget=HOURLY, now=later) == datetime(2026, 11, 28, 13, 1, tzinfo=UTC)
    assert budget_try_spend(budget=HOURLY, now=datetime(2026, 11, 28, 13, 1, tzinfo=UTC)) is True


@pytest.mark.django_db
@pytest.mark.embedded
def test_available_at_now_when_there_is_room():
    assert budget_available_at(budget=HOURLY, now=NOW) == NOW


@pytest.mark.django_db
@pytest.mark.embedded
def test_budgets_used_reads_many_in_one_query(django_assert_num_queries):
    other = Budget(key="meta:act_2", limit=180, window=timedelta(hours=1), label="x")
    budget_try_spend(budget=HOURLY, now=NOW, calls=5)
    budget_try_spend(budget=other, now=NOW, calls=7)

    with django_assert_num_queries(1):
        assert budgets_used(budgets=[HOURLY, other], now=NOW) == {"meta:act_1": 5, "meta:act_2": 7}


@pytest.mark.django_db
@pytest.mark.embedded
def test_meter_counts_calls_and_stops_before_exceeding():
    meter = CallMeter([HOURLY], clock=lambda: NOW)
    budget_try_spend(budget=HOURLY, now=NOW, calls=178)

    meter.spend()
    meter.spend()
    with pytest.raises(ThrottledError) as excinfo:
        meter.spend()

    assert meter.calls == 2
    assert budget_used(budget=HOURLY, now=NOW) == 180
    assert excinfo.value.until == datetime(2026, 11, 28, 13, 1, tzinfo=UTC)
    assert excinfo.value.message == "Paused to stay within Meta's hourly call budget (180 calls per hour)."


@pytest.mark.django_db
@pytest.mark.embedded
def test_meter_gives_back_what_an_earlier_budget_took_when_a_later_one_is_full():
    app = Budget(key="google:app", limit=15000, window=timedelta(days=1), label="the app's daily quota")
    customer = Budget(key="google:customer:1", limit=2, window=timedelta(days=1), label="the customer's quota")
    meter = CallMeter([app, customer], clock=lambda: NOW)
    meter.spend()
    meter.spend()

    with pytest.raises(ThrottledError):
        meter.spend()

    assert budget_used(budget=app, now=NOW) == 2
    assert budget_used(budget=customer, now=NOW) == 2


@pytest.mark.django_db
@pytest.mark.embedded
def test_prune_drops_old_buckets():
    budget_try_spend(budget=HOURLY, now=NOW - timedelta(days=3))
    budget_try_spend(budget=HOURLY, now=NOW)

    assert api_call_buckets_prune(now=NOW) == 1
    assert ApiCallBucket.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_spenders_never_exceed_the_limit():
    small = Budget(key="meta:act_9", limit=50, window=timedelta(hours=1), label="x")

    granted = run_concurrently(lambda: sum(budget_try_spend(budget=small, now=NOW) for _ in range(20)), times=8)

    assert sum(granted) == 50
    assert budget_used(budget=small, now=NOW) == 50


@pytest.mark.django_db
@pytest.mark.embedded
def test_available_at_counts_calls_promised_but_not_made():
    daily = Budget(key="google:app", limit=5, window=timedelta(days=1), label="x")

    # Five syncs just claimed in this batch will spend this minute: the sixth fits a day later.
    assert budget_available_at(budget=daily, now=NOW, pending=5) == datetime(2026, 11, 29, 12, 1, tzinfo=UTC)
    assert budget_available_at(budget=daily, now=NOW, pending=4) == NOW
