"""The facebook-business SDK's session for a sync (syncing/providers/meta/client.py): the API
version and token redaction it relies on in the settings, no crash reporter installed, and no
token in logs, errors, the database or API responses.

The real facebook-business SDK over the wire to a fake Graph API on 127.0.0.1 (see
tests/meta_provider_fixtures.py). Syncs go through the real runner, state machine, budget and
dispatcher; only the network edge (the Graph API) is fake.
"""

import logging
import os
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
from django.db import connection as db
from django.test import Client

from connections.services import api_token_issue
from syncing.models import SyncRun
from tests.conftest import ROOT
from tests.fakes.graph import graph_error, html_502
from tests.meta_provider_fixtures import ACCOUNT, NOW, TOKEN, restated, sync, two_days
from tests.meta_provider_fixtures import graph_fixture as graph_fixture  # a fixture: pytest finds it by name
from tests.meta_provider_fixtures import meta_fixture as meta_fixture  # a fixture: pytest finds it by name

# --- settings -------------------------------------------------------------------------------------


def django_setup(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run `code` after django.setup() in a fresh interpreter, with these environment variables."""
    environment = dict(os.environ, DJANGO_SETTINGS_MODULE="adsync.settings", **env)
    script = f"import django; django.setup(); {code}"
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True, text=True)


@pytest.mark.parametrize("version", ["v26", "26.0"])
def test_a_malformed_meta_api_version_stops_the_app_at_startup(version):
    out = django_setup("", META_API_VERSION=version)

    assert out.returncode == 1
    assert f"ImproperlyConfigured: META_API_VERSION={version!r} is not like v26.0" in out.stderr


def test_token_redaction_is_declared_in_logging_settings():
    code = (
        "import logging;"
        "names = lambda logger: [f'{type(f).__module__}.{type(f).__name__}'"
        " for f in logging.getLogger(logger).filters];"
        "print(names('urllib3.connectionpool')); print('adsync.redaction.RedactTokens' in names('httpx'))"
    )
    out = django_setup(code)

    assert out.stdout.splitlines() == ["['adsync.redaction.RedactTokens']", "True"], out.stderr


# --- no crash reporter, no token anywhere ------------------------------------------------------


@pytest.mark.django_db
def test_sync_leaves_sys_excepthook_unchanged(graph, meta):
    hook = sys.excepthook
    graph.insights[ACCOUNT] = two_days()
    import facebook_business.api  # noqa: F401 - importing the SDK must not install anything either

    sync(restated(meta()))
    graph.script(graph_error(190, "Error validating access token", subcode=463))
    sync(meta(external_account_id="2"))

    assert sys.excepthook is hook
    assert sys.excepthook is sys.__excepthook__


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.django_db
def test_no_token_in_logs_errors_or_api_responses(graph, meta, owner, settings, caplog):
    caplog.set_level(logging.DEBUG)
    graph.insights[ACCOUNT] = two_days()
    connection = restated(meta())
    sync(connection)
    graph.script(graph_error(100, "(#100) Invalid parameter"))
    sync(connection, NOW + timedelta(minutes=1))
    graph.script(html_502())
    sync(connection, NOW + timedelta(minutes=2))
    # Nothing listens there: requests' own error message carries the URL, token and all.
    settings.META_GRAPH_URL = f"http://127.0.0.1:{closed_port()}"
    sync(connection, NOW + timedelta(minutes=3))
    assert connection.last_sync_error == "Could not reach Meta (ConnectionError)."

    # The test saw the SDK's requests being logged (urllib3 logs each URL at DEBUG), redacted.
    assert "access_token=[redacted]" in caplog.text
    assert TOKEN not in caplog.text
    runs = SyncRun.objects.filter(connection=connection)
    assert runs.count() == 4
    assert all(TOKEN not in (run.error_message or "") for run in runs)
    assert TOKEN not in (connection.last_sync_error or "")
    with db.cursor() as cursor:
        cursor.execute("SELECT credentials FROM connections WHERE id = %s", [connection.pk])
        [(stored,)] = cursor.fetchall()
    assert TOKEN not in stored  # encrypted at rest

    _, key = api_token_issue(user=owner)
    client = Client(HTTP_AUTHORIZATION=f"Token {key}")
    base = f"/connections/{connection.public_id}"
    for url in ["/connections/", base, f"{base}/sync-status", f"{base}/sync-runs"]:
        response = client.get(url, HTTP_ACCEPT="application/json")
        assert response.status_code == 200, url
        assert TOKEN not in response.content.decode()
        assert "credentials" not in response.content.decode()
        assert "access_token" not in response.content.decode()
    detail = client.get(base, HTTP_ACCEPT="application/json").json()
    assert "credentials" not in detail
