"""The store: one atomic Lua script call per event, on one Redis (``receiver/storage/cluster.py``
stores the same contract on a Redis Cluster)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, Literal

import hiredis
import redis
from redis.exceptions import NoScriptError

from receiver.events import MAX_CLOCK_AHEAD, Event, InvalidEvent
from receiver.signature import request_digest
from receiver.storage.contract import SCHEMA_VERSION, Keys, entry_fields, finals_score


def lua(*names: str) -> str:
    """The text of the package's Lua files, joined: ``call_store.lua`` defines the per-call
    writes that the single-Redis script and the cluster's per-call step share."""
    return "\n".join(
        files(__package__).joinpath("lua", n).read_text(encoding="utf-8") for n in names
    )


STORE_SCRIPT = lua("call_store.lua", "store.lua")
REJECT_SCRIPT = lua("reject.lua")
# How long after MAX_EVENT_AGE_SECONDS an identity is kept: an event stamped this far ahead of
# our clock is still accepted, until its Timestamp is MAX_EVENT_AGE_SECONDS old.
SEEN_MARGIN_SECONDS = int(MAX_CLOCK_AHEAD.total_seconds())

Outcome = Literal["stored", "duplicate"]


def _evented() -> bool:
    """Whether gevent has patched threading (gunicorn's gevent worker)."""
    gevent_monkey = sys.modules.get("gevent.monkey")
    return bool(gevent_monkey and gevent_monkey.is_module_patched("threading"))


def store_args(
    event: Event,
    *,
    retention_seconds: int,
    events_maxlen: int,
    seen_seconds: int,
    partials_seconds: int,
    now_ms: int,
) -> list[str]:
    """The ARGV of ``store.lua`` for ``event``, in its order."""
    explicit = event.track_label if event.label_is_explicit else None
    return [
        event.dedup_key,
        str(retention_seconds),
        str(events_maxlen),
        event.call_sid,
        event.transcription_sid,
        event.event,
        event.track or "",
        explicit or "",
        event.url_labels.inbound or "",
        event.url_labels.outbound or "",
        "1" if event.final else "",
        "" if event.sequence_id is None else str(event.sequence_id),
        str(now_ms),
        event.settings.get("inbound_track_label", ""),
        event.settings.get("outbound_track_label", ""),
        str(seen_seconds),
        str(partials_seconds),
        finals_score(event),
        *entry_fields(event),
    ]


