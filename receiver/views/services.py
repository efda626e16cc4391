"""What the views need, built once by ``create_app`` and kept on ``app.extensions``."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from flask import current_app

from receiver.config import Settings
from receiver.storage.durable import Drainer, DurableWriter
from receiver.storage.store import Store


@dataclass
class Receiver:
    settings: Settings
    store: Store
    writer: DurableWriter
    drainer: Drainer | None = None
    _started: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        """Start the process' background work (the spool drainer) once: from gunicorn's
        ``post_worker_init`` in a served worker, else on the first request, never at import or
        when an app is merely built (a test, a script)."""
        if self._started:
            return
        with self._lock:
            if not self._started:
                if self.writer.spool is not None:
                    # One per process; the spool's drain.lock lets one replay at a time.
                    self.drainer = Drainer(self.writer).start()
                self._started = True

    def spool_depth(self) -> int:
        """Records waiting in the spool for Redis (0 without a spool)."""
        return self.writer.spool.depth() if self.writer.spool else 0


def current() -> Receiver:
    return current_app.extensions["receiver"]
