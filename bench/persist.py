"""Persisting fetched metric rows: syncing.persist.metrics_persist_changed (with its change
ledger) vs per-row update_or_create and vs a COPY + MERGE reference written here.

    .venv/bin/python bench/persist.py [--campaigns 100] [--days 100] [--repeats 7]

10,000 fetched rows (100 campaigns x 100 days) of which 1 % and then 10 % differ from what is
stored. Each implementation runs inside transaction.atomic() on the same stored state, which
is restored (untimed) before every run. Prints, with PASS/MISS:
- ours vs per-row DailyMetric.objects.update_or_create: >= 200x faster (update_or_create is
  timed on a 1,000-row subset and scaled x10, as printed);
- ours vs the reference (COPY into a temp table + one MERGE ... WHEN MATCHED AND (...) IS
  DISTINCT FROM (...)): ours <= 1.5x the reference, at both change rates. Ours also writes the
  change ledger (a sync_changes row per row written, with old and new values); the reference
  writes none, so the ratio includes the ledger's whole cost;
and checks that ours and the reference write the same number of rows and leave the same table,
and that ours left one ledger row per row written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import uuid
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _setup
from _setup import db, heading, measure, median, ms, out, spread, verdict
from django.db import transaction
from django.utils import timezone

from connections.models import Connection
from syncing.models import DailyMetric, SyncChange, SyncRun
from syncing.persist import KEY_COLUMNS, VALUE_COLUMNS, metrics_persist_changed
from syncing.providers.base import MetricRow

TARGET_VS_PER_ROW = 200.0
TARGET_VS_REFERENCE = 1.5
PER_ROW_SUBSET = 1_000
OTHER_CONNECTIONS = 9  # other accounts' rows in the table, so it is not just the one account


# --- data -----------------------------------------------------------------------------------


def rows_fetched(*, account: str, campaigns: int, days: int, until: date) -> list[MetricRow]:
    """A deterministic fetch: campaigns x days rows, like a lookback sync of a big account."""
    rows = []
    for c in range(campaigns):
        for d in range(days):
            day = until - timedelta(days=d)
            seed = (c * 7919 + d * 104_729) % 100_000
            spend = Decimal(seed % 50_000) / 100 + Decimal("10.00")
            impressions = 1_000 + seed * 3
            clicks = impressions // 50
            conversions = Decimal(clicks // 20)
            rows.append(
                MetricRow(
                    level="campaign",
                    entity_id=f"{account}-c{c + 1}",
                    date=day,
                    entity_name=f"Campaign {c + 1}",
                    spend=spend,
                    impressions=impressions,
                    clicks=clicks,
                    conversions=conversions,
                    conversion_value=(conversions * Decimal("42.50")).quantize(Decimal("0.01")),
                    currency="USD",
                )
            )
    return rows


def rows_changed(rows: list[MetricRow], fraction: float) -> tuple[list[MetricRow], int]:
    """The same rows with an evenly spread `fraction` of them restated (spend and counts up)."""
    step = round(1 / fraction)
    changed = []
    count = 0
    for index, row in enumerate(rows):
        if index % step == step // 2:
            row = dataclasses.replace(
                row, spend=row.spend + Decimal("1.25"), impressions=row.impressions + 17, clicks=row.clicks + 1
            )
            count += 1
        changed.append(row)
    return changed, count


def metrics_copy(connection_id: int, rows: list[MetricRow], updated_at: datetime) -> None:
    names = KEY_COLUMNS + VALUE_COLUMNS
    fixed = {"connection_id": connection_id, "updated_at": updated_at}
    _setup.model_copy(DailyMetric, ({**fixed, **{n: getattr(row, n) for n in names}} for row in rows))


def sync_run_create(connection_id: int, *, until: date) -> SyncRun:
    """A run whose "today" is the day after the last fetched day, as a sync's would be."""
    return SyncRun.objects.create(
        connection_id=connection_id,
        job_id=uuid.uuid4(),
        trigger="scheduled",
        window="lookback",
        window_since=until - timedelta(days=100),
        window_until=until + timedelta(days=1),
        started_at=timezone.now(),
    )


def ledger_copy(run: SyncRun, rows: list[MetricRow]) -> None:
    """Other runs' ledger rows, so that ours is written into a table that is not empty."""
    diff = json.dumps({"clicks": ["1", "2"]})
    fixed = {"run_id": run.pk, "added": False, "restated": True, "diff": diff}
    names = ("level", "entity_id", "date", "entity_name")
    _setup.model_copy(SyncChange, ({**fixed, **{n: getattr(row, n) for n in names}} for row in rows))


def ledger_state(run: SyncRun) -> tuple[int, int]:
    """Ledger rows of the run, and how many of them are marked restated."""
    changes = SyncChange.objects.filter(run=run)
    return changes.count(), changes.filter(restated=True).count()


