"""`receiver demo` end to end, as a newcomer runs it (output to a pipe, so plain text)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from receiver.devtools.conversation import load_conversation

pytestmark = pytest.mark.slow  # starts servers or processes


def test_demo_plays_one_call_and_cleans_up():
    done = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "demo", "--speed", "10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    finals = [u.text for u in load_conversation().utterances]
    shown = [line for line in out.splitlines() if line.endswith(tuple(finals))]
    assert [line.split(maxsplit=3)[3] for line in shown] == finals
    assert [line.split()[2] for line in shown] == [
        {"inbound": "customer", "outbound": "agent"}[u.track]
        for u in load_conversation().utterances
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
    shown = re.search(r"Embedded Redis\s+redis://:\*\*\*@127\.0\.0\.1:(\d+)", out)
    redis_port = int(shown.group(1))  # the password is never printed
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", redis_port)) != 0, "Redis still runs after the demo"


def test_demo_receiver_starts_without_the_deploy_directory(redis_server, tmp_path, monkeypatch):
    from receiver.devtools import demo

    monkeypatch.chdir(tmp_path)  # no deploy/ here: the settings come from the package
    receiver = demo.start_receiver(redis_server.url, "token", tmp_path)
    try:
        assert requests.get(receiver.url + "/readyz", timeout=5).json()["status"] == "ready"
    finally:
        receiver.stop()
    assert receiver.process.returncode is not None


def spawn(*argv: str) -> subprocess.Popen[str]:
    """A demo in its own session, so a hung one can be killed with everything it started."""
    return subprocess.Popen(
        [sys.executable, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    try:
        return process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()


# The real receiver under gunicorn, started with another token than the emulator signs with:
# it answers every callback 403, as it would behind a wrong TWILIO_AUTH_TOKEN.
REFUSING_RECEIVER = """
import sys
from receiver.cli.demo import demo as command
from receiver.devtools import demo
original = demo.start_receiver
demo.start_receiver = lambda url, token, workdir: original(url, "not-" + token, workdir)
command(sys.argv[1:])
"""


def test_demo_ends_with_status_1_when_the_receiver_refuses_callbacks():
    process = spawn("-c", REFUSING_RECEIVER, "--speed", "10")
    out, err = finish(process, timeout=60)
    assert process.returncode == 1, out + err
    assert re.search(r"Done in [\d.]+s: (\d+) callbacks \(answers: 403\), 0 events", out), out
    assert "callbacks did not get a 2xx answer" in err
    assert "Stopped the emulator, the receiver and Redis; demo data removed." in out


def test_ctrl_c_cleans_up_and_exits_130():
    process = spawn("-m", "receiver.cli", "demo", "--speed", "0.5")
    try:
        assert process.stdout
        for line in process.stdout:
            if line.startswith("4/4 Call"):
                break
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        out, err = finish(process, timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, out + err
    assert "Interrupted." in out
    assert "Stopped the emulator, the receiver and Redis; demo data removed." in out
