"""Write only the metric rows whose values changed, set-based, count them, and record in the
change ledger (SyncChange) what each one was before and is now.

PostgreSQL: one statement. The fetched rows are left-joined to the stored ones once, keeping
the new ones and those whose values are DISTINCT FROM the stored ones, each with its diff (old
values from the join: the snapshot before the write); an UPDATE rewrites the changed rows, an
INSERT adds the new ones, and the same statement inserts a ledger row for each row the UPDATE
returns and each new one. PostgreSQL 15 has no MERGE ... RETURNING (17 has), hence
data-modifying CTEs instead of the MERGE this used to be. The source
is, for a few hundred rows (an ordinary sync), the rows unnested from array parameters: one
round trip. For more (a restatement, a backfill), the rows are streamed with COPY into a
temporary table first: Django's psycopg cursor binds parameters on the client, so ten
10,000-element arrays cost ~90 ms of Python to render into the SQL text, where COPY's C row
writer costs a few (bench/persist.py). SQLite (the embedded mode): per chunk, one SELECT of the
stored values of the chunk's keys, INSERT ... ON CONFLICT DO UPDATE ... WHERE the values differ
RETURNING the rows written, and one INSERT of their ledger rows. Both report exactly the rows
inserted or changed, so "rows written" means the same everywhere, and a run has one ledger row
per row written.

Call inside the transaction that also updates the connection's counters, so the metrics and
the ledger commit together or not at all.
"""

from __future__ import annotations

import dataclasses
import decimal
import json
import operator
from collections.abc import Iterable
from datetime import date, datetime, timedelta

from django.db import connection as db
from django.db import transaction
from django.db.models import CharField

from syncing.models import DailyMetric, SyncRun
from syncing.providers.base import MetricRow


def _char_length(name: str) -> int:
    """The max_length of a DailyMetric CharField (which Django requires of one: never None)."""
    field = DailyMetric._meta.get_field(name)
    if not isinstance(field, CharField) or field.max_length is None:
        raise TypeError(f"DailyMetric.{name} is not a CharField with a max_length")
    return field.max_length


ENTITY_NAME_LENGTH = _char_length("entity_name")

# Compared to decide whether a stored row changed; also the columns a change rewrites, and the
# fields a ledger row can name.
VALUE_COLUMNS = ("entity_name", "spend", "impressions", "clicks", "conversions", "conversion_value", "currency")
KEY_COLUMNS = ("level", "entity_id", "date")
DECIMAL_COLUMNS = frozenset({"spend", "conversions", "conversion_value"})
INTEGER_COLUMNS = frozenset({"impressions", "clicks"})
_LEDGER_COLUMNS = "run_id, level, entity_id, date, entity_name, added, restated, diff"


def _pg_text(table: str, column: str) -> str:
    """A value as the ledger's string: decimals without trailing zeros ("44", "12.5"), as
    decimal_text does on SQLite, so both backends record the same strings."""
    if column in DECIMAL_COLUMNS:
        return f"trim_scale({table}.{column})::text"
    if column in INTEGER_COLUMNS:
        return f"{table}.{column}::text"
    return f"{table}.{column}"


# Only the fields that differ, from the stored row `o` to the fetched one `s`: the others are
# built as null and stripped, which drops null object fields only. A new row has no `o`, so
# every field reads [null, "44"] (an array's null stays).
_PG_DIFF = "jsonb_strip_nulls(jsonb_build_object({}))".format(
    ", ".join(
        f"'{c}', CASE WHEN o.{c} IS DISTINCT FROM s.{c} "
        f"THEN jsonb_build_array({_pg_text('o', c)}, {_pg_text('s', c)}) END"
        for c in VALUE_COLUMNS
    )
)

