"""The REST API (DRF). The spec's three endpoints, exactly, plus list/detail, history and jobs.

Every lookup goes through connections_for_user, so a connection in another workspace answers
404 exactly like one that does not exist.
"""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
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
    SyncFrequencyIn,
    SyncNowOut,
    SyncRunOut,
    SyncStatusOut,
)
from connections.services import connection_set_frequency
from syncing.selectors import job_get_for_user, sync_runs_for_connection
from syncing.services import BrokerUnavailable, connection_enqueue_sync

NOT_FOUND = OpenApiResponse(ErrorOut, description="No such connection in your workspaces.")
UNAUTHENTICATED = OpenApiResponse(ErrorOut, description="Missing or invalid credentials.")
ERRORS = {401: UNAUTHENTICATED, 403: OpenApiResponse(ErrorOut, description="Refused."), 404: NOT_FOUND}


class ConnectionPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class SyncRunPagination(CursorPagination):
    # A cursor stays correct while new runs are added at the top, unlike page numbers.
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200
    ordering = ("-started_at", "-id")


class ConnectionApiView(APIView):
    def get_connection(self, request: Request, connection_id: str) -> Connection:
        return connection_get_for_user(user=request.user, public_id=connection_id)

    def status_response(self, connection: Connection, serializer=SyncStatusOut, code=status.HTTP_200_OK) -> Response:
        return Response(serializer(connection, context={"now": timezone.now()}).data, status=code)


class ConnectionListView(APIView):
    @extend_schema(
        operation_id="connections_list",
        responses={200: ConnectionOut(many=True), 401: UNAUTHENTICATED},
        summary="Your connections with their sync status",
    )
    def get(self, request: Request) -> Response:
        paginator = ConnectionPagination()
        page = paginator.paginate_queryset(connections_for_user(user=request.user).order_by("name", "id"), request)
        data = ConnectionOut(page, many=True, context={"now": timezone.now()}).data
        return paginator.get_paginated_response(data)


class ConnectionDetailView(ConnectionApiView):
    @extend_schema(operation_id="connections_retrieve", responses={200: ConnectionOut, **ERRORS})
    def get(self, request: Request, connection_id: str) -> Response:
        return self.status_response(self.get_connection(request, connection_id), ConnectionOut)


class SyncNowView(ConnectionApiView):
    @extend_schema(
        operation_id="connections_sync_now",
        request=None,
        responses={
            202: OpenApiResponse(SyncNowOut, description="Queued, or the job already queued or running."),
            503: OpenApiResponse(ErrorOut, description="The job queue is unavailable; nothing changed."),
            **ERRORS,
        },
        summary="Enqueue a sync job (returns at once)",
    )
    def post(self, request: Request, connection_id: str) -> Response:
        connection = self.get_connection(request, connection_id)
        try:
            result = connection_enqueue_sync(connection=connection, trigger=SyncTrigger.MANUAL)
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
        responses={200: SyncStatusOut, 400: OpenApiResponse(description="Invalid frequency or fields."), **ERRORS},
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
    @extend_schema(operation_id="connections_sync_status", responses={200: SyncStatusOut, **ERRORS})
    def get(self, request: Request, connection_id: str) -> Response:
        return self.status_response(self.get_connection(request, connection_id))


class SyncRunListView(ConnectionApiView):
    @extend_schema(
        operation_id="connections_sync_runs",
        responses={200: SyncRunOut(many=True), **ERRORS},
        summary="Sync history, newest first",
    )
    def get(self, request: Request, connection_id: str) -> Response:
        connection = self.get_connection(request, connection_id)
        paginator = SyncRunPagination()
        page = paginator.paginate_queryset(sync_runs_for_connection(connection=connection), request)
        return paginator.get_paginated_response(SyncRunOut(page, many=True).data)


class JobDetailView(APIView):
    @extend_schema(
        operation_id="jobs_retrieve",
        responses={200: JobOut, 401: UNAUTHENTICATED, 404: OpenApiResponse(ErrorOut, description="No such job.")},
        summary="A job's state, timing and outcome (poll this to wait for a Sync Now)",
    )
    def get(self, request: Request, job_id: str) -> Response:
        job = job_get_for_user(user=request.user, job_id=job_id)
        return Response(JobOut(job).data)
