"""Conversations (who says what, and when), and the callbacks Twilio would send while one is
transcribed.

Everything here is pure: a conversation and a transcription's settings go in, a timeline of
signed-ready callback parameters comes out. The emulator plays timelines over HTTP; tests and
other tools can reuse them without a server. Parameter names and value formats are Twilio's (see
``shared/twilio-rtt-protocol.md``); what Twilio does not document is marked where it is chosen.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from importlib.resources import files
from pathlib import Path

import yaml

from receiver.protocol import (
    DEFAULT_ENGINE,
    LANGUAGE_CODE,
    PROVIDER_DATA_PARAM,
    SPEECH_MODELS,
    TRANSCRIPTION_ERRORS,
    boolean,
    callback_params,
    content_params,
    default_speech_model,
    timestamp,
    track_param,
)

TRACKS = ("inbound", "outbound")
BUILTIN_CONVERSATION = "support-call"
# Stability Google reports on partial results grows as more audio confirms the words.
MIN_STABILITY, MAX_STABILITY = 0.4, 0.9
# With PartialResults, Twilio sends Stability instead of confidence on every content event and
# documents no value for a final: the emulator's choice, a final's text no longer changes.
FINAL_STABILITY = 1.0
# A failure mid-call: Twilio's documented code for a provider that went away.
DEFAULT_ERROR_CODE = "32655"
DEFAULT_ERROR_MESSAGE = TRANSCRIPTION_ERRORS[DEFAULT_ERROR_CODE]
CONFIGURATION_ERROR = "32650"
# Twilio's latest examples carry 9 fractional digits; parsers that stop at 6 must fail in tests.
DEFAULT_TIMESTAMP_DIGITS = 9


class ConversationError(ValueError):
    """A conversation that cannot be played; the message names the field and value."""


@dataclass(frozen=True)
class Utterance:
    track: str
    text: str
    at: float
    duration: float
    confidence: float = 0.9


@dataclass(frozen=True)
class Conversation:
    name: str
    utterances: tuple[Utterance, ...]
    language_code: str = "en-US"
    ends_at: float = 0.0

    @property
    def length(self) -> float:
        """Seconds from the start to ``transcription-stopped``."""
        last = max((u.at + u.duration for u in self.utterances), default=0.0)
        return max(self.ends_at, last + 0.5)


@dataclass(frozen=True)
class TranscriptionSettings:
    """The REST resource's parameters (Twilio's defaults), as a transcription started with."""

    status_callback_url: str
    name: str | None = None
    track: str = "both_tracks"
    status_callback_method: str = "POST"
    inbound_track_label: str | None = None
    outbound_track_label: str | None = None
    partial_results: bool = False
    language_code: str | None = None  # None: the conversation's language_code
    transcription_engine: str = DEFAULT_ENGINE
    speech_model: str | None = None  # None: the engine's default (telephony, nova-2)
    profanity_filter: bool = True
    hints: str | None = None
    enable_automatic_punctuation: bool = True
    intelligence_service: str | None = None
    enable_provider_data: bool = False

    def tracks(self) -> tuple[str, ...]:
        if self.track == "both_tracks":
            return TRACKS
        return (self.track.removesuffix("_track"),)

    def label(self, track: str) -> str | None:
        return self.inbound_track_label if track == "inbound" else self.outbound_track_label

    @property
    def model(self) -> str:
        return self.speech_model or default_speech_model(self.transcription_engine)

    def configuration_problem(self) -> str | None:
        """Why Twilio would refuse this engine and model (error 32650), or None."""
        engine, model = self.transcription_engine, self.model
        if engine not in SPEECH_MODELS:
            return f"TranscriptionEngine {engine!r} must be one of {', '.join(SPEECH_MODELS)}"
        if model not in SPEECH_MODELS[engine]:
            allowed = ", ".join(SPEECH_MODELS[engine])
            return f"SpeechModel {model!r} is not a {engine} model ({allowed})"
        return None


@dataclass(frozen=True)
class Faults:
    """Real-world delivery behaviour to inject: Twilio delivers at least once, unordered."""

    duplicates: float = 0.0  # probability that a callback is delivered twice
    reorder: float = 0.0  # probability that a callback swaps places with the next one
    delay: float = 0.0  # probability that a callback is delivered late
    max_delay: float = 2.0  # seconds of conversation time a late callback may lag
    error_at: float | None = None  # seconds in: a transcription-error, then stopped
    error_code: str = DEFAULT_ERROR_CODE
    error_message: str = DEFAULT_ERROR_MESSAGE
    track_as_label: bool = False  # send the label in Track, as some accounts receive [observed]
    # Seconds the outbound track's results come after the inbound track's: each track is
    # transcribed on its own, so SequenceIds follow production order, not speaking order.
    track_drift: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.error_code not in TRANSCRIPTION_ERRORS:
            codes = ", ".join(TRANSCRIPTION_ERRORS)
            raise ValueError(f"error code {self.error_code!r} is not one of Twilio's ({codes})")
        if self.track_drift < 0:
            raise ValueError(f"track drift ({self.track_drift!r}) must not be negative")


@dataclass(frozen=True)
class Callback:
    """One delivery: its parameters, when it happened and when it is sent (conversation seconds)."""

    event_at: float
    send_at: float
    params: Mapping[str, str]
    note: str = ""  # "duplicate", "delayed", "reordered": what a fault did to it

    @property
    def event(self) -> str:
        return self.params["TranscriptionEvent"]

    @property
    def sequence_id(self) -> int:
        return int(self.params["SequenceId"])


@dataclass(frozen=True)
class Identity:
    account_sid: str
    call_sid: str
    transcription_sid: str
    started_at: datetime  # aware, UTC: Timestamp of the started event
    speed: float = (
        1.0  # conversation seconds per wall-clock second: Timestamps are wall-clock times
    )
    timestamp_digits: int = DEFAULT_TIMESTAMP_DIGITS

    def wall(self, at: float) -> float:
        """Wall-clock seconds since the start for ``at`` conversation seconds."""
        return at / self.speed

    def stamp(self, at: float) -> str:
        return timestamp(self.started_at + timedelta(seconds=self.wall(at)), self.timestamp_digits)


def _number(data: Mapping, key: str, where: str, default: float | None = None) -> float:
    raw = data.get(key, default)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ConversationError(f"{where}.{key} ({raw!r}): must be a number")
    if raw < 0:
        raise ConversationError(f"{where}.{key} ({raw!r}): must not be negative")
    return float(raw)


def parse_conversation(data: object, source: str = "conversation") -> Conversation:
    """Validate a conversation already read from YAML or JSON."""
    if not isinstance(data, Mapping):
        raise ConversationError(f"{source}: must be a mapping with 'utterances'")
    items = data.get("utterances")
    if not isinstance(items, list) or not items:
        raise ConversationError(f"{source}.utterances ({items!r}): must be a non-empty list")
    utterances = []
    for n, item in enumerate(items):
        where = f"{source}.utterances[{n}]"
        if not isinstance(item, Mapping):
            raise ConversationError(f"{where} ({item!r}): must be a mapping")
        track = item.get("track")
        if track not in TRACKS:
            raise ConversationError(f"{where}.track ({track!r}): must be 'inbound' or 'outbound'")
        text = item.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ConversationError(f"{where}.text ({text!r}): must be a non-empty string")
        confidence = _number(item, "confidence", where, 0.9)
        if confidence > 1:
            raise ConversationError(f"{where}.confidence ({confidence!r}): must be between 0 and 1")
        duration = _number(item, "duration", where, max(0.6, 0.3 * len(text.split())))
        utterances.append(
            Utterance(track, text.strip(), _number(item, "at", where), duration, confidence)
        )
    language = data.get("language_code", "en-US")
    if not isinstance(language, str) or not LANGUAGE_CODE.fullmatch(language):
        # The receiver refuses any other LanguageCode: the emulator never sends one.
        raise ConversationError(f"{source}.language_code ({language!r}): must be a BCP-47 code")
    return Conversation(
        name=str(data.get("name") or source),
        utterances=tuple(sorted(utterances, key=lambda u: u.at)),
        language_code=language,
        ends_at=_number(data, "ends_at", source, 0.0),
    )


def load_conversation(path: str | Path | None = None) -> Conversation:
    """A conversation from a ``.yaml``/``.yml``/``.json`` file, or the built-in one for ``None``."""
    if path is None:
        resource = files(__package__).joinpath("conversations", f"{BUILTIN_CONVERSATION}.yaml")
        return parse_conversation(
            yaml.safe_load(resource.read_text(encoding="utf-8")), BUILTIN_CONVERSATION
        )
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConversationError(f"conversation {str(path)!r}: {error.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise ConversationError(
            f"conversation {str(path)!r}: not valid YAML/JSON: {error}"
        ) from None
    return parse_conversation(data, path.name)


def _provider_configuration(settings: TranscriptionSettings) -> str:
    config: dict[str, object] = {
        "profanityFilter": boolean(settings.profanity_filter),
        "speechModel": settings.model,
        "enableAutomaticPunctuation": boolean(settings.enable_automatic_punctuation),
    }
    if settings.hints:
        config["hints"] = settings.hints
    return json.dumps(config)


def _started(settings: TranscriptionSettings) -> dict[str, str]:
    params = {
        "Track": settings.track,
        "LanguageCode": settings.language_code or "en-US",
        "TranscriptionEngine": settings.transcription_engine,
        "PartialResults": boolean(settings.partial_results),
        "ProviderConfiguration": _provider_configuration(settings),
    }
    optional = {
        "Name": settings.name,
        "InboundTrackLabel": settings.inbound_track_label,
        "OutboundTrackLabel": settings.outbound_track_label,
    }
    params.update({k: v for k, v in optional.items() if v})
    return params


@dataclass(frozen=True)
class Result:
    """One recognition result of an utterance: the words heard so far, up to ``heard``
    conversation seconds after the utterance began."""

    utterance: Utterance
    words: tuple[str, ...]
    heard: float
    final: bool
    stability: float = 0.0


def _word_times(result: Result) -> list[tuple[str, float, float]]:
    """(word, start, end) in conversation seconds: the utterance's words spread evenly over it."""
    utterance = result.utterance
    step = utterance.duration / max(1, len(utterance.text.split()))
    return [
        (word, utterance.at + n * step, utterance.at + n * step + step * 0.9)
        for n, word in enumerate(result.words)
    ]


