"""`receiver bench`: realistic, signed Twilio traffic against a receiver, and an honest baseline.

Traffic: N concurrent calls, both tracks, each utterance sent as partial results (one per word,
the transcript growing) and then a final, with every parameter Twilio sends on a content
callback. Every request is signed with the receiver's own ``signature.compute`` (the ``twilio``
package's HMAC) *before* the timed phase, and written out as raw HTTP bytes, so the generator
only copies bytes over keep-alive connections.

Generators: ``wrk`` (Debian package ``wrk``, driven by ``bench.lua``) when it is installed, for
closed-loop throughput: on a 2-core machine a Python generator takes CPU from the server and
under-reports the fastest one, the empty route, by up to about 20% (README, "Performance").
A pure-Python asyncio generator (raw sockets, keep-alive) is the fallback and also drives the
fixed-rate phase (``--rate``), which wrk cannot do, and which records the send time of sampled
calls for the end-to-end latency: a separate consumer process reads those calls' streams with
``XREAD BLOCK`` and notes when each event arrives.

Baseline: an empty Flask route returning 204 (``receiver.bench_baseline``) served by the same
gunicorn configuration, measured in the same run with the same generator and requests, rounds
interleaved; the receiver's throughput is printed as a ratio of it. Absolute figures depend on
the machine and whatever else runs on it; the ratio and the CPU time per request, less.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import multiprocessing
import os
import random
import re
import secrets
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import click
import redis

from receiver.config import redact_url
from receiver.protocol import SIGNATURE_HEADER, callback_params, content_params, timestamp
from receiver.server.embedded_redis import EmbeddedRedis
from receiver.server.process import Served, ServeError, children, start
from receiver.signature import compute
from receiver.storage.store import Keys
from receiver.views.callback import CALLBACK_PATH

WRK_SCRIPT = files(__package__).joinpath("wrk.lua")
WRK_HINT = (
    "wrk is not installed: using the Python generator, which shares the CPU with the server and "
    "under-reports on small machines. Install wrk with `make test-tools` (Debian/Ubuntu: "
    "apt-get install wrk; macOS: brew install wrk)."
)

# How many callbacks a live call sends per second, derived from a speech rate (see
# EVENTS_PER_CALL_DERIVATION); `--events-per-call` overrides it.
SPEECH_WORDS_PER_SECOND = 2.5  # 150 words a minute, conversational English
TALK_SHARE = 0.5  # each party speaks about half of the call
PARTIALS_PER_WORD = 1.5  # engines revise a partial result more than once per word
WORDS_PER_UTTERANCE = 12  # one final per utterance
EVENTS_PER_TRACK = (
    SPEECH_WORDS_PER_SECOND * TALK_SHARE * (PARTIALS_PER_WORD + 1 / WORDS_PER_UTTERANCE)
)
EVENTS_PER_CALL = round(2 * EVENTS_PER_TRACK, 1)
EVENTS_PER_CALL_DERIVATION = (
    f"both tracks x {SPEECH_WORDS_PER_SECOND} words/s (150 words/min) x {TALK_SHARE} talk "
    f"share x ({PARTIALS_PER_WORD} partials per word + 1 final per {WORDS_PER_UTTERANCE} words) "
    f"= {EVENTS_PER_CALL} callbacks/s per call"
)

GOAL_RATIO = 0.75
GOAL_P99_MS = 10.0
GOAL_E2E_P99_MS = 2.0
GOAL_RATE = 1000

VOCABULARY = (
    "yes no okay so I we you they my your our account order number card payment bill charge "
    "refund delivery address phone email password reset help need want could would should can "
    "please thanks thank sorry hello hi morning afternoon today yesterday tomorrow week month "
    "last next first second again still already just really actually problem issue question "
    "change cancel update check confirm send receive call back hold transfer minute moment "
    "name spell letter digit code the a an and but or because if when then that this it is was "
    "be have has had do does did not with for on in at to from about after before"
)
WORDS = tuple(VOCABULARY.split())


# --- traffic ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Callback:
    """One precomputed request: raw HTTP bytes, and what identifies its stream entry."""

    raw: bytes
    call_sid: str
    sequence_id: int


def _utterances(rng: random.Random) -> Iterator[tuple[str, list[str]]]:
    """Turns of a two-party call: (track, words of one utterance), forever."""
    track = "inbound_track"
    while True:
        for _ in range(rng.choice((1, 1, 2))):
            yield track, rng.choices(WORDS, k=rng.randint(4, 2 * WORDS_PER_UTTERANCE - 4))
        track = "outbound_track" if track == "inbound_track" else "inbound_track"


# Seconds of speech between two callbacks of one call, as their Timestamps advance.
CALLBACK_SECONDS = 1 / SPEECH_WORDS_PER_SECOND / PARTIALS_PER_WORD


def call_params(
    account_sid: str, call_sid: str, rng: random.Random, start: float | None = None
) -> Iterator[dict[str, str]]:
    """Twilio's callbacks of one live call: ``transcription-started``, then partials and finals
    on both tracks, as the form parameters Twilio sends (names and shapes of
    docs/streams.md and Twilio's protocol). Timestamps advance from ``start`` (default: now)."""
    transcription_sid = "GT" + uuid.UUID(int=rng.getrandbits(128)).hex
    clock = time.time() if start is None else start
    sequence = 1

    def common(event: str) -> dict[str, str]:
        return callback_params(
            event,
            account_sid=account_sid,
            call_sid=call_sid,
            transcription_sid=transcription_sid,
            sequence_id=sequence,
            timestamp=timestamp(datetime.fromtimestamp(clock, UTC)),
        )

    yield {
        **common("started"),
        "Name": "support-line",
        "Track": "both_tracks",
        "LanguageCode": "en-US",
        "TranscriptionEngine": "google",
        "SpeechModel": "telephony",
        "PartialResults": "true",
        "InboundTrackLabel": "customer",
        "OutboundTrackLabel": "agent",
        "ProviderConfiguration": '{"enableAutomaticPunctuation":true,"profanityFilter":true}',
    }
    for track, words in _utterances(rng):
        for n in range(1, len(words) + 1):
            sequence += 1
            clock += CALLBACK_SECONDS
            final = n == len(words)
            text = " ".join(words[:n])
            if final:
                text = text[0].upper() + text[1:] + "."
                scores = {"confidence": round(rng.uniform(0.8, 0.99), 7)}
            else:
                scores = {"stability": rng.uniform(0.6, 0.95)}
            yield {
                **common("content"),
                **content_params(track, text, final=final, **scores),
            }


def raw_request(url: str, signed_url: str, params: dict[str, str], token: str) -> bytes:
    """The exact bytes Twilio would send to ``url``: form body, X-Twilio-Signature over
    ``signed_url`` (the public URL the receiver is told about, or ``url`` itself)."""
    signature = compute(token, signed_url, {k: [v] for k, v in params.items()})
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    body = urlencode(params).encode()
    head = (
        f"POST {target} HTTP/1.1\r\n"
        f"Host: {parts.netloc}\r\n"
        "User-Agent: TwilioProxy/1.1\r\n"
        "Accept: */*\r\n"
        "Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n"
        f"{SIGNATURE_HEADER}: {signature}\r\n"
        f"I-Twilio-Idempotency-Token: {uuid.uuid4()}\r\n"
        "X-Home-Region: us1\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def make_traffic(
    *, calls: int, count: int, url: str, signed_url: str, token: str, seed: int
) -> list[Callback]:
    """``count`` signed callbacks of ``calls`` interleaved live calls, all new to the receiver
    (fresh CallSids), so every one is stored rather than answered as a duplicate."""
    rng = random.Random(seed)
    account_sid = "AC" + uuid.UUID(int=rng.getrandbits(128)).hex
    call_sids = ["CA" + uuid.uuid4().hex for _ in range(calls)]
    # Sent faster than speech, a call's Timestamps would run ahead of the clock, and the
    # receiver refuses those more than 5 minutes ahead: they end now instead.
    start = time.time() - -(-count // calls) * CALLBACK_SECONDS
    streams = [
        call_params(account_sid, sid, random.Random(rng.random()), start) for sid in call_sids
    ]
    out: list[Callback] = []
    while len(out) < count:
        for call_sid, stream in zip(call_sids, streams, strict=True):
            params = next(stream)
            raw = raw_request(url, signed_url, params, token)
            out.append(Callback(raw, call_sid, int(params["SequenceId"])))
            if len(out) == count:
                break
    return out


# --- results ----------------------------------------------------------------------------------


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
    repeated: int = 0
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
        repeated=max(0, result["requests"] - len(traffic)),
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
) -> tuple[list[int], Counter, int, int, float, int, dict[tuple[str, int], int]]:
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if https else 80)
    tls = ssl.create_default_context() if https else None
    latencies: list[int] = []
    statuses: Counter = Counter()
    sent_at: dict[tuple[str, int], int] = {}
    state = {"next": 0, "errors": 0, "late": 0}
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
            else:
                if index >= total:
                    break
                due = start + index / rate
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif wait < -0.005:
                    state["late"] += 1
            callback = traffic[index % len(traffic)]
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
    sent = len(latencies) + state["errors"]
    return latencies, statuses, state["errors"], state["late"], elapsed, sent, sent_at


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
    latencies, statuses, errors, late, elapsed, sent, sent_at = asyncio.run(
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
        repeated=max(0, sent - len(traffic)),
    )
    return phase, sent_at


