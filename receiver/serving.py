"""The one way the receiver is served: gunicorn with the project's settings.

`receiver serve`, `receiver demo` and `receiver bench` all start this command, so what they run
is what a deployment runs.
"""

from __future__ import annotations

import sys

# The settings module inside the package (receiver/gunicorn_conf.py): it needs no checkout.
GUNICORN_CONFIG = "python:receiver.gunicorn_conf"
APP = "receiver:create_app()"


def gunicorn_command(app: str = APP, config: str = GUNICORN_CONFIG) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-c", config, app]
