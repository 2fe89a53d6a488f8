"""Connecting Google Ads accounts: the OAuth authorization-code flow against a local OAuth server,
then the real google-ads SDK listing the accounts from a fake Google Ads API on 127.0.0.1."""

from __future__ import annotations

import html as html_text
import logging
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
import pytest
from cryptography.fernet import Fernet
from django.contrib.messages import get_messages
from django.contrib.sessions.models import Session
from django.db import connection as db
from django.test import Client
from django.utils import timezone

from connections.models import Connection, SyncFrequency, SyncStatus
from connections.services import connection_create, workspace_create
from syncing.budget import budget_used
from syncing.models import SyncOutcome
from syncing.providers.google import RECONNECT_MESSAGE, app_budget
from syncing.providers.google import oauth as google_oauth
from syncing.runner import connection_sync_run
from syncing.services import connection_enqueue_sync
from tests.fakes.google_ads import (
    Account,
    CampaignDay,
    ads_failure,
    developer_token_not_approved,
    not_ads_user,
    resource_exhausted,
    user_permission_denied,
)
from tests.google_fixtures import google_reset
from tests.google_fixtures import google_servers_fixture as google_servers_fixture  # a fixture: pytest finds it by name
from tests.pages import parse

pytestmark = pytest.mark.django_db

REFRESH_TOKEN = "1//fake-refresh-token"
FLOW_KEY = "connect_google_flow"
PENDING_KEY = "connect_google_pending"


@pytest.fixture
def google(google_servers, settings):
    google_reset(google_servers, settings)
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
    start = client.post("/connect/google/start")
    assert start.status_code == 302
    return httpx.get(start["Location"], follow_redirects=False)


def back_from_google(client, google_answer: httpx.Response):
    url = urlsplit(google_answer.headers["Location"])
    return client.get(f"{url.path}?{url.query}")


def test_settings_page_offers_to_connect_google_as_a_post_form(signed_in):
    form = parse(signed_in.get("/settings").content).one("form", action="/connect/google/start")

    assert form.attrs["method"] == "post"
    assert form.one("button").text() == "Connect Google Ads account"
    assert form.find_all("input", name="csrfmiddlewaretoken") != []


def test_start_get_is_405_and_starts_nothing(signed_in, google):
    response = signed_in.get("/connect/google/start")

    assert response.status_code == 405
    assert FLOW_KEY not in signed_in.session


def test_start_needs_the_csrf_token(owner, workspace, google):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)

    assert client.post("/connect/google/start").status_code == 403
    form = parse(client.get("/settings").content).one("form", action="/connect/google/start")
    token = form.one("input", name="csrfmiddlewaretoken").attrs["value"]
    assert client.post("/connect/google/start", {"csrfmiddlewaretoken": token}).status_code == 302


def test_start_explains_when_google_is_not_configured(signed_in, settings):
    settings.GOOGLE_CLIENT_ID = ""

    response = signed_in.post("/connect/google/start", follow=True)

    assert response.redirect_chain == [("/settings", 302)]
    assert "Connecting Google Ads accounts is not set up here (GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET)." in (
        response.content.decode()
    )


def test_start_sends_the_browser_to_google_for_offline_adwords_access(signed_in, google):
    response = signed_in.post("/connect/google/start")

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
        "state": signed_in.session[FLOW_KEY]["state"],
    }
    assert len(params["state"]) >= 40


def test_redirect_uri_comes_from_public_base_url(signed_in, google, settings):
    settings.PUBLIC_BASE_URL = "https://adsync.example.com"
    answer = consent(signed_in, google)
    settings.PUBLIC_BASE_URL = ""

    response = back_from_google(signed_in, answer)

    assert (response.status_code, response["Location"]) == (302, "/connect/google/choose")
    assert google.oauth.exchanges[0]["redirect_uri"] == "https://adsync.example.com/connect/google/callback"


