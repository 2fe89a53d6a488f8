"""The API's JSON parser: DRF's, refusing with a 400 the bodies that used to reach a 500.

DRF's parser lets two kinds of body through to a 500: nesting deep enough that json raises
RecursionError (not a ValueError, so DRF does not catch it), and a lone surrogate escape
("\\ud800"), which parses into a string that no UTF-8 encoder accepts, so the JSON renderer fails
on the first error message that echoes it (an invalid choice, an unknown field). This parser
refuses both before any serializer sees the data. The size limit is Django's
DATA_UPLOAD_MAX_MEMORY_SIZE, which DRF enforces when it reads request.body for a JSONParser; the
exception handler below answers it as a JSON 400 rather than Django's HTML error page.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework import parsers
from rest_framework.exceptions import ParseError
from rest_framework.utils import json
from rest_framework.views import exception_handler as drf_exception_handler

# Far more than any body of this API has (its objects are flat); json itself gives up near 1,000.
MAX_DEPTH = 32
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _too_big() -> ParseError:
    return ParseError(f"The body is larger than the limit of {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes.")


TOO_DEEP = f"JSON parse error - the body is nested too deeply (more than {MAX_DEPTH} levels of arrays and objects)."
LONE_SURROGATE = (
    "JSON parse error - the body holds a lone surrogate (a \\ud800 to \\udfff escape that is not part of a pair), "
    "which is not valid Unicode."
)


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        # DRF's own helper (rest_framework/parsers.py); djangorestframework-stubs 3.18.1 does not declare it.
        encoding = parsers.get_encoding(parser_context or {})  # type: ignore[attr-defined]
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        # DRF hands over request.body, already held to the limit; a raw stream would not be.
        raw = stream.read() if limit is None else stream.read(limit + 1)
        if limit is not None and len(raw) > limit:
            raise _too_big()
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            byte = f"0x{exc.object[exc.start]:02x} at position {exc.start}"
            raise ParseError(
                f"JSON parse error - the body is not valid {encoding}: byte {byte} ({exc.reason})."
            ) from None
        try:
            data = json.loads(text, parse_constant=json.strict_constant if self.strict else None)
        except RecursionError:
            raise ParseError(TOO_DEEP) from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        # A lone surrogate can only come from a \\uXXXX escape: UTF-8 cannot encode one.
        _check(data, surrogates=_SURROGATE_ESCAPE.search(text) is not None)
        return data


def _check(data: object, *, surrogates: bool) -> None:
    """Refuse nesting deeper than MAX_DEPTH and, if surrogates, strings (keys too) holding a lone one.

    Iterative, so that checking deep data cannot itself run out of stack; only containers are
    stacked, which keeps a 2.5 MB array of numbers to a fraction of a second.
    """
    if surrogates and isinstance(data, str) and _SURROGATE.search(data):
        raise ParseError(LONE_SURROGATE)
    stack = [(data, 1)] if isinstance(data, dict | list) else []
    while stack:
        container, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ParseError(TOO_DEEP)
        for value in [*container, *container.values()] if isinstance(container, dict) else container:
            if isinstance(value, dict | list):
                stack.append((value, depth + 1))
            elif surrogates and isinstance(value, str) and _SURROGATE.search(value):
                raise ParseError(LONE_SURROGATE)


def exception_handler(exc, context):
    """DRF's handler, plus a body over DATA_UPLOAD_MAX_MEMORY_SIZE as a JSON 400 like any bad body.

    Django raises RequestDataTooBig when DRF reads request.body; left alone it became Django's HTML
    400 page. A database that is down is not handled here: DRF re-raises it, and
    adsync.middleware answers 503.
    """
    if isinstance(exc, RequestDataTooBig):
        exc = _too_big()
    return drf_exception_handler(exc, context)
