"""Connecting Meta ad accounts through the shared connect flow (connections/connect.py): start,
the redirect URI behind a proxy, the callback and its state, choosing accounts and a
workspace, and what the Settings page shows.

Against a fake Graph API (and its dialog) on 127.0.0.1 (see tests/meta_connect_fixtures.py),
with the clock frozen at NOW.
"""

import os
import subprocess
import sys
import threading
from datetime import timedelta
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
import time_machine
from django.db import connections as db_connections
from django.test import Client
from django.urls import reverse

from connections import services
from connections.models import Connection, SyncFrequency, SyncStatus
from connections.services import ConnectAccount, connection_create, connections_connect_accounts, workspace_create
from connections.status import RECONNECT_URLS, access_expiry_text
from syncing.models import DailyMetric
from syncing.runner import connection_sync_run
from syncing.services import connection_enqueue_sync
from tests.fakes.graph import insight
from tests.meta_connect_fixtures import (
    CODE,
    FLOW_KEY,
    LONG,
    NOW,
    PENDING_KEY,
    SHORT,
    callback,
    connect,
    consent,
    in_auth_error,
    messages_on_settings,
    meta_connections,
    proof,
    start,
    state_of,
)
from tests.meta_connect_fixtures import browser_fixture as browser_fixture  # a fixture: pytest finds it by name
from tests.meta_connect_fixtures import frozen_fixture as frozen_fixture  # a fixture: pytest finds it by name
from tests.meta_connect_fixtures import graph_fixture as graph_fixture  # a fixture: pytest finds it by name
from tests.pages import parse

# --- start ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_start_sends_the_browser_to_metas_dialog_with_a_fresh_state(browser, graph):
    location = urlsplit(start(browser))

    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{graph.url}/v26.0/dialog/oauth"
    query = {key: values[0] for key, values in parse_qs(location.query).items()}
    assert query == {
        "client_id": "1234",
        "redirect_uri": "http://testserver/connect/meta/callback",
        "state": browser.session[FLOW_KEY]["state"],
        "scope": "ads_read",
    }
    assert browser.session[FLOW_KEY]["redirect_uri"] == "http://testserver/connect/meta/callback"
    assert len(query["state"]) >= 40
    assert graph.requests == []


@pytest.mark.django_db
def test_start_get_is_405_and_starts_nothing(browser, graph):
    response = browser.get("/connect/meta/start")

    assert response.status_code == 405
    assert FLOW_KEY not in browser.session


@pytest.mark.django_db
def test_start_needs_the_csrf_token_of_the_settings_page(owner, workspace, graph):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)

    assert client.post("/connect/meta/start").status_code == 403
    form = parse(client.get("/settings").content).one("form", action="/connect/meta/start")
    token = form.one("input", name="csrfmiddlewaretoken").attrs["value"]
    response = client.post("/connect/meta/start", {"csrfmiddlewaretoken": token})

    assert (form.attrs["method"], response.status_code) == ("post", 302)


@pytest.mark.django_db
def test_connect_needs_a_signed_in_user(graph):
    response = Client().post("/connect/meta/start")

    assert (response.status_code, response["Location"]) == (302, "/login/?next=/connect/meta/start")


@pytest.mark.django_db
def test_connect_explains_when_no_meta_app_is_configured(browser, settings):
    settings.META_APP_ID = ""

    response = browser.post("/connect/meta/start", follow=True)

    assert response.redirect_chain == [("/settings", 302)]
    assert "META_APP_ID" in response.content.decode()
    assert FLOW_KEY not in browser.session


@pytest.mark.django_db
def test_start_without_a_workspace_is_refused(outsider, graph):
    client = Client()
    client.force_login(outsider)

    response = client.post("/connect/meta/start")

    assert response.status_code == 403
    assert "not a member of any workspace" in response.content.decode()


@pytest.mark.django_db
def test_settings_page_offers_connect_meta_as_a_post_form(browser):
    form = parse(browser.get("/settings").content).one("form", action="/connect/meta/start")

    assert form.attrs["method"] == "post"
    assert form.one("button").text() == "Connect Meta account"
    assert form.find_all("input", name="csrfmiddlewaretoken") != []


