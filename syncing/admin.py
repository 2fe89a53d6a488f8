from django.contrib import admin

from syncing.models import DailyMetric, PlatformScope, SyncRun


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
    list_display = [
        "connection",
        "trigger",
        "window",
        "started_at",
        "duration",
        "outcome",
        "api_calls",
        "rows_fetched",
        "rows_written",
        "error_class",
    ]
    list_filter = ["outcome", "trigger", "window", "error_class"]
    list_select_related = ["connection"]
    search_fields = ["connection__name", "job_id"]
    date_hierarchy = "started_at"

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
