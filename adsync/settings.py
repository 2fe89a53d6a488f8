"""AdSync settings, read from the environment (see the configuration table in README.md).

With no DATABASE_URL and no REDIS_URL the app runs embedded on one machine (SQLite and a
filesystem broker) so that `make run` needs no servers; with them it runs on PostgreSQL and
Redis, as in production and CI. Both run the same code paths.
"""

import base64
import contextlib
import hashlib
import ipaddress
import re
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from adsync.env import envbool, envfloat, envint, envlist, envstr
from syncing.task_names import (
    ALERTS_EVALUATE_TASK_NAME,
    DISPATCH_TASK_NAME,
    PRUNE_TASK_NAME,
    SYNC_QUEUE,
    SYNC_TASK_NAME,
)

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(envstr("ADSYNC_DATA_DIR", str(BASE_DIR / ".data")))

DATABASE_URL = envstr("DATABASE_URL")
# Embedded mode (no DATABASE_URL) is for trying AdSync out on one machine.
EMBEDDED = not DATABASE_URL

DEBUG = envbool("DEBUG", EMBEDDED)
SECRET_KEY = envstr("SECRET_KEY")
# docker-compose.yml falls back to "change-me" so that `docker compose config` parses without
# a .env; an installation must never run on it (credentials are encrypted with a key derived
# from SECRET_KEY unless ADSYNC_ENCRYPTION_KEYS is set).
if SECRET_KEY in ("", "change-me"):
    if not (DEBUG or EMBEDDED):
        raise ImproperlyConfigured("SECRET_KEY must be set (and not to 'change-me') on DATABASE_URL with DEBUG off")
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS")

# Behind a proxy that terminates TLS: the header it sets and the value that means https, e.g.
# SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO,https" (only if the proxy always sets or strips
# it: a client could send it otherwise). Without it, absolute URLs built from a request, such as
# the OAuth callback, say http://.
_proxy_ssl_header = envlist("SECURE_PROXY_SSL_HEADER")
if _proxy_ssl_header:
    if len(_proxy_ssl_header) != 2 or not _proxy_ssl_header[0].startswith("HTTP_"):
        raise ImproperlyConfigured(
            f"SECURE_PROXY_SSL_HEADER={','.join(_proxy_ssl_header)!r} is not like HTTP_X_FORWARDED_PROTO,https"
        )
    SECURE_PROXY_SSL_HEADER = (_proxy_ssl_header[0], _proxy_ssl_header[1])
# Where people reach AdSync (https://adsync.example.com), for URLs given to others: the OAuth
# redirect URIs of the Meta and Google connect flows are built from it. Empty: from the request.
PUBLIC_BASE_URL = envstr("PUBLIC_BASE_URL").rstrip("/")
if PUBLIC_BASE_URL and not PUBLIC_BASE_URL.startswith(("https://", "http://")):
    raise ImproperlyConfigured(f"PUBLIC_BASE_URL={PUBLIC_BASE_URL!r} must start with https:// (or http://)")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "connections",
    "syncing",
    "alerts",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves /static/ under gunicorn too (the admin's CSS, the API docs' scripts).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # A database that cannot be reached answers 503 (JSON on the API), not a 500.
    "adsync.middleware.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "adsync.urls"
