"""Twilio's Real-Time Transcription protocol, written once: parameter names, SID patterns, event
names, the retry rule, and the one builder of callback parameters.

The parser (``receiver/events.py``), the emulator, the bench and the tests all take Twilio's
names from here. Sources and how sure each fact is: ``shared/twilio-rtt-protocol.md`` and
``docs/emulator.md``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

# -- identifiers ------------------------------------------------------------------------------

SID_PATTERNS = {
    "AccountSid": re.compile(r"^AC[0-9a-fA-F]{32}\Z"),
    "CallSid": re.compile(r"^CA[0-9a-fA-F]{32}\Z"),
    "TranscriptionSid": re.compile(r"^GT[0-9a-fA-F]{32}\Z"),
}
# An API key's SID (Twilio's recommended REST credential in production); its secret is the
# password, the account SID names the account in the URL.
API_KEY_SID = re.compile(r"^SK[0-9a-fA-F]{32}\Z")

# -- the status callbacks ---------------------------------------------------------------------

EVENT_PREFIX = "transcription-"
# Twilio's TranscriptionEvent values and our short names for them.
EVENTS = {
    "transcription-started": "started",
    "transcription-content": "content",
    "transcription-stopped": "stopped",
    "transcription-error": "error",
}
# Every event carries these.
COMMON_PARAMS = (
    "AccountSid",
    "CallSid",
    "TranscriptionSid",
    "TranscriptionEvent",
    "Timestamp",
    "SequenceId",
)
STARTED_PARAMS = (
    "Name",
    "Track",
    "LanguageCode",
    "TranscriptionEngine",
    "SpeechModel",
    "PartialResults",
    "InboundTrackLabel",
    "OutboundTrackLabel",
    "ProviderConfiguration",
)
CONTENT_PARAMS = (
    "Track",
    "TranscriptionData",
    "Final",
    "Stability",
    "LanguageCode",
    "TranscriptionProviderData",
)
# TranscriptionProviderData (only with EnableProviderData) is a JSON string:
# {"ProviderData": {...the provider's raw result...}, "ProviderConnectTime": "<ISO 8601>",
#  "Provider": "deepgram"}; Deepgram's raw result has "start" and "duration", in seconds since
# ProviderConnectTime. Twilio's own documented example does not parse: never rely on it.
PROVIDER_DATA_PARAM = "TranscriptionProviderData"
PROVIDER_DATA_RESULT = "ProviderData"
PROVIDER_CONNECT_TIME = "ProviderConnectTime"
PROVIDER_NAME = "Provider"
PROVIDER_START = "start"
PROVIDER_DURATION = "duration"
ERROR_PARAMS = ("TranscriptionErrorCode", "TranscriptionError")

# TranscriptionErrorCode values Twilio documents for Real-Time Transcriptions (error dictionary,
# "Real-time Transcriptions: …"); 32653 has no page we could find, so its title is ours.
TRANSCRIPTION_ERRORS = {
    "32650": "Configuration Error",
    "32651": "Provider Error",
    "32652": "Unsupported <Config> attribute(s) in TwiML",
    "32653": "Transcription Error",
    "32654": "PCI Error",
    "32655": "Provider Unavailable",
}

# Engines and their speech models, as the <Transcription> docs' table lists them; the first of
# each is the engine's default (Google: telephony, Deepgram: nova-2).
SPEECH_MODELS = {
    "google": ("telephony", "telephony_short", "long", "short"),
    "deepgram": ("nova-2", "nova-3"),
}
DEFAULT_ENGINE = "google"

# Fractional digits of Timestamp in Twilio's own examples; the most recent ones have 9.
TIMESTAMP_DIGITS = (3, 6, 9)

# Track values: what a content event's Track names, and what a transcription is started with.
TRACKS = ("inbound_track", "outbound_track")
TRACK_SETTINGS = (*TRACKS, "both_tracks")


def track_param(track: str) -> str:
    """Twilio's Track value for our short track name (``inbound`` -> ``inbound_track``)."""
    return f"{track}_track"


def boolean(value: bool) -> str:
    """Twilio's booleans in callbacks: ``"true"`` / ``"false"``."""
    return "true" if value else "false"


def default_speech_model(engine: str) -> str:
    """Twilio's default SpeechModel for ``engine`` (``telephony`` for an engine we do not know)."""
    return SPEECH_MODELS.get(engine, SPEECH_MODELS[DEFAULT_ENGINE])[0]


def timestamp(at: datetime, digits: int = 6) -> str:
    """Twilio's ``Timestamp``: ISO 8601 UTC with ``digits`` fractional digits (3, 6 or 9 in
    Twilio's own examples) and ``Z``. ``at`` must be aware and in UTC."""
    fraction = f"{at.microsecond:06d}"
    fraction = fraction[:digits] if digits <= 6 else fraction + "0" * (digits - 6)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + fraction + "Z"


