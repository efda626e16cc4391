"""`receiver demo` end to end, as a newcomer runs it (output to a pipe, so plain text)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import requests

from receiver.conversation import load_script


def test_demo_plays_one_call_and_cleans_up():
    done = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "demo", "--speed", "10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    finals = [u.text for u in load_script().utterances]
    shown = [line for line in out.splitlines() if line.endswith(tuple(finals))]
    assert [line.split(maxsplit=3)[3] for line in shown] == finals
    assert [line.split()[2] for line in shown] == [
        {"inbound": "customer", "outbound": "agent"}[u.track] for u in load_script().utterances
    ]
    assert "transcription started" in out and "transcription stopped" in out
    assert re.search(r"Done in [\d.]+s: (\d+) callbacks \(answers: 200\), \1 events", out)
    assert "Stopped the emulator, the receiver and Redis; demo data removed." in out
    receiver_url = re.search(r"Receiver\s+(http://127\.0\.0\.1:\d+)", out).group(1)
    try:
        requests.get(receiver_url + "/healthz", timeout=1)
        raise AssertionError("the receiver still answers after the demo")
    except requests.ConnectionError:
        pass
    redis_port = int(re.search(r"Embedded Redis\s+redis://127\.0\.0\.1:(\d+)", out).group(1))
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", redis_port)) != 0, "Redis still runs after the demo"


def test_demo_receiver_starts_without_the_deploy_directory(redis_server, tmp_path, monkeypatch):
    from receiver import demo

    monkeypatch.chdir(tmp_path)  # no deploy/ here: the settings come from the package
    receiver = demo.start_receiver(redis_server.url, "token", tmp_path)
    try:
        assert requests.get(receiver.url + "/readyz", timeout=5).json()["status"] == "ready"
    finally:
        receiver.stop()
    assert receiver.process.returncode is not None