WSGI_APPLICATION = "adsync.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
# Django's keys: on SQLite NAME is a Path, which dj_database_url's DBConfig (NAME: str) does not allow.
DATABASES: dict[str, dict[str, Any]]
if DATABASE_URL:
    # Connections are kept between requests (DB_CONN_MAX_AGE). A kept one that a PostgreSQL restart
    # or failover closed is checked at its first use in a request and replaced, instead of failing
    # that request with a 500.
    DATABASES = {
        "default": dict(
            dj_database_url.parse(DATABASE_URL, conn_max_age=envint("DB_CONN_MAX_AGE", 60), conn_health_checks=True)
        )
    }
    # libpq waits for a server that does not answer for as long as it takes, holding the gunicorn
    # worker; give up after 5 s (a 503, see adsync.middleware). ?connect_timeout= in the URL wins.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
    # A pool of at most this many connections per process (psycopg_pool, Django's "pool" option),
    # for processes that run many threads: the sync worker runs tens of syncs at once, each
    # holding a connection only while it writes (syncing.runner hands it back during the platform
    # call). 0 (the default, right for gunicorn's one-thread workers) keeps one persistent
    # connection per thread instead. docker-compose.yml and `make run` set it for the worker.
    DB_POOL_MAX_SIZE = envint("DB_POOL_MAX_SIZE", 0, minimum=0)
    if DB_POOL_MAX_SIZE:
        DATABASES["default"]["CONN_MAX_AGE"] = 0  # pooled connections go back to the pool instead
        # timeout: how long a thread waits for a connection (all busy, or the database away) before
        # its write fails, to be retried like any database outage (syncing.runner._with_database);
        # as long as the connect timeout, so an outage is noticed as soon as without a pool.
        DATABASES["default"]["OPTIONS"]["pool"] = {"min_size": 1, "max_size": DB_POOL_MAX_SIZE, "timeout": 5}
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "adsync.sqlite3",
            "OPTIONS": {
                # WAL lets the web process read while the worker writes; IMMEDIATE takes the
                # write lock at BEGIN so a read-then-update transaction cannot be interleaved.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(envstr("STATIC_ROOT", str(BASE_DIR / ".data" / "staticfiles")))
# WhiteNoise serves collected files from STATIC_ROOT and, so that runserver, tests and a fresh
# checkout need no collectstatic, also straight from the apps' static folders.
WHITENOISE_USE_FINDERS = True
# (suppressed: a read-only image that collected its files elsewhere)
with contextlib.suppress(OSError):
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)

LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/settings"
LOGOUT_REDIRECT_URL = "/login/"

# --- Secrets at rest ------------------------------------------------------------------------
# Comma-separated Fernet keys: the first encrypts, all decrypt, so a key can be rotated by
# putting the new one first. Without any, a key is derived from SECRET_KEY (fine for trying
# the app out; set real keys in production).
ENCRYPTION_KEYS = envlist("ADSYNC_ENCRYPTION_KEYS") or [
    base64.urlsafe_b64encode(hashlib.sha256(f"adsync-fernet:{SECRET_KEY}".encode()).digest()).decode()
]

