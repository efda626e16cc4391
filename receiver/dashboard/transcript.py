"""A call's transcript, from its ordered finals, as text, JSON and WebVTT.

The finals sorted set holds the utterances in speaking order per transcription (scored by
SequenceId); when a call had several transcriptions, each one's utterances follow the previous
one's. Times are when the receiver stored each final (its call stream entry id), i.e. the end
of the utterance as Twilio reported it, so WebVTT cues end there and start at the previous
final or a length estimated from the words, whichever is later.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import redis

from receiver.dashboard.live import parse_id
from receiver.storage.contract import Keys

# WebVTT cue length estimate: 150 words a minute, at least a second.
SECONDS_PER_WORD = 0.4


@dataclass(frozen=True)
class Utterance:
    transcription_sid: str
    sequence_id: int
    track: str
    track_label: str
    transcript: str
    confidence: str
    entry_id: str

    @property
    def ms(self) -> int:
        return parse_id(self.entry_id)[0]

    @property
    def time(self) -> str:
        return iso(self.ms)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def load(client: redis.Redis, keys: Keys, call_sid: str) -> list[Utterance]:
    """The call's finals, ordered: transcriptions in the order they began, each by SequenceId."""
    members = client.zrange(keys.finals(call_sid), 0, -1)
    utterances = []
    for member in members:
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
            )
        )
    first_seen: dict[str, tuple[int, int]] = {}
    for u in utterances:
        key = parse_id(u.entry_id)
        first_seen[u.transcription_sid] = min(first_seen.get(u.transcription_sid, key), key)
    return sorted(utterances, key=lambda u: (first_seen[u.transcription_sid], u.sequence_id))


def as_text(call_sid: str, utterances: list[Utterance]) -> str:
    lines = [f"Call {call_sid}"]
    lines += [f"[{u.time}] {u.track_label}: {u.transcript}" for u in utterances]
    return "\n".join(lines) + "\n"


def as_json(call_sid: str, utterances: list[Utterance]) -> str:
    body = {
        "call_sid": call_sid,
        "utterances": [{**asdict(u), "time": u.time} for u in utterances],
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
