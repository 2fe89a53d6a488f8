"""adsync/supervisor.py (`make run`), run as a real subprocess over small stand-in programs.

No Django and no database: the supervised processes are `python -c` scripts, and the "web server"
answers /healthz on a free port with 503 until the test creates its flag file.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.slow

FOREVER = "import time; print('up', flush=True); time.sleep(600)"
IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"
)
# Dies once (exit code 3, after a few lines), then runs forever when restarted.
DIES_ONCE = """
import pathlib, sys, time
marker = pathlib.Path(sys.argv[1])
if marker.exists():
    print('up again', flush=True)
    time.sleep(600)
marker.touch()
print('INFO chatter', flush=True)
print('WARNING disk almost full', flush=True)
time.sleep(0.2)
print('boom: the disk is full', file=sys.stderr)
sys.exit(3)
"""
# Its n-th run stays up for the n-th of the given seconds, then exits 1; when they run out, forever.
DIES_AFTER = """
import pathlib, sys, time
counter = pathlib.Path(sys.argv[1])
run = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(run + 1))
uptimes = [float(seconds) for seconds in sys.argv[2:]]
time.sleep(uptimes[run] if run < len(uptimes) else 600)
sys.exit(1)
"""
# Answers 200 on /healthz once the flag file exists, 503 before; logs each request to stderr.
WEB = """
import http.server, os, sys
port, flag = int(sys.argv[1]), sys.argv[2]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if os.path.exists(flag) else 503)
        self.end_headers()
http.server.HTTPServer(('127.0.0.1', port), Handler).serve_forever()
"""
DRIVER = """
import json, sys
from pathlib import Path
from adsync.supervisor import ProcessSpec, RestartPolicy, Supervisor
config = json.loads(sys.argv[1])
supervisor = Supervisor(
    [ProcessSpec(name, tuple(argv)) for name, argv in config['processes'].items()],
    log_dir=Path(config['log_dir']),
    ready_url=config['ready_url'],
    banner=['TEST BANNER'],
    verbose=config['verbose'],
    policy=RestartPolicy(**config['policy']),
    stop_timeout=config['stop_timeout'],
)
sys.exit(supervisor.run())
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # Reparented and not yet reaped: a zombie has finished running.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


