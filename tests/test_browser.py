"""The Settings page in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright)
against a live server, with a real Celery worker where a sync has to actually run."""

import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from connections.models import Connection, SyncFrequency
from tests.pages import agency_states, connections_bulk

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
    # Busy: Sync Now is disabled with a spinner, and "sync queued." went with the queued state.
    expect(row.get_by_role("button", name="Sync Now")).to_be_disabled()
    expect(row.get_by_role("button", name="Sync Now")).to_have_attribute("aria-busy", "true")
    expect(row.locator(".row-message")).to_have_text("")
    expect(row.locator(".pill.status-idle")).to_have_text("Idle", timeout=15_000)
    expect(row.get_by_role("button", name="Sync Now")).to_be_enabled()
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


# --- an agency's 300 accounts (issue 14) ---------------------------------------------------------

SERIOUS = {"serious", "critical"}


def axe_problems(page: Page) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now, one line each."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes'][:3]]}"
        for v in results.response["violations"]
        if v["impact"] in SERIOUS
    ]


@pytest.fixture
def agency(owner, workspace):
    from django.utils import timezone

    now = timezone.now()
    connections = connections_bulk(workspace, 300, now=now)
    return connections, agency_states(connections, now=now)


@pytest.mark.parametrize("width", [1280, 390])
def test_agency_overview_list_fits_is_accessible_and_filters(browser, live_server, agency, width):
    _, states = agency
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": width, "height": 900 if width > 400 else 844})
    page = context.new_page()
    sign_in(page, live_server)

    # 300 accounts: the compact list, a page of 100, and the counters on top.
    expect(page.locator(".showing")).to_have_text("Showing 1–100 of 300")
    expect(page.locator(".list-row")).to_have_count(100)
    expect(page.locator('[data-count="reconnect"]')).to_have_text(str(states["auth"]))
    expect(page.locator('[data-count="error"]')).to_have_text(str(states["auth"] + states["error"]))
    page.screenshot(path=str(ARTIFACTS / f"settings-{width}.png"))
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert axe_problems(page) == []

    # A counter is a filter: only the accounts that need reconnecting, their error first.
    page.get_by_role("link", name=f"{states['auth']} Need reconnecting").click()
    expect(page).to_have_url(re.compile(r"\?status=reconnect$"))
    expect(page.locator(".list-row")).to_have_count(states["auth"])
    expect(page.locator(".list-row .frequency-label").first).to_have_text("Paused — reconnect")
    page.screenshot(path=str(ARTIFACTS / f"settings-filtered-{width}.png"))
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    # The cards, with their pictures, for the same accounts.
    page.get_by_role("link", name="Cards").click()
    expect(page.locator("section.card.connection")).to_have_count(min(states["auth"], 20))
    page.screenshot(path=str(ARTIFACTS / f"settings-cards-{width}.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert axe_problems(page) == []
    context.close()


def test_pause_and_resume_in_place(page: Page, live_server, owner, make_connection):
    connection = make_connection(name="Acme Shoes", sync_frequency=SyncFrequency.HOURLY)
    sign_in(page, live_server)
    row = card(page, connection)

    row.get_by_role("button", name="Pause").click()

    expect(row.locator(".row-message")).to_have_text("Acme Shoes: automated syncs paused. Sync Now still works.")
    expect(row.locator(".frequency-label")).to_have_text("Paused — resumes as Hourly")
    expect(row.get_by_role("button", name="Pause")).to_be_hidden()
    row.get_by_role("button", name="Resume").click()
    expect(row.locator(".frequency-label")).to_have_text("Hourly")
    # The message of the pause went with the paused state; the resume's own says so.
    expect(row.locator(".row-message")).to_have_text("Acme Shoes: automated syncs resumed (Hourly).")
    assert Connection.objects.get(pk=connection.pk).paused_at is None


def test_times_in_the_browser_time_zone(browser, live_server, owner, make_connection):
    from datetime import timedelta

    from django.utils import timezone

    connection = make_connection(name="Acme Shoes")
    completed = timezone.now() - timedelta(minutes=3)
    Connection.objects.filter(pk=connection.pk).update(last_sync_completed_at=completed, total_syncs_attempted=1)
    context = browser.new_context(timezone_id="America/New_York")
    page = context.new_page()
    sign_in(page, live_server)

    moment = card(page, connection).locator(".last-completed time")
    local = completed.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))
    expect(moment).to_have_attribute("title", f"{local:%Y-%m-%d %H:%M:%S} {local:%Z}")
    expect(moment).to_have_text("3 min ago")
    expect(page.locator("[data-zone-name]")).to_have_text("America/New_York")
    context.close()


def test_admin_lists_fit_at_desktop_width(browser, live_server, admin_user, agency):
    from syncing.models import SyncRun

    connections, _ = agency
    from django.utils import timezone

    SyncRun.objects.bulk_create(
        SyncRun(
            connection=c,
            job_id=__import__("uuid").uuid4(),
            trigger="scheduled",
            started_at=timezone.now(),
            outcome="error",
            error_class="permanent",
            error_message="The ad account is disabled.",
        )
        for c in connections[:30]
    )
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("password")
    page.get_by_role("button", name="Log in").click()
    for name, url in {"connections": "/admin/connections/connection/", "sync-runs": "/admin/syncing/syncrun/"}.items():
        page.goto(f"{live_server.url}{url}")
        page.screenshot(path=str(ARTIFACTS / f"admin-{name}-1280.png"))
        # The changelist's table scrolls inside its own box when too wide: it must not need to.
        widths = page.evaluate(
            "(() => { const t = document.querySelector('#result_list');"
            " return [Math.ceil(t.getBoundingClientRect().right), document.documentElement.clientWidth,"
            " t.parentElement.scrollWidth, t.parentElement.clientWidth]; })()"
        )
        assert widths[0] <= widths[1], (name, widths)
        assert widths[2] <= widths[3], (name, widths)
    context.close()


