"""How events are kept (docs/storage.md), on a real Redis: partials out of the call stream and
freed with time, identities for the freshness window, indexes that forget idle calls, the
recent-calls index, dead letters once."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime

import pytest
import redis

from receiver import create_app
from receiver.events import MAX_SEQUENCE_ID, Event, InvalidEvent, parse
from receiver.protocol import timestamp
from receiver.storage.store import Keys, Store

from .support.twilio_calls import callback, content, post, sid

KEYS = Keys()


def event_of(params: dict[str, str]) -> Event:
    return parse({k: [v] for k, v in params.items()}, received_at="2026-11-28T09:00:00.000Z")


def conversation(call_sid: str, gt: str, utterances: int) -> list[dict[str, str]]:
    """started, then utterances alternating tracks, each as growing partials and a final."""
    events = [
        callback(
            "started", call_sid, gt, 1, InboundTrackLabel="customer", OutboundTrackLabel="agent"
        )
    ]
    for n in range(utterances):
        track = ("inbound_track", "outbound_track")[n % 2]
        words = f"utterance {n} has a handful of words in it today".split()
        for size in range(1, len(words)):
            text = " ".join(words[:size])
            events.append(content(call_sid, gt, len(events) + 1, text, track=track, final=False))
        events.append(content(call_sid, gt, len(events) + 1, " ".join(words), track=track))
    events.append(callback("stopped", call_sid, gt, len(events) + 1))
    return events


def call_memory(client: redis.Redis, call_sid: str) -> int:
    """Bytes Redis holds for every key of the call (SAMPLES 0: every node counted)."""
    total = 0
    for key in client.scan_iter(match=f"{KEYS.call(call_sid)}*"):
        total += client.memory_usage(key, samples=0) or 0
    return total


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_partials_feed_the_live_stream_and_leave_the_call(settings, redis_client, call_sid):
    app = create_app(replace(settings, partials_retention_seconds=1, call_retention_seconds=60))
    client = app.test_client()
    events = conversation(call_sid, sid("GT"), utterances=12)
    for params in events:
        assert post(client, params).get_json() == {"outcome": "stored"}
    sent_partials = [p["SequenceId"] for p in events if p.get("Final") == "false"]
    assert len(sent_partials) == 12 * 9
    with_partials = call_memory(redis_client, call_sid)

    # The live feed had every partial, in the order they came.
    live = [f for _, f in redis_client.xrange(KEYS.events)]
    assert [f["sequence_id"] for f in live if f.get("final") == "false"] == sent_partials
    assert all("partials_entry_id" in f for f in live if f.get("final") == "false")

    # PARTIALS_RETENTION_SECONDS after the last partial, the call keeps its record only.
    wait_for(lambda: not redis_client.exists(KEYS.partials(call_sid)))
    kept = [f for _, f in redis_client.xrange(KEYS.call(call_sid))]
    assert [f["event"] for f in kept] == ["started"] + ["content"] * 12 + ["stopped"]
    assert {f["final"] for f in kept if f["event"] == "content"} == {"true"}
    assert redis_client.zcard(KEYS.finals(call_sid)) == 12
    without_partials = call_memory(redis_client, call_sid)
    assert without_partials < with_partials / 2, (with_partials, without_partials)


def test_old_partials_are_trimmed_by_age_and_their_memory_freed(redis_client, call_sid):
    store = Store(redis_client, KEYS, 60, 100_000, 1000, partials_retention_seconds=2)
    gt = sid("GT")
    for seq in range(1, 501):
        store.append(event_of(content(call_sid, gt, seq, f"partial {seq}", final=False)))
    key = KEYS.partials(call_sid)
    assert redis_client.xlen(key) == 500
    before = redis_client.memory_usage(key, samples=0)
    time.sleep(2.2)  # the 500 are now older than the retention
    store.append(event_of(content(call_sid, gt, 501, "a fresh one", final=False)))
    # One snapshot right after, in one transaction: the key expires 2 s after that append.
    with redis_client.pipeline(transaction=True) as pipe:
        pipe.xlen(key).xrevrange(key, count=1).memory_usage(key, samples=0).ttl(key)
        length, [(_, newest)], after, ttl = pipe.execute()
    # MINID ~ removes whole nodes from the head: what remains is at most the newest node.
    assert length <= 101
    assert newest["sequence_id"] == "501"
    assert after < before / 2
    assert 0 < ttl <= 2


def test_identities_live_for_the_freshness_window_only(redis_client, call_sid):
    gt = sid("GT")
    short = Store(redis_client, KEYS, 7200, 1000, 1000, max_event_age_seconds=600)
    short.append(event_of(content(call_sid, gt, 1, "hello")))
    assert 800 < redis_client.ttl(KEYS.seen(call_sid, gt)) <= 900  # 600 + 300 of clock skew
    assert redis_client.ttl(KEYS.call(call_sid)) > 7000
    # As long as an event stamped ahead of our clock can pass the door, also past the data.
    long = Store(redis_client, KEYS, 700, 1000, 1000, max_event_age_seconds=600)
    long.append(event_of(content(call_sid, gt, 2, "hello again")))
    assert 800 < redis_client.ttl(KEYS.seen(call_sid, gt)) <= 900


def test_identities_are_a_bitmap_per_transcription(redis_client, call_sid):
    """Bit SequenceId of the transcription's own key: a call-hour's identities in bytes, not
    one set member per event."""
    store = Store(redis_client, KEYS, 7200, 100_000, 1000, max_event_age_seconds=600)
    gt, other = sid("GT"), sid("GT")
    events = conversation(call_sid, gt, utterances=40)
    for params in events:
        assert store.append(event_of(params)) == "stored"
    assert store.append(event_of(content(call_sid, other, 3, "a second transcription")))
    for params in events[::7]:
        assert store.append(event_of(params)) == "duplicate"
    bitmap = KEYS.seen(call_sid, gt)
    assert redis_client.type(bitmap) == "string"
    assert redis_client.strlen(bitmap) == len(events) // 8 + 1  # SequenceIds 1 to len(events)
    assert redis_client.bitcount(bitmap) == len(events)
    assert [redis_client.getbit(bitmap, n) for n in (0, 1, len(events), len(events) + 1)] == [
        0,
        1,
        1,
        0,
    ]
    assert redis_client.bitcount(KEYS.seen(call_sid, other)) == 1
    assert 800 < redis_client.ttl(bitmap) <= 900
    assert not redis_client.exists(KEYS.seen_set(call_sid))
    assert redis_client.memory_usage(bitmap, samples=0) < 200


def test_an_identity_in_the_calls_seen_set_is_a_duplicate(redis_client, call_sid):
    """A retry of an event that a receiver keeping identities as a set stored: still a
    duplicate while that set lives, and the set is never written."""
    store = Store(redis_client, KEYS, 7200, 1000, 1000, max_event_age_seconds=600)
    gt = sid("GT")
    stored = content(call_sid, gt, 5, "stored under the set")
    redis_client.sadd(KEYS.seen_set(call_sid), f"{gt}:5")
    redis_client.expire(KEYS.seen_set(call_sid), 100)
    assert store.append(event_of(stored)) == "duplicate"
    assert store.append_many([event_of(stored)]) == ["duplicate"]
    assert not redis_client.exists(KEYS.call(call_sid), KEYS.events, KEYS.seen(call_sid, gt))
    assert store.append(event_of(content(call_sid, gt, 6, "the next one"))) == "stored"
    assert redis_client.smembers(KEYS.seen_set(call_sid)) == {f"{gt}:5"}
    assert 0 < redis_client.ttl(KEYS.seen_set(call_sid)) <= 100
    assert redis_client.xlen(KEYS.call(call_sid)) == 1


def test_sequence_ids_are_bounded_by_the_bitmap(client, redis_client, call_sid):
    """SETBIT allocates up to the highest offset: the highest SequenceId accepted costs 2 MB
    for its transcription, one more is a dead letter and allocates nothing."""
    gt = sid("GT")
    assert post(client, content(call_sid, gt, MAX_SEQUENCE_ID, "the last")).status_code == 200
    assert redis_client.strlen(KEYS.seen(call_sid, gt)) == 2 * 1024 * 1024
    other = sid("GT")
    response = post(client, content(call_sid, other, MAX_SEQUENCE_ID + 1, "one too many"))
    assert response.status_code == 400
    assert response.get_json()["error"] == (
        f"SequenceId ('{MAX_SEQUENCE_ID + 1}'): must be at most {MAX_SEQUENCE_ID}"
    )
    ((_, rejected),) = redis_client.xrange(KEYS.rejected)
    assert rejected["field"] == "SequenceId"
    assert not redis_client.exists(KEYS.seen(call_sid, other))


class Clock:
    """The receiver's clock, moved by the test instead of waiting."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_a_call_idle_for_the_retention_leaves_both_indexes(redis_client):
    clock = Clock()
    store = Store(redis_client, KEYS, 60, 1000, 1000, clock=clock)
    forgotten, alive = sid("CA"), sid("CA")
    store.append(event_of(callback("started", forgotten, sid("GT"), 1)))  # never stopped
    assert redis_client.zscore(KEYS.active_calls, forgotten) is not None
    clock.now += 59
    store.append(event_of(callback("started", alive, sid("GT"), 1)))
    assert redis_client.zscore(KEYS.active_calls, forgotten) is not None  # not yet
    clock.now += 2  # 61 s since the forgotten call's last event
    store.append(event_of(content(alive, sid("GT"), 2, "still talking")))
    for index in (KEYS.active_calls, KEYS.recent_calls):
        assert redis_client.zrange(index, 0, -1) == [alive], index


