"""Faults injected for real: a frozen broker, a restarted and a stopped database, malformed bodies.

The test PostgreSQL and Redis are shared, so they are never stopped or paused: the app is pointed
at a FaultProxy in front of them, and the proxy freezes, resets or refuses the connections.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from connections.models import Connection, SyncStatus
from connections.services import api_token_issue
from syncing.services import sync_start
from tests.conftest import ROOT, _reset_broker_pools, _worker_env, wait_for
from tests.faultproxy import FaultProxy
from tests.test_api import token_client

DATABASE_DOWN = {"detail": "The database is unavailable; try again in a moment."}


# --- a frozen broker --------------------------------------------------------------------------------


@pytest.fixture
def broker_proxy(broker) -> Iterator[FaultProxy]:
    """The app's broker URL pointed at a proxy in front of the test Redis."""
    from adsync.celery import app

    url = urlsplit(app.conf.broker_url)
    with FaultProxy(url.hostname, url.port or 6379) as proxy:
        userinfo = url.netloc.rpartition("@")[0]
        old_url = app.conf.broker_url
        app.conf.broker_url = url._replace(netloc=f"{userinfo}{'@' if userinfo else ''}127.0.0.1:{proxy.port}").geturl()
        _reset_broker_pools(app)
        yield proxy
        app.conf.broker_url = old_url
        _reset_broker_pools(app)


def queued_jobs(redis) -> list[tuple[int, str]]:
    """(connection pk, job id) of every message in the sync_jobs queue."""
    jobs = []
    for raw in redis.lrange("sync_jobs", 0, -1):
        args, _kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
        jobs.append((args[0], args[1]))
    return jobs


@pytest.mark.django_db(transaction=True)
def test_sync_now_with_a_frozen_broker_is_503_within_seconds_and_changes_nothing(
    owner, make_connection, broker, broker_proxy
):
    first, second = make_connection(), make_connection()
    client = token_client(owner)
    # The web process holds a broker connection, as one that has served a Sync Now before does.
    assert client.post(f"/connections/{first.public_id}/sync-now").status_code == 202
    before = Connection.objects.values().get(pk=second.pk)
    broker_proxy.freeze()
    # Redis wakes up after 10 s, so that a publish without timeouts fails this test instead of hanging it.
    thaw = threading.Timer(10, broker_proxy.pass_through)
    thaw.start()

    started = time.monotonic()
    response = client.post(f"/connections/{second.public_id}/sync-now")
    elapsed = time.monotonic() - started
    thaw.cancel()

    assert response.status_code == 503
    assert response.json() == {"detail": "The job queue is unavailable; try again in a moment."}
    assert response["Retry-After"] == "5"
    assert elapsed < 8
    assert Connection.objects.values().get(pk=second.pk) == before

    broker_proxy.pass_through()
    response = client.post(f"/connections/{second.public_id}/sync-now")

    assert response.status_code == 202
    job_id = response.json()["job_id"]
    wait_for(lambda: (second.pk, job_id) in queued_jobs(broker), message="the new job in sync_jobs")
    # A publish that timed out may still reach Redis when it wakes (its bytes were in flight).
    # Such a message names a job the connection no longer has, so a worker drops it unrun.
    for pk, orphan in queued_jobs(broker):
        if pk == second.pk and orphan != job_id:
            assert sync_start(connection_id=pk, job_id=uuid.UUID(orphan), now=timezone.now()) is None
    assert Connection.objects.values_list("sync_status", "job_id").get(pk=second.pk) == (
        SyncStatus.QUEUED,
        uuid.UUID(job_id),
    )


# --- a restarted, then stopped database ---------------------------------------------------------------


class Gunicorn:
    """`gunicorn adsync.wsgi -w 2` as the Dockerfile runs it, on a free port, logging to a file."""

    def __init__(self, log_path: Path, env: dict[str, str]):
        self.log_path = log_path
        self.log = open(log_path, "w")  # noqa: SIM115 - kept open for the process's lifetime
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "adsync.wsgi", "-w", "2", "-b", "127.0.0.1:0"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.port = int(wait_for(self._listening, timeout=30, message="gunicorn to listen"))
        wait_for(lambda: self.log_path.read_text().count("Booting worker") >= 2, message="both gunicorn workers")

    def _listening(self) -> str | None:
        if self.process.poll() is not None:
            pytest.fail(f"gunicorn exited early:\n{self.log_path.read_text()}")
        match = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", self.log_path.read_text())
        return match and match.group(1)

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response, response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.close()


@pytest.fixture
def database_proxy(transactional_db) -> Iterator[FaultProxy]:
    db = settings.DATABASES["default"]
    with FaultProxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)) as proxy:
        yield proxy


@pytest.fixture
def web(database_proxy, tmp_path) -> Iterator[Gunicorn]:
    """gunicorn on the test database, reached through database_proxy (committed data only)."""
    db = settings.DATABASES["default"]
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    url = f"postgres://{quote(db['USER'], safe='')}{password}@127.0.0.1:{database_proxy.port}/{db['NAME']}"
    server = Gunicorn(tmp_path / "gunicorn.log", _worker_env({"DATABASE_URL": url}))
    yield server
    server.stop()


