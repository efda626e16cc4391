"""Forged variants of one captured, signed callback; replays; what the door refuses before any
HMAC. In-process app with a real Redis (the same attacks under gunicorn: test_attacks_served)."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlencode

import pytest
from twilio.request_validator import RequestValidator

from receiver import create_app
from receiver.config import Settings
from receiver.events import REASONS, InvalidEvent, parse
from receiver.protocol import timestamp
from receiver.storage import open_store
from receiver.storage.contract import Keys
from receiver.storage.durable import Drainer, DurableWriter
from receiver.storage.spool import Spool

from .support.streams import call_entries
from .support.twilio_calls import (
    CALLBACK_PATH,
    TOKEN,
    callback,
    content,
    post,
    raw_body,
    sid,
    sign,
    split_name_variants,
)

BASE = "http://localhost"
URL = BASE + CALLBACK_PATH
WELL_FORMED = "A" * 27 + "="

KEYS = Keys()


def raw_post(client, body: str, signature: str, content_type: str | None = None):
    """POST ``body`` exactly as given (a forged body is not what urlencode would make)."""
    return client.post(
        CALLBACK_PATH,
        data=body.encode(),
        content_type=content_type or "application/x-www-form-urlencoded",
        headers={"X-Twilio-Signature": signature},
        base_url=BASE,
    )


class _Multi(dict):
    """name -> values, as twilio's RequestValidator reads a repeated parameter."""

    def getall(self, name: str) -> list[str]:
        return self[name]


def _multi(body: str) -> _Multi:
    return _Multi(parse_qs(body, keep_blank_values=True))


def stored(redis_client, call_sid: str) -> list[dict]:
    return call_entries(redis_client, call_sid)


# -- one captured callback cannot become several events -------------------------------------


def test_a_folded_body_verifies_but_is_not_a_new_event(client, redis_client, call_sid):
    original = content(call_sid, sid("GT"), 7, "hello")
    signature = sign(URL, original)
    assert raw_post(client, raw_body(original), signature).status_code == 200
    # SequenceId folded into LanguageCode's value: the signed string is the same.
    folded = {k: v for k, v in original.items() if k != "SequenceId"}
    folded["LanguageCode"] = "en-USSequenceId7"
    assert RequestValidator(TOKEN).compute_signature(URL, folded) == signature
    response = raw_post(client, raw_body(folded), signature)
    assert response.status_code == 400
    assert len(stored(redis_client, call_sid)) == 1
    [(_id, dead)] = redis_client.xrange("rtt:rejected")
    assert dead["field"] in ("SequenceId", "LanguageCode")  # refused by either check


def test_copies_appended_to_a_signed_body_are_refused(client, redis_client, call_sid):
    original = content(call_sid, sid("GT"), 7, "hello", final=False)
    signature = sign(URL, original)
    body = raw_body(original)
    assert raw_post(client, body, signature).status_code == 200
    for copies in (1, 2, 3):
        forged = body + "&Final=false" * copies
        assert RequestValidator(TOKEN).compute_signature(URL, _multi(forged)) == signature
        response = raw_post(client, forged, signature)
        assert response.status_code == 400
        assert "Final" in response.get_json()["error"]
    assert len(stored(redis_client, call_sid)) == 1


def test_a_folded_started_cannot_rewrite_a_track_label(client, redis_client, call_sid):
    gt = sid("GT")
    started = callback(
        "started",
        call_sid,
        gt,
        1,
        InboundTrackLabel="customer",
        OutboundTrackLabel="agent",
        PartialResults="true",
        Track="both_tracks",
    )
    signature = sign(URL, started)
    assert raw_post(client, raw_body(started), signature).status_code == 200
    # OutboundTrackLabel swallows PartialResults and SequenceId: no identity, a new label.
    folded = {k: v for k, v in started.items() if k not in ("PartialResults", "SequenceId")}
    folded["OutboundTrackLabel"] = "agentPartialResultstrueSequenceId1"
    assert RequestValidator(TOKEN).compute_signature(URL, folded) == signature
    assert raw_post(client, raw_body(folded), signature).status_code == 400
    assert [e["outbound_track_label"] for e in stored(redis_client, call_sid)] == ["agent"]


