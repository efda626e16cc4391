"""`receiver serve`: the receiver under gunicorn, with an embedded Redis when REDIS_URL is unset."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import click

from receiver.cli.options import listen_options
from receiver.config import ConfigError, Settings, int_setting, load_settings, redact_url
from receiver.server.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from receiver.server.network import is_loopback
from receiver.server.process import GUNICORN_CONFIG
from receiver.views.callback import CALLBACK_PATH


def _check_exposure(host: str, settings: Settings) -> None:
    """Refuse to face the network while the Host header picks the URL that is checked."""
    if is_loopback(host) or settings.public_base_url or settings.proxy_hops:
        return
    raise click.ClickException(
        f"--host {host} is reachable from other machines, and without PUBLIC_BASE_URL or "
        "PROXY_HOPS each request's Host header picks the URL whose signature is checked: a "
        "callback signed for another endpoint of your Twilio account (staging, say) would "
        "verify here. Set PUBLIC_BASE_URL to the URL Twilio calls (e.g. "
        "https://rtt.example.com), or PROXY_HOPS to the number of proxies in front."
    )


def _check_settings(env: dict[str, str], host: str = "127.0.0.1") -> None:
    try:
        settings = load_settings(env)
        _check_exposure(host, settings)
        # gunicorn reads WEB_CONCURRENCY itself and fails on a bad one with a bare traceback.
        int_setting(env, "WEB_CONCURRENCY", 2, 1)
        int_setting(env, "GUNICORN_THREADS", 4, 1)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None


@click.command()
@listen_options("127.0.0.1", 8000)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/redis"),
    show_default=True,
    help="Where the embedded Redis keeps its data (only without REDIS_URL).",
)
@click.option(
    "--config",
    "gunicorn_config",
    default=GUNICORN_CONFIG,
    show_default=True,
    help="gunicorn configuration: a file, or python:MODULE.",
)
def serve(host: str, port: int, data_dir: Path, gunicorn_config: str) -> None:
    """Run the receiver under gunicorn; start an embedded Redis when REDIS_URL is not set."""
    env = dict(os.environ, HOST=host, PORT=str(port))
    env.pop("BIND", None)
    _check_settings(env, host)
    embedded = None
    if not env.get("REDIS_URL"):
        try:
            embedded = EmbeddedRedis(data_dir).start()
        except EmbeddedRedisError as error:
            raise click.ClickException(str(error)) from None
        # gunicorn's environment carries the password; the screen never does.
        env["REDIS_URL"] = embedded.url
        click.echo(
            f"Embedded Redis: {redact_url(embedded.url)} (data in {data_dir.resolve()}, "
            f"password in {data_dir.resolve() / 'auth.conf'})"
        )
    else:
        click.echo(f"Redis: {redact_url(env['REDIS_URL'])}")
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    click.echo(f"Receiver: http://{shown_host}:{port}")
    public = env.get("PUBLIC_BASE_URL", "").rstrip("/") or f"http://{shown_host}:{port}"
    click.echo(f"Callback URL for Twilio (StatusCallbackUrl): {public}{CALLBACK_PATH}")
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(gunicorn_config),
        "receiver:create_app()",
    ]
    gunicorn = subprocess.Popen(command, env=env)
    forward = lambda signum, _frame: gunicorn.send_signal(signum)  # noqa: E731
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        code = gunicorn.wait()
    finally:
        if embedded:
            embedded.stop()
            click.echo("Embedded Redis stopped.")
    sys.exit(code)