def test_redirect_uri_is_https_behind_a_tls_proxy(signed_in, google, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

    response = signed_in.post("/connect/google/start", headers={"X-Forwarded-Proto": "https", "Host": "testserver"})

    assert parse_qs(urlsplit(response["Location"]).query)["redirect_uri"] == [
        "https://testserver/connect/google/callback"
    ]


def test_start_needs_a_signed_in_user(client, google):
    response = client.post("/connect/google/start")

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
        {"workspace": str(workspace.public_id), "accounts": ["1111111111", "3333333333"]},
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
    assert PENDING_KEY not in signed_in.session
    assert REFRESH_TOKEN not in caplog.text
    assert [m.message for m in get_messages(done.wsgi_request)] == [
        "Alice's Agency: connected 2 Google Ads accounts (Client US, Shop DE); they sync manually until you pick "
        "a frequency."
    ]

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
    assert "could not be verified" in response.content.decode()
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
    signed_in.post("/connect/google/start")
    state = signed_in.session[FLOW_KEY]["state"]

    response = signed_in.get("/connect/google/callback", {"error": "access_denied", "state": state}, follow=True)

    assert response.redirect_chain == [("/settings", 302)]
    assert "Connecting a Google Ads account was cancelled; nothing was connected." in response.content.decode()
    assert Connection.objects.count() == 0


def test_another_consent_error_is_shown(signed_in, google):
    signed_in.post("/connect/google/start")
    state = signed_in.session[FLOW_KEY]["state"]

    response = signed_in.get("/connect/google/callback", {"error": "admin_policy_enforced", "state": state})

    assert response.status_code == 400
    assert "Google Ads did not grant access (admin_policy_enforced). Nothing was connected." in (
        response.content.decode()
    )


def test_a_code_google_rejects_shows_googles_reason(signed_in, google):
    signed_in.post("/connect/google/start")
    state = signed_in.session[FLOW_KEY]["state"]

    response = signed_in.get("/connect/google/callback", {"code": "4/not-issued", "state": state})

    assert response.status_code == 400
    assert "Malformed auth code." in response.content.decode()
    assert PENDING_KEY not in signed_in.session


@pytest.mark.parametrize(
    ("status", "body", "expected_status", "message"),
    [
        (200, '["not", "an", "object"]', 502, "Google sent an unreadable answer to the sign-in."),
        (200, "null", 502, "Google sent an unreadable answer to the sign-in."),
        (400, '"invalid_grant"', 400, "Google did not accept the sign-in (HTTP 400)."),
        (502, "<html>Bad Gateway</html>", 502, "Google&#x27;s sign-in service is unavailable (HTTP 502)"),
        (200, '{"access_token": "ya29.x", "refresh_token": 7}', 400, "Google did not grant offline access"),
    ],
)
def test_a_token_answer_that_is_not_what_google_sends_is_a_clear_error(
    signed_in, google, status, body, expected_status, message
):
    google.oauth.answer_token_next(status, body)

    response = back_from_google(signed_in, consent(signed_in, google))

    assert response.status_code == expected_status
    assert message in response.content.decode()
    assert PENDING_KEY not in signed_in.session


def test_the_quota_running_out_while_listing_says_to_try_later(signed_in, google):
    google.ads.fail_next(resource_exhausted(retry_seconds=60))

    response = back_from_google(signed_in, consent(signed_in, google))

    assert response.status_code == 503
    assert "try again later" in response.content.decode()


def test_reconnecting_gives_the_existing_connection_the_new_access_and_clears_its_auth_error(
    signed_in, google, workspace
):
    old = connection_create(
        workspace=workspace,
        provider="google",
        external_account_id="1111111111",
        name="Shop DE",
        credentials={"refresh_token": "1//revoked"},
        sync_frequency=SyncFrequency.HOURLY,
    )
    Connection.objects.filter(pk=old.pk).update(
        sync_status=SyncStatus.ERROR, last_sync_error=RECONNECT_MESSAGE, last_sync_error_kind="auth", next_sync_at=None
    )
    back_from_google(signed_in, consent(signed_in, google))
    assert "already connected in Alice&#x27;s Agency" in signed_in.get("/connect/google/choose").content.decode()

    before = timezone.now()
    done = signed_in.post("/connect/google/choose", {"workspace": str(workspace.public_id), "accounts": ["1111111111"]})

    [connection] = Connection.objects.filter(provider="google")
    assert connection.pk == old.pk
    assert connection.credentials == {"refresh_token": REFRESH_TOKEN}
    assert connection.sync_frequency == SyncFrequency.HOURLY
    assert (connection.sync_status, connection.last_sync_error, connection.last_sync_error_kind) == (
        SyncStatus.IDLE,
        None,
        "",
    )
    assert before <= connection.next_sync_at <= timezone.now()  # never attempted: due at once
    assert [m.message for m in get_messages(done.wsgi_request)] == [
        "Alice's Agency: reconnected 1 Google Ads account (Shop DE)."
    ]
    job = connection_enqueue_sync(connection=connection, send=False)
    assert connection_sync_run(connection_id=connection.pk, job_id=job.job_id) == SyncOutcome.SUCCESS


def test_an_account_connected_in_another_of_the_users_workspaces_is_refused(signed_in, google, owner, workspace):
    second = workspace_create(name="Alice's Side Project", owner=owner)
    existing = connection_create(
        workspace=workspace,
        provider="google",
        external_account_id="1111111111",
        name="Shop DE",
        credentials={"refresh_token": "1//old"},
    )
    back_from_google(signed_in, consent(signed_in, google))

    response = signed_in.post(
        "/connect/google/choose", {"workspace": str(second.public_id), "accounts": ["1111111111", "3333333333"]}
    )

    assert response.status_code == 400
    assert (
        "Shop DE is already connected in Alice&#x27;s Agency. Choose that workspace to reconnect it there."
        in response.content.decode()
    )
    assert list(Connection.objects.filter(provider="google")) == [existing]
    assert Connection.objects.get(pk=existing.pk).credentials == {"refresh_token": "1//old"}


def test_choosing_into_another_workspace_is_404(signed_in, google, other_workspace):
    back_from_google(signed_in, consent(signed_in, google))

    response = signed_in.post(
        "/connect/google/choose", {"workspace": str(other_workspace.public_id), "accounts": ["1111111111"]}
    )

    assert response.status_code == 404
    assert Connection.objects.count() == 0


def test_only_the_listed_accounts_can_be_chosen(signed_in, google, workspace):
    back_from_google(signed_in, consent(signed_in, google))

    response = signed_in.post(
        "/connect/google/choose", {"workspace": str(workspace.public_id), "accounts": ["4444444444"]}
    )

    assert response.status_code == 400
    assert Connection.objects.count() == 0


def test_choose_without_a_sign_in_says_to_start_again(signed_in, google):
    response = signed_in.get("/connect/google/choose")

    assert response.status_code == 400
    assert "There is no Google Ads sign-in waiting for a choice" in response.content.decode()


def test_a_pending_choice_sealed_with_a_rotated_away_key_starts_again(signed_in, google, settings, workspace):
    back_from_google(signed_in, consent(signed_in, google))
    settings.ENCRYPTION_KEYS = [Fernet.generate_key().decode()]

    response = signed_in.post("/connect/google/choose", {"workspace": str(workspace.public_id), "accounts": ["1"]})

    assert response.status_code == 400
    assert "start again" in response.content.decode()
    assert PENDING_KEY not in signed_in.session
    assert Connection.objects.count() == 0


# --- what Google sends, and what breaks, while listing ---------------------------------------------


def test_an_accessible_customer_the_user_cannot_read_is_left_out(signed_in, google):
    google.ads.accessible = ["1111111111", "9999999999"]  # 9999999999 answers PERMISSION_DENIED

    back_from_google(signed_in, consent(signed_in, google))
    html = signed_in.get("/connect/google/choose").content.decode()

    assert "Shop DE" in html
    assert [(c.method, c.customer_id) for c in google.ads.calls[1:]] == [
        ("SearchStream", "1111111111"),
        ("SearchStream", "9999999999"),
    ]
    [note] = parse(html).find_all("p", class_="message-warning")
    assert note.text() == (
        "Google Ads account 999-999-9999 is not listed: User doesn't have permission to access customer. "
        "(request id req-permission)"
    )


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (user_permission_denied(), "User doesn't have permission to access customer. (request id req-permission)"),
        (
            ads_failure(
                "authorization_error",
                "CUSTOMER_NOT_ENABLED",
                "The customer account can't be accessed because it is not yet enabled or has been deactivated.",
                status=grpc.StatusCode.PERMISSION_DENIED,
                request_id="req-not-enabled",
            ),
            "The customer account can't be accessed because it is not yet enabled or has been deactivated. "
            "(request id req-not-enabled)",
        ),
    ],
)
def test_a_customer_google_refuses_on_its_own_is_skipped_with_a_note_and_the_others_offered(
    signed_in, google, workspace, failure, reason
):
    google.ads.refuse_customer("2222222222", failure)

    callback = back_from_google(signed_in, consent(signed_in, google))
    page = signed_in.get("/connect/google/choose")

    assert (callback.status_code, callback["Location"]) == (302, "/connect/google/choose")
    document = parse(page.content)
    assert [label.text().split()[:2] for label in document.find_all("label", class_="account-choice")] == [
        ["Shop", "DE"]
    ]
    assert "Client US" not in page.content.decode()  # reached only through the refused manager
    assert [note.text() for note in document.find_all("p", class_="message-warning")] == [
        f"Google Ads account 222-222-2222 is not listed: {reason}"
    ]
    assert "Ask an admin" not in page.content.decode()
    done = signed_in.post("/connect/google/choose", {"workspace": str(workspace.public_id), "accounts": ["1111111111"]})
    assert done.status_code == 302
    assert [c.external_account_id for c in Connection.objects.filter(provider="google")] == ["1111111111"]