# --- end-to-end consumer ----------------------------------------------------------------------


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
    """Runs ``_consume`` for the duration of the block; the dict it yields is filled on exit."""
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


# --- servers ----------------------------------------------------------------------------------


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of the processes, from /proc (0 elsewhere)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mib(pids: Sequence[int]) -> dict[str, float]:
    """VmRSS of each process, in MiB (Linux /proc; empty elsewhere)."""
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[str(pid)] = round(int(line.split()[1]) / 1024, 1)
    return out


def machine() -> dict[str, object]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Options:
    url: str | None
    baseline_url: str | None
    redis_url: str | None
    signed_base_url: str | None
    token: str | None
    prefix: str
    seconds: float
    rounds: int
    connections: int
    calls: int
    rate: float
    rate_seconds: float
    rate_connections: int
    events_per_call: float
    generator: str
    wrk_threads: int
    workers: int | None
    threads: int | None
    worker_class: str | None
    baseline: bool
    expected_rate: float
    sample_calls: int
    server_pid: int | None
    redis_pid: int | None


@dataclass
class Report:
    machine: dict[str, object]
    config: dict[str, object]
    assumptions: dict[str, object]
    baseline: list[Phase] = field(default_factory=list)
    receiver: list[Phase] = field(default_factory=list)
    fixed_rate: Phase | None = None
    end_to_end_ms: dict[str, float | int] | None = None
    stored: int | None = None
    sent: int = 0
    workers_rss_mib: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def median(self, phases: list[Phase]) -> float | None:
        return statistics.median(p.requests_per_second for p in phases) if phases else None

    def summary(self) -> dict[str, object]:
        receiver = self.median(self.receiver)
        baseline = self.median(self.baseline)
        ratio = round(receiver / baseline, 3) if receiver and baseline else None
        epc = self.assumptions["events_per_call_per_second"]
        p99 = self.fixed_rate.latency_ms["p99"] if self.fixed_rate else None
        e2e = self.end_to_end_ms["p99"] if self.end_to_end_ms else None
        offered = self.fixed_rate.offered_rate if self.fixed_rate else None
        achieved = self.fixed_rate.requests_per_second if self.fixed_rate else None
        # A latency goal "at 1,000 req/s" is judged only when about that rate was achieved.
        held = offered == GOAL_RATE and achieved is not None and achieved >= 0.95 * GOAL_RATE
        goals = [
            {
                "goal": f"throughput >= {GOAL_RATIO}x the empty route",
                "measured": ratio,
                "met": None if ratio is None else ratio >= GOAL_RATIO,
            },
            {
                "goal": f"p99 latency < {GOAL_P99_MS} ms at {GOAL_RATE} req/s offered",
                "measured": p99,
                "offered": offered,
                "achieved": achieved,
                "met": None if p99 is None or not held else p99 < GOAL_P99_MS,
            },
            {
                "goal": f"end-to-end p99 < {GOAL_E2E_P99_MS} ms at {GOAL_RATE} req/s offered",
                "measured": e2e,
                "offered": offered,
                "achieved": achieved,
                "met": None if e2e is None or not held else e2e < GOAL_E2E_P99_MS,
            },
        ]
        return {
            "receiver_requests_per_second": receiver,
            "baseline_requests_per_second": baseline,
            "ratio_to_baseline": ratio,
            "live_calls_sustained": int(receiver / epc) if receiver else None,
            "goals": goals,
        }

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["summary"] = self.summary()
        return data


