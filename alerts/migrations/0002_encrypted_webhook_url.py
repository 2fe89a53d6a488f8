"""The webhook URL moves into the encrypted field (it is often a secret itself: Slack's, or any
with a token in its path); only its scheme and host stay in plain text, for the admin and logs."""

from urllib.parse import urlsplit

from django.db import migrations, models


def _host(url: str) -> str:
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


def move_urls(apps, schema_editor):
    AlertSettings = apps.get_model("alerts", "AlertSettings")
    for row in AlertSettings.objects.exclude(webhook_url=""):
        secret = dict(row.webhook_secret or {})
        AlertSettings.objects.filter(pk=row.pk).update(
            webhook_host=_host(row.webhook_url), webhook_secret={**secret, "url": row.webhook_url}
        )


def restore_urls(apps, schema_editor):
    AlertSettings = apps.get_model("alerts", "AlertSettings")
    for row in AlertSettings.objects.exclude(webhook_host=""):
        AlertSettings.objects.filter(pk=row.pk).update(webhook_url=(row.webhook_secret or {}).get("url", ""))


class Migration(migrations.Migration):
    dependencies = [
        ("alerts", "0001_initial"),
        ("connections", "0010_backfill_trigger"),
    ]

    operations = [
        migrations.RemoveConstraint(model_name="alertsettings", name="alerts_alertsettings_webhook_http"),
        migrations.RemoveConstraint(model_name="alertsettings", name="alerts_alertsettings_webhook_has_secret"),
        migrations.AddField(
            model_name="alertsettings",
            name="webhook_host",
            field=models.CharField(blank=True, default="", max_length=300),
        ),
        migrations.RunPython(move_urls, restore_urls),
        migrations.RemoveField(model_name="alertsettings", name="webhook_url"),
        migrations.AddConstraint(
            model_name="alertsettings",
            constraint=models.CheckConstraint(
                condition=models.Q(("webhook_host", ""), ("webhook_host__startswith", "https://"),
                                   ("webhook_host__startswith", "http://"), _connector="OR"),
                name="alerts_alertsettings_webhook_http",
            ),
        ),
        migrations.AddConstraint(
            model_name="alertsettings",
            constraint=models.CheckConstraint(
                condition=models.Q(("webhook_host", ""), models.Q(("webhook_secret", ""), _negated=True), _connector="OR"),
                name="alerts_alertsettings_webhook_has_secret",
            ),
        ),
    ]
