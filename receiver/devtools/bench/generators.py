"""Load generators: ``wrk`` for closed-loop throughput, an asyncio generator for the rest.

``wrk`` (Debian package ``wrk``, driven by ``wrk.lua``) is used for closed loops when it is
installed: on a 2-core machine a Python generator takes CPU from the server and under-reports
the fastest one, the empty route, by up to about 20% (docs/performance.md). The asyncio
generator (raw sockets, keep-alive) is the fallback and also drives the fixed-rate phase, which
wrk cannot do, recording the send time of sampled calls for the end-to-end latency.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlsplit

import click

from receiver.devtools.bench.traffic import Callback

WRK_SCRIPT = files(__package__).joinpath("wrk.lua")
WRK_HINT = (
    "wrk is not installed: using the Python generator, which shares the CPU with the server and "
    "under-reports on small machines. Install wrk with `make test-tools` (Debian/Ubuntu: "
    "apt-get install wrk; macOS: brew install wrk)."
)


@dataclass
class Phase:
    """One timed run of one generator against one server."""

    target: str
    generator: str
    seconds: float
    requests: int
    requests_per_second: float
    latency_ms: dict[str, float]
    statuses: dict[str, int]
    socket_errors: int = 0
    offered_rate: float | None = None
    late_sends: int = 0
    # The closed loop used up its signed pool before the phase's time was over: it never sends a
    # request twice (a duplicate is answered without being stored), and the phase ends early.
    ran_out: bool = False
    # CPU time the server's processes (gunicorn master and workers) and Redis spent per answered
    # request during the phase: unlike req/s, hardly moved by other load on the machine.
    cpu_us_per_request: dict[str, float] = field(default_factory=dict)


def percentiles_ms(samples_ns: Sequence[int]) -> dict[str, float]:
    if not samples_ns:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(samples_ns)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6, 3)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1] / 1e6, 3)}


# --- generators -------------------------------------------------------------------------------


def run_wrk(
    target: str,
    url: str,
    traffic: Sequence[Callback],
    *,
    seconds: float,
    connections: int,
    threads: int,
    workdir: Path,
) -> Phase:
    """Closed loop: ``connections`` keep-alive connections, each sends as soon as answered."""
    prefix = workdir / f"requests-{target}"
    for n in range(threads):
        with open(f"{prefix}.{n}", "wb") as out:
            for callback in traffic[n::threads]:
                out.write(b"%d\n" % len(callback.raw) + callback.raw)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{max(connections, threads)}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        url,
        "--",
        str(prefix),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    match = re.search(r"RECEIVER-BENCH-RESULT (\{.*\})", done.stdout)
    if done.returncode or not match:
        raise click.ClickException(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    result = json.loads(match.group(1))
    elapsed = result["duration_us"] / 1e6
    errors = sum(result["socket_errors"].values())
    return Phase(
        target=target,
        generator="wrk",
        seconds=round(elapsed, 2),
        requests=result["requests"],
        requests_per_second=round(result["requests"] / elapsed, 1),
        latency_ms={k: round(v / 1000, 3) for k, v in result["latency_us"].items()},
        statuses=dict(sorted(result["statuses"].items())),
        socket_errors=errors,
        ran_out=result["ran_out"],
    )


class _Connection:
    """One keep-alive HTTP/1.1 connection that sends raw requests and reads whole answers."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def exchange(self, raw: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.tls
            )
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if length:
            await self.reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _python_phase(
    url: str,
    traffic: Sequence[Callback],
    *,
    seconds: float,
    connections: int,
    rate: float | None,
    sampled: frozenset[str],
) -> tuple[list[int], Counter, int, int, float, bool, dict[tuple[str, int], int]]:
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if https else 80)
    tls = ssl.create_default_context() if https else None
    latencies: list[int] = []
    statuses: Counter = Counter()
    sent_at: dict[tuple[str, int], int] = {}
    state = {"next": 0, "errors": 0, "late": 0, "ran_out": 0}
    start = time.perf_counter()
    deadline = start + seconds
    total = len(traffic) if rate is None else min(len(traffic), int(rate * seconds))

    async def worker(slot: int) -> None:
        conn = _Connection(host, port, tls)
        index = slot
        while True:
            if rate is None:
                index = state["next"]
                state["next"] += 1
                if time.perf_counter() >= deadline:
                    break
                if index >= len(traffic):
                    state["ran_out"] = 1
                    break
            else:
                if index >= total:
                    break
                due = start + index / rate
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif wait < -0.005:
                    state["late"] += 1
            callback = traffic[index]
            if callback.call_sid in sampled:
                sent_at[(callback.call_sid, callback.sequence_id)] = time.time_ns()
            # Open loop: from the due time, so that waiting behind a slow answer on this
            # connection counts (no coordinated omission). Closed loop: from the send.
            began = time.perf_counter_ns() if rate is None else int(due * 1e9)
            try:
                status = await conn.exchange(callback.raw)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                state["errors"] += 1
                conn.close()
            else:
                latencies.append(time.perf_counter_ns() - began)
                statuses[str(status)] += 1
            if rate is not None:
                index += connections
        conn.close()

    await asyncio.gather(*(worker(n) for n in range(connections)))
    elapsed = time.perf_counter() - start
    ran_out = bool(state["ran_out"])
    return latencies, statuses, state["errors"], state["late"], elapsed, ran_out, sent_at


def run_python(
    target: str,
    url: str,
    traffic: Sequence[Callback],
    *,
    seconds: float,
    connections: int,
    rate: float | None = None,
    sampled: frozenset[str] = frozenset(),
) -> tuple[Phase, dict[tuple[str, int], int]]:
    """Closed loop (``rate`` None) or open loop at a fixed offered rate: request i is due at
    start + i/rate whatever the answers do, spread over ``connections`` connections."""
    latencies, statuses, errors, late, elapsed, ran_out, sent_at = asyncio.run(
        _python_phase(
            url, traffic, seconds=seconds, connections=connections, rate=rate, sampled=sampled
        )
    )
    phase = Phase(
        target=target,
        generator="python",
        seconds=round(elapsed, 2),
        requests=len(latencies),
        requests_per_second=round(len(latencies) / elapsed, 1),
        latency_ms=percentiles_ms(latencies),
        statuses=dict(sorted(statuses.items())),
        socket_errors=errors,
        offered_rate=rate,
        late_sends=late,
        ran_out=ran_out,
    )
    return phase, sent_at
