"""The alert settings form of /settings/alerts, with error messages a person can act on."""

from __future__ import annotations

import re

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_email

from alerts.models import (
    FAILURE_THRESHOLD_MAX,
    FAILURE_THRESHOLD_MIN,
    MAX_RECIPIENTS,
    STALE_MULTIPLIER_MAX,
    STALE_MULTIPLIER_MIN,
    AlertSettings,
)


def recipients_parse(text: str) -> list[str]:
    """Addresses separated by commas, semicolons, spaces or lines; each checked, duplicates dropped."""
    addresses: list[str] = []
    for address in re.split(r"[,;\s]+", text):
        if address and address.lower() not in (a.lower() for a in addresses):
            addresses.append(address)
    invalid = []
    for address in addresses:
        try:
            validate_email(address)
        except ValidationError:
            invalid.append(f"“{address}”")
    if invalid:
        raise ValidationError(f"Not an email address: {', '.join(invalid)}.")
    if len(addresses) > MAX_RECIPIENTS:
        raise ValidationError(f"At most {MAX_RECIPIENTS} addresses; {len(addresses)} were given.")
    return addresses


class AlertSettingsForm(forms.Form):
    email_enabled = forms.BooleanField(required=False, label="Send alerts by email")
    email_recipients = forms.CharField(
        required=False,
        label="Recipients",
        widget=forms.Textarea(attrs={"rows": 3, "autocomplete": "off", "spellcheck": "false"}),
        help_text="One address per line. Leave empty to email every member of the workspace.",
    )
    webhook_url = forms.CharField(
        required=False,
        max_length=500,
        label="Webhook URL",
        widget=forms.URLInput(attrs={"placeholder": "https://example.com/adsync-alerts", "spellcheck": "false"}),
        help_text=(
            "AdSync POSTs each alert as JSON, signed with HMAC-SHA256 (X-AdSync-Signature). The URL is stored "
            "encrypted and not shown again (it may hold a token): leave it empty to keep the one set."
        ),
    )
    remove_webhook = forms.BooleanField(required=False, label="Remove the webhook")
    failure_threshold = forms.IntegerField(
        min_value=FAILURE_THRESHOLD_MIN,
        max_value=FAILURE_THRESHOLD_MAX,
        label="Alert after this many failed syncs in a row",
        error_messages={
            "required": "Enter how many failed syncs in a row should alert.",
            "invalid": "Enter a whole number.",
        },
    )
    stale_multiplier = forms.IntegerField(
        min_value=STALE_MULTIPLIER_MIN,
        max_value=STALE_MULTIPLIER_MAX,
        label="Alert when no sync has completed for this many intervals",
        help_text="An hourly account with 3 alerts after about 3 hours without a completed sync.",
        error_messages={
            "required": "Enter after how many intervals without a completed sync to alert.",
            "invalid": "Enter a whole number.",
        },
    )

    auto_pause_after = forms.IntegerField(
        required=False,
        min_value=FAILURE_THRESHOLD_MIN,
        max_value=FAILURE_THRESHOLD_MAX,
        label="Pause automated syncs after this many permanent failures in a row",
        help_text="Leave empty to never pause. Sync Now still works; resume on the Settings page.",
        error_messages={"invalid": "Enter a whole number, or leave it empty."},
    )

    def clean_email_recipients(self) -> list[str]:
        return recipients_parse(self.cleaned_data["email_recipients"])

    def clean_webhook_url(self) -> str:
        url = self.cleaned_data["webhook_url"].strip()
        if not url:
            return ""
        try:
            URLValidator(schemes=["http", "https"])(url)
        except ValidationError:
            raise ValidationError(
                "Enter a full http:// or https:// URL, such as https://example.com/adsync-alerts."
            ) from None
        return url

    @classmethod
    def initial_for(cls, alert_settings: AlertSettings) -> dict:
        return {
            "email_enabled": alert_settings.email_enabled,
            "email_recipients": "\n".join(alert_settings.email_recipients),
            "failure_threshold": alert_settings.failure_threshold,
            "stale_multiplier": alert_settings.stale_multiplier,
            "auto_pause_after": alert_settings.auto_pause_after,
        }