def _stored(redis_url: str, prefix: str, call_sids: Sequence[str]) -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for sid in call_sids:
            pipe.xlen(Keys(prefix).call(sid))
            pipe.xlen(Keys(prefix).partials(sid))
        return sum(pipe.execute())
    finally:
        client.close()


def _closed_loop(
    options: Options, target: str, url: str, traffic: Sequence[Callback], workdir: Path
) -> Phase:
    if options.generator == "wrk":
        return run_wrk(
            target,
            url + CALLBACK_PATH,
            traffic,
            seconds=options.seconds,
            connections=options.connections,
            threads=options.wrk_threads,
            workdir=workdir,
        )
    phase, _ = run_python(
        target,
        url + CALLBACK_PATH,
        traffic,
        seconds=options.seconds,
        connections=options.connections,
    )
    return phase


def measure(
    options: Options,
    receiver_url: str,
    baseline_url: str | None,
    redis_url: str | None,
    token: str,
    workdir: Path,
    pids: dict[str, list[int]],
    say,
) -> Report:
    """Warm up, then rounds of (baseline, receiver) closed loop, then the fixed-rate phase.

    ``pids`` (when the bench started the servers): "receiver", "baseline" (gunicorn master and
    workers), "redis" and "workers" (the receiver's workers, whose RSS is reported).
    """
    report = Report(
        machine=machine(),
        config={k: v for k, v in asdict(options).items() if k not in ("token", "redis_url")},
        assumptions={
            "events_per_call_per_second": options.events_per_call,
            "derivation": EVENTS_PER_CALL_DERIVATION
            if options.events_per_call == EVENTS_PER_CALL
            else "given with --events-per-call",
        },
    )
    signed_base = (options.signed_base_url or receiver_url).rstrip("/")
    seed = random.randrange(1 << 30)

    def traffic(count: int, calls: int) -> list[Callback]:
        nonlocal seed
        seed += 1
        return make_traffic(
            calls=calls,
            count=count,
            url=receiver_url + CALLBACK_PATH,
            signed_url=signed_base + CALLBACK_PATH,
            token=token,
            seed=seed,
        )

    say("warming up")
    warm = traffic(2000, 50)
    for url in filter(None, (baseline_url, receiver_url)):
        run_python("warmup", url + CALLBACK_PATH, warm, seconds=1.0, connections=4)
    report.workers_rss_mib["start"] = rss_mib(pids.get("workers", []))

    def timed(target: str, run_phase) -> Phase:
        server, store = pids.get(target, []), pids.get("redis", [])
        before = cpu_seconds(server), cpu_seconds(store)
        phase = run_phase()
        if server and phase.requests:
            used = cpu_seconds(server) - before[0], cpu_seconds(store) - before[1]
            phase.cpu_us_per_request = {
                "server": round(used[0] / phase.requests * 1e6, 1),
                "redis": round(used[1] / phase.requests * 1e6, 1),
            }
        return phase

    all_calls: list[str] = []
    pool = max(5000, int(options.seconds * options.expected_rate))
    for n in range(options.rounds):
        say(f"round {n + 1}/{options.rounds}: signing {pool} callbacks")
        load = traffic(pool, options.calls)
        all_calls += dict.fromkeys(c.call_sid for c in load)
        if baseline_url:
            say(f"round {n + 1}/{options.rounds}: baseline (empty route), {options.seconds:g}s")
            report.baseline.append(
                timed(
                    "baseline",
                    functools.partial(
                        _closed_loop, options, "baseline", baseline_url, load, workdir
                    ),
                )
            )
        say(f"round {n + 1}/{options.rounds}: receiver, {options.seconds:g}s")
        phase = timed(
            "receiver",
            functools.partial(_closed_loop, options, "receiver", receiver_url, load, workdir),
        )
        report.receiver.append(phase)
        report.sent += min(phase.requests, len(load))
        if phase.repeated:
            report.notes.append(
                f"round {n + 1}: {phase.repeated} requests were repeats of the pool of {pool} "
                "(answered as duplicates); raise --expected-rate"
            )
    report.workers_rss_mib["end"] = rss_mib(pids.get("workers", []))

    if options.rate > 0:
        count = int(options.rate * options.rate_seconds)
        say(f"fixed rate: signing {count} callbacks")
        load = traffic(count, options.calls)
        calls = list(dict.fromkeys(c.call_sid for c in load))
        all_calls += calls
        sampled = frozenset(calls[: options.sample_calls])
        say(f"fixed rate: {options.rate:g} req/s offered for {options.rate_seconds:g}s")
        if redis_url:
            sent_at: dict[tuple[str, int], int] = {}
            with consumer(redis_url, options.prefix, sorted(sampled)) as read_at:

                def fixed() -> Phase:
                    phase, sent = run_python(
                        "receiver",
                        receiver_url + CALLBACK_PATH,
                        load,
                        seconds=options.rate_seconds,
                        connections=options.rate_connections,
                        rate=options.rate,
                        sampled=sampled,
                    )
                    sent_at.update(sent)
                    return phase

                phase = timed("receiver", fixed)
            report.end_to_end_ms = end_to_end(sent_at, read_at)
        else:
            phase, _ = run_python(
                "receiver",
                receiver_url + CALLBACK_PATH,
                load,
                seconds=options.rate_seconds,
                connections=options.rate_connections,
                rate=options.rate,
            )
            report.notes.append("no --redis-url: end-to-end latency not measured")
        report.fixed_rate = phase
        report.sent += phase.requests
        if phase.late_sends > phase.requests / 100:
            report.notes.append(
                f"{phase.late_sends} of {phase.requests} fixed-rate requests left more than 5 ms "
                "after their due time (the generator short of CPU, or its connection still "
                "waiting for a slow answer); latencies count from the due time, so they include "
                "that wait"
            )
    if redis_url:
        report.stored = _stored(redis_url, options.prefix, all_calls)
    return report


