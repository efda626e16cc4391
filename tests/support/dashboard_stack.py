"""The real thing for the dashboard's end-to-end tests: the receiver under gunicorn, the
dashboard under gunicorn, and signed callbacks sent over HTTP on 127.0.0.1."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from receiver.dashboard.process import start_dashboard
from receiver.server.process import Served

from .twilio_calls import CALLBACK_PATH, sign

PASSWORD = "dashboard-test-password"


@dataclass
class Stack:
    receiver: Served
    redis_url: str
    workdir: Path
    dashboard_env: dict[str, str]
    dashboard: Served | None = None
    started: list[Served] = field(default_factory=list)

    def start_dashboard(self, port: int = 0) -> Served:
        self.dashboard = start_dashboard(
            {"REDIS_URL": self.redis_url, **self.dashboard_env}, self.workdir, port
        )
        self.started.append(self.dashboard)
        return self.dashboard

    def send(self, params: dict[str, str]) -> int:
        """One signed callback to the receiver; its HTTP status (200 means stored)."""
        url = self.receiver.url + CALLBACK_PATH
        request = urllib.request.Request(
            url, data=urlencode(params).encode(), headers={"X-Twilio-Signature": sign(url, params)}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status

    def stop(self) -> None:
        for served in self.started:
            served.stop()