@pytest.mark.parametrize("refused", [["1111111111", "2222222222"], ["2222222222"]])
def test_a_developer_token_google_has_not_approved_is_an_error_page_with_googles_message(
    signed_in, google, caplog, refused
):
    # Test access only: ListAccessibleCustomers answers, every production account is refused.
    for customer_id in refused:
        google.ads.refuse_customer(customer_id, developer_token_not_approved())

    response = back_from_google(signed_in, consent(signed_in, google))

    assert response.status_code == 502
    page = html_text.unescape(response.content.decode())
    assert (
        "Google refused this installation's developer token: The developer token is only approved for use with "
        "test accounts. To access non-test accounts, apply for Basic or Standard access. (request id "
        "req-token-test-only) Tell an administrator; reconnecting will not help." in page
    )
    assert "Ask an admin" not in page
    assert PENDING_KEY not in signed_in.session
    assert "Google Ads refused this installation" in caplog.text


def test_a_cloud_project_google_refuses_is_an_error_page_with_googles_message(signed_in, google):
    google.ads.fail_next(
        ads_failure(
            "authorization_error",
            "PROJECT_DISABLED",
            "The Google Cloud project sent in the request is disabled.",
            status=grpc.StatusCode.PERMISSION_DENIED,
            request_id="req-project",
        )
    )

    response = back_from_google(signed_in, consent(signed_in, google))

    assert response.status_code == 502
    assert (
        "Google refused this installation's access to the Google Ads API: The Google Cloud project sent in the "
        "request is disabled. (request id req-project)" in html_text.unescape(response.content.decode())
    )


