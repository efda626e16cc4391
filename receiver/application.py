"""Building the WSGI app: settings -> Redis client -> store and spool -> views and telemetry."""

from __future__ import annotations

import redis
from flask import Flask
from redis.backoff import NoBackoff
from redis.retry import Retry
from werkzeug.middleware.proxy_fix import ProxyFix

from . import cluster, logs, metrics, telemetry, webhooks
from .config import Settings, load_settings
from .delivery import Delivery, Drainer, spool_depth
from .spool import Spool
from .streams import Keys, Store


def build(settings: Settings | None = None) -> Flask:
    """The Flask app with its Redis client, store, spool, drainer, views and telemetry.

    Settings are read from the environment once, here, so a bad value stops the server at
    start-up with a message instead of failing the first callback.
    """
    settings = settings or load_settings()
    logs.configure()
    if not settings.redis_url:
        raise ValueError(
            "REDIS_URL is not set: give the receiver a Redis, or run 'receiver serve', "
            "which starts an embedded one"
        )
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, MAX_FORM_PARTS=500)
    if settings.proxy_hops:
        # Trust X-Forwarded-* from exactly this many proxies: trusting more would let any
        # client choose the URL whose signature is checked.
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops
        )
    # Bounded: past REDIS_TIMEOUT_MS the event goes to the spool instead.
    timeout = settings.redis_timeout_ms / 1000
    options = dict(socket_timeout=timeout, socket_connect_timeout=timeout)
    if settings.redis_cluster:
        client = cluster.connect(settings.redis_url, **options)
    else:
        # One immediate retry on a broken connection (a pooled one after a Redis restart),
        # none after a timeout.
        client = redis.Redis.from_url(
            settings.redis_url,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            **options,
        )
    store = (cluster.ClusterStore if settings.redis_cluster else Store)(
        client,
        Keys(settings.stream_prefix),
        settings.call_retention_seconds,
        settings.events_maxlen,
        settings.rejected_maxlen,
    )
    spool = Spool(settings.spool_dir, settings.spool_max_bytes) if settings.spool_dir else None
    delivery = Delivery(store, spool)
    app.extensions["receiver"] = webhooks.Receiver(settings, store, delivery)
    if spool is not None:
        # One drainer thread per process; the spool's drain.lock lets one replay at a time.
        app.extensions["receiver_drainer"] = Drainer(delivery).start()
    webhooks.register(app)
    live = metrics.LiveState(client, store.keys.active_calls, spool_depth=lambda: spool_depth(app))
    telemetry.install(app, live, webhooks.CALLBACK_PATH)
    return app