# --- Sync engine ----------------------------------------------------------------------------
# How often beat fires the dispatcher. Realtime connections are scheduled in 30 s slots, so a
# tick of 1 s keeps every attempt within about a second of its slot.
# Whole seconds: django-celery-beat stores interval schedules as integers (0.5 would become 0,
# "always due").
SYNC_DISPATCH_INTERVAL = envint("SYNC_DISPATCH_INTERVAL", 1, minimum=1)
# The most connections one tick claims; a larger backlog is claimed over the next ticks.
SYNC_DISPATCH_BATCH = envint("SYNC_DISPATCH_BATCH", 1000, minimum=1)
# Backpressure: jobs queued or syncing stay under the live sync workers' concurrency times this
# (syncing.dispatcher.dispatch_room). 2: a job ready for every slot that frees up, and queues
# short enough that a Sync Now behind them starts within about one platform call.
SYNC_QUEUE_AHEAD = envint("SYNC_QUEUE_AHEAD", 2, minimum=1)
# Backfills (syncing.services.backfill_request): chunks are claimed only with the room left after
# every due sync, and each keeps out of the way of its own connection's regular syncs.
# - SPACING: seconds between the end of a chunk and the next of the same backfill, and the least
#   time to the connection's next regular sync for a chunk to start: a realtime connection's
#   chunk runs just after its sync, never over its next slot.
# - BUDGET_RESERVE_PCT: the share of every rate budget a chunk leaves to the regular syncs, at the
#   dispatcher's check and in the worker's meter. Meta allows 180 calls per rolling hour per ad
#   account; a realtime sync every 30 s spends 120 (one insights request each) plus a 28-day
#   restatement every 6 h (4 requests, ~1 an hour). A chunk (one request of 7 days) may call only
#   while the hour holds fewer than 162 (90 %): about 40 chunks, 280 days, an hour (37 months
#   in about 4 h), and the realtime syncs always find 18 calls free. The spacing alone would let
#   ~300 chunks an hour take every call the realtime syncs leave, and then theirs.
# - SLOTS_PCT: chunks queued or syncing hold at most this share of the live sync workers' slots,
#   so the syncs that come due in the next seconds never wait behind a wave of chunks.
SYNC_BACKFILL_SPACING = envint("SYNC_BACKFILL_SPACING", 10, minimum=0)
SYNC_BACKFILL_BUDGET_RESERVE_PCT = envint("SYNC_BACKFILL_BUDGET_RESERVE_PCT", 10, minimum=0, maximum=90)
SYNC_BACKFILL_SLOTS_PCT = envint("SYNC_BACKFILL_SLOTS_PCT", 25, minimum=1, maximum=100)
# Hard limit for one sync task; the soft limit leaves time to record the failure.
SYNC_TASK_TIME_LIMIT = envint("SYNC_TASK_TIME_LIMIT", 120, minimum=10)
SYNC_TASK_SOFT_TIME_LIMIT = SYNC_TASK_TIME_LIMIT - 5
# After a shared throttle's end one connection probes the platform; the others in the scope wait
# this long at a time until its answer lifts the throttle (syncing.scopes).
SYNC_THROTTLE_PROBE_WAIT = envint("SYNC_THROTTLE_PROBE_WAIT", 10, minimum=1)
# A sync's own deadline, SYNC_TASK_SOFT_TIME_LIMIT after it starts, is enforced by the runner
# (syncing.meter.CallMeter): no platform call starts after it and each call's timeout ends at it,
# so it holds on the threads pool too, where Celery's time limits do not apply.
# A job queued this long without starting is taken as lost (broker flushed, message dropped).
# At least the longest retry backoff (60 s) plus headroom: a job waiting for its retry is queued.
SYNC_QUEUED_TIMEOUT = envint("SYNC_QUEUED_TIMEOUT", 120, minimum=90)
# A job syncing for longer than the hard limit plus this grace is taken as lost (worker killed).
SYNC_RECOVERY_GRACE = envint("SYNC_RECOVERY_GRACE", 30, minimum=0)
# Re-fetch the attribution lookback window at most this often per connection.
SYNC_RESTATEMENT_INTERVAL_HOURS = envint("SYNC_RESTATEMENT_INTERVAL_HOURS", 6, minimum=1)
# Transient provider errors are retried this many times, with exponential backoff.
SYNC_TRANSIENT_RETRIES = envint("SYNC_TRANSIENT_RETRIES", 3, minimum=0)
# First retry after this many seconds, doubling each time, capped at a minute.
SYNC_RETRY_BACKOFF = envfloat("SYNC_RETRY_BACKOFF", 5.0, minimum=0.0)
SYNC_RUN_RETENTION_DAYS = envint("SYNC_RUN_RETENTION_DAYS", 14, minimum=1)
# How long a sync that has its platform data in hand waits out a database outage before giving
# up (syncing.runner); inside the soft time limit, so the failure can still be recorded.
SYNC_DATABASE_WAIT = min(envint("SYNC_DATABASE_WAIT", 60, minimum=0), SYNC_TASK_SOFT_TIME_LIMIT - 5)

# --- Health -----------------------------------------------------------------------------------
# Every worker records a heartbeat this often (seconds); the dispatcher records each tick.
SYNC_WORKER_HEARTBEAT = envint("SYNC_WORKER_HEARTBEAT", 10, minimum=1)
# /readyz and the Settings page say scheduled syncs are not running when the dispatcher has not
# ticked for this many dispatch intervals (at least 5 s: beat and the broker add a little delay),
# and that no sync worker is running when none has beaten for three heartbeats.
HEALTH_SCHEDULER_STALE_AFTER = max(5, 3 * SYNC_DISPATCH_INTERVAL)
HEALTH_WORKER_STALE_AFTER = 3 * SYNC_WORKER_HEARTBEAT
# Seconds readiness waits for the broker to answer.
HEALTH_BROKER_TIMEOUT = envfloat("HEALTH_BROKER_TIMEOUT", 2.0, minimum=0.1)
# /metrics is off (404) unless one of these is set: a bearer token Prometheus sends
# (`authorization: {credentials: ...}` in its scrape config), and/or the client addresses or
# networks that may scrape without one (e.g. "127.0.0.1,10.0.0.0/8").
METRICS_TOKEN = envstr("METRICS_TOKEN")
METRICS_ALLOWED_IPS = envlist("METRICS_ALLOWED_IPS")
for _network in METRICS_ALLOWED_IPS:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError:
        raise ImproperlyConfigured(f"METRICS_ALLOWED_IPS: {_network!r} is not an IP address or network") from None

