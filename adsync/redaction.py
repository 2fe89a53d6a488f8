"""Blank out credentials in text that may reach a log line or an error message.

The Graph API takes its token in the query string, so every URL that urllib3 (under the
facebook-business SDK) or httpx (the connect flows) logs at DEBUG carries one. RedactTokens is
installed on those loggers by settings.LOGGING; this module imports nothing of Django or of the
apps, because logging is configured before the apps are loaded.
"""

from __future__ import annotations

import logging
import re

_SECRET_NAMES = r"access_token|appsecret_proof|client_secret|fb_exchange_token|refresh_token|code"
# name=value in a URL or a form body.
_IN_QUERY = re.compile(rf"\b({_SECRET_NAMES})=[^&\s\"']+")
# 'name': 'value' or "name": "value" in a dict's repr or in JSON.
_IN_MAPPING = re.compile(rf"""(["']({_SECRET_NAMES})["']\s*:\s*)(["'])[^"']*\3""")


def redact(text: str) -> str:
    """Blank out credentials that a URL, a form, a dict or JSON in `text` may carry."""
    text = _IN_QUERY.sub(r"\1=[redacted]", text)
    return _IN_MAPPING.sub(r"\1\3[redacted]\3", text)


class RedactTokens(logging.Filter):
    """Redacts each record's message; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