def _word_confidence(confidence: float, n: int) -> float:
    return round(min(1.0, max(0.0, confidence + 0.04 * ((n % 3) - 1))), 4)


def _deepgram(result: Result, identity: Identity, settings: TranscriptionSettings) -> dict:
    """Deepgram's streaming ``Results`` message; times in seconds since the provider connected."""
    confidence = result.utterance.confidence if result.final else result.utterance.confidence * 0.9
    words = [
        {
            "word": word.strip(".,?!;:").lower(),
            "start": round(identity.wall(start), 3),
            "end": round(identity.wall(end), 3),
            "confidence": _word_confidence(confidence, n),
            "punctuated_word": word,
        }
        for n, (word, start, end) in enumerate(_word_times(result))
    ]
    return {
        "type": "Results",
        "channel_index": [0, 1],
        "start": round(identity.wall(result.utterance.at), 3),
        "duration": round(identity.wall(result.heard), 3),
        "is_final": result.final,
        "speech_final": result.final,
        "channel": {
            "alternatives": [
                {
                    "transcript": " ".join(result.words),
                    "confidence": round(confidence, 4),
                    "words": words,
                }
            ]
        },
        "metadata": {
            "request_id": str(uuid.uuid5(uuid.NAMESPACE_URL, identity.transcription_sid)),
            "model_info": {"name": settings.model},
        },
    }


