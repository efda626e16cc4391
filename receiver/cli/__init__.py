"""The `receiver` command: one thin module per command in this package.

Commands are imported when they run, not when the group loads: `receiver serve` then needs
only what the receiver needs (a production image installs the package without the ``tools``
extra), and a developer tool whose extra is missing says how to install it.
"""

from __future__ import annotations

import importlib

import click

# command name -> "module:attribute"
COMMANDS = {
    "serve": "receiver.cli.serve:serve",
    "dashboard": "receiver.cli.dashboard:dashboard",
    "transcriptions": "receiver.cli.transcriptions:transcriptions",
    "emulate": "receiver.cli.emulate:emulate",
    "simulate": "receiver.cli.emulate:simulate",
    "tail": "receiver.cli.tail:tail",
    "demo": "receiver.cli.demo:demo",
    "memory": "receiver.cli.memory:memory",
    "bench": "receiver.cli.bench:bench",
    "dashboard-bench": "receiver.dashboard.bench:dashboard_bench",
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except ModuleNotFoundError as error:
            if error.name is None or error.name.startswith("receiver"):
                raise
            raise click.ClickException(
                f"`receiver {name}` needs {error.name!r}, part of the tools extra: "
                "pip install 'rtt-receiver[tools]'"
            ) from None


@click.group(cls=LazyGroup)
@click.version_option(package_name="rtt-receiver")
def main() -> None:
    """Receive Twilio Real-Time Transcription callbacks into Redis Streams."""


if __name__ == "__main__":
    main()
