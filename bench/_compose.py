"""The engine's processes as docker-compose.yml starts them, for running them locally.

docker-compose.yml is the single source of truth for how the worker, the dispatcher and the
scheduler are started (pool, concurrency, queues, log level): bench/soak.py reads their
`command:` from it, so a change there reaches the bench without an edit here.

What compose does and this reproduces: the YAML merge keys (`<<: *app`) and anchors, a string
command split as a shell would (shlex) or a list taken as it is, and variable interpolation
(`${VAR}`, `${VAR:-default}`, `${VAR-default}`, `$VAR`, `$$` for a literal `$`) from the
environment, in `command:` and `environment:`. What it does not: the image (the commands run
from the source tree, with this interpreter), and `deploy.replicas` / `scale` (one process each).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
# The engine: sync worker, dispatcher worker, beat. The web (backend) is not part of it.
ENGINE_SERVICES = ("worker", "dispatcher", "scheduler")

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<sep>:?-)(?P<default>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution (the forms the file uses; `:?`/`?` errors are not needed)."""

    def substitute(match: re.Match) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("named")
        value = env.get(name)
        sep = match.group("sep")
        if sep == ":-" and not value:
            return match.group("default")
        if sep == "-" and value is None:
            return match.group("default")
        return value or ""

    return _VARIABLE.sub(substitute, text)


@dataclass
class Service:
    name: str
    argv: list[str]  # the command as compose would run it in the container
    environment: dict[str, str] = field(default_factory=dict)
    replicas: int = 1

    @property
    def command_line(self) -> str:
        return shlex.join(self.argv)


def _environment(raw, env: Mapping[str, str]) -> dict[str, str]:
    if not raw:
        return {}
    if isinstance(raw, list):  # ["KEY=value", "KEY"]
        pairs = [item.split("=", 1) if "=" in item else [item, env.get(item, "")] for item in raw]
        return {key: interpolate(str(value), env) for key, value in pairs}
    return {str(key): "" if value is None else interpolate(str(value), env) for key, value in raw.items()}


def services_read(
    names: tuple[str, ...] = ENGINE_SERVICES, *, path: Path = COMPOSE_FILE, env: Mapping[str, str] | None = None
) -> dict[str, Service]:
    """The named services' commands and environments, interpolated as compose would."""
    env = os.environ if env is None else env
    document = yaml.safe_load(path.read_text())
    services = document.get("services") or {}
    found: dict[str, Service] = {}
    for name in names:
        spec = services.get(name)
        if spec is None:
            raise SystemExit(f"{path.name} has no service {name!r} (services: {', '.join(services)})")
        command = spec.get("command")
        if not command:
            raise SystemExit(f"{path.name}: service {name!r} has no command (the image's CMD is the web server)")
        argv = (
            shlex.split(interpolate(command, env))
            if isinstance(command, str)
            else [interpolate(str(a), env) for a in command]
        )
        replicas = (spec.get("deploy") or {}).get("replicas") or spec.get("scale") or 1
        found[name] = Service(name, argv, _environment(spec.get("environment"), env), int(replicas))
    return found


# --- the command line, adapted to run here ---------------------------------------------------


def option_get(argv: list[str], *names: str) -> str | None:
    """The value of an option given as `--name value`, `--name=value`, `-n value` or `-nvalue`."""
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name and index + 1 < len(argv):
                return argv[index + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
            if not name.startswith("--") and arg.startswith(name) and len(arg) > len(name):
                return arg[len(name) :]
    return None


def option_set(argv: list[str], value: str, *names: str) -> list[str]:
    """argv with the option's value replaced (every spelling in `names`), or appended."""
    result: list[str] = []
    replaced = False
    skip = False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        for name in names:
            if arg == name and index + 1 < len(argv):
                result += [arg, value]
                skip = replaced = True
                break
            if name.startswith("--") and arg.startswith(name + "="):
                result.append(f"{name}={value}")
                replaced = True
                break
            if not name.startswith("--") and arg.startswith(name) and len(arg) > len(name):
                result.append(f"{name}{value}")
                replaced = True
                break
        else:
            result.append(arg)
    if not replaced:
        result += [names[0], value]
    return result


def celery_queues(argv: list[str], default: str) -> list[str]:
    """The queues a `celery worker` command consumes (`-Q a,b`), or the default queue."""
    value = option_get(argv, "--queues", "-Q")
    return [queue for queue in (value or default).split(",") if queue]


def local_argv(argv: list[str], *, python: str = sys.executable) -> list[str]:
    """The command as it runs here: `celery ...` and `python ...` with this interpreter (the
    container's PATH has them; a local shell may not)."""
    if not argv:
        return argv
    program = Path(argv[0]).name
    if program == "celery":
        return [python, "-m", "celery", *argv[1:]]
    if program in ("python", "python3"):
        return [python, *argv[1:]]
    return list(argv)
