"""Liveness and readiness, for load balancers and orchestrators."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, jsonify

from receiver.observability import metrics
from receiver.views.services import current

bp = Blueprint("health", __name__)


@bp.route("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.route("/readyz")
def readyz() -> Response | tuple[Response, int]:
    """Ready when callbacks can be stored durably: in Redis, or (degraded) in the spool."""
    receiver = current()
    writer = receiver.writer
    extra = {} if writer.spool is None else {"spool_depth": writer.spool.depth()}
    try:
        receiver.store.ping()
    except redis.RedisError as error:
        metrics.count_redis_error(error)
        if writer.can_spool():
            return jsonify(status="degraded", redis=type(error).__name__, **extra)
        return jsonify(status="unavailable", redis=type(error).__name__, **extra), 503
    return jsonify(status="ready", redis="ok", **extra)
