"""The whole loop without Twilio: the official client starts a transcription on the emulator,
the emulator calls the real receiver under gunicorn, the receiver writes to a real Redis."""

from __future__ import annotations

import json

import pytest
from twilio.rest import Client

from receiver.devtools.conversation import Faults, load_conversation
from receiver.devtools.emulator import Emulator, EmulatorServer

from .support.streams import call_entries
from .support.twilio_calls import sid

pytestmark = pytest.mark.slow  # starts servers or processes

TOKEN = "e2e-emulator-token"
ACCOUNT = "AC" + "e" * 32


def expected_entries(conversation, tracks=("inbound", "outbound"), partials=True):
    """The normalized events a full two-party call must leave, in order."""
    labels = {"inbound": "customer", "outbound": "agent"}
    rows: list[tuple] = [("started", None, None, None, None)]
    timed = []
    for u in conversation.utterances:
        if u.track not in tracks:
            continue
        words = u.text.split()
        if partials and len(words) > 1:
            count = min(len(words) - 1, max(1, int(u.duration / 0.3)))
            for n in range(1, count + 1):
                fraction = n / (count + 1)
                text = " ".join(words[: max(1, round(len(words) * fraction))])
                timed.append((u.at + u.duration * fraction, u.track, "false", text))
        timed.append((u.at + u.duration, u.track, "true", u.text))
    timed.sort(key=lambda t: t[0])
    rows += [("content", track, labels[track], final, text) for _, track, final, text in timed]
    rows.append(("stopped", None, None, None, None))
    return rows


def row(entry: dict[str, str]) -> tuple:
    return (
        entry["event"],
        entry.get("track"),
        entry.get("track_label"),
        entry.get("final"),
        entry.get("transcript"),
    )


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_full_call_through_the_rest_resource(start_receiver, redis_client, method):
    receiver = start_receiver(TWILIO_AUTH_TOKEN=TOKEN, TWILIO_ACCOUNT_SID=ACCOUNT)
    emulator = Emulator(ACCOUNT, TOKEN, speed=40)
    with EmulatorServer(emulator) as server:
        client = Client(ACCOUNT, TOKEN)
        client.api.base_url = server.url
        call_sid = sid("CA")
        created = client.calls(call_sid).transcriptions.create(
            name="support",
            track="both_tracks",
            status_callback_url=f"{receiver.url}/transcriptions/callback",
            status_callback_method=method,
            partial_results=True,
            inbound_track_label="customer",
            outbound_track_label="agent",
        )
        assert emulator.wait(15)
    playback = emulator.transcriptions[created.sid].playback
    assert {d.status for d in playback.deliveries} == {200}

    entries = call_entries(redis_client, call_sid)
    assert [row(e) for e in entries] == expected_entries(load_conversation())
    assert [int(e["sequence_id"]) for e in entries] == list(range(1, len(entries) + 1))
    assert {e["transcription_sid"] for e in entries} == {created.sid}
    assert {e["account_sid"] for e in entries} == {ACCOUNT}
    started = entries[0]
    assert (started["name"], started["track_setting"], started["partial_results"]) == (
        "support",
        "both_tracks",
        "true",
    )
    assert (started["inbound_track_label"], started["outbound_track_label"]) == (
        "customer",
        "agent",
    )
    finals = [json.loads(m) for m in redis_client.zrange(f"rtt:call:{{{call_sid}}}:finals", 0, -1)]
    assert [(f["track_label"], f["transcript"]) for f in finals] == [
        ({"inbound": "customer", "outbound": "agent"}[u.track], u.text)
        for u in load_conversation().utterances
    ]
    assert redis_client.xlen("rtt:events") == len(entries)
    assert redis_client.zscore("rtt:calls:active", call_sid) is None


def test_faulty_delivery_still_lands_exactly_once(start_receiver, redis_client):
    receiver = start_receiver(TWILIO_AUTH_TOKEN=TOKEN)
    faults = Faults(duplicates=0.3, reorder=0.3, delay=0.2, max_delay=2.0, seed=11)
    emulator = Emulator(ACCOUNT, TOKEN, faults=faults, speed=40)
    with EmulatorServer(emulator) as server:
        client = Client(ACCOUNT, TOKEN)
        client.api.base_url = server.url
        call_sid = sid("CA")
        created = client.calls(call_sid).transcriptions.create(
            track="both_tracks",
            status_callback_url=f"{receiver.url}/transcriptions/callback",
            inbound_track_label="customer",
            outbound_track_label="agent",
        )
        assert emulator.wait(15)
    deliveries = emulator.transcriptions[created.sid].playback.deliveries
    assert "duplicate" in {d.callback.note for d in deliveries}
    sent_order = [d.callback.sequence_id for d in deliveries]
    assert sent_order != sorted(sent_order)
    entries = call_entries(redis_client, call_sid)
    sequence = [int(e["sequence_id"]) for e in entries]
    assert sorted(sequence) == list(range(1, len(entries) + 1))
    assert len(entries) == len({d.callback.sequence_id for d in deliveries})
    assert len(deliveries) > len(entries)
    finals = [json.loads(m) for m in redis_client.zrange(f"rtt:call:{{{call_sid}}}:finals", 0, -1)]
    assert [f["transcript"] for f in finals] == [u.text for u in load_conversation().utterances]


def test_labels_in_track_and_an_error_mid_call(start_receiver, redis_client):
    receiver = start_receiver(TWILIO_AUTH_TOKEN=TOKEN)
    faults = Faults(error_at=10.0, error_code="32655", track_as_label=True)
    emulator = Emulator(ACCOUNT, TOKEN, faults=faults, speed=40)
    with EmulatorServer(emulator) as server:
        client = Client(ACCOUNT, TOKEN)
        client.api.base_url = server.url
        call_sid = sid("CA")
        client.calls(call_sid).transcriptions.create(
            status_callback_url=f"{receiver.url}/transcriptions/callback",
            inbound_track_label="customer",
            outbound_track_label="agent",
        )
        assert emulator.wait(15)
    entries = call_entries(redis_client, call_sid)
    assert [e["event"] for e in entries][-2:] == ["error", "stopped"]
    assert entries[-2]["error_code"] == "32655"
    content = [e for e in entries if e["event"] == "content"]
    spoken = [u for u in load_conversation().utterances if u.at + u.duration < 10.0]
    assert [(e["track"], e["track_label"], e["transcript"]) for e in content] == [
        (u.track, {"inbound": "customer", "outbound": "agent"}[u.track], u.text) for u in spoken
    ]
    assert redis_client.zscore("rtt:calls:active", call_sid) is None