def test_recent_calls_list_ended_calls_with_their_latest_time(redis_client, call_sid):
    clock = Clock()
    store = Store(redis_client, KEYS, 3600, 1000, 1000, clock=clock)
    gt = sid("GT")
    store.append(event_of(callback("started", call_sid, gt, 1)))
    clock.now += 5
    store.append(event_of(callback("stopped", call_sid, gt, 3)))
    latest = redis_client.zscore(KEYS.recent_calls, call_sid)
    assert latest == int(clock.now * 1000)
    # A late delivery replayed with an older clock never moves the call back in time.
    clock.now -= 3
    store.append(event_of(content(call_sid, gt, 2, "late")))
    assert redis_client.zscore(KEYS.recent_calls, call_sid) == latest
    # Ended: in recent, not in active.
    assert redis_client.zscore(KEYS.active_calls, call_sid) is None


def reject(store: Store, params: dict[str, list[str]], url: str = "https://rtt.example.com/cb"):
    error = InvalidEvent("TranscriptionData", "not json", "is not valid JSON")
    return store.reject(
        error, params, received_at="2026-11-28T09:00:00.000Z", method="POST", url=url
    )


def test_a_dead_letter_is_kept_once_per_signed_request(redis_client):
    clock = Clock()
    store = Store(redis_client, KEYS, 3600, 1000, 1000, max_event_age_seconds=600, clock=clock)
    params = {"CallSid": ["CA" + "1" * 32], "TranscriptionData": ["not json"], "A": ["2", "1"]}
    first = reject(store, params)
    assert first
    # The same request replayed (parameters in another order): nothing new.
    assert reject(store, dict(reversed(params.items())) | {"A": ["1", "2"]}) == ""
    assert redis_client.xlen(KEYS.rejected) == 1
    # Another request, or the same one signed for another URL, is another dead letter.
    assert reject(store, {**params, "TranscriptionData": ["{"]})
    assert reject(store, params, url="https://rtt.example.com/cb?x=1")
    assert redis_client.xlen(KEYS.rejected) == 3
    ((entry_id, entry),) = redis_client.xrange(KEYS.rejected, count=1)
    assert entry_id == first and entry["schema"] == "2"
    # Past the freshness window the identity is forgotten.
    clock.now += 601
    assert reject(store, params)
    assert redis_client.xlen(KEYS.rejected) == 4
    assert redis_client.zcard(KEYS.rejected_seen) == 1