def test_every_variant_of_one_signed_request_is_one_dead_letter(client, redis_client, call_sid):
    original = content(call_sid, sid("GT"), 7, "hello there", final=False)
    signature = sign(URL, original)
    body = raw_body(original)
    variants = [body + "&Final=false" * copies for copies in range(1, 6)]
    variants += split_name_variants(original, "TranscriptionData", 11)
    for variant in variants:
        assert RequestValidator(TOKEN).compute_signature(URL, _multi(variant)) == signature
        assert raw_post(client, variant, signature).status_code == 400
    assert redis_client.xlen("rtt:rejected") == 1
    assert stored(redis_client, call_sid) == []


def test_names_a_sender_chose_reach_no_metric_label_and_no_log_line(client, call_sid, caplog):
    """Each variant's repeated name is new text: as a label, one new series per request (a
    Prometheus DoS), and the transcript in the log."""
    original = content(call_sid, sid("GT"), 7, "my card is 4111", final=False)
    signature = sign(URL, original)
    with caplog.at_level(logging.INFO, logger="receiver.callbacks"):
        for variant in split_name_variants(original, "TranscriptionData", 30):
            assert raw_post(client, variant, signature).status_code == 400
    lines = [json.dumps(r.fields) for r in caplog.records if r.name == "receiver.callbacks"]
    assert len(lines) == 30 and all('"reason": "repeated"' in line for line in lines)
    assert not any("transcript" in line or "4111" in line for line in lines)
    exposition = client.get("/metrics").get_data(as_text=True)
    assert set(re.findall(r'reason="([^"]*)"', exposition)) <= {"", *REASONS}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LanguageCode", "en-USSequenceId7"),
        ("LanguageCode", "e"),
        ("Timestamp", "2026-11-28T09:00:00.000000ZTrackinbound_track"),
        ("Timestamp", "yesterday"),
        ("Final", "trueLanguageCodeen-US"),
        ("Final", "1"),
        ("Stability", "0.8Timestamp"),
        ("Track", "x" * 65),
        ("Track", "customer\x1b]0;owned\x07"),
    ],
)
def test_every_documented_value_is_held_to_its_form(call_sid, name, value):
    params = content(call_sid, sid("GT"), 3, "hi", final=False)
    params[name] = value
    with pytest.raises(InvalidEvent) as caught:
        parse({k: [v] for k, v in params.items()}, received_at="2026-12-01T00:00:00Z")
    assert caught.value.field == name


def test_started_values_are_held_to_their_form(call_sid):
    for name, value in (
        ("PartialResults", "trueSequenceId1"),
        ("InboundTrackLabel", "c" * 65),
        ("Track", "both_tracksTranscriptionEnginegoogle" * 2),
        ("LanguageCode", "en-USNamesupport"),
        ("LanguageCode", "en-USName"),  # an empty Name folded in: the same signed text
        ("LanguageCode", "es-419Name"),
        ("LanguageCode", "cmn-Hans-CNName"),
        ("LanguageCode", "multiName"),
    ):
        params = callback("started", call_sid, sid("GT"), 1, **{name: value})
        with pytest.raises(InvalidEvent) as caught:
            parse({k: [v] for k, v in params.items()}, received_at="2026-12-01T00:00:00Z")
        assert caught.value.field == name


@pytest.mark.parametrize(
    "code",
    ["en-US", "en", "fr-FR", "de-DE", "es-ES", "es-419", "en-us", "cmn-Hans-CN", "yue-Hant-HK",
     "zh-Hant", "sr-Latn-RS", "de-DE-1901", "sl-rozaj", "multi"],
)  # fmt: skip
def test_language_codes_twilio_sends_pass(call_sid, code):
    params = callback("started", call_sid, sid("GT"), 1, LanguageCode=code)
    event = parse({k: [v] for k, v in params.items()}, received_at="2026-12-01T00:00:00Z")
    assert event.settings["language_code"] == code


def test_twilio_timestamps_with_nine_digits_and_labels_in_track_pass(call_sid):
    params = content(call_sid, sid("GT"), 3, "hi", track="customer")
    params["Timestamp"] = "2026-01-23T21:47:44.614701800Z"
    event = parse({k: [v] for k, v in params.items()}, received_at="2026-12-01T00:00:00Z")
    assert event.track_label == "customer"


# -- replays after the memory of an event has expired ----------------------------------------


def _at(delta: timedelta) -> str:
    return timestamp(datetime.now(UTC) + delta)


