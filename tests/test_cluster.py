"""Every guarantee on a real Redis Cluster of three masters: exactly once per stream, ordered
finals, the index of calls in progress, dead letters, and healing a crash between the steps."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from receiver import create_app
from receiver.config import Settings, load_settings
from receiver.events import Event, parse
from receiver.server.network import free_port
from receiver.storage import cluster
from receiver.storage.cluster import ClusterKeys, ClusterStore
from receiver.storage.store import Keys

from .support.redis_cluster import SLOT_RANGES, LocalCluster
from .support.twilio_calls import TOKEN, callback, content, post, sid, whole_call
from .test_multi_instance import send
from .test_storage import conversation, wait_for

pytestmark = pytest.mark.slow  # starts servers or processes

KEYS = Keys()


def node_of(key: str) -> int:
    slot = key_slot(key.encode())
    return next(n for n, (first, last) in enumerate(SLOT_RANGES) if first <= slot <= last)


def step_one(store: ClusterStore, event: Event) -> list:
    """Only the first step of storing ``event`` (the call's slot), as a receiver that dies
    right after it leaves things."""
    return store._call(
        keys=store.cluster_keys.call_keys(event.call_sid, event.transcription_sid),
        args=store.args(event, store.now_ms()),
    )


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster.start(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_client(redis_cluster: LocalCluster) -> Iterator[RedisCluster]:
    client = RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield client
    client.close()


@pytest.fixture
def cluster_app(redis_cluster: LocalCluster, cluster_client: RedisCluster):
    app = create_app(
        Settings(auth_tokens=(TOKEN,), redis_url=redis_cluster.url, redis_cluster=True)
    )
    app.config.update(TESTING=True)
    return app


@pytest.fixture
def short_app(redis_cluster: LocalCluster, cluster_client: RedisCluster):
    """Identities for 900 s (MAX_EVENT_AGE_SECONDS 600 + 300 of skew), data for two hours,
    partials for one second."""
    settings = Settings(
        auth_tokens=(TOKEN,),
        redis_url=redis_cluster.url,
        redis_cluster=True,
        call_retention_seconds=7200,
        max_event_age_seconds=600,
        partials_retention_seconds=1,
    )
    app = create_app(settings)
    app.config.update(TESTING=True)
    return app


@pytest.fixture
def far_call_sid() -> str:
    """A CallSid whose keys live on another master than both global keys, so that every
    event really crosses nodes."""
    while True:
        call_sid = "CA" + uuid.uuid4().hex
        node = node_of(KEYS.call(call_sid))
        if node not in (node_of(KEYS.events), node_of(KEYS.active_calls)):
            return call_sid


def test_cluster_keys_hash_to_their_slots():
    cluster_keys = ClusterKeys(KEYS)
    assert key_slot(cluster_keys.events_seen.encode()) == key_slot(KEYS.events.encode())
    assert key_slot(cluster_keys.active_versions.encode()) == key_slot(KEYS.active_calls.encode())
    call = "CA" + "1" * 32
    slots = {key_slot(k.encode()) for k in cluster_keys.call_keys(call, "GT" + "2" * 32)}
    assert slots == {key_slot(call.encode())}
    assert key_slot(KEYS.rejected_seen.encode()) == key_slot(KEYS.rejected.encode())


def test_redis_cluster_setting():
    env = {"TWILIO_AUTH_TOKEN": TOKEN, "REDIS_URL": "redis://10.0.0.1:7000"}
    assert load_settings({**env, "REDIS_CLUSTER": "1"}).redis_cluster
    assert not load_settings(env).redis_cluster
    with pytest.raises(ValueError, match="REDIS_CLUSTER='maybe'"):
        load_settings({**env, "REDIS_CLUSTER": "maybe"})
    with pytest.raises(ValueError, match="unix://"):
        load_settings({**env, "REDIS_CLUSTER": "1", "REDIS_URL": "unix:///tmp/r.sock"})
    with pytest.raises(ValueError, match="embedded Redis is not a cluster"):
        load_settings({"TWILIO_AUTH_TOKEN": TOKEN, "REDIS_CLUSTER": "yes"})


def test_whole_call_on_a_cluster(cluster_app, cluster_client, far_call_sid):
    client = cluster_app.test_client()
    gt = sid("GT")
    events = whole_call(far_call_sid, gt)
    # Out of order, with Twilio's retries of every content event.
    delivery = [events[0], *reversed(events[1:-1]), *events[1:-1], events[-1]]
    outcomes = [post(client, params).get_json()["outcome"] for params in delivery]
    assert outcomes.count("stored") == len(events)
    assert outcomes.count("duplicate") == len(events) - 2

    call = [f for _, f in cluster_client.xrange(KEYS.call(far_call_sid))]
    partials = [f for _, f in cluster_client.xrange(KEYS.partials(far_call_sid))]
    assert {e["final"] for e in partials} == {"false"}
    assert [e.get("final", "true") for e in call] == ["true"] * len(call)
    assert sorted(int(e["sequence_id"]) for e in call + partials) == list(range(1, len(events) + 1))
    finals = [json.loads(m) for m in cluster_client.zrange(KEYS.finals(far_call_sid), 0, -1)]
    assert [(f["track_label"], f["transcript"]) for f in finals] == [
        ("customer", "hello I need help"),
        ("agent", "sure what is wrong"),
    ]
    global_entries = [f for _, f in cluster_client.xrange(KEYS.events)]
    assert len(global_entries) == len(events)
    call_ids = {entry_id for entry_id, _ in cluster_client.xrange(KEYS.call(far_call_sid))}
    partial_ids = {i for i, _ in cluster_client.xrange(KEYS.partials(far_call_sid))}
    assert {e["call_entry_id"] for e in global_entries if "call_entry_id" in e} == call_ids
    assert {e["partials_entry_id"] for e in global_entries if "partials_entry_id" in e} == (
        partial_ids
    )
    assert cluster_client.zscore(KEYS.active_calls, far_call_sid) is None
    assert cluster_client.zscore(KEYS.recent_calls, far_call_sid) is not None


def test_cluster_bookkeeping_lives_for_the_freshness_window(
    short_app, cluster_client, far_call_sid
):
    """Identities and entry refs are kept as long as a retry or a replay can come (the seen
    window), not for the call's retention."""
    client = short_app.test_client()
    gt = sid("GT")
    for params in conversation(far_call_sid, gt, utterances=2):
        assert post(client, params).get_json() == {"outcome": "stored"}
    cluster_keys = ClusterKeys(KEYS)
    for key in (
        KEYS.seen(far_call_sid, gt),
        cluster_keys.entries(far_call_sid),
        cluster_keys.published(far_call_sid),
    ):
        assert 800 < cluster_client.ttl(key) <= 900, key
    assert cluster_client.strlen(KEYS.seen(far_call_sid, gt)) == 22 // 8 + 1  # a bitmap
    assert cluster_client.ttl(KEYS.call(far_call_sid)) > 7000
    # Step 2's own window (an hour at most) is never longer than the seen window either.
    assert 800 < cluster_client.ttl(cluster_keys.events_seen) <= 900


def test_after_the_partials_retention_the_cluster_keys_hold_the_record_only(
    short_app, cluster_client, far_call_sid
):
    client = short_app.test_client()
    events = conversation(far_call_sid, sid("GT"), utterances=12)
    for params in events:
        assert post(client, params).get_json() == {"outcome": "stored"}
    sent_partials = [p["SequenceId"] for p in events if p.get("Final") == "false"]
    live = [f for _, f in cluster_client.xrange(KEYS.events)]
    assert [f["sequence_id"] for f in live if f.get("final") == "false"] == sent_partials

    cluster_keys = ClusterKeys(KEYS)
    entries, published = cluster_keys.entries(far_call_sid), cluster_keys.published(far_call_sid)
    wait_for(lambda: not cluster_client.exists(KEYS.partials(far_call_sid)))
    record = [entry_id for entry_id, _ in cluster_client.xrange(KEYS.call(far_call_sid))]
    assert len(record) == 1 + 12 + 1  # started, the finals, stopped
    kept = {
        f"{p['TranscriptionSid']}:{p['SequenceId']}" for p in events if p.get("Final") != "false"
    }
    refs = cluster_client.hgetall(entries)
    assert set(refs) == kept
    assert sorted(refs.values()) == sorted(record)
    assert cluster_client.smembers(published) == set(record)


def test_an_identity_in_the_calls_seen_set_is_a_duplicate_on_a_cluster(
    cluster_app, cluster_client, far_call_sid
):
    """A retry of an event stored by a receiver that kept identities as a set: a duplicate,
    written nowhere, while that set lives."""
    client = cluster_app.test_client()
    gt = sid("GT")
    cluster_client.sadd(KEYS.seen_set(far_call_sid), f"{gt}:2")
    cluster_client.expire(KEYS.seen_set(far_call_sid), 100)
    assert post(client, content(far_call_sid, gt, 2, "stored before")).get_json() == {
        "outcome": "duplicate"
    }
    assert not cluster_client.exists(KEYS.call(far_call_sid))
    assert not cluster_client.exists(KEYS.seen(far_call_sid, gt))
    assert cluster_client.xlen(KEYS.events) == 0
    assert post(client, content(far_call_sid, gt, 3, "new")).get_json() == {"outcome": "stored"}
    assert cluster_client.smembers(KEYS.seen_set(far_call_sid)) == {f"{gt}:2"}


def test_calls_in_progress_on_a_cluster(cluster_app, cluster_client, far_call_sid):
    client = cluster_app.test_client()
    gt = sid("GT")
    post(client, callback("started", far_call_sid, gt, 1))
    assert cluster_client.zscore(KEYS.active_calls, far_call_sid) is not None
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "rtt_calls_in_progress 1.0" in metrics
    post(client, callback("stopped", far_call_sid, gt, 9))
    post(client, content(far_call_sid, gt, 5, "late but before the stop"))
    assert cluster_client.zscore(KEYS.active_calls, far_call_sid) is None


def test_dead_letters_on_a_cluster(cluster_app, cluster_client, far_call_sid):
    bad = {**content(far_call_sid, sid("GT"), 1, "x"), "TranscriptionData": "not json"}
    assert post(cluster_app.test_client(), bad).status_code == 400
    ((_, entry),) = cluster_client.xrange(KEYS.rejected)
    assert entry["field"] == "TranscriptionData"


def test_dead_letters_on_a_cluster_are_kept_once(cluster_app, cluster_client, far_call_sid):
    bad = {**content(far_call_sid, sid("GT"), 1, "x"), "TranscriptionData": "not json"}
    for _ in range(3):  # a captured request, replayed
        assert post(cluster_app.test_client(), bad).status_code == 400
    assert cluster_client.xlen(KEYS.rejected) == 1
    assert cluster_client.zcard(KEYS.rejected_seen) == 1


def test_a_retry_heals_a_partial_whose_steps_were_cut(cluster_app, cluster_client, far_call_sid):
    store: ClusterStore = cluster_app.extensions["receiver"].store
    gt = sid("GT")
    post(cluster_app.test_client(), callback("started", far_call_sid, gt, 1))
    params = content(far_call_sid, gt, 2, "half a", final=False)
    event = parse({k: [v] for k, v in params.items()}, received_at="2026-11-28T09:00:00.000Z")
    stored, ref, *_ = step_one(store, event)
    assert stored == 1 and ref.decode().startswith("p/")
    assert cluster_client.xlen(KEYS.events) == 1  # the started event only
    for _ in range(3):
        assert store.append(event) == "duplicate"
    ((partial_id, _),) = cluster_client.xrange(KEYS.partials(far_call_sid))
    entries = [f for _, f in cluster_client.xrange(KEYS.events)]
    assert [e.get("partials_entry_id") for e in entries] == [None, partial_id]
    assert cluster_client.xlen(KEYS.call(far_call_sid)) == 1
    # Published: its ref is forgotten, the record's refs stay.
    cluster_keys = store.cluster_keys
    assert not cluster_client.hexists(cluster_keys.entries(far_call_sid), event.dedup_key)
    ((started_id, _),) = cluster_client.xrange(KEYS.call(far_call_sid))
    assert cluster_client.smembers(cluster_keys.published(far_call_sid)) == {started_id}


def test_a_partial_past_its_retention_is_past_healing(cluster_app, cluster_client, far_call_sid):
    """Step 1 stored a partial, the receiver died, and the retry comes after the partials
    stream forgot it: nothing to heal (a live feed), and its ref goes too."""
    store: ClusterStore = cluster_app.extensions["receiver"].store
    params = content(far_call_sid, sid("GT"), 2, "half a", final=False)
    event = parse({k: [v] for k, v in params.items()}, received_at="2026-11-28T09:00:00.000Z")
    assert step_one(store, event)[0] == 1
    cluster_client.delete(KEYS.partials(far_call_sid))  # PARTIALS_RETENTION_SECONDS passed
    assert store.append(event) == "duplicate"
    assert cluster_client.xlen(KEYS.events) == 0
    assert not cluster_client.exists(store.cluster_keys.entries(far_call_sid))


def test_a_retry_heals_a_crash_between_the_steps(cluster_app, cluster_client, far_call_sid):
    store: ClusterStore = cluster_app.extensions["receiver"].store
    params = callback("started", far_call_sid, sid("GT"), 1)
    event = parse({k: [v] for k, v in params.items()}, received_at="2026-11-28T09:00:00.000Z")
    # The first delivery: step 1 only, then the receiver dies before steps 2 and 3.
    stored, entry_id, *_ = step_one(store, event)
    assert stored == 1
    assert cluster_client.xlen(KEYS.events) == 0
    assert cluster_client.zscore(KEYS.active_calls, far_call_sid) is None
    # Twilio got no answer and retries: the duplicate completes the missing steps, once.
    for _ in range(3):
        assert store.append(event) == "duplicate"
    ((_, entry),) = cluster_client.xrange(KEYS.events)
    assert entry["call_entry_id"] == entry_id.decode()
    assert entry["event"] == "started"
    assert cluster_client.zscore(KEYS.active_calls, far_call_sid) is not None
    assert cluster_client.xlen(KEYS.call(far_call_sid)) == 1


def test_a_stale_state_cannot_reopen_a_stopped_call(cluster_app, cluster_client, far_call_sid):
    store: ClusterStore = cluster_app.extensions["receiver"].store
    client = cluster_app.test_client()
    gt = sid("GT")
    post(client, callback("started", far_call_sid, gt, 1))
    ((started_id, _),) = cluster_client.xrange(KEYS.call(far_call_sid))
    post(client, callback("stopped", far_call_sid, gt, 2))
    # A slow receiver applies the older "in progress" state after the newer "stopped" one.
    applied = store._active(
        keys=[KEYS.active_calls, store.cluster_keys.active_versions],
        args=[far_call_sid, started_id, 1, 1, 600_000],
    )
    assert applied == 0
    assert cluster_client.zscore(KEYS.active_calls, far_call_sid) is None


def test_two_receivers_on_a_cluster(start_receiver, redis_cluster, cluster_client, far_call_sid):
    env = {"REDIS_URL": redis_cluster.url, "REDIS_CLUSTER": "1"}
    receivers = [start_receiver(**env), start_receiver(**env, WEB_CONCURRENCY="1")]
    gt = sid("GT")
    events = whole_call(far_call_sid, gt)

    def deliver(pair: tuple[int, dict]) -> list[str]:
        n, params = pair
        return [send(r.url, params).json()["outcome"] for r in receivers[n % 2 :] + receivers]

    with ThreadPoolExecutor(4) as pool:
        outcomes = [o for pair in pool.map(deliver, enumerate(events)) for o in pair]
    assert outcomes.count("stored") == len(events)
    stored = cluster_client.xlen(KEYS.call(far_call_sid))
    assert stored + cluster_client.xlen(KEYS.partials(far_call_sid)) == len(events)
    assert cluster_client.xlen(KEYS.events) == len(events)
    finals = [json.loads(m) for m in cluster_client.zrange(KEYS.finals(far_call_sid), 0, -1)]
    assert [f["transcript"] for f in finals] == ["hello I need help", "sure what is wrong"]
    assert cluster_client.zscore(KEYS.active_calls, far_call_sid) is None


def test_an_unreachable_cluster_is_a_503_not_a_crash(tmp_path, call_sid):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    app = create_app(Settings(auth_tokens=(TOKEN,), redis_url=url, redis_cluster=True))
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    response = post(client, content(call_sid, sid("GT"), 1, "x"))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'outcome="storage_unavailable"' in metrics
    assert "rtt_calls_in_progress " not in metrics
    # The cluster comes up later: the same app stores, without a restart.
    cluster = LocalCluster.start(tmp_path / "late")
    try:
        app = create_app(Settings(auth_tokens=(TOKEN,), redis_url=cluster.url, redis_cluster=True))
        client = app.test_client()
        assert post(client, content(call_sid, sid("GT"), 1, "x")).status_code == 200
        # ... and a cluster that goes away is a 503 again, not a 500.
        for node in cluster.nodes:
            node.kill()
        assert post(client, content(call_sid, sid("GT"), 2, "x")).status_code == 503
        assert client.get("/readyz").status_code == 503
    finally:
        cluster.stop()


def test_concurrent_duplicates_on_a_cluster_land_once(
    start_receiver, redis_cluster, cluster_client, far_call_sid
):
    env = {"REDIS_URL": redis_cluster.url, "REDIS_CLUSTER": "1"}
    receivers = [start_receiver(**env), start_receiver(**env)]
    params = content(far_call_sid, sid("GT"), 7, "said once, delivered many times")
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(
            pool.map(lambda n: send(receivers[n % 2].url, params).json()["outcome"], range(40))
        )
    assert outcomes.count("stored") == 1
    assert outcomes.count("duplicate") == 39
    assert cluster_client.xlen(KEYS.call(far_call_sid)) == 1
    assert cluster_client.xlen(KEYS.events) == 1
    assert cluster_client.zcard(KEYS.finals(far_call_sid)) == 1


def test_a_late_replay_still_reaches_the_global_stream(
    cluster_app, cluster_client, far_call_sid, monkeypatch
):
    """Step 1 stored, step 2 never ran, and the replay (say from the spool, after an outage)
    comes after step 2's window: still appended, once; and once step 2 is known done, later
    replays do not append again although the window has forgotten it."""
    monkeypatch.setattr(cluster, "EVENTS_DEDUP_WINDOW_MS", 1)
    store: ClusterStore = cluster_app.extensions["receiver"].store
    params = content(far_call_sid, sid("GT"), 3, "spooled during an outage")
    event = parse({k: [v] for k, v in params.items()}, received_at="2026-11-28T09:00:00.000Z")
    assert step_one(store, event)[0] == 1
    time.sleep(0.05)  # the entry is now older than the window
    assert store.append(event) == "duplicate"
    assert cluster_client.xlen(KEYS.events) == 1
    time.sleep(0.05)
    assert store.append(event) == "duplicate"
    assert cluster_client.xlen(KEYS.events) == 1
