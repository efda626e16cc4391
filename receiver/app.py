"""``create_app``: wires settings, storage, views and observability together; nothing more."""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from receiver import views
from receiver.config import Settings, load_settings
from receiver.observability import logs, metrics, telemetry
from receiver.storage import account_stores, open_store
from receiver.storage.durable import DurableWriter
from receiver.storage.spool import Spool
from receiver.views.callback import CALLBACK_PATH
from receiver.views.services import Receiver

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """The Flask app with its store, spool, views and telemetry.

    Settings are read from the environment once, here, so a bad value stops the server at
    start-up with a message instead of failing the first callback. No thread is started here:
    ``Receiver.start`` does that in the serving process.
    """
    settings = settings or load_settings()
    logs.configure()
    for warning in settings.token_warnings():
        log.warning(warning)
    store = open_store(settings)
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, MAX_FORM_PARTS=500)
    if settings.proxy_hops:
        # Trust X-Forwarded-* from exactly this many proxies: trusting more would let any
        # client choose the URL whose signature is checked.
        hops = settings.proxy_hops
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops
        )
    spool = None
    if settings.spool_dir:
        spool = Spool(Path(settings.spool_dir), settings.spool_max_bytes)
    routes = account_stores(settings, store)
    writer = DurableWriter(store, spool, routes, settings.serves, group_commit=True)
    receiver = Receiver(settings, store, writer)
    app.extensions["receiver"] = receiver
    views.register(app)
    stores = (store, *writer.routes.values())
    active_calls = list(dict.fromkeys(each.keys.active_calls for each in stores))
    live = metrics.LiveState(
        store.client,
        active_calls,
        receiver.spool_depth,
        idle_seconds=store.retention_seconds,
        clock=store.clock,
    )
    telemetry.install(app, live, CALLBACK_PATH)
    return app
