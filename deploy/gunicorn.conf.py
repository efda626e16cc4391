"""gunicorn's configuration file for rtt-receiver.

    gunicorn -c deploy/gunicorn.conf.py 'receiver:create_app()'

The settings, their environment variables (PORT, HOST, BIND, WEB_CONCURRENCY, GUNICORN_THREADS,
LOG_LEVEL, LOG_FORMAT, PROMETHEUS_MULTIPROC_DIR) and the measurements behind the worker class
and counts (gevent, 2 workers, chosen with `receiver bench` and the slow-client test) are in
receiver/server/gunicorn_conf.py: inside the package, an installed receiver (`receiver serve`, the
container image) has them too, as `-c python:receiver.server.gunicorn_conf`.
"""

from receiver.server.gunicorn_conf import *  # noqa: F403
