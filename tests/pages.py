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
