"""Connecting Meta ad accounts, Meta's side (syncing/providers/meta/oauth.py): the token
exchanges and their errors, the long-lived token's expiry, the account listing (its pages, time
zones, the accounts offered) with the appsecret_proof, the fake Graph API's own checks, and no
token, code or secret logged, rendered or kept in plain text.

Against a fake Graph API (and its dialog) on 127.0.0.1 (see tests/meta_connect_fixtures.py),
with the clock frozen at NOW.
"""

import logging

import httpx
import pytest

from syncing.providers.meta import oauth as meta_oauth
from tests.fakes.graph import VERSION, Answer, FakeGraph
from tests.meta_connect_fixtures import (
    ACCOUNTS,
    CODE,
    LONG,
    PENDING_KEY,
    SHORT,
    callback,
    connect,
    consent,
    meta_connections,
    proof,
    start,
    state_of,
)
from tests.meta_connect_fixtures import browser_fixture as browser_fixture  # a fixture: pytest finds it by name
from tests.meta_connect_fixtures import frozen_fixture as frozen_fixture  # a fixture: pytest finds it by name
from tests.meta_connect_fixtures import graph_fixture as graph_fixture  # a fixture: pytest finds it by name

# --- the OAuth flow -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_refused_code_shows_metas_message_and_no_secret(browser, graph):
    state = state_of(start(browser))

    response = callback(browser, code="AQDstale-code", state=state)

    html = response.content.decode()
    assert response.status_code == 502
    assert "Meta refused the request: Invalid verification code format." in html
    assert "app-secret" not in html
    assert "AQDstale-code" not in html
    assert not meta_connections().exists()


@pytest.mark.django_db
def test_an_answer_that_is_not_a_json_object_is_a_clear_error(browser, graph):
    graph.script(Answer(200, "[1, 2, 3]"))

    response = browser.get(consent(browser))

    assert response.status_code == 502
    assert "Meta sent an unreadable answer (HTTP 200); try again." in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("expires_in", ["soon", "", -5, 0])
def test_an_unreadable_expires_in_connects_with_an_unknown_expiry(browser, graph, caplog, expires_in):
    graph.long_lived = {SHORT: (LONG, expires_in)}

    connect(browser, ["111"])

    assert meta_connections().get().credentials_expires_at is None
    if expires_in != "":
        assert f"Meta sent an unreadable expires_in {expires_in!r}" in caplog.text


@pytest.mark.django_db
def test_an_absurd_expires_in_connects_with_an_unknown_expiry(browser, graph, caplog):
    graph.long_lived = {SHORT: (LONG, 10**12)}

    connect(browser, ["111"])

    assert meta_connections().get().credentials_expires_at is None
    assert f"Meta sent an unreadable expires_in {10**12!r}" in caplog.text


@pytest.mark.django_db
def test_unknown_time_zones_become_utc_with_a_warning(browser, graph, caplog):
    zones = ["America", "Mars/Olympus", "../../etc/passwd", None]
    graph.ad_accounts = {
        LONG: [
            {"account_id": str(900 + i), "name": f"Zone {i}", "timezone_name": zone, "account_status": 1}
            for i, zone in enumerate(zones)
        ]
    }

    connect(browser, ["900", "901", "902", "903"])

    assert [c.timezone for c in meta_connections()] == ["UTC", "UTC", "UTC", "UTC"]
    for zone in ["America", "Mars/Olympus", "../../etc/passwd"]:
        assert f"Meta reported an unknown time zone {zone!r}; using UTC" in caplog.text


@pytest.mark.django_db
def test_the_account_page_cap_is_said_on_the_page(browser, graph, monkeypatch, caplog):
    monkeypatch.setattr(meta_oauth, "MAX_ACCOUNT_PAGES", 1)

    browser.get(consent(browser))
    html = browser.get("/connect/meta/choose").content.decode()

    assert "This Meta login reaches more ad accounts than we list; only the first 2 are shown." in html
    assert "Meta lists more than 1 pages of ad accounts" in caplog.text


@pytest.mark.django_db
def test_graph_calls_of_the_connect_flow_carry_the_appsecret_proof(browser, graph):
    browser.get(consent(browser))

    api_calls = [r for r in graph.requests if "access_token" in r.params and "client_secret" not in r.params]
    assert [r.path for r in api_calls] == ["/v26.0/me/adaccounts"] * 3
    assert all(r.params["appsecret_proof"] == proof(LONG) for r in api_calls)