# --- the redirect URI behind a proxy ---------------------------------------------------------------


@pytest.mark.django_db
def test_redirect_uri_is_https_behind_a_tls_proxy(browser, graph, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

    response = browser.post("/connect/meta/start", headers={"X-Forwarded-Proto": "https", "Host": "testserver"})

    redirect_uri = parse_qs(urlsplit(response["Location"]).query)["redirect_uri"][0]
    assert redirect_uri == "https://testserver/connect/meta/callback"


@pytest.mark.django_db
def test_redirect_uri_comes_from_public_base_url_and_the_callback_reuses_it(browser, graph, settings):
    settings.PUBLIC_BASE_URL = "https://adsync.example.com"
    back = consent(browser)
    assert graph.dialogs[0].params["redirect_uri"] == "https://adsync.example.com/connect/meta/callback"
    # Whatever the settings say by the time the browser comes back, the exchange sends the
    # redirect URI the dialog saw (Meta refuses any other).
    settings.PUBLIC_BASE_URL = ""

    response = browser.get(back)

    assert (response.status_code, response["Location"]) == (302, "/connect/meta/choose")
    [exchange, _] = graph.oauth_requests()
    assert exchange.params["redirect_uri"] == "https://adsync.example.com/connect/meta/callback"


@pytest.mark.django_db
def test_meta_oauth_redirect_uri_overrides_the_rest(browser, graph, settings):
    settings.PUBLIC_BASE_URL = "https://adsync.example.com"
    settings.META_OAUTH_REDIRECT_URI = "https://meta.adsync.example.com/connect/meta/callback"

    location = start(browser)

    assert parse_qs(urlsplit(location).query)["redirect_uri"] == [settings.META_OAUTH_REDIRECT_URI]


def _settings_in_a_new_process(**env: str) -> subprocess.CompletedProcess:
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print(getattr(settings, 'SECURE_PROXY_SSL_HEADER', None), repr(settings.PUBLIC_BASE_URL))"
    )
    environment = {k: v for k, v in os.environ.items() if k not in ("SECURE_PROXY_SSL_HEADER", "PUBLIC_BASE_URL")}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**environment, "DJANGO_SETTINGS_MODULE": "adsync.settings", **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_settings_read_the_proxy_header_and_public_base_url_from_the_environment():
    unset = _settings_in_a_new_process()
    set_ = _settings_in_a_new_process(
        SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO,https", PUBLIC_BASE_URL="https://adsync.example.com/"
    )
    bad = _settings_in_a_new_process(SECURE_PROXY_SSL_HEADER="https")

    assert unset.stdout.strip() == "None ''"
    assert set_.stdout.strip() == "('HTTP_X_FORWARDED_PROTO', 'https') 'https://adsync.example.com'"
    assert bad.returncode != 0
    assert "SECURE_PROXY_SSL_HEADER='https' is not like HTTP_X_FORWARDED_PROTO,https" in bad.stderr


