"""Durable before 2xx: an event goes to Redis, or to the spool when Redis cannot take it in time.

``DurableWriter`` is what the callback view calls. It writes to Redis through ``Store`` (the
exactly-once script); when Redis raises (down, failing over, or slower than
``REDIS_TIMEOUT_MS``) it appends the record to the spool and the caller answers 202. While the
spool holds records, new ones queue behind them in the spool, so Redis receives everything in
the order it was accepted. When the spool cannot take a record either, ``StorageUnavailable``
becomes a 503 and Twilio retries.

A ``Drainer`` thread runs in every process; the spool's ``drain.lock`` lets only one of them
replay at a time. It replays each record through the same ``Store`` calls and moves the spool's
cursor past it only after Redis answered: every ``CONFIRM_EVERY`` events (one fsync per group
keeps draining faster than spooling), after each dead letter, and when it stops. A crash replays
at most the unconfirmed group, which the events' dedup key turns into no-op duplicates. Dead
letters (``Store.reject``) are spooled the same way; their replay is a no-op too (the store
keeps each signed request once). A retry of an event the spool already holds is not written
again (``Spool.append`` returns False) and is answered ``spooled`` all the same: it is durable.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import redis

from receiver.events import Event
from receiver.observability import metrics
from receiver.storage.group_commit import GroupCommit
from receiver.storage.spool import Entry, Record, Rejection, Spool
from receiver.storage.store import Outcome, Store

log = logging.getLogger(__name__)

Written = Outcome | Literal["spooled"]

POLL_SECONDS = 0.2
CONFIRM_EVERY = 32
BACKOFF_SECONDS = (0.05, 1.0)


class StorageUnavailable(Exception):
    """Neither Redis nor the spool could take a record: answer 503 so that Twilio retries."""


class Unrouted(Exception):
    """A spooled record's account is no longer served: no prefix is its own any more."""


def _any_account(sid: str | None) -> bool:
    return True


def account_of(record: Record) -> str | None:
    """The AccountSid a record belongs to (a dead letter's, from its signed parameters)."""
    if isinstance(record, Rejection):
        return next(iter(record.params.get("AccountSid", ())), None)
    return record.account_sid


@dataclass
class DurableWriter:
    store: Store
    spool: Spool | None = None
    # AccountSid -> the store of its own prefix (TWILIO_ACCOUNTS_FILE); others use ``store``.
    # Chosen when a record reaches Redis, so spooled records land under their account's prefix.
    routes: Mapping[str, Store] = field(default_factory=dict)
    # Whether an AccountSid is still served (``Settings.serves``): the accounts file may have
    # lost one while its records waited in the spool.
    serves: Callable[[str | None], bool] = _any_account
    # Batch concurrent callbacks' events into one Redis round trip per store (group_commit.py);
    # single Redis only: a cluster's steps go slot by slot.
    group_commit: bool = False
    wake: threading.Event = field(default_factory=threading.Event)
    # The last reason the spool refused a record, until it takes one again (for /readyz).
    spool_error: str | None = None
    _outage: bool = False
    # Whether the spool may hold records, kept in memory so that a callback asks no file
    # system: set by this process' appends, refreshed by its drainer's poll (``refresh``),
    # which also sees other processes' appends. None: no drainer watches, ask the file.
    _pending: bool | None = None
    _appends: int = 0
    _pending_lock: threading.Lock = field(default_factory=threading.Lock)
    _groups: dict[int, GroupCommit] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.group_commit:
            stores = {id(s): s for s in (self.store, *self.routes.values()) if type(s) is Store}
            self._groups = {key: GroupCommit(store) for key, store in stores.items()}

    def _append(self, store: Store, event: Event) -> Outcome:
        group = self._groups.get(id(store))
        return group.append(event) if group is not None else store.append(event)

    def spool_pending(self) -> bool:
        if self.spool is None:
            return False
        if self._pending is None:
            return self.spool.pending()
        return self._pending

    def refresh(self) -> bool:
        """Read the spool's state from its file into the in-memory flag; True if pending.
        An append of this process that the file read may have missed has moved the count by
        the time the flag is set (or sets the flag itself afterwards), so the flag stays set."""
        assert self.spool is not None
        appends = self._appends
        pending = self.spool.pending()
        with self._pending_lock:
            self._pending = pending or appends != self._appends
            return self._pending

    def unwatch(self) -> None:
        """No drainer refreshes the flag any more: callbacks ask the file again."""
        with self._pending_lock:
            self._pending = None

    def write(self, record: Record) -> Written:
        """Store an event or a rejection durably; ``spooled`` when it went to the spool."""
        if self.spool is None:
            return self._to_redis(record)  # a RedisError becomes a 503
        if not self.spool_pending():
            try:
                outcome = self._to_redis(record)
            except redis.RedisError as error:
                metrics.count_redis_error(error)
                self._note_outage(error)
            else:
                self._outage = False
                return outcome
        try:
            self.spool.append(record)
        except OSError as error:
            self.spool_error = str(error)
            log.error("spool %s cannot take a record: %s", self.spool.directory, error)
            raise StorageUnavailable(str(error)) from error
        self.spool_error = None
        with self._pending_lock:  # after the append: a refresh that missed it sees the count
            self._appends += 1
            if self._pending is not None:
                self._pending = True
        self.wake.set()
        return "spooled"

    def store_for(self, record: Record) -> Store:
        if not self.routes:
            return self.store
        return self.routes.get(account_of(record) or "", self.store)

    def _to_redis(self, record: Record) -> Written:
        store = self.store_for(record)
        if isinstance(record, Rejection):
            store.reject(
                record.error,
                record.params,
                received_at=record.received_at,
                method=record.method,
                url=record.url,
            )
            return "stored"
        return self._append(store, record)

    def _note_outage(self, error: redis.RedisError) -> None:
        if not self._outage:
            self._outage = True
            log.warning(
                "redis unavailable (%s): callbacks go to the spool in %s",
                type(error).__name__,
                self.spool.directory if self.spool else None,
            )

    def can_spool(self) -> bool:
        return self.spool is not None and self.spool_error is None and self.spool.writable()

    def replay(self, record: Record) -> Written:
        """The drainer's way in: always Redis, never the spool again. A record of an account
        no longer served raises ``Unrouted``: ``routes`` would send it to ``store``'s prefix,
        another tenant's."""
        account = account_of(record)
        if not self.serves(account):
            raise Unrouted(f"AccountSid {account} is not one of this receiver's accounts")
        return self._to_redis(record)


