import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection as db

from syncing.models import DailyMetric, SyncRun
from syncing.persist import metrics_persist_changed
from syncing.providers.base import MetricRow

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def run_of(connection) -> SyncRun:
    """A run for one persist call (each row has at most one ledger row per run), its "today"
    the 28th."""
    return SyncRun.objects.create(
        connection=connection,
        job_id=uuid.uuid4(),
        trigger="manual",
        window_since=date(2026, 11, 27),
        window_until=date(2026, 11, 28),
        started_at=NOW,
    )


def row(entity: str = "c1", day: date = date(2026, 11, 27), **values) -> MetricRow:
    fields = {
        "level": "campaign",
        "entity_id": entity,
        "date": day,
        "entity_name": f"Campaign {entity}",
        "spend": Decimal("12.34"),
        "impressions": 1000,
        "clicks": 50,
        "conversions": Decimal("3"),
        "conversion_value": Decimal("99.90"),
        "currency": "USD",
    }
    fields.update(values)
    return MetricRow(**fields)


def test_persist_inserts_new_rows_and_counts_them(connection):
    written = metrics_persist_changed(
        connection_id=connection.pk, run=run_of(connection), rows=[row("c1"), row("c2")], now=NOW
    )

    assert written == 2
    stored = DailyMetric.objects.get(connection=connection, entity_id="c1")
    assert stored.spend == Decimal("12.34")
    assert stored.conversion_value == Decimal("99.90")
    assert stored.impressions == 1000
    assert stored.updated_at == NOW


def test_persist_unchanged_rows_write_nothing(connection):
    rows = [row("c1"), row("c2"), row("c1", date(2026, 11, 28))]
    metrics_persist_changed(connection_id=connection.pk, run=run_of(connection), rows=rows, now=NOW)

    written = metrics_persist_changed(
        connection_id=connection.pk, run=run_of(connection), rows=rows, now=NOW + timedelta(minutes=1)
    )

    assert written == 0
    assert set(DailyMetric.objects.values_list("updated_at", flat=True)) == {NOW}


def test_persist_counts_only_changed_rows(connection):
    metrics_persist_changed(
        connection_id=connection.pk, run=run_of(connection), rows=[row("c1"), row("c2"), row("c3")], now=NOW
    )
    later = NOW + timedelta(minutes=1)

    written = metrics_persist_changed(
        connection_id=connection.pk,
        run=run_of(connection),
        rows=[row("c1"), row("c2", spend=Decimal("12.35")), row("c3", entity_name="Renamed"), row("c4")],
        now=later,
    )

    assert written == 3  # c2 spend, c3 name, c4 new
    assert DailyMetric.objects.get(entity_id="c1").updated_at == NOW
    assert DailyMetric.objects.get(entity_id="c2").spend == Decimal("12.35")
    assert DailyMetric.objects.get(entity_id="c2").updated_at == later
    assert DailyMetric.objects.get(entity_id="c3").entity_name == "Renamed"


def test_persist_same_value_at_another_scale_is_not_a_change(connection):
    metrics_persist_changed(
        connection_id=connection.pk, run=run_of(connection), rows=[row(spend=Decimal("10.5"))], now=NOW
    )

    assert (
        metrics_persist_changed(
            connection_id=connection.pk, run=run_of(connection), rows=[row(spend=Decimal("10.500000"))], now=NOW
        )
        == 0
    )


def test_persist_micros_stay_exact(connection):
    spend = Decimal(123456789) / Decimal(1_000_000)  # Google's cost_micros

    metrics_persist_changed(connection_id=connection.pk, run=run_of(connection), rows=[row(spend=spend)], now=NOW)

    assert DailyMetric.objects.get().spend == Decimal("123.456789")


def test_persist_duplicate_keys_in_one_fetch_last_wins(connection):
    written = metrics_persist_changed(
        connection_id=connection.pk, run=run_of(connection), rows=[row(clicks=1), row(clicks=2)], now=NOW
    )

    assert written == 1
    assert DailyMetric.objects.get().clicks == 2


