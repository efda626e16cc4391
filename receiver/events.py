"""The normalized transcription event, and how a verified callback's parameters become one.

Parsing is pure: it sees only the parameters Twilio signed, never Flask or Redis. Every
parameter without a field of its own is kept in ``extra``, so a parameter Twilio adds later is
stored rather than lost; an unknown ``TranscriptionEvent`` is kept under its own name.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from receiver.protocol import (
    COMMON_PARAMS,
    CONTENT_PARAMS,
    EVENTS,
    PROVIDER_CONNECT_TIME,
    PROVIDER_DATA_PARAM,
    PROVIDER_DATA_RESULT,
    PROVIDER_DURATION,
    PROVIDER_START,
    SID_PATTERNS,
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
# Below 10^14: sorted-set scores are doubles, and Lua's cjson writes 14 significant digits.
MAX_SEQUENCE_ID = 10**14 - 1


class InvalidEvent(ValueError):
    """A signed callback that cannot be normalized; ``field`` names Twilio's parameter."""

    def __init__(self, field: str, value: str | None, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        shown = "missing" if value is None else repr(value[:80])
        super().__init__(f"{field} ({shown}): {reason}")


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
    if len(values) > 1 and len(set(values)) > 1:
        raise InvalidEvent(name, values[0], "sent more than once with different values")
    value = values[0]
    if len(value) > MAX_VALUE_LENGTH:
        raise InvalidEvent(name, value, f"longer than {MAX_VALUE_LENGTH} characters")
    return value


def _sid(params: Mapping[str, Sequence[str]], name: str) -> str:
    value = _one(params, name)
    if value is None or value == "":
        raise InvalidEvent(name, None, "required on every transcription callback")
    if not SID_PATTERNS[name].match(value):
        prefix = SID_PATTERNS[name].pattern[2:4]
        raise InvalidEvent(name, value, f"must be {prefix} followed by 32 hex digits")
    return value


def _sequence_id(params: Mapping[str, Sequence[str]]) -> int | None:
    raw = _one(params, "SequenceId")
    if raw is None or raw == "":
        return None
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
    lowered = raw.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise InvalidEvent(name, raw, "must be 'true' or 'false'")


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
    confidence = _number("TranscriptionData.confidence", data.get("confidence"))
    rest = {k: v for k, v in data.items() if k not in ("transcript", "confidence")}
    return transcript, confidence, rest


# ISO 8601 with any number of fractional digits (Twilio sends 3, 6 or 9); datetime keeps 6.
_ISO_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:[.,](\d+))?(Z|[+-]\d\d:?\d\d)$")


def _instant(raw: object) -> datetime | None:
    if not isinstance(raw, str) or not (match := _ISO_TIME.match(raw.strip())):
        return None
    whole, fraction, zone = match.groups()
    try:
        at = datetime.fromisoformat(
            f"{whole}.{(fraction or '0')[:6]:0<6}{zone.replace('Z', '+00:00')}"
        )
    except ValueError:
        return None
    return at.astimezone(UTC)


def _seconds(raw: object) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    return float(raw) if math.isfinite(raw) and raw >= 0 else None


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _provider_data(values: Sequence[str]) -> str | None:
    """TranscriptionProviderData verbatim, whatever its size; sent several times with different
    values (never seen), all of them as a JSON list: kept, never a reason for a 400."""
    if not values:
        return None
    if len(set(values)) > 1:
        return json.dumps(list(values), ensure_ascii=False)
    return values[0] or None  # sent empty: absent, as every field


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


def _dedup_key(transcription_sid: str, sequence_id: int | None, params: Mapping) -> str:
    """The event's identity: (TranscriptionSid, SequenceId), or a digest of all its parameters
    when Twilio sent no SequenceId, so that an exact repeat is still recognized."""
    if sequence_id is not None:
        return f"{transcription_sid}:{sequence_id}"
    canonical = json.dumps(sorted((k, sorted(v)) for k, v in params.items()))
    return f"{transcription_sid}:h:{hashlib.sha256(canonical.encode()).hexdigest()[:32]}"


def _track(raw: str | None) -> tuple[str | None, str | None, bool]:
    """(track, label, label_is_explicit) from Twilio's ``Track``, which may carry a label."""
    if raw is None or raw == "":
        return None, None, False
    if raw in TRACK_NAMES:
        return TRACK_NAMES[raw], None, False
    return None, raw, True


def parse(
    params: Mapping[str, Sequence[str]],
    *,
    received_at: str,
    url_labels: TrackLabels = TrackLabels(),
) -> Event:
    """Normalize the parameters of one signed callback (name -> list of values)."""
    raw_event = _one(params, "TranscriptionEvent")
    if not raw_event:
        raise InvalidEvent("TranscriptionEvent", None, "required on every transcription callback")
    event = EVENTS.get(raw_event, raw_event)
    account_sid = _sid(params, "AccountSid")
    call_sid = _sid(params, "CallSid")
    transcription_sid = _sid(params, "TranscriptionSid")
    sequence_id = _sequence_id(params)
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
            language_code=_one(params, "LanguageCode"),
        )
        provider_data = _provider_data(params.get(PROVIDER_DATA_PARAM) or ())
        spoken_start, spoken_end = spoken_time(provider_data)
        fields.update(provider_data=provider_data, spoken_start=spoken_start, spoken_end=spoken_end)
    elif event == "started":
        consumed.update(STARTED_FIELDS)
        fields["settings"] = {
            ours: value
            for theirs, ours in STARTED_FIELDS.items()
            if (value := _one(params, theirs)) is not None
        }
    elif event == "error":
        consumed.update(ERROR_FIELDS)
        fields["error_code"] = _one(params, "TranscriptionErrorCode")
        fields["error_message"] = _one(params, "TranscriptionError")

    for name, values in params.items():
        if name not in consumed:
            extra[name] = values[0] if len(values) == 1 else list(values)

    return Event(
        event=event,
        account_sid=account_sid,
        call_sid=call_sid,
        transcription_sid=transcription_sid,
        sequence_id=sequence_id,
        timestamp=_one(params, "Timestamp") or None,
        received_at=received_at,
        extra=extra,
        url_labels=url_labels,
        dedup_key=_dedup_key(transcription_sid, sequence_id, params),
        **fields,  # type: ignore[arg-type]
    )