# --- Celery ---------------------------------------------------------------------------------
REDIS_URL = envstr("REDIS_URL")
BROKER_VISIBILITY_TIMEOUT = envint("BROKER_VISIBILITY_TIMEOUT", 3600, minimum=60)
if BROKER_VISIBILITY_TIMEOUT <= SYNC_TASK_TIME_LIMIT:
    # A message is redelivered while its task still runs once the visibility timeout passes.
    raise ImproperlyConfigured("BROKER_VISIBILITY_TIMEOUT must be longer than SYNC_TASK_TIME_LIMIT")

# kombu's options for the transport: numbers for Redis, folders (str) for the filesystem.
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any]
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": BROKER_VISIBILITY_TIMEOUT,
        # Without them a Redis that stops answering but keeps its connections open (paused,
        # failing over, a dropped NAT entry) hangs every publish, and with it each Sync Now and the
        # gunicorn worker serving it, until Redis comes back. Redis answers in milliseconds. The
        # workers' BRPOP is read by their event loop, which these do not apply to.
        "socket_timeout": 1.0,
        "socket_connect_timeout": 2.0,
    }
else:
    # kombu's filesystem transport works across processes on one machine; its default polling
    # (1 s) caps it near 5 tasks/s, 50 ms makes it keep up with a realtime demo.
    _broker_dir = DATA_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    # kombu's own filesystem transport lets a consumer read a message file before it is written
    # (kombu issue 1551: the worker dies with JSONDecodeError); adsync.broker's transport writes each
    # one under a hidden name and renames it into place. Importing it registers its URL scheme.
    import adsync.broker

    # (A host part keeps kombu from warning "No hostname was supplied" on every connection.)
    CELERY_BROKER_URL = f"{adsync.broker.SCHEME}://localhost/"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        # Without this kombu writes its control files to ./control in the working directory.
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
        "polling_interval": 0.05,
        "visibility_timeout": BROKER_VISIBILITY_TIMEOUT,
    }

CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A failed publish is retried once (enough to replace a kept connection that Redis closed), not
# Celery's default three times: with the socket timeouts above, a Sync Now while Redis hangs then
# answers 503 in about 3 s instead of 4 timeouts plus backoff later.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
CELERY_TASK_DEFAULT_QUEUE = SYNC_QUEUE
CELERY_TASK_ROUTES = {
    SYNC_TASK_NAME: {"queue": SYNC_QUEUE},
    # The dispatcher has a queue of its own, consumed by a worker process of its own (see
    # docker-compose.yml, make run), so that slow syncs filling every sync slot never delay a tick.
    DISPATCH_TASK_NAME: {"queue": "dispatch"},
    PRUNE_TASK_NAME: {"queue": "dispatch"},
}
# At-least-once delivery that does no harm: the message is acknowledged after the task, a
# killed pool child's message is requeued, and each process holds one message at a time. A
# duplicate is harmless because the start transition (queued -> syncing for this job_id) is the
# lock; a redelivered copy finds the job already started or finished and returns.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = SYNC_TASK_TIME_LIMIT
CELERY_TASK_SOFT_TIME_LIMIT = SYNC_TASK_SOFT_TIME_LIMIT
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_RESULT_EXPIRES = None  # no result backend, so beat needs no backend_cleanup entry
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Beat holds a few entries declared here; per-connection schedules are rows (next_sync_at).
# The DatabaseScheduler copies these into the admin's Periodic tasks, where ops can pause them.
CELERY_BEAT_SCHEDULE = {
    "dispatch-due-syncs": {
        "task": DISPATCH_TASK_NAME,
        "schedule": SYNC_DISPATCH_INTERVAL,
        # A tick that waited longer than a few intervals is stale: the next one does its work.
        "options": {"expire_seconds": max(5, int(SYNC_DISPATCH_INTERVAL * 5))},
    },
    "prune-sync-runs": {
        "task": PRUNE_TASK_NAME,
        "schedule": 3600.0,
        "options": {"expire_seconds": 600},
    },
}

