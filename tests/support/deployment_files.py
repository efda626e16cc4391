"""Read the deploy/ files the way their tools would, and run what they would run, on loopback."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from receiver.server.process import Served, start

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


@dataclass
class DockerStage:
    """The instructions of a Dockerfile's final stage that decide how the app starts."""

    workdir: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    copies: list[tuple[str, str]] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def _exec_form(value: str) -> list[str]:
    if not value.startswith("["):
        raise AssertionError(f"use the exec form (a JSON array) so signals reach gunicorn: {value}")
    return json.loads(value)


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)


def parse_dockerfile(path: Path) -> DockerStage:
    stage = DockerStage()
    for keyword, rest in _instructions(path.read_text()):
        if keyword == "FROM":
            stage = DockerStage()
        elif keyword == "WORKDIR":
            stage.workdir = rest
        elif keyword == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                stage.env[name] = _expand(value, {**os.environ, **stage.env})
        elif keyword == "USER":
            stage.user = rest
        elif keyword == "COPY" and not rest.startswith("--from"):
            *sources, target = rest.split()
            stage.copies += [(source, target) for source in sources]
        elif keyword == "CMD":
            stage.cmd = _exec_form(rest)
        elif keyword == "ENTRYPOINT":
            stage.entrypoint = _exec_form(rest)
        elif keyword == "HEALTHCHECK":
            stage.healthcheck = _exec_form(rest[rest.index("CMD ") + 4 :].strip())
    return stage


def procfile_command(path: Path, process_type: str = "web") -> str:
    for line in path.read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == process_type:
            return command.strip()
    raise AssertionError(f"{path} has no {process_type}: line")


def compose_value(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR:?error}."""

    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"{name} must be set: {arg}")
        return arg or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def tool_path() -> str:
    """PATH with this environment's scripts (gunicorn, python) first, as in the image."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def start_until_ready(command: list[str], env: dict[str, str], cwd: Path, workdir: Path) -> Served:
    """Run ``command`` with exactly ``env`` and wait until its ``/readyz`` answers 200 on $PORT."""
    exactly = {**dict.fromkeys(os.environ), **env}
    return start(exactly, workdir, command=command, cwd=cwd, ready_path="/readyz")
