"""Storage: the streams contract, the stores that write it, the spool that covers Redis outages."""

from __future__ import annotations

from typing import TYPE_CHECKING

from receiver.config import Settings

if TYPE_CHECKING:
    import redis

    from receiver.storage.store import Store

# redis-py is imported when a store is opened, not with this package: gunicorn's master imports
# the spool (to check SPOOL_DIR) before its gevent workers monkey-patch, and a redis-py imported
# there keeps unpatched references to ssl in every worker.


def connect(settings: Settings) -> redis.Redis:
    """The Redis client callbacks are stored with: bounded, so that past ``REDIS_TIMEOUT_MS``
    the event goes to the spool instead of keeping Twilio waiting."""
    if not settings.redis_url:
        raise ValueError(
            "REDIS_URL is not set: give the receiver a Redis, or run 'receiver serve', "
            "which starts an embedded one"
        )
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from receiver.storage import cluster

    timeout = settings.redis_timeout_ms / 1000
    options = dict(socket_timeout=timeout, socket_connect_timeout=timeout)
    if settings.redis_cluster:
        return cluster.connect(settings.redis_url, **options)
    # One immediate retry on a broken connection (a pooled one after a Redis restart), none
    # after a timeout.
    return redis.Redis.from_url(
        settings.redis_url,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        **options,
    )


def open_store(settings: Settings, client: redis.Redis | None = None, prefix: str = "") -> Store:
    """The store for ``settings``: one Redis, or a Redis Cluster (``REDIS_CLUSTER=1``), under
    ``prefix`` (default ``STREAM_PREFIX``), on ``client`` (default a new connection)."""
    from receiver.storage.cluster import ClusterStore
    from receiver.storage.contract import Keys
    from receiver.storage.store import Store

    kind = ClusterStore if settings.redis_cluster else Store
    return kind(
        client or connect(settings),
        Keys(prefix or settings.stream_prefix),
        settings.call_retention_seconds,
        settings.events_maxlen,
        settings.rejected_maxlen,
        settings.partials_retention_seconds,
        settings.max_event_age_seconds,
    )


def account_stores(settings: Settings, default: Store) -> dict[str, Store]:
    """AccountSid -> the store of its own ``stream_prefix`` (``TWILIO_ACCOUNTS_FILE``), all on
    ``default``'s Redis client; accounts without one are absent and use ``default``."""
    by_prefix: dict[str, Store] = {}
    routes = {}
    for account in settings.accounts:
        if account.stream_prefix:
            prefix = account.stream_prefix
            if prefix not in by_prefix:
                by_prefix[prefix] = open_store(settings, default.client, prefix)
            routes[account.sid] = by_prefix[prefix]
    return routes
