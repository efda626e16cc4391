"""gunicorn settings of `receiver dashboard`: `gunicorn -c python:receiver.dashboard.gunicorn_conf
'receiver.dashboard:create_app()'`.

Environment: DASHBOARD_HOST (127.0.0.1), DASHBOARD_PORT (8020), or BIND for both;
DASHBOARD_THREADS (viewers one process holds, default 256); LOG_LEVEL.

One worker process: it has one Redis reader for all its viewers, so a second worker would
double the reads without serving anyone better, and the pages cost little CPU. Each viewer's
Server-Sent Events stream holds a thread of the gthread worker for as long as it is open, so
DASHBOARD_THREADS bounds the viewers (a viewer beyond it waits for a thread). The class and
counts were chosen with `receiver dashboard-bench` (docs/dashboard.md).
"""

import os

from receiver.config import ConfigError, int_setting

_host = os.environ.get("DASHBOARD_HOST", "127.0.0.1")
_port = os.environ.get("DASHBOARD_PORT", "8020")
bind = os.environ.get("BIND") or (f"[{_host}]:{_port}" if ":" in _host else f"{_host}:{_port}")
try:
    threads = int_setting(os.environ, "DASHBOARD_THREADS", 256, 2)
except ConfigError as error:
    raise SystemExit(f"rtt-dashboard: {error}") from None
workers = 1
worker_class = "gthread"
# Open event streams do not end by themselves: a stop or restart closes them after this long,
# and the browsers reconnect (to the next process) from their last event.
graceful_timeout = 3
timeout = 30
keepalive = 5
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
forwarded_allow_ips = ""
accesslog = None  # its lines would carry who viewed which call: opt in with --access-logfile
errorlog = "-"
control_socket_disable = True
loglevel = os.environ.get("LOG_LEVEL", "info")


def _hosts(addresses: list[str]) -> list[str]:
    hosts = []
    for address in addresses:
        if address.startswith(("unix:", "fd://")):
            continue  # local only
        host = address.rsplit(":", 1)[0] if address.count(":") <= 1 or "]" in address else address
        hosts.append(host.strip("[]") or "0.0.0.0")
    return hosts


def on_starting(server):
    """Refuse to start on a bad configuration, or without authentication beyond loopback."""
    from receiver.dashboard.settings import check_exposure, load_dashboard_settings

    try:
        settings = load_dashboard_settings()
        for host in _hosts(list(server.cfg.bind)):
            check_exposure(settings, host)
    except ConfigError as error:
        raise SystemExit(f"rtt-dashboard: {error}") from None
    if settings.auth == "none":
        server.log.warning(
            "dashboard: no authentication (loopback only): anyone on this machine can view "
            "transcripts"
        )
