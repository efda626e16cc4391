"""The live feed: one reader of ``{prefix}:events`` per process, fanned out to every viewer.

Redis load does not grow with the number of viewers: one blocking ``XREAD`` serves them all.
The reader never waits for a viewer: each has a bounded queue, and a viewer whose queue is
full is marked as fallen behind and told to resynchronize, so a stalled browser cannot delay
the others. A viewer that stops reading altogether would hold its server thread in a write
forever: the reader also shuts down the socket of any viewer whose write has waited longer
than the send timeout, which ends that write and frees the thread.

An event's identity for the browser is its ``{prefix}:events`` entry id (the SSE ``id``), so
a reconnecting browser (``Last-Event-ID``) resumes from Redis with no gap and no duplicate,
also across a restart of the dashboard.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis

from receiver.storage.contract import Keys

log = logging.getLogger(__name__)

Entry = tuple[str, dict[str, str]]
# A viewer reconnecting after a longer absence than this many events reloads instead.
MAX_REPLAY = 20_000
REPLAY_PAGE = 500
READ_BLOCK_MS = 2000


# A stream entry id as Redis takes it: ``<ms>-<seq>`` (or ``<ms>``), each an unsigned 64-bit
# integer.
ENTRY_ID = re.compile(r"^(\d{1,20})(?:-(\d{1,20}))?\Z")
ID_PART_MAX = 2**64 - 1


def parse_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a comparable pair; ValueError when Redis would refuse it."""
    match = ENTRY_ID.match(entry_id)
    if not match:
        raise ValueError(f"{entry_id[:64]!r} is not a stream entry id (<ms>-<seq>)")
    ms, seq = int(match[1]), int(match[2] or 0)
    if ms > ID_PART_MAX or seq > ID_PART_MAX:
        raise ValueError(f"{entry_id[:64]!r}: each part of an entry id is below 2^64")
    return ms, seq


def is_partial(fields: dict[str, str]) -> bool:
    return fields.get("event") == "content" and fields.get("final") != "true"


@dataclass(eq=False)
class Viewer:
    """One browser's subscription: the call it watches (None: all calls) and its queue."""

    call_sid: str | None
    partials: bool
    size: int
    # The connection to the browser (gunicorn's), so that a stalled write can be ended.
    sock: socket.socket | None = None
    fell_behind: bool = False
    # When the write in progress began (monotonic), None between writes.
    writing_since: float | None = None
    queue: queue.Queue[Entry] = field(init=False)

    def __post_init__(self) -> None:
        self.queue = queue.Queue(self.size)

    def wants(self, fields: dict[str, str]) -> bool:
        if self.call_sid is not None and fields.get("call_sid") != self.call_sid:
            return False
        return self.partials or not is_partial(fields)

    def offer(self, entry: Entry) -> None:
        """Called by the reader only: never blocks."""
        if self.fell_behind:
            return
        try:
            self.queue.put_nowait(entry)
        except queue.Full:
            self.fell_behind = True

    def next(self, timeout: float) -> Entry | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def stalled(self, now: float, timeout: float) -> bool:
        since = self.writing_since
        return since is not None and now - since > timeout

    def drop(self) -> None:
        """End the connection: a write blocked on it fails (EPIPE) and its thread is free.
        Called by the reader only, for a viewer that stopped reading."""
        if self.sock is not None:
            with contextlib.suppress(OSError):  # already closed
                self.sock.shutdown(socket.SHUT_RDWR)