@pytest.mark.parametrize(
    ("delta", "kind"), [(timedelta(days=2), "too_old"), (-timedelta(minutes=10), "future")]
)
def test_a_stale_or_future_event_is_a_counted_logged_dead_letter(
    client, redis_client, call_sid, caplog, delta, kind
):
    params = callback("stopped", call_sid, sid("GT"), 9)
    params["Timestamp"] = _at(-delta)
    with caplog.at_level(logging.WARNING, logger="receiver.views.callback"):
        response = post(client, params)
    assert response.status_code == 400
    assert "Timestamp" in response.get_json()["error"]
    assert stored(redis_client, call_sid) == []
    [(_id, dead)] = redis_client.xrange("rtt:rejected")
    assert dead["field"] == "Timestamp"
    assert "MAX_EVENT_AGE_SECONDS" in dead["reason"] or "ahead" in dead["reason"]
    assert any("Timestamp" in r.getMessage() for r in caplog.records)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert f'reason="timestamp_{kind}"' in metrics


@pytest.mark.parametrize(
    ("delta", "kind"), [(timedelta(days=2), "too_old"), (-timedelta(minutes=10), "future")]
)
def test_a_variant_of_a_stale_capture_is_refused_as_a_replay(
    client, redis_client, call_sid, delta, kind
):
    """The age comes first: a fold or a repeat does not turn a replay into a malformed
    callback (counted where a person looks for Twilio's mistakes, not for replays)."""
    original = content(call_sid, sid("GT"), 7, "hello", final=False)
    original["Timestamp"] = _at(-delta)
    signature = sign(URL, original)
    folded = {k: v for k, v in original.items() if k != "SequenceId"}
    folded["LanguageCode"] += "SequenceId7"
    for variant in (
        raw_body(original) + "&Final=false",
        raw_body(folded),
    ):
        response = raw_post(client, variant, signature)
        assert response.status_code == 400
        assert "Timestamp" in response.get_json()["error"]
    [(_id, dead)] = redis_client.xrange("rtt:rejected")
    assert dead["field"] == "Timestamp"
    metrics = client.get("/metrics").get_data(as_text=True)
    assert f'reason="timestamp_{kind}"' in metrics


def test_replays_after_retention_are_refused(settings, redis_client, call_sid):
    """CALL_RETENTION_SECONDS=60: a started+content captured earlier than that is not stored
    again once the call's keys have expired."""
    short = replace(settings, call_retention_seconds=60, max_event_age_seconds=60)
    client = create_app(short).test_client()
    gt = sid("GT")
    captured = [callback("started", call_sid, gt, 1), content(call_sid, gt, 2, "hi")]
    for params in captured:
        params["Timestamp"] = _at(-timedelta(seconds=61))
        assert post(client, params).status_code == 400
    assert not redis_client.exists("rtt:events")
    assert not redis_client.zscore("rtt:calls:active", call_sid)
    fresh = content(call_sid, gt, 3, "now")
    assert post(client, fresh).status_code == 200


def test_an_event_from_a_clock_ahead_is_remembered_as_long_as_it_can_be_replayed(
    settings, redis_client, call_sid
):
    """Stamped 150 s ahead, an event is accepted until 150 s + MAX_EVENT_AGE_SECONDS from now:
    its identity must live that long, even when that is past CALL_RETENTION_SECONDS."""
    short = replace(settings, call_retention_seconds=60, max_event_age_seconds=60)
    client = create_app(short).test_client()
    gt = sid("GT")
    params = content(call_sid, gt, 2, "from the future")
    params["Timestamp"] = _at(timedelta(seconds=150))
    assert post(client, params).status_code == 200
    assert redis_client.ttl(KEYS.seen(call_sid, gt)) >= 150 + 60 - 5


def test_the_spools_own_replays_are_not_refused_for_age(redis_server, redis_client, tmp_path):
    call_sid = "CA" + "1" * 32
    params = content(call_sid, sid("GT"), 2, "spooled long ago")
    params["Timestamp"] = _at(-timedelta(days=3))
    event = parse({k: [v] for k, v in params.items()}, received_at="2026-12-01T00:00:00Z")
    spool = Spool(tmp_path / "spool")
    spool.append(event)
    store = open_store(Settings(auth_tokens=(TOKEN,), redis_url=redis_server.url))
    drainer = Drainer(DurableWriter(store, spool))
    with drainer.spool.drain_lock() as held:
        assert held and drainer.drain()
    assert [e["transcript"] for e in stored(redis_client, call_sid)] == ["spooled long ago"]


# -- HEAD and empty POSTs -----------------------------------------------------------------------


