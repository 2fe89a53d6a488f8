"""`make run`'s process supervisor: starts web, worker, dispatcher and beat, watches them, stops them.

Run as `python -m adsync.supervisor [--verbose]`. Each process runs in a session of its own, so the
terminal's Ctrl-C reaches only this supervisor, which then stops each of them once. Each
one writes its whole output to `<ADSYNC_DATA_DIR>/logs/<name>.log`; the terminal shows short lines
(started, died, restarted, stopped), the WARNING and ERROR lines of the logs, and the start banner
once the web server answers its health URL. A process that dies is reported, with the end of its
log, and restarted with backoff; one that keeps dying stops everything with a non-zero exit.

The policy is in `Supervisor`, whose process specs are injectable: tests/test_supervisor.py
supervises small stand-in scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

BASE_DIR = Path(__file__).resolve().parent.parent
WEB_URL = "http://127.0.0.1:8000"

# A log line the terminal shows even when not --verbose: a logging level at WARNING or above.
_IMPORTANT = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b")
_TICK = 0.1  # seconds between looks at the processes, their logs and the signals received


@dataclass(frozen=True)
class ProcessSpec:
    """One supervised program. `name` names its log file too; `env` is added to our environment."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RestartPolicy:
    backoff_first: float = 1.0
    backoff_max: float = 30.0
    # A process that stayed up this long was healthy: its next restart waits backoff_first again.
    stable_after: float = 60.0
    # This many deaths of one process within crash_window seconds is a crash loop: stop everything.
    crash_limit: int = 5
    crash_window: float = 120.0


