"""The empty route that `receiver bench` measures the receiver against.

Same framework (Flask), same path and method, same gunicorn configuration as the receiver, and
nothing else: it reads no body and checks no signature, so its throughput is the ceiling that
Flask and gunicorn set on this machine. ``receiver bench`` prints the receiver's throughput as
a ratio of it, both measured in the same run.
"""

from __future__ import annotations

from flask import Flask

from receiver.views.callback import CALLBACK_PATH


def create_app() -> Flask:
    """The WSGI app; gunicorn serves it as ``receiver.devtools.bench.baseline:create_app()``."""
    app = Flask(__name__)

    @app.route(CALLBACK_PATH, methods=["GET", "POST"])
    def callback():
        return "", 204

    @app.route("/healthz")
    def healthz():
        return {"status": "ok"}

    return app
