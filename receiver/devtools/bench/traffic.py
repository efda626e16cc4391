"""The bench's call traffic: signed Twilio callbacks of live calls, as raw HTTP bytes.

N concurrent calls, both tracks, each utterance sent as partial results (one per word, the
transcript growing) and then a final, with every parameter Twilio sends, built with
``receiver.protocol``'s builders. Every request is signed with the receiver's own
``signature.compute`` (the ``twilio`` package's HMAC) *before* the timed phase and written out
as raw bytes, so that a generator only copies bytes over keep-alive connections.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

from receiver.devtools.conversation import FINAL_STABILITY
from receiver.protocol import SIGNATURE_HEADER, callback_params, content_params, timestamp
from receiver.signature import compute

# How many callbacks a live call sends per second, derived from a speech rate (see
# EVENTS_PER_CALL_DERIVATION); `--events-per-call` overrides it.
SPEECH_WORDS_PER_SECOND = 2.5  # 150 words a minute, conversational English
TALK_SHARE = 0.5  # each party speaks about half of the call
PARTIALS_PER_WORD = 1.5  # engines revise a partial result more than once per word
WORDS_PER_UTTERANCE = 12  # one final per utterance
EVENTS_PER_TRACK = (
    SPEECH_WORDS_PER_SECOND * TALK_SHARE * (PARTIALS_PER_WORD + 1 / WORDS_PER_UTTERANCE)
)
EVENTS_PER_CALL = round(2 * EVENTS_PER_TRACK, 1)
EVENTS_PER_CALL_DERIVATION = (
    f"both tracks x {SPEECH_WORDS_PER_SECOND} words/s (150 words/min) x {TALK_SHARE} talk "
    f"share x ({PARTIALS_PER_WORD} partials per word + 1 final per {WORDS_PER_UTTERANCE} words) "
    f"= {EVENTS_PER_CALL} callbacks/s per call"
)


VOCABULARY = (
    "yes no okay so I we you they my your our account order number card payment bill charge "
    "refund delivery address phone email password reset help need want could would should can "
    "please thanks thank sorry hello hi morning afternoon today yesterday tomorrow week month "
    "last next first second again still already just really actually problem issue question "
    "change cancel update check confirm send receive call back hold transfer minute moment "
    "name spell letter digit code the a an and but or because if when then that this it is was "
    "be have has had do does did not with for on in at to from about after before"
)
WORDS = tuple(VOCABULARY.split())


# --- traffic ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Callback:
    """One precomputed request: raw HTTP bytes, and what identifies its stream entry."""

    raw: bytes
    call_sid: str
    sequence_id: int


def _utterances(rng: random.Random) -> Iterator[tuple[str, list[str]]]:
    """Turns of a two-party call: (track, words of one utterance), forever."""
    track = "inbound_track"
    while True:
        for _ in range(rng.choice((1, 1, 2))):
            yield track, rng.choices(WORDS, k=rng.randint(4, 2 * WORDS_PER_UTTERANCE - 4))
        track = "outbound_track" if track == "inbound_track" else "inbound_track"


# Seconds of speech between two callbacks of one call, as their Timestamps advance.
CALLBACK_SECONDS = 1 / SPEECH_WORDS_PER_SECOND / PARTIALS_PER_WORD


def call_params(
    account_sid: str, call_sid: str, rng: random.Random, start: float | None = None
) -> Iterator[dict[str, str]]:
    """Twilio's callbacks of one live call: ``transcription-started``, then partials and finals
    on both tracks, as the form parameters Twilio sends (names and shapes of
    docs/streams.md and Twilio's protocol)."""
    transcription_sid = "GT" + uuid.UUID(int=rng.getrandbits(128)).hex
    clock = time.time() if start is None else start
    sequence = 1

    def common(event: str) -> dict[str, str]:
        return callback_params(
            event,
            account_sid=account_sid,
            call_sid=call_sid,
            transcription_sid=transcription_sid,
            sequence_id=sequence,
            timestamp=timestamp(datetime.fromtimestamp(clock, UTC)),
        )

    yield {
        **common("started"),
        "Name": "support-line",
        "Track": "both_tracks",
        "LanguageCode": "en-US",
        "TranscriptionEngine": "google",
        "SpeechModel": "telephony",
        "PartialResults": "true",
        "InboundTrackLabel": "customer",
        "OutboundTrackLabel": "agent",
        "ProviderConfiguration": '{"enableAutomaticPunctuation":true,"profanityFilter":true}',
    }
    for track, words in _utterances(rng):
        for n in range(1, len(words) + 1):
            sequence += 1
            clock += CALLBACK_SECONDS
            final = n == len(words)
            text = " ".join(words[:n])
            # PartialResults=true: Stability and no confidence, on partials and finals alike.
            if final:
                text = text[0].upper() + text[1:] + "."
                stability = FINAL_STABILITY
            else:
                stability = rng.uniform(0.6, 0.95)
            yield {
                **common("content"),
                **content_params(track, text, final=final, stability=stability),
            }


def raw_request(url: str, signed_url: str, params: dict[str, str], token: str) -> bytes:
    """The exact bytes Twilio would send to ``url``: form body, X-Twilio-Signature over
    ``signed_url`` (the public URL the receiver is told about, or ``url`` itself)."""
    signature = compute(token, signed_url, {k: [v] for k, v in params.items()})
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    body = urlencode(params).encode()
    head = (
        f"POST {target} HTTP/1.1\r\n"
        f"Host: {parts.netloc}\r\n"
        "User-Agent: TwilioProxy/1.1\r\n"
        "Accept: */*\r\n"
        "Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n"
        f"{SIGNATURE_HEADER}: {signature}\r\n"
        f"I-Twilio-Idempotency-Token: {uuid.uuid4()}\r\n"
        "X-Home-Region: us1\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def make_traffic(
    *, calls: int, count: int, url: str, signed_url: str, token: str, seed: int
) -> list[Callback]:
    """``count`` signed callbacks of ``calls`` interleaved live calls, all new to the receiver
    (fresh CallSids), so every one is stored rather than answered as a duplicate."""
    rng = random.Random(seed)
    account_sid = "AC" + uuid.UUID(int=rng.getrandbits(128)).hex
    call_sids = ["CA" + uuid.uuid4().hex for _ in range(calls)]
    # Sent faster than speech, a call's Timestamps would run ahead of the clock, and the
    # receiver refuses those more than 5 minutes ahead: they end now instead.
    start = time.time() - -(-count // calls) * CALLBACK_SECONDS
    streams = [
        call_params(account_sid, sid, random.Random(rng.random()), start) for sid in call_sids
    ]
    out: list[Callback] = []
    while len(out) < count:
        for call_sid, stream in zip(call_sids, streams, strict=True):
            params = next(stream)
            raw = raw_request(url, signed_url, params, token)
            out.append(Callback(raw, call_sid, int(params["SequenceId"])))
            if len(out) == count:
                break
    return out
