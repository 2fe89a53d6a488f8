"""Connecting Meta ad accounts: OAuth against a fake Graph API on 127.0.0.1, and the admin's token paste."""

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.test import Client

from connections.meta_connect import PENDING_KEY, access_expiry_text
from connections.models import Connection, SyncFrequency
from connections.services import workspace_add_member, workspace_create
from syncing.models import DailyMetric
from syncing.providers.meta import RECONNECT_MESSAGE
from syncing.runner import connection_sync_run
from syncing.services import connection_enqueue_sync
from tests.fakes.graph import FakeGraph, insight

CODE = "AQDcode-from-the-dialog"
SHORT = "EAAshort-lived-token"
LONG = "EAAlong-lived-token-sixty-days"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SIXTY_DAYS = 60 * 86400
ACCOUNTS = [
    {
        "id": "act_111",
        "account_id": "111",
        "name": "Shop US",
        "currency": "USD",
        "timezone_name": "America/Chicago",
    },
    {"id": "act_222", "account_id": "222", "name": "Shop DE", "currency": "EUR", "timezone_name": "Europe/Berlin"},
    {"id": "act_333", "account_id": "333", "name": "Agency Test", "currency": "GBP", "timezone_name": "Europe/London"},
]


@pytest.fixture
def graph(settings):
    fake = FakeGraph()
    fake.codes = {CODE: SHORT}
    fake.long_lived = {SHORT: (LONG, SIXTY_DAYS)}
    fake.valid_tokens = {LONG}
    fake.ad_accounts = {LONG: ACCOUNTS}
    fake.page_size = 2  # /me/adaccounts comes in two pages
    with fake.running():
        settings.META_GRAPH_URL = fake.url
        settings.META_APP_ID = fake.app_id
        settings.META_APP_SECRET = fake.app_secret
        settings.META_OAUTH_DIALOG_URL = "https://www.facebook.com"
        yield fake


@pytest.fixture
def browser(owner, workspace) -> Client:
    client = Client()
    client.force_login(owner)
    return client


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield


def start(client: Client) -> str:
    response = client.get("/connect/meta/")
    assert response.status_code == 302
    return parse_qs(urlsplit(response["Location"]).query)["state"][0]


def callback(client: Client, **params):
    return client.get("/connect/meta/callback", params)


def connect(client: Client, accounts: list[str], **extra) -> None:
    state = start(client)
    assert callback(client, code=CODE, state=state)["Location"] == "/connect/meta/choose"
    response = client.post("/connect/meta/choose", {"accounts": accounts, **extra})
    assert response.status_code == 302, response.content.decode()


def meta_connections():
    return Connection.objects.filter(provider="meta").order_by("external_account_id")


# --- the OAuth flow -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_start_sends_the_browser_to_metas_dialog_with_a_fresh_state(browser, graph):
    response = browser.get("/connect/meta/")

    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert (location.scheme, location.netloc, location.path) == ("https", "www.facebook.com", "/v26.0/dialog/oauth")
    query = {key: values[0] for key, values in parse_qs(location.query).items()}
    assert query == {
        "client_id": "1234",
        "redirect_uri": "http://testserver/connect/meta/callback",
        "state": browser.session["meta_connect_state"],
        "scope": "ads_read",
    }
    assert len(query["state"]) >= 40
    assert graph.requests == []


@pytest.mark.django_db
def test_connect_end_to_end_creates_manual_connections_with_the_long_lived_token(browser, graph, workspace):
    state = start(browser)

    response = callback(browser, code=CODE, state=state)

    assert (response.status_code, response["Location"]) == (302, "/connect/meta/choose")
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
    assert [r.params.get("after") for r in listings] == [None, "2"]
    assert listings[0].params["fields"] == "id,account_id,name,currency,timezone_name"

    page = browser.get("/connect/meta/choose")
    html = page.content.decode()
    assert page.status_code == 200
    assert all(name in html for name in ["Shop US", "Shop DE", "Agency Test", "America/Chicago"])
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
    assert "connected 2 Meta ad accounts" in settings_page
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
def test_bad_state_is_rejected_and_nothing_is_connected(browser, graph):
    state = start(browser)

    response = callback(browser, code=CODE, state="forged-" + state)

    assert response.status_code == 400
    assert "state does not match" in response.content.decode()
    assert graph.requests == []
    # The state was spent: replaying the real one afterwards fails too.
    assert callback(browser, code=CODE, state=state).status_code == 400
    assert graph.requests == []
    assert not meta_connections().exists()


@pytest.mark.django_db
def test_callback_without_a_started_flow_is_rejected(browser, graph):
    response = callback(browser, code=CODE, state="anything")

    assert response.status_code == 400
    assert graph.requests == []


@pytest.mark.django_db
def test_cancelled_dialog_connects_nothing(browser, graph):
    state = start(browser)

    response = callback(browser, error="access_denied", error_reason="user_denied", state=state)

    assert (response.status_code, response["Location"]) == (302, "/settings")
    assert "cancelled" in browser.get("/settings").content.decode()
    assert graph.requests == []


@pytest.mark.django_db
def test_a_refused_code_shows_metas_message_and_no_secret(browser, graph):
    state = start(browser)

    response = callback(browser, code="AQDstale-code", state=state)

    html = response.content.decode()
    assert response.status_code == 502
    assert "Meta refused the request: Invalid verification code format." in html
    assert "app-secret" not in html
    assert "AQDstale-code" not in html
    assert not meta_connections().exists()