# --- the OAuth flow -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_connect_end_to_end_creates_manual_connections_with_the_long_lived_token(browser, graph, workspace):
    response = browser.get(consent(browser))

    assert (response.status_code, response["Location"]) == (302, "/connect/meta/choose")
    assert FLOW_KEY not in browser.session
    exchange, long_lived = graph.oauth_requests()
    assert exchange.params == {
        "client_id": "1234",
        "client_secret": "app-secret",
        "redirect_uri": "http://testserver/connect/meta/callback",
        "code": CODE,
    }
    assert long_lived.params == {
        "client_id": "1234",
        "client_secret": "app-secret",
        "grant_type": "fb_exchange_token",
        "fb_exchange_token": SHORT,
    }
    listings = [r for r in graph.requests if r.path == "/v26.0/me/adaccounts"]
    assert [r.params.get("after") for r in listings] == [None, "2", "4"]
    assert listings[0].params["fields"] == "id,account_id,name,currency,timezone_name,account_status"
    assert {r.params["appsecret_proof"] for r in listings} == {proof(LONG)}

    page = browser.get("/connect/meta/choose")
    html = page.content.decode()
    assert page.status_code == 200
    assert all(name in html for name in ["Shop US", "Shop DE", "Agency Test", "America/Chicago"])
    assert "Old shop" not in html
    assert "Banned shop" not in html
    assert "2 ad accounts that Meta reports as disabled or closed are not listed." in html
    assert "access expires in 60 days" in html
    assert LONG not in html
    assert SHORT not in html

    response = browser.post("/connect/meta/choose", {"accounts": ["111", "222"]})

    assert (response.status_code, response["Location"]) == (302, "/settings")
    rows = [
        (c.workspace, c.external_account_id, c.name, c.currency, c.timezone, c.sync_frequency, c.next_sync_at)
        for c in meta_connections()
    ]
    assert rows == [
        (workspace, "111", "Shop US", "USD", "America/Chicago", SyncFrequency.MANUAL, None),
        (workspace, "222", "Shop DE", "EUR", "Europe/Berlin", SyncFrequency.MANUAL, None),
    ]
    for connection in meta_connections():
        assert connection.credentials == {"access_token": LONG}
        assert connection.credentials_expires_at == NOW + timedelta(days=60)
    assert PENDING_KEY not in browser.session

    settings_page = browser.get("/settings").content.decode()
    assert (
        "Alice&#x27;s Agency: connected 2 Meta ad accounts (Shop DE, Shop US); they sync manually until you pick "
        "a frequency." in settings_page
    )
    assert settings_page.count("access expires in 60 days") == 2
    assert LONG not in settings_page

    # The stored token works: a sync reads the account through the SDK with it.
    graph.insights["111"] = [insight("c1", "2026-11-27", spend="12.34")]
    connection = meta_connections().get(external_account_id="111")
    job = connection_enqueue_sync(connection=connection, now=NOW, send=False)
    assert connection_sync_run(connection_id=connection.pk, job_id=job.job_id) == "success"
    assert graph.insights_requests("111")[0].params["access_token"] == LONG
    assert DailyMetric.objects.get(connection=connection).spend == Decimal("12.34")


@pytest.mark.django_db
def test_connecting_one_account_says_so_in_the_singular(browser, graph):
    connect(browser, ["333"])

    assert messages_on_settings(browser) == [
        "Alice's Agency: connected 1 Meta ad account (Agency Test); it syncs manually until you pick a frequency."
    ]


@pytest.mark.django_db
def test_bad_state_is_rejected_and_nothing_is_connected(browser, graph):
    back = consent(browser)
    state = state_of(back)

    response = callback(browser, code=CODE, state="forged-" + state)

    assert response.status_code == 400
    assert "state does not match" in response.content.decode()
    assert graph.requests == []
    # The state was spent: replaying the real one afterwards fails too.
    assert browser.get(back).status_code == 400
    assert graph.requests == []
    assert not meta_connections().exists()


@pytest.mark.django_db
def test_callback_without_a_started_flow_is_rejected(browser, graph):
    response = callback(browser, code=CODE, state="anything")

    assert response.status_code == 400
    assert graph.requests == []


@pytest.mark.django_db
def test_a_callback_works_once(browser, graph):
    back = consent(browser)
    assert browser.get(back).status_code == 302

    replay = browser.get(back)

    assert replay.status_code == 400
    assert len(graph.oauth_requests()) == 2  # the first callback's two exchanges, no more


@pytest.mark.django_db
def test_cancelled_dialog_connects_nothing(browser, graph):
    state = state_of(start(browser))

    response = callback(browser, error="access_denied", error_reason="user_denied", state=state)

    assert (response.status_code, response["Location"]) == (302, "/settings")
    assert messages_on_settings(browser) == ["Connecting a Meta ad account was cancelled; nothing was connected."]
    assert graph.requests == []


@pytest.mark.django_db
def test_a_dialog_error_other_than_cancelling_is_shown(browser, graph):
    state = state_of(start(browser))

    response = callback(browser, error="server_error", state=state)

    assert response.status_code == 400
    assert "Meta did not grant access (server_error). Nothing was connected." in response.content.decode()


