"""`receiver tail` on real streams: NDJSON, plain output, Ctrl-C, a Redis restart, and the live
rendering in a pseudo terminal (pexpect), read back through a terminal emulator (pyte)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pexpect
import pyte
import pytest
import redis
from click.testing import CliRunner

from receiver.cli import main
from receiver.server.embedded_redis import EmbeddedRedis
from receiver.server.network import free_port

from .support.twilio_calls import callback, content, post, sid, whole_call

pytestmark = pytest.mark.slow  # starts servers or processes

RECEIVER = [sys.executable, "-m", "receiver.cli"]


def fill(client, call_sid: str) -> str:
    transcription_sid = sid("GT")
    for params in whole_call(call_sid, transcription_sid):
        assert post(client, params).status_code == 200
    return transcription_sid


def entries(redis_client, key: str) -> list[dict[str, str]]:
    return [{"entry_id": i, **f} for i, f in redis_client.xrange(key)]


def test_json_one_call_from_start(client, redis_client, redis_server, call_sid):
    fill(client, sid("CA"))  # another call, which must not show
    fill(client, call_sid)
    args = ["tail", "--redis-url", redis_server.url, "--call", call_sid, "--from-start"]
    result = CliRunner().invoke(main, [*args, "--json", "--until-stopped"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    # The call's record and its partial results, merged in the order they were stored.
    stored = entries(redis_client, f"rtt:call:{{{call_sid}}}") + entries(
        redis_client, f"rtt:call:{{{call_sid}}}:partials"
    )
    assert lines == sorted(stored, key=lambda e: tuple(map(int, e["entry_id"].split("-"))))
    assert [e["sequence_id"] for e in lines] == [str(n) for n in range(1, 11)]


def test_json_finals_only(client, redis_client, redis_server, call_sid):
    fill(client, call_sid)
    args = ["tail", "--redis-url", redis_server.url, "--call", call_sid, "--from-start"]
    result = CliRunner().invoke(main, [*args, "--json", "--finals-only", "--until-stopped"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["event"], e.get("transcript")) for e in lines] == [
        ("started", None),
        ("content", "hello I need help"),
        ("content", "sure what is wrong"),
        ("stopped", None),
    ]


def test_plain_output_when_not_a_terminal(client, redis_server, call_sid):
    fill(client, call_sid)
    args = ["tail", "--redis-url", redis_server.url, "--from-start", "--until-stopped"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "\x1b" not in result.stdout
    assert len(lines) == 4
    assert "transcription started" in lines[0] and "customer / agent" in lines[0]
    assert lines[1].endswith("customer    hello I need help")
    assert lines[2].endswith("agent       sure what is wrong")
    assert "transcription stopped" in lines[3]
    stamp = redis.Redis.from_url(redis_server.url, decode_responses=True).xrange(
        f"rtt:call:{{{call_sid}}}"
    )[1][1]["timestamp"]
    assert lines[1].startswith(f"{stamp[11:19]}  CA…{call_sid[-6:]}")  # Twilio's time, UTC


def test_error_events_are_visible(client, redis_server, call_sid):
    gt = sid("GT")
    post(client, callback("started", call_sid, gt, 1))
    post(
        client,
        callback(
            "error",
            call_sid,
            gt,
            2,
            TranscriptionErrorCode="95100",
            TranscriptionError="provider failed",
        ),
    )
    post(client, callback("stopped", call_sid, gt, 3))
    args = ["tail", "--redis-url", redis_server.url, "--from-start", "--until-stopped"]
    result = CliRunner().invoke(main, args)
    assert "!! transcription error 95100: provider failed" in result.stdout


def test_bad_call_sid_is_refused():
    result = CliRunner().invoke(main, ["tail", "--call", "CA123"])
    assert result.exit_code == 2
    assert "'CA123' is not a CallSid" in result.output


class Tail:
    """`receiver tail` in a subprocess, its output read line by line with a timeout."""

    def __init__(self, url: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [*RECEIVER, "tail", "--redis-url", url, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        for pipe, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err)):
            threading.Thread(
                target=lambda p=pipe, q=lines: [q.put(x) for x in p], daemon=True
            ).start()
        assert "Following" in self.err.get(timeout=10)

    def line(self, timeout: float = 10) -> str:
        return self.out.get(timeout=timeout)

    def message(self, timeout: float = 10) -> str:
        return self.err.get(timeout=timeout)

    def interrupt(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(10)
        time.sleep(0.1)
        rest = []
        while not self.err.empty():
            rest.append(self.err.get())
        return self.process.returncode, "".join(rest)


def test_all_calls_from_now_then_ctrl_c(client, redis_server):
    old_call = sid("CA")
    fill(client, old_call)
    tail = Tail(redis_server.url, "--json")
    try:
        new_call = sid("CA")
        fill(client, new_call)
        count = len(whole_call(new_call, sid("GT")))
        lines = [json.loads(tail.line()) for _ in range(count)]
    finally:
        code, errors = tail.interrupt()
    assert {line["call_sid"] for line in lines} == {new_call}
    assert lines[0]["event"] == "started" and lines[-1]["event"] == "stopped"
    assert code == 0
    assert "Traceback" not in errors


def test_survives_a_redis_restart(tmp_path: Path):
    server = EmbeddedRedis(tmp_path / "redis", port=free_port()).start()
    key = "rtt:events"
    tail = None
    try:
        tail = Tail(server.url, "--json")
        writer = redis.Redis.from_url(server.url, decode_responses=True)
        writer.xadd(key, {"event": "started", "call_sid": sid("CA")})
        assert json.loads(tail.line())["event"] == "started"
        server.kill()
        assert "is unavailable (ConnectionError); reconnecting" in tail.message()
        server.start()
        assert "Reconnected to Redis" in tail.message()
        writer.xadd(key, {"event": "stopped", "call_sid": sid("CA")})
        assert json.loads(tail.line())["event"] == "stopped"
    finally:
        code = tail.interrupt()[0] if tail else None
        server.stop()
    assert code == 0


class Terminal:
    """What a user would see: the pty's bytes fed to a terminal emulator."""

    def __init__(self, child: pexpect.spawn, columns: int = 120, rows: int = 30) -> None:
        self.child = child
        self.screen = pyte.Screen(columns, rows)
        self.stream = pyte.ByteStream(self.screen)

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display if line.strip()]

    def wait_for(self, condition, timeout: float = 10) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self.lines()):
                return self.lines()
            with contextlib.suppress(pexpect.TIMEOUT):
                self.stream.feed(self.child.read_nonblocking(65536, timeout=0.1))
        raise AssertionError(f"screen never matched; it shows: {self.lines()}")


