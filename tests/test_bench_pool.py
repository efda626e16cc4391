"""The bench's signed pool: the generators never send a request twice, and a target that
answers faster than the warm-up showed is measured again with a larger pool."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from receiver.devtools.bench import measure
from receiver.devtools.bench.generators import Phase, run_python, run_wrk
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
    """A closed loop that answers ``rate`` requests a second, and stops at the end of its pool."""

    def run(
        options: measure.Options, target: str, url: str, traffic: list[Callback], workdir: Path
    ) -> Phase:
        answered = min(len(traffic), int(options.seconds * rate))
        seconds = answered / (warmup_rate if target == "warmup" else rate)
        return Phase(
            target=target,
            generator="wrk",
            seconds=seconds,
            requests=answered,
            requests_per_second=answered / seconds,
            latency_ms={"p50": 1.0, "p95": 1.0, "p99": 1.0, "max": 1.0},
            statuses={"200": answered},
            ran_out=seconds < options.seconds,
        )

    return run


def test_a_target_faster_than_its_warm_up_is_measured_again_without_repeats(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setattr(measure, "_closed_loop", closed_loop_at(warmup_rate=1000, rate=5000))
    targets = {"baseline": "http://127.0.0.1:8", "receiver": "http://127.0.0.1:9"}
    report = measure.measure(options(), targets, None, TOKEN, tmp_path, {}, lambda _: None)
    [baseline], [receiver] = report.baseline, report.receiver
    assert not baseline.ran_out and not receiver.ran_out
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
    assert receiver.ran_out and receiver.requests == 9000
    assert report.sent == 2000 + 4500 + 9000  # each attempt's pool, each request sent once
    assert report.notes[-1] == (
        "round 1, receiver: ran out of its pool of 9000 after 0.75s of the 1s; "
        "raise --expected-rate"
    )


class Recorder(ThreadingHTTPServer):
    """Answers 204 to every POST and keeps the paths it was sent."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                recorder.paths.append(self.path)
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def requests(count: int) -> list[Callback]:
    raw = b"POST /%d HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\nab"
    return [Callback(raw=raw % n, call_sid="CA", sequence_id=n) for n in range(count)]


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk is not installed (make test-tools)")
def test_wrk_sends_each_request_once_and_stops_at_the_end_of_its_pool(
    recorder: Recorder, tmp_path: Path
):
    url = f"http://127.0.0.1:{recorder.server_port}/"
    phase = run_wrk(
        "receiver", url, requests(9), seconds=1, connections=4, threads=2, workdir=tmp_path
    )
    assert sorted(recorder.paths, key=lambda path: int(path[1:])) == [f"/{n}" for n in range(9)]
    assert phase.requests == 9 and phase.statuses == {"204": 9} and phase.ran_out
    assert phase.socket_errors == 0 and phase.seconds < 1


def test_the_python_closed_loop_sends_each_request_once(recorder: Recorder):
    url = f"http://127.0.0.1:{recorder.server_port}/"
    phase, _ = run_python("receiver", url, requests(9), seconds=30, connections=4)
    assert sorted(recorder.paths, key=lambda path: int(path[1:])) == [f"/{n}" for n in range(9)]
    assert phase.requests == 9 and phase.statuses == {"204": 9} and phase.ran_out
    assert phase.socket_errors == 0 and phase.seconds < 30
