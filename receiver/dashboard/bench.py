"""`receiver dashboard-bench`: how many viewers one dashboard process holds, at what cost.

Starts an embedded Redis, the receiver and the dashboard (each under gunicorn, as deployed),
connects N viewers to one live call's event stream (raw sockets, one asyncio loop), sends that
call's callbacks to the receiver at a fixed rate, and reports, per N: the Redis commands per
second (all, and the dashboard's own reads), the time from each callback's 200 to the event in
every viewer (p50, p99, max), events missed, and the dashboard's memory (RSS).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import json
import secrets
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import click
import redis
from twilio.request_validator import RequestValidator

from receiver.dashboard.process import start_dashboard
from receiver.devtools.bench.probes import rss_mib
from receiver.devtools.conversation import FINAL_STABILITY
from receiver.protocol import TRACKS, callback_params, content_params, timestamp
from receiver.server.embedded_redis import EmbeddedRedis
from receiver.server.process import Served, start

CALLBACK_PATH = "/transcriptions/callback"
ACCOUNT_SID = "AC" + "0" * 32
# Commands the dashboard sends (the receiver only runs its script, EVALSHA).
DASHBOARD_COMMANDS = ("xread", "xrange", "xrevrange", "zrange", "zrevrange", "hgetall", "ping")


def rss(pid: int) -> float | None:
    """The process's resident memory in MiB (None when it is gone)."""
    return rss_mib([pid]).get(str(pid))


