"""Fixtures shared by the tests: a real Redis server, the app, a client, signed callbacks."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from receiver import create_app
from receiver.config import Settings
from receiver.observability import logs
from receiver.server.embedded_redis import EmbeddedRedis
from receiver.server.process import Served

from .support.processes import start_receiver_process
from .support.twilio_calls import TOKEN

# Property-based tests stay fast by default; HYPOTHESIS_PROFILE=long runs many more examples.
_fixtures_ok = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
hypothesis_settings.register_profile(
    "default", max_examples=60, deadline=None, suppress_health_check=_fixtures_ok
)
hypothesis_settings.register_profile(
    "long", max_examples=3000, deadline=None, suppress_health_check=_fixtures_ok
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _log_lines_within_the_test() -> Iterator[None]:
    """Log lines are written in batches, a moment later: write a test's own before its end,
    while pytest captures them, instead of into the next test's dots."""
    yield
    logs.flush()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def settings(redis_server: EmbeddedRedis, redis_client: redis.Redis) -> Settings:
    return Settings(auth_tokens=(TOKEN,), redis_url=redis_server.url)


@pytest.fixture
def app(settings: Settings):
    app = create_app(settings)
    app.config.update(TESTING=True)
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def call_sid() -> str:
    return "CA" + uuid.uuid4().hex


@pytest.fixture
def start_receiver(redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path):
    """Start the real app under gunicorn with deploy/gunicorn.conf.py; returns its base URL."""
    started: list[Served] = []

    def start(**env: str) -> Served:
        process = start_receiver_process(
            {
                "REDIS_URL": redis_server.url,
                "TWILIO_AUTH_TOKEN": TOKEN,
                "SPOOL_DIR": str(tmp_path / "spool"),
                **env,
            },
            tmp_path,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def own_redis(tmp_path) -> Iterator[EmbeddedRedis]:
    """A Redis server of the test's own, to kill and restart (never the session-wide one)."""
    server = EmbeddedRedis(tmp_path / "own-redis").start()
    yield server
    server.stop()