# --- API ------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    # The token class comes first so that a request without credentials gets 401 with a
    # WWW-Authenticate challenge rather than 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "connections.authentication.TokenAuthentication",
        "connections.authentication.CookieTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # DRF's, refusing lone surrogates and deep nesting with a 400 instead of failing with a 500.
    "DEFAULT_PARSER_CLASSES": ["connections.parsers.JSONParser"],
    # DRF's, plus a body over DATA_UPLOAD_MAX_MEMORY_SIZE as a JSON 400 (not Django's HTML page).
    "EXCEPTION_HANDLER": "connections.parsers.exception_handler",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    # drf-spectacular's, documenting the 503 that any operation answers while the database is down.
    "DEFAULT_SCHEMA_CLASS": "connections.schema.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "AdSync API",
    "DESCRIPTION": (
        "Keep advertising metrics fresh. Authenticate with `Authorization: Token <key>` (or `Bearer`), "
        "the `access_token` cookie, or a signed-in session. Issue keys with `manage.py create_api_token`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- Logging --------------------------------------------------------------------------------
LOG_LEVEL = envstr("LOG_LEVEL", "INFO").upper()
# "plain" lines for people, or "json": one JSON object per line for a log pipeline, with the
# fields of structured lines (such as each finished sync's) as keys of their own.
LOG_FORMAT = envstr("LOG_FORMAT", "plain").lower()
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r}: choose plain or json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(processName)s: %(message)s"},
        "json": {"()": "adsync.logs.JsonFormatter"},
    },
    # The Graph API takes its token in the query string, and these loggers log every URL at DEBUG.
    "filters": {"redact_tokens": {"()": "adsync.redaction.RedactTokens"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "adsync": {"level": LOG_LEVEL},
        "connections": {"level": LOG_LEVEL},
        "syncing": {"level": LOG_LEVEL},
        "celery": {"level": LOG_LEVEL},
        # One line per task received/succeeded and per beat tick (every second) drowns the
        # lines that matter; our dispatcher logs what it queued, and failures still show.
        "celery.app.trace": {"level": "WARNING"},
        "celery.worker.strategy": {"level": "WARNING"},
        "celery.beat": {"level": "WARNING"},
        # The facebook-business SDK's requests (urllib3) and the connect flows' httpx calls.
        "urllib3.connectionpool": {"filters": ["redact_tokens"]},
        "httpx": {"filters": ["redact_tokens"]},
        # runserver's request lines carry the OAuth callbacks' code and state in the query string.
        "django.server": {"filters": ["redact_tokens"]},
    },
}

# Behind a TLS-terminating proxy: cookies only over HTTPS (set SECURE_COOKIES=1 there).
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = envbool("SECURE_COOKIES", False)

# --- Meta Ads ---------------------------------------------------------------------------------
# Where the Graph API lives (a proxy or a test server may stand in) and which version we speak.
META_GRAPH_URL = envstr("META_GRAPH_URL", "https://graph.facebook.com").rstrip("/")
META_API_VERSION = envstr("META_API_VERSION", "v26.0")
if not re.fullmatch(r"v\d+\.\d+", META_API_VERSION):
    raise ImproperlyConfigured(f"META_API_VERSION={META_API_VERSION!r} is not like v26.0")
# The OAuth dialog's host ("Connect Meta account" sends the browser there).
META_OAUTH_DIALOG_URL = envstr("META_OAUTH_DIALOG_URL", "https://www.facebook.com").rstrip("/")
# The Meta app that users connect through; without these only pasted system-user tokens work.
META_APP_ID = envstr("META_APP_ID")
META_APP_SECRET = envstr("META_APP_SECRET")
# The callback URL registered with the Meta app; empty: PUBLIC_BASE_URL or the request's host.
META_OAUTH_REDIRECT_URI = envstr("META_OAUTH_REDIRECT_URI")
# Our share of Meta's 200 calls per rolling hour per ad account (the rest is headroom).
META_CALLS_PER_HOUR = envint("META_CALLS_PER_HOUR", 180, minimum=1)
# Meta's usage headers (app, business use case, ad account) at or above this percentage pace
# every connection in that scope (syncing.scopes): at most as many calls per window as keep the
# usage at META_USAGE_TARGET_PCT, estimated from our own calls in the window.
META_USAGE_SLOWDOWN_PCT = envint("META_USAGE_SLOWDOWN_PCT", 75, minimum=1, maximum=99)
META_USAGE_TARGET_PCT = envint("META_USAGE_TARGET_PCT", 90, minimum=1, maximum=99)
# The rolling window Meta's usage percentages are over (an hour; a simulation may shorten it).
META_USAGE_WINDOW_SECONDS = envint("META_USAGE_WINDOW_SECONDS", 3600, minimum=60)
# How long a throttle pauses its scope when Meta does not estimate it (estimated_time_to_regain_access).
META_PAUSE_MINUTES = envint("META_PAUSE_MINUTES", 5, minimum=1)
# Days a restatement sync re-fetches (conversions keep changing for the attribution window).
META_LOOKBACK_DAYS = envint("META_LOOKBACK_DAYS", 28, minimum=1)
# Which action types count as conversions: comma-separated, in order of preference. Each row
# uses the first type Meta reports for it, never a sum, because Meta reports one purchase under
# several overlapping types (omni_purchase = purchase across web, app and offline; purchase;
# offsite_conversion.fb_pixel_purchase = the pixel's count). A connection may override this with
# provider_options["action_type"].
META_CONVERSION_ACTION_TYPE = envstr(
    "META_CONVERSION_ACTION_TYPE", "omni_purchase,purchase,offsite_conversion.fb_pixel_purchase"
)

