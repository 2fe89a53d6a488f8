from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from connections.models import (
    ApiToken,
    Connection,
    Membership,
    SyncFrequency,
    SyncTrigger,
    Workspace,
)
from connections.services import (
    EDITABLE_FIELDS,
    api_token_issue,
    api_token_rename,
    api_token_revoke,
    connection_create,
    connection_credentials_replace,
    connection_pause,
    connection_resume,
    connection_update,
    connections_set_frequency_all,
    workspace_add_member,
)
from connections.status import Freshness, connection_freshness, rate_limited_message, relative_time, stats_line
from syncing.services import BrokerUnavailable, RateLimited, connection_enqueue_sync, syncs_reset_stuck


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    list_display = ["name", "public_id", "created_at"]
    search_fields = ["name", "public_id"]
    inlines = [MembershipInline]

    def save_formset(self, request, form, formset, change):
        if formset.model is not Membership:
            super().save_formset(request, form, formset, change)
            return
        # A teammate added here joins through the service, like everyone else.
        memberships = formset.save(commit=False)
        for membership in formset.deleted_objects:
            membership.delete()
        for membership in memberships:
            if membership.pk is None:
                workspace_add_member(workspace=form.instance, user=membership.user, role=membership.role)
            else:
                membership.save()


class ConnectionAdminForm(forms.ModelForm):
    # Write-only: the stored token is never shown (credentials is not an editable field).
    meta_access_token = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Meta only: paste a system-user access token to replace the stored one. Leave empty to keep it.",
    )

    class Meta:
        model = Connection
        # The model fields an existing connection may change (connections.services.EDITABLE_FIELDS);
        # the sync state is read-only, and the frequency is set only when adding (later through the
        # Settings page, API or actions, which recompute next_sync_at).
        fields = [*EDITABLE_FIELDS, "sync_frequency"]

    def clean(self):
        cleaned = super().clean()
        assert cleaned is not None  # ModelForm.clean() returns cleaned_data
        if cleaned.get("meta_access_token") and cleaned.get("provider", self.instance.provider) != "meta":
            self.add_error("meta_access_token", "Only Meta connections take a Meta access token.")
        return cleaned


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):
    form = ConnectionAdminForm
    list_display = [
        "name",
        "provider",
        "workspace",
        "sync_frequency",
        "sync_status",
        "last_completed",
        "last_change",
        "stats",
        "freshness",
        "next_sync_at",
    ]
    list_filter = ["sync_status", "sync_frequency", "provider"]
    search_fields = ["name", "external_account_id", "public_id", "workspace__name"]
    list_select_related = ["workspace"]
    actions = ["sync_now", "pause", "resume", "set_manual", "reset_stuck"]
    # Sync state is changed through the state machine (the actions), never by editing fields.
    readonly_fields = [
        "public_id",
        "sync_status",
        "job_id",
        "queued_at",
        "queued_trigger",
        "next_sync_at",
        "rate_limited_until",
        "paused_at",
        "pause_reason",
        "last_sync_attempted_at",
        "last_sync_completed_at",
        "last_metrics_changed_at",
        "last_restated_at",
        "total_syncs_attempted",
        "total_syncs_with_changes",
        "last_sync_error",
        "created_at",
    ]
    fields = ["public_id", *EDITABLE_FIELDS, "meta_access_token", "sync_frequency", *readonly_fields[1:]]

    def save_model(self, request, obj, form, change):
        now = timezone.now()
        # A pasted system-user token (they do not expire), encrypted by the field.
        token = form.cleaned_data.get("meta_access_token")
        if not change:
            # A connection added here is created and scheduled like any other (next_sync_at from
            # its frequency); the admin goes on with the saved row.
            created = connection_create(
                workspace=obj.workspace,
                provider=obj.provider,
                external_account_id=obj.external_account_id,
                name=obj.name,
                currency=obj.currency,
                timezone_name=obj.timezone,
                credentials={"access_token": token} if token else None,
                sync_frequency=obj.sync_frequency,
                provider_options=obj.provider_options,
                lookback_days=obj.lookback_days,
                now=now,
            )
            # The admin goes on with the saved row (its log entry, the redirect to its page).
            obj.__dict__.update(created.__dict__)
            return
        # Only what the form edits: a full-row save would write back the sync state as it was
        # read when the page opened, over whatever the worker changed since.
        connection_update(connection=obj, fields=[name for name in form.changed_data if name in EDITABLE_FIELDS])
        if token:
            # A reconnect, like the OAuth flows': one failing on expired access is scheduled again.
            connection_credentials_replace(
                connection=obj, credentials={"access_token": token}, expires_at=None, now=now
            )

    def get_readonly_fields(self, request, obj=None):
        # The frequency is changed with the Settings page, the API or the actions, which
        # recompute next_sync_at; a raw edit here would leave the schedule stale.
        return [*self.readonly_fields, "sync_frequency"] if obj else self.readonly_fields

    @admin.display(description="Last completed", ordering="last_sync_completed_at")
    def last_completed(self, obj: Connection) -> str:
        return relative_time(obj.last_sync_completed_at, timezone.now())

    @admin.display(description="Last change", ordering="last_metrics_changed_at")
    def last_change(self, obj: Connection) -> str:
        return relative_time(obj.last_metrics_changed_at, timezone.now())

    @admin.display(description="Stats")
    def stats(self, obj: Connection) -> str:
        return stats_line(obj.total_syncs_attempted, obj.total_syncs_with_changes)

    @admin.display(description="Freshness")
    def freshness(self, obj: Connection) -> str:
        return Freshness(connection_freshness(obj, timezone.now())).label

    @admin.action(description="Sync now")
    def sync_now(self, request: HttpRequest, queryset: QuerySet[Connection]) -> None:
        now = timezone.now()
        connections = list(queryset)
        queued = running = 0
        # Not queued: the platform throttles them, and a call now would only push that out.
        throttled: list[str] = []
        for connection in connections:
            try:
                result = connection_enqueue_sync(connection=connection, trigger=SyncTrigger.MANUAL, now=now)
            except RateLimited as exc:
                throttled.append(f"{connection.name}: {rate_limited_message(exc.until, now)}")
                continue
            except BrokerUnavailable as exc:
                left = len(connections) - queued - running - len(throttled)
                self.message_user(request, f"{exc} {left} connection(s) were not queued.", messages.ERROR)
                break
            queued += result.created
            running += not result.created
        if queued or running:
            self.message_user(request, f"Queued {queued} sync(s); {running} already queued or running.")
        if throttled:
            self.message_user(request, f"Not queued: {'; '.join(throttled)}.", messages.WARNING)

    @admin.action(description="Pause automated syncs (keeps the frequency)")
    def pause(self, request: HttpRequest, queryset: QuerySet[Connection]) -> None:
        now = timezone.now()
        count = sum(connection_pause(connection=connection, now=now) for connection in queryset)
        self.message_user(request, f"Paused {count} connection(s): Sync Now still works; resume to sync on schedule.")

    @admin.action(description="Resume automated syncs")
    def resume(self, request: HttpRequest, queryset: QuerySet[Connection]) -> None:
        now = timezone.now()
        count = sum(connection_resume(connection=connection, now=now) for connection in queryset)
        self.message_user(request, f"Resumed {count} connection(s) at their frequency.")

    @admin.action(description="Set to manual")
    def set_manual(self, request: HttpRequest, queryset: QuerySet[Connection]) -> None:
        count = connections_set_frequency_all(connections=queryset, frequency=SyncFrequency.MANUAL)
        self.message_user(request, f"Set {count} connection(s) to manual: they now sync only on Sync Now.")

    @admin.action(description="Reset stuck status")
    def reset_stuck(self, request: HttpRequest, queryset: QuerySet[Connection]) -> None:
        count = syncs_reset_stuck(connection_ids=list(queryset.values_list("pk", flat=True)), now=timezone.now())
        self.message_user(request, f"Reset {count} stuck connection(s).")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "name", "user", "created_at", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "name", "user__username"]
    list_select_related = ["user"]
    fields = ["user", "name", "prefix", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]
    autocomplete_fields = ["user"]
    actions = ["revoke"]

    def get_readonly_fields(self, request, obj=None):
        return [*self.readonly_fields, "user"] if obj else self.readonly_fields

    def save_model(self, request, obj, form, change):
        if change:
            api_token_rename(token=obj, name=obj.name)
            return
        token, key = api_token_issue(user=obj.user, name=obj.name)
        obj.pk = token.pk
        obj.prefix, obj.key_hash, obj.created_at = token.prefix, token.key_hash, token.created_at
        # Shown once: only the hash is stored.
        self.message_user(request, f"New API key (copy it now, it is not shown again): {key}", messages.WARNING)

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        now = timezone.now()
        count = sum(api_token_revoke(token=token, now=now) for token in queryset.filter(revoked_at__isnull=True))
        self.message_user(request, f"Revoked {count} token(s).")
