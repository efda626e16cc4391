"""TranscriptionProviderData: kept verbatim, turned into spoken time when it carries timing,
never a reason to refuse an event; finals ordered by spoken time when known."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from receiver.events import spoken_time
from receiver.protocol import provider_data, timestamp
from receiver.storage.contract import Keys

from .support.twilio_calls import callback, content, post, sid

KEYS = Keys()
CONNECTED = "2026-01-23T21:47:44.614701800Z"
# Shaped like Twilio's own documented example, which is not valid JSON.
MALFORMED = '{"ProviderData": {"start": 1.5, "duration": 2,}, "ProviderConnectTime": "x"'


def call_entry(redis_client, call_sid: str) -> dict[str, str]:
    ((_, entry),) = redis_client.xrange(KEYS.call(call_sid))
    return entry


def test_provider_timing_becomes_spoken_time(client, redis_client, call_sid):
    data = provider_data(CONNECTED, 1.25, 2.5, is_final=True)
    params = content(call_sid, sid("GT"), 2, "hello", TranscriptionProviderData=data)
    assert post(client, params).get_json() == {"outcome": "stored"}
    entry = call_entry(redis_client, call_sid)
    assert entry["provider_data"] == data
    assert entry["spoken_start"] == "2026-01-23T21:47:45.864Z"
    assert entry["spoken_end"] == "2026-01-23T21:47:48.364Z"
    assert "extra" not in entry


@pytest.mark.parametrize(
    "data",
    [
        MALFORMED,
        json.dumps({"ProviderData": {"start": "soon"}, "ProviderConnectTime": CONNECTED}),
        json.dumps({"ProviderData": {"start": 1}, "ProviderConnectTime": "yesterday"}),
        json.dumps({"ProviderData": {"start": -1}, "ProviderConnectTime": CONNECTED}),
        json.dumps({"ProviderData": {"start": 1e300}, "ProviderConnectTime": CONNECTED}),
        json.dumps(["not", "an", "object"]),
        "",
    ],
    ids=["twilio-doc-example", "text-start", "bad-time", "negative", "huge", "array", "empty"],
)
def test_provider_data_that_does_not_parse_is_kept_and_stored(client, redis_client, call_sid, data):
    params = content(call_sid, sid("GT"), 2, "hello", TranscriptionProviderData=data)
    assert post(client, params).get_json() == {"outcome": "stored"}
    entry = call_entry(redis_client, call_sid)
    assert entry.get("provider_data", "") == data  # sent empty: absent
    assert "spoken_start" not in entry and "spoken_end" not in entry
    assert "extra" not in entry
    assert redis_client.xlen(KEYS.rejected) == 0


def test_without_provider_data_there_is_no_spoken_time(client, redis_client, call_sid):
    assert post(client, content(call_sid, sid("GT"), 2, "hello")).status_code == 200
    entry = call_entry(redis_client, call_sid)
    assert not {"provider_data", "spoken_start", "spoken_end"} & set(entry)


def test_spoken_time_reads_any_precision_and_zone():
    assert spoken_time(provider_data("2026-01-23T21:47:44Z", 0.5, 1)) == (
        "2026-01-23T21:47:44.500Z",
        "2026-01-23T21:47:45.500Z",
    )
    assert spoken_time(provider_data("2026-01-23T22:47:44.1+01:00", 1, 0)) == (
        "2026-01-23T21:47:45.100Z",
        "2026-01-23T21:47:45.100Z",
    )
    start_only = json.dumps({"ProviderData": {"start": 2}, "ProviderConnectTime": CONNECTED})
    assert spoken_time(start_only) == ("2026-01-23T21:47:46.614Z", None)


def test_finals_are_ordered_by_spoken_time_when_known(client, redis_client, call_sid):
    gt = sid("GT")
    post(client, callback("started", call_sid, gt, 1, InboundTrackLabel="customer"))
    # The agent's final is produced later (higher SequenceId) but was spoken first.
    said_late = provider_data(CONNECTED, 5.0, 1.0)
    said_early = provider_data(CONNECTED, 2.0, 1.5)
    for params in (
        content(call_sid, gt, 2, "customer, later", TranscriptionProviderData=said_late),
        content(
            call_sid,
            gt,
            3,
            "agent, earlier",
            track="outbound_track",
            TranscriptionProviderData=said_early,
        ),
    ):
        assert post(client, params).status_code == 200
    finals = redis_client.zrange(KEYS.finals(call_sid), 0, -1, withscores=True)
    members = [json.loads(m) for m, _ in finals]
    assert [m["transcript"] for m in members] == ["agent, earlier", "customer, later"]
    assert members[0]["spoken_start"] == "2026-01-23T21:47:46.614Z"
    assert members[0]["spoken_end"] == "2026-01-23T21:47:48.114Z"
    assert finals[0][1] == 1769204866614  # the epoch ms of spoken_start


def test_a_final_whose_provider_data_does_not_parse_keeps_its_place(client, redis_client, call_sid):
    """Provider data on, one final's unparseable: it is scored by its Timestamp, the same
    epoch-ms scale as spoken time, not by its SequenceId (which would put it before all)."""
    gt = sid("GT")
    post(client, callback("started", call_sid, gt, 1))
    connected = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=20)
    for seq, spoken, text, produced in (
        (2, provider_data(timestamp(connected), 1.0, 1.0), "first", 3),
        (9, MALFORMED, "second", 7),
        (10, provider_data(timestamp(connected), 8.0, 1.0), "third", 10),
    ):
        stamp = timestamp(connected + timedelta(seconds=produced))
        params = content(call_sid, gt, seq, text, Timestamp=stamp, TranscriptionProviderData=spoken)
        assert post(client, params).status_code == 200
    finals = redis_client.zrange(KEYS.finals(call_sid), 0, -1, withscores=True)
    assert [json.loads(m)["transcript"] for m, _ in finals] == ["first", "second", "third"]
    assert finals[1][1] == (connected + timedelta(seconds=7)).timestamp() * 1000
