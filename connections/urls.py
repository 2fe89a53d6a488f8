from django.urls import path

from connections import api, api_controls

# The spec's paths, without trailing slashes, exactly as its curl examples call them.
urlpatterns = [
    path("connections/", api.ConnectionListView.as_view(), name="api-connections"),
    path("connections/<str:connection_id>", api.ConnectionDetailView.as_view(), name="api-connection"),
    path("connections/<str:connection_id>/sync-now", api.SyncNowView.as_view(), name="api-sync-now"),
    path("connections/<str:connection_id>/sync-frequency", api.SyncFrequencyView.as_view(), name="api-sync-frequency"),
    path("connections/<str:connection_id>/sync-status", api.SyncStatusView.as_view(), name="api-sync-status"),
    path("connections/<str:connection_id>/sync-runs", api.SyncRunListView.as_view(), name="api-sync-runs"),
    path(
        "connections/<str:connection_id>/sync-runs/<str:run_id>/changes",
        api.SyncRunChangesView.as_view(),
        name="api-sync-run-changes",
    ),
    path("connections/<str:connection_id>/pause", api_controls.PauseView.as_view(), name="api-pause"),
    path("connections/<str:connection_id>/resume", api_controls.ResumeView.as_view(), name="api-resume"),
    path("connections/<str:connection_id>/cancel", api_controls.CancelView.as_view(), name="api-cancel"),
    path("connections/<str:connection_id>/backfills", api_controls.BackfillListView.as_view(), name="api-backfills"),
    path(
        "connections/<str:connection_id>/backfills/<str:backfill_id>/cancel",
        api_controls.BackfillCancelView.as_view(),
        name="api-backfill-cancel",
    ),
    path(
        "workspaces/<str:workspace_id>/stop-syncs",
        api_controls.WorkspaceStopSyncsView.as_view(),
        name="api-workspace-stop-syncs",
    ),
    path(
        "workspaces/<str:workspace_id>/resume-syncs",
        api_controls.WorkspaceResumeSyncsView.as_view(),
        name="api-workspace-resume-syncs",
    ),
    path("jobs/<str:job_id>", api.JobDetailView.as_view(), name="api-job"),
    path("api/ping", api.PingView.as_view(), name="api-ping"),
]
