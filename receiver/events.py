"""The normalized transcription event, and how a verified callback's parameters become one.

Parsing is pure: it sees only the parameters Twilio signed, never Flask or Redis. Every
parameter without a field of its own is kept in ``extra``, so a parameter Twilio adds later is
stored rather than lost; an unknown ``TranscriptionEvent`` is kept under its own name.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from receiver.protocol import (
    BOOLEANS,
    COMMON_PARAMS,
    CONTENT_PARAMS,
    ERROR_PARAMS,
    EVENTS,
    LANGUAGE_CODE,
    PROVIDER_CONNECT_TIME,
    PROVIDER_DATA_PARAM,
    PROVIDER_DATA_RESULT,
    PROVIDER_DURATION,
    PROVIDER_START,
    SID_PATTERNS,
    STARTED_PARAMS,
    TRACK_SETTINGS,
    parse_timestamp,
)

# Short names of the tracks, from Twilio's Track values (the short ones are accepted too).
TRACK_NAMES = {
    "inbound_track": "inbound",
    "outbound_track": "outbound",
    "inbound": "inbound",
    "outbound": "outbound",
}
# Our field names for Twilio's parameters that get a field of their own.
STARTED_FIELDS = {
    "Name": "name",
    "Track": "track_setting",
    "LanguageCode": "language_code",
    "TranscriptionEngine": "transcription_engine",
    "SpeechModel": "speech_model",
    "PartialResults": "partial_results",
    "InboundTrackLabel": "inbound_track_label",
    "OutboundTrackLabel": "outbound_track_label",
    "ProviderConfiguration": "provider_configuration",
}
ERROR_FIELDS = {"TranscriptionErrorCode": "error_code", "TranscriptionError": "error_message"}

MAX_VALUE_LENGTH = 64 * 1024
# A track label is a short name ("customer", "agent"); longer text, or text with control
# characters, is a value that swallowed the parameters after it.
MAX_LABEL_LENGTH = 64
LABEL = re.compile(rf"^[^\x00-\x1f\x7f-\x9f]{{1,{MAX_LABEL_LENGTH}}}\Z")
# SequenceId is a bit offset in its transcription's seen bitmap, which SETBIT allocates up to
# the highest offset (docs/storage.md): below 2^24, a bitmap is 2 MB at most. Twilio ends a
# call after 24 hours at most; 2^24 SequenceIds are a callback every 5.2 ms for all of them.
# (Far below 10^14, where finals' scores, doubles, and Lua's cjson would lose digits.)
MAX_SEQUENCE_ID = 2**24 - 1


# How far ahead of this host's clock a Timestamp may be: clocks drift, but not by minutes.
MAX_CLOCK_AHEAD = timedelta(minutes=5)


# The one value checked inside TranscriptionData, named as a field of its own.
CONFIDENCE_FIELD = "TranscriptionData.confidence"
# The parameters a dead letter can be counted under: Twilio's documented ones, and that value.
CHECKED_FIELDS = frozenset(
    (*COMMON_PARAMS, *STARTED_PARAMS, *CONTENT_PARAMS, *ERROR_PARAMS, CONFIDENCE_FIELD)
)
# Every ``InvalidEvent.label``: a fixed set, so a name the sender chose never becomes a metric
# label (one series per request would exhaust Prometheus) nor text in the log.
REASONS = CHECKED_FIELDS | {"repeated", "other", "timestamp_too_old", "timestamp_future"}


class InvalidEvent(ValueError):
    """A signed callback that cannot be normalized; ``field`` names Twilio's parameter."""

    def __init__(self, field: str, value: str | None, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        shown = "missing" if value is None else repr(value[:80])
        super().__init__(f"{field} ({shown}): {reason}")

    @property
    def label(self) -> str:
        """Why, as /metrics counts it and the log line says it: one of ``REASONS``."""
        return self.field if self.field in CHECKED_FIELDS else "other"


class RepeatedParameter(InvalidEvent):
    """A parameter name sent more than once; the name is the sender's, any text at all."""

    @property
    def label(self) -> str:
        return "repeated"


class StaleEvent(InvalidEvent):
    """A well-formed event whose ``Timestamp`` is out of the accepted window: a replay, or a
    clock that is wrong. ``kind`` is ``too_old`` or ``future``, as /metrics counts them."""

    def __init__(self, value: str, reason: str, kind: str) -> None:
        super().__init__("Timestamp", value, reason)
        self.kind = kind

    @property
    def label(self) -> str:
        return f"timestamp_{self.kind}"


@dataclass(frozen=True)
class TrackLabels:
    """Friendly names of the two tracks, as given on the callback URL's query string."""

    inbound: str | None = None
    outbound: str | None = None


@dataclass(frozen=True)
class Event:
    event: str
    account_sid: str
    call_sid: str
    transcription_sid: str
    sequence_id: int | None
    timestamp: str | None
    received_at: str
    # content
    track: str | None = None
    track_label: str | None = None
    label_is_explicit: bool = False
    final: bool | None = None
    transcript: str | None = None
    confidence: str | None = None
    stability: str | None = None
    language_code: str | None = None
    # started: the settings Twilio reports, by our field names
    settings: Mapping[str, str] = field(default_factory=dict)
    # error
    error_code: str | None = None
    error_message: str | None = None
    # every parameter without a field of its own
    extra: Mapping[str, str | list[str]] = field(default_factory=dict)
    url_labels: TrackLabels = TrackLabels()
    dedup_key: str = ""
    # content, with EnableProviderData: TranscriptionProviderData verbatim, and when it carries
    # timing, when the words were spoken (ISO 8601 UTC, ms, Z)
    provider_data: str | None = None
    spoken_start: str | None = None
    spoken_end: str | None = None


def now_iso() -> str:
    """Current UTC time, ISO 8601 with milliseconds, as ``received_at`` is written."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    value = values[0]
    if len(value) > MAX_VALUE_LENGTH:
        raise InvalidEvent(name, value, f"longer than {MAX_VALUE_LENGTH} characters")
    return value


def _sid(params: Mapping[str, Sequence[str]], name: str) -> str:
    value = _one(params, name)
    if value is None or value == "":
        raise InvalidEvent(name, None, "required on every transcription callback")
    if not SID_PATTERNS[name].match(value):
        prefix = SID_PATTERNS[name].pattern[1:3]
        raise InvalidEvent(name, value, f"must be {prefix} followed by 32 hex digits")
    return value


def _sequence_id(params: Mapping[str, Sequence[str]]) -> int:
    raw = _one(params, "SequenceId")
    if raw is None or raw == "":
        # The event's identity: without it, a folded copy of a signed callback (see
        # receiver/protocol.py) would be a new event.
        raise InvalidEvent("SequenceId", None, "required on every transcription callback")
    if not raw.isascii() or not raw.isdigit():
        raise InvalidEvent("SequenceId", raw, "must be a non-negative integer")
    if len(raw) > 16 or int(raw) > MAX_SEQUENCE_ID:
        raise InvalidEvent("SequenceId", raw, f"must be at most {MAX_SEQUENCE_ID}")
    return int(raw)


def _number(name: str, raw: object) -> str | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise InvalidEvent(name, str(raw), "must be a number")
    try:
        value = float(raw)
    except (ValueError, OverflowError):  # OverflowError: an integer with hundreds of digits
        raise InvalidEvent(name, str(raw)[:80], "must be a number") from None
    if not math.isfinite(value):
        raise InvalidEvent(name, str(raw), "must be a finite number")
    return str(raw) if isinstance(raw, str) else repr(raw)


def _boolean(name: str, raw: str | None, default: bool) -> bool:
    if raw is None or raw == "":
        return default
    if raw not in BOOLEANS:
        raise InvalidEvent(name, raw, "must be 'true' or 'false'")
    return raw == BOOLEANS[0]


def _language_code(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    if not LANGUAGE_CODE.fullmatch(raw):
        raise InvalidEvent("LanguageCode", raw, "must be a BCP-47 language tag such as en-US")
    return raw


def _timestamp(raw: str | None) -> str:
    if raw is None or raw == "":
        raise InvalidEvent("Timestamp", None, "required on every transcription callback")
    try:
        parse_timestamp(raw)
    except ValueError:
        raise InvalidEvent("Timestamp", raw, "must be an ISO 8601 time") from None
    return raw


def _label(name: str, raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    if not LABEL.match(raw):
        raise InvalidEvent(
            name, raw, f"a track label has 1 to {MAX_LABEL_LENGTH} characters, no control ones"
        )
    return raw


def _transcription_data(raw: str | None) -> tuple[str, str | None, dict[str, object]]:
    if raw is None:
        raise InvalidEvent("TranscriptionData", None, "required on transcription-content")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python allows
        raise InvalidEvent("TranscriptionData", raw, "is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidEvent("TranscriptionData", raw, "must be a JSON object")
    try:
        # JSON may escape half of a surrogate pair ("\ud800"): text no UTF-8 store can hold.
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise InvalidEvent("TranscriptionData", raw, "holds an unpaired surrogate") from None
    transcript = data.get("transcript", "")
    if not isinstance(transcript, str):
        raise InvalidEvent("TranscriptionData", raw, "'transcript' must be a string")
    confidence = _number(CONFIDENCE_FIELD, data.get("confidence"))
    rest = {k: v for k, v in data.items() if k not in ("transcript", "confidence")}
    return transcript, confidence, rest


def _instant(raw: object) -> datetime | None:
    if not isinstance(raw, str):
        return None
    try:
        return parse_timestamp(raw.strip())
    except ValueError:
        return None


def _seconds(raw: object) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    return float(raw) if math.isfinite(raw) and raw >= 0 else None


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _provider_data(params: Mapping[str, Sequence[str]]) -> str | None:
    """TranscriptionProviderData verbatim, whatever its size: the per-word results of a long
    utterance exceed MAX_VALUE_LENGTH, and provider data is never a reason for a 400."""
    values = params.get(PROVIDER_DATA_PARAM)
    return (values[0] or None) if values else None  # sent empty: absent, as every field


def spoken_time(provider_data: str | None) -> tuple[str | None, str | None]:
    """(spoken_start, spoken_end) from TranscriptionProviderData: ProviderConnectTime plus the
    provider's ``start`` (and ``+ duration``). Anything that does not parse gives (None, None):
    provider data is a bonus, never a reason to refuse an event (Twilio's own documented
    example of it is not valid JSON)."""
    if not provider_data:
        return None, None
    try:
        data = json.loads(provider_data)
    except (ValueError, RecursionError):
        return None, None
    result = data.get(PROVIDER_DATA_RESULT) if isinstance(data, dict) else None
    connected = _instant(data.get(PROVIDER_CONNECT_TIME)) if isinstance(data, dict) else None
    if not isinstance(result, dict) or connected is None:
        return None, None
    start, duration = _seconds(result.get(PROVIDER_START)), _seconds(result.get(PROVIDER_DURATION))
    if start is None:
        return None, None
    try:
        begin = connected + timedelta(seconds=start)
        end = None if duration is None else _iso(begin + timedelta(seconds=duration))
        return _iso(begin), end
    except OverflowError:  # a start of 1e300 seconds
        return None, None


def _dedup_key(transcription_sid: str, sequence_id: int) -> str:
    """The event's identity, Twilio's own: (TranscriptionSid, SequenceId)."""
    return f"{transcription_sid}:{sequence_id}"


def _track(raw: str | None) -> tuple[str | None, str | None, bool]:
    """(track, label, label_is_explicit) from Twilio's ``Track``, which may carry a label."""
    if raw is None or raw == "":
        return None, None, False
    if raw in TRACK_NAMES:
        return TRACK_NAMES[raw], None, False
    return None, _label("Track", raw), True


def _track_setting(raw: str | None) -> str | None:
    """``Track`` on ``transcription-started``: one of Twilio's settings, or a label."""
    if raw is None or raw == "" or raw in TRACK_SETTINGS:
        return raw or None
    return _label("Track", raw)


def _refuse_repeats(params: Mapping[str, Sequence[str]]) -> None:
    """Twilio sends each parameter once, and its signature collapses repeated values: a name
    sent twice is a signed callback with copies appended, never Twilio's."""
    for name, values in params.items():
        if len(values) > 1:
            raise RepeatedParameter(
                name, values[0], f"sent {len(values)} times; Twilio sends it once"
            )


def parse(
    params: Mapping[str, Sequence[str]],
    *,
    received_at: str,
    url_labels: TrackLabels = TrackLabels(),
) -> Event:
    """Normalize the parameters of one signed callback (name -> list of values)."""
    _refuse_repeats(params)
    raw_event = _one(params, "TranscriptionEvent")
    if not raw_event:
        raise InvalidEvent("TranscriptionEvent", None, "required on every transcription callback")
    event = EVENTS.get(raw_event, raw_event)
    account_sid = _sid(params, "AccountSid")
    call_sid = _sid(params, "CallSid")
    transcription_sid = _sid(params, "TranscriptionSid")
    sequence_id = _sequence_id(params)
    timestamp = _timestamp(_one(params, "Timestamp"))
    consumed: set[str] = set(COMMON_PARAMS)
    fields: dict[str, object] = {}
    extra: dict[str, str | list[str]] = {}

    if event == "content":
        consumed.update(CONTENT_PARAMS)
        transcript, confidence, rest = _transcription_data(_one(params, "TranscriptionData"))
        if rest:
            extra["TranscriptionData"] = json.dumps(rest, ensure_ascii=False)
        track, label, explicit = _track(_one(params, "Track"))
        fields.update(
            track=track,
            track_label=label,
            label_is_explicit=explicit,
            final=_boolean("Final", _one(params, "Final"), default=True),
            transcript=transcript,
            confidence=confidence,
            stability=_number("Stability", _one(params, "Stability")),
            language_code=_language_code(_one(params, "LanguageCode")),
        )
        provider_data = _provider_data(params)
        spoken_start, spoken_end = spoken_time(provider_data)
        fields.update(provider_data=provider_data, spoken_start=spoken_start, spoken_end=spoken_end)
    elif event == "started":
        consumed.update(STARTED_FIELDS)
        raw = {theirs: _one(params, theirs) for theirs in STARTED_FIELDS}
        raw["Track"] = _track_setting(raw["Track"])
        raw["LanguageCode"] = _language_code(raw["LanguageCode"])
        _boolean("PartialResults", raw["PartialResults"], default=False)  # its form only
        for name in ("InboundTrackLabel", "OutboundTrackLabel"):
            raw[name] = _label(name, raw[name])
        fields["settings"] = {
            STARTED_FIELDS[theirs]: value for theirs, value in raw.items() if value is not None
        }
    elif event == "error":
        consumed.update(ERROR_FIELDS)
        code = _one(params, "TranscriptionErrorCode")
        if code and not (code.isascii() and code.isdigit() and len(code) <= 10):
            raise InvalidEvent("TranscriptionErrorCode", code, "must be a Twilio error code")
        fields["error_code"] = code
        fields["error_message"] = _one(params, "TranscriptionError")

    for name, values in params.items():
        if name not in consumed:
            extra[name] = values[0]

    return Event(
        event=event,
        account_sid=account_sid,
        call_sid=call_sid,
        transcription_sid=transcription_sid,
        sequence_id=sequence_id,
        timestamp=timestamp,
        received_at=received_at,
        extra=extra,
        url_labels=url_labels,
        dedup_key=_dedup_key(transcription_sid, sequence_id),
        **fields,  # type: ignore[arg-type]
    )


def check_age(params: Mapping[str, Sequence[str]], now: datetime, max_age_seconds: int) -> None:
    """Refuse a callback whose ``Timestamp`` is older than ``max_age_seconds`` or more than 5
    minutes in the future.

    Exactly-once holds only while an event's identity is remembered (CALL_RETENTION_SECONDS):
    a captured callback replayed later would be stored again, so the door refuses it first.
    Checked before ``parse``, whenever the Timestamp can be read: a variant of a stale capture
    (a value folded, a parameter repeated) is refused as the replay it is, not counted as a
    malformed callback. A Timestamp that cannot be read is left to ``parse`` to refuse. Only
    callbacks arriving at the door are checked, never the spool's own replays."""
    values = set(params.get("Timestamp", ()))
    if len(values) != 1:
        return
    timestamp = values.pop()
    try:
        age = now - parse_timestamp(timestamp)
    except ValueError:
        return
    if age > timedelta(seconds=max_age_seconds):
        raise StaleEvent(
            timestamp,
            f"older than MAX_EVENT_AGE_SECONDS={max_age_seconds} ({int(age.total_seconds())} s):"
            " refused as a replay (if a clock is wrong, fix it)",
            "too_old",
        )
    if -age > MAX_CLOCK_AHEAD:
        raise StaleEvent(
            timestamp,
            f"{int(-age.total_seconds())} s ahead of this receiver's clock (at most "
            f"{int(MAX_CLOCK_AHEAD.total_seconds())} s): a clock is wrong",
            "future",
        )
