"""`receiver bench`: the command line of receiver/devtools/bench (see docs/performance.md)."""

from __future__ import annotations

import json
import os

import click

from receiver.devtools.bench.measure import Options, run
from receiver.devtools.bench.report import GOAL_RATE, render
from receiver.devtools.bench.traffic import EVENTS_PER_CALL


@click.command()
@click.option("--url", help="Receiver to measure (its root URL); default: start everything.")
@click.option("--baseline-url", help="With --url: an empty route to compare against.")
@click.option(
    "--peer-url",
    help="With --url: a textbook peer to compare against (it must accept requests signed for "
    "the receiver's URL).",
)
@click.option(
    "--redis-url",
    default=lambda: os.environ.get("REDIS_URL"),
    show_default="$REDIS_URL",
    help="With --url: the receiver's Redis, for the end-to-end latency and the stored count.",
)
@click.option(
    "--signed-base-url", help="With --url: the receiver's PUBLIC_BASE_URL, if it has one."
)
@click.option(
    "--token",
    default=lambda: os.environ.get("TWILIO_AUTH_TOKEN", "").split(",")[0],
    show_default="$TWILIO_AUTH_TOKEN",
    help="With --url: the auth token to sign with.",
)
@click.option(
    "--prefix",
    default=lambda: os.environ.get("STREAM_PREFIX", "rtt"),
    show_default="rtt or $STREAM_PREFIX",
)
@click.option(
    "--duration",
    "seconds",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds of each closed-loop phase.",
)
@click.option(
    "--rounds",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Alternating (empty route, peer, receiver) rounds; medians are reported.",
)
@click.option(
    "--connections",
    type=click.IntRange(1),
    default=32,
    show_default=True,
    help="Keep-alive connections of the closed-loop phases.",
)
@click.option(
    "--calls",
    type=click.IntRange(1),
    default=200,
    show_default=True,
    help="Concurrent simulated calls (both tracks each).",
)
@click.option(
    "--rate",
    type=float,
    default=GOAL_RATE,
    show_default=True,
    help="Offered req/s of the fixed-rate phase (0: skip it).",
)
@click.option("--rate-duration", "rate_seconds", type=float, default=10.0, show_default=True)
@click.option("--rate-connections", type=click.IntRange(1), default=16, show_default=True)
@click.option(
    "--events-per-call",
    type=float,
    default=EVENTS_PER_CALL,
    show_default=True,
    help="Callbacks per second of one live call, for the live-calls figure.",
)
@click.option(
    "--generator",
    type=click.Choice(["auto", "wrk", "python"]),
    default="auto",
    show_default=True,
    help="Closed-loop generator: wrk when installed.",
)
@click.option("--wrk-threads", type=click.IntRange(1), default=1, show_default=True)
@click.option("--workers", type=click.IntRange(1), help="Started servers: WEB_CONCURRENCY.")
@click.option("--threads", type=click.IntRange(1), help="Started servers: GUNICORN_THREADS.")
@click.option("--worker-class", help="Started servers: gunicorn worker class (e.g. sync).")
@click.option(
    "--no-baseline",
    "baseline",
    is_flag=True,
    default=True,
    flag_value=False,
    help="Skip the empty-route baseline (e.g. for a long memory run).",
)
@click.option(
    "--no-peer",
    "peer",
    is_flag=True,
    default=True,
    flag_value=False,
    help="Skip the textbook peer.",
)
@click.option(
    "--expected-rate",
    type=float,
    default=2000,
    show_default=True,
    help="req/s the signed pool is sized for at least (the warm-up and each round raise it to "
    "what the fastest target answered).",
)
@click.option(
    "--sample-calls",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Calls whose events the end-to-end consumer follows.",
)
@click.option(
    "--server-pid",
    type=int,
    help="With --url, on this host: the gunicorn master's pid, for CPU per request and RSS.",
)
@click.option("--redis-pid", type=int, help="With --url, on this host: Redis' pid, for its CPU.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def bench(as_json: bool, **values) -> None:
    """Measure the receiver under realistic signed traffic, against a textbook peer and an
    empty route served the same way."""
    options = Options(**values)
    say = (lambda text: click.echo(text, err=True)) if as_json else click.echo
    report = run(options, say)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        render(report)