def percentile(values: list[float], q: float) -> float | None:
    """None without samples: the figures are JSON, which has no NaN."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


class Viewers:
    """N Server-Sent Events clients on one asyncio loop, in a thread; each records when each
    event (by SequenceId) arrived."""

    def __init__(self, url: str, count: int) -> None:
        self.parts = urlsplit(url)
        self.count = count
        self.received: list[dict[int, float]] = [{} for _ in range(count)]
        self.connected = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.tasks: list[concurrent.futures.Future] = []

    async def _view(self, n: int) -> None:
        reader, writer = await asyncio.open_connection(self.parts.hostname, self.parts.port)
        path = self.parts.path + (f"?{self.parts.query}" if self.parts.query else "")
        head = f"GET {path} HTTP/1.1\r\nHost: {self.parts.netloc}\r\n"
        writer.write(f"{head}Accept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        counted = False
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                if line.startswith(b": connected") and not counted:
                    counted = True
                    self.connected += 1
                elif line.startswith(b"data: "):
                    data = json.loads(line[6:])
                    if "sequence_id" in data:
                        self.received[n].setdefault(int(data["sequence_id"]), time.monotonic())
        finally:
            writer.close()

    def start(self, timeout: float = 60) -> None:
        self.thread.start()
        for n in range(self.count):
            self.tasks.append(asyncio.run_coroutine_threadsafe(self._view(n), self.loop))
        deadline = time.monotonic() + timeout
        while self.connected < self.count and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.connected < self.count:
            raise click.ClickException(f"only {self.connected} of {self.count} viewers connected")

    async def _cancel(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._cancel(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def call_params(call_sid: str, gt: str, seq: int) -> dict[str, str]:
    """Callback ``seq`` of the bench's call, built as Twilio sends it and stamped now (the
    receiver refuses a ``Timestamp`` older than MAX_EVENT_AGE_SECONDS): a started, then content
    alternating between the tracks every four events, each fourth one a final. Partial results
    are on, so every content event carries Stability and no confidence, as Twilio sends them."""
    if seq == 1:
        event, params = "started", {"Track": "both_tracks", "PartialResults": "true"}
    else:
        final = seq % 4 == 0
        event = "content"
        params = content_params(
            TRACKS[0] if seq % 8 < 4 else TRACKS[1],
            f"words {seq}",
            final=final,
            stability=FINAL_STABILITY if final else 0.8,
        )
    return callback_params(
        event,
        account_sid=ACCOUNT_SID,
        call_sid=call_sid,
        transcription_sid=gt,
        sequence_id=seq,
        timestamp=timestamp(datetime.now(UTC)),
        **params,
    )


def send_call(
    receiver: Served, token: str, call_sid: str, rate: float, seconds: float
) -> tuple[dict[int, float], dict[int, str]]:
    """One call's callbacks at ``rate`` per second for ``seconds``: when each got its 200, by
    SequenceId, and what the others got instead."""
    gt = f"GT{uuid.uuid4().hex}"
    url = receiver.url + CALLBACK_PATH
    validator = RequestValidator(token)
    connection = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=10)
    answered: dict[int, float] = {}
    refused: dict[int, str] = {}
    began = time.monotonic()
    total = max(2, int(rate * seconds))
    for seq in range(1, total + 1):
        due = began + (seq - 1) / rate
        time.sleep(max(0.0, due - time.monotonic()))
        params = call_params(call_sid, gt, seq)
        try:
            connection.request(
                "POST",
                CALLBACK_PATH,
                body=urlencode(params),
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "X-Twilio-Signature": validator.compute_signature(url, params),
                },
            )
            answer = connection.getresponse()
            body = answer.read()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            refused[seq] = f"{type(error).__name__}: {error}"
            continue
        if answer.status == 200:
            answered[seq] = time.monotonic()
        else:
            refused[seq] = f"{answer.status} {body[:200].decode(errors='replace').strip()}"
    connection.close()
    return answered, refused


def command_counts(client: redis.Redis) -> tuple[int, dict[str, int]]:
    stats = client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    return sum(calls.values()), calls


@dataclass
class Run:
    """The figures of one run (None where there was nothing to measure: JSON has no NaN)."""

    viewers: int
    callbacks: int
    callbacks_refused: int
    first_refusal: str | None
    seconds: float
    redis_commands_per_s: float
    dashboard_commands_per_s: float
    events_expected: int
    events_missed: int
    latency_ms_p50: float | None
    latency_ms_p99: float | None
    latency_ms_max: float | None
    latency_ms_mean: float | None
    dashboard_rss_mib_before: float | None
    dashboard_rss_mib_after: float | None
    commands: dict[str, int]

    def problems(self) -> list[str]:
        """Why the run measured nothing trustworthy: a callback not answered 200, no callback
        stored, an event missed."""
        found = []
        if self.callbacks_refused:
            found.append(
                f"{self.callbacks_refused} callbacks were not answered 200 (the first: "
                f"{self.first_refusal})"
            )
        if not self.callbacks:
            found.append("no callback was stored")
        if self.events_missed:
            missed = f"{self.events_missed} of {self.events_expected}"
            found.append(f"the viewers missed {missed} events")
        return found

    def describe(self) -> str:
        """The run in words, for a terminal."""
        delivered = self.events_expected - self.events_missed
        return (
            f"{self.viewers} viewers: {self.callbacks} callbacks in {self.seconds} s; Redis "
            f"{self.redis_commands_per_s} commands/s (the dashboard's: "
            f"{self.dashboard_commands_per_s}); events delivered {delivered} of "
            f"{self.events_expected}; 200 -> viewer p50 {_ms(self.latency_ms_p50)}, p99 "
            f"{_ms(self.latency_ms_p99)}, max {_ms(self.latency_ms_max)}; dashboard RSS "
            f"{self.dashboard_rss_mib_before} -> {self.dashboard_rss_mib_after} MiB"
        )


def phase(
    client: redis.Redis,
    receiver: Served,
    dashboard: Served,
    token: str,
    viewers_count: int,
    rate: float,
    seconds: float,
) -> Run:
    call_sid = f"CA{uuid.uuid4().hex}"
    viewers = Viewers(f"{dashboard.url}/events?call={call_sid}", viewers_count)
    viewers.start()
    worker = max(dashboard.worker_pids() or [dashboard.process.pid])
    rss_before = rss(worker)
    total_before, calls_before = command_counts(client)
    began = time.monotonic()
    answered, refused = send_call(receiver, token, call_sid, rate, seconds)
    elapsed = time.monotonic() - began
    time.sleep(1.0)  # stragglers
    total_after, calls_after = command_counts(client)
    rss_after = rss(worker)
    viewers.stop()
    latencies = [
        (got[seq] - answered[seq]) * 1000
        for got in viewers.received
        for seq in answered
        if seq in got
    ]
    expected = len(answered) * viewers_count
    dashboard_calls = sum(
        calls_after.get(c, 0) - calls_before.get(c, 0) for c in DASHBOARD_COMMANDS
    )
    busiest = sorted(
        ((calls_after[c] - calls_before.get(c, 0), c) for c in calls_after), reverse=True
    )
    return Run(
        viewers=viewers_count,
        callbacks=len(answered),
        callbacks_refused=len(refused),
        first_refusal=next(iter(refused.values()), None),
        seconds=round(elapsed, 2),
        redis_commands_per_s=round((total_after - total_before) / elapsed, 1),
        dashboard_commands_per_s=round(dashboard_calls / elapsed, 1),
        events_expected=expected,
        events_missed=expected - len(latencies),
        latency_ms_p50=percentile(latencies, 0.50),
        latency_ms_p99=percentile(latencies, 0.99),
        latency_ms_max=round(max(latencies), 2) if latencies else None,
        latency_ms_mean=round(statistics.fmean(latencies), 2) if latencies else None,
        dashboard_rss_mib_before=rss_before,
        dashboard_rss_mib_after=rss_after,
        commands={name: count for count, name in busiest[:8]},
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value} ms"


@click.command("dashboard-bench")
@click.option("--viewers", default="1,200", show_default=True, help="Viewer counts, one run each.")
@click.option("--rate", type=float, default=20.0, show_default=True, help="Callbacks per second.")
@click.option("--duration", type=float, default=10.0, show_default=True, help="Seconds per run.")
@click.option("--threads", type=int, default=256, show_default=True, help="DASHBOARD_THREADS.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def dashboard_bench(viewers: str, rate: float, duration: float, threads: int, as_json: bool):
    """Measure the dashboard with 1 and with 200 viewers of a live call (docs/dashboard.md)."""
    counts = [int(v) for v in viewers.split(",") if v.strip()]
    if max(counts) > threads:
        raise click.ClickException(f"--threads {threads} holds fewer viewers than {max(counts)}")
    token = secrets.token_hex(16)
    results: list[Run] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rtt-dashboard-bench-") as tmp:
        workdir = Path(tmp)
        server = EmbeddedRedis(workdir / "redis").start()
        served: list[Served] = []
        try:
            receiver = start(
                {
                    "REDIS_URL": server.url,
                    "TWILIO_AUTH_TOKEN": token,
                    "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
                    "WEB_CONCURRENCY": "1",
                    "LOG_LEVEL": "warning",
                    "SPOOL_DIR": "off",
                    **dict.fromkeys(("PUBLIC_BASE_URL", "PROXY_HOPS", "STREAM_PREFIX")),
                },
                workdir,
                ready_path="/readyz",
            )
            served.append(receiver)
            dashboard = start_dashboard(
                {
                    "REDIS_URL": server.url,
                    "DASHBOARD_THREADS": str(threads),
                    "LOG_LEVEL": "warning",
                    **dict.fromkeys(("DASHBOARD_PASSWORD", "DASHBOARD_PASSWORD_FILE", "BIND")),
                },
                workdir,
            )
            served.append(dashboard)
            client = redis.Redis.from_url(server.url, decode_responses=True)
            for count in counts:
                client.config_resetstat()
                results.append(phase(client, receiver, dashboard, token, count, rate, duration))
                if not as_json:
                    click.echo(results[-1].describe())
                failed = results[-1].problems()
                if failed:
                    break
        finally:
            for process in reversed(served):
                with contextlib.suppress(Exception):
                    process.stop()
            server.stop()
    if as_json:
        click.echo(json.dumps([asdict(r) for r in results], indent=2, allow_nan=False))
    if failed:
        raise click.ClickException(
            f"the run with {results[-1].viewers} viewers measured nothing trustworthy: "
            + "; ".join(failed)
        )
