"""adsync.broker: the embedded mode's filesystem transport, against kombu's own.

No database and no Redis: each test has a broker folder of its own in tmp_path. The race tests
pause the producing thread at the file edge (kombu's `lock()`, or `os.link`) with events, so
the interleaving that kombu issue 1551 hits once in a few thousand messages happens every time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Empty
from time import monotonic
from unittest import mock

import pytest
from kombu import Connection, Exchange, Queue
from kombu.transport import filesystem

from adsync import broker

pytestmark = pytest.mark.embedded

ROOT = Path(__file__).resolve().parent.parent
STOCK_URL = "filesystem://localhost/"
OUR_URL = f"{broker.SCHEME}://localhost/"
WRITER = "writer"  # the name prefix of the thread the pauses apply to
DEADLINE = 10.0  # seconds any single wait may take before the test fails
MESSAGE = {"body": "eyJoZWxsbyI6ICJ3b3JsZCJ9", "headers": {}, "properties": {"delivery_tag": "t1"}}


def transport_options(tmp_path: Path, **extra) -> dict:
    """The embedded settings' options, in tmp_path."""
    folders = {name: tmp_path / name for name in ("queue", "processed", "control")}
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
    return {
        "data_folder_in": str(folders["queue"]),
        "data_folder_out": str(folders["queue"]),
        "processed_folder": str(folders["processed"]),
        "control_folder": str(folders["control"]),
        "store_processed": False,
        "polling_interval": 0.05,
        **extra,
    }


@pytest.fixture
def channels(tmp_path) -> Iterator:
    """channels(url): a producer's and a consumer's channel (two connections) on tmp_path."""
    opened: list[Connection] = []

    def make(url: str):
        pair = []
        for _ in range(2):
            connection = Connection(url, transport_options=transport_options(tmp_path))
            opened.append(connection)
            pair.append(connection.default_channel)
        return pair

    yield make
    for connection in opened:
        connection.release()


@contextlib.contextmanager
def writer_paused() -> Iterator[tuple[threading.Event, threading.Event]]:
    """Stop the writer thread at its first file-edge call: kombu's lock() or os.link.

    kombu's _put and _queue_bind have created their file (empty) when they call lock(); our
    _queue_bind has written its temporary file when it calls os.link. Yields (reached,
    release): `reached` is set once the writer is held, `release` lets it go on.
    """
    reached, release = threading.Event(), threading.Event()
    real_lock, real_link = filesystem.lock, os.link

    def hold() -> None:
        if threading.current_thread().name.startswith(WRITER) and not reached.is_set():
            reached.set()
            if not release.wait(DEADLINE):
                raise AssertionError("the writer was never released")

    def lock(f, flags):
        hold()
        real_lock(f, flags)

    def link(src, dst, **kwargs):
        hold()
        real_link(src, dst, **kwargs)

    with mock.patch.object(filesystem, "lock", lock), mock.patch.object(os, "link", link):
        try:
            yield reached, release
        finally:
            release.set()


def message_files(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".msg"))


# --- the race: a consumer polling while a producer writes ----------------------------------------


def test_stock_channel_consumer_reads_a_message_before_it_is_written(channels):
    """kombu issue 1551, made deterministic. If this starts failing, kombu has fixed _put (and
    adsync.broker's override of it may go)."""
    producer, consumer = channels(STOCK_URL)
    with writer_paused() as (reached, release), ThreadPoolExecutor(1, thread_name_prefix=WRITER) as pool:
        put = pool.submit(producer._put, "jobs", MESSAGE)
        assert reached.wait(DEADLINE)
        with pytest.raises(json.JSONDecodeError):
            consumer._get("jobs")  # the empty file, taken from under the producer
        release.set()
        put.result(DEADLINE)
    with pytest.raises(Empty):
        consumer._get("jobs")  # and the message is lost


def test_channel_consumer_sees_a_message_only_once_it_is_complete(channels):
    producer, consumer = channels(OUR_URL)
    folder = Path(producer.data_folder_out)
    with writer_paused() as (reached, release), ThreadPoolExecutor(1, thread_name_prefix=WRITER) as pool:
        put = pool.submit(producer._put, "jobs", MESSAGE)
        assert reached.wait(DEADLINE)
        # The producer is mid-write: its file exists, under a name no consumer takes.
        assert len(os.listdir(folder)) == 1
        assert message_files(folder) == []
        assert consumer._size("jobs") == 0
        with pytest.raises(Empty):
            consumer._get("jobs")
        release.set()
        put.result(DEADLINE)
    assert consumer._size("jobs") == 1
    assert consumer._get("jobs") == MESSAGE
    assert os.listdir(folder) == []


def test_stock_exchange_bind_exposes_an_empty_control_file(channels):
    """The same race on an exchange's control file, as when two workers start together."""
    first, second = channels(STOCK_URL)
    with writer_paused() as (reached, release), ThreadPoolExecutor(1, thread_name_prefix=WRITER) as pool:
        bind = pool.submit(first._queue_bind, "celery.pidbox", "", "", "a.celery.pidbox")
        assert reached.wait(DEADLINE)
        with pytest.raises(json.JSONDecodeError):
            second._queue_bind("celery.pidbox", "", "", "b.celery.pidbox")
        release.set()
        bind.result(DEADLINE)


