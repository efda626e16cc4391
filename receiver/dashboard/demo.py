"""`receiver demo --dashboard`: the demo goes on, a new call every few seconds, with the
dashboard open on its URL, until Ctrl-C."""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
import webbrowser
from pathlib import Path

import click
from twilio.rest import Client

from receiver.dashboard.process import start_dashboard
from receiver.dashboard.settings import DEFAULT_PORT


def _port() -> int:
    """The dashboard's usual port when it is free, so the URL is the documented one."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", DEFAULT_PORT))
        except OSError:
            return 0
    return DEFAULT_PORT


def _can_open_browser() -> bool:
    # Without a display, webbrowser would start a text browser in this terminal.
    return sys.platform == "darwin" or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def keep_calling(
    *,
    redis_url: str,
    callback_url: str,
    emulator_url: str,
    account_sid: str,
    token: str,
    workdir: Path,
    every: float,
) -> None:
    """Start the dashboard, then a new emulated call every ``every`` seconds, until Ctrl-C
    (KeyboardInterrupt, which the caller handles); the dashboard is stopped either way."""
    dashboard = start_dashboard(
        {
            "REDIS_URL": redis_url,
            "LOG_LEVEL": "warning",
            **dict.fromkeys(("DASHBOARD_PASSWORD", "DASHBOARD_PASSWORD_FILE", "DASHBOARD_AUTH")),
            **dict.fromkeys(("STREAM_PREFIX", "BIND")),
        },
        workdir,
        _port(),
    )
    try:
        click.echo(f"Dashboard              {dashboard.url}/  (Ctrl-C stops the demo)\n")
        if _can_open_browser():
            webbrowser.open(f"{dashboard.url}/")
        twilio = Client(account_sid, token)
        twilio.api.base_url = emulator_url
        while True:
            call_sid = f"CA{uuid.uuid4().hex}"
            twilio.calls(call_sid).transcriptions.create(
                track="both_tracks",
                status_callback_url=callback_url,
                partial_results=True,
                inbound_track_label="customer",
                outbound_track_label="agent",
            )
            click.echo(
                f"{time.strftime('%H:%M:%S')}  call {call_sid}: {dashboard.url}/calls/{call_sid}"
            )
            time.sleep(every)
    finally:
        dashboard.stop()
