"""examples/consumer_group.py against the real Redis, on entries the receiver really wrote."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .support.twilio_calls import post, sid, whole_call

pytestmark = pytest.mark.slow  # starts servers or processes

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "consumer_group.py"
STREAM = "rtt:events"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("consumer_group", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def stored_call(client, redis_client, call_sid) -> int:
    for params in whole_call(call_sid, sid("GT")):
        assert post(client, params).status_code == 200
    return redis_client.xlen(STREAM)


def test_consumers_of_a_group_share_the_entries(example, redis_client, stored_call):
    assert example.ensure_group(redis_client, STREAM, "g", "0") is True
    assert example.ensure_group(redis_client, STREAM, "g", "0") is False
    handled: dict[str, list[str]] = {"a": [], "b": []}
    while True:
        done = sum(
            example.consume_once(
                redis_client,
                STREAM,
                "g",
                name,
                lambda entry_id, _fields, name=name: handled[name].append(entry_id),
                count=3,
                block_ms=None,
            )
            for name in handled
        )
        if not done:
            break
    assert handled["a"] and handled["b"]
    assert not set(handled["a"]) & set(handled["b"])
    assert len(handled["a"]) + len(handled["b"]) == stored_call
    assert redis_client.xpending(STREAM, "g")["pending"] == 0


def test_stuck_entries_are_reclaimed_and_acknowledged(example, redis_client, stored_call):
    example.ensure_group(redis_client, STREAM, "g", "0")

    def crash(_entry_id, _fields):
        raise RuntimeError("consumer died")

    with pytest.raises(RuntimeError):
        example.consume_once(redis_client, STREAM, "g", "dead", crash, block_ms=None)
    assert redis_client.xpending(STREAM, "g")["pending"] == stored_call
    seen: list[str] = []
    # Not idle long enough yet: nothing is taken from the dead consumer, nothing new either.
    assert (
        example.consume_once(
            redis_client,
            STREAM,
            "g",
            "alive",
            lambda i, f: seen.append(i),
            min_idle_ms=60_000,
            block_ms=None,
        )
        == 0
    )
    time.sleep(0.05)
    handled = example.consume_once(
        redis_client,
        STREAM,
        "g",
        "alive",
        lambda i, f: seen.append(i),
        min_idle_ms=10,
        block_ms=None,
    )
    assert handled == stored_call
    assert seen == [entry_id for entry_id, _ in redis_client.xrange(STREAM)]
    assert redis_client.xpending(STREAM, "g")["pending"] == 0


def test_entries_trimmed_while_pending_are_skipped(example, redis_client, stored_call):
    example.ensure_group(redis_client, STREAM, "g", "0")
    redis_client.xreadgroup("g", "dead", {STREAM: ">"})
    first, _ = redis_client.xrange(STREAM, count=1)[0]
    redis_client.xdel(STREAM, first)
    time.sleep(0.05)
    seen: list[str] = []
    handled = example.consume_once(
        redis_client,
        STREAM,
        "g",
        "alive",
        lambda i, f: seen.append(i),
        min_idle_ms=10,
        block_ms=None,
    )
    assert handled == stored_call - 1
    assert first not in seen
    assert redis_client.xpending(STREAM, "g")["pending"] == 0


def test_the_example_runs_as_a_command(redis_server, redis_client, stored_call):
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--group", "cli", "--consumer", "c1", "--from-start"],
        env={"REDIS_URL": redis_server.url, "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (
                redis_client.xinfo_groups(STREAM)
                and not redis_client.xpending(STREAM, "cli")["pending"]
            ):
                info = redis_client.xinfo_groups(STREAM)[0]
                if (
                    info["last-delivered-id"]
                    == redis_client.xinfo_stream(STREAM)["last-generated-id"]
                ):
                    break
            time.sleep(0.1)
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=10)
    assert "customer: hello I need help" in out
    assert "agent: sure what is wrong" in out
    assert "transcription stopped" in out