@dataclass(eq=False)
class Drainer:
    """Replays the spool into Redis in order, from a daemon thread with a stop event."""

    writer: DurableWriter
    poll_seconds: float = POLL_SECONDS
    replayed: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def spool(self) -> Spool:
        assert self.writer.spool is not None
        return self.writer.spool

    def start(self) -> Drainer:
        self._thread = threading.Thread(target=self._run, name="rtt-spool-drainer", daemon=True)
        self._thread.start()
        _running.add(self)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the record in hand, confirm it, release the lock, end the thread."""
        self._stop.set()
        self.writer.wake.set()
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.writer.unwatch()
        _running.discard(self)

    def _wait(self, seconds: float) -> None:
        self.writer.wake.wait(seconds)
        self.writer.wake.clear()

    def _run(self) -> None:
        backoff, paused = BACKOFF_SECONDS[0], False
        while not self._stop.is_set():
            if not self.writer.refresh():
                self._wait(self.poll_seconds)
                continue
            try:
                with self.spool.drain_lock() as held:
                    drained = held and self.drain()
            except redis.RedisError as error:
                if not paused:  # once per outage, not once per retry
                    log.warning("spool drain paused, redis unavailable (%s)", type(error).__name__)
                paused, drained = True, False
            except Exception:
                if not paused:  # a broken spool file or disk: say it once, keep retrying
                    log.exception("spool drain failed; retrying")
                paused, drained = True, False
            if drained:
                backoff, paused = BACKOFF_SECONDS[0], False
            else:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_SECONDS[1])

    def drain(self) -> bool:
        """Replay until the spool is empty (True) or until stopped; caller holds drain.lock.
        A RedisError leaves the record unconfirmed for the next attempt."""
        count = 0
        while not self._stop.is_set():
            generation, entries = self.spool.read_batch()
            if not entries:
                if self.spool.rotate_if_drained():
                    if count:
                        log.info("spool drained: %d records replayed into redis", count)
                    return True
                continue
            confirmed, end = count, 0  # records confirmed so far; this batch has none yet
            try:
                for entry in entries:
                    if self._stop.is_set():
                        return False
                    if entry.record is None:
                        self.spool.quarantine(entry)
                    else:
                        self._replay(entry)
                    end = entry.end
                    count += 1
                    self.replayed += 1
                    # Events are confirmed in groups (a replay after a crash is a no-op thanks
                    # to their dedup key); dead letters, which have none, one by one.
                    if count - confirmed >= CONFIRM_EVERY or not isinstance(entry.record, Event):
                        self.spool.confirm(generation, end)
                        confirmed = count
            finally:
                if end and confirmed != count:
                    self.spool.confirm(generation, end)
        return False

    def _replay(self, entry: Entry) -> None:
        assert entry.record is not None
        try:
            self.writer.replay(entry.record)
        except Unrouted as error:
            self.spool.quarantine(entry, self.spool.unrouted_path)
            log.error("spool: %s; record kept in %s", error, self.spool.unrouted_path)


_running: set[Drainer] = set()


def stop_drainers() -> None:
    """Stop every drainer of this process (gunicorn's worker_exit hook and atexit call it)."""
    for drainer in list(_running):
        drainer.stop()


atexit.register(stop_drainers)
