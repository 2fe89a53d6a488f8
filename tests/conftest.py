"""Shared fixtures: the healthchecks-style cast (owner, teammate, outsider), connections,
the test Redis broker, and a real Celery worker in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections

from connections.models import Connection, Provider, SyncFrequency, Workspace
from connections.services import connection_create, workspace_add_member, workspace_create

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], object], *, timeout: float = 15.0, interval: float = 0.05, message: str = ""):
    """Poll until predicate() is truthy and return its value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {message or predicate}")
        time.sleep(interval)


def run_concurrently(fn: Callable[[], object], *, times: int) -> list:
    """Call fn from `times` threads released together; their results, and their first error.

    Each thread has its own database connection (Django's are per thread), closed at the end.
    """
    barrier = threading.Barrier(times)
    results: list = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run():
        try:
            barrier.wait()
            result = fn()
            with lock:
                results.append(result)
        except BaseException as exc:  # re-raised in the test's thread below
            with lock:
                errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(times)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # PBKDF2's deliberate slowness costs ~0.2 s per user created; tests need no such protection.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def owner(db):
    return get_user_model().objects.create_user("alice", "alice@example.com", "password")


@pytest.fixture
def teammate(db):
    return get_user_model().objects.create_user("bob", "bob@example.com", "password")


@pytest.fixture
def outsider(db):
    return get_user_model().objects.create_user("charlie", "charlie@example.com", "password")


@pytest.fixture
def workspace(owner, teammate) -> Workspace:
    workspace = workspace_create(name="Alice's Agency", owner=owner)
    workspace_add_member(workspace=workspace, user=teammate)
    return workspace


@pytest.fixture
def other_workspace(outsider) -> Workspace:
    return workspace_create(name="Charlie's Shop", owner=outsider)


@pytest.fixture
def make_connection(workspace) -> Callable[..., Connection]:
    counter = iter(range(1, 1_000_000))

    def make(**overrides) -> Connection:
        number = next(counter)
        fields = {
            "workspace": workspace,
            "provider": Provider.DEMO,
            "external_account_id": f"demo-{number}",
            "name": f"Demo account {number}",
            "sync_frequency": SyncFrequency.MANUAL,
        }
        fields.update(overrides)
        return connection_create(**fields)

    return make


@pytest.fixture
def connection(make_connection) -> Connection:
    return make_connection()


@pytest.fixture
def sync_worker_beats() -> Callable[..., None]:
    """Record a live sync worker's heartbeat at `now`: the dispatcher queues only as many jobs
    as the live workers' concurrency allows (syncing.dispatcher.dispatch_room)."""
    from syncing.models import HeartbeatKind
    from syncing.services import heartbeat_record

    def beat(now, *, concurrency: int = 1000, name: str = "sync@test") -> None:
        heartbeat_record(name=name, kind=HeartbeatKind.SYNC_WORKER, now=now, details={"concurrency": concurrency})

    return beat


# --- broker and worker --------------------------------------------------------------------------


def _redis_client():
    import redis

    return redis.Redis.from_url(settings.CELERY_BROKER_URL)


@pytest.fixture
def broker():
    """The test Redis database, emptied before the test. Requires REDIS_URL (make test sets it)."""
    if not settings.REDIS_URL:
        # Locally a missing Redis skips; in CI it must not pass silently.
        if os.environ.get("CI"):
            pytest.fail("REDIS_URL is not set in CI")
        pytest.skip("needs REDIS_URL")
    client = _redis_client()
    client.flushdb()
    yield client
    client.flushdb()


def _worker_env(extra: dict[str, str]) -> dict[str, str]:
    db = settings.DATABASES["default"]
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    url = f"postgres://{quote(db['USER'], safe='')}{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    env = dict(os.environ, DATABASE_URL=url, REDIS_URL=settings.REDIS_URL, LOG_LEVEL="INFO")
    env.update(extra)
    return env


class Worker:
    """A real `celery -A adsync worker` in its own process group, logging to a file."""

    def __init__(self, log_path: Path, concurrency: int = 2, env: dict[str, str] | None = None, pool: str = "threads"):
        self.log_path = log_path
        self.log = open(log_path, "w")  # noqa: SIM115 - kept open for the process's lifetime
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "adsync",
                "worker",
                "-Q",
                "sync_jobs,sync_bulk",
                # The pool docker-compose.yml's worker runs (threads, with a database pool); the
                # tests about prefork's pool children ask for prefork.
                "--pool",
                pool,
                "--concurrency",
                str(concurrency),
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "INFO",
                "--hostname",
                f"test-{os.getpid()}-{time.monotonic_ns()}@%h",
            ],
            cwd=ROOT,
            env=_worker_env(env or {}),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self.ready, timeout=30, message="the Celery worker to start")

    def ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"worker exited early:\n{self.log_path.read_text()}")
        return " ready." in self.log_path.read_text()

    def pool_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool), as an OOM killer or a crash would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@pytest.fixture
def start_worker(broker, transactional_db, tmp_path) -> Iterator[Callable[..., Worker]]:
    """Start real workers on the test database and Redis; they are stopped after the test."""
    workers: list[Worker] = []

    def start(concurrency: int = 2, pool: str = "threads", **env: str) -> Worker:
        env = {"DB_POOL_MAX_SIZE": "4", **env} if pool == "threads" else env
        worker = Worker(tmp_path / f"worker-{len(workers)}.log", concurrency=concurrency, env=env, pool=pool)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def _reset_broker_pools(app) -> None:
    # Celery caches the connection and producer pools built from broker_url; kombu keeps them in
    # a registry by URL, so dropping our references is enough (closing them would break reuse).
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def broker_down():
    """Point the app at a port where nothing listens: the network edge fails, our code is real."""
    from adsync.celery import app

    old_url = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:1/0"
    _reset_broker_pools(app)
    yield
    app.conf.broker_url = old_url
    _reset_broker_pools(app)