class _Child:
    def __init__(self, spec: ProcessSpec, log_path: Path):
        self.spec = spec
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.log_start = 0  # where this run's output begins in the log (earlier runs' precede it)
        self.reader: BinaryIO | None = None  # our read handle on the log, for echoing its new lines
        self.partial = b""  # the end of the log after its last newline
        self.backoff = 0.0
        self.restart_at: float | None = None
        self.deaths: deque[float] = deque()

    @property
    def started(self) -> subprocess.Popen[bytes]:
        """The process of its current run; only asked for after Supervisor._start started one."""
        if self.process is None:
            raise RuntimeError(f"{self.spec.name} has not been started")
        return self.process

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    def __init__(
        self,
        specs: list[ProcessSpec],
        *,
        log_dir: Path,
        ready_url: str,
        banner: list[str],
        verbose: bool = False,
        policy: RestartPolicy | None = None,
        stop_timeout: float = 10.0,
        ready_timeout: float = 60.0,
        cwd: Path = BASE_DIR,
        out: TextIO = sys.stdout,
    ):
        self.log_dir = log_dir
        self.ready_url = ready_url
        self.banner = banner
        self.verbose = verbose
        self.policy = policy or RestartPolicy()
        self.stop_timeout = stop_timeout
        self.ready_timeout = ready_timeout
        self.cwd = cwd
        self.out: TextIO | None = out
        self.children = [_Child(spec, log_dir / f"{spec.name}.log") for spec in specs]
        self.width = max(len(spec.name) for spec in specs)
        self.signals = 0
        # Never through a proxy: the health URL is on this machine.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # --- the main loop ------------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until a signal (exit 0) or a crash loop (exit 1)."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        try:
            return self._run()
        finally:  # after an error of our own, leave nothing running
            for child in self.children:
                if child.alive():
                    _killpg(child.started.pid, signal.SIGKILL)
                    child.started.wait()

    def _on_signal(self, signum, frame) -> None:
        self.signals += 1

    def _run(self) -> int:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for child in self.children:
            if child.log_path.exists():  # keep the previous run's log, as <name>.log.1
                child.log_path.replace(child.log_path.with_name(child.log_path.name + ".1"))
            child.log_path.touch()
            child.reader = open(child.log_path, "rb")  # noqa: SIM115 - read for the whole run
        for child in self.children:
            if not self._start(child):
                return self._stop(exit_code=1)
        started = ", ".join(f"{c.spec.name} (pid {c.started.pid})" for c in self.children)
        self._say(f"Started {started}. Waiting for {self.ready_url} ...")

        ready = False
        ready_deadline = time.monotonic() + self.ready_timeout
        next_ready_check = 0.0
        while not self.signals:
            now = time.monotonic()
            self._echo_logs()
            for child in self.children:
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        if not self._start(child):
                            return self._stop(exit_code=1)
                        self._say(f"Restarted {child.spec.name} (pid {child.started.pid}).")
                elif child.started.poll() is not None and not self._on_death(child, now):
                    return self._stop(exit_code=1)
            if not ready and now >= next_ready_check:
                ready, problem = self._check_ready()
                next_ready_check = now + 0.25
                if ready:
                    self._print_banner()
                elif now > ready_deadline:
                    self._say(f"No answer from {self.ready_url} after {self.ready_timeout:.0f} s ({problem}).")
                    self._say(f"Still waiting; the logs are in {_shown(self.log_dir)}/.")
                    ready_deadline = float("inf")
            time.sleep(_TICK)
        return self._stop(exit_code=0)

    def _start(self, child: _Child) -> bool:
        """Start (or restart) the process; False, after saying why, if it cannot be started."""
        child.restart_at = None
        child.log_start = child.log_path.stat().st_size
        env = dict(os.environ, PYTHONUNBUFFERED="1", **child.spec.env)
        with open(child.log_path, "ab") as log:
            if child.process is not None:
                log.write(f"----- restarted by adsync.supervisor at {time.strftime('%H:%M:%S')} -----\n".encode())
                log.flush()
                child.log_start = log.tell()
            try:
                child.process = subprocess.Popen(
                    child.spec.argv,
                    cwd=self.cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # Its own process group and session: Ctrl-C in the terminal reaches only us.
                    start_new_session=True,
                )
            except OSError as exc:  # no such program, not executable
                self._say(f"Could not start {child.spec.name}: {exc}")
                return False
        child.started_at = time.monotonic()
        return True

    def _on_death(self, child: _Child, now: float) -> bool:
        """Report a process that exited on its own and schedule its restart; False: crash loop."""
        name = child.spec.name
        self._echo_logs()
        _killpg(child.started.pid, signal.SIGKILL)  # what it left behind (a worker's pool)
        self._say(f"{name} died: {_describe_exit(child.started.returncode)}. Last lines of {_shown(child.log_path)}:")
        for line in self._log_tail(child, 10) or ["(no output)"]:
            self._say(f"    {line}")

        child.deaths.append(now)
        while child.deaths and child.deaths[0] < now - self.policy.crash_window:
            child.deaths.popleft()
        if len(child.deaths) >= self.policy.crash_limit:
            self._say(
                f"{name} died {len(child.deaths)} times within {self.policy.crash_window:.0f} s: "
                f"stopping everything. The cause is in {_shown(child.log_path)}."
            )
            return False

        if now - child.started_at >= self.policy.stable_after or not child.backoff:
            child.backoff = self.policy.backoff_first
        else:
            child.backoff = min(child.backoff * 2, self.policy.backoff_max)
        child.restart_at = now + child.backoff
        self._say(f"Restarting {name} in {child.backoff:g} s.")
        return True

    # --- stopping -----------------------------------------------------------------------------

    def _stop(self, *, exit_code: int) -> int:
        if self.signals:
            self._say("")  # after the terminal's ^C
        self._say(f"Stopping AdSync (up to {self.stop_timeout:g} s; Ctrl-C again to kill at once)...")
        signals_before = self.signals
        running = [c for c in self.children if c.alive()]
        for child in running:
            # The process itself, not its group: a Celery worker stops its pool in order (signalled
            # too, the pool's processes would die under it, and it would log each one as an error).
            child.started.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while any(c.alive() for c in running) and time.monotonic() < deadline and self.signals == signals_before:
            if self.verbose:
                self._echo_logs()
            time.sleep(_TICK)
        stragglers = [c.spec.name for c in running if c.alive()]
        if stragglers and self.signals != signals_before:
            self._say(f"Killed {', '.join(stragglers)}.")
        elif stragglers:
            self._say(f"{', '.join(stragglers)} did not stop within {self.stop_timeout:g} s: killed.")
        for child in running:
            _killpg(child.started.pid, signal.SIGKILL)  # the whole group: stragglers too
            child.started.wait()
        self._echo_logs()
        for child in self.children:
            self._flush_partial(child)
        self._say("AdSync stopped.")
        return exit_code

    # --- readiness ----------------------------------------------------------------------------

    def _check_ready(self) -> tuple[bool, str]:
        try:
            with self.opener.open(self.ready_url, timeout=0.5) as response:
                return response.status == 200, f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            return False, f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            return False, str(getattr(exc, "reason", exc))

    def _print_banner(self) -> None:
        names = ",".join(c.spec.name for c in self.children)
        shown = "also shown here" if self.verbose else "warnings and errors also show here"
        self._say("")
        for line in self.banner:
            self._say(f"  {line}")
        self._say(f"  Logs: {_shown(self.log_dir)}/{{{names}}}.log ({shown})")
        self._say("  Ctrl-C stops everything.")
        self._say("")

    # --- output -------------------------------------------------------------------------------

    def _echo_logs(self) -> None:
        """Show the new lines of each log: all of them if verbose, else warnings and errors."""
        for child in self.children:
            if child.reader is None:
                continue
            data = child.partial + child.reader.read()
            *lines, child.partial = data.split(b"\n")
            for line in lines:
                self._echo_line(child, line)

    def _flush_partial(self, child: _Child) -> None:
        if child.partial:
            self._echo_line(child, child.partial)
            child.partial = b""

    def _echo_line(self, child: _Child, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip("\r")
        if self.verbose or _IMPORTANT.search(line):
            self._say(f"{child.spec.name:<{self.width}} | {line}")

    def _log_tail(self, child: _Child, count: int) -> list[str]:
        """The last `count` non-blank lines this run of the process wrote."""
        with open(child.log_path, "rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(child.log_start, size - 16384))
            lines = [line for line in log.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-count:]

    def _say(self, text: str) -> None:
        if self.out is None:
            return
        try:
            self.out.write(text + "\n")
            self.out.flush()
        except OSError:  # the terminal (or a pipe such as `| tee`) is gone; keep supervising
            self.out = None


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(pgid, sig)


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _shown(path: Path) -> str:
    """The path relative to the working directory when it is inside it (.data/logs), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --- AdSync's processes --------------------------------------------------------------------------


def adsync_processes() -> list[ProcessSpec]:
    """What `make run` starts. Named as in docker-compose.yml, so the README's operations apply."""

    def celery(*args: str) -> tuple[str, ...]:
        # --quiet: no banner (some 20 lines per process); the logs say all the rest.
        return (sys.executable, "-m", "celery", "-A", "adsync", "--quiet", *args, "--loglevel", "INFO")

    return [
        # --noreload: the autoreloader serves from a child process that it restarts by itself, so
        # the process started here would not be the server and its crashes would go unseen.
        ProcessSpec(
            "backend",
            (sys.executable, "manage.py", "runserver", "127.0.0.1:8000", "--noreload"),
            # `make run` is for trying AdSync on one machine (production runs gunicorn): no
            # "This is a development server" warning under the banner.
            env={"DEBUG": os.environ.get("DEBUG", "1"), "DJANGO_RUNSERVER_HIDE_WARNING": "true"},
        ),
        # Threads, as in docker-compose.yml: syncs wait on the platform, not the CPU. Fewer than
        # compose's 64: the embedded SQLite has one writer at a time, and the demo needs few.
        ProcessSpec(
            "worker",
            celery(
                "worker",
                "-Q",
                "sync_jobs,sync_bulk",
                "--pool",
                "threads",
                "--concurrency",
                "16",
                "--hostname",
                "sync@%h",
            ),
            # Only with DATABASE_URL (PostgreSQL) does this pool apply; SQLite ignores it.
            env={"DB_POOL_MAX_SIZE": os.environ.get("DB_POOL_MAX_SIZE", "8")},
        ),
        ProcessSpec(
            "dispatcher", celery("worker", "-Q", "dispatch", "--concurrency", "1", "--hostname", "dispatch@%h")
        ),
        ProcessSpec("scheduler", celery("beat", "--scheduler", "django")),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m adsync.supervisor", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="also show every process's whole output")
    args = parser.parse_args()
    # As adsync/settings.py's DATA_DIR, without importing the settings.
    data_dir = Path(os.environ.get("ADSYNC_DATA_DIR", str(BASE_DIR / ".data")))
    sign_in = "" if os.environ.get("DATABASE_URL") else "  (sign in: demo / demo)"
    supervisor = Supervisor(
        adsync_processes(),
        log_dir=data_dir / "logs",
        ready_url=f"{WEB_URL}/healthz",
        banner=[f"AdSync is running at {WEB_URL}/settings{sign_in}", f"Admin: {WEB_URL}/admin/"],
        verbose=args.verbose,
    )
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
