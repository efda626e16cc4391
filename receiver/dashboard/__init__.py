"""`receiver dashboard`: live calls and their transcripts in the browser, read from the streams.

A process of its own (gunicorn, ``gunicorn_conf.py``) that only reads Redis: viewers never take
a thread from the callback endpoint. ``live.py`` holds the one Redis reader per process.
"""

from receiver.dashboard.app import create_app

__all__ = ["create_app"]
