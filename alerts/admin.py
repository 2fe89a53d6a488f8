from django.contrib import admin
from django.http import HttpRequest

from alerts.models import AlertSettings, Delivery, Incident
from alerts.services import alert_settings_save
from syncing.admin import ReadOnlyAdmin  # written by the engine only: no add, change or delete


class DeliveryInline(admin.TabularInline):
    model = Delivery
    fields = ["event", "channel", "status", "attempts", "last_http_status", "last_error", "target", "delivered_at"]
    readonly_fields = [
        "event",
        "channel",
        "status",
        "attempts",
        "last_http_status",
        "last_error",
        "target",
        "delivered_at",
    ]
    extra = 0
    can_delete = False
    ordering = ["created_at", "channel"]

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Incident)
class IncidentAdmin(ReadOnlyAdmin):
    list_display = ["title", "kind", "workspace", "opened_at", "resolved_at"]
    list_filter = ["kind", ("resolved_at", admin.EmptyFieldListFilter)]
    list_select_related = ["workspace"]
    search_fields = ["title", "connection__name", "connection__public_id", "public_id"]
    date_hierarchy = "opened_at"
    # The connection's credentials are never loaded for a list of incidents.
    raw_id_fields = ["connection"]
    inlines = [DeliveryInline]


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = [
        "incident",
        "event",
        "channel",
        "status",
        "attempts",
        "last_http_status",
        "last_error",
        "next_attempt_at",
        "delivered_at",
    ]
    list_filter = ["status", "channel", "event"]
    list_select_related = ["incident"]
    search_fields = ["incident__title", "public_id", "incident__public_id"]
    date_hierarchy = "created_at"
    raw_id_fields = ["incident"]


@admin.register(AlertSettings)
class AlertSettingsAdmin(admin.ModelAdmin):
    """Thresholds and email on/off for operations. The webhook and its signing secret are set on
    /settings/alerts, where the secret is shown once; neither can be read or set here."""

    list_display = ["workspace", "email_enabled", "webhook", "failure_threshold", "stale_multiplier", "updated_at"]
    list_select_related = ["workspace"]
    search_fields = ["workspace__name", "workspace__public_id"]
    fields = [
        "workspace",
        "email_enabled",
        "email_recipients",
        "webhook",
        "failure_threshold",
        "stale_multiplier",
        "auto_pause_after",
    ]
    readonly_fields = ["workspace", "email_recipients", "webhook"]

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).defer("webhook_secret")

    def has_add_permission(self, request, obj=None):
        # A workspace without a row has the defaults; the settings page creates the row.
        return False

    @admin.display(description="Webhook")
    def webhook(self, obj: AlertSettings) -> str:
        # The host only: the URL itself is encrypted (it may be a secret) and not decrypted here.
        return obj.webhook_host or "-"

    def save_model(self, request, obj, form, change):
        # Through the service, like the settings page (it keeps the webhook and its secret together).
        alert_settings_save(
            workspace=obj.workspace,
            email_enabled=obj.email_enabled,
            email_recipients=obj.email_recipients,
            webhook_url=obj.webhook_url,
            failure_threshold=obj.failure_threshold,
            stale_multiplier=obj.stale_multiplier,
            auto_pause_after=obj.auto_pause_after,
        )
