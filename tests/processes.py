"""Real processes for end-to-end tests: the receiver under gunicorn, on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from receiver.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]
GUNICORN_CONFIG = ROOT / "deploy" / "gunicorn.conf.py"


@dataclass
class ReceiverProcess:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, env: dict[str, str], workdir: Path, timeout: float = 20) -> ReceiverProcess:
        port = free_port()
        log = workdir / f"gunicorn-{port}.log"
        full_env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), **env}
        full_env.pop("BIND", None)
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(GUNICORN_CONFIG),
            "receiver:create_app()",
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, env=full_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        self = cls(process, port, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {log.read_text()[-2000:]}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).ok:
                    return self
            except (requests.ConnectionError, requests.Timeout):  # busy machine: try again
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not answer in {timeout}s: {log.read_text()[-2000:]}")

    def stop(self, timeout: float = 15) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
