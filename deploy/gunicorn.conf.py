"""gunicorn settings for rtt-receiver.

Run: `gunicorn -c deploy/gunicorn.conf.py 'receiver:create_app()'`.

Environment: PORT (default 8000) and HOST (default 0.0.0.0), or BIND to give both;
WEB_CONCURRENCY (workers, default 2), GUNICORN_THREADS (threads per worker, default 4).

Worker class: gthread. Each callback spends most of its time waiting on one Redis round trip,
so threads overlap those waits without the monkey-patching of gevent/eventlet; a thread pool per
worker also keeps keep-alive connections from a load balancer from pinning a whole process, as
sync workers would. See the README's performance section for the measurements.
"""

import os

bind = (
    os.environ.get("BIND")
    or f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
)
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
keepalive = 75  # longer than common load balancers' idle timeouts, so they close first
timeout = 30
graceful_timeout = 30  # on SIGTERM or SIGHUP, in-flight callbacks get this long to finish
# Bounded request parsing: Twilio's callbacks are small.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
accesslog = None
errorlog = "-"
# Several receivers may run on one host (tests, blue/green): no shared control socket.
control_socket_disable = True
loglevel = os.environ.get("LOG_LEVEL", "info")


def _bound_silent_clients() -> None:
    """A gthread worker gives each new connection a thread for up to 5 s while it waits for the
    first bytes, so a few dozen silent connections stall every callback. Waiting 0.25 s and then
    parking the connection on the poller (what gunicorn does after its wait anyway) keeps
    threads for clients that talk. Trickling clients still hold a thread: see the README."""
    from gunicorn.workers import gthread

    if hasattr(gthread, "DEFAULT_WORKER_DATA_TIMEOUT"):
        gthread.DEFAULT_WORKER_DATA_TIMEOUT = 0.25


_bound_silent_clients()


def on_starting(server):
    """Refuse to start on a bad configuration, with the reason, before any worker boots."""
    from receiver.config import ConfigError, load_settings

    try:
        settings = load_settings()
    except ConfigError as error:
        raise SystemExit(f"rtt-receiver: {error}") from None
    if not settings.redis_url:
        raise SystemExit("rtt-receiver: REDIS_URL is not set (or use 'receiver serve')")
    if settings.spool_dir:
        from receiver.spool import Spool

        try:
            spool = Spool(settings.spool_dir, settings.spool_max_bytes)
            spool.check()
        except OSError as error:
            raise SystemExit(f"rtt-receiver: SPOOL_DIR={settings.spool_dir!r}: {error}") from None
        if not spool.writable():
            raise SystemExit(f"rtt-receiver: SPOOL_DIR={settings.spool_dir!r} is not writable")
        server.log.info("spool: %s (%d records waiting)", spool.directory.resolve(), spool.depth())


def worker_exit(server, worker):
    """After a worker's in-flight requests finished (SIGTERM, SIGHUP reload, max requests):
    stop its spool drainer, which confirms the record in hand and releases the drain lock, so
    another worker or the next receiver takes over with nothing lost or replayed twice."""
    from receiver.delivery import stop_drainers

    stop_drainers()


def post_worker_init(worker):
    """The receiver's own log lines (spool, drainer, Redis outages) go where gunicorn's go, in
    its format and at LOG_LEVEL. They never carry transcripts, tokens, signatures or passwords:
    tests/test_logs.py checks it over a whole call."""
    import logging

    error_log = logging.getLogger("gunicorn.error")
    receiver_log = logging.getLogger("receiver")
    receiver_log.handlers = list(error_log.handlers)
    receiver_log.setLevel(error_log.level)
    receiver_log.propagate = False