def test_a_replayed_dead_letter_through_the_app_is_kept_once(client, redis_client, call_sid):
    bad = callback("content", call_sid, sid("GT"), 1, TranscriptionData="not json")
    for _ in range(3):
        assert post(client, bad).status_code == 400
    assert redis_client.xlen(KEYS.rejected) == 1


@pytest.mark.parametrize("digits", [3, 6, 9])
def test_timestamps_are_kept_exactly_as_sent(client, redis_client, call_sid, digits):
    # Now, as the freshness check wants it, with Twilio's 3, 6 or 9 fractional digits.
    stamp = timestamp(datetime.now(UTC), digits)
    params = {**content(call_sid, sid("GT"), 2, "hello"), "Timestamp": stamp}
    assert post(client, params).status_code == 200
    ((_, entry),) = redis_client.xrange(KEYS.call(call_sid))
    assert entry["timestamp"] == stamp


def test_finals_member_json(client, redis_client, call_sid):
    gt = sid("GT")
    post(client, content(call_sid, gt, 2, "plain final"))
    ((member, score),) = redis_client.zrange(KEYS.finals(call_sid), 0, -1, withscores=True)
    assert score == 2
    final = json.loads(member)
    assert final["transcript"] == "plain final" and final["confidence"] == "0.93"
    assert "spoken_start" not in final
