"""rtt-receiver: Twilio Real-Time Transcription callbacks into Redis Streams, exactly once.

A callback's path: ``views/callback.py`` (the endpoint) -> ``verify.py`` (the signature) ->
``events.py`` (the normalized event) -> ``storage/`` (the stream entry, or the spool) ->
consumers (``docs/streams.md``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from receiver.config import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> Flask:
    """The WSGI app; gunicorn serves it as ``receiver:create_app()``."""
    # Imported when called, not with the package: gunicorn's settings module is in this package
    # (receiver.server.gunicorn_conf) and must set PROMETHEUS_MULTIPROC_DIR before anything
    # imports prometheus_client, which reads it once, at import.
    from receiver.app import create_app as build

    return build(settings)