# --- Google Ads -------------------------------------------------------------------------------
# The gRPC endpoint (host:port; a proxy or a test server may stand in) and the API version.
GOOGLE_ADS_ENDPOINT = envstr("GOOGLE_ADS_ENDPOINT", "googleads.googleapis.com:443")
GOOGLE_ADS_API_VERSION = envstr("GOOGLE_ADS_API_VERSION", "v26")
if not GOOGLE_ADS_API_VERSION.startswith("v") or not GOOGLE_ADS_API_VERSION[1:].isdigit():
    raise ImproperlyConfigured(f"GOOGLE_ADS_API_VERSION={GOOGLE_ADS_API_VERSION!r} is not like v26")
# A PEM file of root certificates to trust for the endpoint instead of gRPC's bundled ones (a
# TLS-inspecting proxy, a private endpoint, the test suite's fake server). Always TLS.
GOOGLE_ADS_CA_BUNDLE = envstr("GOOGLE_ADS_CA_BUNDLE")
# The longest one GAQL query (its whole stream) may take; well inside SYNC_TASK_SOFT_TIME_LIMIT.
GOOGLE_ADS_TIMEOUT = envfloat("GOOGLE_ADS_TIMEOUT", 60.0, minimum=1.0)
# Sent as developer-token when set (Google is moving API access to the OAuth client's project).
GOOGLE_DEVELOPER_TOKEN = envstr("GOOGLE_DEVELOPER_TOKEN")
# The app's OAuth client (a "Web application" client in Google Cloud).
GOOGLE_CLIENT_ID = envstr("GOOGLE_CLIENT_ID")
GOOGLE_CLIENT_SECRET = envstr("GOOGLE_CLIENT_SECRET")
GOOGLE_OAUTH_AUTHORIZE_URL = envstr("GOOGLE_OAUTH_AUTHORIZE_URL", "https://accounts.google.com/o/oauth2/v2/auth")
GOOGLE_TOKEN_URL = envstr("GOOGLE_TOKEN_URL", "https://oauth2.googleapis.com/token")
# The callback URL registered with the OAuth client; empty: PUBLIC_BASE_URL or the request's host.
GOOGLE_OAUTH_REDIRECT_URI = envstr("GOOGLE_OAUTH_REDIRECT_URI")
# Seconds to wait for Google's OAuth token endpoint.
GOOGLE_HTTP_TIMEOUT = envfloat("GOOGLE_HTTP_TIMEOUT", 15.0, minimum=1.0)
# Operations per rolling 24 h for the whole installation: Basic access is 15,000 a day (Explorer
# 2,880), shared by every customer of the app.
GOOGLE_OPS_PER_DAY = envint("GOOGLE_OPS_PER_DAY", 15000, minimum=1)
# Per customer: a realtime account needs 2,880 syncs a day at one operation each, plus four
# restatements and some Sync Now presses; 3,000 lets one run at full speed while no customer can
# take more than a fifth of Basic access.
GOOGLE_OPS_PER_CUSTOMER_PER_DAY = envint("GOOGLE_OPS_PER_CUSTOMER_PER_DAY", 3000, minimum=1)
# Days a restatement sync re-fetches when the connection does not say.
GOOGLE_LOOKBACK_DAYS = envint("GOOGLE_LOOKBACK_DAYS", 14, minimum=1)

