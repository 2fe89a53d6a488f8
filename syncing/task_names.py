"""The Celery task names, spelled once: the tasks (syncing/tasks.py) are registered under them,
the settings route and schedule them (CELERY_TASK_ROUTES, CELERY_BEAT_SCHEDULE) and the services
send by them. No imports, so that adsync/settings.py can import this before Django is set up.
"""

SYNC_TASK_NAME = "syncing.sync_connection"
DISPATCH_TASK_NAME = "syncing.dispatch_due_syncs"
PRUNE_TASK_NAME = "syncing.prune_sync_runs"
# The alerts app's (alerts/tasks.py): the evaluator beat fires, and one alert delivery attempt.
ALERTS_EVALUATE_TASK_NAME = "alerts.evaluate"
ALERTS_DELIVER_TASK_NAME = "alerts.deliver"

# The queues the sync worker consumes (-Q sync_jobs,sync_bulk). sync_jobs, the spec's queue, holds
# Sync Now and realtime jobs; sync_bulk the other scheduled ones (every 30 min, hourly, daily).
# kombu takes from a worker's queues in turn, so a realtime job waits for at most one bulk job
# per free slot, never behind a midnight burst of daily ones.
SYNC_QUEUE = "sync_jobs"
BULK_QUEUE = "sync_bulk"
