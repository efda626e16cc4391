"""`receiver demo --dashboard`: calls keep coming, the dashboard shows them, Ctrl-C ends it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from .support.processes import ROOT

pytestmark = pytest.mark.slow  # starts servers, processes and a browser


def test_demo_keeps_calling_with_the_dashboard_until_ctrl_c(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "receiver.cli", "demo", "--dashboard", "--speed", "10"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: list[str] = []
        calls: list[str] = []
        deadline = time.monotonic() + 90
        while len(calls) < 2 and time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line)
            calls += re.findall(r"call (CA[0-9a-f]{32}):", line)
        assert len(calls) >= 2, "".join(lines)
        url = re.search(r"Dashboard\s+(http://127\.0\.0\.1:\d+)/", "".join(lines)).group(1)
        page = urllib.request.urlopen(f"{url}/calls/{calls[0]}", timeout=10).read().decode()
        assert "Transcription started" in page
        index = urllib.request.urlopen(f"{url}/", timeout=10).read().decode()
        assert calls[-1] in index
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
        assert demo.returncode == 130, rest
        assert "Stopped the emulator, the receiver and Redis" in rest
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
