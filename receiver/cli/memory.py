"""`receiver memory`: what one call-hour costs in Redis (the logic: receiver/devtools/memory.py)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click
import redis

from receiver.config import redact_url
from receiver.devtools.memory import Workload, measure, report
from receiver.server.embedded_redis import EmbeddedRedis, EmbeddedRedisError


@click.command()
@click.option(
    "--redis-url",
    help="Measure on this Redis (it writes under a prefix of its own, then deletes it); "
    "default: an embedded Redis started for the measurement.",
)
@click.option("--minutes", type=click.IntRange(min=1), default=60, show_default=True)
@click.option(
    "--partials-retention",
    "partials_retention",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="PARTIALS_RETENTION_SECONDS to measure with.",
)
@click.option(
    "--partials-per-word",
    type=click.FloatRange(min=0.1),
    default=1.5,
    show_default=True,
    help="How often the engine revises a partial result.",
)
@click.option("--json", "as_json", is_flag=True, help="The figures as one JSON object.")
def memory(
    redis_url: str | None,
    minutes: int,
    partials_retention: int,
    partials_per_word: float,
    as_json: bool,
) -> None:
    """Store a synthetic call through the real store and print the Redis memory per call-hour."""
    with tempfile.TemporaryDirectory(prefix="rtt-memory-") as tmp:
        server = None
        if not redis_url:
            try:
                server = EmbeddedRedis(Path(tmp)).start()
            except EmbeddedRedisError as error:
                raise click.ClickException(str(error)) from None
            redis_url = server.url
        client = redis.Redis.from_url(redis_url, socket_timeout=30)
        try:
            figures = measure(
                client,
                workload=Workload(minutes=minutes, partials_per_word=partials_per_word),
                partials_retention_seconds=partials_retention,
            )
        except redis.RedisError as error:
            raise click.ClickException(f"Redis at {redact_url(redis_url)}: {error}") from None
        finally:
            client.close()
            if server:
                server.stop()
    if as_json:
        click.echo(json.dumps(figures.to_json(), indent=2))
    else:
        click.echo("\n".join(report(figures)))