@pytest.mark.slow
def test_database_restart_and_outage_answer_200_then_503_never_500(web, database_proxy, owner, connection):
    _, key = api_token_issue(user=owner)
    api = {"Authorization": f"Token {key}", "Accept": "application/json"}
    status_url = f"/connections/{connection.public_id}/sync-status"
    session = Client()
    session.force_login(owner)
    page = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={session.cookies[settings.SESSION_COOKIE_NAME].value}"}

    def api_status() -> int:
        return web.request("GET", status_url, headers=api)[0]

    # Until both workers hold a database connection (each keeps it for DB_CONN_MAX_AGE).
    wait_for(lambda: api_status() == 200 and database_proxy.connection_count >= 2, message="two kept connections")

    database_proxy.reset()  # PostgreSQL restarted: every kept connection is gone

    assert [api_status() for _ in range(10)] == [200] * 10

    database_proxy.down()

    for _ in range(4):
        code, response, body = web.request("GET", status_url, headers=api)
        assert (code, response.getheader("Content-Type"), json.loads(body)) == (503, "application/json", DATABASE_DOWN)
        assert response.getheader("Retry-After") == "5"
    code, response, body = web.request("GET", status_url, headers={**api, "Accept": "text/html"})
    assert (code, response.getheader("Content-Type"), json.loads(body)) == (503, "application/json", DATABASE_DOWN)
    code, response, body = web.request(
        "PATCH", f"/connections/{connection.public_id}/sync-frequency", headers=api, body=b'{"sync_frequency": "daily"}'
    )
    assert (code, json.loads(body)) == (503, DATABASE_DOWN)
    code, response, body = web.request("GET", "/settings", headers=page)
    assert (code, response.getheader("Content-Type")) == (503, "text/html; charset=utf-8")
    assert "The database is unavailable; try again in a moment." in body.decode()

    database_proxy.pass_through()

    assert [api_status() for _ in range(10)] == [200] * 10
    assert web.request("GET", "/settings", headers=page)[0] == 200


# --- malformed bodies ---------------------------------------------------------------------------------

LIMIT = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
SURROGATE = (
    "JSON parse error - the body holds a lone surrogate (a \\ud800 to \\udfff escape that is not part of a pair), "
    "which is not valid Unicode."
)
TOO_DEEP = "JSON parse error - the body is nested too deeply (more than 32 levels of arrays and objects)."
MALFORMED = {
    "lone surrogate": (b'{"sync_frequency": "\\ud800"}', SURROGATE),
    "lone surrogate in a key": (b'{"\\udfff": "hourly"}', SURROGATE),
    "deep arrays": (b"[" * 100_000, TOO_DEEP),
    "deep objects": (b'{"a":' * 100_000, TOO_DEEP),
    "deep but well-formed": (b"[" * 40 + b"]" * 40, TOO_DEEP),
    "over the size limit": (
        b'{"sync_frequency": "hourly"}' + b" " * LIMIT,
        f"The body is larger than the limit of {LIMIT:,} bytes.",
    ),
    "invalid UTF-8": (
        b'{"sync_frequency": "\xff\xfe"}',
        "JSON parse error - the body is not valid utf-8: byte 0xff at position 20 (invalid start byte).",
    ),
}


@pytest.mark.django_db
@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_sync_frequency_body_is_400_and_changes_nothing(owner, connection, name):
    body, detail = MALFORMED[name]
    before = Connection.objects.values().get(pk=connection.pk)

    response = token_client(owner).patch(
        f"/connections/{connection.public_id}/sync-frequency", data=body, content_type="application/json"
    )

    assert (response.status_code, response.json()) == (400, {"detail": detail})
    assert Connection.objects.values().get(pk=connection.pk) == before


@pytest.mark.django_db
@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_body_on_sync_status_is_ignored(owner, connection, name):
    # A GET's body means nothing (RFC 9110), and the view never reads it.
    before = Connection.objects.values().get(pk=connection.pk)

    response = token_client(owner).generic(
        "GET",
        f"/connections/{connection.public_id}/sync-status",
        data=MALFORMED[name][0],
        content_type="application/json",
    )

    assert response.status_code == 200
    assert Connection.objects.values().get(pk=connection.pk) == before


@pytest.mark.django_db
@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_body_on_sync_now_is_ignored(owner, connection, name):
    # Sync Now takes no body (its schema says so; the spec's curl examples send none), so it is not
    # read. (Inside the test's transaction the message is never sent: on_commit does not run.)
    response = token_client(owner).post(
        f"/connections/{connection.public_id}/sync-now", data=MALFORMED[name][0], content_type="application/json"
    )

    assert response.status_code == 202
    assert Connection.objects.get(pk=connection.pk).sync_status == SyncStatus.QUEUED


@pytest.mark.django_db
def test_a_body_at_the_size_limit_is_accepted(owner, connection):
    body = b'{"sync_frequency": "hourly"}'
    body += b" " * (LIMIT - len(body))

    response = token_client(owner).patch(
        f"/connections/{connection.public_id}/sync-frequency", data=body, content_type="application/json"
    )

    assert response.status_code == 200
    assert Connection.objects.get(pk=connection.pk).sync_frequency == "hourly"


@pytest.mark.django_db
def test_a_surrogate_pair_is_valid_unicode_and_echoed(owner, connection):
    response = token_client(owner).patch(
        f"/connections/{connection.public_id}/sync-frequency",
        data=b'{"sync_frequency": "\\ud83d\\ude80"}',
        content_type="application/json",
    )

    assert response.status_code == 400
    assert response.json() == {
        "sync_frequency": [
            '"\U0001f680" is not a valid sync frequency; valid choices: manual, realtime, 30min, hourly, daily.'
        ]
    }


@pytest.mark.django_db
def test_every_api_operation_documents_the_database_503(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()

    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            unavailable = operation["responses"]["503"]
            assert unavailable["headers"]["Retry-After"]["required"] is True, (method, path)
            assert unavailable["content"] == {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
