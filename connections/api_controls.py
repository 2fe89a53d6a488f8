"""The REST API's controls beyond the spec: pause and resume (the frequency is kept), cancel a
queued or running sync, stop or resume every automated sync of a workspace, and re-sync a date
range (backfills).

Same rules as connections.api: every lookup is scoped to the user's workspaces (404 otherwise),
UUIDs in URLs. Pause and resume answer the sync status; cancel its result with the sync status;
a workspace's stop and resume the counts; backfills the backfill.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from connections.api import (
    CONNECTION_ID,
    UNAUTHENTICATED,
    VALIDATION_ERROR,
    WRITE_ERRORS,
    WWW_AUTHENTICATE,
    ConnectionApiView,
)
from connections.selectors import connections_for_user, workspace_get_for_user
from connections.serializers import ErrorOut, SyncStatusOut, UTCDateTimeField
from connections.services import connection_pause, connection_resume, workspace_syncs_resume, workspace_syncs_stop
from syncing.models import Backfill, BackfillStatus
from syncing.selectors import backfill_get, backfills_for_connection
from syncing.services import CancelResult, backfill_cancel, backfill_request, connection_cancel_sync

WORKSPACE_ID = OpenApiParameter(
    "workspace_id",
    OpenApiTypes.UUID,
    OpenApiParameter.PATH,
    description="The workspace's public id (`workspace_id` of its connections). Any other value answers 404.",
)

CancelOut = inline_serializer(
    "CancelOut",
    fields={
        "result": serializers.ChoiceField(
            choices=CancelResult.choices,
            help_text="`cancelled`: it was queued and will not run; `cancelling`: it is running and stops before "
            "its next platform call, writing nothing; `nothing`: no sync was queued or running.",
        ),
        "sync_status": SyncStatusOut(),
    },
)
WorkspaceSyncsOut = inline_serializer(
    "WorkspaceSyncsOut",
    fields={
        "changed": serializers.IntegerField(help_text="How many connections were paused (or resumed)."),
        "paused": serializers.IntegerField(help_text="How many of the workspace's connections are paused now."),
    },
)


class PauseView(ConnectionApiView):
    @extend_schema(
        operation_id="connections_pause",
        request=None,
        parameters=[CONNECTION_ID, WWW_AUTHENTICATE],
        responses={200: SyncStatusOut, **WRITE_ERRORS},
        summary="Pause automated syncs, keeping the frequency (Sync Now still works)",
    )
    def post(self, request: Request, connection_id: str) -> Response:
        connection = self.get_connection(request, connection_id)
        connection_pause(connection=connection)
        return self.status_response(connection)


class ResumeView(ConnectionApiView):
    @extend_schema(
        operation_id="connections_resume",
        request=None,
        parameters=[CONNECTION_ID, WWW_AUTHENTICATE],
        responses={200: SyncStatusOut, **WRITE_ERRORS},
        summary="Resume automated syncs at the kept frequency (due now if its interval has passed)",
    )
    def post(self, request: Request, connection_id: str) -> Response:
        connection = self.get_connection(request, connection_id)
        connection_resume(connection=connection)
        return self.status_response(connection)


class CancelView(ConnectionApiView):
    @extend_schema(
        operation_id="connections_cancel",
        request=None,
        parameters=[CONNECTION_ID, WWW_AUTHENTICATE],
        responses={200: CancelOut, **WRITE_ERRORS},
        summary="Cancel the queued or running sync (a running one stops before its next platform call)",
    )
    def post(self, request: Request, connection_id: str) -> Response:
        connection = self.get_connection(request, connection_id)
        now = timezone.now()
        result = connection_cancel_sync(connection=connection, now=now)
        connection.refresh_from_db()
        body = {"result": result, "sync_status": SyncStatusOut(connection, context={"now": now}).data}
        return Response(body, status=status.HTTP_200_OK)


class _WorkspaceSyncsView(APIView):
    def respond(self, request: Request, workspace_id: str, *, stop: bool) -> Response:
        workspace = workspace_get_for_user(user=request.user, public_id=workspace_id)
        now = timezone.now()
        changed = (workspace_syncs_stop if stop else workspace_syncs_resume)(workspace=workspace, now=now)
        paused = workspace.connections.filter(paused_at__isnull=False).count()
        return Response({"changed": changed, "paused": paused})


WORKSPACE_ERRORS = {
    401: UNAUTHENTICATED,
    403: WRITE_ERRORS[403],
    404: OpenApiResponse(ErrorOut, description="No such workspace among yours."),
}


class WorkspaceStopSyncsView(_WorkspaceSyncsView):
    @extend_schema(
        operation_id="workspaces_stop_syncs",
        request=None,
        parameters=[WORKSPACE_ID, WWW_AUTHENTICATE],
        responses={200: WorkspaceSyncsOut, **WORKSPACE_ERRORS},
        summary="Stop all automated syncs of a workspace (frequencies kept; Sync Now still works)",
    )
    def post(self, request: Request, workspace_id: str) -> Response:
        return self.respond(request, workspace_id, stop=True)


class WorkspaceResumeSyncsView(_WorkspaceSyncsView):
    @extend_schema(
        operation_id="workspaces_resume_syncs",
        request=None,
        parameters=[WORKSPACE_ID, WWW_AUTHENTICATE],
        responses={200: WorkspaceSyncsOut, **WORKSPACE_ERRORS},
        summary="Undo “Stop all automated syncs” (connections paused on their own stay paused)",
    )
    def post(self, request: Request, workspace_id: str) -> Response:
        return self.respond(request, workspace_id, stop=False)


# --- backfills ----------------------------------------------------------------------------------


class BackfillIn(serializers.Serializer):
    since = serializers.DateField(help_text="The first day to re-sync (the ad account's days).")
    until = serializers.DateField(help_text="The last day to re-sync, at most today in the account's time zone.")


class BackfillOut(serializers.Serializer):
    id = serializers.UUIDField(source="public_id")
    since = serializers.DateField()
    until = serializers.DateField()
    status = serializers.ChoiceField(choices=BackfillStatus.choices)
    days_done = serializers.IntegerField()
    days_total = serializers.IntegerField()
    progress_text = serializers.CharField(help_text='For example "12 of 90 days".')
    not_before = UTCDateTimeField(
        allow_null=True, help_text="The earliest its next chunk may run (a budget or a throttle pushes it)."
    )
    last_error = serializers.CharField(allow_blank=True)
    created_at = UTCDateTimeField()
    finished_at = UTCDateTimeField(allow_null=True)


BACKFILL_ID = OpenApiParameter(
    "backfill_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="A backfill's id (from the list)."
)


class BackfillListView(ConnectionApiView):
    @extend_schema(
        operation_id="connections_backfills_list",
        parameters=[CONNECTION_ID, WWW_AUTHENTICATE],
        responses={200: BackfillOut(many=True), 401: UNAUTHENTICATED, 404: WRITE_ERRORS[404]},
        summary="The connection's backfills (re-syncs of a date range), newest first",
    )
    def get(self, request: Request, connection_id: str) -> Response:
        connection = self.get_connection(request, connection_id)
        return Response(BackfillOut(backfills_for_connection(connection=connection)[:50], many=True).data)

    @extend_schema(
        operation_id="connections_backfills_create",
        request=BackfillIn,
        parameters=[CONNECTION_ID, WWW_AUTHENTICATE],
        responses={
            201: OpenApiResponse(BackfillOut, description="Started, or the same range already in progress."),
            400: OpenApiResponse(
                VALIDATION_ERROR.response,
                description="A date that is not one (per field), or a range the platform does not keep or with "
                "another in progress (`detail`).",
            ),
            **WRITE_ERRORS,
        },
        summary="Re-sync a date range: chunks within the rate budget, newest first, progress in days",
    )
    def post(self, request: Request, connection_id: str) -> Response:
        connection = self.get_connection(request, connection_id)
        data = BackfillIn(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            backfill = backfill_request(connection=connection, now=timezone.now(), **data.validated_data)
        except ValidationError as exc:
            return Response({"detail": exc.messages[0]}, status=status.HTTP_400_BAD_REQUEST)
        return Response(BackfillOut(backfill).data, status=status.HTTP_201_CREATED)


class BackfillCancelView(ConnectionApiView):
    @extend_schema(
        operation_id="connections_backfills_cancel",
        request=None,
        parameters=[CONNECTION_ID, BACKFILL_ID, WWW_AUTHENTICATE],
        responses={200: BackfillOut, 401: UNAUTHENTICATED, 403: WRITE_ERRORS[403], 404: WRITE_ERRORS[404]},
        summary="Cancel a backfill (the days already fetched stay; a running chunk writes nothing)",
    )
    def post(self, request: Request, connection_id: str, backfill_id: str) -> Response:
        connection = self.get_connection(request, connection_id)
        connections = connections_for_user(user=request.user).filter(pk=connection.pk)
        backfill: Backfill = backfill_get(connections=connections, public_id=backfill_id)
        backfill_cancel(backfill=backfill, now=timezone.now())
        backfill.refresh_from_db()
        return Response(BackfillOut(backfill).data)
