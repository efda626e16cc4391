"""A call's transcript, from its ordered finals, as text, JSON and WebVTT, and the order the
conversation page shows it in (the live page's script applies the same rule).

The order is the finals sorted set's (docs/streams.md): a final scored by a time (spoken time,
or ``Timestamp`` when the provider data gives none) is placed at that time, which orders both
parties as they spoke. A final scored by ``SequenceId`` has no time, and SequenceIds of two
transcriptions cannot be compared: it is placed when the receiver stored it (its call stream
entry id), or earlier, just before the first later SequenceId of its transcription stored
before it. So the finals of one transcription stay in SequenceId order, as in the set, and
several transcriptions (e.g. one per track) interleave as their results came in. Lifecycle
events are placed the same way as a final scored by ``SequenceId``. Ties: by SequenceId, then
as stored.

Times shown are when the receiver stored each final (its call stream entry id), i.e. the end of
the utterance as Twilio reported it, so WebVTT cues end there and start at the previous final
or a length estimated from the words, whichever is later.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import groupby
from typing import Protocol, TypeVar

import redis

from receiver.dashboard.live import parse_id
from receiver.storage.contract import Keys, time_score

# WebVTT cue length estimate: 150 words a minute, at least a second.
SECONDS_PER_WORD = 0.4
# A place later than any stream entry id.
_NEVER = (2**63, 0)


@dataclass(frozen=True)
class Utterance:
    transcription_sid: str
    sequence_id: int
    track: str
    track_label: str
    transcript: str
    confidence: str
    entry_id: str
    # When the words were spoken, when the provider data said so.
    spoken_start: str | None = None
    spoken_end: str | None = None
    # The epoch ms the finals set orders it by, None when that is its SequenceId.
    at_ms: int | None = field(default=None, compare=False)

    def fields(self) -> dict[str, object]:
        """The final's fields as the finals set holds them (``spoken_*`` only when known)."""
        return {
            k: v
            for k, v in asdict(self).items()
            if k != "at_ms" and not (k.startswith("spoken_") and v is None)
        }

    @property
    def is_final(self) -> bool:
        return True

    @property
    def ms(self) -> int:
        return parse_id(self.entry_id)[0]

    @property
    def time(self) -> str:
        return iso(self.ms)


class Placed(Protocol):
    """A line of a conversation as far as its place goes."""

    @property
    def transcription_sid(self) -> str: ...
    @property
    def sequence_id(self) -> int: ...
    @property
    def entry_id(self) -> str: ...
    @property
    def at_ms(self) -> int | None: ...
    @property
    def is_final(self) -> bool: ...


P = TypeVar("P", bound=Placed)


def _base(item: Placed) -> tuple[int, int]:
    return (item.at_ms, 0) if item.at_ms is not None else parse_id(item.entry_id)


def in_order(items: Iterable[P]) -> list[P]:
    """``items`` in the module's order. A line without a time takes the earliest place among
    its own and those of the later SequenceIds of its transcription (finals only, for a final:
    lifecycle events never move a final)."""
    places: dict[int, tuple[int, int]] = {}
    by_transcription: dict[str, list[P]] = defaultdict(list)
    for item in items:
        by_transcription[item.transcription_sid].append(item)
    for group in by_transcription.values():
        later_final = later_any = _NEVER
        group.sort(key=lambda i: i.sequence_id, reverse=True)
        for _seq, same in groupby(group, key=lambda i: i.sequence_id):
            batch = list(same)
            for item in batch:
                if item.at_ms is not None:
                    places[id(item)] = _base(item)
                else:
                    later = later_final if item.is_final else later_any
                    places[id(item)] = min(_base(item), later)
            for item in batch:
                later_any = min(later_any, _base(item))
                if item.is_final:
                    later_final = min(later_final, _base(item))
    everything = [i for group in by_transcription.values() for i in group]
    return sorted(
        everything,
        key=lambda i: (places[id(i)], i.sequence_id, parse_id(i.entry_id), i.transcription_sid),
    )


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def entry_time_score(fields: Mapping[str, str]) -> int | None:
    """The time a final stream entry is ordered by (``contract.time_score``), None for any other
    entry and for a final ordered by its SequenceId."""
    if fields.get("event") != "content" or fields.get("final") != "true":
        return None
    try:
        return time_score(
            fields.get("spoken_start"), fields.get("provider_data"), fields.get("timestamp")
        )
    except ValueError:  # not written by the receiver, which checks both
        return None


def _member_time_score(data: Mapping[str, object], score: float) -> int | None:
    # The member does not say how it was scored; its score does: a time unless it is the
    # final's SequenceId.
    if data.get("spoken_start") or score != data.get("sequence_id"):
        return int(score)
    return None


def load(client: redis.Redis, keys: Keys, call_sid: str) -> list[Utterance]:
    """The call's finals, ordered (the module's order)."""
    members = client.zrange(keys.finals(call_sid), 0, -1, withscores=True)
    utterances = []
    for member, score in members:
        data = json.loads(member)
        utterances.append(
            Utterance(
                transcription_sid=str(data.get("transcription_sid", "")),
                sequence_id=int(data.get("sequence_id") or 0),
                track=str(data.get("track") or ""),
                track_label=str(data.get("track_label") or data.get("track") or ""),
                transcript=str(data.get("transcript", "")),
                confidence=str(data.get("confidence") or ""),
                entry_id=str(data.get("entry_id", "0-0")),
                spoken_start=data.get("spoken_start"),
                spoken_end=data.get("spoken_end"),
                at_ms=_member_time_score(data, score),
            )
        )
    return in_order(utterances)


def as_text(call_sid: str, utterances: list[Utterance]) -> str:
    lines = [f"Call {call_sid}"]
    lines += [f"[{u.time}] {u.track_label}: {u.transcript}" for u in utterances]
    return "\n".join(lines) + "\n"


def as_json(call_sid: str, utterances: list[Utterance]) -> str:
    body = {
        "call_sid": call_sid,
        "utterances": [{**u.fields(), "time": u.time} for u in utterances],
    }
    return json.dumps(body, ensure_ascii=False, indent=2) + "\n"


def _vtt_time(ms: int) -> str:
    ms = max(0, ms)
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _vtt_text(text: str) -> str:
    """Cue text is markup in WebVTT: escape it, and keep it on one line (a blank line ends a
    cue)."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(escaped.split())


def as_vtt(call_start_ms: int, utterances: list[Utterance]) -> str:
    blocks = ["WEBVTT"]
    previous_end = 0
    for number, u in enumerate(utterances, 1):
        end = max(u.ms - call_start_ms, 1)
        estimate = max(1000, int(len(u.transcript.split()) * SECONDS_PER_WORD * 1000))
        start = max(previous_end, end - estimate, 0)
        if start >= end:
            start = max(0, end - 1)
        previous_end = end
        voice = _vtt_text(u.track_label) or "speaker"
        timing = f"{_vtt_time(start)} --> {_vtt_time(end)}"
        blocks.append(f"{number}\n{timing}\n<v {voice}>{_vtt_text(u.transcript)}")
    return "\n\n".join(blocks) + "\n"
