"""The `receiver` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import click

from receiver.config import ConfigError, int_setting, load_settings, redact_url
from receiver.server.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from receiver.server.process import GUNICORN_CONFIG
from receiver.views.callback import CALLBACK_PATH


@click.group()
@click.version_option(package_name="rtt-receiver")
def main() -> None:
    """Receive Twilio Real-Time Transcription callbacks into Redis Streams."""


def _check_settings(env: dict[str, str]) -> None:
    try:
        load_settings(env)
        # gunicorn reads WEB_CONCURRENCY itself and fails on a bad one with a bare traceback.
        int_setting(env, "WEB_CONCURRENCY", 2, 1)
        int_setting(env, "GUNICORN_THREADS", 4, 1)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None


@main.command()
@click.option(
    "--host", default=lambda: os.environ.get("HOST", "127.0.0.1"), show_default="127.0.0.1 or $HOST"
)
@click.option(
    "--port",
    type=int,
    default=lambda: int(os.environ.get("PORT", "8000")),
    show_default="8000 or $PORT",
)
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
    _check_settings(env)
    embedded = None
    if not env.get("REDIS_URL"):
        try:
            embedded = EmbeddedRedis(data_dir).start()
        except EmbeddedRedisError as error:
            raise click.ClickException(str(error)) from None
        env["REDIS_URL"] = embedded.url
        click.echo(f"Embedded Redis: {embedded.url} (data in {data_dir.resolve()})")
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


# Issue 3: try it without Twilio.
from receiver.cli.emulate import emulate, simulate  # noqa: E402
from receiver.cli.transcriptions import transcriptions  # noqa: E402
from receiver.devtools.demo import demo  # noqa: E402
from receiver.devtools.tail import tail  # noqa: E402

main.add_command(emulate)
main.add_command(simulate)
main.add_command(tail)
main.add_command(transcriptions)
main.add_command(demo)


def _bench() -> click.Command:
    from receiver.cli.bench import bench

    return bench


main.add_command(_bench(), "bench")


if __name__ == "__main__":
    main()
