"""Write only the metric rows whose values changed, set-based, and count them.

PostgreSQL: one MERGE whose source is the fetched rows unnested from arrays (one round trip,
server-side parameter arrays instead of a 10,000-row VALUES list), updating a row only WHEN
MATCHED AND its values are DISTINCT FROM the fetched ones. SQLite (the embedded mode): INSERT
... ON CONFLICT DO UPDATE ... WHERE the values differ. Both report, as the statement's row count,
exactly the rows inserted or changed, so "rows written" means the same on both.

Call inside the transaction that also updates the connection's counters.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from django.db import connection as db

from syncing.providers.base import MetricRow

# Compared to decide whether a stored row changed; also the columns a change rewrites.
VALUE_COLUMNS = ("entity_name", "spend", "impressions", "clicks", "conversions", "conversion_value", "currency")
KEY_COLUMNS = ("level", "entity_id", "date")

_PG_MERGE = """
MERGE INTO daily_metrics AS t
USING (
    SELECT * FROM unnest(
        %s::varchar[], %s::varchar[], %s::date[], %s::varchar[], %s::numeric[],
        %s::bigint[], %s::bigint[], %s::numeric[], %s::numeric[], %s::varchar[]
    ) AS u(level, entity_id, date, entity_name, spend, impressions, clicks, conversions,
           conversion_value, currency)
) AS s
ON t.connection_id = %s AND t.level = s.level AND t.entity_id = s.entity_id AND t.date = s.date
WHEN MATCHED AND ({tcols}) IS DISTINCT FROM ({scols}) THEN
    UPDATE SET {sets}, updated_at = %s
WHEN NOT MATCHED THEN
    INSERT (connection_id, level, entity_id, date, {cols}, updated_at)
    VALUES (%s, s.level, s.entity_id, s.date, {scols}, %s)
""".format(
    cols=", ".join(VALUE_COLUMNS),
    tcols=", ".join(f"t.{c}" for c in VALUE_COLUMNS),
    scols=", ".join(f"s.{c}" for c in VALUE_COLUMNS),
    sets=", ".join(f"{c} = s.{c}" for c in VALUE_COLUMNS),
)

_SQLITE_UPSERT = """
INSERT INTO daily_metrics (connection_id, level, entity_id, date, {cols}, updated_at)
VALUES {{values}}
ON CONFLICT (connection_id, level, entity_id, date) DO UPDATE SET
    {sets}, updated_at = excluded.updated_at
WHERE ({tcols}) IS NOT ({ecols})
""".format(
    cols=", ".join(VALUE_COLUMNS),
    sets=", ".join(f"{c} = excluded.{c}" for c in VALUE_COLUMNS),
    tcols=", ".join(f"daily_metrics.{c}" for c in VALUE_COLUMNS),
    ecols=", ".join(f"excluded.{c}" for c in VALUE_COLUMNS),
)
_SQLITE_CHUNK = 500  # 12 parameters a row stays far below SQLite's variable limit


def _dedupe(rows: Iterable[MetricRow]) -> list[MetricRow]:
    # A platform can return one key twice (paging shifts under us); the last one wins, and
    # MERGE refuses to touch a row twice in one statement.
    by_key: dict[tuple, MetricRow] = {}
    for row in rows:
        by_key[(row.level, row.entity_id, row.date)] = row
    return list(by_key.values())


def metrics_persist_changed(*, connection_id: int, rows: Iterable[MetricRow], now: datetime) -> int:
    """Insert new rows and update changed ones; return how many rows were written."""
    unique_rows = _dedupe(rows)
    if not unique_rows:
        return 0
    if db.vendor == "postgresql":
        return _persist_postgresql(connection_id, unique_rows, now)
    return _persist_sqlite(connection_id, unique_rows, now)


def _persist_postgresql(connection_id: int, rows: list[MetricRow], now: datetime) -> int:
    columns = [[getattr(row, name) for row in rows] for name in KEY_COLUMNS + VALUE_COLUMNS]
    with db.cursor() as cursor:
        cursor.execute(_PG_MERGE, [*columns, connection_id, now, connection_id, now])
        return cursor.rowcount


def _persist_sqlite(connection_id: int, rows: list[MetricRow], now: datetime) -> int:
    ops = db.ops
    stamp = ops.adapt_datetimefield_value(now)
    written = 0
    placeholders = "(" + ", ".join(["%s"] * (2 + len(KEY_COLUMNS) + len(VALUE_COLUMNS))) + ")"
    with db.cursor() as cursor:
        for start in range(0, len(rows), _SQLITE_CHUNK):
            chunk = rows[start : start + _SQLITE_CHUNK]
            params: list = []
            for row in chunk:
                params += [connection_id, row.level, row.entity_id, ops.adapt_datefield_value(row.date)]
                params += [getattr(row, name) for name in VALUE_COLUMNS]
                params.append(stamp)
            cursor.execute(_SQLITE_UPSERT.format(values=", ".join([placeholders] * len(chunk))), params)
            written += cursor.rowcount
    return written