# `j` joins the fetched rows to the stored ones once, as MERGE would, and keeps only the new
# and the changed ones, each with its diff (a CTE used twice is computed once). It reads the
# snapshot from before the statement, so the diff's old values are the values before this
# write; only one sync of a connection runs at a time (the state machine), so nothing else
# writes these rows in between. The UPDATE finds its rows through the primary key, handed the
# changed ids as an array: joined to `j` alone, PostgreSQL cannot tell how few rows changed and
# hashed every id of the table (27 of 54 ms in bench/persist.py at 1 %), or of the connection
# when bounded by it (2 to 3 ms). The new rows' ledger rows come from `j` itself: the INSERT
# stores exactly those values, or fails the whole statement. Named parameters: connection_id,
# now, run_id, restated_before (and the arrays, for that source).
_PG_WRITE_TEMPLATE = """
WITH {source_cte}j AS (
    SELECT s.level, s.entity_id, s.date, {scols}, o.id AS old_id, {diff} AS diff
    FROM {source} AS s
    LEFT JOIN daily_metrics AS o
        ON o.connection_id = %(connection_id)s AND o.level = s.level AND o.entity_id = s.entity_id
        AND o.date = s.date
    WHERE o.id IS NULL OR ({ocols}) IS DISTINCT FROM ({scols})
),
updated AS (
    UPDATE daily_metrics AS t SET {sets}, updated_at = %(now)s
    FROM j
    WHERE t.id = ANY(ARRAY(SELECT old_id FROM j WHERE old_id IS NOT NULL)) AND t.id = j.old_id
    RETURNING j.level, j.entity_id, j.date, j.entity_name, j.diff
),
added AS (
    INSERT INTO daily_metrics (connection_id, level, entity_id, date, {cols}, updated_at)
    SELECT %(connection_id)s, level, entity_id, date, {cols}, %(now)s FROM j WHERE old_id IS NULL
)
INSERT INTO sync_changes ({ledger})
SELECT %(run_id)s, level, entity_id, date, entity_name, false, date < %(restated_before)s, diff FROM updated
UNION ALL
SELECT %(run_id)s, level, entity_id, date, entity_name, true, false, diff FROM j WHERE old_id IS NULL
"""


def _pg_write(*, source: str, source_cte: str = "") -> str:
    return _PG_WRITE_TEMPLATE.format(
        source_cte=source_cte,
        source=source,
        cols=", ".join(VALUE_COLUMNS),
        scols=", ".join(f"s.{c}" for c in VALUE_COLUMNS),
        ocols=", ".join(f"o.{c}" for c in VALUE_COLUMNS),
        sets=", ".join(f"{c} = j.{c}" for c in VALUE_COLUMNS),
        diff=_PG_DIFF,
        ledger=_LEDGER_COLUMNS,
    )


# The casts to numeric(20,6) round to the columns' scale before the comparison.
_PG_WRITE = _pg_write(
    source="s",
    source_cte="""s AS (
    SELECT * FROM unnest(
        %(level)s::varchar[], %(entity_id)s::varchar[], %(date)s::date[], %(entity_name)s::varchar[],
        %(spend)s::numeric(20,6)[], %(impressions)s::bigint[], %(clicks)s::bigint[],
        %(conversions)s::numeric(20,6)[], %(conversion_value)s::numeric(20,6)[], %(currency)s::varchar[]
    ) AS u(level, entity_id, date, entity_name, spend, impressions, clicks, conversions,
           conversion_value, currency)
),
""",
)

# Above this many rows COPY into a temporary table beats array parameters (measured crossover
# between 200 and 500 rows).
_PG_COPY_THRESHOLD = 300
_PG_STAGE_TABLE = "adsync_metrics_stage"
_PG_STAGE = f"""
CREATE TEMP TABLE {_PG_STAGE_TABLE} (
    level varchar(16), entity_id varchar(64), date date, entity_name varchar(400), spend numeric(20, 6),
    impressions bigint, clicks bigint, conversions numeric(20, 6), conversion_value numeric(20, 6),
    currency varchar(3)
) ON COMMIT DROP
"""
_PG_COPY = f"COPY {_PG_STAGE_TABLE} ({', '.join(KEY_COLUMNS + VALUE_COLUMNS)}) FROM STDIN"
_PG_WRITE_STAGED = _pg_write(source=_PG_STAGE_TABLE)
_row_values = operator.attrgetter(*KEY_COLUMNS, *VALUE_COLUMNS)

