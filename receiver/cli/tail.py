"""`receiver tail`: a live transcript in the terminal, or NDJSON."""

from __future__ import annotations

import os
import sys

import click
import redis

from receiver.cli.options import json_option, redis_options
from receiver.devtools.tail import BLOCK_MS, run, stream_keys
from receiver.protocol import SID_PATTERNS
from receiver.storage.contract import Keys


@click.command()
@redis_options
@click.option("--call", "call_sid", help="Follow one call (CA…) instead of all calls.")
@click.option("--finals-only", is_flag=True, help="Hide partial results.")
@click.option(
    "--from-start", is_flag=True, help="Replay the stream from its first entry, then follow."
)
@json_option("One normalized event per line (NDJSON).")
@click.option(
    "--until-stopped", is_flag=True, help="Exit once every transcription seen has stopped."
)
def tail(redis_url, prefix, call_sid, finals_only, from_start, as_json, until_stopped) -> None:
    """Follow the transcription streams live, as a readable transcript or as NDJSON.

    Reads with XREAD, without a consumer group: other consumers are not disturbed.
    """
    if call_sid is not None and not SID_PATTERNS["CallSid"].match(call_sid):
        raise click.BadParameter(
            f"{call_sid!r} is not a CallSid (CA + 32 hex)", param_hint="--call"
        )
    try:
        client = redis.Redis.from_url(
            redis_url,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_timeout=BLOCK_MS / 1000 + 5,
        )
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--redis-url") from None
    keys = stream_keys(Keys(prefix), call_sid)
    try:
        run(
            client,
            url=redis_url,
            keys=keys,
            from_start=from_start,
            finals_only=finals_only,
            as_json=as_json,
            until_stopped=until_stopped,
        )
    except KeyboardInterrupt:
        pass
    except redis.ResponseError as error:
        raise click.ClickException(f"{', '.join(keys)}: {error}") from None
    except BrokenPipeError:
        # The reader went away (`| head`): leave quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        client.close()
