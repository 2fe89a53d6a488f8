"""The Settings page in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright)
against a live server, with a real Celery worker where a sync has to actually run."""

import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from connections.models import Connection, SyncFrequency

# Playwright's sync API keeps an event loop running in this thread; the ORM calls the tests make
# between browser steps are still plain synchronous code.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    # Skipped on a developer machine without Chromium; CI installs it, and fails if it is missing.
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason="needs Debian's chromium (.ci/run installs it)"
    ),
]


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        # As root, in a container, with no network beyond loopback.
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    }


def sign_in(page: Page, live_server, username: str = "alice", password: str = "password") -> None:
    page.goto(f"{live_server.url}/settings")
    expect(page).to_have_url(re.compile(r"/login/\?next=/settings$"))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{live_server.url}/settings")
    # The URL changes when the navigation commits, before the deferred settings.js has run: a
    # click before then submits the form without JavaScript (a redirect, not the live update).
    page.wait_for_load_state("load")


def card(page: Page, connection: Connection):
    return page.locator(f"#connection-{connection.public_id}")


def test_change_frequency_persists_across_reload(page: Page, live_server, owner, make_connection):
    connection = make_connection(name="Acme Shoes")
    sign_in(page, live_server)
    row = card(page, connection)
    expect(row.locator(".frequency-label")).to_have_text("Manual")

    row.get_by_label("Sync frequency").select_option("realtime")
    row.get_by_role("button", name="Save").click()

    expect(row.locator(".row-message")).to_have_text("Acme Shoes: sync frequency set to Realtime (every 30s).")
    expect(row.locator(".frequency-label")).to_have_text("Realtime (every 30s)")
    page.reload()
    expect(card(page, connection).get_by_label("Sync frequency")).to_have_value("realtime")
    expect(card(page, connection).locator(".frequency-label")).to_have_text("Realtime (every 30s)")
    assert Connection.objects.get(pk=connection.pk).sync_frequency == SyncFrequency.REALTIME


def test_sync_now_goes_live_to_idle_without_reload(page: Page, live_server, owner, make_connection, start_worker):
    start_worker()
    # Simulated API latency, so that Syncing stays on screen long enough to be seen.
    connection = make_connection(name="Acme Shoes", provider_options={"latency_ms": 2500})
    sign_in(page, live_server)
    row = card(page, connection)
    expect(row.locator(".last-completed")).to_have_text("never")
    page.evaluate("window.__noReload = true")

    row.get_by_role("button", name="Sync Now").click()

    expect(row.locator(".row-message")).to_have_text("Acme Shoes: sync queued.")
    expect(row.locator(".pill.status-syncing")).to_have_text("Syncing", timeout=10_000)
    expect(row.locator(".pill.status-idle")).to_have_text("Idle", timeout=15_000)
    expect(row.locator(".last-completed")).to_have_text("just now")
    expect(row.locator(".stats")).to_have_text("1 attempt | 1 change (100.0%)")
    assert page.evaluate("window.__noReload") is True


def test_outsider_cannot_see_or_act_on_another_workspace(page: Page, live_server, outsider, make_connection):
    theirs = make_connection(name="Acme Shoes")
    sign_in(page, live_server, username="charlie")

    expect(page.get_by_text("No connected ad accounts yet")).to_be_visible()
    expect(page.get_by_text("Acme Shoes")).to_have_count(0)
    status = page.evaluate(
        """async (url) => {
            const token = document.cookie.match(/csrftoken=([^;]+)/)[1];
            const response = await fetch(url, {method: "POST", headers: {"X-CSRFToken": token}});
            return response.status;
        }""",
        f"/settings/connections/{theirs.public_id}/sync-now",
    )
    assert status == 404
    assert page.goto(f"{live_server.url}/connections/{theirs.public_id}/sync-status").status == 404
    assert Connection.objects.get(pk=theirs.pk).sync_status == "idle"


def test_forms_work_with_javascript_disabled(browser, live_server, owner, make_connection, broker):
    connection = make_connection(name="Acme Shoes")
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    sign_in(page, live_server)
    row = card(page, connection)

    row.get_by_label("Sync frequency").select_option("hourly")
    row.get_by_role("button", name="Save").click()

    expect(page).to_have_url(f"{live_server.url}/settings#connection-{connection.public_id}")
    expect(page.locator(".messages")).to_have_text("Acme Shoes: sync frequency set to Hourly.")
    expect(card(page, connection).locator(".frequency-label")).to_have_text("Hourly")

    card(page, connection).get_by_role("button", name="Sync Now").click()

    expect(page.locator(".messages")).to_have_text("Acme Shoes: sync queued.")
    expect(card(page, connection).locator(".pill.status-queued")).to_have_text("Queued")
    assert broker.llen("sync_jobs") == 1
    context.close()


def test_screenshots_at_desktop_and_phone_width(browser, live_server, owner, make_connection):
    make_connection(name="Acme Shoes", sync_frequency=SyncFrequency.REALTIME)
    make_connection(name="Bluebird Coffee", sync_frequency=SyncFrequency.HOURLY)
    ARTIFACTS.mkdir(exist_ok=True)
    for name, viewport in {"desktop": (1280, 900), "phone": (390, 844)}.items():
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        page = context.new_page()
        sign_in(page, live_server)
        path = ARTIFACTS / f"settings-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000
        # Nothing overflows sideways at phone width.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        context.close()


def test_banner_says_when_syncs_stop_and_goes_away_live(page: Page, live_server, owner, make_connection):
    from datetime import timedelta

    from django.utils import timezone

    from syncing.models import SCHEDULER_HEARTBEAT, HeartbeatKind
    from syncing.services import heartbeat_record

    make_connection(name="Acme Shoes", sync_frequency=SyncFrequency.REALTIME)
    sign_in(page, live_server)
    banner = page.get_by_role("alert")

    # Nothing has ever run here: a newcomer is told why nothing syncs, not left at "due now".
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Scheduled syncs are not running: the scheduler has not run yet.")

    # The engine starts: the banner goes away on the next poll, without a reload. (Beats dated a
    # minute ahead stay fresh however slowly this machine runs the test.)
    ahead = timezone.now() + timedelta(minutes=1)
    heartbeat_record(name=SCHEDULER_HEARTBEAT, kind=HeartbeatKind.SCHEDULER, now=ahead)
    heartbeat_record(name="sync@browser-test", kind=HeartbeatKind.SYNC_WORKER, now=ahead)
    expect(banner).to_be_hidden()
