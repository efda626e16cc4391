"""Option decorators that several `receiver` commands share, so each is declared once."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

Command = TypeVar("Command", bound=Callable[..., Any])


def redis_options(command: Command) -> Command:
    """``--redis-url`` and ``--prefix``, read from the receiver's own variables by default."""
    command = click.option(
        "--prefix", envvar="STREAM_PREFIX", default="rtt", show_default="$STREAM_PREFIX or rtt"
    )(command)
    return click.option(
        "--redis-url",
        envvar="REDIS_URL",
        default="redis://127.0.0.1:6379/0",
        show_default="$REDIS_URL or redis://127.0.0.1:6379/0",
    )(command)


def json_option(help: str) -> Callable[[Command], Command]:
    return click.option("--json", "as_json", is_flag=True, help=help)


def api_key_options(help_key: str) -> Callable[[Command], Command]:
    """``--api-key`` and ``--api-secret``: a Twilio API key, as Twilio recommends for
    production, instead of the account's auth token."""

    def decorate(command: Command) -> Command:
        command = click.option(
            "--api-secret",
            envvar="TWILIO_API_SECRET",
            help="The API key's secret [env: TWILIO_API_SECRET].",
        )(command)
        return click.option("--api-key", envvar="TWILIO_API_KEY", help=help_key)(command)

    return decorate


def listen_options(host: str, port: int, env_prefix: str = "") -> Callable[[Command], Command]:
    """``--host`` and ``--port`` of a server command, defaulting to ``$<PREFIX>HOST`` and
    ``$<PREFIX>PORT``."""
    host_var, port_var = f"{env_prefix}HOST", f"{env_prefix}PORT"

    def decorate(command: Command) -> Command:
        command = click.option(
            "--port",
            type=int,
            default=lambda: int(os.environ.get(port_var, str(port))),
            show_default=f"{port} or ${port_var}",
        )(command)
        return click.option(
            "--host",
            default=lambda: os.environ.get(host_var, host),
            show_default=f"{host} or ${host_var}",
        )(command)

    return decorate
