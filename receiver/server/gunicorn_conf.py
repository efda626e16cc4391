"""gunicorn settings for rtt-receiver, read through deploy/gunicorn.conf.py.

Run: `gunicorn -c deploy/gunicorn.conf.py 'receiver:create_app()'` in a checkout, or
`gunicorn -c python:receiver.server.gunicorn_conf 'receiver:create_app()'` from an installed package
(what `receiver serve` runs): the settings live in the package so that both work.

Environment: PORT (default 8000) and HOST (default 0.0.0.0), or BIND to give both;
WEB_CONCURRENCY (workers, default 2); GUNICORN_THREADS (threads per worker, default 4, used only
when the worker class is gthread: GUNICORN_CMD_ARGS="--worker-class gthread");
LOG_LEVEL, LOG_FORMAT (see receiver/observability/logs.py); PROMETHEUS_MULTIPROC_DIR (below).

Metrics: each worker writes its counters to files in PROMETHEUS_MULTIPROC_DIR so that /metrics
adds up all workers. When it is not set, a private directory is created here and removed on
exit; a directory you set yourself is yours to empty between runs (prometheus_client's rule).

Worker class: gevent, 2 workers, up to 10,000 connections each, every request to arrive whole
within 10 s (receiver/server/gevent_worker.py: the deadlines, the numbers and why). Chosen by
two measurements (docs/performance.md). Slow clients: with gthread (2 x 4 threads), 20
connections trickling a body and 20 trickling headers, plus 100 idle connections a second, kept
every signed callback waiting past a 10 s deadline (tests/test_slow_clients.py); with gevent
each such connection is a greenlet, and the deadlines free its slot. Speed: in alternating
runs of the same load on the shared 2-core machine, gevent spent 1,402-1,628 us of gunicorn CPU
and 148-151 us of Redis CPU per stored callback against gthread's 1,488-1,644 us and 173-234 us,
and answered more (group commit batches a worker's concurrent callbacks, and a gevent worker has
more of them in flight than 4 threads). Every reliability and fault test runs with it. Scale with
WEB_CONCURRENCY = cores (Redis needs CPU too).
"""

import logging
import os
import shutil
import sys
import tempfile

from gunicorn import glogging

from receiver.config import ConfigError, int_setting
from receiver.server import gevent_worker

# Set before any worker imports prometheus_client, which reads it at import time. The second
# variable marks the directory as ours, also across a configuration reload (SIGHUP).
_OWNED_METRICS_DIR = "RTT_OWNED_METRICS_DIR"
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="rtt-metrics-")
    os.environ[_OWNED_METRICS_DIR] = os.environ["PROMETHEUS_MULTIPROC_DIR"]

bind = (
    os.environ.get("BIND")
    or f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
)
try:
    workers = int_setting(os.environ, "WEB_CONCURRENCY", 2, 1)
    threads = int_setting(os.environ, "GUNICORN_THREADS", 4, 1)
except ConfigError as error:
    raise SystemExit(f"rtt-receiver: {error}") from None
