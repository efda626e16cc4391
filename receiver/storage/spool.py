"""The durable local spool: where a callback goes when Redis cannot take it in time.

The receiver answers 2xx only once an event is durable. When Redis is down or slower than
``REDIS_TIMEOUT_MS``, the event is written and fsynced here instead, and a drainer
(``receiver/storage/durable.py``) replays it into Redis later, in order, through the same
exactly-once script. Everything in this module is about the file; nothing here talks to Redis.

Layout of ``SPOOL_DIR`` (a local disk; flock is not to be trusted on network filesystems):

- ``spool.log``: append-only. A fixed-size header line ``rtt-spool 1 <generation>`` (format
  version, then 32 hex digits naming this incarnation of the file), then one record per line:
  ``<crc32, 8 hex> <JSON>``. The JSON carries its own record version (``"v": 1``).
- ``spool.lock``: ``flock(LOCK_EX)`` held by a writer for its append and fsync, and by the drainer
  while it reads a batch or rotates the file. Appends from several threads, gunicorn workers or
  even several receivers sharing the directory never interleave, and a rotation never loses an
  append made at the same moment.
- ``drain.lock``: held (non-blocking ``flock``) by at most one drainer among every process using
  the directory. Only its holder reads the cursor or replays; when its process dies the kernel
  releases the lock and another worker's drainer takes over. So one record is never replayed by
  two processes at once.
- ``cursor``: ``<generation> <offset>``, the first record Redis has not yet confirmed. It is
  rewritten (temp file, fsync, rename) after records Redis confirmed, never before. A crash
  between Redis' confirmation and that rename replays those records again; each event's dedup
  key (``TranscriptionSid:SequenceId``) makes its replay a no-op "duplicate", so at-least-once
  replay plus dedup is exactly once.
- Rotation: once every record is confirmed, the drainer (holding both locks) renames a fresh
  ``spool.log`` with a new generation over the old one. A cursor naming an older generation
  means "from the start of the file", so any crash point leaves either the drained old file with
  its cursor or the fresh file read from its start: nothing skipped, nothing replayed.
- ``held/<sha256 of the dedup key>``: an empty marker per event the spool holds, created with
  ``O_CREAT|O_EXCL`` under ``spool.lock`` before the event is written. A Twilio retry of an
  event already spooled finds the marker and is not written again (it is durable already); the
  markers are removed when the file rotates, i.e. once everything was drained. A marker lost in
  a crash only allows a second copy, which the dedup key makes a no-op on replay. A dead letter
  is held the same way under its signed request's digest (``held_name``), so replays of one
  captured callback during an outage take one record, not SPOOL_MAX_BYTES.
- Torn tail: a process killed mid-append leaves an unterminated line that was never acknowledged
  (fsync had not returned). The next writer ends it with a newline and the drainer, whose CRC
  check fails on it, copies it to ``spool.unreadable`` instead of replaying it. A record that
  passes the CRC but cannot be decoded (say, written by a newer release) goes there too, with a
  logged error, so it is kept for a person and does not block the records behind it.
- ``spool.unrouted``: records of an AccountSid the receiver no longer serves (removed from
  ``TWILIO_ACCOUNTS_FILE`` while they waited), kept for a person rather than written under
  another account's prefix (``DurableWriter.replay``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import uuid
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from receiver.events import MAX_SEQUENCE_ID, Event, InvalidEvent, TrackLabels
from receiver.signature import request_digest

log = logging.getLogger(__name__)

FILE_VERSION = "1"
RECORD_VERSION = 1
HEADER_PREFIX = f"rtt-spool {FILE_VERSION} "
HEADER_LENGTH = len(HEADER_PREFIX) + 32 + 1
# A drain batch stops after this many bytes: bounded memory however large the backlog is.
BATCH_BYTES = 1024 * 1024
EVENT_FIELDS = {f.name for f in fields(Event)}


class SpoolError(OSError):
    """The spool cannot take a record (full, unwritable): the caller answers 503."""


@dataclass(frozen=True)
class Rejection:
    """A signed callback that could not be normalized, as ``Store.reject`` takes it."""

    error: InvalidEvent
    params: dict[str, list[str]]
    received_at: str
    method: str
    url: str


Record = Event | Rejection


@dataclass(frozen=True)
class Entry:
    """One record read back from the spool; ``end`` is where the next one starts."""

    end: int
    record: Record | None
    raw: bytes


def encode(record: Record) -> bytes:
    """One spool line for ``record``: every field, so a replay stores exactly what was received."""
    if isinstance(record, Event):
        body: dict[str, Any] = {"v": RECORD_VERSION, "kind": "event", "event": asdict(record)}
    else:
        body = {
            "v": RECORD_VERSION,
            "kind": "rejected",
            "error": {
                "field": record.error.field,
                "value": record.error.value,
                "reason": record.error.reason,
            },
            "params": record.params,
            "received_at": record.received_at,
            "method": record.method,
            "url": record.url,
        }
    payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def decode(line: bytes) -> Record:
    """The record of one spool line (without its newline); ValueError when it is not one."""
    crc, _, payload = line.partition(b" ")
    if len(crc) != 8 or f"{zlib.crc32(payload):08x}".encode() != crc:
        raise ValueError("checksum mismatch (torn or corrupted line)")
    body = json.loads(payload)
    if body.get("v") != RECORD_VERSION:
        raise ValueError(f"record version {body.get('v')!r} is not {RECORD_VERSION}")
    if body.get("kind") == "event":
        data: Mapping[str, Any] = body["event"]
        unknown = set(data) - EVENT_FIELDS
        if unknown:
            raise ValueError(f"event fields {sorted(unknown)} unknown to this release")
        sequence_id = data.get("sequence_id")
        if not isinstance(sequence_id, int) or not 0 <= sequence_id <= MAX_SEQUENCE_ID:
            # A bit offset of the seen bitmap in Redis (docs/storage.md): spooled by a release
            # that accepted it, this event cannot be stored by this one.
            raise ValueError(f"SequenceId {sequence_id!r} is not from 0 to {MAX_SEQUENCE_ID}")
        return Event(**{**data, "url_labels": TrackLabels(**data["url_labels"])})
    if body.get("kind") == "rejected":
        error = body["error"]
        return Rejection(
            error=InvalidEvent(error["field"], error["value"], error["reason"]),
            params=body["params"],
            received_at=body["received_at"],
            method=body["method"],
            url=body["url"],
        )
    raise ValueError(f"record kind {body.get('kind')!r} is unknown")


def held_name(record: Record) -> str | None:
    """The name of a record's marker in ``held/``: the SHA-256 of an event's dedup key, or a
    dead letter's own identity, the digest of its signed request (the one ``Store.reject``
    keeps it once by). None for an event without a dedup key."""
    if isinstance(record, Rejection):
        return request_digest(record.method, record.url, record.params)
    if not record.dedup_key:
        return None
    return hashlib.sha256(record.dedup_key.encode()).hexdigest()


@contextmanager
def _flock(
    path: Path, *, blocking: bool = True, local: threading.Lock | None = None
) -> Iterator[bool]:
    """``flock`` on ``path``, between processes. ``local`` serializes this process' callers
    first: under gevent they are greenlets of one thread, and one blocked in ``flock`` behind
    another of the same process would block the thread that must release it."""
    if local is not None:
        with local, _flock(path, blocking=blocking) as held:
            yield held
        return
    fd = _private(path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _private(path: Path, flags: int) -> int:
    """A descriptor of ``path``, created 0600: its records are transcripts."""
    fd = os.open(path, flags | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)  # one made by an older release, or under another umask
    return fd


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Spool:
    """The spool in ``directory``; safe to use from many threads and processes at once."""

    directory: Path
    max_bytes: int = 1024**3

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.log_path = self.directory / "spool.log"
        self.lock_path = self.directory / "spool.lock"
        self.drain_lock_path = self.directory / "drain.lock"
        self.cursor_path = self.directory / "cursor"
        self.unreadable_path = self.directory / "spool.unreadable"
        self.unrouted_path = self.directory / "spool.unrouted"
        self.held_path = self.directory / "held"
        self._depth_cache: tuple[tuple[int, ...], int] | None = None
        self._lock = threading.Lock()  # see _flock
        self._keep_private()

    def _keep_private(self) -> None:
        """Tighten a directory others can enter (a Dockerfile's ``mkdir`` makes it 0755), or
        refuse it when it is not ours to tighten: other local users must not read spooled
        transcripts."""
        mode = self.directory.stat().st_mode & 0o777
        if mode & 0o077:
            try:
                self.directory.chmod(mode & 0o700)
            except OSError as error:
                raise SpoolError(
                    f"SPOOL_DIR={str(self.directory)!r} is readable by other users "
                    f"({mode:04o}) and cannot be tightened ({error.strerror}): chmod 700 it"
                ) from None
        for path in (
            self.log_path,
            self.lock_path,
            self.drain_lock_path,
            self.cursor_path,
            self.unreadable_path,
            self.unrouted_path,
        ):
            if path.exists() and path.stat().st_mode & 0o077:
                path.chmod(0o600)

    # -- writers ---------------------------------------------------------------------------

    def append(self, record: Record) -> bool:
        """Write ``record`` and fsync it; when this returns, a crash cannot lose it. False when
        the spool already holds this event (same dedup key): it is durable, nothing is written."""
        line = encode(record)
        with _flock(self.lock_path, local=self._lock):
            if not self.log_path.exists():
                self._new_file()
            marker = self._hold(record)
            if marker is False:
                return False
            try:
                self._write(line)
            except BaseException:
                if isinstance(marker, Path):
                    marker.unlink(missing_ok=True)  # not held after all: a retry must be written
                raise
        return True

    def _hold(self, record: Record) -> Path | bool | None:
        """Create the record's marker (caller holds the lock): its path, None for an event
        without a dedup key, False when the marker exists."""
        name = held_name(record)
        if name is None:
            return None
        self.held_path.mkdir(mode=0o700, exist_ok=True)
        marker = self.held_path / name
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return False
        return marker

    def _write(self, line: bytes) -> None:
        fd = os.open(self.log_path, os.O_RDWR | os.O_APPEND)
        try:
            size = os.fstat(fd).st_size
            if size + len(line) > self.max_bytes:
                raise SpoolError(
                    f"spool {self.log_path} would exceed SPOOL_MAX_BYTES={self.max_bytes}"
                )
            if size > HEADER_LENGTH and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # end the torn line a crashed writer left
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _new_file(self) -> str:
        """Put a fresh, empty spool.log with a new generation in place (caller holds the lock)."""
        generation = uuid.uuid4().hex
        temporary = self.directory / "spool.log.new"
        with os.fdopen(_private(temporary, os.O_WRONLY | os.O_TRUNC), "wb") as out:
            out.write(f"{HEADER_PREFIX}{generation}\n".encode())
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.log_path)
        _fsync_dir(self.directory)
        # The new file holds nothing: every event the markers named is in Redis (or was never
        # spooled, when there was no file); a crash before this only leaves stale markers of
        # events that Redis already has.
        if self.held_path.is_dir():
            for marker in self.held_path.iterdir():
                marker.unlink(missing_ok=True)
        return generation

    def check(self) -> None:
        """Refuse a spool written in another format (a downgrade, or not a spool at all): its
        records would be misread. SpoolError says which file and what to do."""
        if not self.log_path.exists():
            return
        with self.log_path.open("rb") as spool:
            try:
                self._generation(spool.fileno())
            except SpoolError as error:
                raise SpoolError(
                    f"{error}: drain it with the release that wrote it, or move it away"
                ) from None

    def pending(self) -> bool:
        """True while records wait for Redis: new events then queue behind them, in order."""
        try:
            return self.log_path.stat().st_size > HEADER_LENGTH
        except FileNotFoundError:
            return False

    # -- the drainer (only while holding drain.lock) ---------------------------------------

    @contextmanager
    def drain_lock(self) -> Iterator[bool]:
        """True when this caller is the one drainer of the directory until the block ends."""
        with _flock(self.drain_lock_path, blocking=False) as held:
            yield held

    def _read_cursor(self, generation: str) -> int:
        try:
            saved_generation, offset = self.cursor_path.read_text().split()
            if saved_generation == generation:
                return max(int(offset), HEADER_LENGTH)
        except (OSError, ValueError):
            pass  # none yet, or unreadable: from the start (replays are idempotent)
        return HEADER_LENGTH

    def _generation(self, fd: int) -> str:
        header = os.pread(fd, HEADER_LENGTH, 0).decode("ascii", "replace")
        if not header.startswith(HEADER_PREFIX) or len(header) != HEADER_LENGTH:
            raise SpoolError(f"{self.log_path} has no rtt-spool {FILE_VERSION} header")
        return header[len(HEADER_PREFIX) : -1]

    def read_batch(self) -> tuple[str, list[Entry]]:
        """The generation and the next unconfirmed records, oldest first (at most
        ``BATCH_BYTES``, always at least one whole record)."""
        with _flock(self.lock_path, local=self._lock):
            if not self.log_path.exists():
                return "", []
            fd = os.open(self.log_path, os.O_RDONLY)
            try:
                generation = self._generation(fd)
                offset = self._read_cursor(generation)
                size = os.fstat(fd).st_size
                data = os.pread(fd, BATCH_BYTES, offset)
                while len(data) < size - offset and b"\n" not in data:
                    more = os.pread(fd, BATCH_BYTES, offset + len(data))
                    if not more:
                        break
                    data += more
            finally:
                os.close(fd)
        entries = []
        position = offset
        for line in data.split(b"\n")[:-1]:  # the part after the last newline is torn
            position += len(line) + 1
            if not line:
                continue
            try:
                record: Record | None = decode(line)
            except (ValueError, KeyError, TypeError) as error:
                log.error(
                    "spool: unreadable record at byte %d of %s: %s", position, generation, error
                )
                record = None
            entries.append(Entry(position, record, line))
        return generation, entries

    def quarantine(self, entry: Entry, path: Path | None = None) -> None:
        """Keep a record that cannot be replayed, for a person to look at: in
        ``spool.unreadable``, or ``path`` (``spool.unrouted``)."""
        with os.fdopen(
            _private(path or self.unreadable_path, os.O_WRONLY | os.O_APPEND), "ab"
        ) as out:
            out.write(entry.raw + b"\n")
            out.flush()
            os.fsync(out.fileno())

    def confirm(self, generation: str, end: int) -> None:
        """Records before ``end`` are in Redis: never replay them again."""
        temporary = self.directory / "cursor.new"
        with os.fdopen(_private(temporary, os.O_WRONLY | os.O_TRUNC), "w") as out:
            out.write(f"{generation} {end}\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.cursor_path)

    def rotate_if_drained(self) -> bool:
        """Start a fresh file once every record is confirmed, so the spool does not grow."""
        with _flock(self.lock_path, local=self._lock):
            if not self.log_path.exists():
                return True
            with self.log_path.open("rb") as spool:
                generation = self._generation(spool.fileno())
                offset = self._read_cursor(generation)
                spool.seek(offset)
                if b"\n" in spool.read(4 * BATCH_BYTES):
                    return False  # a record arrived since the last batch
            if offset == HEADER_LENGTH and os.path.getsize(self.log_path) == HEADER_LENGTH:
                return True
            self._new_file()
            return True

    # -- what /readyz and the metrics show --------------------------------------------------

    def depth(self) -> int:
        """How many records wait for Redis (torn lines included until the drainer sees them).
        Counted from the cursor to the end of the file, and recounted only when either changed,
        so /readyz and metrics scrapes stay cheap whatever the backlog."""
        try:
            log_stat = self.log_path.stat()
        except FileNotFoundError:
            return 0
        try:
            cursor_stat = self.cursor_path.stat()
            cursor_key = (cursor_stat.st_mtime_ns, cursor_stat.st_ino)
        except FileNotFoundError:
            cursor_key = (0, 0)
        key = (log_stat.st_ino, log_stat.st_size, *cursor_key)
        cached = self._depth_cache
        if cached and cached[0] == key:
            return cached[1]
        try:
            with self.log_path.open("rb") as spool:
                generation = self._generation(spool.fileno())
                spool.seek(self._read_cursor(generation))
                count = 0
                while chunk := spool.read(BATCH_BYTES):
                    count += chunk.count(b"\n")
        except (FileNotFoundError, SpoolError):
            return 0
        self._depth_cache = (key, count)
        return count

    def writable(self) -> bool:
        """Whether an append could succeed now (directory writable, under SPOOL_MAX_BYTES)."""
        return os.access(self.directory, os.W_OK) and self.size_bytes() < self.max_bytes

    def size_bytes(self) -> int:
        try:
            return max(self.log_path.stat().st_size - HEADER_LENGTH, 0)
        except FileNotFoundError:
            return 0
