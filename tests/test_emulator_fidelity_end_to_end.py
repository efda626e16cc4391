"""Twilio's documented payloads end to end: the official client starts a Deepgram transcription
with provider data, partial results and drifting tracks on the emulator, the emulator calls the
real receiver under gunicorn, and Redis holds what was sent, with the finals in spoken order."""

from __future__ import annotations

import json
import re

import pytest
from twilio.rest import Client

from receiver.devtools.conversation import Faults, load_conversation
from receiver.devtools.emulator import Emulator, EmulatorServer

from .support.streams import call_entries
from .support.twilio_calls import sid

pytestmark = pytest.mark.slow  # starts servers or processes

TOKEN = "e2e-fidelity-token"
ACCOUNT = "AC" + "f" * 32
LABELS = {"inbound": "customer", "outbound": "agent"}
# Seconds the agent's results lag the customer's: enough for SequenceIds to cross speaking order.
DRIFT = 3.0
NANOSECOND_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")


def test_documented_payloads_are_stored_as_sent_and_finals_in_spoken_order(
    start_receiver, redis_client
):
    receiver = start_receiver(TWILIO_AUTH_TOKEN=TOKEN, TWILIO_ACCOUNT_SID=ACCOUNT)
    emulator = Emulator(ACCOUNT, TOKEN, faults=Faults(track_drift=DRIFT), speed=40)
    with EmulatorServer(emulator) as server:
        client = Client(ACCOUNT, TOKEN)
        client.api.base_url = server.url
        call_sid = sid("CA")
        created = client.calls(call_sid).transcriptions.create(
            status_callback_url=f"{receiver.url}/transcriptions/callback",
            transcription_engine="deepgram",
            enable_provider_data=True,
            partial_results=True,
            inbound_track_label="customer",
            outbound_track_label="agent",
        )
        assert emulator.wait(60)
    deliveries = emulator.transcriptions[created.sid].playback.deliveries
    assert {d.status for d in deliveries} == {200}
    sent = {d.callback.sequence_id: d.callback.params for d in deliveries}

    entries = call_entries(redis_client, call_sid)
    assert sorted(int(e["sequence_id"]) for e in entries) == sorted(sent)
    content = [e for e in entries if e["event"] == "content"]
    partials = [e for e in content if e["final"] == "false"]
    finals = [e for e in content if e["final"] == "true"]
    assert partials and finals
    for entry in content:
        params = sent[int(entry["sequence_id"])]
        assert NANOSECOND_TIMESTAMP.fullmatch(params["Timestamp"])
        assert entry["timestamp"] == params["Timestamp"]
        assert entry["provider_data"] == params["TranscriptionProviderData"]
        assert entry["spoken_start"] and entry["spoken_end"]
        # PartialResults=true: Stability and no confidence, on partials and finals alike.
        assert "confidence" not in entry
        assert entry["stability"] == params["Stability"]

    spoken = [(LABELS[u.track], u.text) for u in load_conversation().utterances]
    key = f"rtt:call:{{{call_sid}}}:finals"
    members = [json.loads(m) for m in redis_client.zrange(key, 0, -1)]
    assert [(m["track_label"], m["transcript"]) for m in members] == spoken
    assert [m["spoken_start"] for m in members] == sorted(e["spoken_start"] for e in finals)
    # Under drift the SequenceIds tell another order: one party's final is numbered after the
    # other party's later speech.
    numbered = sorted(members, key=lambda m: m["sequence_id"])
    assert [(m["track_label"], m["transcript"]) for m in numbered] != spoken