def table_state(connection_id: int) -> tuple[int, str]:
    """Row count and a checksum of every stored column of the connection's rows."""
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), md5(string_agg(concat_ws('|', level, entity_id, date, entity_name, spend, impressions, "
            "clicks, conversions, conversion_value, currency, updated_at), ',' ORDER BY level, entity_id, date)) "
            "FROM daily_metrics WHERE connection_id = %s",
            [connection_id],
        )
        return cursor.fetchone()


def values_state(connection_id: int, keys: list[tuple]) -> dict[tuple, tuple]:
    """The stored values (not updated_at) of some keys, to check the per-row implementation."""
    found = {}
    queryset = DailyMetric.objects.filter(connection_id=connection_id, entity_id__in={key[1] for key in keys})
    for values in queryset.values_list(*KEY_COLUMNS, *VALUE_COLUMNS):
        key = values[: len(KEY_COLUMNS)]
        if key in keys:
            found[key] = values[len(KEY_COLUMNS) :]
    return found


# --- the implementations ----------------------------------------------------------------------


def persist_ours(connection_id: int, rows: list[MetricRow], now: datetime, run: SyncRun) -> int:
    with transaction.atomic():
        return metrics_persist_changed(connection_id=connection_id, rows=rows, now=now, run=run)


def persist_per_row(connection_id: int, rows: list[MetricRow], now: datetime, run: SyncRun | None = None) -> int:
    """The obvious ORM code: one update_or_create per fetched row (it rewrites every row)."""
    written = 0
    with transaction.atomic():
        for row in rows:
            DailyMetric.objects.update_or_create(
                connection_id=connection_id,
                level=row.level,
                entity_id=row.entity_id,
                date=row.date,
                defaults={**{name: getattr(row, name) for name in VALUE_COLUMNS}, "updated_at": now},
            )
            written += 1
    return written


_REFERENCE_STAGE = """
CREATE TEMP TABLE bench_metrics_stage (
    level varchar(16), entity_id varchar(64), date date, entity_name varchar(400), spend numeric(20, 6),
    impressions bigint, clicks bigint, conversions numeric(20, 6), conversion_value numeric(20, 6), currency varchar(3)
) ON COMMIT DROP
"""
_REFERENCE_MERGE = """
MERGE INTO daily_metrics AS t
USING bench_metrics_stage AS s
ON t.connection_id = %(connection_id)s AND t.level = s.level AND t.entity_id = s.entity_id AND t.date = s.date
WHEN MATCHED AND ({tcols}) IS DISTINCT FROM ({scols}) THEN
    UPDATE SET {sets}, updated_at = %(now)s
WHEN NOT MATCHED THEN
    INSERT (connection_id, level, entity_id, date, {cols}, updated_at)
    VALUES (%(connection_id)s, s.level, s.entity_id, s.date, {scols}, %(now)s)
""".format(
    cols=", ".join(VALUE_COLUMNS),
    tcols=", ".join(f"t.{c}" for c in VALUE_COLUMNS),
    scols=", ".join(f"s.{c}" for c in VALUE_COLUMNS),
    sets=", ".join(f"{c} = s.{c}" for c in VALUE_COLUMNS),
)


def persist_reference(connection_id: int, rows: list[MetricRow], now: datetime, run: SyncRun | None = None) -> int:
    """COPY the fetched rows into a temp table, then one MERGE that skips unchanged rows."""
    names = KEY_COLUMNS + VALUE_COLUMNS
    with transaction.atomic(), db.cursor() as cursor:
        cursor.execute(_REFERENCE_STAGE)
        with cursor.copy(f"COPY bench_metrics_stage ({', '.join(names)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([getattr(row, name) for name in names])
        cursor.execute(_REFERENCE_MERGE, {"connection_id": connection_id, "now": now})
        return cursor.rowcount


# --- the benchmark ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaigns", type=int, default=100)
    parser.add_argument("--days", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7, help="runs of ours and of the reference, alternating")
    parser.add_argument("--per-row-repeats", type=int, default=5)
    args = parser.parse_args(argv)
    total = args.campaigns * args.days

    heading(f"Persisting {total:,} fetched metric rows ({_setup.machine_note()})")
    _setup.tables_reset()
    workspace = _setup.workspace_get()
    until = date(2026, 11, 27)
    stored_at = timezone.now() - timedelta(hours=1)
    accounts = [
        Connection.objects.create(workspace=workspace, provider="demo", external_account_id=f"persist-{i}", name=str(i))
        for i in range(OTHER_CONNECTIONS + 1)
    ]
    target = accounts[0]
    base = rows_fetched(account="acct", campaigns=args.campaigns, days=args.days, until=until)
    for other in accounts[1:]:
        metrics_copy(other.pk, base, stored_at)
        ledger_copy(sync_run_create(other.pk, until=until), base)
    run = sync_run_create(target.pk, until=until)
    out(f"table: {len(accounts) * total:,} rows over {len(accounts)} connections; the synced one holds {total:,}")
    out(f"ledger: {OTHER_CONNECTIONS * total:,} rows of other runs")

    def restore() -> None:
        SyncChange.objects.filter(run=run).delete()
        DailyMetric.objects.filter(connection_id=target.pk).delete()
        metrics_copy(target.pk, base, stored_at)
        _setup.vacuum_analyze("daily_metrics", "sync_changes")

    results: dict = {"ok": True}
    for fraction in (0.01, 0.10):
        fetched, expected = rows_changed(base, fraction)
        label = f"{fraction:.0%} changed ({expected:,} rows)"
        now = timezone.now()

        # Ours and the reference alternate run by run (restoring the table before each), so a
        # change in the machine's load affects both alike; the per-row one runs afterwards.
        implementations = {"ours": persist_ours, "reference": persist_reference}
        times: dict[str, list[float]] = {name: [] for name in implementations}
        written: dict[str, set[int]] = {name: set() for name in implementations}
        states: dict[str, tuple] = {}
        ledgers: set[tuple[int, int]] = set()
        for index in range(1 + args.repeats):
            for name, fn in implementations.items():
                restore()
                seconds, count = _setup.timed(lambda fn=fn, rows=fetched, now=now: fn(target.pk, rows, now, run))
                written[name].add(count)
                if index:  # the first round warms up
                    times[name].append(seconds)
                states[name] = table_state(target.pk)
                if name == "ours":
                    ledgers.add(ledger_state(run))
        ours_times, reference_times = times["ours"], times["reference"]
        outcomes = {name: (written[name], states[name]) for name in implementations}

        subset = fetched[:PER_ROW_SUBSET]
        per_row_times, _ = measure(
            lambda subset=subset, now=now: persist_per_row(target.pk, subset, now),
            repeats=args.per_row_repeats,
            warmup=1,
            setup=restore,
        )
        subset_values = values_state(target.pk, [(r.level, r.entity_id, r.date) for r in subset])
        restore()

        ours_written, ours_state = outcomes["ours"]
        reference_written, reference_state = outcomes["reference"]
        same = ours_written == reference_written == {expected} and ours_state == reference_state
        # Every changed day but the last fetched one (yesterday to the run) is a restatement.
        restated = sum(1 for r, f in zip(base, fetched, strict=True) if r != f and r.date < until)
        ledger_ok = ledgers == {(expected, restated)}
        per_row_ok = all(
            subset_values[(r.level, r.entity_id, r.date)] == tuple(getattr(r, n) for n in VALUE_COLUMNS) for r in subset
        )
        ours, reference = median(ours_times), median(reference_times)
        per_row = median(per_row_times) * total / len(subset)
        vs_per_row = per_row / ours
        vs_reference = ours / reference

        out()
        out(f"{label}:")
        out(f"  ours (metrics_persist_changed):   {spread(ours_times)}; rows written {ours_written}")
        out(f"  reference (COPY + MERGE):         {spread(reference_times)}; rows written {reference_written}")
        out(
            f"  per-row update_or_create, {len(subset):,} rows: {spread(per_row_times)}; "
            f"x{total // len(subset)} = {ms(per_row)} for {total:,} (rewrites every row)"
        )
        out(
            f"  {verdict(same)}  ours and the reference wrote {expected:,} rows each and left identical tables "
            f"({ours_state[0]:,} rows, md5 {ours_state[1][:12]}"
            + ("" if ours_state == reference_state else f" vs {reference_state[1][:12]}")
            + ")"
        )
        out(
            f"  {verdict(ledger_ok)}  ours left one ledger row per row written, {restated:,} of them restated "
            f"(found {sorted(ledgers)})"
        )
        out(f"  {verdict(per_row_ok)}  update_or_create left the same values on its {len(subset):,}-row subset")
        out(
            f"  {verdict(vs_per_row >= TARGET_VS_PER_ROW)}  ours {ms(ours)} vs per-row {ms(per_row)} (scaled): "
            f"{vs_per_row:,.0f}x faster (target >= {TARGET_VS_PER_ROW:.0f}x)"
        )
        out(
            f"  {verdict(vs_reference <= TARGET_VS_REFERENCE)}  ours {ms(ours)} vs reference {ms(reference)}: "
            f"{vs_reference:.2f}x the reference (target <= {TARGET_VS_REFERENCE}x)"
        )
        results[f"{fraction:.0%}"] = {"ours": ours, "reference": reference, "per_row_scaled": per_row}
        results["ok"] = results["ok"] and same and per_row_ok and ledger_ok
        results["ok"] = results["ok"] and vs_per_row >= TARGET_VS_PER_ROW and vs_reference <= TARGET_VS_REFERENCE
    _setup.tables_reset()
    return results


if __name__ == "__main__":
    main()
