"""Fault injection against real processes: the receiver under gunicorn, a Redis of the test's own.

Each test breaks something while a simulated Twilio posts many concurrent calls (duplicates and
out-of-order deliveries mixed in, Twilio-like retries), then checks that every callback that got
a 2xx is in the call streams and in rtt:events exactly once, and prints the figures.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import redis

from .support.load import deliveries, figures, run_load, wait_drained

pytestmark = pytest.mark.slow  # starts servers or processes


def worker_pids(master: int) -> set[int]:
    """The gunicorn workers of ``master`` (its child processes), from /proc."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                pids.add(int(entry.name))
    return pids


def check(name: str, client: redis.Redis, tally) -> None:
    result = figures(client, tally)
    print(f"\n[{name}] {result} spooled={tally.spooled} refused={len(tally.refused)}")
    assert result.acknowledged > 0
    assert result.lost == 0, result
    assert result.duplicated == 0, result
    assert result.global_missing == 0 and result.global_duplicated == 0, result


def later(seconds: float, action) -> None:
    threading.Timer(seconds, action).start()


def test_redis_killed_and_restarted_under_load(own_redis, start_receiver, tmp_path):
    receiver = start_receiver(REDIS_URL=own_redis.url, REDIS_TIMEOUT_MS="500")
    callbacks = deliveries(calls=24, seed=1)
    faults = {
        len(callbacks) // 4: own_redis.kill,
        len(callbacks) // 2: own_redis.start,  # same port, same data dir
    }
    tally = run_load(receiver.url, callbacks, faults=faults)
    wait_drained(receiver.url)
    check(
        "redis killed and restarted",
        redis.Redis.from_url(own_redis.url, decode_responses=True),
        tally,
    )
    assert not tally.refused


def test_workers_restarted_and_killed_under_load(own_redis, start_receiver):
    receiver = start_receiver(REDIS_URL=own_redis.url, WEB_CONCURRENCY="2")
    master = receiver.process.pid

    def kill_a_worker() -> None:
        os.kill(min(worker_pids(master)), signal.SIGKILL)  # a crash, mid-request

    callbacks = deliveries(calls=24, seed=2)
    n = len(callbacks)
    faults = {
        n // 5: lambda: os.kill(master, signal.SIGHUP),  # rolling reload of every worker
        2 * n // 5: lambda: os.kill(master, signal.SIGTTIN),  # one more worker
        3 * n // 5: kill_a_worker,
        4 * n // 5: lambda: os.kill(master, signal.SIGTTOU),  # one fewer
    }
    tally = run_load(receiver.url, callbacks, faults=faults)
    wait_drained(receiver.url)
    check(
        "workers reloaded, added, killed, removed",
        redis.Redis.from_url(own_redis.url, decode_responses=True),
        tally,
    )
    assert not tally.refused
    assert receiver.process.poll() is None


