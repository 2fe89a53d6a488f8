"""Connecting Google Ads accounts: the OAuth authorization-code flow against a local OAuth server,
then the real google-ads SDK listing the accounts from a fake Google Ads API on 127.0.0.1."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from django.contrib.sessions.models import Session
from django.db import connection as db
from django.utils import timezone

from connections.models import Connection, SyncFrequency, SyncStatus
from connections.services import connection_create
from syncing.budget import budget_used
from syncing.models import SyncOutcome
from syncing.providers.google import RECONNECT_MESSAGE, access_tokens, app_budget
from syncing.runner import connection_sync_run
from syncing.services import connection_enqueue_sync
from tests.fakes.google_ads import Account, CampaignDay, google_fakes_running, resource_exhausted

pytestmark = pytest.mark.django_db

REFRESH_TOKEN = "1//fake-refresh-token"


@pytest.fixture(scope="module")
def google_servers(tmp_path_factory):
    with google_fakes_running(tmp_path_factory.mktemp("google")) as fakes:
        yield fakes


@pytest.fixture
def google(google_servers, settings):
    google_servers.reset()
    google_servers.configure(settings)
    access_tokens.clear()
    ads = google_servers.ads
    ads.add_account(Account("1111111111", "Shop DE", currency="EUR", time_zone="Europe/Berlin"))
    ads.add_account(Account("3333333333", "Client US", currency="USD", time_zone="America/New_York"))
    ads.add_account(Account("4444444444", "Closed client", status="CANCELED"))
    ads.add_account(
        Account("2222222222", "Agency MCC", manager=True, clients=("3333333333", "4444444444", "1111111111"))
    )
    ads.accessible = ["1111111111", "2222222222"]
    return google_servers


@pytest.fixture
def signed_in(client, owner, workspace):
    client.force_login(owner)
    return client


def consent(client, google) -> httpx.Response:
    """Start in AdSync, then let the (fake) Google consent screen send the browser back."""
    start = client.get("/connect/google/start")
    assert start.status_code == 302
    return httpx.get(start["Location"], follow_redirects=False)


def back_from_google(client, google_answer: httpx.Response):
    url = urlsplit(google_answer.headers["Location"])
    return client.get(f"{url.path}?{url.query}")


def test_settings_page_offers_to_connect_google(signed_in):
    page = signed_in.get("/settings")

    assert 'action="/connect/google/start"' in page.content.decode()
    assert "Connect Google Ads account" in page.content.decode()


def test_start_sends_the_browser_to_google_for_offline_adwords_access(signed_in, google):
    response = signed_in.get("/connect/google/start")

    url = urlsplit(response["Location"])
    params = {key: values[0] for key, values in parse_qs(url.query).items()}
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{google.oauth.url}/auth"
    assert params == {
        "client_id": google.oauth.client_id,
        "redirect_uri": "http://testserver/connect/google/callback",
        "response_type": "code",
        "scope": "https://www.googleapis.com/auth/adwords",
        "access_type": "offline",
        "prompt": "consent",
        "include_granted_scopes": "true",
        "state": signed_in.session["google_connect_flow"]["state"],
    }
    assert len(params["state"]) >= 40


def test_start_needs_a_signed_in_user(client, google):
    response = client.get("/connect/google/start")

    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_connect_end_to_end_creates_manual_connections_with_encrypted_access(signed_in, google, workspace, caplog):
    caplog.set_level(logging.DEBUG)
    callback = back_from_google(signed_in, consent(signed_in, google))
    assert callback.status_code == 302
    assert callback["Location"] == "/connect/google/choose"

    page = signed_in.get("/connect/google/choose")

    html = page.content.decode()
    assert "Shop DE" in html
    assert "Client US" in html
    assert "through manager 222-222-2222" in html
    assert "Closed client" not in html
    assert "Agency MCC" not in html  # a manager has no campaigns of its own
    assert REFRESH_TOKEN not in html
    [exchange] = google.oauth.exchanges
    assert (exchange["client_secret"], exchange["redirect_uri"]) == (
        "fake-client-secret",
        "http://testserver/connect/google/callback",
    )
    listing = google.ads.calls[0]
    assert listing.method == "ListAccessibleCustomers"
    assert listing.metadata["authorization"] == "Bearer ya29.fake-access-1"
    assert [(c.customer_id, c.metadata["login-customer-id"]) for c in google.ads.calls[1:]] == [
        ("1111111111", "1111111111"),
        ("2222222222", "2222222222"),
    ]
    # Listing the accounts spent the installation's operations like any sync.
    assert budget_used(budget=app_budget(), now=timezone.now()) == 3
    session = Session.objects.get(session_key=signed_in.session.session_key)
    assert REFRESH_TOKEN not in str(session.get_decoded())

    done = signed_in.post(
        "/connect/google/choose",
        {"workspace": str(workspace.public_id), "customer": ["1111111111", "3333333333"]},
    )

    assert (done.status_code, done["Location"]) == (302, "/settings")
    connections = {c.external_account_id: c for c in Connection.objects.filter(provider="google")}
    assert sorted(connections) == ["1111111111", "3333333333"]
    shop, client = connections["1111111111"], connections["3333333333"]
    assert (shop.name, shop.currency, shop.timezone, shop.workspace) == ("Shop DE", "EUR", "Europe/Berlin", workspace)
    assert (client.currency, client.timezone) == ("USD", "America/New_York")
    assert {shop.sync_frequency, client.sync_frequency} == {SyncFrequency.MANUAL}
    assert shop.credentials == {"refresh_token": REFRESH_TOKEN}
    assert client.credentials == {"refresh_token": REFRESH_TOKEN, "login_customer_id": "2222222222"}
    with db.cursor() as cursor:
        cursor.execute("SELECT credentials FROM connections")
        stored = [row[0] for row in cursor.fetchall()]
    assert all(REFRESH_TOKEN not in value and value.startswith("gAAAAA") for value in stored)
    assert "google_connect_choice" not in signed_in.session
    assert REFRESH_TOKEN not in caplog.text

    # The new connection syncs through its manager with the stored refresh token.
    google.ads.campaigns = [CampaignDay("3333333333", 7, "Search", timezone.now().date(), 2_500_000)]
    job = connection_enqueue_sync(connection=client, send=False)
    assert connection_sync_run(connection_id=client.pk, job_id=job.job_id) == SyncOutcome.SUCCESS
    last = google.ads.search_streams()[-1]
    assert (last.customer_id, last.metadata["login-customer-id"]) == ("3333333333", "2222222222")


def test_a_bad_state_is_refused_and_nothing_is_created(signed_in, google):
    answer = consent(signed_in, google)
    url = urlsplit(answer.headers["Location"])
    forged = {key: values[0] for key, values in parse_qs(url.query).items()} | {"state": "forged-state"}

    response = signed_in.get(url.path, forged)

    assert response.status_code == 400
    assert "not valid" in response.content.decode()
    assert google.oauth.exchanges == []
    assert google.ads.calls == []
    assert Connection.objects.count() == 0
    # The flow is spent: the genuine answer does not work afterwards either.
    assert back_from_google(signed_in, answer).status_code == 400


def test_a_callback_without_a_started_flow_is_refused(signed_in, google):
    response = signed_in.get("/connect/google/callback", {"code": "4/whatever", "state": "x"})

    assert response.status_code == 400
    assert google.oauth.exchanges == []


def test_declined_consent_connects_nothing(signed_in, google):
    signed_in.get("/connect/google/start")
    state = signed_in.session["google_connect_flow"]["state"]

    response = signed_in.get("/connect/google/callback", {"error": "access_denied", "state": state})

    assert response.status_code == 400
    assert "did not grant access (access_denied)" in response.content.decode()
    assert Connection.objects.count() == 0


def test_a_code_google_rejects_shows_googles_reason(signed_in, google):
    signed_in.get("/connect/google/start")
    state = signed_in.session["google_connect_flow"]["state"]

    response = signed_in.get("/connect/google/callback", {"code": "4/not-issued", "state": state})

    assert response.status_code == 400
    assert "Malformed auth code." in response.content.decode()
    assert "google_connect_choice" not in signed_in.session


def test_the_quota_running_out_while_listing_says_to_try_later(signed_in, google):
    google.ads.fail_next(resource_exhausted(retry_seconds=60))

    response = back_from_google(signed_in, consent(signed_in, google))

    assert response.status_code == 503
    assert "try again later" in response.content.decode()


def test_reconnecting_gives_the_existing_connection_the_new_access(signed_in, google, workspace):
    old = connection_create(
        workspace=workspace,
        provider="google",
        external_account_id="1111111111",
        name="Shop DE",
        credentials={"refresh_token": "1//revoked"},
        sync_frequency=SyncFrequency.HOURLY,
    )
    Connection.objects.filter(pk=old.pk).update(
        sync_status=SyncStatus.ERROR, last_sync_error=RECONNECT_MESSAGE, last_sync_error_kind="auth"
    )
    back_from_google(signed_in, consent(signed_in, google))
    assert "already connected" in signed_in.get("/connect/google/choose").content.decode()

    signed_in.post("/connect/google/choose", {"workspace": str(workspace.public_id), "customer": ["1111111111"]})

    [connection] = Connection.objects.filter(provider="google")
    assert connection.pk == old.pk
    assert connection.credentials == {"refresh_token": REFRESH_TOKEN}
    assert connection.sync_frequency == SyncFrequency.HOURLY
    job = connection_enqueue_sync(connection=connection, send=False)
    assert connection_sync_run(connection_id=connection.pk, job_id=job.job_id) == SyncOutcome.SUCCESS


def test_choosing_into_another_workspace_is_404(signed_in, google, other_workspace):
    back_from_google(signed_in, consent(signed_in, google))

    response = signed_in.post(
        "/connect/google/choose", {"workspace": str(other_workspace.public_id), "customer": ["1111111111"]}
    )

    assert response.status_code == 404
    assert Connection.objects.count() == 0


def test_only_the_listed_accounts_can_be_chosen(signed_in, google, workspace):
    back_from_google(signed_in, consent(signed_in, google))

    response = signed_in.post(
        "/connect/google/choose", {"workspace": str(workspace.public_id), "customer": ["4444444444"]}
    )

    assert response.status_code == 400
    assert Connection.objects.count() == 0


def test_choose_without_a_sign_in_goes_back_to_settings(signed_in, google):
    response = signed_in.get("/connect/google/choose")

    assert (response.status_code, response["Location"]) == (302, "/settings")