def _google(result: Result, identity: Identity) -> dict:
    """Google's ``StreamingRecognitionResult`` (the emulator's choice: Twilio shows Deepgram's)."""

    def offset(seconds: float) -> str:
        return f"{identity.wall(seconds):.3f}s"

    alternative: dict[str, object] = {
        "transcript": " ".join(result.words),
        "words": [
            {"word": word, "startOffset": offset(start), "endOffset": offset(end)}
            for word, start, end in _word_times(result)
        ],
    }
    if result.final:
        alternative["confidence"] = result.utterance.confidence
    return {
        "alternatives": [alternative],
        "isFinal": result.final,
        "stability": 0.0 if result.final else round(result.stability, 2),
        "resultEndOffset": offset(result.utterance.at + result.heard),
    }


def provider_data(result: Result, identity: Identity, settings: TranscriptionSettings) -> str:
    """``TranscriptionProviderData``: the provider's raw result in Twilio's envelope."""
    engine = settings.transcription_engine
    raw = (
        _deepgram(result, identity, settings) if engine == "deepgram" else _google(result, identity)
    )
    envelope = {
        "ProviderData": raw,
        "ProviderConnectTime": identity.stamp(0.0),
        "Provider": engine,
    }
    return json.dumps(envelope, ensure_ascii=False)


def _content(
    settings: TranscriptionSettings, faults: Faults, identity: Identity, result: Result
) -> dict[str, str]:
    """With PartialResults, content events carry Stability and no confidence (finals too);
    without, confidence and no Stability [docs]."""
    track = result.utterance.track
    label = settings.label(track)
    confidence, stability = (
        (None, FINAL_STABILITY if result.final else result.stability)
        if settings.partial_results
        else (result.utterance.confidence, None)
    )
    params = content_params(
        label if faults.track_as_label and label else track_param(track),
        " ".join(result.words),
        final=result.final,
        confidence=confidence,
        stability=stability,
        language_code=settings.language_code or "en-US",
    )
    if settings.enable_provider_data:
        params[PROVIDER_DATA_PARAM] = provider_data(result, identity, settings)
    return params


