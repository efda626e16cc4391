"""`receiver memory`: the figures come from MEMORY USAGE on a real Redis, and the tool leaves
that Redis as it found it."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from receiver.cli import main


def test_memory_figures_on_a_given_redis(redis_client, redis_server):
    redis_client.set("someone-else", "untouched")
    args = ["memory", "--redis-url", redis_server.url, "--minutes", "6", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert (figures["finals"], figures["partials"]) == (75, 75 * 18)
    assert 0 < figures["seen"] < figures["retained_with_seen"]
    assert figures["retained_without_seen"] == figures["retained_with_seen"] - figures["seen"]
    # Partials out of the call's record: what stays is a fraction of keeping them all.
    assert figures["retained_with_seen"] < figures["all_partials_kept"] / 2
    assert figures["retained_with_seen"] < figures["peak_live_call"]
    assert figures["per_call_hour"]["seen"] == figures["seen"] * 10
    # Identities are a bitmap: a bit per SequenceId (started, the content, stopped), plus the
    # key's own bytes.
    assert figures["seen"] < (75 + 75 * 18 + 2) / 8 + 512
    # The goal, at most 1 MB per call-hour once the call has ended: inside the freshness window
    # too.
    per_hour = figures["per_call_hour"]
    assert per_hour["retained_with_seen"] <= 1024**2
    assert figures["goal_met"] and figures["goal_met_in_window"]
    assert redis_client.keys("*") == ["someone-else"]


@pytest.mark.slow  # starts an embedded Redis
def test_memory_report_with_its_own_redis():
    result = CliRunner().invoke(main, ["memory", "--minutes", "2"])
    assert result.exit_code == 0, result.output
    assert "retained, inside the freshness window" in result.stdout
    assert "Goal, at most 1 MB retained per call-hour: " in result.stdout
