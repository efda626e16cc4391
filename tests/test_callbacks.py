"""The callback endpoint through Flask's test client, against a real Redis server."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from urllib.parse import urlencode

import pytest

from receiver import create_app
from receiver.events import parse

from .support.twilio_calls import (
    ACCOUNT_SID,
    CALLBACK_PATH,
    callback,
    content,
    get,
    long_utterance,
    post,
    sid,
    sign,
    whole_call,
)


def call_entries(redis_client, call_sid):
    return [fields for _id, fields in redis_client.xrange(f"rtt:call:{{{call_sid}}}")]


@pytest.mark.parametrize("send", [post, get], ids=["POST", "GET"])
def test_every_event_type_is_stored(client, redis_client, call_sid, send):
    gt = sid("GT")
    events = [
        callback(
            "started",
            call_sid,
            gt,
            1,
            Track="both_tracks",
            LanguageCode="en-US",
            InboundTrackLabel="customer",
            OutboundTrackLabel="agent",
            PartialResults="true",
            TranscriptionEngine="google",
            ProviderConfiguration='{"model":"telephony"}',
            Name="t1",
        ),
        content(call_sid, gt, 2, "hello there", final=False),
        content(call_sid, gt, 3, "hello there friend", confidence=0.91),
        callback(
            "error",
            call_sid,
            gt,
            4,
            TranscriptionErrorCode="32650",
            TranscriptionError="provider hiccup",
        ),
        callback("stopped", call_sid, gt, 5),
    ]
    for params in events:
        response = send(client, params)
        assert response.status_code == 200, response.get_json()
        assert response.get_json() == {"outcome": "stored"}
    # The call stream keeps lifecycle events and finals; the partial is in the partials stream.
    started, final, error, stopped = call_entries(redis_client, call_sid)
    [(_, partial)] = redis_client.xrange(f"rtt:call:{{{call_sid}}}:partials")
    assert started["event"] == "started"
    assert started["schema"] == "2"
    assert started["name"] == "t1"
    assert started["inbound_track_label"] == "customer"
    assert started["partial_results"] == "true"
    assert started["transcription_engine"] == "google"
    assert started["provider_configuration"] == '{"model":"telephony"}'
    assert partial["final"] == "false"
    assert partial["stability"] == "0.8"
    assert partial["transcript"] == "hello there"
    assert final == {
        "schema": "2",
        "event": "content",
        "account_sid": ACCOUNT_SID,
        "call_sid": call_sid,
        "transcription_sid": gt,
        "sequence_id": "3",
        "timestamp": events[2]["Timestamp"],
        "received_at": final["received_at"],
        "final": "true",
        "transcript": "hello there friend",
        "confidence": "0.91",
        "language_code": "en-US",
        "track": "inbound",
        "track_label": "customer",
    }
    assert final["received_at"].endswith("Z")
    assert error["error_code"] == "32650"
    assert error["error_message"] == "provider hiccup"
    assert stopped["event"] == "stopped"
    assert redis_client.xlen("rtt:events") == 5
    assert "extra" not in final


def test_whole_call_finals_and_labels(client, redis_client, call_sid):
    gt = sid("GT")
    for params in whole_call(call_sid, gt):
        assert post(client, params).status_code == 200
    finals = [json.loads(m) for m in redis_client.zrange(f"rtt:call:{{{call_sid}}}:finals", 0, -1)]
    assert [(f["track_label"], f["transcript"]) for f in finals] == [
        ("customer", "hello I need help"),
        ("agent", "sure what is wrong"),
    ]
    assert redis_client.zscore("rtt:calls:active", call_sid) is None


def test_finals_ordered_by_sequence_whatever_the_arrival(client, redis_client, call_sid):
    gt = sid("GT")
    texts = {seq: f"utterance {seq}" for seq in range(1, 9)}
    for seq in [5, 2, 8, 1, 7, 3, 6, 4]:
        assert post(client, content(call_sid, gt, seq, texts[seq])).status_code == 200
    finals = redis_client.zrange(f"rtt:call:{{{call_sid}}}:finals", 0, -1, withscores=True)
    assert [json.loads(m)["transcript"] for m, _ in finals] == [texts[s] for s in range(1, 9)]
    assert [int(score) for _, score in finals] == list(range(1, 9))


def test_duplicate_delivery_is_2xx_and_stored_once(client, redis_client, call_sid):
    gt = sid("GT")
    params = content(call_sid, gt, 7, "once only")
    assert post(client, params).get_json() == {"outcome": "stored"}
    again = post(client, params)
    assert again.status_code == 200
    assert again.get_json() == {"outcome": "duplicate"}
    assert len(call_entries(redis_client, call_sid)) == 1
    assert redis_client.xlen("rtt:events") == 1
    assert redis_client.zcard(f"rtt:call:{{{call_sid}}}:finals") == 1


def test_concurrent_duplicates_land_once(app, redis_client, call_sid):
    gt = sid("GT")
    params = content(call_sid, gt, 3, "racing")
    store = app.extensions["receiver"].store
    event = parse({k: [v] for k, v in params.items()}, received_at="2026-11-28T09:00:00Z")
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda _: store.append(event), range(64)))
    assert outcomes.count("stored") == 1
    assert outcomes.count("duplicate") == 63
    assert len(call_entries(redis_client, call_sid)) == 1


def test_event_without_sequence_id_is_a_dead_letter(client, redis_client, call_sid):
    params = callback("stopped", call_sid, sid("GT"), None)
    response = post(client, params)
    assert response.status_code == 400
    assert "SequenceId" in response.get_json()["error"]
    [(_id, rejected)] = redis_client.xrange("rtt:rejected")
    assert rejected["field"] == "SequenceId"
    assert not redis_client.exists("rtt:events")


@pytest.mark.parametrize(
    ("name", "value", "prefix"),
    [
        ("CallSid", "CA" + "0" * 32 + "\n", "CA"),  # "$" would have let the newline through
        ("TranscriptionSid", "GT" + "0" * 31, "GT"),
        ("CallSid", "XX" + "0" * 32, "CA"),
    ],
)
def test_a_sid_of_another_shape_is_a_dead_letter_naming_its_prefix(
    client, redis_client, call_sid, name, value, prefix
):
    params = {**callback("started", call_sid, sid("GT"), 1), name: value}
    response = post(client, params)
    assert response.status_code == 400
    assert f"must be {prefix} followed by 32 hex digits" in response.get_json()["error"]
    assert not redis_client.exists("rtt:events")


def test_parameters_not_sent_are_absent_not_empty(client, redis_client, call_sid):
    params = content(call_sid, sid("GT"), 4, "hi")
    del params["LanguageCode"]
    assert post(client, params).status_code == 200
    entry = call_entries(redis_client, call_sid)[0]
    assert "language_code" not in entry
    assert "" not in entry.values()


def test_every_key_of_a_call_lives_as_long_as_its_latest_event(client, redis_client, call_sid):
    gt = sid("GT")
    post(client, callback("started", call_sid, gt, 1, InboundTrackLabel="customer"))
    post(client, content(call_sid, gt, 2, "a final"))
    prefix = f"rtt:call:{{{call_sid}}}"
    suffixes = ("", f":seen:{gt}", ":labels", ":finals", ":transcriptions")
    for suffix in suffixes:
        redis_client.expire(prefix + suffix, 5)
    post(client, content(call_sid, gt, 3, "a partial", final=False))
    for suffix in suffixes:
        assert redis_client.ttl(prefix + suffix) > 5, suffix


class TestTrackLabels:
    def test_label_sent_in_track_is_kept_and_mapped(self, client, redis_client, call_sid):
        gt = sid("GT")
        post(
            client,
            callback(
                "started", call_sid, gt, 1, InboundTrackLabel="caller", OutboundTrackLabel="rep"
            ),
        )
        post(client, content(call_sid, gt, 2, "hi", track="rep"))
        entry = call_entries(redis_client, call_sid)[1]
        assert (entry["track"], entry["track_label"]) == ("outbound", "rep")

    def test_unknown_label_in_track_is_kept_without_a_track(self, client, redis_client, call_sid):
        post(client, content(call_sid, sid("GT"), 2, "hi", track="somebody"))
        entry = call_entries(redis_client, call_sid)[0]
        assert entry["track_label"] == "somebody"
        assert "track" not in entry

    def test_label_remembered_from_started(self, client, redis_client, call_sid):
        gt = sid("GT")
        post(
            client,
            callback(
                "started", call_sid, gt, 1, InboundTrackLabel="customer", OutboundTrackLabel="agent"
            ),
        )
        post(
            client,
            content(call_sid, gt, 2, "hi", track="outbound_track"),
            query={"outbound_label": "url-agent"},
        )
        assert call_entries(redis_client, call_sid)[1]["track_label"] == "agent"

    def test_url_label_before_started_arrives(self, client, redis_client, call_sid):
        gt = sid("GT")
        query = {"inbound_label": "customer", "outbound_label": "agent"}
        post(client, content(call_sid, gt, 2, "early", track="inbound_track"), query=query)
        post(client, callback("started", call_sid, gt, 1), query=query)
        entry = call_entries(redis_client, call_sid)[0]
        assert (entry["track"], entry["track_label"]) == ("inbound", "customer")

    def test_url_labels_with_get(self, client, redis_client, call_sid):
        params = content(call_sid, sid("GT"), 2, "hi", track="outbound_track")
        params["outbound_label"] = "agent"
        assert get(client, params).status_code == 200
        entry = call_entries(redis_client, call_sid)[0]
        assert entry["track_label"] == "agent"
        assert "extra" not in entry  # our own query parameters are not Twilio's

    def test_default_label_is_the_track(self, client, redis_client, call_sid):
        post(client, content(call_sid, sid("GT"), 2, "hi", track="outbound_track"))
        assert call_entries(redis_client, call_sid)[0]["track_label"] == "outbound"

    def test_labels_are_per_transcription(self, client, redis_client, call_sid):
        first, second = sid("GT"), sid("GT")
        post(client, callback("started", call_sid, first, 1, InboundTrackLabel="customer"))
        post(client, content(call_sid, second, 2, "hi"))
        assert call_entries(redis_client, call_sid)[1]["track_label"] == "inbound"


def test_unknown_event_and_parameters_are_kept(client, redis_client, call_sid):
    params = callback("paused", call_sid, sid("GT"), 9, NewField="x", Another="y")
    assert post(client, params).status_code == 200
    entry = call_entries(redis_client, call_sid)[0]
    assert entry["event"] == "transcription-paused"
    assert json.loads(entry["extra"]) == {"NewField": "x", "Another": "y"}


def test_unknown_transcription_data_keys_are_kept(client, redis_client, call_sid):
    params = content(call_sid, sid("GT"), 2, "hi")
    params["TranscriptionData"] = json.dumps({"transcript": "hi", "confidence": 0.5, "words": [1]})
    params["ProviderData"] = '{"raw": true}'
    post(client, params)
    extra = json.loads(call_entries(redis_client, call_sid)[0]["extra"])
    assert extra == {"TranscriptionData": '{"words": [1]}', "ProviderData": '{"raw": true}'}


def test_active_calls_index(client, redis_client, call_sid):
    gt = sid("GT")
    post(client, content(call_sid, gt, 2, "first event, no started yet"))
    assert redis_client.zscore("rtt:calls:active", call_sid) is not None
    post(client, callback("stopped", call_sid, gt, 3))
    assert redis_client.zscore("rtt:calls:active", call_sid) is None
    post(client, content(call_sid, gt, 1, "late straggler"))
    assert redis_client.zscore("rtt:calls:active", call_sid) is None


class TestSignatureAtTheEndpoint:
    def test_missing_signature_is_403_and_nothing_stored(self, client, redis_client, call_sid):
        response = client.post(CALLBACK_PATH, data=content(call_sid, sid("GT"), 1, "x"))
        assert response.status_code == 403
        assert "X-Twilio-Signature" in response.get_json()["error"]
        assert redis_client.keys("*") == []

    def test_wrong_token_is_403(self, client, redis_client, call_sid):
        response = post(client, content(call_sid, sid("GT"), 1, "x"), token="wrong")
        assert response.status_code == 403
        assert redis_client.keys("*") == []

    def test_tampered_body_is_403(self, client, redis_client, call_sid):
        params = content(call_sid, sid("GT"), 1, "x")
        sig = sign("http://localhost" + CALLBACK_PATH, params)
        params["TranscriptionData"] = '{"transcript": "forged"}'
        response = client.post(CALLBACK_PATH, data=params, headers={"X-Twilio-Signature": sig})
        assert response.status_code == 403
        assert redis_client.keys("*") == []

    def test_rotated_tokens(self, settings, redis_client, call_sid):
        client = create_app(replace(settings, auth_tokens=("new", "12345"))).test_client()
        assert (
            post(client, content(call_sid, sid("GT"), 1, "old"), token="12345").status_code == 200
        )
        assert post(client, content(call_sid, sid("GT"), 1, "new"), token="new").status_code == 200
        assert post(client, content(call_sid, sid("GT"), 1, "x"), token="other").status_code == 403

    def test_other_account_is_refused(self, settings, redis_client, call_sid):
        mine = "AC" + "f" * 32
        client = create_app(replace(settings, account_sid=mine)).test_client()
        response = post(client, content(call_sid, sid("GT"), 1, "x"))
        assert response.status_code == 403
        assert "AccountSid" in response.get_json()["error"]
        assert redis_client.keys("*") == []
        ok = content(call_sid, sid("GT"), 1, "x", AccountSid=mine)
        assert post(client, ok).status_code == 200


class TestPublicUrl:
    PUBLIC = "https://rtt.example.com/hooks"

    def app_with(self, settings, **changes):
        return create_app(replace(settings, **changes)).test_client()

    def test_public_base_url_is_what_is_checked(self, settings, redis_client, call_sid):
        client = self.app_with(settings, public_base_url=self.PUBLIC)
        params = content(call_sid, sid("GT"), 1, "x")
        sig = sign(self.PUBLIC + CALLBACK_PATH + "?inbound_label=a", params)
        response = client.post(
            CALLBACK_PATH + "?inbound_label=a", data=params, headers={"X-Twilio-Signature": sig}
        )
        assert response.status_code == 200

    @pytest.mark.parametrize(
        "signed_for",
        [
            "http://rtt.example.com/hooks",  # wrong scheme
            "https://evil.example.com/hooks",  # wrong host
            "https://rtt.example.com",  # missing prefix
            "http://localhost",  # the URL the app sees
        ],
    )
    def test_public_base_url_mismatch_fails(self, settings, redis_client, call_sid, signed_for):
        client = self.app_with(settings, public_base_url=self.PUBLIC)
        params = content(call_sid, sid("GT"), 1, "x")
        sig = sign(signed_for + CALLBACK_PATH, params)
        response = client.post(CALLBACK_PATH, data=params, headers={"X-Twilio-Signature": sig})
        assert response.status_code == 403

    def test_proxy_hops_trusts_forwarded_headers(self, settings, redis_client, call_sid):
        client = self.app_with(settings, proxy_hops=1)
        params = content(call_sid, sid("GT"), 1, "x")
        headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "rtt.example.com"}
        response = post(client, params, base="https://rtt.example.com", headers=headers)
        # The test client itself speaks plain http to localhost; only the headers say https.
        assert response.status_code == 200

    def test_forwarded_headers_ignored_without_proxy_hops(self, client, redis_client, call_sid):
        params = content(call_sid, sid("GT"), 1, "x")
        sig = sign("https://rtt.example.com" + CALLBACK_PATH, params)
        headers = {
            "X-Twilio-Signature": sig,
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "rtt.example.com",
        }
        assert client.post(CALLBACK_PATH, data=params, headers=headers).status_code == 403

    def test_only_the_configured_hops_are_trusted(self, settings, redis_client, call_sid):
        client = self.app_with(settings, proxy_hops=1)
        params = content(call_sid, sid("GT"), 1, "x")
        sig = sign("https://evil.example.com" + CALLBACK_PATH, params)
        # The client forged the first value; the one proxy we trust appended the real host.
        headers = {
            "X-Twilio-Signature": sig,
            "X-Forwarded-Proto": "https, https",
            "X-Forwarded-Host": "evil.example.com, rtt.example.com",
        }
        assert client.post(CALLBACK_PATH, data=params, headers=headers).status_code == 403

    def test_query_string_is_used_as_received(self, client, redis_client, call_sid):
        params = content(call_sid, sid("GT"), 1, "x")
        path = CALLBACK_PATH + "?inbound_label=Jos%C3%A9+P%40rez&x=%20"
        sig = sign("http://localhost" + path, params)
        response = client.post(path, data=params, headers={"X-Twilio-Signature": sig})
        assert response.status_code == 200
        assert call_entries(redis_client, call_sid)[0]["track_label"] == "José P@rez"


class TestBadInput:
    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"CallSid": None}, "CallSid"),
            ({"CallSid": "CA123"}, "CallSid"),
            ({"TranscriptionSid": "XX" + "0" * 32}, "TranscriptionSid"),
            ({"TranscriptionData": "not json"}, "TranscriptionData"),
            ({"TranscriptionData": "[1, 2]"}, "TranscriptionData"),
            ({"SequenceId": "seven"}, "SequenceId"),
            ({"SequenceId": "-1"}, "SequenceId"),
            ({"SequenceId": str(2**24)}, "SequenceId"),
            ({"SequenceId": str(2**53)}, "SequenceId"),
            ({"SequenceId": str(10**14)}, "SequenceId"),
            ({"TranscriptionData": '{"transcript": "caf\\ud800"}'}, "TranscriptionData"),
            ({"SequenceId": "\uff11\uff12"}, "SequenceId"),  # full-width digits
            ({"Final": "maybe"}, "Final"),
            ({"TranscriptionEvent": None}, "TranscriptionEvent"),
        ],
    )
    def test_unparseable_is_400_and_dead_lettered(
        self, client, redis_client, call_sid, change, field
    ):
        params = content(call_sid, sid("GT"), 1, "x")
        for name, value in change.items():
            if value is None:
                params.pop(name)
            else:
                params[name] = value
        response = post(client, params)
        assert response.status_code == 400
        assert field in response.get_json()["error"]
        assert redis_client.xlen("rtt:events") == 0
        assert not redis_client.exists(f"rtt:call:{{{call_sid}}}")
        [(_id, rejected)] = redis_client.xrange("rtt:rejected")
        assert rejected["field"] == field
        assert json.loads(rejected["params"]) == {k: [v] for k, v in params.items()}

    def test_body_over_limit_is_413(self, settings, redis_client, call_sid):
        client = create_app(replace(settings, max_body_bytes=2048)).test_client()
        params = content(call_sid, sid("GT"), 1, "x" * 4000)
        assert post(client, params).status_code == 413
        assert redis_client.keys("*") == []

    @pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
    def test_wrong_method_is_405(self, client, method):
        response = client.open(CALLBACK_PATH, method=method)
        assert response.status_code == 405
        assert response.is_json

    def test_json_body_is_415(self, client, redis_client):
        response = client.post(
            CALLBACK_PATH, json={"CallSid": "x"}, headers={"X-Twilio-Signature": "A" * 27 + "="}
        )
        assert response.status_code == 415


def test_healthz_and_readyz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ready", "redis": "ok"}


def test_readyz_without_redis(settings):
    client = create_app(replace(settings, redis_url="redis://127.0.0.1:1/0")).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503


def test_storage_down_is_503_so_twilio_retries(settings, call_sid):
    client = create_app(replace(settings, redis_url="redis://127.0.0.1:1/0")).test_client()
    response = post(client, content(call_sid, sid("GT"), 1, "x"))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"


def test_the_largest_callbacks_fit_the_default_body_limit(client, redis_client, call_sid):
    """1,000 words with per-word provider data: one result of a 5-minute stream."""
    params = long_utterance(call_sid, sid("GT"), 2, 1000)
    body = urlencode(params)  # the longer escaping (", {, : and , too): Twilio does not say
    assert len(body) > 256 * 1024
    response = client.post(
        CALLBACK_PATH,
        data=body,
        content_type="application/x-www-form-urlencoded",
        headers={"X-Twilio-Signature": sign("http://localhost" + CALLBACK_PATH, params)},
    )
    assert response.get_json() == {"outcome": "stored"}
    [entry] = call_entries(redis_client, call_sid)
    assert json.loads(entry["provider_data"])["Provider"]
