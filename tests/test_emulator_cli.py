"""`receiver emulate` and `receiver simulate` as users run them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests
from click.testing import CliRunner
from twilio.rest import Client

from receiver.cli import main
from receiver.server.network import free_port

from .support.callback_sink import CallbackSink
from .support.twilio_calls import sid

pytestmark = pytest.mark.slow  # starts servers or processes

TOKEN = "cli-emulator-token"


def test_simulate_many_calls_against_the_receiver(start_receiver, redis_client):
    receiver = start_receiver(TWILIO_AUTH_TOKEN=f"{TOKEN},older-token")
    result = CliRunner().invoke(
        main,
        [
            "simulate",
            "--url",
            f"{receiver.url}/transcriptions/callback",
            "--calls",
            "3",
            "--speed",
            "40",
            "--duplicates",
            "0.2",
            "--seed",
            "5",
            "--method",
            "GET",
        ],
        env={"TWILIO_AUTH_TOKEN": f"{TOKEN},older-token"},
    )
    assert result.exit_code == 0, result.output
    assert "for 3 call(s)" in result.output
    assert "injected:  duplicate" in result.output
    call_keys = [k for k in redis_client.scan_iter("rtt:call:*") if k.count(":") == 2]
    assert len(call_keys) == 3
    for key in call_keys:
        events = [f["event"] for _, f in redis_client.xrange(key)]
        assert events[0] == "started" and events[-1] == "stopped"
    assert redis_client.zcard("rtt:calls:active") == 0


def test_simulate_reports_refusals_and_exits_1(start_receiver, redis_client):
    receiver = start_receiver(TWILIO_AUTH_TOKEN=TOKEN)
    result = CliRunner().invoke(
        main,
        ["simulate", "--url", f"{receiver.url}/transcriptions/callback", "--speed", "50"],
        env={"TWILIO_AUTH_TOKEN": "not-the-receivers-token"},
    )
    assert result.exit_code == 1
    assert "answers:   403" in result.output
    assert redis_client.dbsize() == 0


def test_simulate_checks_its_options(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("utterances: []\n")
    for option in ("--conversation", "--script"):
        result = CliRunner().invoke(main, ["simulate", option, str(bad)])
        assert result.exit_code == 2
        assert "utterances ([])" in result.output
    result = CliRunner().invoke(main, ["simulate", "--url", "https://example.com/cb"])
    assert result.exit_code == 1
    assert "loopback" in result.output


def test_emulate_command_serves_the_official_client():
    port = free_port()
    env = {**os.environ, "TWILIO_AUTH_TOKEN": TOKEN}
    env.pop("TWILIO_ACCOUNT_SID", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "receiver.cli", "emulate", "--port", str(port), "--speed", "50"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                requests.get(url, timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        client = Client("AC" + "0" * 31 + "1", TOKEN)
        client.api.base_url = url
        created = client.calls(sid("CA")).transcriptions.create(name="cli")
        assert created.status == "in-progress"
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=15)
    assert process.returncode == 0, output
    assert f"Twilio emulator: {url}" in output
    assert TOKEN not in output
    assert "Emulator stopped." in output


def test_emulate_hint_works_without_credentials():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "PUBLIC_BASE"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "receiver.cli", "emulate", "--port", str(port), "--speed", "50"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout
        hint = next(line for line in process.stdout if line.startswith("Try: receiver "))
        args = hint.removeprefix("Try: receiver ").split()
        unset = (
            "TWILIO_ACCOUNT_SID",
            "TWILIO_AUTH_TOKEN",
            "TWILIO_API_BASE_URL",
            "PUBLIC_BASE_URL",
        )
        result = CliRunner().invoke(main, args, env=dict.fromkeys(unset))
        assert result.exit_code == 0, result.output
        assert result.output.startswith("Started transcription GT"), result.output
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=15)


@pytest.mark.parametrize("option", ["--conversation", "--script"])
def test_simulate_plays_the_conversation_given_by_either_name(tmp_path, option):
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("name: tiny\nutterances:\n  - {track: inbound, at: 0.1, text: Hello there}\n")
    sink = CallbackSink(TOKEN).start()
    try:
        result = CliRunner().invoke(
            main,
            ["simulate", "--url", sink.url, "--speed", "20", option, str(tiny)],
            env={"TWILIO_AUTH_TOKEN": TOKEN},
        )
        assert result.exit_code == 0, result.output
        assert "conversation 'tiny'" in result.output
        finals = [r.params for r in sink.received if r.params.get("Final") == "true"]
        assert [json.loads(p["TranscriptionData"])["transcript"] for p in finals] == ["Hello there"]
    finally:
        sink.stop()


ERROR_32651 = ["--error-at", "20", "--error-code", "32651"]


def test_simulate_timestamp_digits_drift_and_error_code():
    sink = CallbackSink(TOKEN).start()
    try:
        args = ["simulate", "--url", sink.url, "--speed", "40", "--partial-results"]
        result = CliRunner().invoke(
            main,
            [*args, "--timestamp-digits", "3", "--track-drift", "2", *ERROR_32651],
            env={"TWILIO_AUTH_TOKEN": TOKEN},
        )
        assert result.exit_code == 0, result.output
        stamps = [r.params["Timestamp"] for r in sink.received]
        assert stamps and all(len(t.rsplit(".", 1)[1]) == len("123Z") for t in stamps)
        (error,) = [r.params for r in sink.received if "TranscriptionErrorCode" in r.params]
        assert (error["TranscriptionErrorCode"], error["TranscriptionError"]) == (
            "32651",
            "Provider Error",
        )
    finally:
        sink.stop()
    invented = CliRunner().invoke(main, [*args, "--error-code", "95100"])
    assert invented.exit_code == 2 and "'95100' is not one of" in invented.output
    nanos = CliRunner().invoke(main, [*args, "--timestamp-digits", "7"])
    assert nanos.exit_code == 2
