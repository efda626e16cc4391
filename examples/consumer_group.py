"""A consumer of rtt:events in a consumer group: run as many copies as you need.

    python examples/consumer_group.py --group transcripts --consumer "$HOSTNAME"

Each entry of the global stream goes to exactly one consumer of the group. A consumer
acknowledges an entry (XACK) only after handling it, so an entry whose consumer died stays
pending; every consumer first reclaims entries that have been pending for longer than
``--min-idle`` (XAUTOCLAIM) and handles them, then reads new ones (XREADGROUP). Handling must
therefore be idempotent: an entry can be handled twice if a consumer dies after handling it and
before acknowledging it. The entry id, or (transcription_sid, sequence_id), is a natural key.

Environment: REDIS_URL (default redis://127.0.0.1:6379/0), STREAM_PREFIX (default rtt).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import click
import redis

Entry = tuple[str, dict[str, str]]
Handler = Callable[[str, dict[str, str]], None]


def ensure_group(client: redis.Redis, stream: str, group: str, start: str = "$") -> bool:
    """Create the group (and the stream) unless it exists. ``start``: ``$`` for new entries
    only, ``0`` to go through everything the stream still holds. True when created."""
    try:
        client.xgroup_create(stream, group, id=start, mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise
        return False
    return True


def reclaim(
    client: redis.Redis, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
) -> list[Entry]:
    """Entries another consumer read but did not acknowledge for ``min_idle_ms``: now ours."""
    claimed: list[Entry] = []
    cursor = "0-0"
    while True:
        reply = client.xautoclaim(
            stream, group, consumer, min_idle_time=min_idle_ms, start_id=cursor, count=count
        )
        cursor, entries = reply[0], reply[1]
        # Entries trimmed from the stream (EVENTS_MAXLEN) while pending come back as None;
        # XAUTOCLAIM has already dropped them from the pending list.
        claimed += [(entry_id, fields) for entry_id, fields in entries if fields is not None]
        if cursor in ("0-0", b"0-0") or len(claimed) >= count:
            return claimed


def consume_once(
    client: redis.Redis,
    stream: str,
    group: str,
    consumer: str,
    handle: Handler,
    *,
    min_idle_ms: int = 60_000,
    count: int = 100,
    block_ms: int | None = 5_000,
) -> int:
    """Handle what was stuck, else what is new; acknowledge each entry once handled. Returns
    how many entries were handled. An exception from ``handle`` leaves the entry pending, to be
    reclaimed after ``min_idle_ms`` (by this consumer or another)."""
    entries = reclaim(client, stream, group, consumer, min_idle_ms, count)
    if not entries:
        reply = client.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms)
        entries = [entry for _, stream_entries in reply or [] for entry in stream_entries]
    for entry_id, fields in entries:
        handle(entry_id, fields)
        client.xack(stream, group, entry_id)
    return len(entries)


def print_finals(entry_id: str, fields: dict[str, str]) -> None:
    """The example's work: print final utterances as they arrive."""
    if fields.get("event") == "content" and fields.get("final") == "true":
        who = fields.get("track_label") or fields.get("track") or "?"
        click.echo(f"{fields['call_sid']} {who}: {fields.get('transcript', '')}")
    elif fields.get("event") in ("started", "stopped"):
        click.echo(f"{fields['call_sid']} transcription {fields['event']}")


@click.command()
@click.option("--group", default="examples", show_default=True)
@click.option("--consumer", default=socket.gethostname, show_default="the host name")
@click.option("--from-start", is_flag=True, help="Create the group at the stream's start.")
@click.option("--min-idle", "min_idle_ms", default=60_000, show_default=True, help="ms")
def main(group: str, consumer: str, from_start: bool, min_idle_ms: int) -> None:
    """Print final utterances from rtt:events, sharing the work with the group's consumers."""
    client = redis.Redis.from_url(
        os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), decode_responses=True
    )
    stream = f"{os.environ.get('STREAM_PREFIX', 'rtt')}:events"
    ensure_group(client, stream, group, "0" if from_start else "$")
    click.echo(f"consumer {consumer!r} of group {group!r} on {stream}", err=True)
    while True:
        consume_once(client, stream, group, consumer, print_finals, min_idle_ms=min_idle_ms)


if __name__ == "__main__":
    main()
