"""What the soaks share, importing nothing of Django (bench/embedded_soak.py runs the embedded
mode, without _setup's PostgreSQL set-up): the engine's processes in process groups of their
own, stopped whatever happens, and the percentile the reports use."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path


class Processes:
    """Child processes, each the leader of its own process group, stopped whatever happens."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.children: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, args: list[str], env: dict) -> Path:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as handle:
            proc = subprocess.Popen(
                args,
                cwd=self.workdir,  # beat and celery write nothing into the source tree
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.children.append((name, proc, log))
        return log

    def pid(self, name: str) -> int:
        return next(proc.pid for child_name, proc, _ in self.children if child_name == name)

    def stop(self, name: str, *, timeout: float = 20.0) -> None:
        for child_name, proc, _ in self.children:
            if child_name == name:
                stop_group(proc, timeout)

    def stop_all(self) -> None:
        for _, proc, _ in reversed(self.children):
            stop_group(proc, 20.0)

    def exited(self) -> dict[str, int]:
        """The children that have exited, with their exit codes."""
        return {name: proc.returncode for name, proc, _ in self.children if proc.poll() is not None}

    def dead(self) -> list[str]:
        return list(self.exited())

    def logs(self) -> dict[str, Path]:
        return {name: log for name, _, log in self.children}


def stop_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the child (as `docker compose stop` does the container's main process: a Celery
    worker's warm shutdown lets its pool finish the running tasks, without logging the pool
    processes' deaths as errors), SIGKILL its whole process group if it lingers, and whatever is
    left of the group after it exits."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # stray pool children of a dead leader


def wait_for_line(log: Path, pattern: str, *, timeout: float, processes: Processes) -> bool:
    """Poll the log for the pattern until the deadline; False at once if a child has exited."""
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        if log.exists() and regex.search(log.read_text(errors="replace")):
            return True
        if processes.exited():
            return False
        time.sleep(0.2)
    return False


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
