"""What the bench observes besides the generators' own figures: the end-to-end consumer, CPU
time and memory of the servers' processes, and the machine.

CPU and RSS come from ``psutil``, which reads /proc on Linux and the platform's equivalent
elsewhere, so the figures exist on macOS too and no /proc format is parsed here.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence

import psutil
import redis

from receiver.devtools.bench.generators import percentiles_ms
from receiver.storage.contract import Keys


def _consume(redis_url: str, keys: list[str], ready, stop, results) -> None:
    """Separate process: XREAD BLOCK on the sampled calls' streams; (call, seq) -> read time."""
    client = redis.Redis.from_url(redis_url)
    last = dict.fromkeys(keys, "0-0")
    seen: dict[tuple[str, int], int] = {}
    ready.set()
    while not stop.is_set():
        replies = client.xread(last, block=100)
        now = time.time_ns()
        for key, entries in replies or []:
            for entry_id, fields in entries:
                last[key.decode()] = entry_id.decode()
                sequence = fields.get(b"sequence_id")
                if sequence is not None:
                    seen[(fields[b"call_sid"].decode(), int(sequence))] = now
    results.send(seen)
    client.close()


@contextlib.contextmanager
def consumer(redis_url: str, prefix: str, call_sids: Sequence[str]) -> Iterator[dict]:
    """Runs ``_consume`` in its own process (so that it shares no GIL with the generator) for
    the duration of the block; the dict it yields is filled on exit."""
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    receive, send = context.Pipe(duplex=False)
    # A call's record and its partial results (schema 2 keeps them in two streams).
    keys = [
        key for sid in call_sids for key in (Keys(prefix).call(sid), Keys(prefix).partials(sid))
    ]
    process = context.Process(target=_consume, args=(redis_url, keys, ready, stop, send))
    process.start()
    ready.wait(30)
    seen: dict = {}
    try:
        yield seen
    finally:
        time.sleep(0.3)  # the last entries of the phase
        stop.set()
        if receive.poll(10):
            seen.update(receive.recv())
        process.join(5)
        if process.is_alive():
            process.kill()


def end_to_end(sent_at: dict, read_at: dict) -> dict[str, float | int]:
    delays = [read_at[k] - v for k, v in sent_at.items() if k in read_at]
    return {"samples": len(delays), "missing": len(sent_at) - len(delays), **percentiles_ms(delays)}


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (gunicorn's workers)."""
    with contextlib.suppress(psutil.Error):
        return sorted(child.pid for child in psutil.Process(pid).children())
    return []


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time the processes have used so far (0 for any that is gone)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def rss_mib(pids: Sequence[int]) -> dict[str, float]:
    """Resident memory of each process, in MiB."""
    out = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            out[str(pid)] = round(psutil.Process(pid).memory_info().rss / 2**20, 1)
    return out


def machine() -> dict[str, object]:
    """What the figures were measured on; the CPU model as the platform names it."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        model = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
            "",
        )
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "load_average": [round(x, 2) for x in psutil.getloadavg()],
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }


def stored(redis_url: str, keys: Keys, call_sids: Sequence[str]) -> int:
    """How many entries the call streams of ``call_sids`` hold under ``keys``' prefix."""
    client = redis.Redis.from_url(redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for sid in call_sids:
            pipe.xlen(keys.call(sid))
            pipe.xlen(keys.partials(sid))
        return sum(pipe.execute())
    finally:
        client.close()