# --- choosing ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_choose_without_a_pending_sign_in_is_rejected(browser, graph):
    assert browser.get("/connect/meta/choose").status_code == 400
    assert browser.post("/connect/meta/choose", {"accounts": ["111"]}).status_code == 400
    assert not meta_connections().exists()


@pytest.mark.django_db
def test_a_pending_choice_expires_after_30_minutes(browser, graph):
    browser.get(consent(browser))
    with time_machine.travel(NOW + timedelta(minutes=29), tick=False):
        assert browser.get("/connect/meta/choose").status_code == 200

    with time_machine.travel(NOW + timedelta(minutes=30), tick=False):
        response = browser.post("/connect/meta/choose", {"accounts": ["111"]})

    assert response.status_code == 400
    assert "There is no Meta sign-in waiting for a choice" in response.content.decode()
    assert PENDING_KEY not in browser.session
    assert not meta_connections().exists()


@pytest.mark.django_db
def test_a_pending_choice_sealed_with_a_rotated_away_key_starts_again(browser, graph, settings):
    browser.get(consent(browser))
    settings.ENCRYPTION_KEYS = ["sKcyiYJfUdEzkZBYzfZ0QzK4ZbS6dWcM0Dh7dl-ZWpE="]

    response = browser.get("/connect/meta/choose")

    assert response.status_code == 400
    assert "start again" in response.content.decode()


@pytest.mark.django_db
def test_choose_rejects_an_account_that_was_not_offered(browser, graph):
    browser.get(consent(browser))

    # 444 is closed: listed by Meta, not offered.
    assert browser.post("/connect/meta/choose", {"accounts": ["111", "444"]}).status_code == 400
    assert browser.post("/connect/meta/choose", {"accounts": ["111", "999"]}).status_code == 400
    assert not meta_connections().exists()
    empty = browser.post("/connect/meta/choose", {"accounts": []})
    assert empty.status_code == 400
    assert "Choose at least one Meta ad account." in empty.content.decode()


@pytest.mark.django_db
def test_choose_a_workspace_when_the_user_has_several(browser, graph, owner, other_workspace):
    second = workspace_create(name="Alice's Side Project", owner=owner)
    browser.get(consent(browser))
    page = browser.get("/connect/meta/choose").content.decode()
    assert "Alice&#x27;s Side Project" in page
    assert "Alice&#x27;s Agency" in page

    # Someone else's workspace is not one to choose: 404, nothing created.
    outsider = browser.post("/connect/meta/choose", {"accounts": ["333"], "workspace": str(other_workspace.public_id)})
    assert outsider.status_code == 404
    # Nor is none at all when there are several.
    assert browser.post("/connect/meta/choose", {"accounts": ["333"]}).status_code == 404
    response = browser.post("/connect/meta/choose", {"accounts": ["333"], "workspace": str(second.public_id)})

    assert response.status_code == 302
    assert [(c.workspace, c.external_account_id) for c in meta_connections()] == [(second, "333")]


@pytest.mark.django_db
def test_connecting_again_reconnects_the_existing_connection_and_clears_its_auth_error(browser, graph, make_connection):
    existing = make_connection(
        provider="meta",
        external_account_id="111",
        name="Old name",
        credentials={"access_token": "EAAexpired"},
        sync_frequency=SyncFrequency.HOURLY,
        now=NOW,
    )
    in_auth_error(existing)
    browser.get(consent(browser))
    assert "already connected in Alice&#x27;s Agency" in browser.get("/connect/meta/choose").content.decode()

    browser.post("/connect/meta/choose", {"accounts": ["111"]})

    [connection] = meta_connections()
    assert connection.pk == existing.pk
    assert (connection.credentials, connection.name, connection.sync_frequency) == (
        {"access_token": LONG},
        "Shop US",
        SyncFrequency.HOURLY,
    )
    assert connection.credentials_expires_at == NOW + timedelta(days=60)
    assert (connection.sync_status, connection.last_sync_error, connection.last_sync_error_kind) == (
        SyncStatus.IDLE,
        None,
        "",
    )
    assert connection.next_sync_at == NOW  # never attempted: due at once
    assert messages_on_settings(browser) == ["Alice's Agency: reconnected 1 Meta ad account (Shop US)."]


