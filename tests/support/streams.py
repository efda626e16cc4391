"""Reading what the store wrote, as a consumer would (docs/streams.md)."""

from __future__ import annotations

import redis


def call_entries(client: redis.Redis, call_sid: str, prefix: str = "rtt") -> list[dict]:
    """Every event of one call: its record (``…:call:{CA…}``) and its partial results
    (``…:partials``), merged in the order they were stored."""
    record = f"{prefix}:call:{{{call_sid}}}"
    merged = client.xrange(record) + client.xrange(f"{record}:partials")
    merged.sort(key=lambda entry: tuple(int(part) for part in entry[0].split("-")))
    return [fields for _, fields in merged]