def spawn_tail(redis_url: str, call_sid: str) -> pexpect.spawn:
    """`receiver tail` for one call in a 120x30 colour pseudo terminal."""
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "30"}
    env.pop("NO_COLOR", None)
    command = [*RECEIVER[1:], "tail", "--redis-url", redis_url, "--call", call_sid]
    return pexpect.spawn(RECEIVER[0], command, env=env, dimensions=(30, 120))


def test_live_partials_are_rewritten_until_final(client, redis_server, call_sid):
    child = spawn_tail(redis_server.url, call_sid)
    screen = Terminal(child)
    try:
        screen.wait_for(lambda lines: any("Following" in line for line in lines))
        gt = sid("GT")
        started = callback(
            "started", call_sid, gt, 1, InboundTrackLabel="customer", OutboundTrackLabel="agent"
        )
        post(client, started)
        screen.wait_for(lambda lines: any("transcription started" in line for line in lines))

        post(client, content(call_sid, gt, 2, "I would", final=False))
        screen.wait_for(lambda lines: any(line.endswith("customer    I would…") for line in lines))
        post(client, content(call_sid, gt, 3, "I would like to", final=False))
        shown = screen.wait_for(
            lambda lines: (
                any(line.endswith("to…") for line in lines)
                and not any(line.endswith("I would…") for line in lines)
            )
        )
        post(client, content(call_sid, gt, 4, "Fine", track="outbound_track", final=False))
        shown = screen.wait_for(
            lambda lines: any(line.endswith("agent       Fine…") for line in lines)
        )
        assert sum(line.endswith("…") for line in shown) == 2, shown  # one partial per track

        post(client, content(call_sid, gt, 5, "I would like to change my booking"))
        shown = screen.wait_for(
            lambda lines: (
                any(line.endswith("my booking") for line in lines)
                and not any("to…" in line for line in lines)
            )
        )
        assert sum("I would" in line for line in shown) == 1, shown
        assert shown[-1].endswith("agent       Fine…"), shown  # the other partial stays live
        finals = [line for line in shown if line.endswith("my booking")]
        assert "customer    I would like to change my booking" in finals[0]

        post(client, callback("stopped", call_sid, gt, 6))
        shown = screen.wait_for(
            lambda lines: any("transcription stopped" in line for line in lines)
        )
        assert not any("Fine…" in line for line in shown), shown
        child.sendintr()
        child.expect(pexpect.EOF, timeout=10)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_a_key_that_is_not_a_stream_is_a_clear_error(redis_client, redis_server):
    redis_client.set("rtt:events", "not a stream")
    result = CliRunner().invoke(main, ["tail", "--redis-url", redis_server.url, "--from-start"])
    assert result.exit_code == 1
    assert "Error: rtt:events: WRONGTYPE" in result.output