def test_head_with_a_get_callbacks_signature_is_405_and_stores_nothing(client, redis_client):
    params = callback("stopped", "CA" + "2" * 32, sid("GT"), 5)
    path = CALLBACK_PATH + "?" + urlencode(params)
    response = client.head(path, headers={"X-Twilio-Signature": sign(BASE + path)}, base_url=BASE)
    assert response.status_code == 405
    assert "GET" in response.headers["Allow"]
    assert redis_client.dbsize() == 0


def test_a_signed_post_without_a_form_is_400_and_not_stored(client, redis_client):
    for content_type in (None, "application/x-www-form-urlencoded"):
        response = client.post(
            CALLBACK_PATH,
            headers={"X-Twilio-Signature": sign(URL)},
            content_type=content_type,
            base_url=BASE,
        )
        assert response.status_code == 400, content_type
    assert redis_client.dbsize() == 0


# -- unsigned requests are cheap: the order of the checks shows in the answers ------------------


def test_no_signature_header_is_403_before_the_body_is_read(client, redis_client):
    body = "&".join(f"n{i}=v" for i in range(30_000)) + "&bad=%ff"
    response = client.post(
        CALLBACK_PATH, data=body.encode(), content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 403
    assert "missing" in response.get_json()["error"]
    for malformed in ("not base64!", "s", "A" * 200):
        assert raw_post(client, body, malformed).status_code == 403
    # Neither read (413 for its size) nor typed (415): the header is looked at first.
    for content_type, size in (("application/x-www-form-urlencoded", 2**21), ("text/plain", 10)):
        response = raw_post(client, "a" * size, "s", content_type)
        assert response.status_code == 403, content_type
    assert redis_client.dbsize() == 0


def test_more_than_100_parameters_is_400_before_any_hmac(client, redis_client, call_sid):
    params = content(call_sid, sid("GT"), 2, "hi")
    params.update({f"X{n:03d}": "1" for n in range(100 - len(params) + 1)})
    assert len(params) == 101
    # Correctly signed, yet refused for its size: the count comes before the signature.
    response = raw_post(client, raw_body(params), sign(URL, params))
    assert response.status_code == 400
    assert "100 parameters" in response.get_json()["error"]
    query = CALLBACK_PATH + "?" + urlencode(params)
    response = client.get(query, headers={"X-Twilio-Signature": sign(BASE + query)})
    assert response.status_code == 400
    assert redis_client.dbsize() == 0
    del params["X000"]
    assert raw_post(client, raw_body(params), sign(URL, params)).status_code == 200


def test_multipart_is_415_even_when_signed(client, redis_client, call_sid):
    params = content(call_sid, sid("GT"), 2, "hi")
    response = client.post(
        CALLBACK_PATH,
        data=params,
        content_type="multipart/form-data",
        headers={"X-Twilio-Signature": sign(URL, params)},
        base_url=BASE,
    )
    assert response.status_code == 415
    assert redis_client.dbsize() == 0


# -- who picks the checked URL ------------------------------------------------------------------


def test_the_403_does_not_echo_the_checked_url(client):
    params = content("CA" + "3" * 32, sid("GT"), 2, "my card number is 4111")
    path = CALLBACK_PATH + "?" + urlencode(params)
    response = client.get(path, headers={"X-Twilio-Signature": WELL_FORMED})
    assert response.status_code == 403
    body = response.get_data(as_text=True)
    assert "4111" not in body and "localhost" not in body


def test_only_http_and_https_are_accepted_as_the_forwarded_scheme(settings, redis_client):
    client = create_app(replace(settings, proxy_hops=1)).test_client()
    params = callback("stopped", "CA" + "4" * 32, sid("GT"), 3)
    for scheme, expected in (("javascript", 400), ("https", 200)):
        url = f"{scheme}://rtt.example.com{CALLBACK_PATH}"
        response = client.post(
            CALLBACK_PATH,
            data=params,
            headers={
                "X-Twilio-Signature": sign(url, params),
                "X-Forwarded-Proto": scheme,
                "X-Forwarded-Host": "rtt.example.com",
            },
        )
        assert response.status_code == expected, response.get_json()


def test_the_rejected_params_of_a_folded_body_are_kept_verbatim(client, redis_client, call_sid):
    params = content(call_sid, sid("GT"), 7, "hi")
    params["LanguageCode"] = "en-USSequenceId7"
    del params["SequenceId"]
    assert post(client, params).status_code == 400
    [(_id, dead)] = redis_client.xrange("rtt:rejected")
    assert json.loads(dead["params"])["LanguageCode"] == ["en-USSequenceId7"]
