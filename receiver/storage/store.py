"""The store: one atomic Lua script call per event, on one Redis (``receiver/storage/cluster.py``
stores the same contract on a Redis Cluster)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Literal

import redis

from receiver.events import Event, InvalidEvent
from receiver.storage.contract import SCHEMA_VERSION, Keys, entry_fields, finals_score


def lua(*names: str) -> str:
    """The text of the package's Lua files, joined: ``call_store.lua`` defines the per-call
    writes that the single-Redis script and the cluster's per-call step share."""
    return "\n".join(
        files(__package__).joinpath("lua", n).read_text(encoding="utf-8") for n in names
    )


STORE_SCRIPT = lua("call_store.lua", "store.lua")
REJECT_SCRIPT = lua("reject.lua")
# How long after MAX_EVENT_AGE_SECONDS an identity is kept: clock skew between Twilio and us.
SEEN_MARGIN_SECONDS = 300

Outcome = Literal["stored", "duplicate"]


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


def rejection_digest(method: str, url: str, params: dict[str, list[str]]) -> str:
    """A dead letter's identity: the same signed request, however often it comes, is one."""
    canonical = [method.upper(), url, sorted((k, sorted(v)) for k, v in params.items())]
    return hashlib.sha256(json.dumps(canonical, ensure_ascii=False).encode()).hexdigest()


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
        """How long identities outlive a call's last event (docs/storage.md)."""
        return min(self.retention_seconds, self.max_event_age_seconds + SEEN_MARGIN_SECONDS)

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
            keys=self.keys.store_keys(event.call_sid),
            args=self.args(event, self.now_ms()),
            client=self._connection(),
        )
        return "stored" if entry_id else "duplicate"

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
        dead-letter stream, so that nothing Twilio sent is lost; once per request (a replayed
        capture or a spool replay adds nothing). The entry id, or "" for such a repeat."""
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
                rejection_digest(method, url, params),
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