# gunicorn's gevent worker with a deadline on receiving each request (gevent_worker.py says why,
# and why these numbers); gunicorn's own on releases it was not checked against.
worker_class = gevent_worker.DeadlineGeventWorker if gevent_worker.SUPPORTED else "gevent"
# Per worker: connections served at once, each a greenlet (gevent_worker.py says why so many).
worker_connections = gevent_worker.WORKER_CONNECTIONS
keepalive = 75  # idle between requests: longer than common load balancers' idle timeouts
timeout = 30
graceful_timeout = 30  # on SIGTERM or SIGHUP, in-flight callbacks get this long to finish
# Bounded request parsing: Twilio's callbacks are small.
# GET callbacks carry every parameter in the request line: one longer than this is refused by
# gunicorn with a 414 that Twilio does not retry, so prefer StatusCallbackMethod=POST (README).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
# X-Forwarded-* are trusted by ProxyFix alone, for exactly PROXY_HOPS hops; gunicorn would
# otherwise apply X-Forwarded-Proto from any client on loopback, even with PROXY_HOPS=0.
forwarded_allow_ips = ""
accesslog = None
errorlog = "-"
# Several receivers may run on one host (tests, blue/green): no shared control socket.
control_socket_disable = True
loglevel = os.environ.get("LOG_LEVEL", "info")
_log_format = os.environ.get("LOG_FORMAT", "auto").strip().lower()
if _log_format == "json" or (_log_format == "auto" and not sys.stderr.isatty()):
    # gunicorn's own lines in the receiver's JSON shape (receiver/logs.py), so that a log
    # collector reads one format; in a terminal gunicorn's plain lines are easier to read.
    _level = loglevel.strip().upper()
    _level = _level if _level in logging.getLevelNamesMapping() else "INFO"
    logconfig_dict = {
        "root": {"level": _level, "handlers": ["error_console"]},
        "loggers": {
            "gunicorn.error": {
                "level": _level,
                "handlers": ["error_console"],
                "propagate": False,
                "qualname": "gunicorn.error",
            },
            # A logconfig_dict turns gunicorn's access log on; its lines carry the query
            # string, where GET callbacks carry the transcript: keep it off, as accesslog is.
            "gunicorn.access": {
                "level": "WARNING",
                "handlers": ["console"],
                "propagate": False,
                "qualname": "gunicorn.access",
            },
            # Has its own handler (receiver/logs.py): through the root too would print twice.
            "receiver": {"propagate": False},
        },
        "formatters": {"generic": {"()": "receiver.observability.logs.JsonFormatter"}},
    }


def _bound_silent_clients() -> None:
    """For GUNICORN_CMD_ARGS="--worker-class gthread" only: a gthread worker gives each new
    connection a thread for up to 5 s while it waits for the first bytes, so a few dozen silent
    connections stall every callback. Waiting 0.25 s and then parking the connection on the
    poller keeps threads for clients that talk; trickling clients still hold one each, which is
    why the default worker is gevent (see the docstring above)."""
    from gunicorn.workers import gthread

    if hasattr(gthread, "DEFAULT_WORKER_DATA_TIMEOUT"):
        gthread.DEFAULT_WORKER_DATA_TIMEOUT = 0.25


_bound_silent_clients()


def _one_write_per_answer() -> None:
    """gunicorn writes a response's headers and its body with two ``sendall`` calls; a
    callback's answer is a small body of known length, so send both in one (a system call and
    a TCP segment less per callback, measured with py-spy: about a tenth of a worker's time
    went to those two sends). Answers without a body, chunked or longer ones keep gunicorn's
    path. It replaces a gunicorn method, so it is applied only to the releases whose
    ``Response`` it was written against (26.1 onwards: ``_omits_body``)."""
    import gunicorn
    from gunicorn import util
    from gunicorn.http import wsgi

    if not (26, 1) <= gunicorn.version_info[:2] < (28, 0):
        return

    write = wsgi.Response.write

    def write_once(self: wsgi.Response, arg: bytes) -> None:
        if (
            self.headers_sent
            or self.chunked
            or self._omits_body
            or not isinstance(arg, bytes)
            or self.response_length is None
            or len(arg) != self.response_length
        ):
            return write(self, arg)
        head = self.default_headers()
        head.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        util.write(self.sock, util.to_bytestring("".join(head) + "\r\n", "latin-1") + arg)
        self.headers_sent = True
        self.sent += len(arg)
        return None

    wsgi.Response.write = write_once


_one_write_per_answer()


class Logger(glogging.Logger):
    """gunicorn's logger, which builds an access-log line for every request whenever a
    ``logconfig_dict`` is set, even though the dict below drops it: skipped when the access
    logger would drop it anyway (about 5% of a worker's time, measured with py-spy)."""

    def setup(self, cfg: object) -> None:
        super().setup(cfg)
        enabled: bool = getattr(self, "_access_log_enabled", False)
        self._access_log_enabled = enabled and self.access_log.isEnabledFor(logging.INFO)


logger_class = Logger


