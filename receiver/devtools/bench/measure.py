"""`receiver bench`'s run: start (or reach) the servers, then warm up, alternate closed-loop
rounds over the empty route, the textbook peer and the receiver, and run the fixed-rate phase.

The three servers get the same gunicorn configuration, the same Redis and the same signed
requests, rounds interleaved so that a change in the machine's load hits all of them; the
receiver is reported as ratios of medians. Absolute figures depend on the machine and whatever
else runs on it; the ratios and the CPU time per request, less.
"""

from __future__ import annotations

import functools
import math
import random
import secrets
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from receiver.config import redact_url
from receiver.devtools.bench.generators import WRK_HINT, Phase, run_python, run_wrk
from receiver.devtools.bench.probes import (
    children,
    consumer,
    cpu_seconds,
    end_to_end,
    machine,
    rss_mib,
    stored,
)
from receiver.devtools.bench.report import Report
from receiver.devtools.bench.traffic import (
    EVENTS_PER_CALL,
    EVENTS_PER_CALL_DERIVATION,
    Callback,
    make_traffic,
)
from receiver.server.embedded_redis import EmbeddedRedis
from receiver.server.process import APP, Served, ServeError, start
from receiver.storage.contract import Keys
from receiver.views.callback import CALLBACK_PATH

BASELINE_APP = "receiver.devtools.bench.baseline:create_app()"
PEER_APP = "receiver.devtools.bench.peer:create_app()"
# The signed pool of a round holds this many times what the fastest target was seen to answer
# per second, times the phase's length, so that a closed loop does not run out of requests (it
# never repeats one: it stops). A target can still answer faster than the warm-up showed (the
# machine is shared): such a phase is measured again, up to POOL_ATTEMPTS times, with a pool
# sized from it.
POOL_MARGIN = 1.5
MIN_POOL = 2000
POOL_ATTEMPTS = 3

Say = Callable[[str], None]


@dataclass
class Options:
    url: str | None
    baseline_url: str | None
    peer_url: str | None
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
    peer: bool
    expected_rate: float
    sample_calls: int
    server_pid: int | None
    redis_pid: int | None