@pytest.mark.django_db
def test_an_account_connected_in_another_of_the_users_workspaces_is_refused(browser, graph, owner, workspace):
    second = workspace_create(name="Alice's Side Project", owner=owner)
    existing = connection_create(
        workspace=workspace, provider="meta", external_account_id="222", name="Shop DE", now=NOW
    )
    browser.get(consent(browser))
    page = parse(browser.get("/connect/meta/choose").content)
    assert page.one("option", selected="").text() == "Alice's Agency"  # where it is connected

    response = browser.post("/connect/meta/choose", {"accounts": ["111", "222"], "workspace": str(second.public_id)})

    assert response.status_code == 400
    assert parse(response.content).one("p", role="alert").text() == (
        "Shop DE is already connected in Alice's Agency. Choose that workspace to reconnect it there."
    )
    assert list(meta_connections()) == [existing]
    # In its own workspace it is a reconnect.
    browser.post("/connect/meta/choose", {"accounts": ["222"], "workspace": str(workspace.public_id)})
    assert [(c.pk, c.credentials) for c in meta_connections()] == [(existing.pk, {"access_token": LONG})]


@pytest.mark.django_db(transaction=True)
def test_the_same_choice_posted_twice_at_once_connects_one(workspace, monkeypatch):
    """The other request commits the connection between our lookup and our insert: ours
    becomes a reconnect instead of an IntegrityError (a 500)."""
    real_create = services.connection_create

    def the_other_request_commits_first(**fields):
        def other_request():
            try:
                real_create(**{**fields, "credentials": {"access_token": "from-the-other-request"}})
            finally:
                db_connections.close_all()

        thread = threading.Thread(target=other_request)
        thread.start()
        thread.join()
        return real_create(**fields)

    monkeypatch.setattr(services, "connection_create", the_other_request_commits_first)

    created, reconnected = connections_connect_accounts(
        workspace=workspace,
        provider="meta",
        accounts=[ConnectAccount("111", "Shop US", "USD", "America/Chicago")],
        credentials={"access_token": LONG},
        expires_at=None,
        now=NOW,
    )

    [connection] = meta_connections()
    assert (created, [c.pk for c in reconnected]) == ([], [connection.pk])
    assert connection.credentials == {"access_token": LONG}


# --- the Settings page ------------------------------------------------------------------------------


def test_reconnect_urls_are_the_start_urls():
    assert {"meta": reverse("meta-connect-start"), "google": reverse("google-connect-start")} == RECONNECT_URLS


@pytest.mark.django_db
def test_reconnect_on_the_settings_page_posts_to_the_connect_flow(browser, graph, make_connection):
    connection = make_connection(provider="meta", external_account_id="111", credentials={"access_token": "EAAold"})
    in_auth_error(connection)

    section = parse(browser.get("/settings").content).one("section", id=f"connection-{connection.public_id}")
    form = section.one("form", class_="reconnect-form")

    assert (form.attrs["method"], form.attrs["action"]) == ("post", "/connect/meta/start")
    assert form.one("button").text() == "Reconnect Meta"
    token = form.one("input", name="csrfmiddlewaretoken").attrs["value"]
    assert browser.post(form.attrs["action"], {"csrfmiddlewaretoken": token}).status_code == 302


def test_access_expiry_text_reads_like_the_rest_of_the_page():
    assert access_expiry_text(NOW + timedelta(days=5), NOW) == "access expires in 5 days"
    assert access_expiry_text(NOW + timedelta(hours=3), NOW) == "access expires in 3 h"
    assert access_expiry_text(NOW - timedelta(days=2), NOW) == "access expired 2 days ago"
    assert access_expiry_text(None, NOW) == ""


@pytest.mark.django_db
def test_settings_page_shows_when_meta_access_expires(browser, make_connection):
    connection = make_connection(provider="meta", external_account_id="111", credentials={"access_token": LONG})
    Connection.objects.filter(pk=connection.pk).update(credentials_expires_at=NOW + timedelta(days=5))
    make_connection()  # a demo connection has no expiry to show

    html = browser.get("/settings").content.decode()

    assert html.count("access expires in 5 days") == 1