@dataclass
class Store:
    """Appends events and rejections; one Redis round trip per event."""

    client: redis.Redis
    keys: Keys
    retention_seconds: int
    events_maxlen: int
    rejected_maxlen: int
    partials_retention_seconds: int = 300
    max_event_age_seconds: int = 24 * 3600
    # The receiver's clock, in seconds (index scores and trims); tests move it.
    clock: Callable[[], float] = field(default=time.time)

    def __post_init__(self) -> None:
        self._script = self.client.register_script(STORE_SCRIPT)
        self._reject = self.client.register_script(REJECT_SCRIPT)
        self._local = threading.local()

    @property
    def seen_seconds(self) -> int:
        """How long identities outlive a call's last event (docs/storage.md): as long as an
        event can still pass the door, also past the retention (a replay of an event stamped
        ahead of our clock must remain a duplicate after the call's data expired)."""
        return self.max_event_age_seconds + SEEN_MARGIN_SECONDS

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def args(self, event: Event, now_ms: int) -> list[str]:
        """The ARGV of the per-event script for ``event``, stored at ``now_ms``."""
        return store_args(
            event,
            retention_seconds=self.retention_seconds,
            events_maxlen=self.events_maxlen,
            seen_seconds=self.seen_seconds,
            partials_seconds=self.partials_retention_seconds,
            now_ms=now_ms,
        )

    def _connection(self) -> redis.Redis:
        """This thread's own connection from the client's pool, kept for the thread's life.

        Checking a connection out of redis-py's pool on every command takes a lock, records
        metrics and polls the socket (a system call): about a quarter of the client's CPU per
        event, measured with ``receiver bench``. Other clients (e.g. a cluster's) are used as
        they are.
        """
        if _evented():
            return self.client  # greenlet-local would be one connection per request
        pid, client = getattr(self._local, "client", (None, None))
        if client is None or pid != os.getpid():  # never a socket inherited across a fork
            if type(self.client) is redis.Redis:
                client = redis.Redis(
                    connection_pool=self.client.connection_pool, single_connection_client=True
                )
            else:
                client = self.client
            self._local.client = (os.getpid(), client)
        return client

    def append(self, event: Event) -> Outcome:
        """Store ``event`` unless its (TranscriptionSid, SequenceId) was stored before."""
        entry_id = self._script(
            keys=self.keys.store_keys(event.call_sid, event.transcription_sid),
            args=self.args(event, self.now_ms()),
            client=self._connection(),
        )
        return "stored" if entry_id else "duplicate"

    def append_many(self, events: Sequence[Event]) -> list[Outcome | redis.RedisError]:
        """Store ``events``, in order, in one pipelined round trip: the same script per event
        as ``append``, so each one is still atomic and exactly once; each gets its own outcome
        or error. A connection-level error raises for the whole batch (none of it confirmed).

        The commands are packed by hiredis in one call each and written to a pooled connection
        directly: redis-py's pipeline encodes each of a call's ~50 arguments in Python and adds
        its own bookkeeping, about a fifth of a callback's CPU in process (cProfile). EVALSHA
        is sent as is; NOSCRIPT (a restarted or flushed Redis) loads the script once and sends
        again the commands it refused, which did not run.
        """
        now_ms = self.now_ms()
        packed = [
            hiredis.pack_command(("EVALSHA", self._script.sha, len(keys), *keys, *args))
            for keys, args in (
                (
                    self.keys.store_keys(event.call_sid, event.transcription_sid),
                    self.args(event, now_ms),
                )
                for event in events
            )
        ]
        results: list[Any] = self._round_trip(packed)
        again = [i for i, reply in enumerate(results) if isinstance(reply, NoScriptError)]
        if again:
            self.client.script_load(STORE_SCRIPT)
            for index, reply in zip(
                again, self._round_trip([packed[i] for i in again]), strict=True
            ):
                results[index] = reply
        return [
            reply if isinstance(reply, redis.RedisError) else "stored" if reply else "duplicate"
            for reply in results
        ]

    def _round_trip(self, packed: list[bytes]) -> list[Any]:
        """Send packed commands on one pooled connection and read every reply (a Redis error
        reply is returned in its place). A broken connection (one pooled across a Redis
        restart) is retried once on a new one, as the client does for single commands: the
        scripts are idempotent, so a batch that partly ran is safe to send again."""
        pool = self.client.connection_pool
        for attempt in range(2):
            connection = pool.get_connection()
            try:
                connection.send_packed_command([b"".join(packed)])  # one sendall
                replies: list[Any] = []
                for _ in packed:
                    try:
                        replies.append(connection.read_response())
                    except redis.ResponseError as error:
                        replies.append(error)
                return replies
            except redis.ConnectionError:
                connection.disconnect()
                if attempt:
                    raise
            except BaseException:
                connection.disconnect()  # replies may still be on the socket: never reuse it
                raise
            finally:
                pool.release(connection)
        raise AssertionError("unreachable")

    def reject(
        self,
        error: InvalidEvent,
        params: dict[str, list[str]],
        *,
        received_at: str,
        method: str,
        url: str,
    ) -> str:
        """Keep a signed callback that could not be normalized, with the reason, in the
        dead-letter stream, so that nothing Twilio sent is lost; once per signed request (a replayed
        capture, a spool replay or a variant with the same signature adds nothing). The entry
        id, or "" for such a repeat."""
        fields = {
            "schema": SCHEMA_VERSION,
            "reason": str(error),
            "field": error.field,
            "received_at": received_at,
            "method": method,
            "url": url,
            "params": json.dumps(params, ensure_ascii=False, sort_keys=True),
        }
        entry_id = self._reject(
            keys=[self.keys.rejected, self.keys.rejected_seen],
            args=[
                request_digest(method, url, params),
                self.now_ms(),
                self.max_event_age_seconds * 1000,
                self.rejected_maxlen,
                *[item for pair in fields.items() for item in pair],
            ],
        )
        if isinstance(entry_id, bytes):
            return entry_id.decode()
        return entry_id or ""

    def ping(self) -> bool:
        return bool(self.client.ping())
