"""Prometheus metrics: what is counted, and the ``/metrics`` exposition.

Under gunicorn every worker is its own process, so counters and histograms are written to files
in ``PROMETHEUS_MULTIPROC_DIR`` (set up by ``deploy/gunicorn.conf.py``) and a scrape, whichever
worker answers it, adds up all of them. Values that describe shared state rather than one
process (calls in progress, spool depth) are read at scrape time instead, so they are never
stale or counted twice.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

import redis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Event types Twilio documents; anything else is counted as "other" to bound label values.
EVENT_TYPES = ("started", "content", "stopped", "error")

CALLBACKS = Counter(
    "rtt_callbacks",
    "Transcription callbacks answered, by event type and outcome; reason says why a callback "
    "was rejected (the documented Twilio parameter at fault, repeated, timestamp_*, other).",
    ["event", "outcome", "reason"],
)
CALLBACK_DURATION = Histogram(
    "rtt_callback_duration_seconds",
    "Time from receiving a callback to answering it, by outcome.",
    ["outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
ACCOUNT_CALLBACKS = Counter(
    "rtt_account_callbacks",
    "Callbacks with a valid signature, by the AccountSid that signed them and outcome (one "
    "series per account of TWILIO_ACCOUNTS_FILE, or the one account).",
    ["account_sid", "outcome"],
)
REDIS_ERRORS = Counter(
    "rtt_redis_errors",
    "Redis commands that failed, by error class (ConnectionError, TimeoutError, ...).",
    ["error"],
)


def event_label(event: str | None) -> str:
    if event is None:
        return "unknown"
    return event if event in EVENT_TYPES else "other"


# Callbacks are counted in this process' memory and written to the metric (in multiprocess
# mode: its mmap'd file, under a lock) every FLUSH_SECONDS, at a scrape this process answers,
# and when the worker exits: a dict update per callback instead of two locked file writes.
# Another worker's counts reach a scrape at most FLUSH_SECONDS late.
FLUSH_SECONDS = 1.0
_BOUNDS = CALLBACK_DURATION._upper_bounds  # the buckets, +Inf last
_counts: dict[tuple[str, str, str], int] = {}
# outcome -> (sum of seconds, count per bucket)
_durations: dict[str, tuple[float, list[int]]] = {}
_lock = threading.Lock()
_flusher_pid: int | None = None


def observe_callback(event: str | None, outcome: str, reason: str, seconds: float) -> None:
    global _flusher_pid
    key = (event_label(event), outcome, reason)
    bucket = bisect_left(_BOUNDS, seconds)  # the first bound >= seconds, as Histogram does
    with _lock:
        _counts[key] = _counts.get(key, 0) + 1
        total, buckets = _durations.get(outcome) or (0.0, [0] * len(_BOUNDS))
        buckets[bucket] += 1
        _durations[outcome] = (total + seconds, buckets)
        if _flusher_pid == os.getpid():
            return
        _flusher_pid = os.getpid()  # none yet, or inherited across a fork
    threading.Thread(target=_flush_forever, name="rtt-metrics-flusher", daemon=True).start()


def _flush_forever() -> None:
    pid = os.getpid()
    while _flusher_pid == pid:
        time.sleep(FLUSH_SECONDS)
        flush()


def flush() -> None:
    """Add what this process counted since the last flush to the Prometheus metrics."""
    with _lock:
        counts, durations = dict(_counts), dict(_durations)
        _counts.clear()
        _durations.clear()
    for (event, outcome, reason), count in counts.items():
        CALLBACKS.labels(event=event, outcome=outcome, reason=reason).inc(count)
    for outcome, (total, buckets) in durations.items():
        # Histogram has no "observe many": add to its sum and buckets as observe() would.
        child = CALLBACK_DURATION.labels(outcome=outcome)
        child._sum.inc(total)
        for index, count in enumerate(buckets):
            if count:
                child._buckets[index].inc(count)


def count_account_callback(account_sid: str, outcome: str) -> None:
    ACCOUNT_CALLBACKS.labels(account_sid=account_sid, outcome=outcome).inc()


def count_redis_error(error: BaseException) -> None:
    REDIS_ERRORS.labels(error=type(error).__name__).inc()


class LiveState:
    """Gauges read when scraped: calls in progress (the members of the active calls index of
    every stream prefix this receiver writes, one per account with its own, whose latest event
    is within ``idle_seconds``) and the spool depth (from ``spool_depth``, a callable reading
    the on-disk spool; 0 without one).

    The index is trimmed of calls idle for the retention only when an event is written: when
    traffic stops, such calls stay in it. Counting by score (``ZCOUNT``) rather than ``ZCARD``
    leaves out what the store itself considers gone, on the store's own ``clock``."""

    def __init__(
        self,
        client: redis.Redis,
        active_calls_keys: Sequence[str],
        spool_depth: Callable[[], int],
        idle_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.active_calls_keys = active_calls_keys
        self.spool_depth = spool_depth
        self.idle_seconds = idle_seconds
        self.clock = clock

    def collect(self) -> Iterable[Metric]:
        spool = GaugeMetricFamily(
            "rtt_spool_depth", "Callbacks waiting in the on-disk spool for Redis to come back."
        )
        spool.add_metric([], float(self.spool_depth()))
        yield spool
        # The store's trim removes scores below now - retention: those at it are still in.
        since = int(self.clock() * 1000) - self.idle_seconds * 1000
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for key in self.active_calls_keys:
                    pipe.zcount(key, since, "+inf")
                active = sum(pipe.execute())
        except redis.RedisError as error:
            count_redis_error(error)
            return  # absent rather than a wrong 0: alert on absent(rtt_calls_in_progress)
        calls = GaugeMetricFamily(
            "rtt_calls_in_progress",
            "Calls with a transcription in progress and an event within CALL_RETENTION_SECONDS "
            "(rtt:calls:active, of every prefix).",
        )
        calls.add_metric([], float(active))
        yield calls


def exposition(live: LiveState) -> tuple[bytes, str]:
    """The text a scrape gets: every worker's counters plus the live gauges."""
    flush()
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        shared = generate_latest(registry)
    else:
        shared = generate_latest(REGISTRY)
    scraped = CollectorRegistry()
    scraped.register(live)
    return shared + generate_latest(scraped), CONTENT_TYPE_LATEST
