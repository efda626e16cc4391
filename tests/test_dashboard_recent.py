"""The index of recent calls, `rtt:calls:recent`, that the dashboard lists ended calls from."""

from __future__ import annotations

import time

import pytest

from receiver.config import Settings
from receiver.storage.contract import Keys

from .support.twilio_calls import callback, content, post, sid
from .test_cluster import cluster_app, cluster_client, far_call_sid, redis_cluster  # noqa: F401

KEYS = Keys()


def test_every_call_is_recent_with_its_latest_event_time(client, redis_client, call_sid):
    gt = sid("GT")
    before = int(time.time() * 1000)  # the score is whole milliseconds
    post(client, callback("started", call_sid, gt, 1))
    first = redis_client.zscore(KEYS.recent_calls, call_sid)
    assert first is not None and before <= first <= time.time() * 1000
    post(client, content(call_sid, gt, 2, "hello"))
    post(client, callback("stopped", call_sid, gt, 3))
    assert redis_client.zscore(KEYS.recent_calls, call_sid) >= first
    # Ended: recent, no longer active.
    assert redis_client.zscore(KEYS.active_calls, call_sid) is None


def test_a_duplicate_does_not_move_the_call(client, redis_client, call_sid):
    gt = sid("GT")
    post(client, callback("started", call_sid, gt, 1))
    redis_client.zadd(KEYS.recent_calls, {call_sid: 5})
    assert post(client, callback("started", call_sid, gt, 1)).json["outcome"] == "duplicate"
    assert redis_client.zscore(KEYS.recent_calls, call_sid) == 5


def test_calls_older_than_the_retention_are_trimmed(redis_server, redis_client, call_sid):
    from receiver import create_app

    app = create_app(
        Settings(auth_tokens=("12345",), redis_url=redis_server.url, call_retention_seconds=60)
    )
    stale_ms = (time.time() - 61) * 1000
    fresh_ms = (time.time() - 59) * 1000
    redis_client.zadd(KEYS.recent_calls, {"CA-stale": stale_ms, "CA-fresh": fresh_ms})
    post(app.test_client(), callback("started", call_sid, sid("GT"), 1))
    assert redis_client.zrange(KEYS.recent_calls, 0, -1) == ["CA-fresh", call_sid]


@pytest.mark.slow  # starts a Redis Cluster
def test_recent_calls_on_a_cluster(cluster_app, cluster_client, far_call_sid):  # noqa: F811
    client = cluster_app.test_client()
    gt = sid("GT")
    post(client, callback("started", far_call_sid, gt, 1))
    post(client, callback("stopped", far_call_sid, gt, 2))
    assert cluster_client.zscore(KEYS.recent_calls, far_call_sid) is not None
    assert cluster_client.zscore(KEYS.active_calls, far_call_sid) is None
