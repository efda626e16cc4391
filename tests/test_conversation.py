"""Conversations and timelines: the pure part of the emulator."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from receiver.devtools.conversation import (
    FINAL_STABILITY,
    ConversationError,
    Faults,
    Identity,
    TranscriptionSettings,
    apply_faults,
    events,
    load_conversation,
    parse_conversation,
    stop_early,
    timeline,
)

from .support.twilio_calls import sid

IDENTITY = Identity(sid("AC"), sid("CA"), sid("GT"), datetime(2026, 11, 28, 9, 0, tzinfo=UTC))
SETTINGS = TranscriptionSettings(
    "http://127.0.0.1:9/cb",
    partial_results=True,
    inbound_track_label="customer",
    outbound_track_label="agent",
)


def test_builtin_conversation_is_a_two_party_call():
    conversation = load_conversation()
    assert {u.track for u in conversation.utterances} == {"inbound", "outbound"}
    assert len(conversation.utterances) >= 6
    starts = [u.at for u in conversation.utterances]
    assert starts == sorted(starts)
    last = conversation.utterances[-1]
    assert conversation.length >= last.at + last.duration


def test_conversation_files_yaml_and_json(tmp_path):
    data = {"name": "tiny", "utterances": [{"track": "inbound", "at": 0, "text": "hello there"}]}
    (tmp_path / "tiny.json").write_text(json.dumps(data))
    (tmp_path / "tiny.yaml").write_text("utterances:\n  - {track: outbound, at: 1, text: hi}\n")
    assert load_conversation(tmp_path / "tiny.json").utterances[0].text == "hello there"
    assert load_conversation(tmp_path / "tiny.yaml").utterances[0].track == "outbound"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({}, "utterances (None)"),
        ({"utterances": [{"track": "left", "at": 0, "text": "x"}]}, "track ('left')"),
        ({"utterances": [{"track": "inbound", "at": -1, "text": "x"}]}, "at (-1)"),
        ({"utterances": [{"track": "inbound", "at": 0, "text": ""}]}, "text ('')"),
        ({"utterances": [{"track": "inbound", "at": 0, "text": "x", "confidence": 2}]}, "2.0"),
    ],
)
def test_bad_conversations_name_the_field(data, words):
    with pytest.raises(ConversationError) as caught:
        parse_conversation(data, "s.yaml")
    assert words in str(caught.value)


def test_unreadable_conversation_file(tmp_path):
    with pytest.raises(ConversationError, match=r"conversation .*missing\.yaml.*No such file"):
        load_conversation(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("utterances: [\n")
    with pytest.raises(ConversationError, match="not valid YAML"):
        load_conversation(tmp_path / "broken.yaml")


def test_events_in_order_with_growing_sequence():
    plan = events(load_conversation(), SETTINGS, IDENTITY)
    assert [c.sequence_id for c in plan] == list(range(1, len(plan) + 1))
    assert [c.event_at for c in plan] == sorted(c.event_at for c in plan)
    assert plan[0].params["Timestamp"] == "2026-11-28T09:00:00.000000000Z"
    assert plan[-1].event == "transcription-stopped"


def test_track_as_label():
    plan = events(load_conversation(), SETTINGS, IDENTITY, Faults(track_as_label=True))
    tracks = {c.params["Track"] for c in plan if c.event == "transcription-content"}
    assert tracks == {"customer", "agent"}


def test_provider_data_only_when_enabled():
    plain = events(load_conversation(), SETTINGS, IDENTITY)
    assert not any("ProviderData" in c.params for c in plain)
    assert not any("TranscriptionProviderData" in c.params for c in plain)
    settings = TranscriptionSettings("http://127.0.0.1:9/cb", enable_provider_data=True)
    rich = [c for c in events(load_conversation(), settings, IDENTITY) if "Final" in c.params]
    assert rich and not any("ProviderData" in c.params for c in rich)
    envelopes = [json.loads(c.params["TranscriptionProviderData"]) for c in rich]
    assert all(e["Provider"] == "google" and e["ProviderData"]["isFinal"] for e in envelopes)


def _deepgram_content(**settings: object) -> list:
    chosen = TranscriptionSettings(
        "http://127.0.0.1:9/cb",
        transcription_engine="deepgram",
        enable_provider_data=True,
        **settings,  # type: ignore[arg-type]
    )
    plan = events(load_conversation(), chosen, IDENTITY)
    return [c for c in plan if c.event == "transcription-content"]


def test_deepgram_provider_data_is_shaped_as_twilio_documents():
    conversation = load_conversation()
    finals = [c for c in _deepgram_content() if c.params["Final"] == "true"]
    assert len(finals) == len(conversation.utterances)
    for callback, utterance in zip(finals, conversation.utterances, strict=True):
        envelope = json.loads(callback.params["TranscriptionProviderData"])
        assert set(envelope) == {"ProviderData", "ProviderConnectTime", "Provider"}
        assert envelope["Provider"] == "deepgram"
        assert envelope["ProviderConnectTime"] == IDENTITY.stamp(0.0)
        raw = envelope["ProviderData"]
        assert raw["is_final"] is True
        # start and duration: seconds since ProviderConnectTime, the conversation's timeline.
        assert raw["start"] == pytest.approx(utterance.at, abs=0.001)
        assert raw["duration"] == pytest.approx(utterance.duration, abs=0.001)
        (alternative,) = raw["channel"]["alternatives"]
        words = alternative["words"]
        assert [w["punctuated_word"] for w in words] == utterance.text.split()
        assert all(set(w) >= {"word", "start", "end", "confidence"} for w in words)
        assert all(0 <= w["confidence"] <= 1 for w in words)
        bounds = [(w["start"], w["end"]) for w in words]
        assert all(start < end for start, end in bounds)
        assert bounds == sorted(bounds)
        assert utterance.at <= bounds[0][0] and bounds[-1][1] <= utterance.at + utterance.duration


def test_deepgram_default_model_is_nova_2():
    (first, *_) = _deepgram_content()
    raw = json.loads(first.params["TranscriptionProviderData"])["ProviderData"]
    assert raw["metadata"]["model_info"]["name"] == "nova-2"
    chosen = TranscriptionSettings("http://127.0.0.1:9/cb", transcription_engine="deepgram")
    started = events(load_conversation(), chosen, IDENTITY)[0].params
    assert json.loads(started["ProviderConfiguration"])["speechModel"] == "nova-2"


def test_unknown_speech_model_fails_with_a_configuration_error():
    chosen = TranscriptionSettings(
        "http://127.0.0.1:9/cb", transcription_engine="deepgram", speech_model="telephony"
    )
    plan = events(load_conversation(), chosen, IDENTITY)
    assert [c.event for c in plan] == [
        "transcription-started",
        "transcription-error",
        "transcription-stopped",
    ]
    assert plan[1].params["TranscriptionErrorCode"] == "32650"
    assert "telephony" in plan[1].params["TranscriptionError"]


def test_partial_results_carry_stability_and_no_confidence_on_every_content_event():
    content = _deepgram_content(partial_results=True)
    partials = [c for c in content if c.params["Final"] == "false"]
    finals = [c for c in content if c.params["Final"] == "true"]
    assert partials and finals
    for partial in partials:
        assert "confidence" not in json.loads(partial.params["TranscriptionData"])
        assert 0 < float(partial.params["Stability"]) < 1
    for final in finals:
        assert "confidence" not in json.loads(final.params["TranscriptionData"])
        assert float(final.params["Stability"]) == FINAL_STABILITY
    plain = _deepgram_content(partial_results=False)
    assert all(c.params["Final"] == "true" for c in plain)
    assert all("Stability" not in c.params for c in plain)
    assert all("confidence" in json.loads(c.params["TranscriptionData"]) for c in plain)


@pytest.mark.parametrize(("digits", "fraction"), [(3, "500"), (6, "500000"), (9, "500000000")])
def test_timestamp_precisions(digits, fraction):
    identity = replace(IDENTITY, started_at=IDENTITY.started_at + timedelta(milliseconds=500))
    plan = events(load_conversation(), SETTINGS, replace(identity, timestamp_digits=digits))
    assert plan[0].params["Timestamp"] == f"2026-11-28T09:00:00.{fraction}Z"


def test_default_timestamp_breaks_a_microsecond_parser():
    stamp = events(load_conversation(), SETTINGS, IDENTITY)[0].params["Timestamp"]
    with pytest.raises(ValueError):
        datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")


def test_track_drift_numbers_a_final_after_the_other_party_s_later_speech():
    def inversions(plan: list) -> list:
        """(earlier speech, later speech) pairs of the two tracks numbered the other way."""
        spoken = [
            (c.sequence_id, json.loads(c.params["TranscriptionProviderData"])["ProviderData"])
            for c in plan
            if c.event == "transcription-content" and c.params["Final"] == "true"
        ]
        return [
            (a, b) for a in spoken for b in spoken if a[1]["start"] < b[1]["start"] and a[0] > b[0]
        ]

    chosen = TranscriptionSettings(
        "http://127.0.0.1:9/cb", transcription_engine="deepgram", enable_provider_data=True
    )
    in_step = events(load_conversation(), chosen, IDENTITY)
    assert inversions(in_step) == []
    drifted = events(load_conversation(), chosen, IDENTITY, Faults(track_drift=3.0))
    assert inversions(drifted)
    assert [c.sequence_id for c in drifted] == list(range(1, len(drifted) + 1))
    for track in ("inbound_track", "outbound_track"):
        # Per track, production order is still speaking order.
        starts = [
            json.loads(c.params["TranscriptionProviderData"])["ProviderData"]["start"]
            for c in drifted
            if c.params.get("Track") == track and c.params["Final"] == "true"
        ]
        assert starts == sorted(starts)
    assert drifted[-1].event == "transcription-stopped"


def test_error_codes_are_twilio_s():
    with pytest.raises(ValueError, match="32650"):
        Faults(error_code="95100")


def test_error_ends_the_transcription():
    plan = events(load_conversation(), SETTINGS, IDENTITY, Faults(error_at=8.0))
    names = [c.event for c in plan]
    assert names[-2:] == ["transcription-error", "transcription-stopped"]
    error = plan[-2].params
    assert error["TranscriptionErrorCode"] == "32655"
    assert error["TranscriptionError"]
    assert all(c.event_at <= 8.0 for c in plan)
    assert [c.sequence_id for c in plan] == list(range(1, len(plan) + 1))


def test_duplicates_repeat_exact_parameters():
    base = events(load_conversation(), SETTINGS, IDENTITY)
    sent = apply_faults(base, Faults(duplicates=0.5, seed=7))
    copies = [c for c in sent if c.note == "duplicate"]
    assert copies
    for copy in copies:
        assert [c.params for c in sent].count(copy.params) == 2
    assert {c.sequence_id for c in sent} == {c.sequence_id for c in base}


def test_reordering_and_delays_change_delivery_order_only():
    base = events(load_conversation(), SETTINGS, IDENTITY)
    sent = apply_faults(base, Faults(reorder=0.3, delay=0.3, max_delay=3, seed=3))
    order = [c.sequence_id for c in sent]
    assert order != sorted(order)
    assert sorted(order) == [c.sequence_id for c in base]
    assert [c.send_at for c in sent] == sorted(c.send_at for c in sent)
    assert {"reordered", "delayed"} <= {c.note for c in sent}


def test_same_seed_same_timeline():
    faults = Faults(duplicates=0.2, reorder=0.2, delay=0.2, seed=42)
    assert timeline(load_conversation(), SETTINGS, IDENTITY, faults) == timeline(
        load_conversation(), SETTINGS, IDENTITY, faults
    )


def test_stop_early_sends_what_happened_then_stopped():
    plan = timeline(load_conversation(), SETTINGS, IDENTITY)
    rest = stop_early(IDENTITY, plan, 2, 7.0)
    assert rest[-1].event == "transcription-stopped"
    assert all(c.event_at <= 7.0 for c in rest)
    happened = [c for c in plan if c.event_at <= 7.0]
    assert rest[-1].sequence_id == len(happened) + 1
    assert rest[:-1] == plan[2 : len(happened)]


def test_timestamps_are_wall_clock_at_any_speed():
    fast = Identity(
        IDENTITY.account_sid,
        IDENTITY.call_sid,
        IDENTITY.transcription_sid,
        IDENTITY.started_at,
        speed=10.0,
    )
    plan = events(load_conversation(), SETTINGS, fast)
    first_final = next(c for c in plan if c.params.get("Final") == "true")
    utterance = load_conversation().utterances[0]
    seconds = (utterance.at + utterance.duration) / 10.0
    assert first_final.params["Timestamp"] == f"2026-11-28T09:00:{seconds:09.6f}000Z"


def test_conversation_language_is_the_default_language_code():
    utterances = [{"track": "inbound", "at": 0, "text": "bonjour"}]
    conversation = parse_conversation({"language_code": "fr-FR", "utterances": utterances})
    plan = events(conversation, SETTINGS, IDENTITY)
    assert {c.params["LanguageCode"] for c in plan if "LanguageCode" in c.params} == {"fr-FR"}
    chosen = TranscriptionSettings("http://127.0.0.1:9/cb", language_code="de-DE")
    plan = events(conversation, chosen, IDENTITY)
    assert {c.params["LanguageCode"] for c in plan if "LanguageCode" in c.params} == {"de-DE"}
    english = events(load_conversation(), SETTINGS, IDENTITY)
    assert {c.params["LanguageCode"] for c in english if "LanguageCode" in c.params} == {"en-US"}
    with pytest.raises(ConversationError, match="BCP-47"):
        parse_conversation({"language_code": "en-USName", "utterances": utterances})


def test_max_delay_zero_delays_nothing():
    base = events(load_conversation(), SETTINGS, IDENTITY)
    sent = apply_faults(base, Faults(delay=1.0, max_delay=0.0, seed=5))
    assert [(c.sequence_id, c.send_at) for c in sent] == [(c.sequence_id, c.send_at) for c in base]
    lags = [
        late.send_at - late.event_at
        for late in apply_faults(base, Faults(delay=1.0, max_delay=0.1, seed=5))
    ]
    assert all(0 <= lag <= 0.1 for lag in lags)


def test_error_at_zero_still_starts():
    plan = events(load_conversation(), SETTINGS, IDENTITY, Faults(error_at=0.0))
    assert [c.event for c in plan] == [
        "transcription-started",
        "transcription-error",
        "transcription-stopped",
    ]
    assert [c.sequence_id for c in plan] == [1, 2, 3]