def test_persist_keeps_connections_apart(make_connection):
    first, second = make_connection(), make_connection()
    metrics_persist_changed(connection_id=first.pk, run=run_of(first), rows=[row()], now=NOW)

    assert metrics_persist_changed(connection_id=second.pk, run=run_of(second), rows=[row()], now=NOW) == 1
    assert DailyMetric.objects.count() == 2


def test_persist_empty_fetch_writes_nothing(connection):
    assert metrics_persist_changed(connection_id=connection.pk, run=run_of(connection), rows=[], now=NOW) == 0


def test_persist_many_rows_in_one_call(connection):
    rows = [row(f"c{i}", date(2026, 1, 1) + timedelta(days=d)) for i in range(30) for d in range(40)]

    assert metrics_persist_changed(connection_id=connection.pk, run=run_of(connection), rows=rows, now=NOW) == 1200
    changed = [r if i % 10 else row(r.entity_id, r.date, clicks=7) for i, r in enumerate(rows)]
    assert metrics_persist_changed(connection_id=connection.pk, run=run_of(connection), rows=changed, now=NOW) == 120
    assert DailyMetric.objects.filter(clicks=7).count() == 120


def test_persist_few_rows_is_one_statement(connection, django_assert_num_queries):
    # An ordinary sync, metrics and ledger: one statement over unnested arrays on PostgreSQL;
    # on SQLite the stored values' SELECT, the upsert and the ledger's INSERT.
    run = run_of(connection)
    with django_assert_num_queries(1 if db.vendor == "postgresql" else 3):
        metrics_persist_changed(connection_id=connection.pk, run=run, rows=[row(f"c{i}") for i in range(300)], now=NOW)


def test_persist_many_rows_stream_through_a_staging_table(connection, django_assert_num_queries):
    # PostgreSQL: SAVEPOINT, CREATE TEMP TABLE, COPY, the write, DROP, RELEASE; SQLite: two
    # 500-row chunks, each a SELECT of the stored values, the upsert and the ledger's INSERT.
    rows = [row(f"c{i}") for i in range(600)]
    run = run_of(connection)
    with django_assert_num_queries(6):
        assert metrics_persist_changed(connection_id=connection.pk, run=run, rows=rows, now=NOW) == 600
    changed = [row(f"c{i}", clicks=9) if i % 100 == 0 else r for i, r in enumerate(rows)]
    assert metrics_persist_changed(connection_id=connection.pk, run=run_of(connection), rows=changed, now=NOW) == 6


def test_persist_staged_twice_in_one_transaction(connection):
    from django.db import transaction

    rows = [row(f"c{i}") for i in range(400)]
    with transaction.atomic():
        first = metrics_persist_changed(connection_id=connection.pk, run=run_of(connection), rows=rows, now=NOW)
        second = metrics_persist_changed(connection_id=connection.pk, run=run_of(connection), rows=rows, now=NOW)

    assert (first, second) == (400, 0)


@pytest.mark.parametrize("count", [1, 400])  # the array path and the staged COPY path
def test_persist_more_than_six_places_is_stored_rounded_and_then_unchanged(connection, count):
    rows = [row(f"c{i}", spend=Decimal("12.3456789"), conversions=Decimal("0.3333333333")) for i in range(count)]

    assert metrics_persist_changed(connection_id=connection.pk, run=run_of(connection), rows=rows, now=NOW) == count
    assert metrics_persist_changed(connection_id=connection.pk, run=run_of(connection), rows=rows, now=NOW) == 0
    stored = DailyMetric.objects.get(entity_id="c0")
    assert (stored.spend, stored.conversions) == (Decimal("12.345679"), Decimal("0.333333"))


def test_persist_cuts_overlong_names_to_the_column(connection):
    rows = [row(entity_name="x" * 500)]

    assert metrics_persist_changed(connection_id=connection.pk, run=run_of(connection), rows=rows, now=NOW) == 1
    assert metrics_persist_changed(connection_id=connection.pk, run=run_of(connection), rows=rows, now=NOW) == 0
    assert DailyMetric.objects.get().entity_name == "x" * 400