_SQLITE_UPSERT = """
INSERT INTO daily_metrics (connection_id, level, entity_id, date, {cols}, updated_at)
VALUES {{values}}
ON CONFLICT (connection_id, level, entity_id, date) DO UPDATE SET
    {sets}, updated_at = excluded.updated_at
WHERE ({tcols}) IS NOT ({ecols})
RETURNING level, entity_id, date, {cols}
""".format(
    cols=", ".join(VALUE_COLUMNS),
    sets=", ".join(f"{c} = excluded.{c}" for c in VALUE_COLUMNS),
    tcols=", ".join(f"daily_metrics.{c}" for c in VALUE_COLUMNS),
    ecols=", ".join(f"excluded.{c}" for c in VALUE_COLUMNS),
)
_SQLITE_STORED = f"""
SELECT level, entity_id, date, {", ".join(VALUE_COLUMNS)} FROM daily_metrics
WHERE connection_id = %s AND (level, entity_id, date) IN (VALUES {{keys}})
"""
_SQLITE_LEDGER = f"INSERT INTO sync_changes ({_LEDGER_COLUMNS}) VALUES {{values}}"
_SQLITE_CHUNK = 500  # 12 parameters a row stays far below SQLite's variable limit (32,766)

# How Django reads a decimal column back from SQLite (a float, rounded to 15 digits), so the
# ledger's strings are the values the ORM shows.
_SQLITE_DECIMAL_CONTEXT = decimal.Context(prec=15)
_SIX_PLACES = decimal.Decimal("0.000001")


def decimal_text(value: decimal.Decimal | float | int) -> str:
    """A decimal column's value as the ledger stores it: exact, at most six places, no trailing
    zeros ("44", "12.5", "0.333333"): what PostgreSQL's trim_scale(numeric(20,6)) prints."""
    if isinstance(value, float):
        value = _SQLITE_DECIMAL_CONTEXT.create_decimal_from_float(value)
    text = format(decimal.Decimal(value).quantize(_SIX_PLACES), "f")
    return text.rstrip("0").rstrip(".")


def _normalized(rows: Iterable[MetricRow]) -> list[MetricRow]:
    """One row per key, with names cut to the column's length.

    A platform can return one key twice (paging shifts under us): the last one wins, and the
    write must not touch a row twice. Decimals are rounded to the columns' six places by the
    database itself (the numeric(20,6) casts and staging columns below), before the comparison,
    so 12.3456789 is compared as the stored 12.345679 and is not a "change" on every sync.
    """
    by_key: dict[tuple, MetricRow] = {}
    for row in rows:
        if len(row.entity_name) > ENTITY_NAME_LENGTH:
            row = dataclasses.replace(row, entity_name=row.entity_name[:ENTITY_NAME_LENGTH])
        by_key[(row.level, row.entity_id, row.date)] = row
    return list(by_key.values())


@dataclasses.dataclass(frozen=True)
class _Ledger:
    run_id: int
    # Changes of days before this one are restatements: the day before the run's "today".
    restated_before: date


def metrics_persist_changed(
    *, connection_id: int, rows: Iterable[MetricRow], now: datetime, run: SyncRun, today: date | None = None
) -> int:
    """Insert new rows and update changed ones, each with its ledger row in `run`; return how
    many rows were written.

    A changed row of a day before yesterday is marked restated: the platform changed a value
    we already had (attribution). A new row never is: a connection's first sync backfills
    weeks of them, and that is not a restatement. "Today" is the account's today when the run
    started (sync_finish passes it); without it, the run's window_until, which is today for
    every sync but a backfill chunk (whose window ends in the past).
    """
    if run.connection_id != connection_id:
        raise ValueError(f"run {run.pk} belongs to connection {run.connection_id}, not {connection_id}")
    if run.window_until is None:
        raise ValueError(f"run {run.pk} has no window (sync_start sets it)")
    unique_rows = _normalized(rows)
    if not unique_rows:
        return 0
    ledger = _Ledger(run_id=run.pk, restated_before=(today or run.window_until) - timedelta(days=1))
    if db.vendor == "postgresql":
        return _persist_postgresql(connection_id, unique_rows, now, ledger)
    return _persist_sqlite(connection_id, unique_rows, now, ledger)


def _pg_params(connection_id: int, now: datetime, ledger: _Ledger) -> dict:
    return {
        "connection_id": connection_id,
        "now": now,
        "run_id": ledger.run_id,
        "restated_before": ledger.restated_before,
    }


