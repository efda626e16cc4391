"""Group commit: concurrent callbacks' events share one pipelined round trip, and each keeps
its own exactly-once outcome, its order and its error, against a real Redis."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
import redis

from receiver.config import Settings
from receiver.events import Event, parse
from receiver.storage import open_store
from receiver.storage.contract import Keys
from receiver.storage.durable import DurableWriter
from receiver.storage.group_commit import GroupCommit
from receiver.storage.spool import Spool
from receiver.storage.store import Store

from .support.twilio_calls import TOKEN, content, sid


def event(call: str, transcription: str, seq: int, text: str = "hello") -> Event:
    params = content(call, transcription, seq, text)
    return parse({k: [v] for k, v in params.items()}, received_at="2026-11-28T09:00:00.000Z")


def store_for(url: str) -> Store:
    return open_store(Settings(auth_tokens=(TOKEN,), redis_url=url, redis_timeout_ms=500))


class HeldStore(Store):
    """The real store, whose first batch waits until ``release`` so that others queue behind
    it (deterministic batching, whatever the machine's speed)."""

    def __init__(self, base: Store) -> None:
        super().__init__(base.client, base.keys, base.retention_seconds, base.events_maxlen,
                         base.rejected_maxlen)  # fmt: skip
        self.release = threading.Event()
        self.sizes: list[int] = []

    def append_many(self, events: Sequence[Event]) -> list:
        if not self.sizes:
            self.release.wait(30)
        self.sizes.append(len(events))
        return super().append_many(events)


def run_concurrently(
    group: GroupCommit, events: list[Event], held: HeldStore
) -> tuple[list, list[Event]]:
    """The first event leads and is held; the others queue; then all are released. Returns
    each event's result and the order in which the followers queued."""
    results: list = [None] * len(events)

    def one(index: int) -> None:
        try:
            results[index] = group.append(events[index])
        except redis.RedisError as error:
            results[index] = error

    first = threading.Thread(target=one, args=(0,))
    first.start()
    while not held.sizes and not group._leading:
        threading.Event().wait(0.001)  # until the leader has taken the lead
    others = [threading.Thread(target=one, args=(i,)) for i in range(1, len(events))]
    for thread in others:
        thread.start()
    while len(group._queue) < len(events) - 1:
        threading.Event().wait(0.01)  # every follower queued behind the held leader
    queued = [slot.event for slot in group._queue]
    held.release.set()
    for thread in [first, *others]:
        thread.join(30)
    return results, queued


def test_queued_events_go_in_one_round_trip_each_once_and_in_order(redis_server, redis_client):
    held = HeldStore(store_for(redis_server.url))
    group = GroupCommit(held)
    call, gt = sid("CA"), sid("GT")
    events = [event(call, gt, 1)] + [event(call, gt, seq, f"word {seq}") for seq in range(2, 12)]
    events.append(event(call, gt, 5, "word 5"))  # a duplicate inside the same batch
    results, queued = run_concurrently(group, events, held)
    assert held.sizes == [1, len(events) - 1]  # the leader alone, then everyone who queued
    assert sorted(results) == sorted(["stored"] * 11 + ["duplicate"])
    # Stored in the order they queued, the second copy of 5 a duplicate wherever it queued.
    expected = [1, *dict.fromkeys(e.sequence_id for e in queued)]
    entries = redis_client.xrange(Keys().call(call))
    assert [int(fields["sequence_id"]) for _, fields in entries] == expected
    finals = redis_client.zrange(Keys().finals(call), 0, -1, withscores=True)
    assert [int(score) for _, score in finals] == list(range(1, 12))  # speaking order


def test_a_batch_sent_after_script_flush_loads_the_script_again(redis_server, redis_client):
    store = store_for(redis_server.url)
    call, gt = sid("CA"), sid("GT")
    assert store.append_many([event(call, gt, 1)]) == ["stored"]
    redis_client.script_flush()
    outcomes = store.append_many([event(call, gt, 2), event(call, gt, 1), event(call, gt, 3)])
    assert outcomes == ["stored", "duplicate", "stored"]
    assert redis_client.xlen(Keys().call(call)) == 3


def test_redis_down_fails_every_waiter_and_the_writer_spools_each(own_redis, tmp_path):
    """No waiter is left hanging or told "stored": each gets the error, and DurableWriter
    turns it into a spooled (durable) answer, replayed once Redis is back."""
    store = store_for(own_redis.url)
    spool = Spool(tmp_path / "spool")
    writer = DurableWriter(store, spool, group_commit=True)
    call, gt = sid("CA"), sid("GT")
    assert writer.write(event(call, gt, 1)) == "stored"
    own_redis.kill()
    outcomes: list = []
    threads = [
        threading.Thread(target=lambda s=seq: outcomes.append(writer.write(event(call, gt, s))))
        for seq in range(2, 10)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert outcomes == ["spooled"] * 8
    assert spool.depth() == 8


@pytest.mark.parametrize("count", [1, 40])
def test_many_threads_store_everything_exactly_once(redis_server, redis_client, count):
    store = store_for(redis_server.url)
    group = GroupCommit(store)
    call, gt = sid("CA"), sid("GT")
    outcomes: list = []

    def send(seq: int) -> None:
        # Every event twice: once stored, once a duplicate, whichever copy comes first.
        outcomes.append(group.append(event(call, gt, seq)))
        outcomes.append(group.append(event(call, gt, seq)))

    threads = [threading.Thread(target=send, args=(seq,)) for seq in range(1, count + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == sorted(["stored"] * count + ["duplicate"] * count)
    assert redis_client.xlen(Keys().call(call)) == count
    assert group.batches <= 2 * count


def test_a_redis_restart_between_batches_does_not_fail_the_next(own_redis):
    """The pooled connection died with the old Redis: the next batch goes on a new one instead
    of failing a batch of callbacks over to the spool."""
    store = store_for(own_redis.url)
    call, gt = sid("CA"), sid("GT")
    assert store.append_many([event(call, gt, 1)]) == ["stored"]
    own_redis.kill()
    own_redis.start()
    assert store.append_many([event(call, gt, 2), event(call, gt, 1)]) == ["stored", "duplicate"]
