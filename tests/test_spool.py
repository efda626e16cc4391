"""The durable spool: file format, crash safety, several writers, and the drainer against a real
Redis that is killed and restarted (a server of the test's own, never the session-wide one)."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from receiver import create_app
from receiver.config import Settings
from receiver.events import MAX_SEQUENCE_ID, Event, InvalidEvent, TrackLabels, parse
from receiver.storage.durable import Drainer, DurableWriter, stop_drainers
from receiver.storage.spool import HEADER_LENGTH, Rejection, Spool, SpoolError, decode, encode
from receiver.storage.store import Keys, Store

from .support.twilio_calls import TOKEN, callback, content, post, sid, whole_call


def make_event(call_sid: str, seq: int, text: str = "hello", **kw) -> Event:
    gt = kw.pop("gt", "GT" + "1" * 32)
    params = {k: [v] for k, v in content(call_sid, gt, seq, text, **kw).items()}
    return parse(params, received_at="2026-11-28T09:00:00.000Z")


def full_event() -> Event:
    """An event with every field set to something other than its default."""
    return Event(
        event="content",
        account_sid="AC" + "0" * 32,
        call_sid="CA" + "a" * 32,
        transcription_sid="GT" + "b" * 32,
        sequence_id=42,
        timestamp="2026-11-28T09:00:00.000000Z",
        received_at="2026-11-28T09:00:01.000Z",
        track=None,
        track_label="la clienta ☎",
        label_is_explicit=True,
        final=False,
        transcript="ça va? 你好 \u2028 \x00 end",
        confidence="0.5",
        stability="0.8",
        language_code="fr-FR",
        settings={"name": "n", "inbound_track_label": "x"},
        error_code="32650",
        error_message="oops",
        extra={"ProviderData": "{}", "Twice": ["a", "b"]},
        url_labels=TrackLabels("customer", "agent"),
        dedup_key="GT" + "b" * 32 + ":42",
    )


def test_every_event_field_survives_the_spool():
    event = full_event()
    assert decode(encode(event).rstrip(b"\n")) == event


def test_a_rejection_survives_the_spool():
    record = Rejection(
        InvalidEvent("CallSid", "bad", "must be CA followed by 32 hex digits"),
        {"CallSid": ["bad"], "X": ["1", "2"]},
        "2026-11-28T09:00:01.000Z",
        "POST",
        "http://localhost/transcriptions/callback?x=1",
    )
    back = decode(encode(record).rstrip(b"\n"))
    assert isinstance(back, Rejection)
    assert (back.error.field, back.error.value, back.error.reason) == (
        "CallSid",
        "bad",
        record.error.reason,
    )
    assert (back.params, back.received_at, back.method, back.url) == (
        record.params,
        record.received_at,
        record.method,
        record.url,
    )


@given(text=st.text(max_size=200), label=st.text(max_size=20), extra=st.text(max_size=50))
def test_any_text_survives_the_spool(text: str, label: str, extra: str):
    event = replace(full_event(), transcript=text, track_label=label, extra={"E": extra})
    line = encode(event)
    assert line.count(b"\n") == 1  # one record, one line, whatever the text holds
    assert decode(line.rstrip(b"\n")) == event


def test_a_line_with_a_bad_checksum_or_version_is_refused():
    line = encode(full_event()).rstrip(b"\n")
    with pytest.raises(ValueError, match="checksum"):
        decode(line[:-3] + b"XYZ")
    payload = json.dumps({"v": 99, "kind": "event", "event": {}}).encode()
    import zlib

    with pytest.raises(ValueError, match="version 99"):
        decode(b"%08x %s" % (zlib.crc32(payload), payload))


@pytest.mark.parametrize("sequence_id", [MAX_SEQUENCE_ID + 1, 10**14 - 1, -1, None])
def test_an_event_whose_identity_redis_cannot_hold_is_set_aside(tmp_path, sequence_id):
    """Its SequenceId is a bit offset in Redis: an event spooled by a release with a higher
    bound (or none) would make Redis allocate that much, or fail forever. It is kept aside, and
    the records after it are replayed."""
    spool = Spool(tmp_path)
    spool.append(replace(full_event(), sequence_id=sequence_id, dedup_key="x"))
    spool.append(full_event())
    _, entries = spool.read_batch()
    assert [e.record for e in entries] == [None, full_event()]
    with pytest.raises(ValueError, match="SequenceId"):
        decode(entries[0].raw)
    assert decode(encode(replace(full_event(), sequence_id=MAX_SEQUENCE_ID)).rstrip(b"\n"))


def test_records_come_back_in_order_and_the_cursor_survives_a_restart(tmp_path, call_sid):
    spool = Spool(tmp_path)
    events = [make_event(call_sid, n) for n in range(1, 6)]
    for event in events:
        spool.append(event)
    assert spool.pending() and spool.depth() == 5
    generation, entries = spool.read_batch()
    assert [e.record for e in entries] == events
    spool.confirm(generation, entries[1].end)
    restarted = Spool(tmp_path)  # a new process: only what is on disk counts
    assert restarted.depth() == 3
    assert [e.record for e in restarted.read_batch()[1]] == events[2:]
    assert not restarted.rotate_if_drained()
    restarted.confirm(generation, entries[-1].end)
    assert restarted.rotate_if_drained()
    assert not restarted.pending() and restarted.depth() == 0
    assert restarted.log_path.stat().st_size == HEADER_LENGTH
    restarted.append(events[0])  # the old cursor belongs to the old generation
    assert [e.record for e in restarted.read_batch()[1]] == [events[0]]


def test_a_torn_line_is_set_aside_and_the_next_records_are_kept(tmp_path, call_sid):
    spool = Spool(tmp_path)
    spool.append(make_event(call_sid, 1))
    with spool.log_path.open("ab") as out:  # a writer killed half-way through its append
        out.write(encode(make_event(call_sid, 2))[:40])
    spool.append(make_event(call_sid, 3))
    _, entries = spool.read_batch()
    assert [e.record.sequence_id if e.record else None for e in entries] == [1, None, 3]
    spool.quarantine(entries[1])
    assert spool.unreadable_path.read_bytes().count(b"\n") == 1


def test_the_spool_takes_no_second_copy_of_an_event_it_holds(tmp_path, call_sid):
    spool = Spool(tmp_path)
    assert spool.append(make_event(call_sid, 1))
    assert not spool.append(make_event(call_sid, 1, "a retry, same identity"))
    assert spool.append(make_event(call_sid, 2))
    generation, entries = spool.read_batch()
    assert [e.record.sequence_id for e in entries] == [1, 2]
    (marker, _) = sorted(spool.held_path.iterdir())
    assert marker.stat().st_mode & 0o777 == 0o600
    # Drained and rotated: the markers go with the file, the same event may be spooled again.
    spool.confirm(generation, entries[-1].end)
    assert spool.rotate_if_drained()
    assert list(spool.held_path.iterdir()) == []
    assert spool.append(make_event(call_sid, 1))


def test_the_spool_takes_no_second_copy_of_a_dead_letter_it_holds(tmp_path):
    """Held by the signed request's digest: a replayed capture, or any variant with the same
    signature, is durable already; during an outage its copies would fill SPOOL_MAX_BYTES."""

    def rejection(params: dict[str, list[str]], method: str = "POST") -> Rejection:
        error = InvalidEvent("Final", "false", "sent 2 times; Twilio sends it once")
        url = "http://localhost/transcriptions/callback"
        return Rejection(error, params, "2026-11-28T09:00:01.000Z", method, url)

    spool = Spool(tmp_path)
    assert spool.append(rejection({"Final": ["false", "false"], "X": ["1"]}))
    for again in ({"Final": ["false"] * 3, "X": ["1"]}, {"Final": ["falseX1"]}):
        assert not spool.append(rejection(again))  # the same signed text
    assert spool.append(rejection({"Final": ["true", "true"], "X": ["1"]}))
    assert spool.append(rejection({"Final": ["false", "false"], "X": ["1"]}, "GET"))
    _, entries = spool.read_batch()
    assert len(entries) == 3


def test_an_event_the_spool_could_not_take_is_not_held(tmp_path, call_sid):
    spool = Spool(tmp_path, max_bytes=HEADER_LENGTH + 10)
    with pytest.raises(SpoolError):
        spool.append(make_event(call_sid, 1))
    assert list(spool.held_path.iterdir()) == []  # Twilio's retry must get its chance
    spool.max_bytes = 1024**2
    assert spool.append(make_event(call_sid, 1))


def _append_many(directory: str, worker: int, count: int) -> None:
    spool = Spool(Path(directory))
    for n in range(count):
        spool.append(make_event("CA" + f"{worker:032x}", n, gt="GT" + f"{worker:032x}"))


def test_several_processes_append_without_losing_or_mixing_records(tmp_path):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(str(tmp_path), w, 40)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(30)
        assert process.exitcode == 0
    _, entries = Spool(tmp_path).read_batch()
    seen = sorted((e.record.call_sid, e.record.sequence_id) for e in entries)
    assert seen == sorted(("CA" + f"{w:032x}", n) for w in range(4) for n in range(40))
    for worker in range(4):  # each writer's records stay in its own order
        mine = [e.record.sequence_id for e in entries if e.record.call_sid.endswith(f"{worker:x}")]
        assert mine == sorted(mine)


def test_only_one_drainer_holds_the_drain_lock(tmp_path):
    first, second = Spool(tmp_path), Spool(tmp_path)
    with first.drain_lock() as held:
        assert held
        with second.drain_lock() as also:
            assert not also
    with second.drain_lock() as held:
        assert held


def test_a_full_spool_refuses(tmp_path, call_sid):
    first = make_event(call_sid, 1)
    spool = Spool(tmp_path, max_bytes=HEADER_LENGTH + len(encode(first)) + 10)
    spool.append(first)
    with pytest.raises(SpoolError, match="SPOOL_MAX_BYTES"):
        for n in range(2, 10):
            spool.append(make_event(call_sid, n))


# -- The durable writer and the drainer against a real Redis that goes away -----------------


def store_for(url: str, timeout: float = 0.5) -> Store:
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    return Store(client, Keys(), 3600, 1000, 1000)


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def stream(url: str, call_sid: str) -> list[dict]:
    client = redis.Redis.from_url(url, decode_responses=True)
    return [f for _, f in client.xrange(f"rtt:call:{{{call_sid}}}")]


def test_redis_down_spools_then_the_drainer_replays_in_order_exactly_once(
    own_redis, tmp_path, call_sid
):
    writer = DurableWriter(store_for(own_redis.url), Spool(tmp_path / "spool"))
    assert writer.write(make_event(call_sid, 1)) == "stored"
    own_redis.kill()
    assert writer.write(make_event(call_sid, 2)) == "spooled"
    assert writer.write(make_event(call_sid, 2)) == "spooled"  # Twilio's retry: held already
    own_redis.start()
    # Redis is back, but records still wait: new ones queue behind them, in order.
    assert writer.write(make_event(call_sid, 3)) == "spooled"
    drainer = Drainer(writer, poll_seconds=0.05).start()
    try:
        wait_for(lambda: not writer.spool.pending())
    finally:
        drainer.stop()
    assert [e["sequence_id"] for e in stream(own_redis.url, call_sid)] == ["1", "2", "3"]
    assert drainer.replayed == 2  # the retry took no second place in the spool
    assert writer.write(make_event(call_sid, 4)) == "stored"


def test_a_replay_interrupted_before_its_confirmation_is_not_stored_twice(
    own_redis, tmp_path, call_sid
):
    spool = Spool(tmp_path / "spool")
    writer = DurableWriter(store_for(own_redis.url), spool)
    for n in (1, 2):
        spool.append(make_event(call_sid, n))
    _, entries = spool.read_batch()
    writer.replay(entries[0].record)  # stored, then the process died before confirm()
    drainer = Drainer(DurableWriter(store_for(own_redis.url), Spool(tmp_path / "spool")))
    with drainer.spool.drain_lock() as held:
        assert held and drainer.drain()
    assert [e["sequence_id"] for e in stream(own_redis.url, call_sid)] == ["1", "2"]


def test_an_unreadable_record_does_not_block_the_ones_behind_it(own_redis, tmp_path, call_sid):
    spool = Spool(tmp_path / "spool")
    spool.append(make_event(call_sid, 1))
    with spool.log_path.open("ab") as out:
        out.write(b"00000000 {not a record}\n")
    spool.append(make_event(call_sid, 2))
    drainer = Drainer(DurableWriter(store_for(own_redis.url), spool))
    with spool.drain_lock():
        assert drainer.drain()
    assert [e["sequence_id"] for e in stream(own_redis.url, call_sid)] == ["1", "2"]
    assert b"{not a record}" in spool.unreadable_path.read_bytes()


def test_slower_than_the_bound_spools(own_redis, tmp_path, call_sid):
    writer = DurableWriter(store_for(own_redis.url, timeout=0.2), Spool(tmp_path / "spool"))
    writer.write(make_event(call_sid, 1))  # loads the script
    admin = redis.Redis.from_url(own_redis.url)
    admin.client_pause(10_000, all=False)  # writes wait: Redis is alive but slow
    # Spooled, not stored: the answer came at the 0.2 s bound, long before the pause ended.
    assert writer.write(make_event(call_sid, 2)) == "spooled"
    admin.client_unpause()
    drainer = Drainer(writer, poll_seconds=0.05).start()
    try:
        wait_for(lambda: not writer.spool.pending())
    finally:
        drainer.stop()
    assert [e["sequence_id"] for e in stream(own_redis.url, call_sid)] == ["1", "2"]


# -- Through the HTTP endpoint ------------------------------------------------------------------


@pytest.fixture
def spooling_app(own_redis, tmp_path):
    settings = Settings(
        auth_tokens=(TOKEN,),
        redis_url=own_redis.url,
        spool_dir=str(tmp_path / "spool"),
        redis_timeout_ms=300,
    )
    app = create_app(settings)
    yield app
    stop_drainers()


def test_http_while_redis_is_down_answers_202_then_lands_once(spooling_app, own_redis, call_sid):
    client = spooling_app.test_client()
    events = whole_call(call_sid, sid("GT"))
    assert post(client, events[0]).status_code == 200
    own_redis.kill()
    for params in events[1:] + events[1:3]:  # and two retries of events already spooled
        response = post(client, params)
        assert response.status_code == 202, response.text
        assert response.get_json() == {"outcome": "spooled"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["status"] == "degraded"
    # The retries found their events held: the spool took no second copy.
    assert ready.get_json()["spool_depth"] == len(events) - 1
    own_redis.start()
    wait_for(lambda: client.get("/readyz").get_json()["spool_depth"] == 0)
    admin = redis.Redis.from_url(own_redis.url, decode_responses=True)
    entries = [fields for _, fields in admin.xrange("rtt:events")]
    assert [e["sequence_id"] for e in entries] == [str(n) for n in range(1, len(events) + 1)]
    finals = [(e["track_label"], e["transcript"]) for e in entries if e.get("final") == "true"]
    assert finals == [("customer", "hello I need help"), ("agent", "sure what is wrong")]
    assert client.get("/readyz").get_json() == {"status": "ready", "redis": "ok", "spool_depth": 0}


def test_a_rejected_callback_is_spooled_while_redis_is_down(spooling_app, own_redis, call_sid):
    client = spooling_app.test_client()
    own_redis.kill()
    bad = callback("content", call_sid, sid("GT"), 1, TranscriptionData="not json")
    assert post(client, bad).status_code == 400
    own_redis.start()
    admin = redis.Redis.from_url(own_redis.url, decode_responses=True)
    wait_for(lambda: admin.xlen("rtt:rejected") == 1)
    ((_, entry),) = admin.xrange("rtt:rejected")
    assert entry["field"] == "TranscriptionData"
    assert json.loads(entry["params"])["TranscriptionData"] == ["not json"]


def test_replays_of_a_dead_letter_take_one_place_in_the_spool(spooling_app, own_redis, call_sid):
    client = spooling_app.test_client()
    own_redis.kill()
    bad = callback("content", call_sid, sid("GT"), 1, TranscriptionData="not json")
    for _ in range(5):
        assert post(client, bad).status_code == 400
    assert client.get("/readyz").get_json()["spool_depth"] == 1


def test_neither_redis_nor_the_spool_is_503(own_redis, tmp_path, call_sid):
    settings = Settings(
        auth_tokens=(TOKEN,),
        redis_url=own_redis.url,
        spool_dir=str(tmp_path / "spool"),
        spool_max_bytes=HEADER_LENGTH + 100,
    )
    client = create_app(settings).test_client()
    try:
        own_redis.kill()
        response = post(client, content(call_sid, sid("GT"), 1, "x"))
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert client.get("/readyz").status_code == 503
    finally:
        stop_drainers()


def test_a_restarted_receiver_drains_what_the_last_one_spooled(own_redis, tmp_path, call_sid):
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    for n in (1, 2, 3):
        spool.append(make_event(call_sid, n))
    settings = Settings(auth_tokens=(TOKEN,), redis_url=own_redis.url, spool_dir=str(spool_dir))
    create_app(settings).extensions["receiver"].start()  # what a served worker does at boot
    try:
        wait_for(lambda: not spool.pending())
    finally:
        stop_drainers()
    assert [e["sequence_id"] for e in stream(own_redis.url, call_sid)] == ["1", "2", "3"]


def test_a_full_redis_spools_and_replays_once_memory_is_freed(own_redis, tmp_path, call_sid):
    """With maxmemory-policy noeviction a full Redis refuses writes (OOM): spooled, not lost."""
    writer = DurableWriter(store_for(own_redis.url), Spool(tmp_path / "spool"))
    assert writer.write(make_event(call_sid, 1)) == "stored"
    admin = redis.Redis.from_url(own_redis.url)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")
    assert writer.write(make_event(call_sid, 2)) == "spooled"
    drainer = Drainer(writer, poll_seconds=0.05).start()
    try:
        time.sleep(0.3)
        assert writer.spool.depth() == 1  # Redis still full: kept, retried
        admin.config_set("maxmemory", "0")
        wait_for(lambda: not writer.spool.pending())
    finally:
        drainer.stop()
    assert [e["sequence_id"] for e in stream(own_redis.url, call_sid)] == ["1", "2"]


@pytest.mark.slow  # starts gunicorn
def test_gunicorn_refuses_a_spool_dir_it_cannot_use(start_receiver, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(RuntimeError, match="SPOOL_DIR="):
        start_receiver(SPOOL_DIR=str(blocker / "spool"))
    future = tmp_path / "future"
    future.mkdir()
    (future / "spool.log").write_text("rtt-spool 2 " + "0" * 32 + "\n")
    with pytest.raises(RuntimeError, match=r"no rtt-spool 1 header.*move it away"):
        start_receiver(SPOOL_DIR=str(future))


def test_spool_settings_from_the_environment():
    from receiver.config import ConfigError, load_settings

    base = {"TWILIO_AUTH_TOKEN": TOKEN}
    defaults = load_settings(base)
    assert (defaults.spool_dir, defaults.redis_timeout_ms) == ("var/spool", 1000)
    assert load_settings({**base, "SPOOL_DIR": "off"}).spool_dir is None
    custom = load_settings(
        {
            **base,
            "SPOOL_DIR": "/data/spool",
            "SPOOL_MAX_BYTES": "1048576",
            "REDIS_TIMEOUT_MS": "250",
        }
    )
    assert (custom.spool_dir, custom.spool_max_bytes, custom.redis_timeout_ms) == (
        "/data/spool",
        1048576,
        250,
    )
    with pytest.raises(ConfigError, match=r"REDIS_TIMEOUT_MS='soon' is not a whole number"):
        load_settings({**base, "REDIS_TIMEOUT_MS": "soon"})
    with pytest.raises(ConfigError, match=r"SPOOL_MAX_BYTES='10' must be at least 65536"):
        load_settings({**base, "SPOOL_MAX_BYTES": "10"})


def test_callbacks_read_the_spool_state_from_memory_kept_fresh_by_the_drainer(
    own_redis, tmp_path, call_sid, monkeypatch
):
    """With a drainer watching, a callback asks no file system whether records wait: its own
    appends set the flag at once, another process' appends reach it at the drainer's next
    poll, and the flag clears only once the spool is drained."""
    writer = DurableWriter(store_for(own_redis.url), Spool(tmp_path / "spool"))
    other = DurableWriter(store_for(own_redis.url), Spool(tmp_path / "spool"))  # another worker
    drainer = Drainer(writer, poll_seconds=0.05).start()
    try:
        wait_for(lambda: writer._pending is False)
        real_pending = Spool.pending
        # Who asked the file: the drainer's thread may, the callback's (this one) must not.
        asked: list[bool] = []

        def pending(spool: Spool) -> bool:
            asked.append(threading.current_thread() is threading.main_thread())
            return real_pending(spool)

        monkeypatch.setattr(Spool, "pending", pending)
        assert writer.write(make_event(call_sid, 1)) == "stored"
        assert not any(asked)  # no stat(2) on the callback's path
        own_redis.kill()
        assert other.write(make_event(call_sid, 2)) == "spooled"  # the other worker spools
        wait_for(lambda: writer._pending is True)  # this worker's drainer saw it
        own_redis.start()
        # Records wait: this worker's callbacks queue behind them, in order, without asking.
        asked.clear()  # the other writer, with no drainer, asked the file: that is allowed
        assert writer.write(make_event(call_sid, 3)) in ("spooled", "stored")
        assert not any(asked)
        wait_for(lambda: writer._pending is False)  # drained
    finally:
        drainer.stop()
    assert writer._pending is None  # no drainer: callbacks ask the file again
    assert [e["sequence_id"] for e in stream(own_redis.url, call_sid)] == ["1", "2", "3"]
