from django.urls import path

from connections import api

# The spec's paths, without trailing slashes, exactly as its curl examples call them.
urlpatterns = [
    path("connections/", api.ConnectionListView.as_view(), name="api-connections"),
    path("connections/<str:connection_id>", api.ConnectionDetailView.as_view(), name="api-connection"),
    path("connections/<str:connection_id>/sync-now", api.SyncNowView.as_view(), name="api-sync-now"),
    path("connections/<str:connection_id>/sync-frequency", api.SyncFrequencyView.as_view(), name="api-sync-frequency"),
    path("connections/<str:connection_id>/sync-status", api.SyncStatusView.as_view(), name="api-sync-status"),
    path("connections/<str:connection_id>/sync-runs", api.SyncRunListView.as_view(), name="api-sync-runs"),
    path("jobs/<str:job_id>", api.JobDetailView.as_view(), name="api-job"),
    path("api/ping", api.PingView.as_view(), name="api-ping"),
]