def run(options: Options, say) -> Report:
    """Against ``options.url``, or start Redis, the receiver and the baseline and measure all."""
    if options.generator == "auto":
        options.generator = "wrk" if shutil.which("wrk") else "python"
        if options.generator == "python":
            say(WRK_HINT)
    elif options.generator == "wrk" and not shutil.which("wrk"):
        raise click.ClickException(WRK_HINT.replace("using the Python generator", "cannot run"))
    with tempfile.TemporaryDirectory(prefix="rtt-bench-") as tmp:
        workdir = Path(tmp)
        if options.url:
            token = options.token or ""
            if not token:
                raise click.ClickException(
                    "TWILIO_AUTH_TOKEN (or --token) is needed to sign callbacks for --url"
                )
            return measure(
                options,
                options.url.rstrip("/"),
                options.baseline_url,
                options.redis_url,
                token,
                workdir,
                {
                    "receiver": [options.server_pid, *children(options.server_pid)],
                    "workers": children(options.server_pid),
                    "redis": [options.redis_pid] if options.redis_pid else [],
                }
                if options.server_pid
                else {},
                say,
            )
        token = secrets.token_hex(16)
        embedded = EmbeddedRedis(workdir / "redis").start()
        servers: list[Served] = []
        try:
            env = {
                "REDIS_URL": embedded.url,
                "TWILIO_AUTH_TOKEN": token,
                "STREAM_PREFIX": options.prefix,
            }
            if options.workers:
                env["WEB_CONCURRENCY"] = str(options.workers)
            if options.threads:
                env["GUNICORN_THREADS"] = str(options.threads)
            if options.worker_class:
                env["GUNICORN_CMD_ARGS"] = f"--worker-class {options.worker_class}"
            servers_text = "the receiver and the baseline" if options.baseline else "the receiver"
            say(f"starting Redis ({redact_url(embedded.url)}) and {servers_text} under gunicorn")
            workers = int(env.get("WEB_CONCURRENCY", "2"))
            try:
                receiver = start(env, workdir, workers=workers)
                servers.append(receiver)
                baseline = None
                if options.baseline:
                    baseline = start(
                        env,
                        workdir,
                        app="receiver.devtools.bench.baseline:create_app()",
                        workers=workers,
                    )
                    servers.append(baseline)
            except ServeError as error:
                raise click.ClickException(str(error)) from None
            return measure(
                options,
                receiver.url,
                baseline.url if baseline else None,
                embedded.url,
                token,
                workdir,
                {
                    "receiver": [receiver.process.pid, *receiver.worker_pids()],
                    "baseline": [baseline.process.pid, *baseline.worker_pids()] if baseline else [],
                    "redis": [embedded.process.pid] if embedded.process else [],
                    "workers": receiver.worker_pids(),
                },
                say,
            )
        finally:
            for server in servers:
                server.stop()
            embedded.stop()


