"""How much Redis memory one call-hour costs, measured with ``MEMORY USAGE`` on a real server.

A synthetic call goes through the real ``Store`` (the same script as production), built with
``receiver.protocol``'s builders and ``events.parse``: two parties taking turns at 150 words a
minute, a final every 12 words, 1.5 partial results per word (the bench's rate: 18 partials per
final, 750 finals and 13,500 partials in an hour; ``--partials-per-word 0.67`` gives the 6,000
partials of a slower engine). The hour is played in seconds, so time-based retention cannot act
on its own: the figures below say how each moment is reproduced.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import redis

from receiver.devtools.conversation import FINAL_STABILITY
from receiver.events import parse
from receiver.protocol import callback_params, content_params, timestamp, track_param
from receiver.storage.contract import Keys
from receiver.storage.store import Store

GOAL_BYTES = 1024 * 1024
ACCOUNT_SID = "AC" + "0" * 32
# Everyday words, for transcripts of a realistic length (about 4.5 letters a word).
WORDS = [
    "the",
    "a",
    "to",
    "and",
    "of",
    "I",
    "you",
    "it",
    "is",
    "that",
    "in",
    "we",
    "for",
    "this",
    "on",
    "have",
    "be",
    "with",
    "my",
    "your",
    "can",
    "will",
    "what",
    "so",
    "not",
    "do",
    "at",
    "about",
    "booking",
    "flight",
    "change",
    "date",
    "please",
    "thank",
    "okay",
    "sure",
    "yes",
    "no",
    "right",
    "time",
    "number",
    "account",
    "card",
    "help",
    "need",
    "would",
    "like",
    "could",
    "just",
    "let",
    "me",
    "check",
    "see",
    "one",
    "two",
    "three",
    "four",
    "five",
    "morning",
    "afternoon",
    "Lisbon",
    "Tuesday",
    "Friday",
    "confirm",
    "reference",
    "order",
    "ticket",
    "price",
    "fine",
]


@dataclass(frozen=True)
class Workload:
    minutes: int = 60
    words_per_minute: int = 150
    words_per_final: int = 12
    partials_per_word: float = 1.5

    @property
    def finals(self) -> int:
        return self.minutes * self.words_per_minute // self.words_per_final

    @property
    def partials_per_final(self) -> int:
        return max(1, round(self.words_per_final * self.partials_per_word))


@dataclass(frozen=True)
class Figures:
    """Bytes per call (``MEMORY USAGE … SAMPLES 0`` summed over the call's keys)."""

    minutes: int
    finals: int
    partials: int
    partials_retention_seconds: int
    # At the end of the call (not per hour: the partials window does not grow with the call):
    # every key, the partials stream holding PARTIALS_RETENTION_SECONDS' worth.
    peak_live_call: int
    # After the call and its partial retention: inside the freshness window (the seen bitmap
    # kept) ...
    retained_with_seen: int
    # ... and after it (the seen bitmap has expired).
    retained_without_seen: int
    seen: int
    # For comparison: every partial kept as long as the call.
    all_partials_kept: int
    # The live feed rtt:events, per event (it is capped by EVENTS_MAXLEN, not per call).
    events_stream_bytes_per_event: float

    def per_hour(self, value: int) -> int:
        return round(value * 60 / self.minutes)

    @property
    def goal_met(self) -> bool:
        """For the whole retention, once the freshness window has passed."""
        return self.per_hour(self.retained_without_seen) <= GOAL_BYTES

    @property
    def goal_met_in_window(self) -> bool:
        """Also during the freshness window (MAX_EVENT_AGE_SECONDS + 300 after the call)."""
        return self.per_hour(self.retained_with_seen) <= GOAL_BYTES

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = asdict(self)
        data["per_call_hour"] = {
            name: self.per_hour(getattr(self, name))
            for name in (
                "retained_with_seen",
                "retained_without_seen",
                "seen",
                "all_partials_kept",
            )
        }
        data["goal_bytes_per_call_hour"] = GOAL_BYTES
        data["goal_met"] = self.goal_met
        data["goal_met_in_window"] = self.goal_met_in_window
        return data


def _callbacks(call_sid: str, workload: Workload, seed: int) -> Iterator[dict[str, str]]:
    """One call's callbacks in order: started, the utterances (partials, then the final)."""
    rng = random.Random(seed)
    transcription_sid = "GT" + uuid.UUID(int=rng.getrandbits(128)).hex
    at = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    seq = 1

    def params(event: str, **extra: str | None) -> dict[str, str]:
        return callback_params(
            event,
            account_sid=ACCOUNT_SID,
            call_sid=call_sid,
            transcription_sid=transcription_sid,
            sequence_id=seq,
            timestamp=timestamp(at, 9),
            **extra,
        )

    yield params(
        "started",
        Name="memory",
        Track="both_tracks",
        LanguageCode="en-US",
        TranscriptionEngine="google",
        PartialResults="true",
        InboundTrackLabel="customer",
        OutboundTrackLabel="agent",
    )
    utterance_seconds = workload.words_per_final * 60 / workload.words_per_minute
    for n in range(workload.finals):
        track = track_param(("inbound", "outbound")[n % 2])
        words = [rng.choice(WORDS) for _ in range(workload.words_per_final)]
        count = workload.partials_per_final
        for k in range(1, count + 1):
            seq += 1
            at += timedelta(seconds=utterance_seconds / (count + 1))
            size = max(1, round(k * workload.words_per_final / count))
            text = " ".join(words[:size])
            yield params(
                "content",
                **content_params(track, text, final=False, stability=rng.uniform(0.6, 0.95)),
            )
        seq += 1
        at += timedelta(seconds=utterance_seconds / (count + 1))
        # PartialResults=true: the final carries Stability, not confidence, as partials do.
        yield params(
            "content",
            **content_params(track, " ".join(words) + ".", final=True, stability=FINAL_STABILITY),
        )
    seq += 1
    yield params("stopped")


def _memory(client: redis.Redis, keys: list[str]) -> int:
    return sum(client.memory_usage(key, samples=0) or 0 for key in keys)


def measure(
    client: redis.Redis,
    *,
    workload: Workload = Workload(),
    partials_retention_seconds: int = 300,
    seed: int = 1,
) -> Figures:
    """Store one synthetic call through the real Store under a prefix of its own, measure
    each moment, and delete what it wrote."""
    keys = Keys(f"rtt-memory-{uuid.uuid4().hex[:12]}")
    store = Store(
        client,
        keys,
        retention_seconds=7 * 24 * 3600,
        events_maxlen=10_000_000,
        rejected_maxlen=1000,
        partials_retention_seconds=partials_retention_seconds,
    )
    call_sid = "CA" + uuid.UUID(int=random.Random(seed).getrandbits(128)).hex
    received_at = "2026-11-28T09:00:00.000Z"
    callbacks = list(_callbacks(call_sid, workload, seed))
    stop = callbacks.pop()
    seen_key = keys.seen(call_sid, callbacks[0]["TranscriptionSid"])
    partial_count = 0
    try:
        for params in callbacks:
            store.append(parse({k: [v] for k, v in params.items()}, received_at=received_at))
            partial_count += params.get("Final") == "false"
        call_keys = [
            keys.call(call_sid),
            keys.partials(call_sid),
            keys.finals(call_sid),
            seen_key,
            keys.labels(call_sid),
            keys.transcriptions(call_sid),
        ]
        all_kept = _memory(client, call_keys)
        events_per_entry = _memory(client, [keys.events]) / max(client.xlen(keys.events), 1)
        # A live call holds the partials of the last PARTIALS_RETENTION_SECONDS only; the hour
        # was played in seconds, so keep exactly that many of the newest.
        window = round(partial_count * partials_retention_seconds / (workload.minutes * 60))
        client.xtrim(keys.partials(call_sid), maxlen=window, approximate=False)
        peak = _memory(client, call_keys)
        store.append(parse({k: [v] for k, v in stop.items()}, received_at=received_at))
        # The partials' retention passes: the key expires (now, instead of in 300 s).
        client.pexpire(keys.partials(call_sid), 1)
        deadline = time.monotonic() + 10
        while client.exists(keys.partials(call_sid)) and time.monotonic() < deadline:
            time.sleep(0.01)
        retained = _memory(client, call_keys)
        seen = _memory(client, [seen_key])
    finally:
        for key in client.scan_iter(match=f"{keys.prefix}:*"):
            client.unlink(key)
        for key in (keys.active_calls, keys.recent_calls, keys.events):
            client.unlink(key)
    return Figures(
        minutes=workload.minutes,
        finals=workload.finals,
        partials=partial_count,
        partials_retention_seconds=partials_retention_seconds,
        peak_live_call=peak,
        retained_with_seen=retained,
        retained_without_seen=retained - seen,
        seen=seen,
        all_partials_kept=all_kept,
        events_stream_bytes_per_event=round(events_per_entry, 1),
    )


def report(figures: Figures) -> list[str]:
    """The figures as lines for a person, per call-hour."""
    hour = figures.per_hour

    def mb(value: int) -> str:
        return f"{value / 1024 / 1024:7.3f} MB"

    def verdict(met: bool) -> str:
        return "met" if met else "NOT met"

    return [
        f"One call of {figures.minutes} min: {figures.finals} finals, {figures.partials} "
        f"partials (PARTIALS_RETENTION_SECONDS={figures.partials_retention_seconds}); "
        "per call-hour (the peak: for this call):",
        f"  peak of the live call, at its end        {mb(figures.peak_live_call)}",
        f"  retained, inside the freshness window    {mb(hour(figures.retained_with_seen))}",
        f"  retained, after it (no seen bitmap)      {mb(hour(figures.retained_without_seen))}",
        f"  of which the seen bitmap                 {mb(hour(figures.seen))}",
        f"  every partial kept as long as the call   {mb(hour(figures.all_partials_kept))}",
        f"  rtt:events, per event                    {figures.events_stream_bytes_per_event:.0f} B",
        "Goal, at most 1 MB retained per call-hour: "
        f"{verdict(figures.goal_met)} after the freshness window, "
        f"{verdict(figures.goal_met_in_window)} inside it.",
    ]
