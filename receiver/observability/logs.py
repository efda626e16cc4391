"""Log output: one structured line per callback, JSON for machines, plain text for a terminal.

``LOG_FORMAT`` chooses: ``json``, ``text``, or ``auto`` (the default: text when stderr is a
terminal, JSON otherwise, which is what log collectors of container platforms read).
``LOG_LEVEL`` (default ``info``) is shared with gunicorn. Only identifiers, outcomes and timings
are logged: never transcript text, auth tokens, signatures or passwords.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import TextIO

LOGGER = "receiver"
FORMATS = ("auto", "json", "text")
_callbacks = logging.getLogger("receiver.callbacks")


# How long a line below WARNING may wait before it is written.
FLUSH_SECONDS = 0.05


class StderrHandler(logging.Handler):
    """Writes lines to whatever ``sys.stderr`` is when they are flushed (it may be replaced),
    off the request path: a record below WARNING is only queued, and a background thread
    formats and writes what queued every ``FLUSH_SECONDS``, one system call per batch instead
    of one per callback. A warning or above is written at once, after the lines queued before
    it (it is rare and may precede a crash); ``flush()`` (at exit, in gunicorn's
    ``worker_exit``) writes whatever waits.
    """

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[logging.LogRecord] = deque()
        self._write_lock = threading.Lock()
        self._flusher_pid: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self._queue.append(record)
        if record.levelno >= logging.WARNING:
            self.flush()
        elif self._flusher_pid != os.getpid():  # none yet, or inherited across a fork
            self._start_flusher()

    def _start_flusher(self) -> None:
        self._flusher_pid = os.getpid()
        threading.Thread(target=self._flush_forever, name="rtt-log-flusher", daemon=True).start()

    def _flush_forever(self) -> None:
        pid = os.getpid()
        while self._flusher_pid == pid:
            time.sleep(FLUSH_SECONDS)
            self.flush()

    def flush(self) -> None:
        with self._write_lock:
            lines = []
            while self._queue:
                record = self._queue.popleft()
                try:
                    lines.append(self.format(record) + "\n")
                except Exception:
                    self.handleError(record)
            if lines:
                try:
                    sys.stderr.write("".join(lines))
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass  # stderr closed: nowhere left to say it


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return getattr(record, "fields", {})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``09:00:00.123 INFO  callback  outcome=stored event=content call_sid=CA… …``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        pairs = " ".join(f"{name}={value}" for name, value in _fields(record).items())
        line = f"{ts} {record.levelname:<5} {record.getMessage()}  {pairs}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def formatter_for(log_format: str, stream: TextIO) -> logging.Formatter:
    if log_format not in FORMATS:
        raise ValueError(f"LOG_FORMAT={log_format!r} must be one of {', '.join(FORMATS)}")
    if log_format == "auto":
        log_format = "text" if stream.isatty() else "json"
    return TextFormatter() if log_format == "text" else JsonFormatter()


def configure(env: dict[str, str] | None = None) -> None:
    """Give the ``receiver`` loggers one stderr handler (once per process).

    Records still propagate to the root logger, for whoever configured it (pytest's caplog, an
    application embedding the app); deploy/gunicorn.conf.py, which gives the root logger a
    handler, turns propagation off there so that no line is printed twice.
    """
    env = dict(os.environ) if env is None else env
    logger = logging.getLogger(LOGGER)
    level = env.get("LOG_LEVEL", "info").strip().upper() or "INFO"
    if level not in logging.getLevelNamesMapping():
        raise ValueError(f"LOG_LEVEL={env.get('LOG_LEVEL')!r} is not a log level")
    logger.setLevel(level)
    handler = next((h for h in logger.handlers if isinstance(h, StderrHandler)), None)
    if handler is None:
        handler = StderrHandler()
        logger.addHandler(handler)
    handler.setFormatter(formatter_for(env.get("LOG_FORMAT", "auto").strip().lower(), sys.stderr))


def flush() -> None:
    """Write every queued line now (before exit, or before reading stderr in a test)."""
    for handler in logging.getLogger(LOGGER).handlers:
        handler.flush()


atexit.register(flush)


def callback(**fields: object) -> None:
    """The one line logged per callback; ``None`` fields are left out."""
    _callbacks.info(
        "callback", extra={"fields": {k: v for k, v in fields.items() if v is not None}}
    )