@pytest.mark.django_db
def test_choose_without_a_pending_sign_in_is_rejected(browser, graph):
    assert browser.get("/connect/meta/choose").status_code == 400
    assert browser.post("/connect/meta/choose", {"accounts": ["111"]}).status_code == 400
    assert not meta_connections().exists()


@pytest.mark.django_db
def test_choose_rejects_an_account_that_was_not_offered(browser, graph):
    start_state = start(browser)
    callback(browser, code=CODE, state=start_state)

    response = browser.post("/connect/meta/choose", {"accounts": ["111", "999"]})

    assert response.status_code == 400
    assert not meta_connections().exists()
    assert browser.post("/connect/meta/choose", {"accounts": []}).status_code == 400


@pytest.mark.django_db
def test_choose_a_workspace_when_the_user_has_several(browser, graph, owner, other_workspace):
    second = workspace_create(name="Alice's Side Project", owner=owner)
    state = start(browser)
    callback(browser, code=CODE, state=state)
    page = browser.get("/connect/meta/choose").content.decode()
    assert "Alice&#x27;s Side Project" in page
    assert "Alice&#x27;s Agency" in page

    # Someone else's workspace is not one to choose: 404, nothing created.
    outsider = browser.post("/connect/meta/choose", {"accounts": ["333"], "workspace": str(other_workspace.public_id)})
    assert outsider.status_code == 404
    response = browser.post("/connect/meta/choose", {"accounts": ["333"], "workspace": str(second.public_id)})

    assert response.status_code == 302
    assert [(c.workspace, c.external_account_id) for c in meta_connections()] == [(second, "333")]


@pytest.mark.django_db
def test_connecting_again_reconnects_the_existing_connection(browser, graph, make_connection):
    existing = make_connection(
        provider="meta",
        external_account_id="111",
        name="Old name",
        credentials={"access_token": "EAAexpired"},
        sync_frequency=SyncFrequency.HOURLY,
        now=NOW,
    )
    Connection.objects.filter(pk=existing.pk).update(
        sync_status="error", last_sync_error=RECONNECT_MESSAGE, last_sync_error_kind="auth"
    )

    connect(browser, ["111"])

    [connection] = meta_connections()
    assert connection.pk == existing.pk
    assert (connection.credentials, connection.name, connection.sync_frequency) == (
        {"access_token": LONG},
        "Shop US",
        SyncFrequency.HOURLY,
    )
    assert connection.credentials_expires_at == NOW + timedelta(days=60)
    assert "reconnected 1" in browser.get("/settings").content.decode()


@pytest.mark.django_db
def test_connect_needs_a_signed_in_user(graph):
    response = Client().get("/connect/meta/")

    assert (response.status_code, response["Location"]) == (302, "/login/?next=/connect/meta/")


@pytest.mark.django_db
def test_connect_explains_when_no_meta_app_is_configured(browser, settings):
    settings.META_APP_ID = ""

    response = browser.get("/connect/meta/", follow=True)

    assert response.redirect_chain == [("/settings", 302)]
    assert "META_APP_ID" in response.content.decode()


@pytest.mark.django_db
def test_settings_page_offers_connect_meta(browser):
    html = browser.get("/settings").content.decode()

    assert 'action="/connect/meta/"' in html
    assert "Connect Meta account" in html


# --- secrets --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_tokens_are_never_logged_rendered_or_kept_in_plain_text(browser, graph, caplog):
    caplog.set_level(logging.DEBUG)
    state = start(browser)
    callback(browser, code=CODE, state=state)

    pending = browser.session[PENDING_KEY]
    pages = [browser.get("/connect/meta/choose").content.decode()]
    browser.post("/connect/meta/choose", {"accounts": ["111"]})
    pages.append(browser.get("/settings").content.decode())

    # httpx logged each request (its URL carries the secrets), redacted.
    assert "client_secret=[redacted]" in caplog.text
    assert "fb_exchange_token=[redacted]" in caplog.text
    for secret in [CODE, SHORT, LONG, "app-secret"]:
        assert secret not in caplog.text
        assert secret not in pending
        assert all(secret not in page for page in pages)


@pytest.mark.django_db
def test_admin_can_paste_a_system_user_token_that_is_never_shown(make_connection, workspace):
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "password")
    workspace_add_member(workspace=workspace, user=admin)
    client = Client()
    client.force_login(admin)
    connection = make_connection(provider="meta", external_account_id="111", name="Shop US")
    url = f"/admin/connections/connection/{connection.pk}/change/"
    form = {
        "workspace": workspace.pk,
        "provider": "meta",
        "external_account_id": "111",
        "name": "Shop US",
        "currency": "USD",
        "timezone": "UTC",
        "lookback_days": "",
        "provider_options": "{}",
    }
    system_token = "EAAsystem-user-token-never-expires"

    response = client.post(url, {**form, "meta_access_token": system_token})

    assert response.status_code == 302, response.content.decode()
    connection.refresh_from_db()
    assert (connection.credentials, connection.credentials_expires_at) == ({"access_token": system_token}, None)
    assert system_token not in client.get(url).content.decode()
    # Saving without a token keeps the stored one.
    client.post(url, {**form, "name": "Shop US (renamed)"})
    connection.refresh_from_db()
    assert (connection.name, connection.credentials) == ("Shop US (renamed)", {"access_token": system_token})
    # Only Meta connections take one.
    demo = make_connection()
    demo_form = {**form, "provider": "demo", "external_account_id": demo.external_account_id}
    rejected = client.post(f"/admin/connections/connection/{demo.pk}/change/", {**demo_form, "meta_access_token": "x"})
    assert rejected.status_code == 200
    demo.refresh_from_db()
    assert demo.credentials == {}


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