# --- rendering --------------------------------------------------------------------------------


def render(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    # Wide enough for the table when piped to a file, as the terminal's width otherwise.
    console = Console(width=None if sys.stdout.isatty() else 140)
    summary = report.summary()
    m = report.machine
    console.print(
        f"[bold]receiver bench[/] on {m['nproc']} x {m['cpu_model']} "
        f"(load average at start {m['load_average']}), generator {report.config['generator']}"
    )
    table = Table(
        "phase", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "CPU µs/req", "statuses", "errors"
    )
    phases = [*report.baseline, *report.receiver]
    if report.fixed_rate:
        phases.append(report.fixed_rate)
    for phase in phases:
        name = phase.target + (f" @{phase.offered_rate:g}/s" if phase.offered_rate else "")
        lat = phase.latency_ms
        table.add_row(
            name,
            f"{phase.requests_per_second:,.0f}",
            f"{lat['p50']:.2f}",
            f"{lat['p95']:.2f}",
            f"{lat['p99']:.2f}",
            f"{lat['max']:.2f}",
            " + ".join(f"{v:g} {k}" for k, v in phase.cpu_us_per_request.items()) or "-",
            " ".join(f"{k}:{v}" for k, v in phase.statuses.items()),
            str(phase.socket_errors),
        )
    console.print(table)
    facts = Table("measure", "value", show_header=False)
    ratio = summary["ratio_to_baseline"]
    facts.add_row(
        "receiver / empty route",
        "n/a"
        if ratio is None
        else f"{ratio:.2f}x "
        f"({summary['receiver_requests_per_second']:,.0f} / "
        f"{summary['baseline_requests_per_second']:,.0f} req/s, medians)",
    )
    if report.end_to_end_ms:
        e2e = report.end_to_end_ms
        facts.add_row(
            "end-to-end (callback sent -> XREAD)",
            f"p50 {e2e['p50']:.2f} ms, p95 {e2e['p95']:.2f} ms, p99 {e2e['p99']:.2f} ms, "
            f"max {e2e['max']:.2f} ms ({e2e['samples']} samples, {e2e['missing']} missing)",
        )
    facts.add_row(
        "live calls one instance sustains",
        f"{summary['live_calls_sustained']} at "
        f"{report.assumptions['events_per_call_per_second']} callbacks/s per call "
        f"({report.assumptions['derivation']})",
    )
    if report.stored is not None:
        facts.add_row(
            "stored in the call and partials streams",
            f"{report.stored} of {report.sent} answered (+ any in flight when a phase ended)",
        )
    for when, rss in report.workers_rss_mib.items():
        if rss:
            facts.add_row(f"worker RSS at {when}", ", ".join(f"{v} MiB" for v in rss.values()))
    for goal in summary["goals"]:
        verdict = {True: "[green]met[/]", False: "[red]not met[/]", None: "not measured"}
        facts.add_row(goal["goal"], f"{verdict[goal['met']]} ({goal['measured']})")
    for note in report.notes:
        facts.add_row("note", note)
    console.print(facts)


@click.command()
@click.option("--url", help="Receiver to measure (its root URL); default: start everything.")
@click.option("--baseline-url", help="With --url: an empty route to compare against.")
@click.option(
    "--redis-url",
    default=lambda: os.environ.get("REDIS_URL"),
    show_default="$REDIS_URL",
    help="With --url: the receiver's Redis, for the end-to-end latency and the stored count.",
)
@click.option(
    "--signed-base-url", help="With --url: the receiver's PUBLIC_BASE_URL, if it has one."
)
@click.option(
    "--token",
    default=lambda: os.environ.get("TWILIO_AUTH_TOKEN", "").split(",")[0],
    show_default="$TWILIO_AUTH_TOKEN",
    help="With --url: the auth token to sign with.",
)
@click.option(
    "--prefix",
    default=lambda: os.environ.get("STREAM_PREFIX", "rtt"),
    show_default="rtt or $STREAM_PREFIX",
)
@click.option(
    "--duration",
    "seconds",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds of each closed-loop phase.",
)
@click.option(
    "--rounds",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Interleaved (baseline, receiver) rounds; medians are reported.",
)
@click.option(
    "--connections",
    type=click.IntRange(1),
    default=32,
    show_default=True,
    help="Keep-alive connections of the closed-loop phases.",
)
@click.option(
    "--calls",
    type=click.IntRange(1),
    default=200,
    show_default=True,
    help="Concurrent simulated calls (both tracks each).",
)
@click.option(
    "--rate",
    type=float,
    default=GOAL_RATE,
    show_default=True,
    help="Offered req/s of the fixed-rate phase (0: skip it).",
)
@click.option("--rate-duration", "rate_seconds", type=float, default=10.0, show_default=True)
@click.option("--rate-connections", type=click.IntRange(1), default=16, show_default=True)
@click.option(
    "--events-per-call",
    type=float,
    default=EVENTS_PER_CALL,
    show_default=True,
    help="Callbacks per second of one live call, for the live-calls figure.",
)
@click.option(
    "--generator",
    type=click.Choice(["auto", "wrk", "python"]),
    default="auto",
    show_default=True,
    help="Closed-loop generator: wrk when installed.",
)
@click.option("--wrk-threads", type=click.IntRange(1), default=1, show_default=True)
@click.option("--workers", type=click.IntRange(1), help="Started servers: WEB_CONCURRENCY.")
@click.option("--threads", type=click.IntRange(1), help="Started servers: GUNICORN_THREADS.")
@click.option("--worker-class", help="Started servers: gunicorn worker class (e.g. sync).")
@click.option(
    "--no-baseline",
    "baseline",
    is_flag=True,
    default=True,
    flag_value=False,
    help="Skip the empty-route baseline (e.g. for a long memory run).",
)
@click.option(
    "--expected-rate",
    type=float,
    default=6000,
    show_default=True,
    help="req/s the signed pool is sized for; beyond it requests repeat.",
)
@click.option(
    "--sample-calls",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Calls whose events the end-to-end consumer follows.",
)
@click.option(
    "--server-pid",
    type=int,
    help="With --url, on this host: the gunicorn master's pid, for CPU per request and RSS.",
)
@click.option("--redis-pid", type=int, help="With --url, on this host: Redis' pid, for its CPU.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def bench(as_json: bool, **values) -> None:
    """Measure the receiver under realistic signed traffic, against an empty-route baseline."""
    options = Options(**values)
    say = (lambda text: click.echo(text, err=True)) if as_json else click.echo
    report = run(options, say)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        render(report)
