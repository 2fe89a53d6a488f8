from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.shortcuts import redirect
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from connections import views
from syncing import views as ops_views

urlpatterns = [
    path("", lambda request: redirect("settings")),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("settings", views.settings_page, name="settings"),
    path("settings/status", views.settings_status, name="settings-status"),
    path(
        "settings/connections/<str:connection_id>/frequency",
        views.connection_frequency_update,
        name="settings-frequency",
    ),
    path("settings/connections/<str:connection_id>/sync-now", views.connection_sync_now, name="settings-sync-now"),
    path("settings/connections/<str:connection_id>/pause", views.connection_pause_view, name="settings-pause"),
    path("settings/connections/<str:connection_id>/resume", views.connection_resume_view, name="settings-resume"),
    path("settings/connections/<str:connection_id>/cancel", views.connection_cancel_view, name="settings-cancel"),
    path("settings/connections/<str:connection_id>/backfill", views.connection_backfill_view, name="settings-backfill"),
    path(
        "settings/connections/<str:connection_id>/backfills/<str:backfill_id>/cancel",
        views.backfill_cancel_view,
        name="settings-backfill-cancel",
    ),
    path("settings/connections/<str:connection_id>/runs", views.connection_runs, name="settings-runs"),
    path(
        "settings/connections/<str:connection_id>/runs/<str:run_id>",
        views.connection_run_detail,
        name="settings-run",
    ),
    path("settings/workspaces/<str:workspace_id>/stop-syncs", views.workspace_stop_syncs, name="settings-stop-syncs"),
    path(
        "settings/workspaces/<str:workspace_id>/resume-syncs",
        views.workspace_resume_syncs,
        name="settings-resume-syncs",
    ),
    path("settings/alerts", include("alerts.urls")),
    path("admin/", admin.site.urls),
    # Browsers ask for /favicon.ico wherever a page names no icon (the API's JSON, the docs).
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    path("healthz", ops_views.healthz, name="healthz"),
    path("readyz", ops_views.readyz, name="readyz"),
    path("metrics", ops_views.metrics, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api-auth/", include("rest_framework.urls")),
    path("connect/", include("connections.connect_urls")),
    path("", include("connections.urls")),
]
