"""The dashboard's Flask app: pages, the live feed and the transcript downloads."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import Flask

from receiver.dashboard import auth, views
from receiver.dashboard.live import READ_BLOCK_MS, Hub
from receiver.dashboard.settings import DashboardSettings, load_dashboard_settings
from receiver.storage import cluster
from receiver.storage.contract import Keys


@dataclass
class State:
    settings: DashboardSettings
    keys: Keys
    client: redis.Redis
    hub: Hub


def connect(settings: DashboardSettings, socket_timeout: float) -> redis.Redis:
    """A client of one Redis or of a Redis Cluster (REDIS_CLUSTER=1: the pages read keys of
    every slot, and a pipeline spans the nodes). It connects on first use, so the dashboard
    starts (and says so) while Redis is unavailable."""
    if settings.redis_cluster:
        return cluster.connect(
            settings.redis_url, decode_responses=True, socket_timeout=socket_timeout
        )
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_timeout=socket_timeout,
        health_check_interval=30,
    )


def create_app(settings: DashboardSettings | None = None) -> Flask:
    settings = settings or load_dashboard_settings()
    app = Flask(__name__)
    keys = Keys(settings.stream_prefix)
    client = connect(settings, socket_timeout=10)
    # The reader blocks in XREAD: its socket waits longer than the block.
    reader = connect(settings, socket_timeout=READ_BLOCK_MS / 1000 + 10)
    app.extensions["dashboard"] = State(
        settings, keys, client, Hub(reader, keys, settings.viewer_buffer, settings.send_timeout)
    )
    auth.install(app, settings)
    app.register_blueprint(views.blueprint)
    return app
