"""Build and sign callbacks the way Twilio does, with the twilio package's own validator."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

from twilio.request_validator import RequestValidator

from receiver.devtools.conversation import FINAL_STABILITY
from receiver.protocol import callback_params, content_params, timestamp

TOKEN = "12345"
ACCOUNT_SID = "AC" + "0" * 32
CALLBACK_PATH = "/transcriptions/callback"


def sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def sign(url: str, params: dict | None = None, token: str = TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params or {})


def callback(
    event: str,
    call_sid: str,
    transcription_sid: str,
    sequence_id: int | None,
    **fields: str,
) -> dict[str, str]:
    """One callback's parameters, its ``Timestamp`` now (the receiver refuses stale ones)."""
    return callback_params(
        event,
        account_sid=ACCOUNT_SID,
        call_sid=call_sid,
        transcription_sid=transcription_sid,
        sequence_id=sequence_id,
        timestamp=timestamp(datetime.now(UTC)),
        **fields,
    )


def content(
    call_sid,
    transcription_sid,
    seq,
    text,
    *,
    track="inbound_track",
    final=True,
    confidence=0.93,
    stability=None,
    **fields,
) -> dict[str, str]:
    """A content callback: a final with ``confidence``, a partial with Stability 0.8, unless
    told otherwise."""
    if stability is None and not final:
        stability = "0.8"
    params = content_params(
        track,
        text,
        final=final,
        confidence=confidence if final else None,
        stability=stability,
    )
    return callback("content", call_sid, transcription_sid, seq, **{**params, **fields})


def started(call_sid: str, transcription_sid: str) -> dict[str, str]:
    """A both-track transcription with partial results, labelled customer / agent."""
    return callback(
        "started",
        call_sid,
        transcription_sid,
        1,
        Name="support",
        Track="both_tracks",
        LanguageCode="en-US",
        PartialResults="true",
        InboundTrackLabel="customer",
        OutboundTrackLabel="agent",
        TranscriptionEngine="google",
    )


def whole_call(call_sid: str, transcription_sid: str) -> list[dict[str, str]]:
    """A short two-party call: started, partials and finals on both tracks, stopped."""
    events = [started(call_sid, transcription_sid)]
    seq = 2
    for track, words in (
        ("inbound_track", "hello I need help"),
        ("outbound_track", "sure what is wrong"),
    ):
        parts = words.split()
        for n in range(1, len(parts)):
            events.append(
                content(
                    call_sid, transcription_sid, seq, " ".join(parts[:n]), track=track, final=False
                )
            )
            seq += 1
        # PartialResults=true: the final carries Stability and no confidence, as partials do.
        events.append(
            content(
                call_sid,
                transcription_sid,
                seq,
                words,
                track=track,
                confidence=None,
                stability=FINAL_STABILITY,
            )
        )
        seq += 1
    events.append(callback("stopped", call_sid, transcription_sid, seq))
    return events


def post(
    client,
    params: dict,
    *,
    base="http://localhost",
    query: dict | None = None,
    token: str = TOKEN,
    headers: dict | None = None,
):
    path = CALLBACK_PATH + ("?" + urlencode(query) if query else "")
    sig = sign(base + path, params, token)
    return client.post(
        path, data=params, headers={"X-Twilio-Signature": sig, **(headers or {})}, base_url=base
    )


def get(
    client,
    params: dict,
    *,
    base="http://localhost",
    token: str = TOKEN,
    headers: dict | None = None,
):
    path = CALLBACK_PATH + "?" + urlencode(params)
    return client.get(
        path,
        headers={"X-Twilio-Signature": sign(base + path, None, token), **(headers or {})},
        base_url=base,
    )


def long_utterance(call_sid: str, transcription_sid: str, seq: int, words: int) -> dict[str, str]:
    """A final result of ``words`` words with Deepgram's per-word TranscriptionProviderData:
    the largest callbacks Twilio sends (about 310 bytes a word, form-encoded)."""
    entries = [
        {
            "word": "understanding",
            "start": round(120 + n * 0.4, 3),
            "end": round(120.35 + n * 0.4, 3),
            "confidence": 0.998877,
            "punctuated_word": "Understanding,",
            "speaker": 0,
            "speaker_confidence": 0.87654,
        }
        for n in range(words)
    ]
    transcript = " ".join(e["punctuated_word"] for e in entries)
    result = {"type": "Results", "is_final": True, "start": 120.0, "duration": words * 0.4}
    result["channel"] = {"alternatives": [{"transcript": transcript, "words": entries}]}
    provider = {
        "ProviderData": result,
        "ProviderConnectTime": "2026-01-23T21:47:44.614701800Z",
        "Provider": "deepgram",
    }
    return content(
        call_sid,
        transcription_sid,
        seq,
        transcript,
        TranscriptionProviderData=json.dumps(provider),
    )


def raw_body(pairs: dict[str, str] | list[tuple[str, str]]) -> str:
    """A form body exactly as given: repeated names and odd splits included."""
    items = pairs.items() if isinstance(pairs, dict) else pairs
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in items)


def split_name_variants(params: dict[str, str], name: str, cuts: int) -> list[str]:
    """Bodies where the start of ``name``'s value joins its name, sent twice: the signed text
    (names and values concatenated, repeated values collapsed) stays the same."""
    rest = [(k, v) for k, v in params.items() if k != name]
    value = params[name]
    pairs = [(name + value[:cut], value[cut:]) for cut in range(1, cuts + 1)]
    return [raw_body([*rest, pair, pair]) for pair in pairs]
