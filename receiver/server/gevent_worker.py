"""gunicorn's gevent worker with a deadline on receiving each request, and the open-file limit
its connections need.

gunicorn's own gevent worker bounds the wait for a request's line and headers with one timer of
``keepalive`` seconds, for the first request of a connection too, and the body not at all: facing
the network directly (``Procfile``, ``deploy/Dockerfile``), a client holds one of a worker's
``worker_connections`` slots for 75 s by connecting and saying nothing, and for as long as it
likes by trickling a body. With 2 workers of 1,000 connections, 100 silent connections a second,
kept open, filled every slot in 20 s; signed callbacks then waited in the listen backlog and were
not answered within 5 s (``tests/test_slow_clients.py``). Two limits replace that one timer:

* **A request must arrive whole within ``REQUEST_SECONDS`` (10 s)**: line, headers and body,
  counted from the connection's accept for its first request and from the first byte of each
  later one. Twilio sends a callback at once and gives up on it after 15 s (its ``tt`` and
  ``rt`` defaults), so a callback still arriving after 10 s could hardly be answered in time
  anyway; a proxy in front sends the requests it buffered at once too. A connection cut while a
  request was under way is answered ``408 Request Timeout`` (which Twilio retries, unlike a
  400); one that never sent a byte is closed without a word, as gunicorn closes an idle one.
  100 new silent connections a second hold 1,000 slots at most. An answer must be taken within
  the same 10 s: gunicorn writes with no deadline, so a client that pipelines requests and
  reads none of the answers held its slot for good once the socket buffers were full.
* **Between requests a connection may stay idle for ``keepalive`` (75 s)**, gunicorn's own
  setting: longer than the idle timeouts of common load balancers and proxies (60 s: AWS's ALB,
  nginx's upstream ``keepalive_timeout``), so that they, not the receiver, close a pooled
  connection, and never send a request on one the receiver has just closed (a 502). The price:
  a client that sends one request and then waits holds a slot for 75 s, so 100 new ones a
  second hold 7,500. ``worker_connections`` (``gunicorn_conf.py``: 10,000 a worker) is sized
  for that with one worker; the open-file limit it needs is raised at start
  (``raise_open_files``). Each open connection costs a worker about 13 KB (measured: 4,000 idle
  connections a worker took its RSS from 48 to 98 MB), so a worker holding all 10,000 uses about
  175 MB.

Every other part of gunicorn's handling is its own: the worker only hands gunicorn a socket
whose ``recv`` and ``sendall`` keep the deadlines (``DeadlineSocket``), for plain HTTP (TLS
terminated by gunicorn itself keeps gunicorn's handling). It is used with the gunicorn releases
it was checked against (``SUPPORTED``: each reads a request through ``recv``, and writes its
answer through ``sendall``, of the socket that ``handle`` is given); on others gunicorn's own
gevent worker runs, and start-up says so.
"""

from __future__ import annotations

import contextlib
import errno
import resource
import socket
import time
from typing import Any

import gunicorn
from gunicorn.workers.ggevent import GeventWorker

REQUEST_SECONDS = 10.0
# gunicorn's worker_connections: sized for clients that hold one idle for ``keepalive`` seconds
# after a request (100 new ones a second hold 7,500).
WORKER_CONNECTIONS = 10_000
# Descriptors a worker needs besides its connections: Redis connections, the spool, metrics
# files, logs, gevent's own (an idle worker has about 16 open).
RESERVED_FILES = 256
SUPPORTED = (23, 0) <= gunicorn.version_info[:2] < (28, 0)
TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class DeadlineSocket:
    """A connection's socket whose reads keep the deadlines above, and whose writes must be
    taken within ``REQUEST_SECONDS`` too; everything else is the socket's own.

    Past a deadline, ``recv`` reports the end of the stream when no request was begun, and a
    reset connection (after the 408) when one was: gunicorn's parser, or the application
    reading a body, see a client that went away (gunicorn logs either at debug level), never
    a shorter body, and gunicorn closes the connection."""

    def __init__(self, sock: socket.socket, idle_seconds: float) -> None:
        self._sock = sock
        self._idle = idle_seconds
        self._until: float | None = time.monotonic() + REQUEST_SECONDS
        self._started = False  # a byte of the current request has arrived
        self._over = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def recv(self, size: int) -> bytes:
        if self._over:
            return b""
        limit = self._idle if self._until is None else self._until - time.monotonic()
        data = None
        if limit > 0:
            # The socket's own timeout costs a timer only when recv has to wait (gevent).
            self._sock.settimeout(limit)
            try:
                data = self._sock.recv(size)
            except TimeoutError:
                pass
            finally:
                self._sock.settimeout(None)
        if data is None:
            self._over = True
            if not self._started:
                return b""  # no request begun: closed without a word
            self._answer_timed_out()
            raise ConnectionResetError(
                errno.ECONNRESET, f"request not received whole within {REQUEST_SECONDS:g} s"
            )
        if data and not self._started:
            self._started = True
            if self._until is None:
                self._until = time.monotonic() + REQUEST_SECONDS
        return data

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(REQUEST_SECONDS)
        try:
            self._sock.sendall(data)
        except TimeoutError:
            self._over = True
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            raise ConnectionResetError(
                errno.ECONNRESET, f"answer not taken within {REQUEST_SECONDS:g} s"
            ) from None
        finally:
            self._sock.settimeout(None)

    def request_done(self) -> None:
        """The answer is sent: the next request may take ``keepalive`` seconds to begin."""
        self._until = None
        self._started = False

    def _answer_timed_out(self) -> None:
        """The 408, then no more reading or writing: the application's own answer to the
        request cut short (a 400) fails at once instead of reaching the client."""
        self._sock.settimeout(1)  # 80 bytes fit any socket buffer: only a stuck peer waits
        try:
            self._sock.sendall(TIMED_OUT)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.settimeout(None)


class DeadlineGeventWorker(GeventWorker):
    """gunicorn's gevent worker, each plain-HTTP connection read through ``DeadlineSocket``, and
    no more connections at once than its open-file limit allows."""

    def init_process(self) -> None:
        self.worker_connections = min(self.cfg.worker_connections, connections_allowed())
        super().init_process()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        if not self.cfg.is_ssl:
            client = DeadlineSocket(client, self.cfg.keepalive)
        super().handle(listener, client, addr)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        served = super().handle_request(listener_name, req, sock, addr)
        if isinstance(sock, DeadlineSocket):
            sock.request_done()
        return served


def connections_allowed() -> int:
    """Connections this process can hold open at once under its soft open-file limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(soft - RESERVED_FILES, 1)


def raise_open_files(connections: int) -> str | None:
    """Raise this process' soft open-file limit (inherited by gunicorn's workers) to what
    ``connections`` at once need, at most to the hard limit; a warning when that is too low."""
    needed = connections + RESERVED_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if connections_allowed() >= connections:
        return None
    return (
        f"the open-file limit (RLIMIT_NOFILE) is {hard}, below the {needed} that "
        f"worker_connections = {connections} needs: each worker serves at most "
        f"{connections_allowed()} connections at once, and slow or idle clients fill them "
        f"sooner. Raise the hard limit (ulimit -Hn {needed}, docker run --ulimit "
        f"nofile={needed}, systemd LimitNOFILE={needed})"
    )
