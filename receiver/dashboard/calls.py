"""What the pages show, read from the streams contract: calls in progress, recent calls, and
one call's history (finals and lifecycle events; partial results only arrive live)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import redis

from receiver.dashboard.live import parse_id
from receiver.dashboard.transcript import Utterance, in_order, iso
from receiver.dashboard.transcript import load as load_finals
from receiver.storage.contract import Keys

# The index shows at most this many calls of each kind; a text search reads the finals of at
# most SEARCH_CALLS of the newest ended calls.
MAX_ROWS = 200
SEARCH_CALLS = 500
# Errors are counted among a call's latest events only, to bound the work per row.
ERROR_WINDOW = 500


@dataclass
class CallSummary:
    call_sid: str
    labels: list[str]
    started: str | None
    last: str
    utterances: int
    latest: str
    errors: int
    error_message: str
    active_transcriptions: list[str] = field(default_factory=list)
    started_ms: int = 0
    last_ms: int = 0

    @property
    def duration_seconds(self) -> int:
        return max(0, (self.last_ms - self.started_ms) // 1000) if self.started_ms else 0


def ordered_labels(labels: dict[str, str]) -> list[str]:
    """The call's track labels, inbound first, each once."""
    found: list[str] = []
    for track in ("inbound", "outbound"):
        for name, label in sorted(labels.items()):
            if name.endswith(f":{track}") and label not in found:
                found.append(label)
    return found


def summaries(client: redis.Redis, keys: Keys, calls: list[tuple[str, float]]) -> list[CallSummary]:
    """One row per (CallSid, ms of its latest event), in the given order: one round trip."""
    pipe = client.pipeline(transaction=False)
    for call_sid, _ in calls:
        pipe.xrange(keys.call(call_sid), count=1)
        pipe.hgetall(keys.labels(call_sid))
        pipe.zcard(keys.finals(call_sid))
        pipe.zrange(keys.finals(call_sid), -1, -1)
        pipe.hgetall(keys.transcriptions(call_sid))
        pipe.xrevrange(keys.call(call_sid), count=ERROR_WINDOW)
    answers = pipe.execute()
    rows = []
    for n, (call_sid, score) in enumerate(calls):
        first, labels, count, latest, states, tail = answers[n * 6 : n * 6 + 6]
        started_ms = parse_id(first[0][0])[0] if first else 0
        latest_text = ""
        if latest:
            data = json.loads(latest[0])
            latest_text = (
                f"{data.get('track_label') or data.get('track')}: {data.get('transcript')}"
            )
        errors = [fields for _id, fields in tail if fields.get("event") == "error"]
        rows.append(
            CallSummary(
                call_sid=call_sid,
                labels=ordered_labels(labels),
                started=iso(started_ms) if started_ms else None,
                last=iso(int(score)),
                utterances=count,
                latest=latest_text,
                errors=len(errors),
                error_message=(
                    f"{errors[0].get('error_code', '')} {errors[0].get('error_message', '')}"
                ).strip()
                if errors
                else "",
                active_transcriptions=sorted(t for t, s in states.items() if s == "active"),
                started_ms=started_ms,
                last_ms=int(score),
            )
        )
    return rows


def _in_progress_since(retention_seconds: int) -> int:
    """The oldest last-event time (ms) of a call still in progress: the receiver trims idle
    calls from the index only when it writes an event, so a quiet index may hold older ones."""
    return int(time.time() * 1000) - retention_seconds * 1000


def active_calls(client: redis.Redis, keys: Keys, retention_seconds: int) -> list[CallSummary]:
    since = _in_progress_since(retention_seconds)
    calls = client.zrevrangebyscore(
        keys.active_calls, "+inf", since, start=0, num=MAX_ROWS, withscores=True
    )
    rows = summaries(client, keys, calls)
    return sorted(rows, key=lambda r: r.started_ms or r.last_ms, reverse=True)


def _matches(finals: list[str], words: list[str]) -> bool:
    text = " ".join(str(json.loads(m).get("transcript", "")) for m in finals).casefold()
    return all(word in text for word in words)