# The forms of the documented values. Twilio signs names and values concatenated without a
# separator, so a value that swallowed the next name ("en-USSequenceId7") verifies too: every
# documented parameter is held to its form, and a folded value cannot pass.
BOOLEANS = ("true", "false")
# BCP-47 as Twilio's languages use it (en-US, es-419, cmn-Hans-CN): a 2-3 letter language, an
# optional 4-letter script, an optional region (2 letters or 3 digits), then variants, written
# in lower case (RFC 5646 2.1.1), as a folded parameter name (capitalized) never is: a fold
# such as "en-US" + "Name" (an empty Name) does not pass. Or "multi": Deepgram's automatic
# language detection (Twilio's Transcription Configurations resource lists it for Deepgram).
LANGUAGE_CODE = re.compile(
    r"(?:[A-Za-z]{2,3}(?:-[A-Za-z]{4})?(?:-(?:[A-Za-z]{2}|[0-9]{3}))?"
    r"(?:-(?:[a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*|multi)"
)
# ISO 8601 in UTC or with an offset; Twilio sends 3, 6 or 9 fractional digits and Z.
TIMESTAMP = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})\Z"
)


def parse_timestamp(value: str) -> datetime:
    """Twilio's ``Timestamp`` as an aware datetime; ValueError when it is not ISO 8601.

    By hand rather than ``strptime``/``fromisoformat``: Twilio's 9 fractional digits are more
    than either reads on Python 3.11."""
    match = TIMESTAMP.match(value)
    if not match:
        raise ValueError(f"{value!r} is not an ISO 8601 time such as 2026-01-23T21:47:44.614Z")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    microsecond = int((fraction or "0")[:6].ljust(6, "0"))
    at = datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second), microsecond, UTC
    )
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        at -= sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    return at


def callback_params(
    event: str,
    *,
    account_sid: str,
    call_sid: str,
    transcription_sid: str,
    sequence_id: int | None,
    timestamp: str | None,
    **params: str | None,
) -> dict[str, str]:
    """The form parameters of one callback: the common ones, then ``params`` (Twilio's names;
    ``None`` values are left out, as Twilio leaves out what does not apply)."""
    common = {
        "AccountSid": account_sid,
        "CallSid": call_sid,
        "TranscriptionSid": transcription_sid,
        "TranscriptionEvent": EVENT_PREFIX + event,
        "Timestamp": timestamp,
        "SequenceId": None if sequence_id is None else str(sequence_id),
    }
    return {k: v for k, v in {**common, **params}.items() if v is not None}


def content_params(
    track: str,
    transcript: str,
    *,
    final: bool,
    confidence: float | None = None,
    stability: float | str | None = None,
    language_code: str = "en-US",
    provider_data: str | None = None,
) -> dict[str, str]:
    """The parameters of a ``transcription-content`` event beyond the common ones
    (``provider_data``: the ``TranscriptionProviderData`` string, sent verbatim)."""
    data: dict[str, object] = {"transcript": transcript}
    if confidence is not None:
        data["confidence"] = confidence
    params = {
        "Track": track,
        "TranscriptionData": json.dumps(data, ensure_ascii=False),
        "Final": boolean(final),
        "LanguageCode": language_code,
    }
    if stability is not None:
        params["Stability"] = stability if isinstance(stability, str) else f"{stability:.2f}"
    if provider_data is not None:
        params[PROVIDER_DATA_PARAM] = provider_data
    return params


def provider_data(
    connect_time: str, start: float, duration: float, provider: str = "deepgram", **raw: object
) -> str:
    """A ``TranscriptionProviderData`` value as Deepgram's results carry it: ``start`` and
    ``duration`` in seconds since ``connect_time``."""
    result = {PROVIDER_START: start, PROVIDER_DURATION: duration, **raw}
    return json.dumps(
        {
            PROVIDER_DATA_RESULT: result,
            PROVIDER_CONNECT_TIME: connect_time,
            PROVIDER_NAME: provider,
        }
    )


# -- retries (Twilio's error 17580) -----------------------------------------------------------

# Twilio retries every 5xx and these 4xx answers; other 4xx are final.
RETRIED_CLIENT_ERRORS = frozenset({408, 425, 429})


def is_retried(status: int) -> bool:
    """Whether Twilio sends a callback again after this answer."""
    return status >= 500 or status in RETRIED_CLIENT_ERRORS


# -- signatures -------------------------------------------------------------------------------

SIGNATURE_HEADER = "X-Twilio-Signature"
# An account's auth token, the key of the signature: 32 hex digits.
AUTH_TOKEN_LENGTH = 32
SIGNATURE_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