def test_the_fake_graph_refuses_calls_without_a_proof_only_when_it_requires_one():
    fake = FakeGraph()
    fake.ad_accounts = {LONG: ACCOUNTS}
    with fake.running():
        url = f"{fake.url}/{VERSION}/me/adaccounts"
        fake.require_proof = True
        refused = httpx.get(url, params={"access_token": LONG}).json()
        wrong = httpx.get(url, params={"access_token": LONG, "appsecret_proof": "0" * 64}).json()
        accepted = httpx.get(url, params={"access_token": LONG, "appsecret_proof": proof(LONG)}).json()
        fake.require_proof = False
        without = httpx.get(url, params={"access_token": LONG}).json()

    assert refused["error"]["message"] == "API calls from the server require an appsecret_proof argument"
    assert wrong["error"]["message"] == "Invalid appsecret_proof provided in the API argument"
    assert len(accepted["data"]) == len(without["data"]) == 5


def test_the_fake_graph_codes_work_once_and_only_with_the_dialogs_redirect_uri():
    fake = FakeGraph()
    fake.codes = {"code-1": SHORT, "code-2": SHORT}
    fake.dialog_code = "code-1"
    app = {"client_id": fake.app_id, "client_secret": fake.app_secret}
    with fake.running():
        token_url = f"{fake.url}/{VERSION}/oauth/access_token"
        dialog = httpx.get(
            f"{fake.url}/{VERSION}/dialog/oauth",
            params={"client_id": fake.app_id, "redirect_uri": "https://a.example/cb", "state": "s"},
        )
        wrong_uri = httpx.get(token_url, params={**app, "code": "code-1", "redirect_uri": "https://b.example/cb"})
        fake.codes["code-1"] = SHORT
        fake.code_redirects["code-1"] = "https://a.example/cb"
        right = httpx.get(token_url, params={**app, "code": "code-1", "redirect_uri": "https://a.example/cb"})
        again = httpx.get(token_url, params={**app, "code": "code-1", "redirect_uri": "https://a.example/cb"})

    assert dialog.headers["Location"] == "https://a.example/cb?code=code-1&state=s"
    assert "redirect_uri is identical" in wrong_uri.json()["error"]["message"]
    assert right.json()["access_token"] == SHORT
    assert again.json()["error"]["message"] == "Invalid verification code format."


# --- the ad accounts offered ------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("status", "offered"),
    [
        (1, True),  # active
        (3, True),  # unsettled: still reports insights
        (7, True),  # pending risk review
        (8, True),  # pending settlement
        (9, True),  # in grace period
        (100, True),  # pending closure
        (201, True),  # any active
        ("3", True),
        (None, True),
        (2, False),  # disabled
        (101, False),  # closed
        (202, False),  # any closed
        ("101", False),
    ],
    ids=lambda value: repr(value) if not isinstance(value, bool) else ("offered" if value else "left-out"),
)
def test_only_disabled_and_closed_accounts_are_left_out(browser, graph, status, offered):
    account = {"account_id": "777", "name": "Shop Seven", "currency": "USD", "timezone_name": "UTC"}
    if status is not None:
        account["account_status"] = status
    graph.ad_accounts = {LONG: [account, ACCOUNTS[0]]}

    browser.get(consent(browser))
    html = browser.get("/connect/meta/choose").content.decode()

    assert "Shop US" in html
    assert ("Shop Seven" in html) is offered
    assert ("1 ad account that Meta reports as disabled or closed is not listed." in html) is not offered


@pytest.mark.django_db
def test_an_unsettled_account_can_be_connected(browser, graph):
    graph.ad_accounts = {LONG: [{**ACCOUNTS[0], "account_status": 3}, ACCOUNTS[3]]}

    connect(browser, ["111"])

    assert [c.external_account_id for c in meta_connections()] == ["111"]
    response = browser.post("/connect/meta/choose", {"accounts": ["444"]})
    assert not meta_connections().filter(external_account_id="444").exists()
    assert response.status_code in (302, 400)


# --- secrets --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_tokens_are_never_logged_rendered_or_kept_in_plain_text(browser, graph, caplog):
    caplog.set_level(logging.DEBUG)
    back = consent(browser)
    caplog.clear()  # the test's own visit to the dialog, whose log lines carry the code
    browser.get(back)

    pending = browser.session[PENDING_KEY]
    pages = [browser.get("/connect/meta/choose").content.decode()]
    browser.post("/connect/meta/choose", {"accounts": ["111"]})
    pages.append(browser.get("/settings").content.decode())

    # httpx logged each request (its URL carries the secrets), redacted.
    assert "client_secret=[redacted]" in caplog.text
    assert "fb_exchange_token=[redacted]" in caplog.text
    assert "appsecret_proof=[redacted]" in caplog.text
    for secret in [CODE, SHORT, LONG, "app-secret", proof(LONG)]:
        assert secret not in caplog.text
        assert secret not in pending
        assert all(secret not in page for page in pages)
