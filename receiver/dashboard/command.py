"""`receiver dashboard`: the dashboard under gunicorn, in a process of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import click

from receiver.config import ConfigError, redact_url
from receiver.dashboard.settings import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    check_exposure,
    load_dashboard_settings,
)
from receiver.server.embedded_redis import free_port
from receiver.server.process import Served, start

GUNICORN_CONFIG = "python:receiver.dashboard.gunicorn_conf"
APP = "receiver.dashboard:create_app()"


def gunicorn_command() -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG, APP]


@click.command()
@click.option(
    "--host",
    default=lambda: os.environ.get("DASHBOARD_HOST", DEFAULT_HOST),
    show_default=f"{DEFAULT_HOST} or $DASHBOARD_HOST",
)
@click.option(
    "--port",
    type=int,
    default=lambda: int(os.environ.get("DASHBOARD_PORT", str(DEFAULT_PORT))),
    show_default=f"{DEFAULT_PORT} or $DASHBOARD_PORT",
)
def dashboard(host: str, port: int) -> None:
    """Live calls and transcripts in the browser (reads REDIS_URL, STREAM_PREFIX; see
    docs/dashboard.md for DASHBOARD_PASSWORD and DASHBOARD_AUTH=proxy)."""
    env = dict(os.environ, DASHBOARD_HOST=host, DASHBOARD_PORT=str(port))
    env.pop("BIND", None)
    try:
        settings = load_dashboard_settings(env)
        check_exposure(settings, host)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"Redis: {redact_url(settings.redis_url)} (prefix {settings.stream_prefix})")
    auth = {"basic": f"basic auth, user {settings.username}", "proxy": "from the proxy"}
    click.echo(
        f"Dashboard: http://{shown}:{port}/ ({auth.get(settings.auth, 'no authentication')})"
    )
    process = subprocess.Popen(gunicorn_command(), env=env)
    forward = lambda signum, _frame: process.send_signal(signum)  # noqa: E731
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    sys.exit(process.wait())


def start_dashboard(env: dict[str, str | None], workdir: Path, port: int = 0) -> Served:
    """The dashboard under gunicorn on 127.0.0.1 (``port``, else a free one), for the demo, the
    bench and the tests: the same command as `receiver dashboard` runs."""
    port = port or free_port()
    settings = {"PORT": str(port), "DASHBOARD_HOST": "127.0.0.1", "DASHBOARD_PORT": str(port)}
    return start({**env, **settings}, workdir, command=gunicorn_command(), workers=1)
