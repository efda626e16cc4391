"""Redis keys and field encoding: the only module that knows the streams contract.

The contract itself is documented in ``docs/streams.md``; a change here that consumers can see
bumps ``SCHEMA_VERSION``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from importlib.resources import files
from typing import Literal

import redis

from .events import Event, InvalidEvent

SCHEMA_VERSION = "1"


def lua(*names: str) -> str:
    """The text of the package's Lua files, joined: ``call_store.lua`` defines the per-call
    writes that the single-Redis script and the cluster's per-call step share."""
    return "\n".join(files(__package__).joinpath(n).read_text(encoding="utf-8") for n in names)


STORE_SCRIPT = lua("call_store.lua", "store.lua")

Outcome = Literal["stored", "duplicate"]


@dataclass(frozen=True)
class Keys:
    """Every Redis key the receiver writes, under one prefix (``STREAM_PREFIX``)."""

    prefix: str = "rtt"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @property
    def rejected(self) -> str:
        return f"{self.prefix}:rejected"

    @property
    def active_calls(self) -> str:
        return f"{self.prefix}:calls:active"

    @property
    def recent_calls(self) -> str:
        return f"{self.prefix}:calls:recent"

    def call(self, call_sid: str) -> str:
        # The braces are a Redis Cluster hash tag: every key of one call lives in one slot.
        return f"{self.prefix}:call:{{{call_sid}}}"

    def seen(self, call_sid: str) -> str:
        return f"{self.call(call_sid)}:seen"

    def labels(self, call_sid: str) -> str:
        return f"{self.call(call_sid)}:labels"

    def finals(self, call_sid: str) -> str:
        return f"{self.call(call_sid)}:finals"

    def transcriptions(self, call_sid: str) -> str:
        return f"{self.call(call_sid)}:transcriptions"

    def store_keys(self, call_sid: str) -> list[str]:
        """The KEYS of ``store.lua``, in its order."""
        return [
            self.call(call_sid),
            self.events,
            self.seen(call_sid),
            self.labels(call_sid),
            self.finals(call_sid),
            self.active_calls,
            self.transcriptions(call_sid),
            self.recent_calls,
        ]


def entry_fields(event: Event) -> list[str]:
    """The stream entry of ``event`` as flat field, value pairs; absent fields are left out.

    ``track`` and ``track_label`` of content events are added by the store script, which can
    see the labels remembered from the transcription's ``transcription-started`` event.
    """
    pairs: list[tuple[str, str | None]] = [
        ("schema", SCHEMA_VERSION),
        ("event", event.event),
        ("account_sid", event.account_sid),
        ("call_sid", event.call_sid),
        ("transcription_sid", event.transcription_sid),
        ("sequence_id", None if event.sequence_id is None else str(event.sequence_id)),
        ("timestamp", event.timestamp),
        ("received_at", event.received_at),
    ]
    if event.event == "content":
        pairs += [
            ("final", "true" if event.final else "false"),
            ("transcript", event.transcript),
            ("confidence", event.confidence),
            ("stability", event.stability),
            ("language_code", event.language_code),
        ]
    pairs += list(event.settings.items())
    pairs += [("error_code", event.error_code), ("error_message", event.error_message)]
    if event.extra:
        pairs.append(("extra", json.dumps(event.extra, ensure_ascii=False, sort_keys=True)))
    flat: list[str] = []
    for name, value in pairs:
        if value is not None:
            flat += (name, value)
    return flat


def store_args(event: Event, *, retention_seconds: int, events_maxlen: int) -> list[str]:
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
        str(int(time.time() * 1000)),
        event.settings.get("inbound_track_label", ""),
        event.settings.get("outbound_track_label", ""),
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

    def __post_init__(self) -> None:
        self._script = self.client.register_script(STORE_SCRIPT)
        self._local = threading.local()

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
        args = store_args(
            event, retention_seconds=self.retention_seconds, events_maxlen=self.events_maxlen
        )
        entry_id = self._script(
            keys=self.keys.store_keys(event.call_sid), args=args, client=self._connection()
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
        dead-letter stream, so that nothing Twilio sent is lost."""
        return self.client.xadd(
            self.keys.rejected,
            {
                "schema": SCHEMA_VERSION,
                "reason": str(error),
                "field": error.field,
                "received_at": received_at,
                "method": method,
                "url": url,
                "params": json.dumps(params, ensure_ascii=False, sort_keys=True),
            },
            maxlen=self.rejected_maxlen,
            approximate=True,
        )

    def ping(self) -> bool:
        return bool(self.client.ping())