class Supervised:
    """`python -c <DRIVER>` supervising `web` plus the given scripts; its terminal is a file."""

    def __init__(self, tmp_path: Path, scripts: dict[str, list[str]], *, healthy: bool, verbose: bool, **options):
        self.tmp_path = tmp_path
        self.flag = tmp_path / "healthy"
        if healthy:
            self.flag.touch()
        port = _free_port()
        config = {
            "processes": {
                "web": [sys.executable, "-c", WEB, str(port), str(self.flag)],
                **{name: [sys.executable, "-c", *args] for name, args in scripts.items()},
            },
            "log_dir": str(tmp_path / "logs"),
            "ready_url": f"http://127.0.0.1:{port}/healthz",
            "verbose": verbose,
            "policy": {"backoff_first": 0.1, **options.pop("policy", {})},
            "stop_timeout": options.pop("stop_timeout", 5.0),
        }
        self.terminal = tmp_path / "terminal.txt"
        with open(self.terminal, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", DRIVER, json.dumps(config)],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.terminal.read_text()

    def log(self, name: str) -> str:
        path = self.tmp_path / "logs" / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def pids(self) -> dict[str, int]:
        """Each process's latest pid, from the "Started …" and "Restarted …" lines."""
        pids: dict[str, int] = {}
        for line in self.output().splitlines():
            if line.startswith("Started "):
                for part in line.removeprefix("Started ").split(". Waiting")[0].split(", "):
                    name, pid = part.removesuffix(")").split(" (pid ")
                    pids[name] = int(pid)
            elif line.startswith("Restarted "):
                name, pid = line.removeprefix("Restarted ").removesuffix(").").split(" (pid ")
                pids[name] = int(pid)
        return pids

    def wait_for_output(self, text: str, timeout: float = 5.0) -> None:
        wait_for(lambda: text in self.output(), timeout=timeout, message=f"{text!r} in:\n{self.output()}")

    def exit_code(self, timeout: float = 5.0) -> int:
        wait_for(lambda: self.process.poll() is not None, timeout=timeout, message="the supervisor to exit")
        return self.process.returncode


@pytest.fixture
def supervise(tmp_path) -> Iterator:
    started: list[Supervised] = []

    def start(scripts: dict[str, list[str]], *, healthy: bool = True, verbose: bool = False, **options) -> Supervised:
        supervised = Supervised(tmp_path, scripts, healthy=healthy, verbose=verbose, **options)
        started.append(supervised)
        return supervised

    yield start
    for supervised in started:  # whatever the test left running
        if supervised.process.poll() is None:
            os.killpg(supervised.process.pid, signal.SIGKILL)
            supervised.process.wait()
        for pid in supervised.pids().values():
            if not _gone(pid):
                os.killpg(pid, signal.SIGKILL)


def test_supervisor_banner_waits_for_health_url(supervise):
    supervised = supervise({"steady": [FOREVER]}, healthy=False)
    supervised.wait_for_output("Started web (pid ")
    wait_for(lambda: '"GET /healthz HTTP/1.1" 503' in supervised.log("web"), message="a health check answered 503")
    assert "TEST BANNER" not in supervised.output()

    supervised.flag.touch()

    supervised.wait_for_output("TEST BANNER")
    assert '"GET /healthz HTTP/1.1" 200' in supervised.log("web")
    assert "Ctrl-C stops everything." in supervised.output()


def test_supervisor_dying_process_reported_and_restarted(supervise, tmp_path):
    supervised = supervise({"flaky": [DIES_ONCE, str(tmp_path / "died-once")]})
    supervised.wait_for_output("Started ")
    first_pid = supervised.pids()["flaky"]

    supervised.wait_for_output("Restarted flaky (pid ")

    output = supervised.output()
    assert "flaky died: exit code 3. Last lines of " in output
    assert (
        "\n    INFO chatter\n    WARNING disk almost full\n    boom: the disk is full\nRestarting flaky in 0.1 s.\n"
        in output
    )
    # While it runs, warnings and errors reach the terminal, prefixed with its name; the rest does not.
    assert "flaky | WARNING disk almost full\n" in output
    assert "flaky | INFO chatter" not in output
    new_pid = supervised.pids()["flaky"]
    assert new_pid != first_pid
    assert _gone(first_pid)
    wait_for(lambda: "up again" in supervised.log("flaky"), message="the restarted process to run")
    assert "INFO chatter" in supervised.log("flaky")
    assert "----- restarted by adsync.supervisor at " in supervised.log("flaky")


def test_supervisor_restart_backoff_doubles_up_to_max_and_resets_after_a_stable_run(supervise, tmp_path):
    # Three quick deaths, then one after a run longer than stable_after; the fifth run stays up.
    supervised = supervise(
        {"flaky": [DIES_AFTER, str(tmp_path / "runs"), "0", "0", "0", "1.0"]},
        policy={"backoff_first": 0.1, "backoff_max": 0.2, "stable_after": 0.8},
    )

    wait_for(lambda: supervised.output().count("Restarted flaky") == 4, message="four restarts")

    delays = [line for line in supervised.output().splitlines() if line.startswith("Restarting flaky in ")]
    assert delays == [f"Restarting flaky in {seconds} s." for seconds in ("0.1", "0.2", "0.2", "0.1")]


def test_supervisor_crash_loop_stops_everything(supervise):
    supervised = supervise(
        {"crasher": ["import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], "steady": [FOREVER]},
        policy={"backoff_first": 0.05, "crash_limit": 3, "crash_window": 60},
    )

    assert supervised.exit_code() == 1

    output = supervised.output()
    assert output.count("crasher died: killed by SIGKILL.") == 3
    assert "crasher died 3 times within 60 s: stopping everything. The cause is in " in output
    assert output.endswith("AdSync stopped.\n")
    pids = supervised.pids()
    wait_for(lambda: _gone(pids["steady"]) and _gone(pids["web"]), timeout=2, message="the others to be stopped")


def test_supervisor_sigint_stops_all_and_exits_0(supervise):
    supervised = supervise({"steady": [FOREVER], "stubborn": [IGNORES_SIGTERM]}, stop_timeout=0.5)
    supervised.wait_for_output("TEST BANNER")
    wait_for(lambda: "up" in supervised.log("stubborn"), message="stubborn to ignore SIGTERM")
    pids = supervised.pids()

    supervised.process.send_signal(signal.SIGINT)

    assert supervised.exit_code() == 0
    output = supervised.output()
    assert output.count("Stopping AdSync") == 1
    assert "\nstubborn did not stop within 0.5 s: killed.\n" in output  # the others stopped on SIGTERM
    assert output.endswith("AdSync stopped.\n")
    assert "Traceback" not in output
    assert sorted(pids) == ["steady", "stubborn", "web"]
    wait_for(lambda: all(_gone(pid) for pid in pids.values()), timeout=2, message="every child to be gone")


def test_supervisor_second_sigint_kills_at_once(supervise):
    supervised = supervise({"stubborn": [IGNORES_SIGTERM]}, stop_timeout=60)
    supervised.wait_for_output("TEST BANNER")
    wait_for(lambda: "up" in supervised.log("stubborn"), message="stubborn to ignore SIGTERM")
    supervised.process.send_signal(signal.SIGINT)
    supervised.wait_for_output("Stopping AdSync")

    supervised.process.send_signal(signal.SIGINT)

    assert supervised.exit_code(timeout=3) == 0
    assert "Killed stubborn.\n" in supervised.output()
    assert _gone(supervised.pids()["stubborn"])


def test_supervisor_verbose_shows_all_output_prefixed(supervise):
    supervised = supervise({"chatty": ["print('INFO hello'); import time; time.sleep(600)"]}, verbose=True)

    supervised.wait_for_output("chatty | INFO hello\n")
