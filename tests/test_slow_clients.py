"""Slow and idle clients against gunicorn exposed directly, as ``Procfile`` and
``deploy/Dockerfile`` run it: connections that trickle a body or headers, or open and then say
nothing, must not keep signed callbacks from being answered (the issue's goal: within a second).

The bound asserted is 2 s at the 99th percentile, every callback answered: robust on a shared
2-core machine, where the median is about 10 ms. ``pytest -s`` prints the figures, reported in
docs/performance.md.
"""

from __future__ import annotations

import contextlib
import http.client
import math
import resource
import socket
import statistics
import threading
import time
from collections.abc import Callable
from urllib.parse import urlencode

import pytest
import requests

from receiver.server.gevent_worker import REQUEST_SECONDS, DeadlineSocket
from receiver.storage.contract import Keys

from .support.twilio_calls import CALLBACK_PATH, content, sid, sign

pytestmark = pytest.mark.slow  # starts gunicorn

TRICKLE_SECONDS = 0.5  # one byte every half second, as the attack was reproduced
TRICKLERS = 20  # of each kind
# Twice the rate the attack was reproduced at (100 a second), so that 4,000 idle connections are
# opened and kept in 20 s: more than 2 workers x 1,000 connections hold when each silent one
# keeps its slot for keepalive (75 s), as gunicorn's own gevent worker lets it.
IDLE_PER_SECOND = 200
ATTACK_SECONDS = 20
CALLBACK_EVERY = 0.25
P99_BOUND = 2.0
KEEP_ALIVE = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _enough_open_files(needed: int) -> None:
    """This process holds every idle connection it opens: raise its soft limit to the hard."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the test holds {needed} sockets; this machine allows {hard} open files")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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


def _open_idle(port: int, stop: threading.Event, held: list[socket.socket]) -> None:
    """IDLE_PER_SECOND connections a second, kept open until ``stop``: every other one sends
    nothing, the others one keep-alive request and then nothing."""
    began = time.monotonic()
    opened = 0
    while not stop.wait(max(0.0, began + opened / IDLE_PER_SECOND - time.monotonic())):
        opened += 1
        with contextlib.suppress(OSError):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            held.append(sock)
            if opened % 2:
                sock.sendall(KEEP_ALIVE)


def _attack(port: int, stop: threading.Event, held: list[socket.socket]) -> list[threading.Thread]:
    body_head = (
        f"POST {CALLBACK_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 4000\r\n\r\n"
    ).encode()
    header_head = f"POST {CALLBACK_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
    jobs: list[Callable[[], None]] = []
    for _ in range(TRICKLERS):
        jobs.append(lambda: _trickle(port, body_head, b"a" * 4000, stop))
        jobs.append(lambda: _trickle(port, header_head, b"X-Slow: " + b"z" * 4000, stop))
    jobs.append(lambda: _open_idle(port, stop, held))
    threads = [threading.Thread(target=job, daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    return threads


def _callback(url: str, call: str, transcription: str, seq: int) -> float:
    """Seconds until a signed callback was answered 200; infinite when it was not in 10 s."""
    params = content(call, transcription, seq, f"still answered {seq}")
    began = time.perf_counter()
    try:
        answer = requests.post(
            url,
            data=urlencode(params),
            headers={
                "X-Twilio-Signature": sign(url, params),
                "Content-Type": "application/x-www-form-urlencoded",
            },
            timeout=10,
        )
    except requests.RequestException:
        return float("inf")
    return time.perf_counter() - began if answer.status_code == 200 else float("inf")


def test_slow_and_idle_clients_do_not_stop_the_receiver(start_receiver, redis_client):
    """20 connections trickling a body, 20 trickling headers, and 200 idle connections a second
    kept open (4,000 by the end), against the real gunicorn with its deployed settings: signed
    callbacks sent throughout are all answered, 99% of them within 2 s."""
    _enough_open_files(IDLE_PER_SECOND * ATTACK_SECONDS + 1000)
    server = start_receiver()
    url = server.url + CALLBACK_PATH
    stop = threading.Event()
    held: list[socket.socket] = []
    threads = _attack(server.port, stop, held)
    call, transcription = sid("CA"), sid("GT")
    latencies: list[float] = []
    try:
        began = time.monotonic()
        while time.monotonic() - began < ATTACK_SECONDS:
            latencies.append(_callback(url, call, transcription, len(latencies) + 1))
            time.sleep(CALLBACK_EVERY)
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
        for sock in held:
            sock.close()
    ordered = sorted(latencies)
    p99 = ordered[math.ceil(len(ordered) * 0.99) - 1]  # nearest rank
    print(
        f"\n{len(latencies)} signed callbacks under slow clients and {len(held)} idle "
        f"connections: p50 {statistics.median(ordered) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"max {ordered[-1] * 1000:.0f} ms"
    )
    assert ordered[-1] < float("inf"), "a signed callback was not answered within 10 s"
    assert p99 <= P99_BOUND
    assert redis_client.xlen(Keys().call(call)) == len(latencies)


def _read_all(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def test_requests_must_arrive_whole_in_time_keep_alive_lasts_longer(start_receiver):
    """A connection that sends nothing is closed after REQUEST_SECONDS; one whose headers, or
    body, are not all there by then is answered 408 (which Twilio retries); a keep-alive
    connection idle for longer than that between two requests is still served."""
    server = start_receiver()
    address = ("127.0.0.1", server.port)
    wait = REQUEST_SECONDS + 15
    silent = socket.create_connection(address, timeout=wait)
    headers = socket.create_connection(address, timeout=wait)
    headers.sendall(f"POST {CALLBACK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
    body = socket.create_connection(address, timeout=wait)
    body.sendall(
        f"POST {CALLBACK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"X-Twilio-Signature: {sign(server.url + CALLBACK_PATH, {})}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        "Content-Length: 100\r\n\r\nAccountSid=AC".encode()
    )
    kept = http.client.HTTPConnection(*address, timeout=wait)
    kept.request("GET", "/healthz")
    answer = kept.getresponse()
    answer.read()
    assert answer.status == 200
    first = kept.sock
    began = time.monotonic()
    try:
        assert silent.recv(100) == b""
        closed_after = time.monotonic() - began
        assert _read_all(headers).startswith(b"HTTP/1.1 408 ")
        assert _read_all(body).startswith(b"HTTP/1.1 408 ")
        time.sleep(max(0.0, began + REQUEST_SECONDS + 2 - time.monotonic()))
        kept.request("GET", "/healthz")
        assert kept.getresponse().status == 200
        assert kept.sock is first
    finally:
        for each in (silent, headers, body, kept):
            each.close()
    assert REQUEST_SECONDS - 1 <= closed_after <= REQUEST_SECONDS + 10
    assert "Traceback" not in server.log_tail(100_000)


def test_an_answer_not_taken_in_time_is_cut():
    """A client that reads none of its answers (pipelined requests) holds its connection only
    until a write has waited REQUEST_SECONDS: then the connection is reset and shut down."""
    server, client = socket.socketpair()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    deadlined = DeadlineSocket(server, idle_seconds=75)
    raised: list[BaseException] = []

    def answer() -> None:
        try:
            deadlined.sendall(b"x" * 4_000_000)
        except OSError as error:
            raised.append(error)

    writer = threading.Thread(target=answer, daemon=True)
    began = time.monotonic()
    writer.start()
    writer.join(REQUEST_SECONDS + 10)
    waited = time.monotonic() - began
    try:
        assert not writer.is_alive(), "the write still waits for a client that reads nothing"
        assert [type(error) for error in raised] == [ConnectionResetError]
        assert waited >= REQUEST_SECONDS - 1
        assert deadlined.recv(100) == b""  # shut down: nothing more is read or answered
    finally:
        client.close()
        server.close()
