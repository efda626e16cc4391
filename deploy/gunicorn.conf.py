"""gunicorn settings for rtt-receiver.

Run: `gunicorn -c deploy/gunicorn.conf.py 'receiver:create_app()'`.

Environment: PORT (default 8000) and HOST (default 0.0.0.0), or BIND to give both;
WEB_CONCURRENCY (workers, default 2), GUNICORN_THREADS (threads per worker, default 4).

Worker class and counts: gthread, 2 workers x 4 threads, chosen with `receiver bench` (README,
"Performance") on a 2-core machine shared with other jobs (load average 4 to 9), comparing the
gunicorn CPU time per stored callback, which such sharing hardly moves, where req/s swung by 2x:

    gthread 2 x 4   832-902 us (8 runs)    sync 2    902-926 us (3 runs)
    gthread 2 x 2   961 us                 sync 3    876 us
    gthread 2 x 1   955 us                 sync 4    912-915 us (2 runs)
    gthread 3 x 1   1006 us                (the empty route: 310-430 us, any class)
    gthread 4 x 2   966-1034 us

2 x 4 cost as little as any (sync 3's single run lies inside its range) and less than the other
gthread shapes: each callback waits once on Redis, and threads fill those waits without more
processes competing for 2 cores.
Sync workers had a lower p99 at 1,000 req/s offered in those runs (23-35 ms against 27-66 ms,
all far above the goal, because the cores were shared); they were not chosen because they
close the connection after every answer (no keep-alive) and let one slow client hold a whole
process, which matters when Twilio reaches the receiver without a buffering proxy. To try them:
GUNICORN_CMD_ARGS="--worker-class sync". Scale with WEB_CONCURRENCY = cores (Redis needs CPU
too: about 100 us per callback, from the same bench).
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
graceful_timeout = 30  # on SIGTERM, in-flight callbacks get this long to finish
# Bounded request parsing: Twilio's callbacks are small.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
accesslog = None
errorlog = "-"
# Several receivers may run on one host (tests, blue/green): no shared control socket.
control_socket_disable = True
loglevel = os.environ.get("LOG_LEVEL", "info")


def on_starting(server):
    """Refuse to start on a bad configuration, with the reason, before any worker boots."""
    from receiver.config import ConfigError, load_settings

    try:
        settings = load_settings()
    except ConfigError as error:
        raise SystemExit(f"rtt-receiver: {error}") from None
    if not settings.redis_url:
        raise SystemExit("rtt-receiver: REDIS_URL is not set (or use 'receiver serve')")
