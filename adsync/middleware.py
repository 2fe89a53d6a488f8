"""A database that cannot be reached answers 503 with Retry-After, not a 500.

While PostgreSQL restarts or is down, every query raises OperationalError (or InterfaceError on
a connection already closed). Django would answer its generic 500; this middleware answers what
it is: JSON {"detail": ...} on the API, a short HTML page everywhere else. The API is told apart
by its path (connections/urls.py and the schema views), never by the Accept header, so a client
gets the same kind of answer here as from every other error of the same URL.

DRF's exception handler leaves these errors alone and re-raises them, so they reach
process_exception like any view's. The page is plain HTML with no template context: rendering
the usual layout would ask the database for the signed-in user again.
"""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

logger = logging.getLogger(__name__)

API_PREFIXES = ("/connections/", "/jobs/", "/api/")
DETAIL = "The database is unavailable; try again in a moment."
RETRY_AFTER_SECONDS = 5
PAGE = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>AdSync is unavailable</title></head>
<body><main><h1>AdSync is unavailable</h1><p>{DETAIL}</p></main></body>
</html>
"""


def database_unavailable_response(request: HttpRequest) -> HttpResponse:
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if request.path.startswith(API_PREFIXES):
        return JsonResponse({"detail": DETAIL}, status=503, headers=headers)
    return HttpResponse(PAGE, status=503, headers=headers)


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        # One line, not a traceback per request: an outage would flood the log.
        first_line = str(exception).strip().partition("\n")[0]
        logger.warning("Database unavailable (503) for %s %s: %s", request.method, request.path, first_line)
        return database_unavailable_response(request)
