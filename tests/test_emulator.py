"""The emulator, driven by the official twilio client with only ``api.base_url`` changed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import pytest
import requests
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from receiver.devtools.conversation import (
    FINAL_STABILITY,
    Identity,
    TranscriptionSettings,
    events,
    load_conversation,
)
from receiver.devtools.emulator import Emulator, EmulatorServer
from receiver.devtools.playback import send

from .support.callback_sink import CallbackSink
from .support.twilio_calls import sid

SPEED = 40.0  # the built-in 25 s conversation plays in about 0.6 s


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(Emulator(speed=SPEED)) as server:
        yield server


@pytest.fixture
def twilio(emulator: EmulatorServer) -> Client:
    client = Client(emulator.emulator.account_sid, emulator.emulator.auth_token)
    client.api.base_url = emulator.url
    return client


@pytest.fixture
def sink(emulator: EmulatorServer) -> Iterator[CallbackSink]:
    server = CallbackSink(emulator.emulator.auth_token).start()
    yield server
    server.stop()


def rest_error(call) -> TwilioRestException:
    with pytest.raises(TwilioRestException) as caught:
        call()
    return caught.value


def test_create_returns_the_resource(twilio: Client, emulator: EmulatorServer):
    call_sid = sid("CA")
    created = twilio.calls(call_sid).transcriptions.create(name="support", track="both_tracks")
    assert re.fullmatch(r"GT[0-9a-f]{32}", created.sid)
    assert created.status == "in-progress"
    assert created.name == "support"
    assert created.account_sid == emulator.emulator.account_sid
    assert created.call_sid == call_sid
    assert created.date_updated is not None and created.date_updated.tzinfo is not None
    assert created.uri == (
        f"/2010-04-01/Accounts/{created.account_sid}/Calls/{call_sid}"
        f"/Transcriptions/{created.sid}.json"
    )


def test_raw_answer_has_twilio_shape(emulator: EmulatorServer):
    em = emulator.emulator
    call_sid = sid("CA")
    response = requests.post(
        f"{emulator.url}/2010-04-01/Accounts/{em.account_sid}/Calls/{call_sid}/Transcriptions.json",
        data={"Track": "inbound_track"},
        auth=(em.account_sid, em.auth_token),
        timeout=5,
    )
    assert response.status_code == 200  # the current OpenAPI's answer (201 before 2025)
    body = response.json()
    assert set(body) == {"account_sid", "call_sid", "sid", "name", "status", "date_updated", "uri"}
    assert body["name"] is None
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000", body["date_updated"])
    assert parsedate_to_datetime(body["date_updated"]).utcoffset().total_seconds() == 0


def test_stop_by_sid_and_by_name(twilio: Client):
    call_sid = sid("CA")
    first = twilio.calls(call_sid).transcriptions.create(name="first")
    twilio.calls(call_sid).transcriptions.create(name="second")
    stopped = twilio.calls(call_sid).transcriptions(first.sid).update(status="stopped")
    assert (stopped.sid, stopped.status) == (first.sid, "stopped")
    by_name = twilio.calls(call_sid).transcriptions("second").update(status="stopped")
    assert (by_name.name, by_name.status) == ("second", "stopped")


def test_stopping_twice_or_an_unknown_one_is_an_error(twilio: Client):
    call_sid = sid("CA")
    created = twilio.calls(call_sid).transcriptions.create(name="once")
    twilio.calls(call_sid).transcriptions("once").update(status="stopped")
    again = rest_error(lambda: twilio.calls(call_sid).transcriptions(created.sid).update("stopped"))
    assert (again.status, again.code) == (400, 21220)
    assert "already stopped" in again.msg
    unknown = rest_error(lambda: twilio.calls(call_sid).transcriptions("nope").update("stopped"))
    assert (unknown.status, unknown.code) == (404, 20404)
    other_call = rest_error(
        lambda: twilio.calls(sid("CA")).transcriptions("once").update("stopped")
    )
    assert (other_call.status, other_call.code) == (404, 20404)


def test_bad_credentials_get_20003(emulator: EmulatorServer):
    bad = Client(emulator.emulator.account_sid, "not-the-token")
    bad.api.base_url = emulator.url
    error = rest_error(lambda: bad.calls(sid("CA")).transcriptions.create())
    assert (error.status, error.code) == (401, 20003)
    stranger = Client(sid("AC"), emulator.emulator.auth_token)
    stranger.api.base_url = emulator.url
    error = rest_error(lambda: stranger.calls(sid("CA")).transcriptions.create())
    assert (error.status, error.code) == (401, 20003)


def test_unknown_resources_get_20404(twilio: Client, emulator: EmulatorServer):
    error = rest_error(lambda: twilio.calls("CA123").transcriptions.create())
    assert (error.status, error.code) == (404, 20404)
    em = emulator.emulator
    response = requests.post(
        f"{emulator.url}/2010-04-01/Accounts/{em.account_sid}/Recordings.json",
        auth=(em.account_sid, em.auth_token),
        timeout=5,
    )
    assert response.status_code == 404
    assert response.json() == {
        "code": 20404,
        "message": f"The requested resource /2010-04-01/Accounts/{em.account_sid}/Recordings.json"
        " was not found",
        "more_info": "https://www.twilio.com/docs/errors/20404",
        "status": 404,
    }
    unauthenticated = requests.post(f"{emulator.url}/anything", timeout=5)
    assert (unauthenticated.status_code, unauthenticated.json()["code"]) == (401, 20003)


@pytest.mark.parametrize(
    ("kwargs", "code", "words"),
    [
        ({"track": "left_track"}, 20001, "Track ('left_track')"),
        ({"status_callback_method": "PUT"}, 20001, "StatusCallbackMethod ('PUT')"),
        ({"status_callback_url": "/relative/path"}, 21609, "StatusCallbackUrl ('/relative/path')"),
        ({"status_callback_url": "ftp://127.0.0.1/x"}, 21609, "StatusCallbackUrl"),
        ({"status_callback_url": "https://example.com/cb"}, 21609, "loopback"),
    ],
)
def test_invalid_parameters_get_400(twilio: Client, kwargs, code, words):
    error = rest_error(lambda: twilio.calls(sid("CA")).transcriptions.create(**kwargs))
    assert (error.status, error.code) == (400, code)
    assert words in error.msg


def test_invalid_boolean_and_status(emulator: EmulatorServer, twilio: Client):
    em = emulator.emulator
    call_sid = sid("CA")
    base = f"{emulator.url}/2010-04-01/Accounts/{em.account_sid}/Calls/{call_sid}/Transcriptions"
    response = requests.post(
        base + ".json", data={"PartialResults": "yes"}, auth=(em.account_sid, em.auth_token)
    )
    assert (response.status_code, response.json()["code"]) == (400, 20001)
    assert "PartialResults ('yes')" in response.json()["message"]
    created = twilio.calls(call_sid).transcriptions.create()
    paused = rest_error(lambda: twilio.calls(call_sid).transcriptions(created.sid).update("paused"))
    assert (paused.status, paused.code) == (400, 20001)
    listing = requests.get(base + ".json", auth=(em.account_sid, em.auth_token), timeout=5)
    assert (listing.status_code, listing.json()["code"]) == (405, 20004)


def test_duplicate_active_name_is_refused(twilio: Client):
    call_sid = sid("CA")
    twilio.calls(call_sid).transcriptions.create(name="agent-assist")
    error = rest_error(lambda: twilio.calls(call_sid).transcriptions.create(name="agent-assist"))
    assert (error.status, error.code) == (400, 20001)
    twilio.calls(sid("CA")).transcriptions.create(name="agent-assist")  # another call: fine


def test_full_call_callbacks_post(twilio: Client, emulator: EmulatorServer, sink: CallbackSink):
    call_sid = sid("CA")
    created = twilio.calls(call_sid).transcriptions.create(
        name="support",
        track="both_tracks",
        status_callback_url=sink.url,
        partial_results=True,
        inbound_track_label="customer",
        outbound_track_label="agent",
        language_code="en-US",
        transcription_engine="google",
        speech_model="telephony",
        hints="Lisbon, zulu",
    )
    assert emulator.emulator.wait(10)
    got = sink.of(created.sid)
    assert got and all(r.signature_valid for r in got)
    assert {r.method for r in got} == {"POST"}
    assert all(r.headers["User-Agent"] == "TwilioProxy/1.1" for r in got)
    events = [r.params["TranscriptionEvent"] for r in got]
    assert events[0] == "transcription-started"
    assert events[-1] == "transcription-stopped"
    assert set(events[1:-1]) == {"transcription-content"}
    assert [int(r.params["SequenceId"]) for r in got] == list(range(1, len(got) + 1))
    stamps = [r.params["Timestamp"] for r in got]
    assert stamps == sorted(stamps)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", t) for t in stamps)
    for r in got:
        assert r.params["AccountSid"] == created.account_sid
        assert r.params["CallSid"] == call_sid
    started = got[0].params
    assert started["Name"] == "support"
    assert started["Track"] == "both_tracks"
    assert started["PartialResults"] == "true"
    assert (started["InboundTrackLabel"], started["OutboundTrackLabel"]) == ("customer", "agent")
    assert started["TranscriptionEngine"] == "google"
    assert json.loads(started["ProviderConfiguration"])["hints"] == "Lisbon, zulu"
    content = [r.params for r in got[1:-1]]
    partials = [p for p in content if p["Final"] == "false"]
    finals = [p for p in content if p["Final"] == "true"]
    assert partials and all(0 < float(p["Stability"]) < 1 for p in partials)
    assert all(float(p["Stability"]) == FINAL_STABILITY for p in finals)
    assert all("confidence" not in json.loads(p["TranscriptionData"]) for p in content)
    assert {p["Track"] for p in content} == {"inbound_track", "outbound_track"}
    conversation = load_conversation()
    assert [json.loads(p["TranscriptionData"])["transcript"] for p in finals] == [
        u.text for u in conversation.utterances
    ]
    # Partials grow towards their final, word by word.
    first_final = content.index(finals[0])
    growing = [json.loads(p["TranscriptionData"])["transcript"] for p in content[:first_final]]
    assert all(finals[0]["TranscriptionData"].find(t) >= 0 for t in growing)
    assert [len(t) for t in growing] == sorted(len(t) for t in growing)


def test_get_one_track_no_partials(twilio: Client, emulator: EmulatorServer, sink: CallbackSink):
    call_sid = sid("CA")
    created = twilio.calls(call_sid).transcriptions.create(
        track="inbound_track",
        status_callback_url=sink.url + "?tenant=a b",
        status_callback_method="GET",
    )
    assert emulator.emulator.wait(10)
    got = sink.of(created.sid)
    assert got and all(r.signature_valid for r in got)
    assert {r.method for r in got} == {"GET"}
    assert all(r.params["tenant"] == "a b" for r in got)
    content = [r.params for r in got if r.params["TranscriptionEvent"] == "transcription-content"]
    assert {p["Track"] for p in content} == {"inbound_track"}
    assert {p["Final"] for p in content} == {"true"}
    inbound = [u for u in load_conversation().utterances if u.track == "inbound"]
    data = [json.loads(p["TranscriptionData"]) for p in content]
    assert [d["transcript"] for d in data] == [u.text for u in inbound]
    # No partial results: each final carries its utterance's confidence, and no Stability.
    assert [d["confidence"] for d in data] == [u.confidence for u in inbound]
    assert all("Stability" not in p for p in content)
    assert "Name" not in got[0].params


def test_stop_mid_call_sends_stopped_next(emulator: EmulatorServer, sink: CallbackSink):
    emulator.emulator.speed = 8.0  # slow enough to stop in the middle
    client = Client(emulator.emulator.account_sid, emulator.emulator.auth_token)
    client.api.base_url = emulator.url
    call_sid = sid("CA")
    created = client.calls(call_sid).transcriptions.create(status_callback_url=sink.url)
    assert not emulator.emulator.transcriptions[created.sid].playback.wait(0.6)
    client.calls(call_sid).transcriptions(created.sid).update(status="stopped")
    assert emulator.emulator.wait(5)
    got = sink.of(created.sid)
    events = [r.params["TranscriptionEvent"] for r in got]
    assert events[0] == "transcription-started"
    assert events[-1] == "transcription-stopped"
    assert events.count("transcription-stopped") == 1
    assert 1 <= events.count("transcription-content") < len(load_conversation().utterances)
    assert [int(r.params["SequenceId"]) for r in got] == list(range(1, len(got) + 1))


def test_many_concurrent_transcriptions(twilio: Client, emulator: EmulatorServer, sink):
    created = [
        twilio.calls(sid("CA")).transcriptions.create(
            status_callback_url=sink.url, partial_results=True
        )
        for _ in range(6)
    ]
    assert emulator.emulator.wait(15)
    lengths = set()
    for transcription in created:
        got = sink.of(transcription.sid)
        assert [int(r.params["SequenceId"]) for r in got] == list(range(1, len(got) + 1))
        assert got[-1].params["TranscriptionEvent"] == "transcription-stopped"
        lengths.add(len(got))
    assert len(lengths) == 1


def test_retries_what_twilio_retries(emulator: EmulatorServer, twilio: Client, sink):
    sink.status = 503
    created = twilio.calls(sid("CA")).transcriptions.create(
        track="inbound_track", status_callback_url=sink.url + "#rc=2&rt=1000"
    )
    assert emulator.emulator.wait(15)
    got = sink.of(created.sid)
    sequence = [r.params["SequenceId"] for r in got]
    assert sequence[:3] == ["1", "1", "1"]
    tokens = {r.headers["I-Twilio-Idempotency-Token"] for r in got if r.params["SequenceId"] == "1"}
    assert len(tokens) == 1
    assert all("#" not in r.url for r in got)


@pytest.mark.parametrize(
    ("status", "attempts"),
    [(500, 3), (501, 3), (505, 3), (599, 3), (408, 3), (425, 3), (429, 3), (404, 1), (400, 1)],
)
def test_retries_every_5xx_and_408_425_429(sink, status: int, attempts: int):
    identity = Identity(sid("AC"), sid("CA"), sid("GT"), datetime.now(UTC))
    settings = TranscriptionSettings(sink.url, track="inbound_track")
    first = events(load_conversation(), settings, identity)[0]
    sink.status = status
    with requests.Session() as session:
        delivery = send(
            session,
            first,
            url=sink.url + "#rc=2",
            method="POST",
            auth_token=sink.token,
            idempotency_token="token",
        )
    assert (delivery.status, delivery.attempts) == (status, attempts)
    assert len(sink.received) == attempts


def test_hanging_up_stops_transcriptions_and_refuses_new_ones(sink: CallbackSink):
    # Real time: the call is surely still talking when it is hung up.
    with EmulatorServer(Emulator(auth_token=sink.token)) as slow:
        twilio = Client(slow.emulator.account_sid, slow.emulator.auth_token)
        twilio.api.base_url = slow.url
        call_sid = sid("CA")
        created = twilio.calls(call_sid).transcriptions.create(status_callback_url=sink.url)
        call = twilio.calls(call_sid).update(status="completed")
        assert (call.sid, call.status) == (call_sid, "completed")
        assert slow.emulator.wait(10)
        got = sink.of(created.sid)
        assert got[-1].params["TranscriptionEvent"] == "transcription-stopped"
        assert slow.emulator.transcriptions[created.sid].status == "stopped"
        refused = rest_error(lambda: twilio.calls(call_sid).transcriptions.create())
        assert (refused.status, refused.code) == (400, 21220)
        assert "not in progress" in refused.msg
        again = rest_error(lambda: twilio.calls(call_sid).update(status="completed"))
        assert (again.status, again.code) == (400, 21220)
        other = twilio.calls(sid("CA")).transcriptions.create()  # other calls go on
        assert other.status == "in-progress"


def test_provider_data_and_timestamps_on_the_wire(
    twilio: Client, emulator: EmulatorServer, sink: CallbackSink
):
    created = twilio.calls(sid("CA")).transcriptions.create(
        status_callback_url=sink.url,
        transcription_engine="deepgram",
        enable_provider_data=True,
        partial_results=True,
    )
    assert emulator.emulator.wait(10)
    got = sink.of(created.sid)
    assert all(r.signature_valid for r in got)
    stamps = [r.params["Timestamp"] for r in got]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", t) for t in stamps)
    content = [r.params for r in got if r.params["TranscriptionEvent"] == "transcription-content"]
    assert content and all("ProviderData" not in p for p in content)
    for params in content:
        envelope = json.loads(params["TranscriptionProviderData"])
        assert envelope["Provider"] == "deepgram"
        raw = envelope["ProviderData"]
        assert raw["is_final"] is (params["Final"] == "true")
        assert {"start", "duration"} <= set(raw)
        assert raw["channel"]["alternatives"][0]["words"]
        # PartialResults=true: Stability and no confidence, on partials and finals alike.
        assert "confidence" not in json.loads(params["TranscriptionData"])
        assert "Stability" in params
