"""Group commit: the events a worker's concurrent callbacks want stored at the same moment go to
Redis in one pipelined round trip.

Each callback still waits for its own event's answer before it answers Twilio ("2xx only once
durable"), and each event still runs the exactly-once script on its own. What is shared is the
round trip: one write and one read system call on each side, and Redis' one ``appendfsync
always`` fsync, for every event that arrived while the previous batch was on the wire.

No thread of its own: the first caller with nothing in flight becomes the leader and sends the
batch holding its event and whatever queued before it was sent; callers arriving meanwhile
queue, and when the leader's batch is answered it hands the lead to the first of them. So a
lone callback costs one round trip, as without batching, and no callback waits behind more
than the one batch in flight.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import redis

from receiver.events import Event
from receiver.storage.store import Outcome, Store

MAX_BATCH = 64  # bounds one pipeline's size and the latency of its last event


@dataclass(eq=False)
class _Slot:
    event: Event
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    outcome: Outcome | None = None
    error: redis.RedisError | None = None

    def result(self) -> Outcome:
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome


class GroupCommit:
    """``append(event)`` as ``Store.append`` does it, with concurrent callers' events batched."""

    def __init__(self, store: Store, max_batch: int = MAX_BATCH) -> None:
        self.store = store
        self.max_batch = max_batch
        self.batches = 0  # how many round trips so far (for tests and profiling)
        self._lock = threading.Lock()
        self._queue: list[_Slot] = []
        self._leading = False

    def append(self, event: Event) -> Outcome:
        slot = _Slot(event)
        with self._lock:
            self._queue.append(slot)
            lead = not self._leading
            self._leading = True
        if not lead:
            slot.done.wait()
            if not slot.lead:
                return slot.result()
        # The leader: its slot is first in the queue (it arrived to an empty one, or was
        # handed the lead as the first waiting), so it is in this batch.
        with self._lock:
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
        try:
            self._send(batch)
        finally:
            with self._lock:
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    successor.done.set()
                else:
                    self._leading = False
        return slot.result()

    def _send(self, batch: list[_Slot]) -> None:
        self.batches += 1
        try:
            results = self.store.append_many([slot.event for slot in batch])
        except redis.RedisError as error:
            results = [error] * len(batch)
        except BaseException as error:  # never leave a waiter hanging
            results = [redis.RedisError(f"group commit failed: {error!r}")] * len(batch)
            raise
        finally:
            for slot, result in zip(batch, results, strict=False):
                if isinstance(result, redis.RedisError):
                    slot.error = result
                else:
                    slot.outcome = result
                slot.lead = False
                slot.done.set()
