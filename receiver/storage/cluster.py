"""Redis Cluster: the same streams contract, stored in four slot-local steps.

One Lua script can only touch keys of one slot. Every key of a call shares the hash tag
``{CallSid}``, but the global stream ``rtt:events`` and the indexes ``rtt:calls:active`` and
``rtt:calls:recent`` live in slots of their own, and their names are promised to users. So on a
cluster an event is stored in four steps, each one atomic script in one slot, each idempotent:

1. the call's slot (``cluster_call.lua``): exactly-once check, call stream or partials stream,
   finals, labels, transcription states. For a duplicate it returns the original entry (unless
   it is known to be in ``rtt:events``) and the call's state.
2. the global stream's slot (``cluster_events.lua``): append to ``rtt:events`` unless this
   entry was appended in the last hour (``{rtt:events}:seen``, same slot by its hash tag);
   then, back in the call's slot, mark the entry published (``…:published``), so that a retry
   or a spool replay, however late, does not ask again (a global window cannot hold every
   entry of the seen window, the call's own keys can). A partial is marked by forgetting its
   ref instead: partials are most events, so only the record's refs stay for the seen window.
3. the index's slot (``cluster_active.lua``): add or remove the call in ``rtt:calls:active``
   unless a newer state of that call was applied before (``{rtt:calls:active}:versions``).
4. the dashboard index's slot (``cluster_recent.lua``): the call's latest time in
   ``rtt:calls:recent`` (``ZADD GT``: never back in time).

Steps 2 to 4 run for duplicates too: if a receiver died between the steps, Twilio got no 2xx
and retries, or the spool replays the event, and that completes what the first delivery
started. The answer is sent only after all the steps, so a 2xx still means "stored everywhere".
Dead letters need no steps: ``rtt:rejected`` and ``{rtt:rejected}:seen`` share a slot.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import RedisClusterException

from receiver.events import Event
from receiver.storage.contract import Keys
from receiver.storage.store import Outcome, Store, lua

CALL_SCRIPT = lua("call_store.lua", "cluster_call.lua")
EVENTS_SCRIPT = lua("cluster_events.lua")
ACTIVE_SCRIPT = lua("cluster_active.lua")
RECENT_SCRIPT = lua("cluster_recent.lua")
# How long step 2 remembers which call entries it appended (never longer than the seen
# window: no retry comes later). It only has to cover the moment between its append and the
# published mark in the call's slot: later, step 1 knows.
EVENTS_DEDUP_WINDOW_MS = 3600 * 1000
# Step 2b, in the call's slot. KEYS[1] published set, KEYS[2] entries hash; ARGV[1] entry ref,
# ARGV[2] seen window (s), ARGV[3] dedup key. A record's ref is kept as published for the seen
# window; a partial's ref is dropped (if the dedup key still names that entry).
PUBLISHED_SCRIPT = """
if string.sub(ARGV[1], 1, 2) == 'p/' then
  if redis.call('HGET', KEYS[2], ARGV[3]) == ARGV[1] then
    redis.call('HDEL', KEYS[2], ARGV[3])
  end
  return 1
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


@dataclass(frozen=True)
class ClusterKeys:
    """The keys only the cluster path writes, next to the ``Keys`` of the contract."""

    keys: Keys

    @property
    def events_seen(self) -> str:
        # The hash tag is the global stream's name: same slot as that stream.
        return f"{{{self.keys.events}}}:seen"

    @property
    def active_versions(self) -> str:
        return f"{{{self.keys.active_calls}}}:versions"

    def entries(self, call_sid: str) -> str:
        return f"{self.keys.call(call_sid)}:entries"

    def published(self, call_sid: str) -> str:
        return f"{self.keys.call(call_sid)}:published"

    def call_keys(self, call_sid: str, transcription_sid: str) -> list[str]:
        """The KEYS of ``cluster_call.lua`` for an event of ``transcription_sid``, in its
        order: all in the call's slot."""
        k = self.keys
        return [
            k.call(call_sid),
            k.seen(call_sid, transcription_sid),
            k.labels(call_sid),
            k.finals(call_sid),
            k.transcriptions(call_sid),
            self.entries(call_sid),
            self.published(call_sid),
            k.partials(call_sid),
            k.seen_set(call_sid),
        ]


class Cluster(RedisCluster):
    """A cluster client whose "cannot reach the cluster" errors are ``redis.ConnectionError``,
    as with one Redis: redis-py raises ``RedisClusterException``, which is no ``RedisError``,
    and would turn "Redis is down, retry" (503) into a crash (500)."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)
        except RedisClusterException as error:
            raise redis.ConnectionError(f"Redis Cluster unavailable: {error}") from error


class LazyCluster:
    """Connects on first use, like a single-Redis client does, so that the receiver starts, and
    answers /healthz (and 503 on /readyz) while the cluster is unreachable; redis-py's cluster
    client would refuse to be created instead."""

    def __init__(self, url: str, **options: Any) -> None:
        self._url = url
        self._options = options
        self._client: Cluster | None = None
        self._lock = threading.Lock()

    def _cluster(self) -> Cluster:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    try:
                        self._client = Cluster.from_url(self._url, **self._options)
                    except RedisClusterException as error:
                        raise redis.ConnectionError(
                            f"Redis Cluster unavailable: {error}"
                        ) from error
        return self._client

    def register_script(self, script: str) -> Script:
        # Bytes: a Script given text asks the client for its encoder, i.e. connects.
        return Script(self, script.encode("utf-8"))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cluster(), name)


def connect(url: str, **options: Any) -> redis.Redis:
    """A cluster client from a ``redis://`` or ``rediss://`` URL naming any one node."""
    return LazyCluster(url, **options)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class ClusterStore(Store):
    """``Store`` for a Redis Cluster: five round trips per event instead of one."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.cluster_keys = ClusterKeys(self.keys)
        self._call = self.client.register_script(CALL_SCRIPT)
        self._events = self.client.register_script(EVENTS_SCRIPT)
        self._active = self.client.register_script(ACTIVE_SCRIPT)
        self._recent = self.client.register_script(RECENT_SCRIPT)
        self._published = self.client.register_script(PUBLISHED_SCRIPT)

    def append(self, event: Event) -> Outcome:
        now_ms = self.now_ms()
        args = self.args(event, now_ms)
        stored, ref, state_id, in_progress, *fields = self._call(
            keys=self.cluster_keys.call_keys(event.call_sid, event.transcription_sid),
            args=args,
        )
        if _text(ref):
            self._events(
                keys=[self.keys.events, self.cluster_keys.events_seen],
                args=[
                    self.events_maxlen,
                    f"{event.call_sid}/{_text(ref)}",
                    ref,
                    min(EVENTS_DEDUP_WINDOW_MS, self.seen_seconds * 1000),
                    *fields,
                ],
            )
            self._published(
                keys=[
                    self.cluster_keys.published(event.call_sid),
                    self.cluster_keys.entries(event.call_sid),
                ],
                args=[_text(ref), self.seen_seconds, event.dedup_key],
            )
        retention_ms = self.retention_seconds * 1000
        self._active(
            keys=[self.keys.active_calls, self.cluster_keys.active_versions],
            args=[event.call_sid, state_id, in_progress, now_ms, retention_ms],
        )
        self._recent(keys=[self.keys.recent_calls], args=[event.call_sid, now_ms, retention_ms])
        return "stored" if stored == 1 else "duplicate"
