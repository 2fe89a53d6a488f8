"""LOG_FORMAT=json: one JSON object per line, for log pipelines (Loki, CloudWatch, jq)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    """Time, level, logger, process and message, plus the record's `fields` (a dict passed as
    `extra={"fields": {...}}`, e.g. each finished sync's) as top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({key: value for key, value in fields.items() if key not in entry})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # default=str: a stray UUID or datetime in the fields must not lose the line.
        return json.dumps(entry, default=str, ensure_ascii=False)
