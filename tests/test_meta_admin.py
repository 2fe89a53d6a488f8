"""Connecting Meta ad accounts in the admin: pasting a (system user) token, which is never shown.

With the clock frozen at NOW (see tests/meta_connect_fixtures.py).
"""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from connections.models import Connection, SyncFrequency, SyncStatus
from connections.services import workspace_add_member
from tests.meta_connect_fixtures import NOW, in_auth_error, meta_connections
from tests.meta_connect_fixtures import frozen_fixture as frozen_fixture  # a fixture: pytest finds it by name

# --- the admin's token paste ----------------------------------------------------------------------


@pytest.fixture
def admin_browser(workspace) -> Client:
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "password")
    workspace_add_member(workspace=workspace, user=admin)
    client = Client()
    client.force_login(admin)
    return client


def admin_form(workspace, connection: Connection) -> dict:
    return {
        "workspace": workspace.pk,
        "provider": connection.provider,
        "external_account_id": connection.external_account_id,
        "name": connection.name,
        "currency": "USD",
        "timezone": "UTC",
        "lookback_days": "",
        "provider_options": "{}",
    }


@pytest.mark.django_db
def test_admin_can_paste_a_system_user_token_that_is_never_shown(admin_browser, make_connection, workspace):
    connection = make_connection(provider="meta", external_account_id="111", name="Shop US")
    url = f"/admin/connections/connection/{connection.pk}/change/"
    form = admin_form(workspace, connection)
    system_token = "EAAsystem-user-token-never-expires"

    response = admin_browser.post(url, {**form, "meta_access_token": system_token})

    assert response.status_code == 302, response.content.decode()
    connection.refresh_from_db()
    assert (connection.credentials, connection.credentials_expires_at) == ({"access_token": system_token}, None)
    assert system_token not in admin_browser.get(url).content.decode()
    # Saving without a token keeps the stored one.
    admin_browser.post(url, {**form, "name": "Shop US (renamed)"})
    connection.refresh_from_db()
    assert (connection.name, connection.credentials) == ("Shop US (renamed)", {"access_token": system_token})
    # Only Meta connections take one.
    demo = make_connection()
    demo_form = {**admin_form(workspace, demo)}
    rejected = admin_browser.post(
        f"/admin/connections/connection/{demo.pk}/change/", {**demo_form, "meta_access_token": "x"}
    )
    assert rejected.status_code == 200
    demo.refresh_from_db()
    assert demo.credentials == {}


@pytest.mark.django_db
def test_admin_token_paste_reconnects_a_connection_whose_access_expired(admin_browser, make_connection, workspace):
    connection = make_connection(
        provider="meta",
        external_account_id="111",
        name="Shop US",
        credentials={"access_token": "EAAexpired"},
        sync_frequency=SyncFrequency.DAILY,
        now=NOW,
    )
    Connection.objects.filter(pk=connection.pk).update(credentials_expires_at=NOW - timedelta(days=1))
    in_auth_error(connection)

    response = admin_browser.post(
        f"/admin/connections/connection/{connection.pk}/change/",
        {**admin_form(workspace, connection), "meta_access_token": "EAAsystem-user-token"},
    )

    assert response.status_code == 302, response.content.decode()
    connection.refresh_from_db()
    assert (connection.credentials, connection.credentials_expires_at) == (
        {"access_token": "EAAsystem-user-token"},
        None,
    )
    assert (connection.sync_status, connection.last_sync_error, connection.last_sync_error_kind) == (
        SyncStatus.IDLE,
        None,
        "",
    )
    assert connection.next_sync_at == NOW


@pytest.mark.django_db
def test_admin_adding_a_meta_connection_with_a_token(admin_browser, workspace):
    form = {
        "workspace": workspace.pk,
        "provider": "meta",
        "external_account_id": "777",
        "name": "Pasted",
        "currency": "USD",
        "timezone": "UTC",
        "lookback_days": "",
        "provider_options": "{}",
        "sync_frequency": SyncFrequency.HOURLY,
        "meta_access_token": "EAAsystem",
    }

    response = admin_browser.post("/admin/connections/connection/add/", form)

    assert response.status_code == 302, response.content.decode()
    connection = meta_connections().get()
    assert (connection.credentials, connection.sync_status, connection.next_sync_at) == (
        {"access_token": "EAAsystem"},
        SyncStatus.IDLE,
        NOW,
    )