def test_exchange_bind_while_another_creates_the_control_file_keeps_both(channels):
    first, second = channels(OUR_URL)
    with writer_paused() as (reached, release), ThreadPoolExecutor(1, thread_name_prefix=WRITER) as pool:
        bind = pool.submit(first._queue_bind, "celery.pidbox", "", "", "a.celery.pidbox")
        assert reached.wait(DEADLINE)
        assert second.get_table("celery.pidbox") == []  # not there yet, rather than empty
        second._queue_bind("celery.pidbox", "", "", "b.celery.pidbox")
        release.set()
        bind.result(DEADLINE)
    queues = sorted(row.queue for row in second.get_table("celery.pidbox"))
    assert queues == ["a.celery.pidbox", "b.celery.pidbox"]
    assert os.listdir(second.control_folder) == ["celery.pidbox.exchange"]


# --- files a consumer cannot read ----------------------------------------------------------------


def test_unreadable_message_files_are_set_aside_and_the_next_message_delivered(channels, caplog):
    producer, consumer = channels(OUR_URL)
    folder = Path(consumer.data_folder_in)
    # Named to sort before any message _put writes, so the consumer meets them first.
    bad = {
        f"00_{uuid.uuid4()}.jobs.msg": b"",  # what kombu's _put leaves for an instant
        f"01_{uuid.uuid4()}.jobs.msg": b'{"body": "eyJo',  # cut short
        f"02_{uuid.uuid4()}.jobs.msg": b"[1, 2]",  # JSON, but not a message
        f"03_{uuid.uuid4()}.jobs.msg": b"\xff\xfe\x00",  # not even text
    }
    for name, content in bad.items():
        (folder / name).write_bytes(content)
    producer._put("jobs", MESSAGE)

    with caplog.at_level(logging.WARNING, logger="adsync.broker"):
        assert consumer._get("jobs") == MESSAGE
    assert sorted(os.listdir(folder / broker.BROKEN_FOLDER)) == sorted(bad)
    assert {(folder / broker.BROKEN_FOLDER / name).read_bytes() for name in bad} == set(bad.values())
    warned = [record.getMessage() for record in caplog.records if record.name == "adsync.broker"]
    assert len(warned) == 4
    assert all(message.startswith("Skipped unreadable broker message 0") for message in warned)
    with pytest.raises(Empty):
        consumer._get("jobs")
    assert os.listdir(folder) == [broker.BROKEN_FOLDER]


def test_store_processed_keeps_a_copy_of_each_message(tmp_path):
    options = transport_options(tmp_path, store_processed=True)
    with Connection(OUR_URL, transport_options=options) as connection:
        channel = connection.default_channel
        channel._put("jobs", MESSAGE)
        assert channel._get("jobs") == MESSAGE
    [kept] = os.listdir(tmp_path / "processed")
    assert kept.endswith(".jobs.msg")
    assert json.loads((tmp_path / "processed" / kept).read_bytes()) == MESSAGE
    assert os.listdir(tmp_path / "queue") == []


# --- end to end ----------------------------------------------------------------------------------


def test_3000_messages_published_while_polled_arrive_once_each_and_whole(tmp_path, caplog):
    """A producer thread and a consumer polling without pause (polling_interval 0), each with
    its own kombu Connection, through Producer.publish and Consumer callbacks."""
    count = 3000
    name = f"e2e-{uuid.uuid4().hex[:8]}"  # kombu keeps bindings per process: a fresh exchange
    exchange = Exchange(name, type="direct")
    queue = Queue(name, exchange, routing_key=name)
    options = transport_options(tmp_path, polling_interval=0)
    received: list = []

    def publish_all() -> None:
        with Connection(OUR_URL, transport_options=options) as connection:
            producer = connection.Producer(serializer="json")
            for n in range(count):
                producer.publish({"n": n, "pad": "x" * 100}, exchange=exchange, routing_key=name)

    def on_message(body, message) -> None:
        received.append(body)
        message.ack()

    deadline = monotonic() + 30
    with (
        caplog.at_level(logging.WARNING, logger="adsync.broker"),
        Connection(OUR_URL, transport_options=options) as connection,
        connection.Consumer(queue, callbacks=[on_message], accept=["json"]),
        ThreadPoolExecutor(1, thread_name_prefix="producer") as pool,
    ):
        published = pool.submit(publish_all)
        while len(received) < count and monotonic() < deadline:
            with contextlib.suppress(socket.timeout):
                connection.drain_events(timeout=0.5)
        published.result(DEADLINE)
        with pytest.raises(socket.timeout):
            connection.drain_events(timeout=0.2)  # nothing more: no duplicates

    assert len(received) == count
    assert sorted(body["n"] for body in received) == list(range(count))
    assert all(body == {"n": body["n"], "pad": "x" * 100} for body in received)
    assert [record.getMessage() for record in caplog.records if record.name == "adsync.broker"] == []
    assert os.listdir(tmp_path / "queue") == []


def test_embedded_settings_send_celery_through_this_transport(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL")}
    env.update(ADSYNC_DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="adsync.settings")
    code = (
        "import django; django.setup(); from adsync.celery import app; "
        "c = app.connection_for_write(); t = c.get_transport_cls(); "
        "print(f'{t.__module__}:{t.__name__}', c.transport_options['data_folder_in'])"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["adsync.broker:Transport", str(tmp_path / "broker" / "queue")]
