"""A simulated Twilio for fault-injection tests: many concurrent calls, duplicates, out-of-order
deliveries, Twilio-like retries; then the tally of what was acknowledged against what Redis holds.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import redis
import requests

from receiver.protocol import is_retried

from .streams import call_entries
from .twilio_calls import CALLBACK_PATH, sid, sign, whole_call


@dataclass
class Tally:
    sent: int = 0  # HTTP attempts, retries and duplicates included
    acknowledged: set[tuple[str, str]] = field(default_factory=set)  # (CallSid, SequenceId)
    refused: list[tuple[int, str]] = field(default_factory=list)  # final non-2xx answers
    spooled: int = 0  # 202 answers: durable in the receiver's spool, not yet in Redis
    lock: threading.Lock = field(default_factory=threading.Lock)


def deliveries(calls: int, seed: int, duplicate_rate: float = 0.25) -> list[dict[str, str]]:
    """Every callback of ``calls`` whole calls, some twice, shuffled: at least once, any order."""
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    for _ in range(calls):
        events = whole_call(sid("CA"), sid("GT"))
        out += events + [e for e in events if rng.random() < duplicate_rate]
    rng.shuffle(out)
    return out


def deliver(
    session: requests.Session, base: str, params: dict[str, str], tally: Tally, attempts: int = 6
) -> None:
    """Post like Twilio: retry 5xx, 408, 425, 429 and connection failures, a few times."""
    url = base + CALLBACK_PATH
    headers = {"X-Twilio-Signature": sign(url, params)}
    status = 0  # 0: no answer at all (connection refused or reset)
    for attempt in range(attempts):
        with tally.lock:
            tally.sent += 1
        try:
            response = session.post(url, data=params, headers=headers, timeout=10)
        except requests.RequestException:
            time.sleep(0.05 * (attempt + 1))
            continue
        status = response.status_code
        if 200 <= status < 300:
            with tally.lock:
                tally.acknowledged.add((params["CallSid"], params["SequenceId"]))
                tally.spooled += status == 202
            return
        if not is_retried(status):
            break
        time.sleep(0.05 * (attempt + 1))
    with tally.lock:
        tally.refused.append((status, params["CallSid"]))


def run_load(
    base: str,
    callbacks: list[dict[str, str]],
    *,
    concurrency: int = 12,
    faults: dict[int, Callable[[], None]] | None = None,
) -> Tally:
    """Send ``callbacks`` concurrently; ``faults[n]`` runs once the n-th callback is started."""
    tally = Tally()
    faults = dict(faults or {})
    sessions = threading.local()
    started = Counter()
    fault_lock = threading.Lock()

    def one(params: dict[str, str]) -> None:
        with fault_lock:
            started["n"] += 1
            fault = faults.pop(started["n"], None)
        if fault:
            fault()
        if not hasattr(sessions, "session"):
            sessions.session = requests.Session()
        deliver(sessions.session, base, params, tally)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, callbacks))
    return tally


@dataclass(frozen=True)
class Figures:
    sent: int
    acknowledged: int
    stored: int
    lost: int
    duplicated: int
    global_duplicated: int
    global_missing: int

    def __str__(self) -> str:
        return (
            f"sent={self.sent} acknowledged={self.acknowledged} stored={self.stored} "
            f"lost={self.lost} duplicated={self.duplicated} "
            f"(rtt:events: duplicated={self.global_duplicated} missing={self.global_missing})"
        )


def figures(client: redis.Redis, tally: Tally, prefix: str = "rtt") -> Figures:
    """Compare what got a 2xx with what the call streams and ``rtt:events`` hold."""
    calls = {call for call, _ in tally.acknowledged}
    in_calls: Counter[tuple[str, str]] = Counter()
    for call in calls:
        for entry in call_entries(client, call, prefix):
            in_calls[(entry["call_sid"], entry["sequence_id"])] += 1
    in_events: Counter[tuple[str, str]] = Counter(
        (entry["call_sid"], entry["sequence_id"])
        for _, entry in client.xrange(f"{prefix}:events")
        if entry["call_sid"] in calls
    )
    return Figures(
        sent=tally.sent,
        acknowledged=len(tally.acknowledged),
        stored=len(in_calls),
        lost=len(tally.acknowledged - set(in_calls)),
        duplicated=sum(n - 1 for n in in_calls.values() if n > 1),
        global_duplicated=sum(n - 1 for n in in_events.values() if n > 1),
        global_missing=len(tally.acknowledged - set(in_events)),
    )


def wait_drained(base: str, timeout: float = 20) -> dict:
    """Wait until the receiver's spool is empty and Redis answers; returns /readyz's JSON."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ready = requests.get(base + "/readyz", timeout=2).json()
            if ready.get("redis") == "ok" and ready.get("spool_depth", 0) == 0:
                return ready
        except (requests.RequestException, ValueError):
            ready = {}
        if time.monotonic() > deadline:
            raise AssertionError(f"spool not drained in {timeout}s: {ready}")
        time.sleep(0.1)
