"""The small HTML tree and the helpers the Settings page and admin tests share.

Pages are parsed with a small html.parser tree (below) so tests assert the exact text a person
reads in each element, not fragments of markup. Used by test_settings_page, test_settings_forms,
test_admin, test_health and the connect flows' tests.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html.parser import HTMLParser

from django.test import Client

from connections.models import Connection
from syncing.services import connection_enqueue_sync, sync_start

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
QUEUE_DOWN = "The job queue is unavailable; try again in a moment."


# --- a small HTML tree -------------------------------------------------------------------------

VOID_TAGS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"})


class Node:
    def __init__(self, tag: str, attrs: dict[str, str]):
        self.tag = tag
        self.attrs = attrs
        self.children: list[Node | str] = []

    def text(self) -> str:
        """The text a person reads, whitespace collapsed."""
        parts: list[str] = []

        def walk(node: Node) -> None:
            for child in node.children:
                if isinstance(child, str):
                    parts.append(child)
                else:
                    walk(child)

        walk(self)
        return " ".join("".join(parts).split())

    def iter(self):
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.iter()

    def find_all(self, tag: str | None = None, *, class_: str | None = None, **attrs: str) -> list[Node]:
        return [
            node
            for node in self.iter()
            if (tag is None or node.tag == tag)
            and (class_ is None or class_ in node.attrs.get("class", "").split())
            and all(node.attrs.get(name) == value for name, value in attrs.items())
        ]

    def one(self, tag: str | None = None, *, class_: str | None = None, **attrs: str) -> Node:
        found = self.find_all(tag, class_=class_, **attrs)
        assert len(found) == 1, f"expected one <{tag} class={class_} {attrs}>, found {len(found)}"
        return found[0]


class _TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {name: value or "" for name, value in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID_TAGS:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Node(tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag):
        for index in range(len(self.stack) - 1, 0, -1):
            if self.stack[index].tag == tag:
                del self.stack[index:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(html: str | bytes) -> Node:
    builder = _TreeBuilder()
    builder.feed(html.decode() if isinstance(html, bytes) else html)
    builder.close()
    return builder.root


# --- helpers ------------------------------------------------------------------------------------


def signed_in(user, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def settings_page(client: Client) -> Node:
    response = client.get("/settings")
    assert response.status_code == 200
    return parse(response.content)


def card(doc: Node, connection: Connection) -> Node:
    return doc.one("section", id=f"connection-{connection.public_id}")


def status_fields(node: Node) -> dict[str, str]:
    """Each line of a status block, as {"Status": "Idle", "Stats": "0 attempts", ...}."""
    grid = node.one("dl", class_="status-grid")
    return {div.one("dt").text(): div.one("dd").text() for div in grid.find_all("div")}


def page_messages(doc: Node) -> list[tuple[str, str]]:
    return [(li.attrs["class"], li.text()) for li in doc.find_all("li", class_="message")]


def form_fields(form: Node) -> dict[str, str]:
    """What the browser would send for the form, as it is on the page."""
    fields = {
        node.attrs["name"]: node.attrs.get("value", "") for node in form.find_all("input") if "name" in node.attrs
    }
    for select in form.find_all("select"):
        selected = [option for option in select.find_all("option") if "selected" in option.attrs]
        fields[select.attrs["name"]] = selected[0].attrs["value"]
    return fields


def update(connection: Connection, **fields) -> Connection:
    Connection.objects.filter(pk=connection.pk).update(**fields)
    connection.refresh_from_db()
    return connection


def started(connection: Connection, now: datetime = NOW):
    job = connection_enqueue_sync(connection=connection, now=now, send=False)
    return sync_start(connection_id=connection.pk, job_id=job.job_id, now=now)


def frequency_url(connection) -> str:
    return f"/settings/connections/{connection.public_id}/frequency"


def sync_now_url(connection) -> str:
    return f"/settings/connections/{connection.public_id}/sync-now"


JSON = {"HTTP_ACCEPT": "application/json"}


def connections_bulk(workspace, count: int, *, now: datetime, provider: str = "demo", prefix: str = "Account") -> list:
    """`count` connections in one INSERT, each as connection_create makes it (idle, scheduled
    from its frequency): the page's tests need hundreds, and one by one is seconds of setup.
    Frequencies cycle through the five; names sort in creation order."""
    from connections.models import SyncFrequency
    from syncing import schedule

    frequencies = list(SyncFrequency.values)
    rows = []
    for index in range(count):
        frequency = frequencies[index % len(frequencies)]
        connection = Connection(
            workspace=workspace,
            provider=provider,
            external_account_id=f"{provider}-{index:04d}"
            if prefix == "Account"
            else f"{provider}-{prefix}-{index:04d}",
            name=f"{prefix} {index:04d}",
            credentials={},
            sync_frequency=frequency,
        )
        connection.next_sync_at = schedule.next_sync_after_change(
            frequency=frequency, last_attempted_at=None, public_id=connection.public_id, now=now
        )
        rows.append(connection)
    return Connection.objects.bulk_create(rows)


def agency_states(connections: list, *, now: datetime) -> dict[str, int]:
    """Give bulk-made connections the mix an agency sees: most synced recently, some stale, a few
    failing, some waiting for a reconnect, some queued, some paused. Returns how many of each."""
    import uuid
    from datetime import timedelta

    from connections.models import PauseReason

    groups: dict[str, list[int]] = {"auth": [], "error": [], "queued": [], "paused": [], "stale": [], "ok": []}
    for index, connection in enumerate(connections):
        kind = (
            "auth"
            if index % 29 == 3
            else "error"
            if index % 23 == 5
            else "queued"
            if index % 31 == 7
            else "paused"
            if index % 37 == 11
            else "stale"
            if index % 17 == 2 and connection.sync_frequency not in ("manual",)
            else "ok"
        )
        groups[kind].append(connection.pk)
    synced = {"last_sync_attempted_at": now - timedelta(seconds=20), "total_syncs_attempted": 40}
    Connection.objects.filter(pk__in=groups["ok"]).update(
        **synced, last_sync_completed_at=now - timedelta(seconds=18), total_syncs_with_changes=9
    )
    Connection.objects.filter(pk__in=groups["stale"]).update(
        last_sync_attempted_at=now - timedelta(days=3), last_sync_completed_at=now - timedelta(days=3)
    )
    Connection.objects.filter(pk__in=groups["auth"]).update(
        **synced,
        last_sync_completed_at=now - timedelta(minutes=2),
        sync_status="error",
        last_sync_error="Meta said the access token has expired. Reconnect the account.",
        last_sync_error_kind="auth",
        next_sync_at=None,
    )
    Connection.objects.filter(pk__in=groups["error"]).update(
        **synced, sync_status="error", last_sync_error="The ad account is disabled.", last_sync_error_kind="permanent"
    )
    for pk in groups["queued"]:
        Connection.objects.filter(pk=pk).update(sync_status="queued", job_id=uuid.uuid4(), queued_at=now)
    Connection.objects.filter(pk__in=groups["paused"]).update(
        paused_at=now, pause_reason=PauseReason.USER, next_sync_at=None
    )
    return {kind: len(pks) for kind, pks in groups.items()}
