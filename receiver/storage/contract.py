"""The streams contract: every Redis key the receiver writes and how an event becomes an entry.

The contract is documented in ``docs/streams.md``; a change here that consumers can see bumps
``SCHEMA_VERSION``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from receiver.events import Event
from receiver.protocol import parse_timestamp

SCHEMA_VERSION = "2"


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
    def rejected_seen(self) -> str:
        # The hash tag is the dead-letter stream's own name: the same cluster slot as it.
        return f"{{{self.rejected}}}:seen"

    @property
    def active_calls(self) -> str:
        return f"{self.prefix}:calls:active"

    @property
    def recent_calls(self) -> str:
        return f"{self.prefix}:calls:recent"

    def call(self, call_sid: str) -> str:
        # The braces are a Redis Cluster hash tag: every key of one call lives in one slot.
        return f"{self.prefix}:call:{{{call_sid}}}"

    def partials(self, call_sid: str) -> str:
        return f"{self.call(call_sid)}:partials"

    def seen(self, call_sid: str, transcription_sid: str) -> str:
        """One transcription's identities: a bitmap whose bit ``SequenceId`` is set once that
        event is stored (bytes: the highest SequenceId / 8, so about 2 KB per call-hour)."""
        return f"{self.call(call_sid)}:seen:{transcription_sid}"

    def seen_set(self, call_sid: str) -> str:
        """A call's identities as a set of ``TranscriptionSid:SequenceId``, as receivers that
        predate the bitmaps kept them: consulted, never written, so that a retry of an event
        stored by such a receiver stays a duplicate until the set expires by itself (one
        freshness window after its last write)."""
        return f"{self.call(call_sid)}:seen"

    def labels(self, call_sid: str) -> str:
        return f"{self.call(call_sid)}:labels"

    def finals(self, call_sid: str) -> str:
        return f"{self.call(call_sid)}:finals"

    def transcriptions(self, call_sid: str) -> str:
        return f"{self.call(call_sid)}:transcriptions"

    def store_keys(self, call_sid: str, transcription_sid: str) -> list[str]:
        """The KEYS of ``store.lua`` for an event of ``transcription_sid``, in its order."""
        return [
            self.call(call_sid),
            self.events,
            self.seen(call_sid, transcription_sid),
            self.labels(call_sid),
            self.finals(call_sid),
            self.active_calls,
            self.transcriptions(call_sid),
            self.partials(call_sid),
            self.recent_calls,
            self.seen_set(call_sid),
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
            ("provider_data", event.provider_data),
            ("spoken_start", event.spoken_start),
            ("spoken_end", event.spoken_end),
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


def time_score(
    spoken_start: str | None, provider_data: str | None, timestamp: str | None
) -> int | None:
    """The epoch ms a final is scored by in the finals sorted set when that is a time: its
    ``spoken_start`` when the provider said when the words were spoken (orders both tracks as
    spoken); with provider data that gives no spoken time (it did not parse), its
    ``Timestamp``, on the same scale as its neighbours' spoken time. None without provider data
    (a session without EnableProviderData): the final is scored by its SequenceId."""
    if spoken_start:
        spoken = datetime.fromisoformat(spoken_start.replace("Z", "+00:00"))
        return round(spoken.timestamp() * 1000)
    if provider_data is not None and timestamp:
        return round(parse_timestamp(timestamp).timestamp() * 1000)
    return None


def finals_score(event: Event) -> str:
    """The score of a final in the finals sorted set: its time score (``time_score``), else its
    SequenceId (production order, exact within a track only); "" when none is known."""
    at = time_score(event.spoken_start, event.provider_data, event.timestamp)
    if at is not None:
        return str(at)
    return "" if event.sequence_id is None else str(event.sequence_id)
