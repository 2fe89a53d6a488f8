import os

from celery import Celery

from syncing.worker import HeartbeatStep

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "adsync.settings")

app = Celery("adsync")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Every worker records a heartbeat (/readyz and the Settings page's banner read it).
app.steps["worker"].add(HeartbeatStep)
