"""Slow clients against gunicorn exposed directly, as ``Procfile`` and ``deploy/Dockerfile`` run
it: connections that trickle a body or headers, or open and say nothing, must not keep signed
callbacks from being answered.

The assertion is "answered" within a generous deadline; how fast (the goal is under a second)
is printed (``pytest -s``) and reported in docs/performance.md, since machines are noisy.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlencode

import pytest
import requests

from receiver.storage.contract import Keys

from .support.twilio_calls import CALLBACK_PATH, content, sid, sign

pytestmark = pytest.mark.slow  # starts gunicorn

TRICKLE_SECONDS = 0.5  # one byte every half second, as the attack was reproduced
ATTACKERS = 20  # of each kind
IDLE_PER_SECOND = 100
DEADLINE_SECONDS = 10.0  # generous: the goal is under 1 s, asserted only as "answered"


def _trickle(port: int, first: bytes, drip: bytes, stop: threading.Event) -> None:
    """Send ``first``, then ``drip`` one byte at a time, reconnecting whenever the server
    closes, until ``stop``."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(first)
                for byte in drip:
                    if stop.wait(TRICKLE_SECONDS):
                        return
                    sock.sendall(bytes([byte]))
        except OSError:
            stop.wait(TRICKLE_SECONDS)


def _open_idle(port: int, stop: threading.Event) -> None:
    """About IDLE_PER_SECOND connections a second that never send a byte, each kept open for a
    few seconds."""
    held: list[tuple[float, socket.socket]] = []
    while not stop.is_set():
        now = time.monotonic()
        with contextlib.suppress(OSError):
            held.append((now, socket.create_connection(("127.0.0.1", port), timeout=5)))
        while held and held[0][0] < now - 3:
            held.pop(0)[1].close()
        stop.wait(1 / IDLE_PER_SECOND)
    for _, sock in held:
        sock.close()


def _attack(port: int, stop: threading.Event) -> list[threading.Thread]:
    body_head = (
        f"POST {CALLBACK_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 4000\r\n\r\n"
    ).encode()
    header_head = f"POST {CALLBACK_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
    jobs: list[Callable[[], None]] = []
    for _ in range(ATTACKERS):
        jobs.append(lambda: _trickle(port, body_head, b"a" * 4000, stop))
        jobs.append(lambda: _trickle(port, header_head, b"X-Slow: " + b"z" * 4000, stop))
    jobs.append(lambda: _open_idle(port, stop))
    threads = [threading.Thread(target=job, daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    return threads


def test_slow_clients_do_not_stop_the_receiver(start_receiver, redis_client):
    """20 connections trickling a body, 20 trickling headers and 100 idle connections a second,
    against the real gunicorn with its deployed settings: signed callbacks are still answered."""
    server = start_receiver()
    url = server.url + CALLBACK_PATH
    stop = threading.Event()
    threads = _attack(server.port, stop)
    call, transcription = sid("CA"), sid("GT")
    latencies = []
    try:
        time.sleep(3)  # every attacker connected and trickling
        for seq in range(1, 11):
            params = content(call, transcription, seq, f"still answered {seq}")
            began = time.perf_counter()
            answer = requests.post(
                url,
                data=urlencode(params),
                headers={
                    "X-Twilio-Signature": sign(url, params),
                    "Content-Type": "application/x-www-form-urlencoded",
                },
                timeout=DEADLINE_SECONDS,
            )
            latencies.append(time.perf_counter() - began)
            assert answer.status_code == 200, answer.text
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    print(f"\nsigned callbacks under slow clients: {[round(s, 3) for s in latencies]} s")
    assert redis_client.xlen(Keys().call(call)) == 10
