"""Metrics at /metrics and one structured log line per callback, in-process and under gunicorn."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from receiver import create_app
from receiver.config import Settings
from receiver.observability import logs, metrics
from receiver.server.network import free_port

from .support.twilio_calls import TOKEN, callback, content, post, sid, whole_call
from .test_multi_instance import send

SECRET_TEXT = "my card number is 4111 1111"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def callbacks(text: str, event: str, outcome: str, reason: str = "") -> float:
    return value(text, "rtt_callbacks_total", event=event, outcome=outcome, reason=reason)


@pytest.fixture(autouse=True)
def _single_process_metrics(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)


def test_metrics_count_each_outcome(client, call_sid):
    before = client.get("/metrics").get_data(as_text=True)
    gt = sid("GT")
    stored = content(call_sid, gt, 2, SECRET_TEXT)
    assert post(client, callback("started", call_sid, gt, 1)).status_code == 200
    assert post(client, stored).status_code == 200
    assert post(client, stored).status_code == 200  # Twilio's retry
    assert post(client, content(call_sid, gt, 3, "x"), token="wrong").status_code == 403
    bad = {**content(call_sid, gt, 4, "x"), "TranscriptionData": "not json"}
    assert post(client, bad).status_code == 400
    assert client.put("/transcriptions/callback").status_code == 405
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    after = response.get_data(as_text=True)

    def delta(*args: str) -> float:
        return callbacks(after, *args) - callbacks(before, *args)

    assert delta("started", "stored") == 1
    assert delta("content", "stored") == 1
    assert delta("content", "duplicate") == 1
    assert delta("unknown", "signature_failure") == 1
    assert delta("unknown", "rejected", "TranscriptionData") == 1
    assert delta("unknown", "bad_request") == 1
    count = "rtt_callback_duration_seconds_count"
    assert value(after, count, outcome="stored") - value(before, count, outcome="stored") == 2
    assert value(after, "rtt_calls_in_progress") == 1
    assert value(after, "rtt_spool_depth") == 0
    assert SECRET_TEXT not in after


def test_calls_in_progress_follow_the_active_index(client, redis_client, call_sid):
    gt = sid("GT")
    for params in whole_call(call_sid, gt)[:-1]:
        assert post(client, params).status_code == 200
    other = "CA" + sid("")[:32]
    post(client, callback("started", other, sid("GT"), 1))
    assert value(client.get("/metrics").get_data(as_text=True), "rtt_calls_in_progress") == 2
    post(client, whole_call(call_sid, gt)[-1])
    assert redis_client.zcard("rtt:calls:active") == 1
    assert value(client.get("/metrics").get_data(as_text=True), "rtt_calls_in_progress") == 1


def test_calls_idle_for_the_retention_are_not_in_progress(client, redis_client, call_sid):
    """The index is trimmed only when an event is written: when traffic stops, a call whose
    transcription-stopped never came stays in it, though the store considers it gone."""
    assert post(client, callback("started", call_sid, sid("GT"), 1)).status_code == 200
    retention_ms = Settings(auth_tokens=(TOKEN,)).call_retention_seconds * 1000
    idle = "CA" + "7" * 32
    redis_client.zadd("rtt:calls:active", {idle: time.time() * 1000 - retention_ms - 60_000})
    assert value(client.get("/metrics").get_data(as_text=True), "rtt_calls_in_progress") == 1


def test_redis_down_counts_errors_and_storage_unavailable(redis_client, call_sid):
    app = create_app(Settings(auth_tokens=(TOKEN,), redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    client = app.test_client()
    before = client.get("/metrics").get_data(as_text=True)
    assert post(client, content(call_sid, sid("GT"), 1, "x")).status_code == 503
    after = client.get("/metrics").get_data(as_text=True)
    assert (
        callbacks(after, "content", "storage_unavailable")
        - callbacks(before, "content", "storage_unavailable")
        == 1
    )
    # A dead letter that cannot be kept is not "rejected": Twilio is told to retry it.
    bad = {**content(call_sid, sid("GT"), 2, "x"), "TranscriptionData": "not json"}
    assert post(client, bad).status_code == 503
    after = client.get("/metrics").get_data(as_text=True)
    assert (
        callbacks(after, "unknown", "storage_unavailable")
        - callbacks(before, "unknown", "storage_unavailable")
        == 1
    )
    assert callbacks(after, "unknown", "rejected", "TranscriptionData") == callbacks(
        before, "unknown", "rejected", "TranscriptionData"
    )
    errors = value(after, "rtt_redis_errors_total", error="ConnectionError")
    assert errors - value(before, "rtt_redis_errors_total", error="ConnectionError") >= 1
    # Unknown is not zero: the gauge is absent, so absent() alerts fire.
    assert ("rtt_calls_in_progress", ()) not in samples(after)


def test_spool_depth_is_the_spools(settings, tmp_path, call_sid):
    from receiver.events import parse

    spooled = replace(settings, spool_dir=str(tmp_path / "spool"))
    app = create_app(spooled)  # no callback yet: no drainer, so the record waits for the scrape
    spool = app.extensions["receiver"].writer.spool
    params = content(call_sid, sid("GT"), 1, "waiting for Redis")
    spool.append(parse({k: [v] for k, v in params.items()}, received_at="2026-11-28T09:00:00Z"))
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert value(text, "rtt_spool_depth") == 1


def test_one_json_line_per_callback_without_secrets(app, client, call_sid, capsys):
    logs.configure({"LOG_FORMAT": "json"})
    gt = sid("GT")
    post(client, content(call_sid, gt, 5, SECRET_TEXT))
    post(client, content(call_sid, gt, 5, SECRET_TEXT), token="wrong")
    logs.flush()
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    lines = [line for line in lines if line["msg"] == "callback"]
    assert len(lines) == 2
    stored, refused = lines
    assert stored["call_sid"] == call_sid
    assert stored["transcription_sid"] == gt
    assert stored["event"] == "content"
    assert stored["sequence_id"] == 5
    assert stored["outcome"] == "stored"
    assert stored["status"] == 200
    assert isinstance(stored["latency_ms"], float)
    assert refused["outcome"] == "signature_failure"
    assert refused["status"] == 403
    assert "call_sid" not in refused  # unsigned input is not repeated as fact
    assert SECRET_TEXT not in err
    assert TOKEN not in err


def test_text_lines_in_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    formatter = logs.formatter_for("auto", Terminal())
    record = logging.LogRecord("receiver.callbacks", logging.INFO, "", 0, "callback", (), None)
    record.fields = {"outcome": "stored", "event": "content", "latency_ms": 1.5}
    line = formatter.format(record)
    assert "INFO" in line
    assert "outcome=stored event=content latency_ms=1.5" in line
    assert not line.startswith("{")
    assert isinstance(logs.formatter_for("auto", io.StringIO()), logs.JsonFormatter)
    with pytest.raises(ValueError, match="LOG_FORMAT='xml'"):
        logs.formatter_for("xml", io.StringIO())


@pytest.mark.slow  # starts gunicorn
def test_metrics_add_up_across_gunicorn_workers(start_receiver, tmp_path, call_sid):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    server = start_receiver(WEB_CONCURRENCY="3", GUNICORN_THREADS="2", TMPDIR=str(scratch))
    gt = sid("GT")
    for seq in range(1, 31):
        assert send(server.url, content(call_sid, gt, seq, SECRET_TEXT)).status_code == 200
    assert send(server.url, content(call_sid, gt, 1, SECRET_TEXT)).json()["outcome"] == "duplicate"

    # Whichever worker answers the scrape, it reports the sum over all workers, once each
    # worker has flushed what it counted (every metrics.FLUSH_SECONDS: a generous deadline).
    def counted(text: str) -> tuple[float, ...]:
        return (
            callbacks(text, "content", "stored"),
            callbacks(text, "content", "duplicate"),
            value(text, "rtt_callback_duration_seconds_count", outcome="stored"),
            value(text, "rtt_calls_in_progress"),
        )

    expected = (30, 1, 30, 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if counted(requests.get(server.url + "/metrics", timeout=5).text) == expected:
            break
        time.sleep(metrics.FLUSH_SECONDS / 4)
    for _ in range(5):
        assert counted(requests.get(server.url + "/metrics", timeout=5).text) == expected
    assert len(list(scratch.iterdir())) == 1  # the metrics directory it created
    server.stop()
    assert list(scratch.iterdir()) == []  # ... and removed on exit
    log = server.log.read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert sum(1 for line in lines if line.get("msg") == "callback") == 31
    assert any(line["logger"] == "gunicorn.error" for line in lines)  # gunicorn's own, as JSON
    assert all(line.startswith("{") for line in log.splitlines() if line.strip())
    assert SECRET_TEXT not in log


def worker_pids(master: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.slow  # starts gunicorn
def test_counts_survive_a_worker_crash(start_receiver, call_sid):
    server = start_receiver(WEB_CONCURRENCY="2")
    gt = sid("GT")
    for seq in range(1, 21):
        assert send(server.url, content(call_sid, gt, seq, "x")).status_code == 200
    # Counts reach the shared files every metrics.FLUSH_SECONDS: a worker killed sooner loses
    # what it counted since its last flush (docs/metrics.md). Kill once they are there.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = requests.get(server.url + "/metrics", timeout=5).text
        if callbacks(text, "content", "stored") == 20:
            break
        time.sleep(metrics.FLUSH_SECONDS / 4)
    (victim, *_) = worker_pids(server.process.pid)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = worker_pids(server.process.pid)
        if len(pids) == 2 and victim not in pids:
            break
        time.sleep(0.1)
    assert victim not in worker_pids(server.process.pid)
    assert send(server.url, content(call_sid, gt, 21, "x")).status_code == 200
    # What the dead worker counted is still there; the new worker adds to it.
    for _ in range(4):
        text = requests.get(server.url + "/metrics", timeout=30).text
        assert callbacks(text, "content", "stored") == 21
    # A SIGTERM that reaches a worker before it installed its handlers is lost (gunicorn's
    # master then waits its graceful timeout): the new worker may still be booting.
    server.stop(timeout=3)
