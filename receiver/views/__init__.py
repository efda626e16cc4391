"""HTTP endpoints: the only package that touches ``flask.request``."""

from __future__ import annotations

import logging

import redis
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from receiver.observability import metrics
from receiver.observability.telemetry import note
from receiver.storage.durable import StorageUnavailable
from receiver.verify import Refused
from receiver.views import callback, health

log = logging.getLogger(__name__)


def _refused(error: HTTPException) -> Response:
    response = jsonify(error=error.description, status=error.code)
    response.status_code = error.code or 500
    for name, value in getattr(error, "extra_headers", {}).items():
        response.headers[name.replace("_", "-")] = value
    return response


def _redis_down(error: redis.RedisError) -> Response:
    log.warning("redis unavailable: %s", type(error).__name__)
    metrics.count_redis_error(error)
    return _storage_down(error)


def _storage_down(error: Exception) -> Response:
    note(outcome="storage_unavailable", reason="")
    return _refused(Refused(503, "storage unavailable, retry later", Retry_After="1"))


def register(app: Flask) -> None:
    app.register_blueprint(callback.bp)
    app.register_blueprint(health.bp)
    app.register_error_handler(HTTPException, _refused)
    app.register_error_handler(redis.RedisError, _redis_down)
    app.register_error_handler(StorageUnavailable, _storage_down)
