"""The API keeps the promises of its OpenAPI schema: schemathesis against /api/schema/ on the real app.

Every operation in the schema is exercised through the WSGI app (Django's real middleware and
URLconf, no test client) by an authenticated user whose workspace holds connections in several
states, with sync history. Path ids are generated from the schema and, most of the time, swapped
for ids that exist (the user's connections and jobs, an outsider's connection), so the 200 and
202 answers are checked as well as the 404s. Sync Now on a real connection publishes to the test
Redis, as it does in production.

Checks: no 5xx, only documented status codes, content types and headers, and bodies that match
the documented schema. Generation is derandomized and bounded, so a run is repeatable and quick.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from adsync.wsgi import application
from connections.models import Connection, SyncFrequency
from connections.services import api_token_issue
from syncing.models import SyncRun
from syncing.providers.base import PermanentError, ThrottledError
from syncing.services import connection_enqueue_sync, sync_defer, sync_fail, sync_finish, sync_start
from tests.test_state_machine import some_rows

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)
# One seeded database for all of an operation's inputs is the point: a second Sync Now on the
# same connection must answer with the job the first one queued.
SUPPRESSED = [HealthCheck.function_scoped_fixture]
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20261128,
        "generation": {"deterministic": True, "database": "none"},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    }
)


def _run(connection: Connection, *, at: datetime, outcome: str) -> uuid.UUID:
    """One sync attempt through the real state machine; returns its job id."""
    job_id = connection_enqueue_sync(connection=connection, now=at, send=False).job_id
    started = sync_start(connection_id=connection.pk, job_id=job_id, now=at)
    done = at + timedelta(seconds=3)
    if outcome == "success":
        sync_finish(started=started, rows=some_rows(), api_calls=1, now=done)
    elif outcome == "error":
        sync_fail(started=started, error=PermanentError("Meta said no"), now=done)
    elif outcome == "rate_limited":
        sync_defer(started=started, until=done + timedelta(minutes=5), error=ThrottledError("Slow down"), now=done)
    return job_id


@pytest.fixture
def api_key(transactional_db, broker, owner, make_connection, other_workspace) -> Iterator[str]:
    """The owner's API key; their workspace holds connections idle with history, in error, rate
    limited, queued and syncing, and an outsider's workspace one more.

    transactional_db, so that Sync Now's on_commit publish runs and reaches the broker."""
    idle = make_connection(sync_frequency=SyncFrequency.REALTIME)
    failing = make_connection(sync_frequency=SyncFrequency.HOURLY)
    throttled = make_connection(sync_frequency=SyncFrequency.DAILY)
    queued = make_connection()
    syncing = make_connection(sync_frequency=SyncFrequency.EVERY_30_MIN)
    jobs = [
        _run(idle, at=NOW - timedelta(minutes=2), outcome="success"),
        _run(idle, at=NOW - timedelta(minutes=1), outcome="success"),
        _run(failing, at=NOW, outcome="error"),
        _run(throttled, at=NOW, outcome="rate_limited"),
        connection_enqueue_sync(connection=queued, now=NOW, send=False).job_id,
        _run(syncing, at=NOW, outcome="running"),
    ]
    theirs = Connection.objects.create(
        workspace=other_workspace, provider="demo", external_account_id="theirs", name="Theirs"
    )
    mine = [idle, failing, throttled, queued, syncing]
    _, key = api_token_issue(user=owner)
    KNOWN_IDS["connection_id"][:] = [str(c.public_id) for c in [*mine, theirs]]
    KNOWN_IDS["job_id"][:] = [str(job) for job in jobs]
    # Every run with its own connection (the idle one's two syncs wrote changes).
    KNOWN_RUNS[:] = [
        {"connection_id": str(connection_id), "run_id": str(run_id)}
        for connection_id, run_id in SyncRun.objects.values_list("connection__public_id", "public_id")
    ]
    yield key
    for known in KNOWN_IDS.values():
        known.clear()
    KNOWN_RUNS.clear()


# The ids the seeded fixture made, read by the hook below while it draws path parameters.
KNOWN_IDS: dict[str, list[str]] = {"connection_id": [], "job_id": []}
KNOWN_RUNS: list[dict[str, str]] = []

# Loaded when this module is imported (the schema view needs no database); the plugin makes one
# test per operation from it. (schemathesis.pytest.from_fixture would load it in a fixture, but
# in schemathesis 4.32.5 it uses pytest's Function._nodeid, which pytest 9.2 no longer has.)
schema = schemathesis.openapi.from_wsgi("/api/schema/", application, config=CONFIG)


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    """Mostly ids that exist, so the success answers are checked too; sometimes the generated one."""
    if KNOWN_RUNS and "run_id" in (path_parameters or {}):
        # A run's path needs its own connection too, or every real run id answers 404.
        real = st.sampled_from(list(KNOWN_RUNS)).map(lambda ids: {**path_parameters, **ids})
        return st.one_of(real, real, real, st.just(path_parameters))
    for name, known in KNOWN_IDS.items():
        if known and name in (path_parameters or {}):
            real = st.sampled_from(list(known)).map(lambda value, name=name: {**path_parameters, name: value})
            # Three to one for a real id (one_of picks each branch alike).
            return st.one_of(real, real, real, st.just(path_parameters))
    return st.just(path_parameters)


@schema.parametrize()
@settings(max_examples=30, derandomize=True, deadline=None, database=None, suppress_health_check=SUPPRESSED)
def test_api_matches_its_schema(case, api_key):
    case.call_and_validate(headers={"Authorization": f"Token {api_key}"})


@schema.parametrize()
@settings(max_examples=5, derandomize=True, deadline=None, database=None, suppress_health_check=SUPPRESSED)
@pytest.mark.usefixtures("api_key")
def test_api_without_credentials_matches_its_schema(case):
    # No key, or whatever key schemathesis makes up: 401 with the documented challenge.
    case.call_and_validate()
