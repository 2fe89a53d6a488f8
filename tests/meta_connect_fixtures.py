"""What the tests of connecting Meta ad accounts share: a fake Graph API (and its dialog) on
127.0.0.1, a signed-in browser, the clock frozen at NOW, and the steps of the connect flow.

The tests (test_meta_oauth, test_meta_connect_views, test_meta_admin) cover OAuth against the fake
Graph API, the shared connect flow, and the admin's token paste.

The fixtures are imported by the modules that use them, as `graph_fixture as graph_fixture`:
pytest finds a fixture among a module's names (and applies the autouse one, `frozen`, to every
test of a module that imports it), and the redundant alias tells ruff the import is meant though
no code uses it. Their functions are named apart from the fixtures (`name=`), so that a test's
parameter does not shadow the import.
"""

import hashlib
import hmac
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import time_machine
from django.test import Client

from connections.models import Connection, SyncStatus
from syncing.providers.meta import RECONNECT_MESSAGE
from tests.fakes.graph import FakeGraph
from tests.pages import parse

CODE = "AQDcode-from-the-dialog"
SHORT = "EAAshort-lived-token"
LONG = "EAAlong-lived-token-sixty-days"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SIXTY_DAYS = 60 * 86400
FLOW_KEY = "connect_meta_flow"
PENDING_KEY = "connect_meta_pending"
ACCOUNTS = [
    {
        "id": "act_111",
        "account_id": "111",
        "name": "Shop US",
        "currency": "USD",
        "timezone_name": "America/Chicago",
        "account_status": 1,
    },
    {
        "id": "act_222",
        "account_id": "222",
        "name": "Shop DE",
        "currency": "EUR",
        "timezone_name": "Europe/Berlin",
        "account_status": 1,
    },
    {
        "id": "act_333",
        "account_id": "333",
        "name": "Agency Test",
        "currency": "GBP",
        "timezone_name": "Europe/London",
        "account_status": 1,
    },
    {"id": "act_444", "account_id": "444", "name": "Old shop", "currency": "USD", "account_status": 101},
    {"id": "act_555", "account_id": "555", "name": "Banned shop", "currency": "USD", "account_status": 2},
]


@pytest.fixture(name="graph")
def graph_fixture(settings):
    fake = FakeGraph()
    fake.codes = {CODE: SHORT}
    fake.dialog_code = CODE
    fake.long_lived = {SHORT: (LONG, SIXTY_DAYS)}
    fake.valid_tokens = {LONG}
    fake.ad_accounts = {LONG: ACCOUNTS}
    fake.page_size = 2  # /me/adaccounts comes in three pages
    # The app has "Require App Secret" on: every API call must carry appsecret_proof.
    fake.require_proof = True
    with fake.running():
        settings.META_GRAPH_URL = fake.url
        settings.META_APP_ID = fake.app_id
        settings.META_APP_SECRET = fake.app_secret
        settings.META_OAUTH_DIALOG_URL = fake.url
        yield fake


@pytest.fixture(name="browser")
def browser_fixture(owner, workspace) -> Client:
    client = Client()
    client.force_login(owner)
    return client


@pytest.fixture(name="frozen", autouse=True)
def frozen_fixture():
    with time_machine.travel(NOW, tick=False):
        yield


def start(client: Client) -> str:
    """Press "Connect Meta account": the dialog's URL."""
    response = client.post("/connect/meta/start")
    assert response.status_code == 302
    return response["Location"]


def consent(client: Client) -> str:
    """Start, and let the (fake) dialog consent: the callback URL it sends the browser to."""
    answer = httpx.get(start(client), follow_redirects=False)
    assert answer.status_code == 302, answer.text
    url = urlsplit(answer.headers["Location"])
    return f"{url.path}?{url.query}"


def state_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["state"][0]


def callback(client: Client, **params):
    return client.get("/connect/meta/callback", params)


def connect(client: Client, accounts: list[str], **extra):
    assert client.get(consent(client))["Location"] == "/connect/meta/choose"
    response = client.post("/connect/meta/choose", {"accounts": accounts, **extra})
    assert response.status_code == 302, response.content.decode()
    return response


def meta_connections():
    return Connection.objects.filter(provider="meta").order_by("external_account_id")


def messages_on_settings(client: Client) -> list[str]:
    return [li.text() for li in parse(client.get("/settings").content).find_all("li", class_="message")]


def proof(token: str) -> str:
    return hmac.new(b"app-secret", token.encode(), hashlib.sha256).hexdigest()


def in_auth_error(connection: Connection) -> None:
    """As syncing.services.sync_fail leaves a connection whose access expired: unscheduled."""
    Connection.objects.filter(pk=connection.pk).update(
        sync_status=SyncStatus.ERROR, last_sync_error=RECONNECT_MESSAGE, last_sync_error_kind="auth", next_sync_at=None
    )
