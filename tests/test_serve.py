"""`receiver serve`: gunicorn plus an embedded, real Redis when REDIS_URL is not set."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import redis
import requests

from receiver.server.network import free_port

from .support.twilio_calls import TOKEN, content, sid, sign

pytestmark = pytest.mark.slow  # starts servers or processes


def test_serve_with_embedded_redis(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["TWILIO_AUTH_TOKEN"] = TOKEN
    env["SPOOL_DIR"] = str(tmp_path / "spool")
    command = [
        sys.executable,
        "-m",
        "receiver.cli",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path / "data"),
    ]
    process = subprocess.Popen(
        command,
        env=env,
        cwd=tmp_path,  # no deploy/ there: the settings come from the package
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        while len(lines) < 3:
            lines.append(process.stdout.readline())
        output = "".join(lines)
        redis_port = re.search(r"Embedded Redis: redis://:\*\*\*@127\.0\.0\.1:(\d+)/0", output)
        assert redis_port, output
        password = (tmp_path / "data" / "auth.conf").read_text().split()[1]
        assert password not in output
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=int(redis_port.group(1))).ping()
        callback_url = f"http://127.0.0.1:{port}/transcriptions/callback"
        assert f"Callback URL for Twilio (StatusCallbackUrl): {callback_url}" in output
        deadline = time.monotonic() + 20
        while True:
            try:
                ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
                break
            except (requests.ConnectionError, requests.Timeout):  # not up yet, or still booting
                assert time.monotonic() < deadline, output
                time.sleep(0.1)
        assert ready.json() == {"status": "ready", "redis": "ok", "spool_depth": 0}
        params = content("CA" + "1" * 32, sid("GT"), 1, "hello")
        stored = requests.post(
            callback_url,
            data=params,
            headers={"X-Twilio-Signature": sign(callback_url, params)},
            timeout=5,
        )
        assert stored.json() == {"outcome": "stored"}
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    assert "Embedded Redis stopped." in rest
    assert password not in rest
    assert (tmp_path / "data" / "appendonlydir").is_dir()


def test_serve_refuses_without_token(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TWILIO_AUTH_TOKEN", "TWILIO_AUTH_TOKEN_FILE")
    }
    result = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "TWILIO_AUTH_TOKEN" in result.stderr