def _persist_postgresql(connection_id: int, rows: list[MetricRow], now: datetime, ledger: _Ledger) -> int:
    if len(rows) > _PG_COPY_THRESHOLD:
        return _persist_postgresql_staged(connection_id, rows, now, ledger)
    columns = {name: [getattr(row, name) for row in rows] for name in KEY_COLUMNS + VALUE_COLUMNS}
    with db.cursor() as cursor:
        cursor.execute(_PG_WRITE, {**columns, **_pg_params(connection_id, now, ledger)})
        # One ledger row per row written: the statement's own row count.
        return cursor.rowcount


def _persist_postgresql_staged(connection_id: int, rows: list[MetricRow], now: datetime, ledger: _Ledger) -> int:
    with transaction.atomic(), db.cursor() as cursor:
        cursor.execute(_PG_STAGE)
        with cursor.copy(_PG_COPY) as copy:
            for row in rows:
                copy.write_row(_row_values(row))
        cursor.execute(_PG_WRITE_STAGED, _pg_params(connection_id, now, ledger))
        written = cursor.rowcount
        # ON COMMIT DROP acts only when the outermost transaction commits; a second persist in
        # the same transaction must be able to create the table again.
        cursor.execute(f"DROP TABLE {_PG_STAGE_TABLE}")
    return written


def _sqlite_text(column: str, value: object) -> str | None:
    if value is None:
        return None
    if column in DECIMAL_COLUMNS:
        if not isinstance(value, decimal.Decimal | float | int):
            value = decimal.Decimal(str(value))
        return decimal_text(value)
    return str(value)


def _persist_sqlite(connection_id: int, rows: list[MetricRow], now: datetime, ledger: _Ledger) -> int:
    ops = db.ops
    stamp = ops.adapt_datetimefield_value(now)
    written = 0
    placeholders = "(" + ", ".join(["%s"] * (2 + len(KEY_COLUMNS) + len(VALUE_COLUMNS))) + ")"
    with db.cursor() as cursor:
        for start in range(0, len(rows), _SQLITE_CHUNK):
            chunk = rows[start : start + _SQLITE_CHUNK]
            # Keyed by the date's ISO text: SQLite hands a date back as a date or as its text,
            # depending on whether the result column carries the declared type.
            fetched = {(row.level, row.entity_id, row.date.isoformat()): row for row in chunk}
            keys: list = []
            for row in chunk:
                keys += [row.level, row.entity_id, ops.adapt_datefield_value(row.date)]
            cursor.execute(_SQLITE_STORED.format(keys=", ".join(["(%s, %s, %s)"] * len(chunk))), [connection_id, *keys])
            stored = {(level, entity_id, str(day)): values for level, entity_id, day, *values in cursor.fetchall()}

            params: list = []
            for row in chunk:
                params += [connection_id, row.level, row.entity_id, ops.adapt_datefield_value(row.date)]
                params += [getattr(row, name) for name in VALUE_COLUMNS]
                params.append(stamp)
            cursor.execute(_SQLITE_UPSERT.format(values=", ".join([placeholders] * len(chunk))), params)
            returned = cursor.fetchall()
            written += len(returned)
            if not returned:
                continue

            entries: list = []
            for level, entity_id, day, *new in returned:
                key = (level, entity_id, str(day))
                row = fetched[key]
                old = stored.get(key)
                before = old if old is not None else [None] * len(VALUE_COLUMNS)
                # The same values the upsert's IS NOT compared: what it rewrote, field by field.
                diff = {
                    column: [_sqlite_text(column, was), _sqlite_text(column, now_is)]
                    for column, was, now_is in zip(VALUE_COLUMNS, before, new, strict=True)
                    if old is None or was != now_is
                }
                entries += [ledger.run_id, level, entity_id, ops.adapt_datefield_value(row.date), new[0]]
                entries += [old is None, old is not None and row.date < ledger.restated_before, json.dumps(diff)]
            cursor.execute(
                _SQLITE_LEDGER.format(values=", ".join(["(" + ", ".join(["%s"] * 8) + ")"] * len(returned))), entries
            )
    return written