def test_a_google_login_without_google_ads_says_so_instead_of_reconnect(signed_in, google):
    google.ads.fail_next(not_ads_user())  # on ListAccessibleCustomers

    response = back_from_google(signed_in, consent(signed_in, google))

    assert response.status_code == 400
    page = html_text.unescape(response.content.decode())
    assert (
        "This Google login has no Google Ads accounts. Sign in with the Google account that has access to "
        "Google Ads." in page
    )
    assert RECONNECT_MESSAGE not in page
    assert [c.method for c in google.ads.calls] == ["ListAccessibleCustomers"]
    assert PENDING_KEY not in signed_in.session


def test_unknown_time_zones_and_long_names_are_made_safe(signed_in, google, workspace, caplog):
    long_name = "Ads " * 80
    google.ads.add_account(Account("5555555555", long_name, time_zone="Mars/Olympus"))
    google.ads.accessible = ["5555555555"]
    back_from_google(signed_in, consent(signed_in, google))

    signed_in.post("/connect/google/choose", {"workspace": str(workspace.public_id), "accounts": ["5555555555"]})

    connection = Connection.objects.get(provider="google")
    assert (connection.name, connection.timezone) == (long_name[:200], "UTC")
    # (Logged where it is first seen: the account listing or the connect flow.)
    assert "time zone 'Mars/Olympus'; using UTC" in caplog.text


def test_a_missing_ca_bundle_is_a_clear_503(signed_in, google, settings, tmp_path):
    settings.GOOGLE_ADS_CA_BUNDLE = str(tmp_path / "missing.pem")

    response = back_from_google(signed_in, consent(signed_in, google))

    assert response.status_code == 503
    assert "GOOGLE_ADS_CA_BUNDLE cannot be read" in response.content.decode()


def test_an_api_version_the_sdk_does_not_have_is_a_clear_503(signed_in, google, settings):
    settings.GOOGLE_ADS_API_VERSION = "v1"

    response = back_from_google(signed_in, consent(signed_in, google))

    assert response.status_code == 503
    assert "GOOGLE_ADS_API_VERSION=&#x27;v1&#x27; is not in the installed google-ads" in response.content.decode()


def test_an_unexpected_error_while_listing_is_a_clear_502(signed_in, google, monkeypatch, caplog):
    def broken(**kwargs):
        raise RuntimeError("something the provider module did not expect")

    monkeypatch.setattr(google_oauth, "google_customers_accessible", broken)

    response = back_from_google(signed_in, consent(signed_in, google))

    assert response.status_code == 502
    assert "Google Ads could not list your accounts (an unexpected error); try again." in response.content.decode()
    assert "something the provider module did not expect" in caplog.text  # for the operator, with its traceback


def test_the_fake_answers_an_unknown_customer_with_permission_denied(google):
    from google.ads.googleads.errors import GoogleAdsException

    from syncing.providers.google import google_ads_sdk

    token = google.oauth.issue_access_token()
    with pytest.raises(GoogleAdsException) as caught:
        list(
            google_ads_sdk().google_ads.search_stream(
                customer_id="9999999999",
                query="SELECT customer_client.id FROM customer_client",
                metadata=[("authorization", f"Bearer {token}")],
            )
        )

    assert caught.value.error.code().name == "PERMISSION_DENIED"
    assert caught.value.failure.errors[0].error_code.authorization_error.name == "USER_PERMISSION_DENIED"
