"""rtt-receiver: Twilio Real-Time Transcription callbacks into Redis Streams, exactly once."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from .config import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> Flask:
    """The WSGI app; gunicorn serves it as ``receiver:create_app()``."""
    # Imported when called, not with the package: gunicorn's settings module is in this package
    # (receiver.gunicorn_conf) and must set PROMETHEUS_MULTIPROC_DIR before anything imports
    # prometheus_client, which reads it once, at import.
    from .application import build

    return build(settings)
