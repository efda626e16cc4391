"""The one way the receiver is served: gunicorn with the project's settings, on loopback.

`receiver serve`, `receiver demo`, `receiver bench` and the end-to-end tests all start this
command, so what they run is what a deployment runs.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from receiver.server.network import free_port

# The settings module inside the package (receiver/gunicorn_conf.py): it needs no checkout.
GUNICORN_CONFIG = "python:receiver.server.gunicorn_conf"
APP = "receiver:create_app()"


class ServeError(RuntimeError):
    """The server exited, or did not answer in time; the message ends with its log."""


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (gunicorn's workers), from /proc (none elsewhere)."""
    try:
        return sorted(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    except OSError:
        return []


def gunicorn_command(app: str = APP, config: str = GUNICORN_CONFIG) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-c", config, app]


@dataclass
class Served:
    """A server process on a loopback port, its output in a log file."""

    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answers(self, path: str) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            connection.request("GET", path)
            return connection.getresponse().status == 200
        except OSError:  # not listening yet, or too busy to answer in time
            return False
        finally:
            connection.close()

    def worker_pids(self) -> list[int]:
        """gunicorn's workers: the master's children, from /proc (none elsewhere)."""
        return children(self.process.pid)

    def log_tail(self, size: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""

    def stop(self, timeout: float = 20) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(
    env: Mapping[str, str | None],
    workdir: Path,
    *,
    app: str = APP,
    command: list[str] | None = None,
    ready_path: str = "/healthz",
    workers: int = 0,
    cwd: Path | None = None,
    timeout: float = 30,
) -> Served:
    """Start gunicorn (or ``command``) on 127.0.0.1 and wait until ``ready_path`` answers 200
    and at least ``workers`` workers run. ``env`` is laid over this process' environment (a
    ``None`` value removes a variable); its ``PORT`` is used when it has one, else a free port."""
    given = env.get("PORT")
    port = int(given) if given else free_port()
    merged = {**os.environ, "HOST": "127.0.0.1", "BIND": None, **env, "PORT": str(port)}
    full_env = {name: value for name, value in merged.items() if value is not None}
    log = workdir / f"server-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command or gunicorn_command(app),
            env=full_env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = Served(process, port, log)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServeError(f"the server exited: {served.log_tail()}")
            if served.answers(ready_path) and len(served.worker_pids()) >= workers:
                return served
            time.sleep(0.1)
        raise ServeError(f"the server did not answer in {timeout:g}s: {served.log_tail()}")
    except BaseException:
        served.stop()  # an error, or Ctrl-C while waiting: leave nothing running
        raise