def _utterance_events(
    utterance: Utterance, settings: TranscriptionSettings, faults: Faults, identity: Identity
) -> list[tuple[float, dict[str, str]]]:
    """Partial results as the words come (growing text, growing stability), then the final,
    each at the time its track's engine produces it."""
    lag = faults.track_drift if utterance.track == "outbound" else 0.0
    words = tuple(utterance.text.split())
    results = []
    if settings.partial_results and len(words) > 1:
        # At most about one partial per 0.3 s of speech, as engines batch interim results.
        count = min(len(words) - 1, max(1, int(utterance.duration / 0.3)))
        for n in range(1, count + 1):
            fraction = n / (count + 1)
            shown = words[: max(1, round(len(words) * fraction))]
            stability = MIN_STABILITY + (MAX_STABILITY - MIN_STABILITY) * fraction
            results.append(
                Result(utterance, shown, utterance.duration * fraction, False, stability)
            )
    results.append(Result(utterance, words, utterance.duration, True))
    return [
        (utterance.at + r.heard + lag, _content(settings, faults, identity, r)) for r in results
    ]


def _common(identity: Identity, event: str, sequence_id: int, at: float) -> dict[str, str]:
    return callback_params(
        event,
        account_sid=identity.account_sid,
        call_sid=identity.call_sid,
        transcription_sid=identity.transcription_sid,
        sequence_id=sequence_id,
        timestamp=identity.stamp(at),
    )


def events(
    conversation: Conversation,
    settings: TranscriptionSettings,
    identity: Identity,
    faults: Faults = Faults(),
) -> list[Callback]:
    """Every callback of the transcription in the order things happen, before delivery faults:
    started, content for the chosen tracks, an error when asked, and stopped at the end.

    The conversation's ``language_code`` is what the speakers speak: it is the LanguageCode sent
    unless the transcription was started with one of its own."""
    if settings.language_code is None:
        settings = replace(settings, language_code=conversation.language_code)
    problem = settings.configuration_problem()
    if problem:
        # The emulator's choice: the resource is created, then the session fails at once.
        faults = replace(
            faults, error_at=0.0, error_code=CONFIGURATION_ERROR, error_message=problem
        )
    tracks = settings.tracks()
    happened: list[tuple[float, str, dict[str, str]]] = [(0.0, "started", _started(settings))]
    for utterance in conversation.utterances:
        if utterance.track in tracks:
            for at, params in _utterance_events(utterance, settings, faults, identity):
                happened.append((at, "content", params))
    end = max([conversation.length, *(at + 0.1 for at, _, _ in happened[1:])])
    if faults.error_at is not None:
        end = min(end, faults.error_at)
        # started is always delivered first, even for an error at 0 s.
        happened = happened[:1] + [h for h in happened[1:] if h[0] < end]
        error = {
            "TranscriptionErrorCode": faults.error_code,
            "TranscriptionError": faults.error_message,
        }
        happened.append((end, "error", error))
    happened.sort(key=lambda h: h[0])
    happened.append((happened[-1][0] if faults.error_at is not None else end, "stopped", {}))
    return [
        Callback(at, at, {**_common(identity, event, n, at), **params})
        for n, (at, event, params) in enumerate(happened, start=1)
    ]


def apply_faults(callbacks: list[Callback], faults: Faults) -> list[Callback]:
    """The order and times Twilio might deliver ``callbacks`` in, with the faults applied."""
    rng = random.Random(faults.seed)
    sent: list[Callback] = []
    for callback in callbacks:
        if faults.delay and rng.random() < faults.delay:
            lag = rng.uniform(0.0, faults.max_delay)
            callback = replace(callback, send_at=callback.send_at + lag, note="delayed")
        sent.append(callback)
        if faults.duplicates and rng.random() < faults.duplicates:
            again = callback.send_at + rng.uniform(0.05, 0.5)
            sent.append(replace(callback, send_at=again, note="duplicate"))
    sent.sort(key=lambda c: c.send_at)
    if faults.reorder:
        for n in range(len(sent) - 1):
            if rng.random() < faults.reorder:
                first, second = sent[n], sent[n + 1]
                sent[n] = replace(second, send_at=first.send_at, note=second.note or "reordered")
                sent[n + 1] = replace(first, send_at=second.send_at, note=first.note or "reordered")
    return sent


def timeline(
    conversation: Conversation,
    settings: TranscriptionSettings,
    identity: Identity,
    faults: Faults = Faults(),
) -> list[Callback]:
    """What the emulator sends for one transcription, in sending order."""
    return apply_faults(events(conversation, settings, identity, faults), faults)


def stop_early(identity: Identity, plan: list[Callback], sent: int, at: float) -> list[Callback]:
    """What is left to send of ``plan`` (of which ``sent`` went out) when the transcription is
    stopped ``at`` seconds in: what already happened is still delivered, nothing later is, and
    ``transcription-stopped`` follows with the next ``SequenceId``."""
    rest = [c for c in plan[sent:] if c.event_at <= at]
    happened = [c for c in plan if c.event_at <= at]
    if any(c.event == "transcription-stopped" for c in happened):
        return rest
    last = max((c.sequence_id for c in happened), default=0)
    return [*rest, Callback(at, at, _common(identity, "stopped", last + 1, at))]
