from django.contrib import admin

from syncing.models import Backfill, DailyMetric, PlatformScope, SyncRun


class ReadOnlyAdmin(admin.ModelAdmin):
    """History and metrics are written by the engine only."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(SyncRun)
class SyncRunAdmin(ReadOnlyAdmin):
    # Eight short columns, so the list fits at 1280 px beside the app sidebar (issue 14): the
    # connection by name only, trigger and window as one "Kind", rows as written/fetched.
    list_display = ["connection_name", "started_at", "outcome", "kind", "duration", "api_calls", "rows", "error_class"]
    list_filter = ["outcome", "trigger", "window", "error_class"]
    list_select_related = ["connection"]
    search_fields = ["connection__name", "job_id"]
    date_hierarchy = "started_at"

    @admin.display(description="Connection", ordering="connection__name")
    def connection_name(self, obj: SyncRun) -> str:
        return obj.connection.name

    @admin.display(description="Kind")
    def kind(self, obj: SyncRun) -> str:
        return f"{obj.get_trigger_display()}, {obj.get_window_display().lower()}"

    @admin.display(description="Rows written / fetched")
    def rows(self, obj: SyncRun) -> str:
        return f"{obj.rows_written} / {obj.rows_fetched}"

    @admin.display(description="Duration")
    def duration(self, obj: SyncRun) -> str:
        seconds = obj.duration_seconds
        return "-" if seconds is None else f"{seconds:.2f} s"


@admin.register(DailyMetric)
class DailyMetricAdmin(ReadOnlyAdmin):
    list_display = [
        "connection",
        "date",
        "entity_name",
        "spend",
        "impressions",
        "clicks",
        "conversions",
        "conversion_value",
        "currency",
        "updated_at",
    ]
    list_filter = ["level", "date"]
    list_select_related = ["connection"]
    search_fields = ["entity_name", "entity_id", "connection__name"]
    date_hierarchy = "date"


@admin.register(PlatformScope)
class PlatformScopeAdmin(ReadOnlyAdmin):
    """Shared platform limits as the engine last saw them (syncing.scopes): written by syncs only."""

    list_display = ["scope", "throttled_until", "usage_pct", "pace_limit", "probe_connection_id", "updated_at"]
    search_fields = ["scope", "reason"]
    ordering = ["scope"]


@admin.register(Backfill)
class BackfillAdmin(ReadOnlyAdmin):
    """Re-syncs of a date range (syncing.services.backfill_request): written by the engine only."""

    list_display = ["connection", "since", "until", "status", "progress_text", "not_before", "created_at"]
    list_filter = ["status"]
    search_fields = ["connection__name", "public_id"]
    list_select_related = ["connection"]
