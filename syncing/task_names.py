"""The Celery task names, spelled once: the tasks (syncing/tasks.py) are registered under them,
the settings route and schedule them (CELERY_TASK_ROUTES, CELERY_BEAT_SCHEDULE) and the services
send by them. No imports, so that adsync/settings.py can import this before Django is set up.
"""

SYNC_TASK_NAME = "syncing.sync_connection"
DISPATCH_TASK_NAME = "syncing.dispatch_due_syncs"
PRUNE_TASK_NAME = "syncing.prune_sync_runs"
