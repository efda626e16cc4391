"""The bench's signed pool: a target that answers faster than the warm-up showed is measured
again with a larger pool, so that no phase of the report repeats a request."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.devtools.bench import measure
from receiver.devtools.bench.generators import Phase
from receiver.devtools.bench.traffic import Callback

from .support.twilio_calls import TOKEN


def options() -> measure.Options:
    return measure.Options(
        url="http://127.0.0.1:9", baseline_url=None, peer_url=None, redis_url=None,
        signed_base_url=None, token=TOKEN, prefix="rtt", seconds=1.0, rounds=1, connections=4,
        calls=5, rate=0, rate_seconds=0, rate_connections=1, events_per_call=4.0,
        generator="wrk", wrk_threads=2, workers=None, threads=None, worker_class=None,
        baseline=True, peer=False, expected_rate=0, sample_calls=0, server_pid=None,
        redis_pid=None,
    )  # fmt: skip


def closed_loop_at(warmup_rate: int, rate: int):
    """A closed loop that answers ``rate`` requests a second, and cycles through its pool."""

    def run(
        options: measure.Options, target: str, url: str, traffic: list[Callback], workdir: Path
    ) -> Phase:
        answered = int((warmup_rate if target == "warmup" else rate) * options.seconds)
        return Phase(
            target=target,
            generator="wrk",
            seconds=options.seconds,
            requests=answered,
            requests_per_second=answered / options.seconds,
            latency_ms={"p50": 1.0, "p95": 1.0, "p99": 1.0, "max": 1.0},
            statuses={"200": answered},
            repeated=max(0, answered - len(traffic)),
        )

    return run


def test_a_target_faster_than_its_warm_up_is_measured_again_without_repeats(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setattr(measure, "_closed_loop", closed_loop_at(warmup_rate=1000, rate=5000))
    targets = {"baseline": "http://127.0.0.1:8", "receiver": "http://127.0.0.1:9"}
    report = measure.measure(options(), targets, None, TOKEN, tmp_path, {}, lambda _: None)
    [baseline], [receiver] = report.baseline, report.receiver
    assert baseline.repeated == receiver.repeated == 0
    assert baseline.requests == receiver.requests == 5000
    assert report.sent == 5000
    assert [note for note in report.notes if "measured again" in note] == [
        "round 1, baseline: answered faster than the warm-up showed and ran out of its pool of "
        "2000; measured again with 7500"
    ]


def test_a_pool_still_short_after_the_last_attempt_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    grows = iter([1000, 3000, 6000, 12000])

    def faster_each_time(*args) -> Phase:
        rate = next(grows)
        return closed_loop_at(rate, rate)(*args)

    monkeypatch.setattr(measure, "_closed_loop", faster_each_time)
    report = measure.measure(
        options(), {"receiver": "http://127.0.0.1:9"}, None, TOKEN, tmp_path, {}, lambda _: None
    )
    [receiver] = report.receiver
    assert receiver.repeated == 12000 - 9000
    assert report.notes[-1] == (
        "round 1, receiver: 3000 requests were repeats of the pool of 9000; raise --expected-rate"
    )