def test_spooled_events_survive_a_receiver_shutdown_and_a_redis_outage(own_redis, start_receiver):
    """Redis dies; callbacks are spooled; workers reload mid-outage; the receiver is stopped
    with SIGTERM while still spooling; a new receiver on the same spool drains it all."""
    receiver = start_receiver(REDIS_URL=own_redis.url, REDIS_TIMEOUT_MS="300")
    master = receiver.process.pid
    callbacks = deliveries(calls=16, seed=3)
    n = len(callbacks)
    faults = {n // 6: own_redis.kill, n // 2: lambda: os.kill(master, signal.SIGHUP)}
    tally = run_load(receiver.url, callbacks, faults=faults)
    assert not tally.refused
    assert tally.spooled > 0
    receiver.stop()  # SIGTERM: graceful (stop() would SIGKILL after 15 s: exit code -9)
    assert receiver.process.returncode == 0
    log = receiver.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    own_redis.start()
    successor = start_receiver(REDIS_URL=own_redis.url)
    wait_drained(successor.url)
    check(
        "spool across shutdown and outage",
        redis.Redis.from_url(own_redis.url, decode_responses=True),
        tally,
    )


def accepted_connections(receiver) -> set[tuple[str, int]]:
    """The client ends of the connections the receiver's workers have accepted and hold."""
    held: set[tuple[str, int]] = set()
    for pid in receiver.worker_pids():
        with contextlib.suppress(psutil.Error):
            held.update(
                tuple(c.raddr)
                for c in psutil.Process(pid).net_connections(kind="tcp")
                if c.raddr and c.laddr.port == receiver.port and c.status == psutil.CONN_ESTABLISHED
            )
    return held


def test_sigterm_lets_in_flight_callbacks_finish(own_redis, start_receiver):
    """Callbacks that are waiting on a slow Redis when SIGTERM arrives still get their 200."""
    receiver = start_receiver(REDIS_URL=own_redis.url, REDIS_TIMEOUT_MS="5000")
    admin = redis.Redis.from_url(own_redis.url, decode_responses=True)
    callbacks = deliveries(calls=1, seed=4, duplicate_rate=0)[:5]
    run_load(receiver.url, callbacks[:1])  # workers warm, the script loaded
    admin.client_pause(20_000, all=False)  # writes wait: callbacks stay in flight
    results: list[int] = []

    def post(params) -> None:
        tally = run_load(receiver.url, [params], concurrency=1)
        results.append(202 if tally.spooled else 200 if tally.acknowledged else 0)

    threads = [threading.Thread(target=post, args=(p,)) for p in callbacks[1:5]]
    before = accepted_connections(receiver)  # any the warm-up left open
    for thread in threads:
        thread.start()
    # All four in flight: each accepted by a worker, and Redis holding the writes (a worker's
    # concurrent callbacks share one connection's batch: group commit, so at least one).
    deadline = time.monotonic() + 15
    while (
        len(accepted_connections(receiver) - before) < len(threads)
        or admin.info("clients")["blocked_clients"] < 1
    ):
        assert time.monotonic() < deadline, admin.info("clients")
        time.sleep(0.02)
    receiver.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the workers have been told to stop; the callbacks are still waiting
    admin.client_unpause()
    for thread in threads:
        thread.join(20)
    assert receiver.process.wait(30) == 0
    print(f"\n[sigterm with {len(threads)} callbacks in flight] answers={sorted(results)}")
    assert results == [200] * len(threads)
    stored = {e["sequence_id"] for _, e in admin.xrange("rtt:events")}
    assert stored == {p["SequenceId"] for p in callbacks}


def test_workers_killed_while_draining_the_spool(own_redis, start_receiver):
    """A backlog is spooled during an outage; when Redis returns, every worker is SIGKILLed in
    the middle of the replay, twice. The drain lock passes to the new workers, which replay
    from the last confirmed record: the few replayed twice are absorbed by the dedup key."""
    receiver = start_receiver(REDIS_URL=own_redis.url, REDIS_TIMEOUT_MS="300")
    master = receiver.process.pid
    own_redis.kill()
    tally = run_load(receiver.url, deliveries(calls=30, seed=5))
    assert tally.spooled > 0 and not tally.refused
    own_redis.start()
    admin = redis.Redis.from_url(own_redis.url, decode_responses=True)
    replayed_at_kill = []
    for _ in range(2):
        deadline = time.monotonic() + 10
        while admin.xlen("rtt:events") == 0 and time.monotonic() < deadline:
            time.sleep(0.005)  # the replay has started
        replayed_at_kill.append(admin.xlen("rtt:events"))
        for pid in worker_pids(master):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
    wait_drained(receiver.url)
    print(f"\n[all workers killed twice] entries replayed when killed: {replayed_at_kill}")
    check("workers killed while draining", admin, tally)


def test_two_receivers_sharing_one_spool(own_redis, start_receiver):
    """Blue/green on one host: two gunicorn masters, one SPOOL_DIR. Both spool during an
    outage; their drainers take turns on the drain lock; everything lands once."""
    blue = start_receiver(REDIS_URL=own_redis.url, REDIS_TIMEOUT_MS="300")
    green = start_receiver(REDIS_URL=own_redis.url, REDIS_TIMEOUT_MS="300")
    callbacks = deliveries(calls=12, seed=6)
    own_redis.kill()
    half = len(callbacks) // 2
    tallies = [run_load(blue.url, callbacks[:half]), run_load(green.url, callbacks[half:])]
    own_redis.start()
    wait_drained(blue.url)
    wait_drained(green.url)
    tally = tallies[0]
    tally.sent += tallies[1].sent
    tally.spooled += tallies[1].spooled
    tally.acknowledged |= tallies[1].acknowledged
    assert tally.spooled > 0 and not tally.refused and not tallies[1].refused
    check(
        "two receivers, one spool",
        redis.Redis.from_url(own_redis.url, decode_responses=True),
        tally,
    )