def run_tail(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """The tail in a subprocess: a tail that never exits fails the test instead of hanging it."""
    return subprocess.run(
        [*RECEIVER, "tail", *args], capture_output=True, text=True, timeout=timeout
    )


def test_until_stopped_ignores_content_delivered_after_stopped(client, redis_server, call_sid):
    first, second = sid("GT"), sid("GT")
    post(client, callback("started", call_sid, first, 1))
    post(client, callback("started", call_sid, second, 1))
    post(client, callback("stopped", call_sid, first, 3))
    post(client, content(call_sid, second, 2, "second speaks"))
    post(client, content(call_sid, first, 2, "late but real"))  # delivered after its stopped
    post(client, callback("stopped", call_sid, second, 3))
    args = ["--redis-url", redis_server.url, "--call", call_sid, "--from-start", "--json"]
    done = run_tail(*args, "--until-stopped")
    assert done.returncode == 0, done.stderr
    shown = [json.loads(line).get("transcript") for line in done.stdout.splitlines()]
    assert "late but real" in shown and "second speaks" in shown


def test_until_stopped_prints_a_final_delivered_after_stopped(client, redis_server, call_sid):
    gt = sid("GT")
    tail = Tail(redis_server.url, "--call", call_sid, "--json", "--until-stopped")
    try:
        post(client, callback("started", call_sid, gt, 1))
        post(client, callback("stopped", call_sid, gt, 3))
        post(client, content(call_sid, gt, 2, "the last words"))
        events = [json.loads(tail.line())["event"] for _ in range(3)]
        tail.process.wait(10)
    finally:
        if tail.process.poll() is None:
            tail.interrupt()
    assert events == ["started", "stopped", "content"]
    assert tail.process.returncode == 0


def test_live_area_ignores_partials_older_than_what_is_shown(client, redis_server, call_sid):
    child = spawn_tail(redis_server.url, call_sid)
    screen = Terminal(child)
    try:
        screen.wait_for(lambda lines: any("Following" in line for line in lines))
        gt = sid("GT")
        post(client, callback("started", call_sid, gt, 1))
        post(client, content(call_sid, gt, 3, "hello there"))
        post(client, content(call_sid, gt, 2, "hello", final=False))  # after its final
        post(client, content(call_sid, gt, 5, "how are you", final=False))
        post(client, content(call_sid, gt, 4, "how", final=False))  # older than the one shown
        post(client, content(call_sid, gt, 6, "fine", track="outbound_track"))
        shown = screen.wait_for(lambda lines: any(line.endswith("fine") for line in lines))
        partials = [line for line in shown if line.endswith("…")]
        assert len(partials) == 1 and partials[0].endswith("how are you…"), shown
        post(client, callback("stopped", call_sid, gt, 8))
        post(client, content(call_sid, gt, 7, "late", final=False))  # after stopped
        post(client, content(call_sid, gt, 9, "bye", track="outbound_track"))
        shown = screen.wait_for(lambda lines: any(line.endswith("bye") for line in lines))
        assert not any(line.endswith("…") for line in shown), shown
        child.sendintr()
        child.expect(pexpect.EOF, timeout=10)
    finally:
        child.close()


def test_a_wrong_redis_password_is_a_clear_error(redis_client, redis_server):
    user, secret = f"tail-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    redis_client.acl_setuser(user, enabled=True, passwords=[f"+{secret}"], commands=["+ping"])
    try:
        port = redis_server.url.rsplit(":", 1)[1].split("/")[0]
        wrong = f"redis://{user}:not-{secret}@127.0.0.1:{port}/0"
        done = run_tail("--redis-url", wrong)
        assert done.returncode == 1, done.stderr
        assert "refused the credentials" in done.stderr
        assert f"not-{secret}" not in done.stdout + done.stderr
        assert "reconnecting" not in done.stderr
        allowed = f"redis://{user}:{secret}@127.0.0.1:{port}/0"
        done = run_tail("--redis-url", allowed)  # right password, but no right to read
        assert done.returncode == 1, done.stderr
        assert "may not read rtt:events" in done.stderr
        assert secret not in done.stdout + done.stderr
    finally:
        redis_client.acl_deluser(user)