def on_starting(server):
    """Refuse to start on a bad configuration, with the reason, before any worker boots."""
    from receiver.config import ConfigError, load_settings
    from receiver.observability import logs

    try:
        settings = load_settings()
    except ConfigError as error:
        raise SystemExit(f"rtt-receiver: {error}") from None
    if not settings.redis_url:
        raise SystemExit("rtt-receiver: REDIS_URL is not set (or use 'receiver serve')")
    if settings.spool_dir:
        from receiver.storage.spool import Spool

        try:
            spool = Spool(settings.spool_dir, settings.spool_max_bytes)
            spool.check()
        except OSError as error:
            raise SystemExit(f"rtt-receiver: SPOOL_DIR={settings.spool_dir!r}: {error}") from None
        if not spool.writable():
            raise SystemExit(f"rtt-receiver: SPOOL_DIR={settings.spool_dir!r} is not writable")
        server.log.info("spool: %s (%d records waiting)", spool.directory.resolve(), spool.depth())
    try:
        logs.configure()
    except ValueError as error:
        raise SystemExit(f"rtt-receiver: {error}") from None
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    _check_connections(server)
    if not settings.public_base_url and not settings.proxy_hops:
        _warn_if_exposed(server)
    if settings.accounts:
        from receiver.server import accounts_file

        try:
            accounts_file.keep()
        except (ConfigError, OSError) as error:
            raise SystemExit(f"rtt-receiver: {error}") from None


def _check_connections(server) -> None:
    """The open-file limit that worker_connections needs, raised before any worker forks."""
    if not gevent_worker.SUPPORTED and server.cfg.worker_class_str == "gevent":
        import gunicorn

        server.log.warning(
            "rtt-receiver: gunicorn %s is not a release the request deadlines were checked "
            "against (receiver/server/gevent_worker.py): gunicorn's own gevent worker runs, and "
            "a silent connection holds a slot for keepalive seconds",
            gunicorn.__version__,
        )
    warning = gevent_worker.raise_open_files(server.cfg.worker_connections)
    if warning:
        server.log.warning("rtt-receiver: %s", warning)


def _warn_if_exposed(server) -> None:
    """``receiver serve`` refuses this; gunicorn run directly (Procfile, Dockerfile) says so."""
    from receiver.server.network import is_loopback

    exposed = [
        host
        for host, *_ in (a for a in server.cfg.address if isinstance(a, tuple))
        if not is_loopback(host)
    ]
    if exposed:
        server.log.warning(
            "rtt-receiver: listening on %s without PUBLIC_BASE_URL or PROXY_HOPS: each "
            "request's Host header picks the URL whose signature is checked, so a callback "
            "signed for another endpoint of your Twilio account (staging, say) verifies here. "
            "Set PUBLIC_BASE_URL to the URL Twilio calls, or PROXY_HOPS to the number of "
            "proxies in front",
            ", ".join(exposed),
        )


def on_reload(server):
    """SIGHUP: the accounts file is read again and, when valid, becomes what the new workers
    read. A file broken by an edit would stop them from booting, and gunicorn then halts: so it
    is checked here, and when it is not valid the error is logged and the workers keep the
    accounts read before; a later SIGHUP after a fix reads the file again."""
    from receiver.config import ConfigError
    from receiver.server import accounts_file

    if not accounts_file.kept():
        return
    try:
        given = accounts_file.keep()
    except (ConfigError, OSError) as error:
        server.log.error("rtt-receiver: %s; keeping the accounts read before", error)
        return
    server.log.info("rtt-receiver: accounts re-read from %s", given)


def post_worker_init(worker):
    """Start the worker's background work (the spool drainer) once the app is loaded."""
    receiver = getattr(worker.wsgi, "extensions", {}).get("receiver")
    if receiver is not None:
        receiver.start()


def worker_exit(server, worker):
    """After a worker's in-flight requests finished (SIGTERM, SIGHUP reload, max requests):
    stop its spool drainer, which confirms the record in hand and releases the drain lock, so
    another worker or the next receiver takes over with nothing lost or replayed twice."""
    from receiver.observability import logs, metrics
    from receiver.storage.durable import stop_drainers

    stop_drainers()
    metrics.flush()
    logs.flush()


def child_exit(server, worker):
    """A dead worker's live gauges must not be summed any more."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    owned = os.environ.get(_OWNED_METRICS_DIR)
    if owned and owned == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(owned, ignore_errors=True)
    from receiver.server import accounts_file

    accounts_file.remove()
