"""The REST API (DRF). The spec's three endpoints, exactly, plus list/detail, history (with each
run's change ledger), jobs and ping.

Every lookup goes through connections_for_user, so a connection in another workspace answers
404 exactly like one that does not exist.
"""

from __future__ import annotations

import math

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination, PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from connections.models import Connection, SyncTrigger
from connections.selectors import connection_get_for_user, connections_for_user
from connections.serializers import (
    ConnectionOut,
    ErrorOut,
    JobOut,
    PingOut,
    RateLimitedOut,
    SyncChangePageOut,
    SyncChangesQueryIn,
    SyncFrequencyIn,
    SyncNowOut,
    SyncRunOut,
    SyncRunsQueryIn,
    SyncStatusOut,
)
from connections.services import connection_set_frequency
from connections.status import rate_limited_message
from syncing.selectors import (
    job_get_for_user,
    sync_changes_describe,
    sync_changes_for_run,
    sync_run_changes_summary,
    sync_run_for_connection,
    sync_runs_with_changes_for_connection,
)
from syncing.services import BrokerUnavailable, RateLimited, connection_enqueue_sync

CONNECTION_ID = OpenApiParameter(
    "connection_id",
    OpenApiTypes.UUID,
    OpenApiParameter.PATH,
    description="The connection's public id. Any other value answers 404, like an id in another workspace.",
)
JOB_ID = OpenApiParameter("job_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="A sync job's id.")
RUN_ID = OpenApiParameter(
    "run_id",
    OpenApiTypes.UUID,
    OpenApiParameter.PATH,
    description="A sync run's id (`id` in the sync-runs list). A run of another connection answers 404.",
)
WWW_AUTHENTICATE = OpenApiParameter(
    "WWW-Authenticate",
    str,
    OpenApiParameter.HEADER,
    response=[401],
    required=True,
    description='The challenge, `Token realm="api"`.',
)

NOT_FOUND = OpenApiResponse(ErrorOut, description="No such connection in your workspaces.")
UNAUTHENTICATED = OpenApiResponse(ErrorOut, description="Missing or invalid credentials.")
REFUSED = OpenApiResponse(
    ErrorOut,
    description="Refused: a cookie-authenticated change from another site, or a session change without a CSRF token.",
)
# DRF's validation errors: each refused field (or non_field_errors) with its messages; a body
# that is not JSON at all gets {"detail": ...} instead.
VALIDATION_ERROR = OpenApiResponse(
    {
        "type": "object",
        "properties": {"detail": {"type": "string"}},
        "additionalProperties": {"type": "array", "items": {"type": "string"}},
    },
    description="Invalid input: the messages per field (or `detail` for a body that is not JSON).",
)
UNSUPPORTED_MEDIA_TYPE = OpenApiResponse(ErrorOut, description="The body is not `application/json`.")
# Reads: safe methods are never refused with 403, only unauthenticated (401) or not found (404).
READ_ERRORS = {401: UNAUTHENTICATED, 404: NOT_FOUND}
WRITE_ERRORS = {401: UNAUTHENTICATED, 403: REFUSED, 404: NOT_FOUND}


class ConnectionPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class SyncChangePagination(PageNumberPagination):
    # A run's changes no longer change once it has finished, so page numbers (and a count) are
    # safe here, unlike for the runs themselves.
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class SyncRunPagination(CursorPagination):
    # A cursor stays correct while new runs are added at the top, unlike page numbers.
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200
    ordering = ("-started_at", "-id")

    def decode_cursor(self, request: Request):
        # DRF trusts the position inside a cursor and filters started_at with it, so a tampered
        # cursor ("p=x") made the database layer raise (500); it is just an invalid cursor.
        cursor = super().decode_cursor(request)
        if cursor is not None and cursor.position is not None:
            try:
                # (The stubs say int; CursorPagination with a datetime ordering keeps a string.)
                valid = parse_datetime(str(cursor.position)) is not None
            except ValueError:
                valid = False
            if not valid:
                raise NotFound(self.invalid_cursor_message)
        return cursor


class ConnectionApiView(APIView):
    def get_connection(self, request: Request, connection_id: str) -> Connection:
        return connection_get_for_user(user=request.user, public_id=connection_id)

    def status_response(self, connection: Connection, serializer=SyncStatusOut, code=status.HTTP_200_OK) -> Response:
        return Response(serializer(connection, context={"now": timezone.now()}).data, status=code)


class ConnectionListView(APIView):
    # Read by drf-spectacular too, which documents the page envelope and its query parameters.
    pagination_class = ConnectionPagination

    @extend_schema(
        operation_id="connections_list",
        parameters=[WWW_AUTHENTICATE],
        responses={
            200: ConnectionOut(many=True),
            401: UNAUTHENTICATED,
            404: OpenApiResponse(ErrorOut, description="No such page."),
        },
        summary="Your connections with their sync status",
    )
    def get(self, request: Request) -> Response:
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(connections_for_user(user=request.user).order_by("name", "id"), request)
        data = ConnectionOut(page, many=True, context={"now": timezone.now()}).data
        return paginator.get_paginated_response(data)


class ConnectionDetailView(ConnectionApiView):
    @extend_schema(
        operation_id="connections_retrieve",
        parameters=[CONNECTION_ID, WWW_AUTHENTICATE],
        responses={200: ConnectionOut, **READ_ERRORS},
    )
    def get(self, request: Request, connection_id: str) -> Response:
        return self.status_response(self.get_connection(request, connection_id), ConnectionOut)


class SyncNowView(ConnectionApiView):
    @extend_schema(
        operation_id="connections_sync_now",
        request=None,
        parameters=[
            CONNECTION_ID,
            WWW_AUTHENTICATE,
            OpenApiParameter(
                "Location",
                str,
                OpenApiParameter.HEADER,
                response=[202],
                required=True,
                description="The job's URL, `/jobs/{job_id}`: poll it to follow the sync.",
            ),
            OpenApiParameter(
                "Retry-After",
                int,
                OpenApiParameter.HEADER,
                response=[429, 503],
                required=True,
                description="Seconds to wait before trying again: until the platform's throttle ends (429), "
                "or a moment for the job queue (503).",
            ),
        ],
        responses={
            202: OpenApiResponse(SyncNowOut, description="Queued, or the job already queued or running."),
            429: OpenApiResponse(
                RateLimitedOut,
                description="The platform is throttling this connection: no job was queued and nothing changed. "
                "Sync Now works again at `rate_limited_until`; scheduled syncs resume by themselves.",
            ),
            503: OpenApiResponse(ErrorOut, description="The job queue is unavailable; nothing changed."),
            **WRITE_ERRORS,
        },
        summary="Enqueue a sync job (returns at once)",
    )
    def post(self, request: Request, connection_id: str) -> Response:
        connection = self.get_connection(request, connection_id)
        now = timezone.now()
        try:
            result = connection_enqueue_sync(connection=connection, trigger=SyncTrigger.MANUAL, now=now)
        except RateLimited as exc:
            # Calling the platform now would only be throttled again and push the resume time out.
            refused = RateLimitedOut({"detail": rate_limited_message(exc.until, now), "rate_limited_until": exc.until})
            wait = max(1, math.ceil((exc.until - now).total_seconds()))
            return Response(refused.data, status=status.HTTP_429_TOO_MANY_REQUESTS, headers={"Retry-After": str(wait)})
        except BrokerUnavailable as exc:
            return Response(
                {"detail": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "5"}
            )
        body = SyncNowOut({"job_id": result.job_id, "status": result.status, "created": result.created}).data
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": f"/jobs/{result.job_id}"})


class SyncFrequencyView(ConnectionApiView):
    @extend_schema(
        operation_id="connections_sync_frequency",
        request=SyncFrequencyIn,
        parameters=[CONNECTION_ID, WWW_AUTHENTICATE],
        responses={200: SyncStatusOut, 400: VALIDATION_ERROR, **WRITE_ERRORS, 415: UNSUPPORTED_MEDIA_TYPE},
        summary="Change the sync frequency (takes effect immediately)",
    )
    def patch(self, request: Request, connection_id: str) -> Response:
        connection = self.get_connection(request, connection_id)
        data = SyncFrequencyIn(data=request.data)
        data.is_valid(raise_exception=True)
        connection = connection_set_frequency(connection=connection, frequency=data.validated_data["sync_frequency"])
        connection.refresh_from_db()
        return self.status_response(connection)


class SyncStatusView(ConnectionApiView):
    @extend_schema(
        operation_id="connections_sync_status",
        parameters=[CONNECTION_ID, WWW_AUTHENTICATE],
        responses={200: SyncStatusOut, **READ_ERRORS},
    )
    def get(self, request: Request, connection_id: str) -> Response:
        return self.status_response(self.get_connection(request, connection_id))


class SyncRunListView(ConnectionApiView):
    pagination_class = SyncRunPagination

    @extend_schema(
        operation_id="connections_sync_runs",
        parameters=[CONNECTION_ID, SyncRunsQueryIn, WWW_AUTHENTICATE],
        responses={
            200: SyncRunOut(many=True),
            400: VALIDATION_ERROR,
            401: UNAUTHENTICATED,
            404: OpenApiResponse(ErrorOut, description="No such connection in your workspaces, or an invalid cursor."),
        },
        summary="Sync history, newest first (filter by outcome, trigger, since)",
    )
    def get(self, request: Request, connection_id: str) -> Response:
        connection = self.get_connection(request, connection_id)
        # Checked after the connection: an outsider gets 404 whatever the parameters.
        query = SyncRunsQueryIn(data=request.query_params)
        query.is_valid(raise_exception=True)
        runs = sync_runs_with_changes_for_connection(connection=connection, **query.validated_data)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(runs, request)
        return paginator.get_paginated_response(SyncRunOut(page, many=True).data)


class SyncRunChangesView(ConnectionApiView):
    @extend_schema(
        operation_id="connections_sync_run_changes",
        parameters=[
            CONNECTION_ID,
            RUN_ID,
            SyncChangesQueryIn,
            OpenApiParameter("page", int, OpenApiParameter.QUERY, description="A page number (from 1)."),
            OpenApiParameter(
                "page_size",
                int,
                OpenApiParameter.QUERY,
                description=f"Changes per page (default {SyncChangePagination.page_size}, "
                f"at most {SyncChangePagination.max_page_size}).",
            ),
            WWW_AUTHENTICATE,
        ],
        responses={
            200: SyncChangePageOut,
            400: VALIDATION_ERROR,
            401: UNAUTHENTICATED,
            404: OpenApiResponse(
                ErrorOut, description="No such connection in your workspaces, no such run of it, or no such page."
            ),
        },
        summary="What one sync run changed: each metric row, old → new, restatements marked",
    )
    def get(self, request: Request, connection_id: str, run_id: str) -> Response:
        connection = self.get_connection(request, connection_id)
        run = sync_run_for_connection(connection=connection, public_id=run_id)
        query = SyncChangesQueryIn(data=request.query_params)
        query.is_valid(raise_exception=True)
        paginator = SyncChangePagination()
        page = paginator.paginate_queryset(sync_changes_for_run(run=run, **query.filters()), request, view=self)
        body = {
            "count": paginator.page.paginator.count if paginator.page is not None else 0,
            "next": paginator.get_next_link(),
            "previous": paginator.get_previous_link(),
            "run": {"run": run, "changes": sync_run_changes_summary(run=run)},
            "results": sync_changes_describe(changes=page or []),
        }
        return Response(SyncChangePageOut(body).data)


class JobDetailView(APIView):
    @extend_schema(
        operation_id="jobs_retrieve",
        parameters=[JOB_ID, WWW_AUTHENTICATE],
        responses={200: JobOut, 401: UNAUTHENTICATED, 404: OpenApiResponse(ErrorOut, description="No such job.")},
        summary="A job's state, timing and outcome (poll this to wait for a Sync Now)",
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = job_get_for_user(user=request.user, job_id=job_id)
        return Response(JobOut(job).data)


class PingView(APIView):
    """The cheapest authenticated endpoint: credentials checked, no query of its own."""

    @extend_schema(
        operation_id="ping",
        parameters=[WWW_AUTHENTICATE],
        responses={200: PingOut, 401: UNAUTHENTICATED},
        summary="Check that the API is up and your credentials work",
    )
    def get(self, request: Request) -> Response:
        return Response(PingOut({"ok": True}).data)
