"""`receiver dashboard-bench`: a second of it against the real receiver and dashboard, so that it
cannot measure nothing unnoticed. No speed is asserted (the figures depend on the machine)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from receiver.dashboard.bench import Run, call_params

from .support.processes import ROOT
from .support.twilio_calls import post, sid

# Two runs of a second each: enough to see that callbacks are stored and reach the viewers.
ARGS = ("--viewers", "1,3", "--duration", "1", "--threads", "8")


def no_nan(name: str) -> None:
    raise AssertionError(f"{name} is not JSON")


def run(**figures: object) -> Run:
    base: dict[str, object] = dict(
        viewers=2,
        callbacks=20,
        callbacks_refused=0,
        first_refusal=None,
        seconds=1.0,
        redis_commands_per_s=300.0,
        dashboard_commands_per_s=20.0,
        events_expected=40,
        events_missed=0,
        latency_ms_p50=1.0,
        latency_ms_p99=2.0,
        latency_ms_max=3.0,
        latency_ms_mean=1.2,
        dashboard_rss_mib_before=40.0,
        dashboard_rss_mib_after=41.0,
        commands={},
    )
    return Run(**{**base, **figures})  # type: ignore[arg-type]


def test_its_callbacks_are_stored_by_the_receiver(client, call_sid):
    gt = sid("GT")
    for seq in range(1, 9):
        answer = post(client, call_params(call_sid, gt, seq))
        assert answer.status_code == 200, answer.get_data(as_text=True)
        assert answer.json["outcome"] == "stored"


def test_a_run_that_measured_nothing_is_a_failure():
    assert run().problems() == []
    refused = run(callbacks=0, callbacks_refused=20, first_refusal="400 Timestamp is too old")
    assert refused.problems() == [
        "20 callbacks were not answered 200 (the first: 400 Timestamp is too old)",
        "no callback was stored",
    ]
    assert run(events_missed=3).problems() == ["the viewers missed 3 of 40 events"]
    empty = run(callbacks=0, events_expected=0, latency_ms_p50=None, latency_ms_p99=None)
    assert "p50 -, p99 -," in empty.describe()


@pytest.mark.slow  # starts Redis, the receiver and the dashboard
def test_a_short_run_measures_callbacks_and_prints_json():
    done = subprocess.run(
        [sys.executable, "-m", "receiver.cli", "dashboard-bench", "--json", *ARGS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = json.loads(done.stdout, parse_constant=no_nan)
    assert [r["viewers"] for r in runs] == [1, 3]
    for figures in runs:
        assert figures["callbacks"] > 0 and figures["callbacks_refused"] == 0
        assert figures["events_missed"] == 0
        assert figures["events_expected"] == figures["callbacks"] * figures["viewers"]
        assert figures["latency_ms_p50"] is not None