# --- Email --------------------------------------------------------------------------------------
# Alerts are sent with Django's mail. Embedded mode prints them to the worker's log (console
# backend) so that trying AdSync out needs no mail server; otherwise SMTP, configured here.
EMAIL_BACKEND = envstr(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend" if EMBEDDED else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = envstr("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = envstr("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = envstr("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = envbool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("Set EMAIL_USE_TLS (STARTTLS, port 587) or EMAIL_USE_SSL (port 465), not both")
# Seconds to wait for the mail server; an alert that times out is retried like a webhook.
EMAIL_TIMEOUT = envint("EMAIL_TIMEOUT", 10, minimum=1)
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "AdSync <alerts@localhost>")

# --- Alerts ---------------------------------------------------------------------------------------
# How often beat runs the evaluator (alerts.evaluate): it opens and resolves incidents from the
# database's state and sends again deliveries whose message was lost. Cheap when all is well.
ALERTS_EVALUATE_INTERVAL = envint("ALERTS_EVALUATE_INTERVAL", 60, minimum=5)
# It runs on the dispatch queue with the hourly prune: a few indexed reads. The deliveries, which
# wait on the network, go to ALERTS_QUEUE instead, so they never hold back a dispatcher tick.
CELERY_BEAT_SCHEDULE["evaluate-alerts"] = {
    "task": ALERTS_EVALUATE_TASK_NAME,
    "schedule": float(ALERTS_EVALUATE_INTERVAL),
    "options": {"queue": "dispatch", "expire_seconds": ALERTS_EVALUATE_INTERVAL},
}
# The queue of alert deliveries; the sync workers consume it. Alerts are rare and each attempt is
# bounded by the timeouts below, so they borrow a sync slot for at most seconds. Point it at a
# queue of its own (and add that to a worker's -Q) to keep them apart.
ALERTS_QUEUE = envstr("ALERTS_QUEUE", SYNC_QUEUE)
# An incident resolves once its problem has been seen gone this long (seconds), so a connection
# that flaps alerts once and resolves once it has settled, rather than on every flap.
ALERTS_RESOLVE_AFTER = envint("ALERTS_RESOLVE_AFTER", 300, minimum=0)
# Attempts per delivery, and the backoff between them: ALERTS_RETRY_BACKOFF seconds, doubling,
# at most ALERTS_RETRY_BACKOFF_MAX (the defaults try 8 times over about 20 minutes).
ALERTS_DELIVERY_MAX_ATTEMPTS = envint("ALERTS_DELIVERY_MAX_ATTEMPTS", 8, minimum=1)
ALERTS_RETRY_BACKOFF = envfloat("ALERTS_RETRY_BACKOFF", 10.0, minimum=0.0)
ALERTS_RETRY_BACKOFF_MAX = envfloat("ALERTS_RETRY_BACKOFF_MAX", 900.0, minimum=0.0)
# A delivery still waiting this long after it was due has lost its message (Redis flushed, or
# the broker was down when the incident opened): the evaluator queues it again.
ALERTS_DELIVERY_LOST_AFTER = envint("ALERTS_DELIVERY_LOST_AFTER", 300, minimum=60)
# Seconds a webhook receiver has to answer (each of connect, send and read).
ALERTS_WEBHOOK_TIMEOUT = envfloat("ALERTS_WEBHOOK_TIMEOUT", 10.0, minimum=1.0)
# Webhooks to private, loopback and link-local addresses are refused (a workspace member must not
# reach the database, Redis or a cloud metadata service through our workers) unless this is on;
# it is on by default in embedded mode and with DEBUG, where the receiver is often on the same machine.
ALERTS_WEBHOOK_ALLOW_PRIVATE = envbool("ALERTS_WEBHOOK_ALLOW_PRIVATE", EMBEDDED or DEBUG)
# Where the links in alerts point (the Settings page); PUBLIC_BASE_URL when it is set.
ALERTS_BASE_URL = (envstr("ALERTS_BASE_URL") or PUBLIC_BASE_URL or "http://127.0.0.1:8000").rstrip("/")
if not ALERTS_BASE_URL.startswith(("https://", "http://")):
    raise ImproperlyConfigured(f"ALERTS_BASE_URL={ALERTS_BASE_URL!r} must start with https:// (or http://)")