def _closed_loop(
    options: Options, target: str, url: str, traffic: list[Callback], workdir: Path
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
    targets: dict[str, str],
    redis_url: str | None,
    token: str,
    workdir: Path,
    pids: dict[str, list[int]],
    say: Say,
) -> Report:
    """Warm up, then rounds of (baseline, peer, receiver) closed loop, then the fixed rate.

    ``targets``: root URLs by name ("receiver", and "baseline", "peer" when measured).
    ``pids`` (when known): the same names (gunicorn master and workers), "redis", and
    "workers" (the receiver's workers, whose RSS is reported).
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
    receiver_url = targets["receiver"]
    signed_base = (options.signed_base_url or receiver_url).rstrip("/")
    seed = random.randrange(1 << 30)

    def traffic(count: int, calls: int) -> list[Callback]:
        # Signed for the receiver's URL, and sent with its Host header to every target: the
        # peer validates request.url, which Flask builds from that header.
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

    def timed(target: str, run_phase: Callable[[], Phase]) -> Phase:
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

    # Warm-up, with the closed-loop generator: it also tells how fast each target answers, so
    # that the signed pool of a round can be sized from what the generator can send.
    say("warming up")
    warm = traffic(MIN_POOL, 50)
    fastest = options.expected_rate
    order = [name for name in ("baseline", "peer", "receiver") if name in targets]
    warm_options = Options(**{**asdict(options), "seconds": 1.0})
    for name in order:
        seen = _closed_loop(warm_options, "warmup", targets[name], warm, workdir)
        fastest = max(fastest, seen.requests_per_second)
    report.workers_rss_mib["start"] = rss_mib(pids.get("workers", []))

    all_calls: list[str] = []
    for n in range(options.rounds):
        pool = max(MIN_POOL, math.ceil(options.seconds * fastest * POOL_MARGIN))
        say(f"round {n + 1}/{options.rounds}: signing {pool} callbacks")
        load = traffic(pool, options.calls)
        all_calls += dict.fromkeys(c.call_sid for c in load)
        for name in order:
            label = {"baseline": "empty route", "peer": "textbook peer"}.get(name, name)
            for attempt in range(1, POOL_ATTEMPTS + 1):
                say(f"round {n + 1}/{options.rounds}: {label}, {options.seconds:g}s")
                phase = timed(
                    name,
                    functools.partial(_closed_loop, options, name, targets[name], load, workdir),
                )
                fastest = max(fastest, phase.requests_per_second)
                if name == "receiver":
                    report.sent += min(phase.requests, len(load))
                if not phase.ran_out or attempt == POOL_ATTEMPTS:
                    break
                ran_out = len(load)
                pool = math.ceil(options.seconds * fastest * POOL_MARGIN)
                report.notes.append(
                    f"round {n + 1}, {name}: answered faster than the warm-up showed and ran "
                    f"out of its pool of {ran_out}; measured again with {pool}"
                )
                say(f"round {n + 1}/{options.rounds}: signing {pool} callbacks")
                load = traffic(pool, options.calls)
                all_calls += dict.fromkeys(c.call_sid for c in load)
            getattr(report, name).append(phase)
            if phase.ran_out:
                report.notes.append(
                    f"round {n + 1}, {name}: ran out of its pool of {len(load)} after "
                    f"{phase.seconds:g}s of the {options.seconds:g}s; raise --expected-rate"
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
        sent_at: dict[tuple[str, int], int] = {}

        def fixed() -> Phase:
            phase, sent = run_python(
                "receiver",
                receiver_url + CALLBACK_PATH,
                load,
                seconds=options.rate_seconds,
                connections=options.rate_connections,
                rate=options.rate,
                sampled=sampled if redis_url else frozenset(),
            )
            sent_at.update(sent)
            return phase

        if redis_url:
            with consumer(redis_url, options.prefix, sorted(sampled)) as read_at:
                phase = timed("receiver", fixed)
            report.end_to_end_ms = end_to_end(sent_at, read_at)
        else:
            phase = fixed()
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
        report.stored = stored(redis_url, Keys(options.prefix), all_calls)
    return report


def _choose_generator(options: Options, say: Say) -> None:
    if options.generator == "auto":
        options.generator = "wrk" if shutil.which("wrk") else "python"
        if options.generator == "python":
            say(WRK_HINT)
    elif options.generator == "wrk" and not shutil.which("wrk"):
        raise click.ClickException(WRK_HINT.replace("using the Python generator", "cannot run"))


def _measure_given(options: Options, workdir: Path, say: Say) -> Report:
    """Against servers someone else started (``--url``, ``--baseline-url``, ``--peer-url``)."""
    assert options.url
    token = options.token or ""
    if not token:
        raise click.ClickException(
            "TWILIO_AUTH_TOKEN (or --token) is needed to sign callbacks for --url"
        )
    targets = {"receiver": options.url.rstrip("/")}
    if options.baseline_url:
        targets["baseline"] = options.baseline_url.rstrip("/")
    if options.peer_url:
        targets["peer"] = options.peer_url.rstrip("/")
    pids: dict[str, list[int]] = {}
    if options.server_pid:
        workers = children(options.server_pid)
        pids = {"receiver": [options.server_pid, *workers], "workers": workers}
        if options.redis_pid:
            pids["redis"] = [options.redis_pid]
    return measure(options, targets, options.redis_url, token, workdir, pids, say)


def run(options: Options, say: Say) -> Report:
    """Against ``options.url``, or start Redis, the receiver, the peer and the empty route under
    the same gunicorn settings, and measure them all."""
    _choose_generator(options, say)
    with tempfile.TemporaryDirectory(prefix="rtt-bench-") as tmp:
        workdir = Path(tmp)
        if options.url:
            return _measure_given(options, workdir, say)
        token = secrets.token_hex(16)
        embedded = EmbeddedRedis(workdir / "redis").start()
        servers: dict[str, Served] = {}
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
            apps: dict[str, str | None] = {"receiver": None}
            if options.peer:
                apps["peer"] = PEER_APP
            if options.baseline:
                apps["baseline"] = BASELINE_APP
            say(f"starting Redis ({redact_url(embedded.url)}) and {', '.join(apps)} under gunicorn")
            workers = int(env.get("WEB_CONCURRENCY", "2"))
            try:
                for name, app in apps.items():
                    servers[name] = start(env, workdir, app=app or APP, workers=workers)
            except ServeError as error:
                raise click.ClickException(str(error)) from None
            pids = {
                name: [served.process.pid, *served.worker_pids()]
                for name, served in servers.items()
            }
            pids["redis"] = [embedded.process.pid] if embedded.process else []
            pids["workers"] = servers["receiver"].worker_pids()
            targets = {name: served.url for name, served in servers.items()}
            return measure(options, targets, embedded.url, token, workdir, pids, say)
        finally:
            for served in servers.values():
                served.stop()
            embedded.stop()
