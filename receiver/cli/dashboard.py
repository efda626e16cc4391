"""`receiver dashboard`: live calls and their transcripts in the browser."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import click

from receiver.cli.options import listen_options
from receiver.config import ConfigError, redact_url
from receiver.dashboard.process import gunicorn_command
from receiver.dashboard.settings import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    check_exposure,
    load_dashboard_settings,
)


@click.command()
@listen_options(DEFAULT_HOST, DEFAULT_PORT, env_prefix="DASHBOARD_")
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
