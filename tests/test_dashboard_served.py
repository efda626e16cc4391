"""The dashboard under gunicorn, over real sockets on 127.0.0.1: what only a served process
shows (threads held by event streams, a Redis that is not there)."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from receiver.dashboard.process import start_dashboard
from receiver.server.embedded_redis import EmbeddedRedis
from receiver.server.network import free_port
from receiver.server.process import Served
from receiver.storage.contract import Keys

pytestmark = pytest.mark.slow  # starts gunicorn and Redis

# Generous: a loaded machine must not fail these tests; none of them measures a speed.
DEADLINE = 90
OPEN = dict.fromkeys(("DASHBOARD_PASSWORD", "DASHBOARD_PASSWORD_FILE", "DASHBOARD_AUTH", "BIND"))


def serve(tmp_path, **env: str) -> Served:
    return start_dashboard({"LOG_LEVEL": "warning", **OPEN, **env}, tmp_path)


def answers(dashboard: Served, path: str, timeout: float = 5) -> int | None:
    """The status of GET ``path``, or None when no answer came within ``timeout``."""
    try:
        with urllib.request.urlopen(dashboard.url + path, timeout=timeout) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def stalled_viewer(dashboard: Served, path: str) -> socket.socket:
    """A viewer that opens the event stream, reads its first line, and then never reads."""
    viewer = socket.socket()
    viewer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills sooner
    viewer.settimeout(DEADLINE)
    viewer.connect(("127.0.0.1", dashboard.port))
    viewer.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    received = b""
    while b": connected" not in received:
        chunk = viewer.recv(4096)
        assert chunk, "the stream closed before it started"
        received += chunk
    return viewer


def closed_by_server(viewer: socket.socket, deadline: float) -> bool:
    """Whether the server ends the connection (reading what it had sent) before ``deadline``."""
    while time.monotonic() < deadline:
        try:
            if not viewer.recv(1 << 20):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


@pytest.fixture
def keys() -> Keys:
    return Keys(f"t{uuid.uuid4().hex[:8]}")


@pytest.fixture
def stalling(redis_server, redis_client, keys, tmp_path) -> Iterator[Served]:
    dashboard = serve(
        tmp_path,
        REDIS_URL=redis_server.url,
        STREAM_PREFIX=keys.prefix,
        DASHBOARD_THREADS="2",
        DASHBOARD_SEND_TIMEOUT="1",
    )
    yield dashboard
    dashboard.stop()


def test_viewers_that_stop_reading_are_dropped_and_free_their_threads(stalling, redis_client, keys):
    """Two viewers (as many as threads) stop reading while big events keep coming: each is
    dropped once a write has waited DASHBOARD_SEND_TIMEOUT, so /healthz is answered again."""
    viewers = [stalled_viewer(stalling, "/events") for _ in range(2)]
    big = "x" * 64_000
    for _ in range(200):  # 12.8 MB each: more than any socket buffer holds
        redis_client.xadd(
            keys.events,
            {"call_sid": "CA" + "0" * 32, "event": "content", "final": "true", "transcript": big},
        )
    deadline = time.monotonic() + DEADLINE
    while answers(stalling, "/healthz") != 200:
        assert time.monotonic() < deadline, "/healthz is not answered: every thread is held"
    for viewer in viewers:
        assert closed_by_server(viewer, deadline), "a stalled stream stayed open"
        viewer.close()


def test_it_starts_while_redis_is_down_and_recovers(tmp_path):
    """Redis not there yet: the dashboard starts, says Redis is unavailable (the page and
    /readyz, 503), and serves once Redis comes."""
    later = EmbeddedRedis(tmp_path / "redis", port=free_port())
    dashboard = serve(tmp_path, REDIS_URL=later.url)
    try:
        assert answers(dashboard, "/healthz") == 200
        assert answers(dashboard, "/readyz") == 503
        with pytest.raises(urllib.error.HTTPError) as down:
            urllib.request.urlopen(dashboard.url + "/", timeout=DEADLINE)
        assert down.value.code == 503
        page = down.value.read().decode()
        assert "Redis is unavailable" in page and later.password not in page
        later.start()
        deadline = time.monotonic() + DEADLINE
        while answers(dashboard, "/") != 200 or answers(dashboard, "/readyz") != 200:
            assert time.monotonic() < deadline, "the dashboard did not recover"
            time.sleep(0.2)
    finally:
        dashboard.stop()
        later.stop()
