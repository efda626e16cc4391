"""What gunicorn's start-up (``on_starting`` in receiver/server/gunicorn_conf.py) sees to and
says, under the real gunicorn: the open-file limit that ``worker_connections`` needs, and a
receiver reachable from other machines while the Host header picks the URL that is checked."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from receiver.server.gevent_worker import RESERVED_FILES, WORKER_CONNECTIONS
from receiver.server.network import free_port
from receiver.server.process import Served, gunicorn_command, start

from .support.processes import GUNICORN_CONFIG, ROOT
from .support.twilio_calls import TOKEN

pytestmark = pytest.mark.slow  # starts gunicorn

NEEDED = WORKER_CONNECTIONS + RESERVED_FILES
EXPOSED = "without PUBLIC_BASE_URL or PROXY_HOPS"


@pytest.fixture
def serve(redis_server, tmp_path):
    """Start gunicorn with the deployment's configuration, optionally under shell ``ulimit``s."""
    started: list[Served] = []

    def run(limits: str = "", **env: str) -> Served:
        command = gunicorn_command(config=str(GUNICORN_CONFIG))
        if limits:
            command = ["sh", "-c", f'{limits} && exec "$@"', "sh", *command]
        base = {"REDIS_URL": redis_server.url, "TWILIO_AUTH_TOKEN": TOKEN}
        served = start(
            {**base, "SPOOL_DIR": str(tmp_path / "spool"), **env},
            tmp_path,
            command=command,
            cwd=ROOT,
            workers=2,
        )
        started.append(served)
        return served

    yield run
    for served in started:
        served.stop()


def _open_files(pid: int) -> tuple[int, int]:
    """A process' soft and hard open-file limits, from /proc."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open-file limit for {pid}")


def test_the_open_file_limit_is_raised_for_the_workers_connections(serve):
    """A soft limit of 1,024 is raised for the workers to what their connections need."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < NEEDED:
        pytest.skip(f"this machine's hard open-file limit is {hard}, below {NEEDED}")
    served = serve("ulimit -Sn 1024")
    for worker in served.worker_pids():
        assert _open_files(worker)[0] == NEEDED
    assert "RLIMIT_NOFILE" not in served.log_tail(100_000)
    assert EXPOSED not in served.log_tail(100_000)  # on loopback: nothing to say


def test_a_hard_limit_too_low_is_said_at_start_and_the_workers_fit_it(serve):
    """Below what worker_connections needs, the soft limit goes up to the hard one, the log
    says how to raise it, and the receiver serves."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"this machine's hard open-file limit is {hard}, below 4096")
    served = serve("ulimit -Sn 1024 && ulimit -Hn 4096")
    for worker in served.worker_pids():
        assert _open_files(worker) == (4096, 4096)
    log = served.log_tail(100_000)
    assert "the open-file limit (RLIMIT_NOFILE) is 4096" in log
    assert f"ulimit -Hn {NEEDED}" in log
    assert served.answers("/healthz")


def test_listening_beyond_loopback_without_the_public_url_is_warned_about(serve):
    """As Procfile and deploy/Dockerfile run it (every interface): a warning naming both
    variables, unless one is set."""
    port = free_port()
    served = serve(BIND=f"0.0.0.0:{port}", PORT=str(port))
    assert EXPOSED in served.log_tail(100_000)
    assert "PUBLIC_BASE_URL to the URL Twilio calls" in served.log_tail(100_000)
    served.stop()
    port = free_port()
    served = serve(
        BIND=f"0.0.0.0:{port}", PORT=str(port), PUBLIC_BASE_URL="https://rtt.example.com"
    )
    assert EXPOSED not in served.log_tail(100_000)
    port = free_port()
    served = serve(BIND=f"0.0.0.0:{port}", PORT=str(port), PROXY_HOPS="1")
    assert EXPOSED not in served.log_tail(100_000)