def ended_calls(
    client: redis.Redis,
    keys: Keys,
    *,
    hours: int,
    retention_seconds: int,
    sid_filter: str = "",
    text_filter: str = "",
) -> tuple[list[CallSummary], int]:
    """Calls in ``recent`` but not in progress, newest first, filtered; and how many matched."""
    since = int(time.time() * 1000) - hours * 3_600_000
    recent = client.zrevrangebyscore(keys.recent_calls, "+inf", since, withscores=True)
    in_progress = _in_progress_since(retention_seconds)
    active = set(client.zrangebyscore(keys.active_calls, in_progress, "+inf"))
    candidates = [(sid, score) for sid, score in recent if sid not in active]
    if sid_filter:
        wanted = sid_filter.strip().casefold()
        candidates = [(sid, score) for sid, score in candidates if wanted in sid.casefold()]
    words = text_filter.casefold().split()
    if words:
        searched = candidates[:SEARCH_CALLS]
        pipe = client.pipeline(transaction=False)
        for call_sid, _ in searched:
            pipe.zrange(keys.finals(call_sid), 0, -1)
        finals = pipe.execute()
        candidates = [c for c, f in zip(searched, finals, strict=True) if _matches(f, words)]
    return summaries(client, keys, candidates[:MAX_ROWS]), len(candidates)


@dataclass
class Item:
    """One line of a conversation: a final utterance or a lifecycle event."""

    kind: str  # "final" or the event name
    entry_id: str
    transcription_sid: str
    sequence_id: int
    time: str
    track: str = ""
    label: str = ""
    text: str = ""
    confidence: str = ""
    low: bool = False
    # The epoch ms a final is ordered by, None when by SequenceId (transcript.in_order).
    at_ms: int | None = None

    @property
    def is_final(self) -> bool:
        return self.kind == "final"


@dataclass
class Conversation:
    call_sid: str
    items: list[Item]
    labels: dict[str, str]
    active: bool
    after: str
    active_transcriptions: list[str]
    started: str | None


def _lifecycle_text(fields: dict[str, str]) -> str:
    event = fields.get("event", "")
    if event == "started":
        parts = [fields.get("name"), fields.get("track_setting"), fields.get("language_code")]
        return "Transcription started" + (
            f" ({', '.join(p for p in parts if p)})" if any(parts) else ""
        )
    if event == "stopped":
        return "Transcription stopped"
    if event == "error":
        code, message = fields.get("error_code", ""), fields.get("error_message", "")
        return f"Transcription error {code}: {message}".strip().rstrip(":")
    return f"Event {event}"


def conversation(
    client: redis.Redis, keys: Keys, call_sid: str, low_confidence: float, retention_seconds: int
) -> Conversation:
    # The live feed starts after the newest global entry read here, before the history: an
    # event stored in between is in both, and the browser drops the second copy by its call
    # entry id; none is missed.
    newest = client.xrevrange(keys.events, count=1)
    after = newest[0][0] if newest else "0-0"
    pipe = client.pipeline(transaction=False)
    pipe.xrange(keys.call(call_sid))
    pipe.hgetall(keys.labels(call_sid))
    pipe.zscore(keys.active_calls, call_sid)
    pipe.hgetall(keys.transcriptions(call_sid))
    entries, labels, active, states = pipe.execute()
    items: list[Item] = []
    for entry_id, fields in entries:
        if fields.get("event") == "content":
            continue  # finals come from the finals set; partials from the live feed only
        items.append(
            Item(
                kind=fields.get("event", ""),
                entry_id=entry_id,
                transcription_sid=fields.get("transcription_sid", ""),
                sequence_id=int(fields.get("sequence_id") or 0),
                time=fields.get("received_at") or "",
                text=_lifecycle_text(fields),
            )
        )
    finals: list[Utterance] = load_finals(client, keys, call_sid)
    for u in finals:
        low = False
        if u.confidence:
            try:
                low = float(u.confidence) < low_confidence
            except ValueError:
                low = False
        items.append(
            Item(
                kind="final",
                entry_id=u.entry_id,
                transcription_sid=u.transcription_sid,
                sequence_id=u.sequence_id,
                time=u.time,
                track=u.track,
                label=u.track_label,
                text=u.transcript,
                confidence=u.confidence,
                low=low,
                at_ms=u.at_ms,
            )
        )
    by_track = {"inbound": "", "outbound": ""}
    for name, label in labels.items():
        track = name.rpartition(":")[2]
        if track in by_track and not by_track[track]:
            by_track[track] = label
    started = iso(parse_id(entries[0][0])[0]) if entries else None
    return Conversation(
        call_sid=call_sid,
        items=in_order(items),
        labels=by_track,
        active=active is not None and active >= _in_progress_since(retention_seconds),
        after=after,
        active_transcriptions=sorted(t for t, s in states.items() if s == "active"),
        started=started,
    )
