"""The dashboard under gunicorn, in a process of its own: what `receiver dashboard` runs."""

from __future__ import annotations

import sys
from pathlib import Path

from receiver.server.network import free_port
from receiver.server.process import Served, start

GUNICORN_CONFIG = "python:receiver.dashboard.gunicorn_conf"
APP = "receiver.dashboard:create_app()"


def gunicorn_command() -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG, APP]


def start_dashboard(env: dict[str, str | None], workdir: Path, port: int = 0) -> Served:
    """The dashboard under gunicorn on 127.0.0.1 (``port``, else a free one), for the demo, the
    bench and the tests: the same command as `receiver dashboard` runs."""
    port = port or free_port()
    settings = {"PORT": str(port), "DASHBOARD_HOST": "127.0.0.1", "DASHBOARD_PORT": str(port)}
    return start({**env, **settings}, workdir, command=gunicorn_command(), workers=1)