# --- run history, a run's page, cancel (issue 13) --------------------------------------------------------


def _history(connection: Connection, now) -> None:
    """A morning of runs: a restatement, a quiet run, a failure; the newest changed three rows."""
    import uuid
    from datetime import date, timedelta

    from syncing.models import SyncChange, SyncRun

    specs = [
        (1, "scheduled", "success", 4, 96, 3, ""),
        (31, "scheduled", "success", 4, 96, 0, ""),
        (61, "manual", "error", 1, 0, 0, "Meta answered 500 three times; the next sync tries again."),
        (91, "backfill", "success", 12, 1440, 38, ""),
    ]
    runs = []
    for minutes, trigger, outcome, calls, fetched, written, error in specs:
        start = now - timedelta(minutes=minutes)
        runs.append(
            SyncRun.objects.create(
                connection=connection,
                job_id=uuid.uuid4(),
                trigger=trigger,
                window_since=date(2026, 10, 1) if trigger == "backfill" else now.date() - timedelta(days=2),
                window_until=date(2026, 10, 31) if trigger == "backfill" else now.date(),
                started_at=start,
                finished_at=start + timedelta(seconds=3.2 if outcome == "success" else 41),
                outcome=outcome,
                api_calls=calls,
                rows_fetched=fetched,
                rows_written=written,
                error_class="transient" if error else "",
                error_message=error,
            )
        )
    today, two_days_ago = now.date(), now.date() - timedelta(days=2)
    for entity, name, day, restated, diff in [
        ("c1", "Black Friday — Prospecting", two_days_ago, True, {"conversions": ["41", "44"]}),
        ("c1", "Black Friday — Prospecting", today, False, {"spend": ["120.5", "131.25"], "clicks": ["880", "951"]}),
        ("c2", "Retargeting — Cart abandoners", today, False, {"impressions": ["10400", "11230"]}),
    ]:
        SyncChange.objects.create(
            run=runs[0],
            level="campaign",
            entity_id=entity,
            entity_name=name,
            date=day,
            added=False,
            restated=restated,
            diff=diff,
        )


def test_run_history_in_place_run_page_and_cancel_at_phone_width(browser, live_server, owner, make_connection):
    from django.utils import timezone

    from syncing.models import SyncRun
    from syncing.services import connection_enqueue_sync

    now = timezone.now()
    connection = make_connection(name="Acme Shoes", sync_frequency=SyncFrequency.HOURLY)
    _history(connection, now)
    queued = make_connection(name="Bluebird Coffee")
    connection_enqueue_sync(connection=queued, now=now, send=False)
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 390, "height": 844}, timezone_id="Europe/Paris")
    page = context.new_page()
    sign_in(page, live_server)
    row = card(page, connection)

    # Opened in place: the table is fetched then, not carried by the first screen.
    expect(row.locator(".runs-table")).to_have_count(0)
    row.get_by_text("Recent runs").click()
    runs = row.locator(".runs-table tbody tr")
    expect(runs).to_have_count(4)
    expect(runs.first.locator('[data-label="Changes"]')).to_have_text("3 restated")
    expect(runs.nth(2).locator('[data-label="Outcome"]')).to_contain_text("Meta answered 500 three times")
    expect(row.locator(".runs-table caption")).to_contain_text("times in Europe/Paris")
    row.locator("details.runs").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "run-history-390.png"))
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    runs.first.get_by_role("link").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sync run of Acme Shoes")
    expect(page.locator(".ledger-summary")).to_have_text(f"3 rows changed; restated {_day(now, 2)}.")
    expect(page.locator(".ledger-table tbody tr")).to_have_count(4)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.get_by_role("link", name="← Settings").click()

    # Cancel the queued sync: the block goes back to Idle in place and the button goes with it;
    # its open run history shows the cancelled run without a reload.
    other = card(page, queued)
    other.get_by_text("Recent runs").click()
    expect(other.locator(".runs-panel")).to_have_text("No runs yet: press Sync Now, or wait for the schedule.")
    other.get_by_role("button", name="Cancel sync").click()
    expect(other.locator(".row-message")).to_have_text(
        "Bluebird Coffee: the queued sync was cancelled; it will not run."
    )
    expect(other.locator(".pill.status-idle")).to_have_text("Idle")
    expect(other.get_by_role("button", name="Cancel sync")).to_have_count(0)
    expect(other.get_by_role("button", name="Sync Now")).to_be_enabled()
    expect(other.locator('.runs-table [data-label="Outcome"]')).to_have_text("Cancelled Cancelled before it started.")
    assert SyncRun.objects.get(connection=queued).outcome == "cancelled"
    context.close()

    # The run's page at desktop width, for the record.
    context = browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="Europe/Paris")
    page = context.new_page()
    sign_in(page, live_server)
    run = SyncRun.objects.filter(connection=connection).first()
    page.goto(f"{live_server.url}/settings/connections/{connection.public_id}/runs/{run.public_id}")
    expect(page.locator(".ledger-table")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "run-detail-1280.png"), full_page=True)
    assert axe_problems(page) == []
    context.close()


def _day(now, days_ago: int) -> str:
    from datetime import timedelta

    day = now.date() - timedelta(days=days_ago)
    return f"{day:%b} {day.day}"