class Hub:
    """The process's one reader of the global stream and its viewers."""

    def __init__(
        self, client: redis.Redis, keys: Keys, buffer: int, send_timeout: float = 30
    ) -> None:
        self.client = client
        self.keys = keys
        self.buffer = buffer
        self.send_timeout = send_timeout
        self._viewers: set[Viewer] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.last_id: str | None = None

    def subscribe(
        self, call_sid: str | None, *, partials: bool, sock: socket.socket | None = None
    ) -> Viewer:
        viewer = Viewer(call_sid, partials, self.buffer, sock)
        with self._lock:
            self._viewers.add(viewer)
            if self._thread is None or not self._thread.is_alive():
                self._start()
        return viewer

    def unsubscribe(self, viewer: Viewer) -> None:
        with self._lock:
            self._viewers.discard(viewer)

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def _start(self) -> None:
        # The position is taken before the first subscriber is answered: whatever is appended
        # after its subscription reaches it.
        self._stop.clear()
        if self.last_id is None:
            with contextlib.suppress(redis.RedisError):  # the reader retries
                self._position()
        self._thread = threading.Thread(target=self._run, name="dashboard-reader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(READ_BLOCK_MS / 1000 + 5)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._drop_stalled()
            try:
                if self.last_id is None:
                    self._position()
                answer = self.client.xread(
                    {self.keys.events: self.last_id}, count=REPLAY_PAGE, block=READ_BLOCK_MS
                )
                failures = 0
            except redis.RedisError as error:
                failures += 1
                log.warning("dashboard: reading %s failed: %s", self.keys.events, error)
                self._stop.wait(min(5.0, 0.2 * 2**failures))
                continue
            for _key, entries in answer or []:
                for entry in entries:
                    self._dispatch(entry)

    def _drop_stalled(self) -> None:
        # Checked at every read, i.e. at least every READ_BLOCK_MS (or retry wait).
        now = time.monotonic()
        with self._lock:
            stalled = [v for v in self._viewers if v.stalled(now, self.send_timeout)]
        for viewer in stalled:
            log.info("dashboard: dropped a viewer that stopped reading")
            viewer.drop()

    def _position(self) -> None:
        # A concrete id, not "$": nothing is missed between two reads.
        newest = self.client.xrevrange(self.keys.events, count=1)
        self.last_id = newest[0][0] if newest else "0-0"

    def _dispatch(self, entry: Entry) -> None:
        self.last_id = entry[0]
        with self._lock:
            viewers = list(self._viewers)
        for viewer in viewers:
            if viewer.wants(entry[1]):
                viewer.offer(entry)


class Trimmed(Exception):
    """The entries after the viewer's last one are gone from Redis (trimmed), or too many."""


def replay(client: redis.Redis, keys: Keys, after: str, viewer: Viewer) -> Iterator[Entry]:
    """The entries after ``after`` that ``viewer`` wants, read from Redis in pages.

    Raises Trimmed when entries after ``after`` may have been trimmed away (the stream's first
    entry is newer), or when more than MAX_REPLAY would have to be read.
    """
    first = client.xrange(keys.events, count=1)
    # "0-0": the stream was empty when the page was made, so every entry is new to the viewer.
    if first and parse_id(after) != (0, 0) and parse_id(first[0][0]) > parse_id(after):
        raise Trimmed(after)
    start, read = f"({after}", 0
    while True:
        page = client.xrange(keys.events, min=start, count=REPLAY_PAGE)
        for entry in page:
            if viewer.wants(entry[1]):
                yield entry
        read += len(page)
        if len(page) < REPLAY_PAGE:
            return
        if read >= MAX_REPLAY:
            raise Trimmed(after)
        start = f"({page[-1][0]}"


def feed(
    hub: Hub, viewer: Viewer, after: str | None, client: redis.Redis, heartbeat: float = 15.0
) -> Iterator[Entry | None]:
    """What one viewer receives, in order: the replay after ``after``, then the live entries,
    none twice; ``None`` when nothing came for ``heartbeat`` seconds. Ends by raising Trimmed
    when the viewer fell behind. The viewer must be subscribed before this starts, so that
    nothing appended during the replay is missed; ``client`` reads the replay (the reader's
    own connection belongs to its thread)."""
    last = parse_id(after) if after else None
    if after:
        for replayed in replay(client, hub.keys, after, viewer):
            last = parse_id(replayed[0])
            yield replayed
    idle_since = time.monotonic()
    while True:
        entry = viewer.next(timeout=1.0)
        if viewer.fell_behind:
            raise Trimmed("fell behind")
        if entry is None:
            if time.monotonic() - idle_since >= heartbeat:
                idle_since = time.monotonic()
                yield None
            continue
        if last is not None and parse_id(entry[0]) <= last:
            continue  # already sent by the replay
        last = parse_id(entry[0])
        idle_since = time.monotonic()
        yield entry
