"""`receiver demo`: the whole loop, locally, in a few seconds."""

from __future__ import annotations

import click

from receiver.devtools.demo import run_demo


@click.command()
@click.option(
    "--speed",
    type=click.FloatRange(min=0.1),
    default=2.5,
    show_default=True,
    help="How much faster than real time the 25-second call plays.",
)
@click.option("--finals-only", is_flag=True, help="Hide partial results in the tail.")
@click.option(
    "--dashboard",
    "with_dashboard",
    is_flag=True,
    help="Keep going with the dashboard open: a new call every few seconds, until Ctrl-C.",
)
def demo(speed: float, finals_only: bool, with_dashboard: bool) -> None:
    """See it all in a few seconds: Redis, receiver, emulator, one call, the live tail."""
    run_demo(speed, finals_only, with_dashboard)
